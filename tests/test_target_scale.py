"""Scale: one `aoe serve` with 1,000 exports over ten shelves (sparse images).

Checks that all 1,000 answer (discovery lists every one with its size), that memory stays
within the 64 MiB the service is meant to fit in, and that a SIGHUP adding 100 exports and
removing 100 leaves the other 900 answering, with a reader busy on one of them throughout.
Start-up and discovery times are measured and reported (printed and recorded as test
properties), not asserted: this machine's load decides them."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aoe.lab.pair import TwoHosts

from .support.service import stop
from .support.target import Client, aoe_cmd, rss_kib, target_mac

IMAGE_SIZE = 1 << 20


def _write_toml(conf: Path, tmp: Path, shelves: range, allow: str) -> None:
    lines = [f'state_dir = "{tmp / "st"}"', 'interfaces = ["eth0"]']
    for shelf in shelves:
        for slot in range(100):
            img = tmp / f"{shelf}.{slot}.img"
            if not img.exists():
                with open(img, "wb") as f:
                    f.truncate(IMAGE_SIZE)  # sparse
            lines += ["[[export]]", f'address = "{shelf}.{slot}"', f'path = "{img}"',
                      f'allow = ["{allow}"]']
    conf.write_text("\n".join(lines) + "\n")


def _discover(th: TwoHosts) -> tuple[list[dict[str, Any]], float]:
    t0 = time.monotonic()
    p = th.initiator.run(aoe_cmd("discover", "-i", "eth0", "--json"), timeout=120)
    return json.loads(p.stdout), time.monotonic() - t0


@pytest.mark.netns
def test_thousand_exports(two_hosts: TwoHosts, tmp_path: Path,
                          record_property: Any) -> None:
    c = Client(two_hosts.initiator)
    conf = tmp_path / "targets.toml"
    _write_toml(conf, tmp_path, range(1, 11), c.mac.hex(":"))
    err = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    proc = two_hosts.target.popen(
        aoe_cmd("serve", "-c", str(conf), "--control-socket", str(tmp_path / "c.sock")),
        stdout=subprocess.PIPE, stderr=err, text=True)
    mac = target_mac(two_hosts)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready")
        start_s = time.monotonic() - t0
        rss_mib = rss_kib(proc.pid) / 1024
        found, discover_s = _discover(two_hosts)
        assert len(found) == 1000
        assert {t["address"] for t in found} == {f"{s}.{n}" for s in range(1, 11)
                                                  for n in range(100)}
        assert all(t["size"] == IMAGE_SIZE for t in found)
        assert rss_mib <= 64, f"RSS {rss_mib:.1f} MiB"

        # SIGHUP: shelf 10 goes, shelf 11 comes; a reader on 1.0 loses nothing.
        answered, lost = [0], [0]
        done = threading.Event()

        def reader() -> None:
            r = Client(two_hosts.initiator)
            r._tag = 0x7000000
            try:
                while not done.is_set():
                    ok = r.request(r.ata(mac, 1, 0, 0x24, lba=0, count=2), timeout=2)
                    answered[0] += ok is not None
                    lost[0] += ok is None
            finally:
                r.close()

        t = threading.Thread(target=reader)
        t.start()
        _write_toml(conf, tmp_path, range(1, 10), c.mac.hex(":"))
        _append_shelf(conf, tmp_path, 11, c.mac.hex(":"))
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        reload_s = _wait_for(tmp_path / "serve.log", "reloaded", 60) - t_hup
        time.sleep(0.3)
        done.set()
        t.join()
        assert lost[0] == 0 and answered[0] > 0, (answered, lost)
        found, discover2_s = _discover(two_hosts)
        addrs = {t["address"] for t in found}
        assert len(found) == 1000
        assert not any(a.startswith("10.") for a in addrs)
        assert {f"11.{n}" for n in range(100)} <= addrs
        assert rss_kib(proc.pid) / 1024 <= 64
        st = json.loads(two_hosts.target.run(
            aoe_cmd("status", "--json", "-s", str(tmp_path / "c.sock")), timeout=60).stdout)
        exports = st[0]["exports"]
        assert len(exports) == 1000
        e10 = next(e for e in exports if e["export"] == "e1.0")
        assert e10["bytes_read"] >= answered[0] * 1024
    finally:
        c.close()
        stop(two_hosts.lab, proc)
        err.close()
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
    assert "added=100 removed=100" in log
    measured = {"start_s": round(start_s, 2), "rss_mib": round(rss_mib, 1),
                "discover_cli_s": round(discover_s, 2), "discover_after_reload_s":
                round(discover2_s, 2), "reload_s": round(reload_s, 2),
                "reader_requests_during_reload": answered[0]}
    for k, v in measured.items():
        record_property(k, v)
    print(f"\n1000 exports: {measured}")


def _append_shelf(conf: Path, tmp: Path, shelf: int, allow: str) -> None:
    extra = tmp / "extra.toml"
    _write_toml(extra, tmp, range(shelf, shelf + 1), allow)
    body = extra.read_text().split("\n", 2)[2]  # drop state_dir and interfaces
    with open(conf, "a") as f:
        f.write(body)


def _wait_for(log: Path, needle: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged within {timeout} s")
