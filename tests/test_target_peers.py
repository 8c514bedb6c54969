"""Tools nobody here wrote, pointed at `aoe serve`: aoetools' aoeping and tshark."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aoe.lab.pair import TwoHosts
from aoe.protocol import BROADCAST_MAC, AtaOpcode, ConfigCommand

from .support.target import Client, make_image, start_pyaoe

pytestmark = pytest.mark.netns

needs_aoeping = pytest.mark.skipif(shutil.which("aoeping") is None, reason="aoetools missing")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing")


@needs_aoeping
def test_aoeping_query_identify_and_smart(two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 16 << 20)
    rt = start_pyaoe(two_hosts, image, tmp_path / "state")
    try:
        ping = two_hosts.initiator.run(["aoeping", "-s", "3", "-v", str(rt.shelf), str(rt.slot),
                                        "eth0"], check=False, timeout=20)
        assert ping.returncode == 0, ping.stderr
        assert f"found e{rt.shelf}.{rt.slot} with mac {rt.mac.hex()}" in ping.stdout
        ident = two_hosts.initiator.run(["aoeping", "-s", "3", "-I", str(rt.shelf),
                                         str(rt.slot), "eth0"], check=False, timeout=20)
        assert ident.returncode == 0, ident.stderr
        assert "model: pyaoe virtual disk" in ident.stdout
        assert "serial_number: PYAOE" in ident.stdout
        smart = two_hosts.initiator.run(["aoeping", "-s", "3", "-S", "return_status",
                                         str(rt.shelf), str(rt.slot), "eth0"], check=False,
                                        timeout=20)
        assert smart.returncode == 0, smart.stderr
        regs = {k.strip(): v.strip() for k, v in
                (line.split(":", 1) for line in smart.stdout.splitlines() if ":" in line)}
        assert regs["LBA Mid"] == "0x4f" and regs["LBA High"] == "0xc2"  # no threshold exceeded
        assert regs["Status"] == "0x40"
    finally:
        rt.stop(two_hosts.lab)


@needs_aoeping
def test_aoeping_finds_nothing_at_a_wrong_address(two_hosts: TwoHosts, tmp_path: Path) -> None:
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "d.img", 1 << 20), tmp_path / "state")
    try:
        p = two_hosts.initiator.run(["aoeping", "-s", "1", str(rt.shelf + 1), "0", "eth0"],
                                    check=False, timeout=20)
        assert p.returncode != 0
    finally:
        rt.stop(two_hosts.lab)


FIELDS = ["frame.len", "aoe.cmd", "aoe.response", "aoe.flags_error", "aoe.tag", "aoe.ata.cmd",
          "_ws.malformed", "_ws.expert.message"]


@needs_tshark
def test_tshark_sees_well_formed_frames(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """Capture a session in the initiator's namespace; tshark must find nothing malformed."""
    pcap = tmp_path / "session.pcap"
    cap = two_hosts.initiator.popen(["tshark", "-q", "-i", "eth0", "-f", "ether proto 0x88a2",
                                     "-w", str(pcap)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
    c = Client(two_hosts.initiator)
    try:
        _wait_capturing(cap, pcap)
        rt = start_pyaoe(two_hosts, make_image(tmp_path / "d.img", 4 << 20),
                         tmp_path / "state")
        try:
            mac, sh, sl = rt.mac, rt.shelf, rt.slot
            assert c.request(c.config(BROADCAST_MAC, 0xFFFF, 0xFF))
            assert c.request(c.config(mac, sh, sl, ConfigCommand.SET, b"tshark"))
            assert c.request(c.ata(mac, sh, sl, AtaOpcode.IDENTIFY_DEVICE, count=1, ext=False))
            assert c.request(c.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 8, 2))
            assert c.request(c.ata(mac, sh, sl, AtaOpcode.WRITE_SECTORS_EXT, 8, 2, b"t" * 1024,
                                   write=True))
            assert c.request(c.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 1 << 40, 1))
            assert c.request(c.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 0, 5))  # error 2
            assert c.request(c.ata(mac, sh, sl, 0xC8, 0, 1))  # aborted
            time.sleep(0.3)
        finally:
            rt.stop(two_hosts.lab)
    finally:
        c.close()
        two_hosts.lab.kill(cap)
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|",
                          "-E", "occurrence=f", *sum((["-e", f] for f in FIELDS), [])],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [dict(zip(FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]
    answers = [r for r in rows if r["aoe.response"] in ("1", "True")]
    assert len(answers) >= 9  # announcement + 8 answers
    for r in rows:
        assert r["_ws.malformed"] == "" and "alformed" not in r["_ws.expert.message"], r
    for r in answers:
        assert int(r["frame.len"]) >= 60, r
    assert {r["aoe.cmd"] for r in answers} == {"0", "1"}
    assert any(r["aoe.flags_error"] in ("1", "True") for r in answers)


def _wait_capturing(cap: subprocess.Popen[str], pcap: Path, timeout: float = 15.0) -> None:
    """tshark writes the pcap header once it is capturing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cap.poll() is not None:
            raise RuntimeError(f"tshark exited: {cap.stderr.read() if cap.stderr else ''}")
        if pcap.exists() and pcap.stat().st_size > 0:
            time.sleep(0.2)
            return
        time.sleep(0.05)
    raise TimeoutError("tshark did not start capturing")
