"""The target follows its link: an MTU change re-derives max sectors (announced and logged),
and carrier loss and return are logged."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from aoe.lab.pair import TwoHosts

from .support.service import stop
from .support.target import SHELF, SLOT, Client, aoe_cmd, make_image, target_mac


def _max_sectors(c: Client, mac: bytes) -> int:
    r = c.request(c.config(mac, SHELF, SLOT))
    assert r is not None
    return int(r.frame.body.sector_count)


def _wait_log(path: Path, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged: {path.read_text()}")


@pytest.mark.netns
def test_mtu_and_carrier_changes(two_hosts: TwoHosts, tmp_path: Path) -> None:
    th = two_hosts
    img = make_image(tmp_path / "d.img", 1 << 20)
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = th.target.popen(
            aoe_cmd("serve", "-v", "--allow", th.cable.mac(th.initiator),
                    "--state-dir", str(tmp_path / "st"), "--control-socket",
                    str(tmp_path / "c.sock"), "eth0", f"{SHELF}.{SLOT}", str(img)),
            stdout=subprocess.PIPE, stderr=err, text=True)
    c = Client(th.initiator)
    mac = target_mac(th)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        assert _max_sectors(c, mac) == 2
        th.cable.set_mtu(9000)
        line = _wait_log(log, "mtu_changed")
        assert "mtu=9000" in line and "max_sectors=17" in line and "was=2" in line
        # The change is announced (an unsolicited Query Config answer, tag 0) ...
        announced = c.gather(0, timeout=2, want=None)
        assert any(r.frame.body.sector_count == 17 for r in announced)
        # ... and answered from now on, with full-size reads.
        assert _max_sectors(c, mac) == 17
        r = c.request(c.ata(mac, SHELF, SLOT, 0x24, lba=0, count=17))
        assert r is not None and len(r.frame.body.data) == 17 * 512
        th.cable.set_mtu(1500)
        _wait_log(log, "max_sectors=2 was=17")
        assert _max_sectors(c, mac) == 2

        th.cable.set_link(False, end=th.initiator)
        assert "interface=eth0" in _wait_log(log, "carrier_lost")
        th.cable.set_link(True, end=th.initiator)
        _wait_log(log, "carrier_back")
        c.close()  # its socket saw the link go down (ENETDOWN is reported once): a new one
        c = Client(th.initiator)
        assert _max_sectors(c, mac) == 2
    finally:
        c.close()
        stop(th.lab, proc)
    assert "Traceback" not in log.read_text()
