"""The owner check deferred: `aoe copy` starts reading while discovery's grace for a second
target on the address runs on, and holds its output until the grace has passed. A MAC that
answers late for the address is still told apart: another disk is refused with the file at
DEST untouched, another path to the same disk is used."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aoe.initiator import AoeDisk, ConflictingTargetsError, OwnerUnsettledError
from aoe.lab import Lab

from .support.reliability import open_disk
from .support.service import Segment, make_segment, serve, stop
from .support.target import aoe_cmd

SIZE = 4 << 20
LATE = 0.02  # well inside OTHER_OWNER_GRACE, long after the first answer


def _image(path: Path, seed: int) -> Path:
    path.write_bytes(bytes((i * 7 + seed) & 0xFF for i in range(256)) * (SIZE // 256))
    return path


@contextmanager
def _two_owners(lab: Lab, tmp: Path, same_disk: bool) -> Iterator[Segment]:
    """1.0 served on host a, and on host b behind a relay that holds each frame back
    LATE: the same image (two paths to one disk), or another one (two disks, one address).
    Both targets are stopped on the way out."""
    seg = make_segment(lab, "a", "c")
    b = lab.host("b")
    relay = lab.relay_between(b, lab.hosts["sw"], delay=LATE)
    sw_port = relay.b_ifname
    lab.hosts["sw"].run(["ip", "link", "set", sw_port, "master", "br0", "up"])
    seg.hosts["b"] = b
    seg.macs["b"] = relay.a_cable.mac(b)
    first = _image(tmp / "a.img", 1)
    second = first if same_disk else _image(tmp / "b.img", 2)
    procs = [serve(seg.hosts["a"], "--state-dir", str(tmp / "sa"), "-i", "eth0", "1.0",
                   str(first))]
    try:
        procs.append(serve(b, "--force", "--state-dir", str(tmp / "sb"), "-i",
                           relay.a_ifname, "1.0", str(second)))
        yield seg
    finally:
        for p in procs:
            stop(lab, p)


@pytest.mark.netns
def test_a_late_second_disk_is_refused_and_dest_is_left_as_it_was(lab: Lab,
                                                                   tmp_path: Path) -> None:
    with _two_owners(lab, tmp_path, same_disk=False) as seg:
        c = seg.hosts["c"]
        kept = tmp_path / "kept.img"
        kept.write_bytes(b"what the user had here")
        fresh = tmp_path / "fresh.img"
        for dest in (kept, fresh):
            cp = c.run(aoe_cmd("copy", "-i", "eth0", "1.0", str(dest)), check=False, timeout=60)
            assert cp.returncode == 1, cp.stderr
            assert "Traceback" not in cp.stderr and cp.stderr.count("\n") == 1, cp.stderr
            assert "different disks" in cp.stderr and seg.macs["b"] in cp.stderr
        assert kept.read_bytes() == b"what the user had here"
        assert not fresh.exists()


@pytest.mark.netns
def test_a_late_second_path_to_the_same_disk_is_used(lab: Lab, tmp_path: Path) -> None:
    with _two_owners(lab, tmp_path, same_disk=True) as seg:
        c = seg.hosts["c"]
        out = tmp_path / "out.img"
        out.write_bytes(b"x" * (SIZE * 2))  # longer than the disk: emptied first
        cp = c.run(aoe_cmd("copy", "-i", "eth0", "1.0", str(out)), check=False, timeout=60)
        assert cp.returncode == 0, cp.stderr
        assert out.read_bytes() == (tmp_path / "a.img").read_bytes()


@pytest.mark.netns
def test_a_deferred_disk_reads_at_once_and_holds_writes_until_settled(lab: Lab,
                                                                      tmp_path: Path) -> None:
    with _two_owners(lab, tmp_path, same_disk=False) as seg:
        c = seg.hosts["c"]
        disk = open_disk(c, 1, 0, ["eth0"], defer_owner_check=True)
        with disk:
            buf = bytearray(8192)
            assert disk.readinto(0, buf) == 8192  # before the grace is over
            assert bytes(buf) == (tmp_path / "a.img").read_bytes()[:8192]
            assert not disk.submit_write(0, memoryview(buf), lambda err: None)
            with pytest.raises(OwnerUnsettledError, match=seg.macs["b"]):
                disk.confirm_owner()
            with pytest.raises(OwnerUnsettledError):
                disk.write(0, b"\0" * 512)
        assert (tmp_path / "a.img").read_bytes()[:512] == bytes(buf[:512])
        # The usual open hears both and refuses to combine them.
        with pytest.raises(ConflictingTargetsError, match="different disks"):
            open_disk(c, 1, 0, ["eth0"]).close()


@pytest.mark.netns
def test_a_deferred_disk_alone_on_its_address_settles(lab: Lab, tmp_path: Path) -> None:
    seg = make_segment(lab, "a", "c")
    image = _image(tmp_path / "a.img", 3)
    proc = serve(seg.hosts["a"], "--state-dir", str(tmp_path / "sa"), "-i", "eth0", "1.0",
                 str(image))
    try:
        disk: AoeDisk = open_disk(seg.hosts["c"], 1, 0, ["eth0"], defer_owner_check=True)
        with disk:
            disk.confirm_owner()
            disk.confirm_owner()  # settled: at once
            done: list[BaseException | None] = []
            ended = threading.Event()

            def on_done(err: BaseException | None) -> None:
                done.append(err)
                ended.set()

            assert disk.submit_write(0, memoryview(b"\1" * 512), on_done)
            assert ended.wait(10) and done == [None]
            disk.write(512, b"\2" * 512)
            disk.flush()
        assert image.read_bytes()[:1024] == b"\1" * 512 + b"\2" * 512
    finally:
        stop(lab, proc)
