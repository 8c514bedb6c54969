"""The session core's batch paths: frames cut in runs, and one received batch that mixes
everything a real one can hold (answers to several requests, duplicates, stale and forged
tags, error answers, short frames), with a fake clock and no sockets."""

from __future__ import annotations

from collections import deque

from aoe.initiator.core import BATCH, RUN_FRAMES, Request
from aoe.initiator.errors import AtaCommandError
from aoe.protocol import SECTOR_SIZE, AtaBody, AtaFlag, AtaOpcode, AtaStatus

from .test_initiator_core import (
    SECTORS,
    SLOT_SIZE,
    Harness,
    Sent,
    core_loops,  # noqa: F401 - both kinds of loop
)


def frame_order(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """The order requests of ``sizes`` frames take turns in, frame by frame: each request
    at the head sends RUN_FRAMES frames in a row, then goes to the back (unless it is
    alone or done); (request, frame) pairs, the first ``limit`` of them."""
    pending = deque((i, n) for i, n in enumerate(sizes))
    cut = [0] * len(sizes)
    out: list[tuple[int, int]] = []
    run = 0
    while pending and len(out) < limit:
        i, n = pending[0]
        out.append((i, cut[i]))
        cut[i] += 1
        if cut[i] == n:
            pending.popleft()
            run = 0
        elif len(pending) > 1:
            run += 1
            if run >= RUN_FRAMES:
                pending.rotate(-1)
                run = 0
    return out


def by_lba(sent: list[Sent], starts: list[int]) -> list[tuple[int, int]]:
    """(request, frame) of each sent frame, from its LBA (request i starts at starts[i])."""
    out = []
    for s in sent:
        i = max(k for k, start in enumerate(starts) if s.lba >= start)
        out.append((i, (s.lba - starts[i]) // SECTORS))
    return out


def test_requests_take_turns_in_runs_as_frame_by_frame() -> None:
    h = Harness(buffers=128, window=128)
    h.paths[0].cwnd = 128.0
    sizes = [40, 20, 5]  # frames
    starts = [0, 1000, 2000]
    for start, n in zip(starts, sizes, strict=True):
        h.read(start, n * SECTORS)
    sent = h.sent()
    assert by_lba(sent, starts) == frame_order(sizes, 128)
    tags = [s.frame.tag & 0xFFFFFFFF for s in sent]
    assert len(set(tags)) == len(tags)  # a fresh tag per frame
    assert h.paths[0].outstanding == h.paths[0].budget.outstanding == len(sent) == sum(sizes)
    assert h.paths[0].pseq == h.paths[0].sent == len(sent)
    assert len(h.core.tags) == len(sent)


def test_a_turn_goes_on_across_calls() -> None:
    h = Harness(buffers=128, window=128)
    path = h.paths[0]
    sizes = [30, 30]
    starts = [0, 1000]
    for start, n in zip(starts, sizes, strict=True):
        h.read(start, n * SECTORS)
    got: list[Sent] = []
    for room in (5, 7, 9, 3, 20):  # the window opens a few frames at a time
        path.cwnd = float(path.outstanding + room)
        got += h.sent()
    assert by_lba(got, starts) == frame_order(sizes, 44)


def test_the_window_counts_a_fractional_frame_and_the_targets_buffers() -> None:
    h = Harness()
    h.paths[0].cwnd = 4.5  # outstanding < cwnd before each frame: 5 frames
    h.read(0, 40)
    assert len(h.sent()) == 5
    h2 = Harness(buffers=3)
    h2.paths[0].cwnd = 10.0
    h2.read(0, 40)
    assert len(h2.sent()) == 3  # the target announced 3 buffers


def test_a_full_outbox_is_sent_in_the_middle_of_a_run() -> None:
    h = Harness(buffers=128, window=128)
    h.paths[0].cwnd = 100.0
    req, buf = h.read(0, 100 * SECTORS)
    h.core.next_frames(h.now)
    tx = h.paths[0].tx
    assert tx.flushes == 1 and tx.queued == 100 - BATCH
    sent = h.drain()
    assert [s.lba for s in sent] == list(range(0, 200, SECTORS))


def test_a_flush_between_reads_is_one_frame_in_its_turn() -> None:
    h = Harness()
    h.paths[0].cwnd = 16.0
    a, _ = h.read(0, 3 * SECTORS)
    flush = Request(AtaOpcode.FLUSH_CACHE_EXT, AtaFlag.EXTENDED, 0, 0, None,
                    on_done=lambda r: None)
    h.core.submit(flush)
    b, _ = h.read(20, 2 * SECTORS)
    sent = h.sent()
    counts = [s.frame.body.sector_count for s in sent
              if isinstance(s.frame.body, AtaBody)]
    assert counts == [SECTORS] * 3 + [0] + [SECTORS] * 2
    assert [s.lba for s in sent][4:] == [20, 22]
    h.answer(sent)
    assert {id(r) for r in h.core.take_completed()} == {id(a), id(flush), id(b)}


def test_one_batch_of_everything() -> None:
    """Answers to three requests in one batch, mixed with a duplicate, a forged tag, a
    runt, a truncated answer, an error answer and an answer to a cancelled frame."""
    h = Harness()
    h.paths[0].cwnd = 16.0
    a, abuf = h.read(0, 4 * SECTORS)
    b, bbuf = h.read(20, 2 * SECTORS + 1)  # its last frame is one sector: a short copy
    c, _ = h.read(40, 2 * SECTORS)
    sent = h.sent()
    assert len(sent) == 4 + 3 + 2
    sa, sb, sc = sent[:4], sent[4:7], sent[7:]
    ok = {id(s): h.answer_bytes(s) for s in sent}
    forged = bytearray(ok[id(sa[0])])
    forged[20:24] = (0x7FFFFF00).to_bytes(4, "little")  # a tag never sent
    truncated = ok[id(sa[3])][:-SECTOR_SIZE]
    # An ATA error answer without data (60 bytes, the Ethernet minimum).
    error = h.answer_bytes(sc[0], status=int(AtaStatus.DRDY | AtaStatus.ERR))[:60]
    batch = [
        ok[id(sa[0])],
        ok[id(sb[2])],
        ok[id(sa[0])],  # duplicate within the batch
        bytes(forged),
        b"\x00" * 20,  # runt
        ok[id(sa[1])],
        error,  # fails c and cancels its other frame
        ok[id(sb[0])],
        truncated,
        ok[id(sc[1])],  # answer to a frame cancelled a moment ago
        ok[id(sa[2])],
        ok[id(sb[1])],
        ok[id(sa[3])],
    ]
    h.deliver(batch)
    stats = h.core.stats
    assert stats.stale_or_duplicate == 3
    assert stats.bad_frames == 1
    assert stats.wrong_length == 1
    assert stats.answers == 4 + 3 + 1
    done = h.core.take_completed()
    assert {id(r) for r in done} == {id(a), id(b), id(c)}
    assert a.error is None and b.error is None
    assert isinstance(c.error, AtaCommandError)
    assert bytes(abuf) == h.disk[: 8 * SECTOR_SIZE]
    assert bytes(bbuf) == h.disk[20 * SECTOR_SIZE : 25 * SECTOR_SIZE]
    assert not h.core.tags
    assert h.paths[0].outstanding == h.paths[0].budget.outstanding == 0
    # Out of order within the batch: the frames answered late were resent at once, and
    # their answers then showed the resends to be spurious, as frame by frame.
    assert stats.retransmits == stats.fast_retransmits == stats.spurious_retransmits == 2


def test_a_reused_receive_buffer_is_read_afresh() -> None:
    """The I/O layer hands in the same receive buffer every time (the core keeps views of
    it); a test or another layer may also hand in new ones, more than the core keeps."""
    h = Harness()
    h.paths[0].cwnd = 1.0
    buf = bytearray(BATCH * SLOT_SIZE)
    mv = memoryview(buf)
    lengths = [0] * BATCH
    for lba in range(0, 40, SECTORS):
        req, dest = h.read(lba, SECTORS)
        [s] = h.sent()
        raw = h.answer_bytes(s)
        if lba >= 20:  # new buffers from here on, each used once
            buf = bytearray(BATCH * SLOT_SIZE)
            mv = memoryview(buf)
        buf[: len(raw)] = raw
        lengths[0] = len(raw)
        h.core.on_answers(h.now, h.ports[0], buf, mv, lengths, 1, SLOT_SIZE)
        assert h.core.take_completed() == [req]
        assert bytes(dest) == h.disk[lba * SECTOR_SIZE : (lba + SECTORS) * SECTOR_SIZE]
