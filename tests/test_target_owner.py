"""One owner per address: a second target for a shelf.slot is refused (another `aoe serve`
or vblade), and an initiator never combines two different disks as paths of one."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.protocol import Command, ConfigBody, Frame, HeaderFlag, encode
from aoe.target.probe import other_owners

from .support.fds import above_1024
from .support.service import image, make_segment, serve, stop
from .support.target import aoe_cmd


@pytest.mark.netns
def test_second_aoe_serve_is_refused(lab: Lab, tmp_path: Path) -> None:
    seg = make_segment(lab, "a", "b", "c")
    a, b, c = (seg.hosts[n] for n in "abc")
    first = serve(a, "--state-dir", str(tmp_path / "sa"), "-i", "eth0", "1.0",
                  str(image(tmp_path / "a.img", 1 << 20, 0xAA)))
    try:
        p = b.run(aoe_cmd("serve", "--state-dir", str(tmp_path / "sb"), "-i", "eth0", "1.0",
                          str(image(tmp_path / "b.img", 1 << 20, 0xBB))),
                  check=False, timeout=30)
        assert p.returncode == 1
        assert "Traceback" not in p.stderr
        assert p.stderr.count("\n") == 1, p.stderr
        assert f"answers for 1.0 ({seg.macs['a']} on eth0)" in p.stderr
        # --force serves anyway (with a warning): now two disks answer for 1.0, and the
        # initiator sees they differ and refuses to combine them.
        second = serve(b, "--force", "--state-dir", str(tmp_path / "sb"), "-i", "eth0", "1.0",
                       str(tmp_path / "b.img"))
        try:
            d = c.run(aoe_cmd("discover", "-i", "eth0", "1.0"), check=False, timeout=30)
            assert d.returncode == 0
            assert "different disks" in d.stderr
            assert seg.macs["a"] in d.stderr and seg.macs["b"] in d.stderr
            out = tmp_path / "copy.img"
            cp = c.run(aoe_cmd("copy", "-i", "eth0", "1.0", str(out)), check=False, timeout=60)
            assert cp.returncode != 0 and "Traceback" not in cp.stderr
            assert cp.stderr.count("\n") == 1, cp.stderr
            assert "different disks" in cp.stderr and seg.macs["b"] in cp.stderr
            assert not out.exists() or out.stat().st_size == 0
        finally:
            _, err2 = stop(lab, second)
        assert "address_shared" in err2
    finally:
        stop(lab, first)


@pytest.mark.netns
def test_vblade_on_the_address_is_refused(lab: Lab, tmp_path: Path) -> None:
    seg = make_segment(lab, "a", "b")
    a, b = seg.hosts["a"], seg.hosts["b"]
    vb = a.popen(["vblade", "2", "5", "eth0", str(image(tmp_path / "v.img", 1 << 20, 1))],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert vb.poll() is None
        p = b.run(aoe_cmd("serve", "--state-dir", str(tmp_path / "s"), "-i", "eth0", "2.5",
                          str(image(tmp_path / "b.img", 1 << 20, 2))), check=False, timeout=30)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert f"answers for 2.5 ({seg.macs['a']} on eth0)" in p.stderr
        # Another address on the same segment is free.
        ok = serve(b, "--state-dir", str(tmp_path / "s"), "-i", "eth0", "2.6",
                   str(tmp_path / "b.img"))
        stop(lab, ok)
    finally:
        lab.kill(vb)


class _HighPort:
    """What other_owners uses of a RawSocket, on a descriptor above 1024."""

    mac = bytes.fromhex("020000000010")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def recv_nowait(self, size: int = 65536) -> bytes | None:
        try:
            return self.sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None


def test_the_probe_waits_on_descriptors_above_1024() -> None:
    """A target with about a thousand exports holds descriptors above 1024, where select()
    raises ValueError (a reload failed so): the probe still hears the other owner."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with above_1024(a) as high:
            other = bytes.fromhex("020000000099")
            b.send(encode(Frame(_HighPort.mac, other, 1, 0, Command.QUERY_CONFIG, 7,
                                ConfigBody(), flags=HeaderFlag.RESPONSE), pad=True))
            found = other_owners([("eth0", _HighPort(high))], [(1, 0)], wait=0.05)
        assert found == {(1, 0): [("eth0", other.hex(":"))]}
    finally:
        a.close()
        b.close()
