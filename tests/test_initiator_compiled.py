"""The compiled core loops (_compiled.c) against the Python ones, step by step.

Two session cores are driven in lockstep through the same random story: requests
submitted, frames cut, answers delivered in any order (late, duplicated, on the wrong
port, cut short, with an ATA error), time passing and timers firing. After every step the
two must agree on everything the core keeps: every window, RTT and timer field of every
path, its sending order, the outstanding tags in order, the counters, what completed, the
callers' buffers and the frames sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aoe.initiator import core as core_module
from aoe.initiator.core import BATCH, InFlight, Request
from aoe.initiator.window import PathWindow
from aoe.protocol import SECTOR_SIZE, AtaFlag, AtaOpcode, AtaStatus

from .test_initiator_core import Harness, Sent

pytestmark = pytest.mark.skipif(core_module.COMPILED is None,
                                reason="the compiled core loops were not built")

PATH_FIELDS = [f for f in PathWindow.__slots__ if f not in ("port", "io", "tx", "budget", "txq",
                                                            "prefix")]


def core_tag(s: Sent) -> int:
    """The tag as the core keys it (it reads the four bytes little-endian, the codec
    big-endian)."""
    return int.from_bytes(s.frame.tag.to_bytes(4, "big"), "little")


class Twin:
    """One harness on one answer loop, with the requests and buffers it was given."""

    def __init__(self, npaths: int, compiled: bool) -> None:
        self.h = Harness(npaths=npaths)
        if not compiled:
            self.h.core._compiled_answers = self.h.core._compiled_cut = None
        assert (self.h.core._compiled_answers is not None) == compiled
        assert (self.h.core._compiled_cut is not None) == compiled
        self.reqs: list[Request] = []
        self.bufs: list[bytearray] = []
        self.sent: list[Sent] = []  # every frame sent so far, in order
        self.done: list[int] = []  # indices of completed requests, in completion order

    def submit(self, write: bool, lba: int, sectors: int) -> None:
        buf = bytearray(sectors * SECTOR_SIZE)
        if write:
            buf[:] = random.Random(len(self.reqs)).randbytes(len(buf))
            flags = AtaFlag.EXTENDED | AtaFlag.WRITE
            op = AtaOpcode.WRITE_SECTORS_EXT
        else:
            flags, op = AtaFlag.EXTENDED, AtaOpcode.READ_SECTORS_EXT
        req = Request(op, flags, lba, sectors, memoryview(buf), on_done=lambda r: None)
        self.reqs.append(req)
        self.bufs.append(buf)
        self.h.core.submit(req)

    def cut(self) -> None:
        self.sent.extend(self.h.sent())

    def deliver(self, picks: list[tuple[int, str]]) -> None:
        """Answer sent frames (by index) in the given order, each in its own way, as
        batches per port."""
        by_port: dict[int, list[bytes]] = {}
        for idx, how in picks:
            s = self.sent[idx % len(self.sent)]
            raw = self.h.answer_bytes(s, status=int(AtaStatus.DRDY | AtaStatus.ERR)
                                      if how == "error" else int(AtaStatus.DRDY))
            port = s.path
            if how == "short":
                raw = raw[:-1] if len(raw) > 60 else raw + b"\0" * 8
            elif how == "other_port":
                port = (port + 1) % len(self.h.paths)
            by_port.setdefault(port, []).append(raw)
        for port, frames in by_port.items():
            for first in range(0, len(frames), BATCH):  # as recvmmsg hands them over
                self.h.deliver(frames[first : first + BATCH], port)
        self._take()

    def deliver_outstanding(self, seed: int, keep: float) -> None:
        """Answer a share of the frames still outstanding, shuffled (reordering)."""
        tags = self.h.core.tags
        live = [i for i, s in enumerate(self.sent) if core_tag(s) in tags]
        rng = random.Random(seed)
        rng.shuffle(live)
        live = live[: max(1, int(len(live) * keep))]
        if live:
            self.deliver([(i, "ok") for i in live])

    def tick(self, dt: float) -> None:
        self.h.now += dt
        self.h.core.on_timer(self.h.now)
        self.sent.extend(self.h.drain())
        self._take()

    def _take(self) -> None:
        ids = {id(r): i for i, r in enumerate(self.reqs)}
        self.done.extend(ids[id(r)] for r in self.h.core.take_completed())

    def snapshot(self) -> object:
        core = self.h.core
        paths = []
        for p in self.h.paths:
            paths.append(([getattr(p, f) for f in PATH_FIELDS], p.budget.outstanding,
                          [self.frame_fields(f) for f in p.txq], bytes(p.tx.buf),
                          list(p.tx.data_lens)))
        frames = [(s.path, s.frame.tag, s.lba, bytes(s.frame.body.data))  # type: ignore[union-attr]
                  for s in self.sent]
        tags = [(t, self.frame_fields(f)) for t, f in core.tags.items()]
        pending = [self.index(r) for r in core.pending]
        reqs = [(r.remaining, r.frames_out, r.next_lba, r.next_off, type(r.error).__name__)
                for r in self.reqs]
        return (paths, tags, pending, core._seq, core._turn, core.stats.as_dict(),
                core.last_rx, reqs, self.done, [bytes(b) for b in self.bufs], frames)

    def index(self, req: Request) -> int:
        """The request's place among those submitted (-1: one the core made itself)."""
        return next((i for i, r in enumerate(self.reqs) if r is req), -1)

    def frame_fields(self, f: InFlight) -> list[object]:
        """Every field of an InFlight record, its request and path by their places."""
        out: list[object] = []
        for name in InFlight.__slots__:
            v = getattr(f, name)
            if name == "req":
                v = self.index(v)
            elif name == "path":
                v = v.index
            out.append(v)
        return out


TICKS = [0.0001, 0.001, 0.004, 0.007, 0.01, 0.05, 0.3]
HOWS = st.sampled_from(["ok"] * 8 + ["error", "short", "other_port"])
STEP = st.one_of(
    st.tuples(st.just("submit"), st.booleans(), st.integers(0, 40), st.integers(1, 24)),
    st.tuples(st.just("cut")),
    st.tuples(st.just("answer"), st.lists(st.tuples(st.integers(0, 10**6), HOWS),
                                          min_size=1, max_size=40)),
    st.tuples(st.just("answer_all_in_order")),
    st.tuples(st.just("answer_outstanding"), st.integers(0, 2**32),
              st.sampled_from([0.3, 0.7, 1.0])),
    st.tuples(st.just("tick"), st.sampled_from(TICKS)),
    # a round trip: cut, let time pass, answer (part of) what is out, shuffled; repeated
    st.tuples(st.just("rounds"), st.integers(1, 12), st.integers(0, 2**32),
              st.sampled_from([0.7, 1.0]), st.sampled_from(TICKS)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(npaths=st.integers(1, 2), steps=st.lists(STEP, min_size=1, max_size=40))
def test_both_loops_keep_the_same_state(npaths: int, steps: list[tuple[object, ...]]) -> None:
    py, cc = Twin(npaths, compiled=False), Twin(npaths, compiled=True)
    for step in steps:
        for t in (py, cc):
            kind = step[0]
            if kind == "submit":
                t.submit(bool(step[1]), int(step[2]), int(step[3]))  # type: ignore[call-overload]
            elif kind == "cut":
                t.cut()
            elif kind == "answer" and t.sent:
                t.deliver(list(step[1]))  # type: ignore[call-overload]
            elif kind == "answer_all_in_order" and t.sent:
                t.deliver([(i, "ok") for i in range(len(t.sent))])
            elif kind == "answer_outstanding":
                t.deliver_outstanding(int(step[1]), float(step[2]))  # type: ignore[call-overload, arg-type]
            elif kind == "tick":
                t.tick(float(step[1]))  # type: ignore[arg-type]
            elif kind == "rounds":
                for k in range(int(step[1])):  # type: ignore[call-overload]
                    t.cut()
                    t.tick(float(step[4]) if k % 3 == 2 else 0.0005)  # type: ignore[arg-type]
                    t.deliver_outstanding(int(step[2]) + k, float(step[3]))  # type: ignore[call-overload, arg-type]
        assert py.snapshot() == cc.snapshot(), step


def test_a_clean_burst_takes_no_python_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-order clean answers are taken by the compiled loop alone."""
    t = Twin(1, compiled=True)
    calls: list[int] = []
    real = t.h.core._on_answers_python

    def counted(*args: object) -> None:
        calls.append(1)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(t.h.core, "_on_answers_python", counted)
    t.submit(False, 0, 16)
    while not t.done:  # the window opens as answers come
        before = len(t.sent)
        t.cut()
        assert len(t.sent) > before
        t.deliver([(i, "ok") for i in range(before, len(t.sent))])
    assert calls == [] and t.done == [0]
    assert bytes(t.bufs[0]) == t.h.disk[: 16 * SECTOR_SIZE]


def story_step(rng: random.Random) -> Callable[[Twin], None]:
    """One random step of a long story, to be done to both twins."""
    k = rng.random()
    if k < 0.15:
        write, lba, sectors = rng.random() < 0.3, rng.randint(0, 40), rng.randint(1, 24)
        return lambda t: t.submit(write, lba, sectors)
    if k < 0.3:
        rounds = [(0.0005 if j % 3 != 2 else rng.choice([0.004, 0.007, 0.01, 0.05]),
                   rng.randint(0, 2**32), rng.choice([0.5, 0.9, 1.0]))
                  for j in range(rng.randint(1, 12))]

        def run_rounds(t: Twin) -> None:
            for dt, pick, keep in rounds:
                t.cut()
                t.tick(dt)
                t.deliver_outstanding(pick, keep)
        return run_rounds
    if k < 0.55:
        return Twin.cut
    if k < 0.8:
        pick, keep = rng.randint(0, 2**32), rng.choice([0.3, 0.7, 1.0])
        return lambda t: t.deliver_outstanding(pick, keep) if t.sent else None
    if k < 0.9:
        picks = [(rng.randint(0, 10**6), rng.choice(["ok", "ok", "error", "short", "other_port"]))
                 for _ in range(6)]
        return lambda t: t.deliver(picks) if t.sent else None
    dt = rng.choice(TICKS)
    return lambda t: t.tick(dt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(npaths=st.integers(1, 2), seed=st.integers(0, 2**32))
def test_long_stories_keep_the_same_state(npaths: int, seed: int) -> None:
    """Longer stories than the step lists above grow to: windows open past the queued
    minimum, frames overtake each other, answers come late."""
    rng = random.Random(seed)
    py, cc = Twin(npaths, compiled=False), Twin(npaths, compiled=True)
    for _ in range(60):
        step = story_step(rng)
        step(py)
        step(cc)
        assert py.snapshot() == cc.snapshot()
