"""The fuzzer: its safety rule (checked against an independent model of what a careless
target would write), and real runs against `aoe serve` and vblade in a lab."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from aoe.checks.fuzz import FuzzReport, run_fuzz
from aoe.checks.fuzz_frames import FrameFactory, FuzzTarget
from aoe.lab.pair import TwoHosts, netns_unavailable_reason
from tests.support.tools import AOE, SECTORS, make_image, start_aoe_serve, start_vblade

_SKIP = netns_unavailable_reason()
netns = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
SCRATCH = (4000, 64)
US, THEM = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
VOID = (0xFFFE, 0xFE)


def factory(seed: int, scratch: tuple[int, int] | None = SCRATCH) -> FrameFactory:
    target = FuzzTarget(US, THEM, 1, 0, SECTORS, 2, 1514, scratch, VOID)
    return FrameFactory(target, random.Random(seed))


def careless_writes(raw: bytes) -> list[range]:
    """Sectors a target that trusts everything would write for this frame: it ignores the
    version, flags, W bit and data length, takes count 0 as 256 or 65536, and reads the LBA
    both as 28 and 48 bits."""
    if len(raw) < 19 or raw[12:14] != b"\x88\xa2":
        return []
    shelf, slot = struct.unpack_from("!HB", raw, 16)
    if shelf not in (1, 0xFFFF) or slot not in (0, 0xFF) or len(raw) < 20 or raw[19] != 0:
        return []
    if len(raw) >= 28 and raw[27] in (0x20, 0x24, 0xEC, 0xE5, 0xE7, 0xEA, 0x00):
        return []
    if len(raw) < 36:
        return [range(0, SECTORS)]  # the opcode or LBA is missing: anything could happen
    lba = int.from_bytes(raw[28:34], "little")
    spans = []
    for count in {raw[26]} if raw[26] else {256, 65536}:
        for start in (lba, lba & 0x0FFFFFFF):
            spans.append(range(start, min(start + count, SECTORS)))
    return spans


@pytest.mark.parametrize("scratch", [SCRATCH, None], ids=["scratch", "no-scratch"])
def test_no_generated_frame_can_write_outside_the_scratch_range(
        scratch: tuple[int, int] | None) -> None:
    f = factory(11, scratch)
    lo, n = scratch or (0, 0)
    kinds: set[str] = set()
    neutralised = 0
    for _ in range(40000):
        kind, raw, was_neutralised = f.next()
        kinds.add(kind)
        neutralised += was_neutralised
        assert len(raw) <= 1514
        for span in careless_writes(raw):
            assert not span or (lo <= span.start and span.stop <= lo + n), (kind, raw.hex())
    assert kinds == {k for k, _, _ in f.kinds}
    assert neutralised > 1000


def test_mask_adds_and_broadcast_state_changes_never_reach_the_target() -> None:
    f = factory(5)
    for _ in range(40000):
        _, raw, _ = f.next()
        reaches, broadcast = f.reaches_target(raw)
        if not reaches:
            continue
        state, dangerous = f.changes_state(raw)
        assert not dangerous
        assert not (state and broadcast)
        if len(raw) > 25 and raw[19] == 2 and raw[25] != 0:
            assert all(raw[o + 1] != 1 for o in range(28, len(raw) - 1, 8))
            assert 28 + 8 * raw[27] <= len(raw)


def test_same_seed_same_frames() -> None:
    a, b = factory(42), factory(42)
    assert [a.next() for _ in range(500)] == [b.next() for _ in range(500)]


def check_run(report: FuzzReport, image: Path, original: bytes) -> None:
    assert report.ok, report.format()
    assert report.frames_sent == 10000 and report.send_errors == 0
    assert report.answers > 1000 and report.void_answered == 0
    assert report.target_alive and report.data_intact is True and report.state_restored
    assert set(report.sent_by_kind) >= {"ata-write", "mutated", "truncated", "random"}
    after = image.read_bytes()
    lo, n = SCRATCH
    assert after[: lo * 512] == original[: lo * 512]
    assert after[(lo + n) * 512 :] == original[(lo + n) * 512 :]
    assert after == original  # the scratch data was written back too


@netns
def test_aoe_serve_survives_10000_fuzz_frames(two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    original = make_image(image)
    proc = start_aoe_serve(two_hosts, image, tmp_path / "state")
    with two_hosts.initiator.enter():
        report = run_fuzz("eth0", 1, 0, count=10000, seed=2024, scratch=SCRATCH, timeout=0.5)
    assert proc.poll() is None
    check_run(report, image, original)


@netns
def test_vblade_survives_10000_fuzz_frames(two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    original = make_image(image)
    proc = start_vblade(two_hosts, image)
    with two_hosts.initiator.enter():
        report = run_fuzz("eth0", 1, 0, count=10000, seed=2024, scratch=SCRATCH, timeout=0.5)
    assert proc.poll() is None
    check_run(report, image, original)


@netns
def test_cli_fuzz_without_scratch_writes_nothing(two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    original = make_image(image)
    start_aoe_serve(two_hosts, image, tmp_path / "state")
    done = two_hosts.initiator.run(
        [AOE, "fuzz", "eth0", "1.0", "--count", "3000", "--seed", "9", "--json",
         "--timeout", "0.5"], check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["seed"] == 9 and report["frames_sent"] == 3000
    assert report["neutralised"] > 0 and report["data_intact"] is True
    assert image.read_bytes() == original


@netns
def test_cli_fuzz_refuses_a_scratch_range_past_the_end(two_hosts: TwoHosts,
                                                        tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image)
    start_aoe_serve(two_hosts, image, tmp_path / "state")
    done = two_hosts.initiator.run(
        [AOE, "fuzz", "eth0", "1.0", "--scratch-lba", str(SECTORS - 1), "--scratch-sectors",
         "8", "--timeout", "0.3"], check=False, timeout=30)
    assert done.returncode == 1
    assert "not inside the device" in done.stderr and "Traceback" not in done.stderr
