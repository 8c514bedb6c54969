"""`aoe config / mask / reserve / flush` against a real `aoe serve` (and vblade) in a lab."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aoe.lab.pair import TwoHosts

from .support.target import SHELF, SLOT, aoe_cmd, make_image, start_pyaoe, start_vblade

ADDR = f"{SHELF}.{SLOT}"
OTHER = "02:00:00:00:00:42"


def aoe(th: TwoHosts, *args: str) -> subprocess.CompletedProcess[str]:
    p = th.initiator.run(aoe_cmd(*args, "-i", "eth0"), check=False, timeout=60)
    assert "Traceback" not in p.stderr
    if p.returncode:
        assert p.stderr.count("Error:") == 1, p.stderr  # one error line
    return p


@pytest.mark.netns
def test_admin_commands_on_pyaoe(two_hosts: TwoHosts, tmp_path: Path) -> None:
    th = two_hosts
    own = th.cable.mac(th.initiator)
    tmac = th.cable.mac(th.target)
    rt = start_pyaoe(th, make_image(tmp_path / "d.img", 1 << 20), tmp_path / "st")
    try:
        assert aoe(th, "config", ADDR).stdout == f"{ADDR} {tmac} config ''\n"
        assert aoe(th, "config", ADDR, "set", "rack 3").returncode == 0
        p = aoe(th, "config", ADDR, "set", "rack 4")
        assert p.returncode == 1 and "config string present" in p.stderr
        assert aoe(th, "config", ADDR, "test", "rack 3").returncode == 0
        assert aoe(th, "config", ADDR, "test", "rack").returncode == 1
        assert aoe(th, "config", ADDR, "prefix", "rack").returncode == 0
        assert aoe(th, "config", ADDR, "force", "rack 5").stdout.endswith("'rack 5'\n")
        assert "'rack 5'" in aoe(th, "config", ADDR).stdout

        p = aoe(th, "mask", ADDR, "add", own, OTHER)
        assert p.stdout == f"{ADDR} {tmac} mask {own}, {OTHER}\n"
        assert aoe(th, "mask", ADDR, "del", OTHER).stdout.endswith(f"mask {own}\n")
        assert aoe(th, "mask", ADDR, "del", own).stdout.endswith("mask empty (everyone)\n")

        assert aoe(th, "reserve", ADDR).stdout.endswith("reserve not reserved\n")
        assert aoe(th, "reserve", ADDR, own).stdout.endswith(f"reserve {own}\n")
        # Someone else's reservation: a plain set is refused, --force takes it.
        assert aoe(th, "reserve", ADDR, "--force", OTHER).returncode == 0
        p = aoe(th, "reserve", ADDR, own)
        assert p.returncode == 1 and "target reserved" in p.stderr
        assert aoe(th, "reserve", ADDR, "--force", "--release").stdout.endswith(
            "reserve not reserved\n")

        assert aoe(th, "flush", ADDR).stdout == f"{ADDR} {tmac} flushed\n"
        p = aoe(th, "flush", "9.9", "--timeout", "0.3")
        assert p.returncode == 1 and "no answer from AoE target 9.9" in p.stderr
        p = aoe(th, "mask", ADDR, "add")
        assert p.returncode == 2 and "needs at least one MAC" in p.stderr
    finally:
        _, err = rt.stop(th.lab)
    assert "config_forced" in err or "Traceback" not in err


@pytest.mark.netns
def test_config_on_vblade(two_hosts: TwoHosts, tmp_path: Path) -> None:
    th = two_hosts
    rt = start_vblade(th, make_image(tmp_path / "v.img", 1 << 20))
    try:
        assert aoe(th, "config", ADDR, "set", "from pyaoe").returncode == 0
        assert "'from pyaoe'" in aoe(th, "config", ADDR).stdout
        assert aoe(th, "config", ADDR, "test", "from pyaoe").returncode == 0
        p = aoe(th, "flush", ADDR)  # vblade aborts FLUSH CACHE EXT: said in one line
        assert p.returncode == 1 and "does not support FLUSH CACHE" in p.stderr
    finally:
        rt.stop(th.lab)
