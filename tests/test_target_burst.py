"""The compiled burst path (_burst.c) against the Python one: same bursts, same bytes.

Each test builds two identical targets (images, stores, engines), feeds both the same
burst, one through the Python reference and one through the compiled path, and compares
every byte of every slot, every reply length, the images afterwards, the counters and the
peer records.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aoe.protocol import (
    AtaBody,
    AtaFlag,
    AtaOpcode,
    Command,
    ConfigBody,
    ConfigCommand,
    Frame,
    encode,
)
from aoe.target import Counters, Engine, ExportSpec, Store
from aoe.target import engine as engine_module

TARGET = bytes.fromhex("020000000001")
INITS = [bytes.fromhex("020000000002"), bytes.fromhex("020000000003")]
SECTORS = 256
SLOT = 1536

pytestmark = pytest.mark.skipif(engine_module.COMPILED_BURST is None,
                                reason="the compiled burst path was not built")


@dataclass
class Side:
    """One target: its images, stores and engine, on one burst path."""

    images: list[Path]
    stores: list[Store]
    engine: Engine
    left_to_python: int = 0  # frames the compiled path handed back one by one


def make_side(root: Path, name: str, compiled: bool, *, read_only_second: bool = False,
              guard_second: bool = False) -> Side:
    d = root / name
    d.mkdir()
    images, stores = [], []
    for k in range(2):
        p = d / f"disk{k}.img"
        p.write_bytes(bytes((i * 7 + k) & 0xFF for i in range(SECTORS * 512)))
        images.append(p)
        stores.append(Store.open(ExportSpec(1, k, str(p), read_only=read_only_second and k == 1,
                                            serial=f"BURST{k}"),
                                 d / f"state{k}"))
    if guard_second:
        stores[1].set_masks([INITS[0]])
    eng = Engine(stores, TARGET, 1500, Counters())
    if not compiled:
        eng._compiled = None
    assert eng.accelerated == compiled
    side = Side(images, stores, eng)
    real = eng.respond_in_place

    def counted(buf: bytearray | memoryview, mv: memoryview, n: int) -> int:
        side.left_to_python += 1
        return real(buf, mv, n)

    eng.respond_in_place = counted  # type: ignore[method-assign]
    return side


@contextmanager
def two_sides(**options: bool) -> Iterator[tuple[Side, Side]]:
    """A Python and a compiled side, alike in everything else; closed and removed after."""
    root = Path(tempfile.mkdtemp(prefix="aoe-burst-"))
    made: list[Side] = []
    try:
        made.append(make_side(root, "py", False, **options))
        made.append(make_side(root, "cc", True, **options))
        yield made[0], made[1]
    finally:
        for s in made:
            for store in s.stores:
                store.close()
        shutil.rmtree(root)


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    with two_sides() as pair:
        yield pair


def run(side: Side, frames: list[bytes], lengths: list[int] | None = None
        ) -> tuple[int, list[int], bytes]:
    buf = bytearray(SLOT * len(frames))
    whole = memoryview(buf)
    views = [whole[i * SLOT : (i + 1) * SLOT] for i in range(len(frames))]
    for v, f in zip(views, frames, strict=True):
        v[: len(f)] = f[:SLOT]
    out = [0] * len(frames)
    side.engine.now = 1234.5
    got = side.engine.respond_batch(views, lengths or [len(f) for f in frames],
                                    len(frames), out)
    return got, out, bytes(buf)


def state(side: Side) -> tuple[object, ...]:
    c = side.engine.counters
    return (
        [p.read_bytes() for p in side.images],
        (c.reads, c.writes, c.bytes_read, c.bytes_written, dict(c.errors)),
        [(s.bytes_read, s.bytes_written, s.errors, {m: list(r) for m, r in s.peers.items()})
         for s in side.stores],
    )


def same(py: Side, cc: Side, frames: list[bytes], lengths: list[int] | None = None) -> list[int]:
    a, b = run(py, frames, lengths), run(cc, frames, lengths)
    assert a[1] == b[1]  # reply lengths, frame by frame
    assert a[0] == b[0]  # replies
    assert a[2] == b[2]  # every byte of every slot
    assert state(py) == state(cc)
    return a[1]


def ata(op: int, lba: int, count: int, data: bytes = b"", *, ext: bool = True,
        write: bool | None = None, slot: int = 0, src: int = 0, tag: int = 1,
        dst: bytes = TARGET) -> bytes:
    if write is None:
        write = bool(data)
    flags = (AtaFlag.EXTENDED if ext else 0) | (AtaFlag.WRITE if write else 0)
    body = AtaBody(int(flags), 0, count, op, lba, data)
    return encode(Frame(dst, INITS[src], 1, slot, Command.ATA, tag, body))


# --- hand-picked bursts ---------------------------------------------------------------
def test_runs_of_reads_and_writes_in_order(sides: tuple[Side, Side]) -> None:
    py, cc = sides
    data = os.urandom(4 * 1024)
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, 10 + 2 * i, 2, tag=i) for i in range(6)]
    frames += [ata(AtaOpcode.WRITE_SECTORS_EXT, 20 + 2 * i, 2, data[i * 1024:(i + 1) * 1024],
                   tag=10 + i) for i in range(4)]
    frames += [ata(AtaOpcode.READ_SECTORS_EXT, 20, 2, tag=20)]  # reads what was just written
    out = same(py, cc, frames)
    assert out == [36 + 1024] * 6 + [60] * 4 + [36 + 1024]
    assert cc.left_to_python == 0
    assert cc.engine.counters.writes == 4 and cc.engine.counters.reads == 7


def test_frames_left_to_python_keep_their_place(sides: tuple[Side, Side]) -> None:
    """IDENTIFY, Query Config, a read past the end, a 28-bit write, a read-flagged write,
    another MAC, and count 0 between plain reads: each answered where it stands."""
    py, cc = sides
    config = encode(Frame(TARGET, INITS[0], 1, 0, Command.QUERY_CONFIG, 3,
                          ConfigBody(0, 0, 0, 0, ConfigCommand.READ, b"")))
    frames = [
        ata(AtaOpcode.READ_SECTORS_EXT, 0, 2),
        ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1),
        ata(AtaOpcode.READ_SECTORS_EXT, 2, 2),
        config,
        ata(AtaOpcode.READ_SECTORS_EXT, SECTORS - 1, 2),
        ata(AtaOpcode.WRITE_SECTORS, 5, 1, bytes(range(256)) * 2, ext=False),
        ata(AtaOpcode.READ_SECTORS_EXT, 7, 1, write=True),
        ata(AtaOpcode.READ_SECTORS_EXT, 7, 1, dst=bytes(6)),
        ata(AtaOpcode.READ_SECTORS_EXT, 7, 0),
        ata(AtaOpcode.READ_SECTORS_EXT, 4, 2, slot=1, src=1),
        b"\x00" * 20,
    ]
    out = same(py, cc, frames)
    assert out[0] == out[2] == out[9] == 36 + 1024 and out[3] == -1 and out[10] == -1
    assert cc.left_to_python == 4  # IDENTIFY, past the end, read flagged write, count 0


def test_28_bit_requests_ignore_the_device_bits(sides: tuple[Side, Side]) -> None:
    """A 28-bit LBA's fourth byte carries device bits above the address (0xE0 from the
    Linux driver); both paths mask them off."""
    py, cc = sides
    frames = [bytearray(ata(AtaOpcode.READ_SECTORS, 5 + i, 1, ext=False, tag=i))
              for i in range(3)]
    frames.append(bytearray(ata(AtaOpcode.WRITE_SECTORS, 9, 1, b"\xaa" * 512, ext=False)))
    for f in frames:
        f[31] |= 0xE0
    out = same(py, cc, [bytes(f) for f in frames])
    assert out == [36 + 512] * 3 + [60]
    assert cc.left_to_python == 0
    assert cc.images[0].read_bytes()[9 * 512 : 10 * 512] == b"\xaa" * 512


def test_read_only_and_guarded_exports() -> None:
    for kind in ("read_only_second", "guard_second"):
        with two_sides(**{kind: True}) as (py, cc):
            frames = [ata(AtaOpcode.WRITE_SECTORS_EXT, 3, 1, b"\x55" * 512, slot=1, src=s)
                      for s in (0, 1)] + [ata(AtaOpcode.READ_SECTORS_EXT, 3, 1, slot=1)]
            same(py, cc, frames)


def test_many_addresses_in_one_burst(sides: tuple[Side, Side]) -> None:
    """More addresses than the compiled path remembers in one call."""
    py, cc = sides
    frames = []
    for k in range(12):
        frames.append(encode(Frame(TARGET, INITS[0], 2 + k, 0, Command.ATA, k,
                                   AtaBody(0x40, 0, 1, AtaOpcode.READ_SECTORS_EXT, 0, b""))))
        frames.append(ata(AtaOpcode.READ_SECTORS_EXT, k, 1, tag=k))
    out = same(py, cc, frames)
    assert out[1::2] == [36 + 512] * 12 and out[0::2] == [-1] * 12
    assert cc.left_to_python == 1  # the ninth address of the call


def test_a_truncated_store_answers_the_same_errors(sides: tuple[Side, Side]) -> None:
    """Reads past what the file now holds come back short: the run is handed back and
    only the frames that fail get an error."""
    py, cc = sides
    for s in (py, cc):
        os.truncate(s.images[0], 100 * 512)
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, 96 + 2 * i, 2, tag=i) for i in range(4)]
    frames.append(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, tag=9))
    out = same(py, cc, frames)
    assert out == [36 + 1024, 36 + 1024, 60, 60, 36 + 512]
    assert cc.stores[0].errors == 2


def test_a_failing_write_answers_the_same_errors(sides: tuple[Side, Side]) -> None:
    """Writes past the process's file size limit fail (EFBIG): the frames below it are
    stored and acknowledged, the others get an error, on both paths."""
    py, cc = sides
    data = os.urandom(6 * 1024)
    frames = [ata(AtaOpcode.WRITE_SECTORS_EXT, 60 + 2 * i, 2, data[i * 1024:(i + 1) * 1024],
                  tag=i) for i in range(6)]
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 512, old_limit[1]))
        out = same(py, cc, frames)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert out == [60] * 6
    assert cc.engine.counters.writes == 2 and cc.stores[0].errors == 4
    assert cc.images[0].read_bytes()[60 * 512 : 64 * 512] == data[:2048]


def test_received_lengths_from_a_frame_batch(sides: tuple[Side, Side]) -> None:
    """The serve loop passes FrameBatch.lengths (a strided view of unsigned ints)."""
    py, cc = sides
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, i, 1, tag=i) for i in range(4)]
    raw = bytearray(64 * len(frames))
    lengths = memoryview(raw).cast("I")[14::16]
    for i, f in enumerate(frames):
        lengths[i] = len(f)
    a, b = run(py, frames, list(lengths)), run(cc, frames, lengths)  # type: ignore[arg-type]
    assert a == b and a[1] == [36 + 512] * 4


def test_a_direct_export_stays_on_the_python_path(tmp_path: Path) -> None:
    p = tmp_path / "d.img"
    p.write_bytes(bytes(SECTORS * 512))
    try:
        store = Store.open(ExportSpec(1, 0, str(p), direct=True), tmp_path / "st")
    except Exception as exc:  # tmpfs refuses O_DIRECT
        pytest.skip(f"no O_DIRECT here: {exc}")
    with store:
        assert not Engine([store], TARGET, 1500).accelerated


# --- random bursts ----------------------------------------------------------------------
OPS = [AtaOpcode.READ_SECTORS_EXT, AtaOpcode.READ_SECTORS, AtaOpcode.WRITE_SECTORS_EXT,
       AtaOpcode.WRITE_SECTORS, AtaOpcode.IDENTIFY_DEVICE, AtaOpcode.CHECK_POWER_MODE]


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    op = draw(st.sampled_from(OPS))
    count = draw(st.sampled_from([0, 1, 2, 3, 4]))
    lba = draw(st.one_of(st.integers(0, SECTORS - 1), st.integers(SECTORS - 4, SECTORS + 4),
                         st.integers(0, 2**48 - 1)))
    write = op in (AtaOpcode.WRITE_SECTORS_EXT, AtaOpcode.WRITE_SECTORS)
    data = draw(st.binary(min_size=count * 512, max_size=count * 512)) if write else b""
    frame = bytearray(ata(op, lba if op in (AtaOpcode.READ_SECTORS_EXT,
                                           AtaOpcode.WRITE_SECTORS_EXT) else lba & 0x0FFFFFFF,
                          count, data, ext=draw(st.booleans()),
                          write=draw(st.sampled_from([None, True, False])),
                          slot=draw(st.sampled_from([0, 0, 1, 7])),
                          src=draw(st.integers(0, 1)), tag=draw(st.integers(0, 2**32 - 1))))
    for _ in range(draw(st.integers(0, 2))):  # a few bytes mutated anywhere
        i = draw(st.integers(0, len(frame) - 1))
        frame[i] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(frame))))
    return bytes(frame if cut is None else frame[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(burst=st.lists(frames(), min_size=1, max_size=24))
def test_random_bursts_match(burst: list[bytes]) -> None:
    with two_sides() as (py, cc):
        same(py, cc, burst)
        same(py, cc, burst)  # again: the peers and totals add up the same way
