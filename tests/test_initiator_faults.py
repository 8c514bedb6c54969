"""The initiator when things go wrong: an impaired link, a target that dies, a cable pulled
under a multipath copy, forged answers, reservations, access lists, bad interfaces, an MTU
mismatch along the way."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aoe.initiator import (
    AoeDisk,
    InterfaceUnusableError,
    MtuMismatchError,
    NoTargetError,
    TargetDeadError,
    TargetReservedError,
)
from aoe.initiator.copy import copy_from_disk, copy_to_disk
from aoe.lab import Lab
from aoe.net.link import link_down, link_up, set_mtu
from aoe.net.rawsock import RawSocket
from aoe.protocol import (
    SECTOR_SIZE,
    AtaBody,
    AtaOpcode,
    Command,
    ConfigBody,
    DecodeError,
    Frame,
    IdentifyInfo,
    ReserveBody,
    ReserveCommand,
    build_identify,
    decode,
    encode,
    response_to,
)

from .support.initiator import (
    SHELF,
    SLOT,
    TARGET_KINDS,
    make_rig,
    start_target,
    wait_answering,
    write_image,
)


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_impaired_link_copies_are_exact(lab: Lab, tmp_path: Path, kind: str) -> None:
    """Drops, duplicates and reordering both ways: both copy directions stay bit-exact."""
    target = lab.host("target")
    initiator = lab.host("initiator")
    relay = lab.relay_between(target, initiator, mtu=1500, drop=0.02, duplicate=0.02,
                              reorder=0.05, seed=11)
    size = 4 << 20
    image = tmp_path / "disk.img"
    write_image(image, size, seed=3)
    proc = start_target(kind, target, relay.a_ifname, image, log=tmp_path / "target.log")
    wait_answering(initiator, relay.b_ifname, proc=proc)
    new = random.Random(5).randbytes(size)
    with initiator.enter():
        disk = AoeDisk.open(SHELF, SLOT, [relay.b_ifname], dead_timeout=10)
    with disk:
        copy_to_disk(disk, io.BytesIO(new))
        assert image.read_bytes() == new
        out = io.BytesIO()
        copy_from_disk(disk, out)
        assert out.getvalue() == new
        stats = disk.stats()
    impaired = relay.stats().total
    assert impaired.dropped > 0 and impaired.duplicated > 0 and impaired.reordered > 0
    assert stats.retransmits > 0
    assert stats.stale_or_duplicate > 0


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_dead_target_fails_reads_clearly(lab: Lab, tmp_path: Path, kind: str) -> None:
    rig = make_rig(lab, kind, tmp_path, size=8 << 20)
    disk = rig.open(dead_timeout=1.0)
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def reader() -> None:
        try:
            while True:
                got = disk.read(0, disk.size)
                assert got == rig.data  # never wrong data
                started.set()
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)
            started.set()

    with disk:
        thread = threading.Thread(target=reader)
        thread.start()
        assert started.wait(30)
        rig.kill_targets()
        thread.join(60)
        assert not thread.is_alive(), "the reader hung after the target died"
        assert len(outcome) == 1 and isinstance(outcome[0], TargetDeadError), outcome
        assert "did not answer" in str(outcome[0])
        with pytest.raises(TargetDeadError):
            disk.read(0, 512)


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_multipath_survives_a_pulled_cable(lab: Lab, tmp_path: Path, kind: str) -> None:
    """Two cables, a target process on each (one disk, two MACs). Pull one cable in the
    middle of a read, plug it back, pull the other in the middle of a write: both copies
    complete. (vblade exits when the kernel refuses a frame to a pulled cable; plugging
    back in then includes starting it again, as its init script would.)"""
    rig = make_rig(lab, kind, tmp_path, cables=2, size=16 << 20)
    cables = lab.cables
    with rig.open(dead_timeout=10) as disk:
        assert len(disk.info.paths) == 2
        assert len({p.target_mac for p in disk.info.paths}) == 2
        cut: list[int] = []

        def pull_at_quarter(cable_index: int) -> Callable[[int, int], None]:
            """A progress callback that pulls the cable once a quarter is copied; the copy
            waits for it, so the rest of the disk crosses after the pull."""
            def progress(done: int, total: int) -> None:
                if done >= total // 4 and cable_index not in cut:
                    cables[cable_index].set_link(False, end=rig.initiator)
                    cut.append(cable_index)
            return progress

        out = io.BytesIO()
        copy_from_disk(disk, out, progress=pull_at_quarter(1), chunk=1 << 20)
        assert cut == [1]
        assert out.getvalue() == rig.data
        def state(cable_index: int) -> dict[str, Any]:
            ifname = rig.ifaces[cable_index]
            return next(s for s in disk.session.path_states() if s["ifname"] == ifname)

        assert state(0)["answered"] > 0 and state(1)["answered"] > 0  # load spread over both
        assert state(1)["timeouts"] > 0 or state(1)["down"]

        cables[1].set_link(True, end=rig.initiator)
        if rig.procs[1].poll() is not None:
            rig.procs[1] = start_target(kind, rig.target, cables[1].a_ifname, rig.image)
            wait_answering(rig.initiator, rig.ifaces[1], proc=rig.procs[1])
        deadline = time.monotonic() + 10
        while state(1)["down"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the down path is probed until it answers again
        assert not state(1)["down"]

        new = random.Random(8).randbytes(disk.size)
        copy_to_disk(disk, io.BytesIO(new), progress=pull_at_quarter(0), chunk=1 << 20)
        assert cut == [1, 0]
        assert disk.read(0, disk.size) == new
        assert disk.stats().retransmits > 0
    assert rig.image_now() == new


class EvilTarget:
    """A target answering every read with forged frames first (wrong tag, source MAC,
    shelf.slot and length), then the real answer, then a duplicate of it."""

    def __init__(self, sock: RawSocket, data: bytes) -> None:
        self.sock = sock
        self.data = data
        self.reads = 0
        self._stop = threading.Event()
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.sock.recv()
            except TimeoutError:
                continue
            try:
                req = decode(raw)
            except DecodeError:
                continue
            if req.is_response or (req.shelf, req.slot) not in ((SHELF, SLOT), (0xFFFF, 0xFF)):
                continue
            if req.command == Command.QUERY_CONFIG:
                self.send(response_to(req, self.sock.mac, ConfigBody(8, 1, 2, 1, 0, b"")))
            elif req.command == Command.ATA and isinstance(req.body, AtaBody):
                self.ata(req, req.body)

    def send(self, frame: Frame) -> None:
        self.sock.send(encode(frame, pad=True))

    def ata(self, req: Frame, body: AtaBody) -> None:
        if body.cmd_status == AtaOpcode.IDENTIFY_DEVICE:
            page = build_identify(IdentifyInfo(sectors=len(self.data) // SECTOR_SIZE))
            self.send(response_to(req, self.sock.mac, AtaBody(0, 0, 0, 0x40, 0, page)))
            return
        start = body.lba * SECTOR_SIZE
        data = self.data[start : start + body.sector_count * SECTOR_SIZE]
        good = response_to(req, self.sock.mac, AtaBody(body.aflags, 0, 0, 0x40, body.lba, data))
        self.reads += 1
        forged = [
            response_to(req, self.sock.mac, AtaBody(body.aflags, 0, 0, 0x40, body.lba, data)),
            response_to(req, b"\x02\x66\x66\x66\x66\x66", good.body),
            response_to(req, self.sock.mac, good.body),
            response_to(req, self.sock.mac,
                        AtaBody(body.aflags, 0, 0, 0x40, body.lba, data[:-SECTOR_SIZE])),
        ]
        forged[0].tag ^= 0x5A5A0000
        forged[2].slot = SLOT + 1
        for frame in [*forged, good, good]:
            self.send(frame)


def test_forged_answers_are_ignored_and_counted(lab: Lab) -> None:
    target = lab.host("target")
    initiator = lab.host("initiator")
    cable = lab.cable(target, initiator, mtu=1500)
    data = random.Random(2).randbytes(1 << 20)
    with target.enter():
        evil = EvilTarget(RawSocket(cable.a_ifname), data)
    try:
        with initiator.enter():
            disk = AoeDisk.open(SHELF, SLOT, [cable.b_ifname], dead_timeout=5)
        with disk:
            assert disk.read(0, 256 << 10) == data[: 256 << 10]
            assert disk.read(1000, 5000) == data[1000:6000]
            frames = evil.reads
            # The duplicate of the last answer is sent after the read has returned:
            # give the session a moment to receive it before counting.
            deadline = time.monotonic() + 2
            while (disk.stats().stale_or_duplicate < 2 * frames
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            stats = disk.stats()
        assert frames >= (256 << 10) // 1024
        assert stats.wrong_source == frames
        assert stats.wrong_address == frames
        assert stats.wrong_length == frames
        assert stats.stale_or_duplicate >= 2 * frames  # wrong tags and the duplicates
    finally:
        evil.stop()
        evil.sock.close()


@pytest.mark.parametrize("kind", ["vblade"])
def test_reserved_target(lab: Lab, tmp_path: Path, kind: str) -> None:
    rig = make_rig(lab, kind, tmp_path, size=1 << 20)
    with rig.initiator.enter():
        sock = RawSocket(rig.ifaces[0])
    with sock:
        mac = bytes.fromhex(lab.cables[0].a_mac.replace(":", ""))
        body = ReserveBody(ReserveCommand.SET, [b"\x02\x00\x00\x00\x00\x99"])
        sock.send(encode(Frame(mac, sock.mac, SHELF, SLOT, Command.RESERVE_RELEASE, 7, body),
                         pad=True))
        sock.settimeout(2)
        assert decode(sock.recv()).error == 0
    with rig.open() as disk:  # vblade still answers IDENTIFY; I/O is what it refuses
        with pytest.raises(TargetReservedError, match="reserved by another initiator"):
            disk.read(0, 4096)


def test_access_list_excluding_us(lab: Lab, tmp_path: Path) -> None:
    rig = make_rig(lab, "vblade", tmp_path, size=1 << 20, extra=("-m", "02:00:00:00:00:77"),
                   wait=False)
    with pytest.raises(NoTargetError, match="access list"):
        rig.open(timeout=0.3)


def test_interface_problems(lab: Lab, tmp_path: Path) -> None:
    rig = make_rig(lab, "vblade", tmp_path, size=1 << 20)
    with pytest.raises(InterfaceUnusableError, match="does not exist"):
        with rig.initiator.enter():
            AoeDisk.open(SHELF, SLOT, ["nosuch0"])
    with rig.initiator.enter():
        with pytest.raises(InterfaceUnusableError, match="not an Ethernet"):
            AoeDisk.open(SHELF, SLOT, ["lo"])
        link_down(rig.ifaces[0])
        with pytest.raises(InterfaceUnusableError, match="is down"):
            AoeDisk.open(SHELF, SLOT, rig.ifaces)
        with pytest.raises(InterfaceUnusableError, match="no Ethernet interface is up"):
            AoeDisk.open(SHELF, SLOT)  # default: every interface that is up
        link_up(rig.ifaces[0])
        with pytest.raises(NoTargetError, match=f"{SHELF}.{SLOT + 1}"):
            AoeDisk.open(SHELF, SLOT + 1, timeout=0.2)


def test_mtu_mismatch_on_the_way(lab: Lab, tmp_path: Path) -> None:
    """Both ends at MTU 9000 but the relay between them at 1500: the target announces 17
    sectors, Query Config gets through, data frames do not, and the caller is told so.
    (`aoe serve`: vblade exits when the kernel refuses one of its frames.)"""
    target = lab.host("target")
    initiator = lab.host("initiator")
    relay = lab.relay_between(target, initiator, mtu=1500)
    with target.enter():
        set_mtu(relay.a_ifname, 9000)
    with initiator.enter():
        set_mtu(relay.b_ifname, 9000)
    image = tmp_path / "disk.img"
    write_image(image, 1 << 20)
    proc = start_target("serve", target, relay.a_ifname, image)
    wait_answering(initiator, relay.b_ifname, proc=proc)
    with initiator.enter():
        disk = AoeDisk.open(SHELF, SLOT, [relay.b_ifname], dead_timeout=1.5)
    with disk:
        assert disk.info.paths[0].frame_sectors == 17
        with pytest.raises(MtuMismatchError, match="smaller MTU"):
            disk.read(0, 64 << 10)
