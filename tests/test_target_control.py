"""Reload, control socket and systemd notify, with a real `aoe serve`: SIGHUP applies the
TOML's difference while a reader keeps going, `aoe status`/`aoe ctl` act through the
control socket, and READY=1/STATUS=/STOPPING=1 arrive on a real datagram socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from aoe.lab.pair import TwoHosts

from .support.service import stop
from .support.target import Client, aoe_cmd, make_image, target_mac


def _toml(path: Path, tmp: Path, exports: dict[str, str]) -> None:
    text = f'state_dir = "{tmp / "st"}"\ninterfaces = ["eth0"]\n'
    for addr, config in exports.items():
        img = tmp / f"{addr}.img"
        if not img.exists():
            make_image(img, 1 << 20, seed=int(addr.split(".")[1]))
        text += f'[[export]]\naddress = "{addr}"\npath = "{img}"\nconfig = "{config}"\n'
    path.write_text(text)


def _messages(sock: socket.socket, until: str, timeout: float = 15) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        out.append(msg)
        if until in msg:
            break
    return out


def _status(th: TwoHosts, ctl: Path) -> dict:  # type: ignore[type-arg]
    p = th.target.run(aoe_cmd("status", "--json", "-s", str(ctl)), timeout=30)
    return json.loads(p.stdout)[0]  # type: ignore[no-any-return]


@pytest.mark.netns
def test_reload_status_ctl_and_notify(two_hosts: TwoHosts, tmp_path: Path) -> None:
    conf = tmp_path / "targets.toml"
    ctl = tmp_path / "ctl.sock"
    _toml(conf, tmp_path, {"1.0": "zero", "1.1": "one"})
    notify_path = tmp_path / "notify.sock"
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    proc = two_hosts.target.popen(
        aoe_cmd("serve", "-v", "-c", str(conf), "--control-socket", str(ctl)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    c = Client(two_hosts.initiator)
    mac = target_mac(two_hosts)
    try:
        msgs = _messages(nsock, "READY=1")
        assert any("READY=1" in m for m in msgs), msgs
        assert any("STATUS=serving 2 exports on eth0 (mtu 1500)" in m for m in msgs), msgs
        assert oct(os.stat(ctl).st_mode & 0o777) == "0o600"

        # Traffic, then status shows it per export and per initiator.
        for _ in range(5):
            assert c.request(c.ata(mac, 1, 0, 0x24, lba=0, count=2)) is not None
        st = _status(two_hosts, ctl)
        e10 = next(e for e in st["exports"] if e["export"] == "e1.0")
        assert e10["frames"] == 5 and e10["bytes_read"] == 5 * 1024
        assert e10["initiators"][0]["mac"] == c.mac.hex(":")
        assert e10["config"] == "zero"
        text = two_hosts.target.run(aoe_cmd("status", "-s", str(ctl)), timeout=30).stdout
        assert "e1.0" in text and "e1.1" in text and c.mac.hex(":") in text

        # Operator edits through aoe ctl act on the wire at once.
        other = "02:00:00:00:00:77"
        run = two_hosts.target.run
        run(aoe_cmd("ctl", "-s", str(ctl), "mask", "add", "1.1", other), timeout=30)
        assert c.silent(c.config(mac, 1, 1))
        run(aoe_cmd("ctl", "-s", str(ctl), "mask", "add", "1.1", c.mac.hex(":")), timeout=30)
        assert c.request(c.config(mac, 1, 1)) is not None
        run(aoe_cmd("ctl", "-s", str(ctl), "mask", "del", "1.1", c.mac.hex(":")), timeout=30)
        assert c.silent(c.config(mac, 1, 1))
        run(aoe_cmd("ctl", "-s", str(ctl), "mask", "clear", "1.1"), timeout=30)
        assert c.request(c.config(mac, 1, 1)) is not None
        r = c.request(c.frame(mac, 1, 1, 3, bytes([1, 1]) + c.mac))  # reserve for us
        assert r is not None and not r.frame.error
        assert _status(two_hosts, ctl)["exports"][1]["reservations"] == [c.mac.hex(":")]
        run(aoe_cmd("ctl", "-s", str(ctl), "reserve", "clear", "1.1"), timeout=30)
        assert _status(two_hosts, ctl)["exports"][1]["reservations"] == []
        run(aoe_cmd("ctl", "-s", str(ctl), "config", "set", "1.1", "rack 9"), timeout=30)
        r = c.request(c.config(mac, 1, 1))
        assert r is not None and r.frame.body.config == b"rack 9"
        bad = run(aoe_cmd("ctl", "-s", str(ctl), "mask", "add", "9.9", other), check=False,
                  timeout=30)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1
        assert "no running aoe serve serves 9.9" in bad.stderr

        # SIGHUP while a second reader keeps 1.0 busy: every request is answered.
        answered, lost = [0], [0]
        done = threading.Event()

        def reader() -> None:
            r2 = Client(two_hosts.initiator)
            r2._tag = 0x7000000  # tags of its own: both clients share one MAC
            try:
                while not done.is_set():
                    if r2.request(r2.ata(mac, 1, 0, 0x24, lba=8, count=2), timeout=2):
                        answered[0] += 1
                    else:
                        lost[0] += 1
            finally:
                r2.close()

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.3)
        _toml(conf, tmp_path, {"1.0": "zero edited", "1.2": "two"})
        proc.send_signal(signal.SIGHUP)
        msgs = _messages(nsock, "READY=1")
        time.sleep(0.3)
        done.set()
        t.join()
        assert lost[0] == 0 and answered[0] > 10, (answered, lost)
        assert any("STATUS=serving 2 exports" in m for m in msgs), msgs
        assert any("RELOADING=1" in m for m in msgs), msgs
        # This client's socket also queued every answer the reader got: empty it first.
        while c.gather(None, timeout=0.3, want=None):
            pass
        r = c.request(c.config(mac, 1, 0), timeout=3)
        assert r is not None and r.frame.body.config == b"zero edited"
        assert c.silent(c.config(mac, 1, 1))
        r = c.request(c.config(mac, 1, 2))
        assert r is not None and r.frame.body.config == b"two"
        e10 = next(e for e in _status(two_hosts, ctl)["exports"] if e["export"] == "e1.0")
        assert e10["frames"] >= 5 + answered[0]  # counters survived the reload

        # A broken TOML keeps the running configuration.
        conf.write_text("this is not toml [")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert c.request(c.config(mac, 1, 2)) is not None
    finally:
        c.close()
        _, err = stop(two_hosts.lab, proc)
        msgs = _messages(nsock, "STOPPING=1", timeout=5)
        nsock.close()
    assert any("STOPPING=1" in m for m in msgs), msgs
    assert "Traceback" not in err
    assert "reloaded" in err and "added=1 removed=1" in err.replace(" changed", "")
    assert "reload_failed" in err
    assert not ctl.exists()
