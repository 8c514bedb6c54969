"""The session core on its own: a fake clock, hand-made answers, no sockets, no root.

The frames the core writes into its outboxes are read back with the protocol codec, and
the answers fed to it are built with the codec too, so these tests also hold the core's
fast header layouts to the codec's.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import pytest

from aoe.initiator import core as core_module
from aoe.initiator.core import (
    BATCH,
    NAP_FRAMES,
    NAP_MAX,
    NAP_MIN,
    TX_HEAD,
    Request,
    SessionCore,
)
from aoe.initiator.errors import MtuMismatchError, TargetDeadError, TargetReservedError
from aoe.initiator.window import (
    FLOOR_HOLD,
    FLOOR_MARGIN,
    INITIAL_SLACK,
    INITIAL_WINDOW,
    MacBudget,
    PathWindow,
)
from aoe.protocol import (
    ATA_HEADER_LEN,
    SECTOR_SIZE,
    AoeError,
    AtaBody,
    AtaFlag,
    AtaOpcode,
    AtaStatus,
    Command,
    ConfigBody,
    Frame,
    HeaderFlag,
    decode,
    encode,
    response_to,
)

SHELF, SLOT = 3, 4
TARGET_MACS = [b"\x02\x00\x00\x00\x01\x01", b"\x02\x00\x00\x00\x01\x02"]
SECTORS = 2  # per frame: small frames make many of them
RTT0 = 0.001
MIN_RTO, MAX_RTO = 0.02, 1.0
DEAD = 5.0
SLOT_SIZE = 2048


@pytest.fixture(autouse=True, params=["python", "compiled"])
def core_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every core test once per kind of loop: the Python reference and the compiled one
    (the other core test modules import this fixture)."""
    if request.param == "python":
        monkeypatch.setattr(core_module, "COMPILED", None)
    elif core_module.COMPILED is None:
        pytest.skip("the compiled core loops were not built")
    return str(request.param)


@dataclass
class FakePort:
    """What the core reads of a local port: its name, MAC and MTU."""

    ifname: str
    mac: bytes
    mtu: int = 1500


@dataclass
class Sent:
    """One frame the core asked to send, as the codec reads it."""

    path: int
    frame: Frame

    @property
    def lba(self) -> int:
        assert isinstance(self.frame.body, AtaBody)
        return self.frame.body.lba


@dataclass
class Outbox:
    """Stands where the I/O layer's send batch would: header slots plus payload pointers.

    ``drain`` turns what was queued into decoded frames, reading a write's payload at
    the address the core gave (the caller's own buffer)."""

    path: int
    buf: bytearray = field(default_factory=lambda: bytearray(BATCH * TX_HEAD))
    queued: int = 0
    data_addrs: list[int] = field(default_factory=lambda: [0] * BATCH)
    data_lens: list[int] = field(default_factory=lambda: [0] * BATCH)
    out: list[Sent] = field(default_factory=list)
    flushes: int = 0

    def flush(self) -> None:
        for q in range(self.queued):
            head = bytes(self.buf[q * TX_HEAD : q * TX_HEAD + ATA_HEADER_LEN])
            n = self.data_lens[q]
            data = ctypes.string_at(self.data_addrs[q], n) if n else b""
            self.out.append(Sent(self.path, decode(head + data)))
        self.queued = 0
        self.flushes += 1


class Harness:
    """A core over ``npaths`` paths (each its own local port and target MAC), a fake
    clock, and a target that answers exactly what a test tells it to."""

    def __init__(self, npaths: int = 1, buffers: int = 64, window: int | None = None) -> None:
        self.now = 100.0
        self.ports = [FakePort(f"eth{i}", bytes([2, 0, 0, 0, 0, 0x10 + i]))
                      for i in range(npaths)]
        self.paths: list[PathWindow] = []
        for i, port in enumerate(self.ports):
            path = PathWindow(i, port, TARGET_MACS[i], SHELF, SLOT,  # type: ignore[arg-type]
                        MacBudget(buffers), SECTORS, RTT0, MIN_RTO, MAX_RTO, window, self.now)
            path.io = port
            path.tx = Outbox(i)
            self.paths.append(path)
        self.core = SessionCore(SHELF, SLOT, self.paths, dead_timeout=DEAD, now=self.now)
        self.disk = bytes(range(256)) * (SECTOR_SIZE * 64 // 256)  # 64 sectors

    def read(self, lba: int, sectors: int) -> tuple[Request, bytearray]:
        buf = bytearray(sectors * SECTOR_SIZE)
        req = Request(AtaOpcode.READ_SECTORS_EXT, AtaFlag.EXTENDED, lba, sectors,
                      memoryview(buf), on_done=lambda r: None)
        self.core.submit(req)
        return req, buf

    def sent(self) -> list[Sent]:
        """Cut what the windows allow and take every frame queued so far."""
        self.core.next_frames(self.now)
        return self.drain()

    def drain(self) -> list[Sent]:
        out: list[Sent] = []
        for p in self.paths:
            p.tx.flush()
            out.extend(p.tx.out)
            p.tx.out.clear()
        return out

    def answer_bytes(self, sent: Sent, *, status: int = int(AtaStatus.DRDY)) -> bytes:
        req = sent.frame
        assert isinstance(req.body, AtaBody)
        body = req.body
        data = b""
        if not body.is_write:
            data = self.disk[body.lba * SECTOR_SIZE : (body.lba + body.sector_count)
                             * SECTOR_SIZE]
        ans = AtaBody(body.aflags, 0, body.sector_count, status, body.lba, data)
        return encode(response_to(req, TARGET_MACS[sent.path], ans), pad=True)

    def deliver(self, frames: list[bytes], port: int = 0) -> None:
        """Hand the core one received batch, laid out as recvmmsg fills it."""
        buf = bytearray(BATCH * SLOT_SIZE)
        lengths = [0] * BATCH
        for i, raw in enumerate(frames):
            buf[i * SLOT_SIZE : i * SLOT_SIZE + len(raw)] = raw
            lengths[i] = len(raw)
        self.core.on_answers(self.now, self.ports[port], buf, memoryview(buf), lengths,
                             len(frames), SLOT_SIZE)

    def answer(self, sents: list[Sent]) -> None:
        by_port: dict[int, list[bytes]] = {}
        for s in sents:
            by_port.setdefault(s.path, []).append(self.answer_bytes(s))
        for port, frames in by_port.items():
            self.deliver(frames, port)

    def tick(self, dt: float) -> list[tuple[PathWindow, bytes]]:
        self.now += dt
        probes, dead = self.core.on_timer(self.now)
        assert dead is None
        return probes


def test_read_is_cut_into_frames_and_copied_into_the_callers_buffer() -> None:
    h = Harness()
    req, buf = h.read(8, 8)
    sent = h.sent()
    assert [s.lba for s in sent] == [8, 10, 12, 14]  # INITIAL_WINDOW frames of 2 sectors
    assert all(s.frame.shelf == SHELF and s.frame.slot == SLOT for s in sent)
    assert all(s.frame.src == h.ports[0].mac and s.frame.dst == TARGET_MACS[0] for s in sent)
    h.answer(list(reversed(sent)))
    assert h.core.take_completed() == [req]
    assert req.error is None
    assert bytes(buf) == h.disk[8 * SECTOR_SIZE : 16 * SECTOR_SIZE]
    assert h.core.stats.answers == 4 and not h.core.tags


def test_write_frames_point_into_the_callers_buffer() -> None:
    h = Harness()
    data = bytearray(b"w" * SECTOR_SIZE + b"x" * SECTOR_SIZE)
    req = Request(AtaOpcode.WRITE_SECTORS_EXT, AtaFlag.EXTENDED | AtaFlag.WRITE, 5, 2,
                  memoryview(data), on_done=lambda r: None)
    h.core.submit(req)
    h.core.next_frames(h.now)
    tx = h.paths[0].tx
    assert tx.queued == 1
    assert tx.data_addrs[0] == ctypes.addressof(ctypes.c_char.from_buffer(data))  # no copy
    [sent] = h.drain()
    assert isinstance(sent.frame.body, AtaBody) and sent.frame.body.is_write
    assert bytes(sent.frame.body.data) == bytes(data)
    h.answer([sent])
    assert h.core.take_completed() == [req] and req.error is None


def test_a_lost_frame_is_resent_after_its_rto_and_then_completes() -> None:
    h = Harness()
    req, buf = h.read(0, 2)
    [first] = h.sent()
    rto = h.paths[0].rto
    assert h.core.next_check == pytest.approx(h.now + rto)
    assert h.tick(rto / 2) == [] and h.drain() == []  # not yet
    h.tick(rto / 2 + 1e-6)
    [again] = h.drain()
    assert again.lba == first.lba and again.frame.tag != first.frame.tag
    assert h.core.stats.retransmits == 1
    assert h.paths[0].rto == pytest.approx(2 * rto)  # backed off
    h.answer([again])
    assert h.core.take_completed() == [req]
    assert bytes(buf) == h.disk[: 2 * SECTOR_SIZE]
    # The answer to the first transmission, late, is now a stale duplicate.
    h.answer([first])
    assert h.core.stats.stale_or_duplicate == 1


def test_an_answer_to_an_earlier_transmission_still_counts() -> None:
    h = Harness()
    req, _ = h.read(0, 2)
    [first] = h.sent()
    h.tick(h.paths[0].rto + 1e-6)
    [again] = h.drain()
    h.answer([first])
    assert h.core.take_completed() == [req]
    assert not h.core.tags  # both tags forgotten
    h.answer([again])
    assert h.core.stats.stale_or_duplicate == 1


def test_duplicates_are_counted_and_ignored() -> None:
    h = Harness()
    req, buf = h.read(0, 4)
    sent = h.sent()
    h.answer(sent)
    assert h.core.take_completed() == [req]
    buf[:] = bytes(len(buf))  # a duplicate must not write into the buffer again
    h.answer(sent)
    assert h.core.stats.stale_or_duplicate == 2
    assert h.core.stats.answers == 2
    assert h.core.take_completed() == []
    assert bytes(buf) == bytes(len(buf))


def test_answers_from_the_wrong_mac_port_or_length_are_refused() -> None:
    h = Harness(npaths=2)
    req, _ = h.read(0, 2)
    [s] = h.sent()
    good = h.answer_bytes(s)
    other_port = 1 - s.path
    h.deliver([good], port=other_port)
    assert h.core.stats.wrong_source == 1
    forged = bytearray(good)
    forged[6:12] = b"\x02\xff\xff\xff\xff\xff"
    h.deliver([bytes(forged)], port=s.path)
    assert h.core.stats.wrong_source == 2
    h.deliver([good[:-SECTOR_SIZE]], port=s.path)
    assert h.core.stats.wrong_length == 1
    assert h.core.take_completed() == []
    h.deliver([good], port=s.path)
    assert h.core.take_completed() == [req]


def test_reordering_sets_off_a_fast_retransmit_then_widens_the_slack() -> None:
    h = Harness()
    path = h.paths[0]
    path.cwnd = 8.0
    req, buf = h.read(0, 16)
    sent = h.sent()
    assert len(sent) == 8
    assert path.slack == INITIAL_SLACK
    cwnd = path.cwnd
    # Everything but the first frame is answered: the first one looks lost.
    h.answer(sent[1:])
    resent = h.drain()
    assert [s.lba for s in resent] == [0]
    assert h.core.stats.fast_retransmits == 1 and h.core.stats.retransmits == 1
    assert path.cwnd < cwnd + 7  # the window was cut
    cut = path.cwnd
    # The original was only late: the resend was spurious.
    h.answer(sent[:1])
    assert h.core.stats.spurious_retransmits == 1
    assert path.slack == 2 * INITIAL_SLACK + 1
    assert path.cwnd > cut  # the cut was undone
    assert h.core.take_completed() == [req]
    assert bytes(buf) == h.disk[: 16 * SECTOR_SIZE]


def test_a_dead_path_is_marked_down_probed_and_its_frames_move_to_the_other() -> None:
    h = Harness(npaths=2)
    p0, p1 = h.paths
    reqs: list[Request] = []
    probes: list[tuple[PathWindow, bytes]] = []
    paths_used: set[int] = set()
    for _ in range(10):  # path 0 is silent; path 1 answers everything at once
        reqs.append(h.read(0, 8)[0])
        h.core.next_frames(h.now)
        out = h.drain()
        paths_used |= {s.path for s in out}
        h.answer([s for s in out if s.path == 1])
        probes = h.tick(p0.rto + 1e-6)
        if p0.down:
            break
    assert paths_used == {0, 1}  # round robin over both while both were up
    assert p0.down and not p1.down
    assert p0.timeouts_in_row == 3
    assert h.core.stats.path_failovers == 1
    assert [p for p, _ in probes] == [p0]
    probe = decode(probes[0][1])
    assert probe.command == Command.QUERY_CONFIG and probe.dst == TARGET_MACS[0]
    assert probe.src == h.ports[0].mac and (probe.shelf, probe.slot) == (SHELF, SLOT)
    # While it is down, everything goes the other way, and every read completes there.
    reqs.append(h.read(0, 8)[0])
    done: list[Request] = []
    for _ in range(20):
        h.core.next_frames(h.now)
        out = h.drain()
        assert all(s.path == 1 for s in out)
        h.answer(out)
        done += h.core.take_completed()
        if len(done) == len(reqs):
            break
        h.tick(p1.rto)
    assert {id(r) for r in done} == {id(r) for r in reqs}
    assert all(r.error is None for r in reqs)
    # Probes repeat at their interval while the path stays down.
    assert h.tick(0.1) == []
    assert [p for p, _ in h.tick(0.5)] == [p0] and p0.down


def test_a_path_comes_back_when_its_probe_is_answered() -> None:
    h = Harness(npaths=2)
    p0 = h.paths[0]
    p0.down = True
    p0.timeouts_in_row = 3
    p0.cwnd = 1.0
    p0.next_probe = h.now
    h.read(0, 2)
    [s] = h.sent()
    assert s.path == 1  # nothing goes to a path that is down
    [(path, raw)] = h.tick(0.0)
    assert path is p0
    query = decode(raw)
    reply = response_to(query, TARGET_MACS[0], ConfigBody(buffer_count=16, sector_count=2))
    raw_reply = encode(reply, pad=True)
    h.deliver([raw_reply], port=1)  # through the wrong port: no effect
    assert p0.down
    h.deliver([raw_reply], port=0)
    assert not p0.down and p0.timeouts_in_row == 0
    assert p0.cwnd == INITIAL_WINDOW
    assert p0.last_probe_rx == h.now


def test_a_dead_target_fails_every_waiter_after_dead_timeout() -> None:
    h = Harness()
    r1, _ = h.read(0, 2)
    r2, _ = h.read(2, 64 - 2)
    h.sent()
    t0 = h.now
    while h.now - t0 < DEAD - 0.5:
        h.tick(0.25)
        h.drain()
    assert h.core.stats.retransmits > 0
    h.now = t0 + DEAD
    probes, dead = h.core.on_timer(h.now)
    assert isinstance(dead, TargetDeadError)
    assert "did not answer for 5.0 s" in str(dead)
    failed = h.core.fail_all()
    assert {id(r) for r in failed} == {id(r1), id(r2)}
    assert not h.core.tags and not h.core.pending
    assert all(p.outstanding == 0 and p.budget.outstanding == 0 for p in h.paths)


def test_answers_keep_the_target_alive() -> None:
    h = Harness()
    h.read(0, 64)
    t0 = h.now
    while h.now - t0 < 2 * DEAD:
        sent = h.sent()
        h.now += 0.5
        h.answer(sent[:1])  # a trickle of answers
        _probes, dead = h.core.on_timer(h.now)
        assert dead is None


def test_window_grows_in_slow_start_and_collapses_on_timeouts() -> None:
    h = Harness(buffers=32)
    path = h.paths[0]
    assert path.cwnd == INITIAL_WINDOW
    h.read(0, 64)  # 32 frames
    sizes = []
    for _ in range(3):
        sent = h.sent()
        sizes.append(len(sent))
        h.now += RTT0
        h.answer(sent)
    assert sizes == [4, 8, 16]  # doubles every round trip
    assert path.cwnd == 32  # capped at the target's buffer count
    h.read(0, 64)
    assert len(h.sent()) == 4 + 28  # the rest of the first read and most of the second
    assert len(h.sent()) == 0  # the window is full
    assert path.outstanding == 32
    h.tick(path.rto + 1e-6)  # nothing answered within the RTO
    assert path.cwnd == 16 and path.ssthresh == 16
    assert len(h.drain()) == 32  # all resent
    h.tick(path.rto + 1e-6)
    assert path.cwnd == 8
    assert path.timeouts_in_row == 2 and not path.down


def test_a_flush_is_one_frame_without_data() -> None:
    h = Harness()
    req = Request(AtaOpcode.FLUSH_CACHE_EXT, AtaFlag.EXTENDED, 0, 0, None, on_done=lambda r: None)
    h.core.submit(req)
    [s] = h.sent()
    assert isinstance(s.frame.body, AtaBody)
    assert s.frame.body.cmd_status == AtaOpcode.FLUSH_CACHE_EXT and s.frame.body.sector_count == 0
    h.answer([s])
    assert h.core.take_completed() == [req]


def test_an_ata_error_fails_the_request_and_cancels_its_other_frames() -> None:
    h = Harness()
    req, _ = h.read(0, 8)
    sent = h.sent()
    h.deliver([h.answer_bytes(sent[1], status=int(AtaStatus.DRDY | AtaStatus.ERR))])
    assert h.core.take_completed() == [req]
    assert req.error is not None and "READ SECTORS EXT failed" in str(req.error)
    assert not h.core.tags
    h.answer(sent)
    assert h.core.take_completed() == []


def test_probes_answered_but_no_data_frame_means_an_mtu_mismatch() -> None:
    h = Harness()
    path = h.paths[0]
    req, _ = h.read(0, 2)
    h.sent()
    t0 = h.now
    probes: list[tuple[PathWindow, bytes]] = []
    while not probes:  # data frames go unanswered until the path is marked down
        probes = h.tick(path.rto + 1e-6)
    h.drain()
    query = decode(probes[0][1])
    reply = response_to(query, TARGET_MACS[0], ConfigBody(buffer_count=16, sector_count=2))
    h.deliver([encode(reply, pad=True)])  # small frames get through
    assert not path.down
    h.now = t0 + DEAD
    _probes, dead = h.core.on_timer(h.now)
    assert isinstance(dead, MtuMismatchError)
    assert "answers Query Config" in str(dead) and "1060 bytes" in str(dead)


def test_an_aoe_error_answer_fails_the_request_with_its_meaning() -> None:
    h = Harness()
    req, _ = h.read(0, 4)
    sent = h.sent()
    reply = response_to(sent[0].frame, TARGET_MACS[0], b"", error=AoeError.TARGET_RESERVED)
    assert reply.flags & HeaderFlag.ERROR
    h.deliver([encode(reply, pad=True)])
    assert h.core.take_completed() == [req]
    assert isinstance(req.error, TargetReservedError)
    assert not h.core.tags  # its other frame was cancelled too
    # The same error from another shelf.slot is not ours to act on.
    h2 = Harness()
    req2, _ = h2.read(0, 2)
    [s] = h2.sent()
    other = response_to(s.frame, TARGET_MACS[0], b"", error=AoeError.TARGET_RESERVED)
    other.slot = SLOT + 1
    h2.deliver([encode(other, pad=True)])
    assert h2.core.take_completed() == [] and h2.core.stats.wrong_address == 1


def test_a_timeout_answered_late_lifts_the_rto_floor_and_undoes_the_cut() -> None:
    """A target descheduled longer than the RTO (a CPU-capped one stops for up to 75 ms
    of each 100 ms) answers the first transmission after the resend went out: the
    timeout was spurious. The path keeps its window and its RTO stays above that delay,
    so the next such pause costs no resends; the floor relaxes once pauses stop."""
    h = Harness()
    path = h.paths[0]
    for _ in range(8):  # grow the window a little first
        h.read(0, 2)
        h.answer(h.sent())
        h.core.take_completed()
    cwnd = path.cwnd
    req, buf = h.read(4, 2)
    [first] = h.sent()
    stall = 0.075
    h.tick(stall)
    [again] = h.drain()
    assert again.frame.tag != first.frame.tag and path.cwnd < cwnd  # resent, cut
    h.answer([first])  # the target was only late
    assert h.core.take_completed() == [req] and bytes(buf) == h.disk[4 * 512 : 6 * 512]
    assert h.core.stats.spurious_timeouts == 1
    assert path.cwnd >= cwnd  # the cut is undone (and the answer grew it)
    assert path.rto_floor == pytest.approx(FLOOR_MARGIN * stall)
    # Clean samples do not pull the RTO under the floor ...
    h.read(8, 2)
    h.answer(h.sent())
    assert path.rto >= FLOOR_MARGIN * stall
    # ... so the next pause as long as the last is waited out without a resend.
    h.read(12, 2)
    pending = h.sent()
    h.tick(stall)
    assert h.drain() == [] and h.core.stats.retransmits == 1
    h.answer(pending)
    # Without another spurious timeout the floor halves every FLOOR_HOLD seconds.
    h.tick(FLOOR_HOLD)
    h.core.on_timer(h.now)
    assert path.rto_floor == pytest.approx(FLOOR_MARGIN * stall / 2)


def test_a_real_loss_does_not_lift_the_rto_floor() -> None:
    h = Harness()
    req, _ = h.read(0, 2)
    h.sent()
    h.tick(h.paths[0].rto + 1e-6)
    [again] = h.drain()
    h.answer([again])  # the first transmission was lost: only the resend is answered
    assert h.core.take_completed() == [req]
    assert h.core.stats.spurious_timeouts == 0
    assert h.paths[0].rto_floor == MIN_RTO


def test_nap_lets_answers_gather_only_in_a_bulk_transfer_on_a_slow_wire() -> None:
    """A wake-up that brought a few answers while requests wait for room waits for about
    NAP_FRAMES of them, or half the frames in flight if fewer (answers come every
    srtt / outstanding s), within limits."""
    h = Harness()
    path = h.paths[0]
    path.srtt = 0.010
    path.outstanding = 100
    assert h.core.nap(2) == 0.0  # all in flight (random I/O at a deep queue): no wait
    h.read(0, 8)  # a request waiting for room in the window: a bulk transfer
    assert h.core.pending
    path.outstanding = 100  # a 100 Mbit/s wire: an answer every 100 us
    assert h.core.nap(6) == pytest.approx((NAP_FRAMES - 6) * 0.010 / 100)
    assert h.core.nap(NAP_FRAMES) == 0.0 and h.core.nap(0) == 0.0
    path.srtt, path.outstanding = 0.002, 16  # a target allowing 16 frames (vblade) ...
    assert h.core.nap(1) == pytest.approx(7 * 0.002 / 16)  # ... on 100 Mbit/s: 8 answers
    assert h.core.nap(8) == 0.0  # half the window came: refill before the wire idles
    path.outstanding = 3  # a window cut to a few frames: one answer at a time
    assert h.core.nap(1) == 0.0
    path.srtt = 1.0  # never more than NAP_MAX
    path.outstanding = 64
    assert h.core.nap(1) == NAP_MAX
    path.srtt, path.outstanding = 0.0008, 1000  # a fast wire: too short a nap to take
    assert h.core.nap(1) == 0.0 and NAP_MIN > (NAP_FRAMES - 1) * 0.0008 / 1000


def test_a_batch_of_answers_folds_one_rtt_sample() -> None:
    """The clean answers of one received batch fold a single sample into the estimator
    (the latest; PathWindow.sample_rtt takes the lowest for min_rtt); a batch that holds
    something else first folds what came before it."""
    h = Harness()
    path = h.paths[0]
    h.read(0, 64)
    first = h.sent()  # 4 frames, sent now
    h.now += 0.001
    path.cwnd = 8.0
    second = h.sent()  # 4 more, 1 ms later
    assert len(first) == len(second) == 4
    h.now += 0.004
    srtt, rttvar = path.srtt, path.rttvar
    h.answer(first[:3])  # three answers of 5 ms
    err = 0.005 - srtt
    assert path.srtt == pytest.approx(srtt + err / 8)  # one sample, not three
    assert path.rttvar == pytest.approx(rttvar + (abs(err) - rttvar) / 4)
    # a duplicate in the middle of a batch splits it in two folds
    srtt = path.srtt
    h.answer([first[3], first[0], second[0]])  # 5 ms, a duplicate, 4 ms
    one = srtt + (0.005 - srtt) / 8
    assert path.srtt == pytest.approx(one + (0.004 - one) / 8)
    assert h.core.stats.stale_or_duplicate == 1
