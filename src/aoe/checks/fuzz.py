"""Fuzz an AoE target: blast generated and mutated frames at it, then check it survived.

The run is bounded by a frame count and optionally a time. Before it, the fuzzer learns the
target (capacity, limits, config string, reservation, mask list), finds an address nobody
answers (the "void"), and checksums the data outside the scratch range over the network.
After it, it forces config string and reservation back, checks the target still answers
Query Config and IDENTIFY, checksums the same sectors again, and writes the scratch range's
original data back. The write-safety rule is described in :mod:`aoe.checks.fuzz_frames`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..fdwait import readable
from ..protocol import (
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    AtaBody,
    AtaOpcode,
    Command,
    ConfigBody,
    ConfigCommand,
    MaskBody,
    MaskCommand,
    ReserveBody,
    ReserveCommand,
    max_sectors_for_mtu,
    parse_identify,
)
from ..protocol.constants import SECTOR_SIZE
from .fuzz_frames import FrameFactory, FuzzTarget
from .probe import Probe, decode_reply

DEFAULT_VERIFY_SECTORS = 16384  # checksum the whole device up to 8 MiB, else samples
SAMPLE_SECTORS = 2048


class FuzzError(RuntimeError):
    """The fuzzer cannot start: target missing, unreadable, reserved by others, bad range."""


@dataclass
class FuzzReport:
    """What a fuzz run did and found. ``ok``: alive, data intact and state restored."""

    target: str
    seed: int
    frames_sent: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    neutralised: int = 0
    withheld: int = 0
    send_errors: int = 0
    answers: int = 0
    answers_by_kind: dict[str, int] = field(default_factory=dict)
    answer_errors: dict[str, int] = field(default_factory=dict)
    malformed_answers: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    void_answered: int = 0
    syncs: int = 0
    stalled_after: int | None = None
    seconds: float = 0.0
    target_alive: bool = False
    alive_detail: str = ""
    data_intact: bool | None = None
    data_detail: str = ""
    state_restored: bool = False
    state_detail: str = ""

    @property
    def rate(self) -> float:
        return self.frames_sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return (self.target_alive and self.data_intact is not False and self.state_restored
                and self.void_answered == 0 and self.stalled_after is None)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1), "ok": self.ok}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.sent_by_kind.items()))
        answered = ", ".join(f"{k} {n}" for k, n in sorted(self.answers_by_kind.items()))
        errors = ", ".join(f"{k} {n}" for k, n in sorted(self.answer_errors.items())) or "none"
        why = ", ".join(f"{k} {n}" for k, n in sorted(self.malformed_reasons.items()))
        lines = [
            f"fuzzed {self.target} with seed {self.seed}: {self.frames_sent} frames in "
            f"{self.seconds:.2f} s ({self.rate:.0f} frames/s)",
            f"  sent by kind: {kinds}",
            f"  neutralised (sent to the void address): {self.neutralised}"
            + (f", withheld: {self.withheld}" if self.withheld else "")
            + (f", send errors: {self.send_errors}" if self.send_errors else ""),
            f"  answers: {self.answers} ({answered or 'none'})",
            f"  answer errors: {errors}; malformed answers: {self.malformed_answers}"
            + (f" ({why})" if why else ""),
            f"  answers to the void address: {self.void_answered}; pacing round trips: "
            f"{self.syncs}"
            + (f"; target STOPPED answering after {self.stalled_after} frames"
               if self.stalled_after is not None else ""),
            f"  target alive: {'yes' if self.target_alive else 'NO'} ({self.alive_detail})",
            "  data intact: "
            + {True: "yes", False: "NO", None: "not checked"}[self.data_intact]
            + f" ({self.data_detail})",
            f"  state restored: {'yes' if self.state_restored else 'NO'} ({self.state_detail})",
            f"result: {'OK' if self.ok else 'PROBLEM'}",
        ]
        return "\n".join(lines)


@dataclass
class _Learned:
    config: bytes
    max_sectors: int
    capacity: int
    reserve: list[bytes] | None
    mask: list[bytes] | None


def run_fuzz(
    ifname: str,
    shelf: int,
    slot: int,
    *,
    count: int = 10000,
    duration: float | None = None,
    seed: int | None = None,
    scratch: tuple[int, int] | None = None,
    rate: float | None = None,
    timeout: float = 1.0,
    verify_sectors: int = DEFAULT_VERIFY_SECTORS,
    batch: int = 32,
) -> FuzzReport:
    """Send up to ``count`` fuzz frames (for at most ``duration`` seconds) at ``shelf.slot``.

    Writes land only in ``scratch`` = (first LBA, sectors), or nowhere without one; see
    :mod:`aoe.checks.fuzz_frames`. ``rate`` caps frames per second (None: as fast as the
    target keeps up: every ``batch`` frames a Query Config round trip waits for it).
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    seed = random.randrange(1 << 32) if seed is None else seed
    report = FuzzReport(f"{shelf}.{slot}", seed)
    with Probe(ifname, shelf, slot, timeout=timeout) as probe:
        learned = _learn(probe)
        if scratch is not None:
            lo, n = scratch
            if lo < 0 or n < 1 or lo + n > learned.capacity:
                raise FuzzError(f"scratch range {lo}+{n} is not inside the device "
                                f"({learned.capacity} sectors)")
        void, void_ok = _find_void(probe)
        per_frame = max(1, min(learned.max_sectors, max_sectors_for_mtu(probe.mtu)))
        regions = _regions(learned.capacity, scratch, verify_sectors)
        before = _checksums(probe, regions, per_frame)
        scratch_data = probe.read_many(*scratch, per_frame) if scratch else b""
        assert probe.target_mac is not None
        target = FuzzTarget(probe.mac, probe.target_mac, shelf, slot, learned.capacity,
                            learned.max_sectors, probe.mtu + 14, scratch, void)
        blaster = _Blaster(probe, report, void_ok, batch, learned.reserve)
        blaster.run(FrameFactory(target, random.Random(seed)), count, duration, rate)
        _restore_state(probe, learned, report)
        _check_alive(probe, report)
        if report.target_alive:
            _check_data(probe, regions, before, per_frame, report)
            if scratch:
                _restore_scratch(probe, scratch, scratch_data, per_frame, report)
    return report


def _learn(probe: Probe) -> _Learned:
    where = f"{probe.shelf}.{probe.slot} on {probe.ifname}"
    reply = probe.discover()
    if reply is None or not isinstance(reply.frame.body, ConfigBody):
        raise FuzzError(f"no answer from {where} to a Query Config")
    cfg = reply.frame.body
    ident = probe.ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1)
    if ident is None or not isinstance(ident.frame.body, AtaBody) or ident.frame.is_error:
        raise FuzzError(f"{where} does not answer IDENTIFY")
    capacity = parse_identify(bytes(ident.frame.body.data)).sectors
    reserve = _read_list(probe, Command.RESERVE_RELEASE)
    if reserve and probe.mac not in reserve:
        raise FuzzError(f"{where} is reserved by other initiators; not fuzzing it")
    return _Learned(cfg.config, max(1, cfg.sector_count), capacity, reserve,
                    _read_list(probe, Command.MAC_MASK_LIST))


def _read_list(probe: Probe, command: int) -> list[bytes] | None:
    """The reservation or mask list; None when the target does not implement it."""
    if command == Command.RESERVE_RELEASE:
        reply = probe.exchange(probe.frame(command, ReserveBody(ReserveCommand.READ)))
        if reply and isinstance(reply.frame.body, ReserveBody) and not reply.frame.is_error:
            return list(reply.frame.body.macs)
        return None
    reply = probe.exchange(probe.frame(command, MaskBody(MaskCommand.READ)))
    if reply and isinstance(reply.frame.body, MaskBody) and not reply.frame.is_error:
        return [d.mac for d in reply.frame.body.directives]
    return None


def _find_void(probe: Probe) -> tuple[tuple[int, int], bool]:
    """An address no target on the link answers, and whether our target ignores it."""
    frame = probe.frame(Command.QUERY_CONFIG, ConfigBody(), dst=BROADCAST_MAC,
                        shelf=BROADCAST_SHELF, slot=BROADCAST_SLOT)
    sent = probe.send(frame)
    taken = {(r.frame.shelf, r.frame.slot)
             for r in probe.gather(frame.tag, sent, probe.timeout, first=False)}
    void = next(a for a in ((0xFFFE - i, 0xFE) for i in range(1000)) if a not in taken)
    quiet = not probe.silence(probe.frame(Command.QUERY_CONFIG, ConfigBody(),
                                          shelf=void[0], slot=void[1]))
    return void, quiet


def _regions(capacity: int, scratch: tuple[int, int] | None,
             limit: int) -> list[tuple[int, int]]:
    """Sector ranges to checksum: everything outside scratch if small, else samples."""
    lo, n = scratch or (capacity, 0)
    if capacity <= limit:
        spans = [(0, lo), (lo + n, capacity - lo - n)]
    else:
        s = SAMPLE_SECTORS
        spans = [(0, s), (max(0, lo - s), min(s, lo)), (lo + n, s), (capacity - s, s)]
    out: list[tuple[int, int]] = []
    for first, length in spans:
        start, end = max(0, first), min(capacity, first + length)
        # Clip away the scratch range.
        for a, b in ((start, min(end, lo)), (max(start, lo + n), end)):
            if b > a and (a, b - a) not in out:
                out.append((a, b - a))
    return out


def _checksums(probe: Probe, regions: list[tuple[int, int]], per_frame: int) -> list[str]:
    return [hashlib.sha256(probe.read_many(a, n, per_frame)).hexdigest() for a, n in regions]


class _Blaster:
    """Sends the fuzz frames, counts answers, and keeps pace with the target.

    After every ``batch`` frames it sends a plain Query Config (the "sync") and waits for
    its answer before going on: a target handles frames in order, so the sync's answer
    means the batch was processed, not lost in a queue. A sync left unanswered (with
    retries) stops the run early: the target has hung or died.
    """

    def __init__(self, probe: Probe, report: FuzzReport, void_ok: bool, batch: int,
                 reservation: list[bytes] | None) -> None:
        self.probe = probe
        self.reservation = reservation
        self.sock = probe.sock.sock
        self.report = report
        self.void_ok = void_ok
        self.batch = batch
        self.target_mac = probe.target_mac or b""
        self.buf = bytearray(65536)
        self.sent_kind: Counter[str] = Counter()
        self.got_kind: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.tags: dict[int, str] = {}
        self.uses: Counter[int] = Counter()  # mutations can make two frames share a tag
        self.void_tags: set[int] = set()
        self.sync_tag: int | None = None
        self.own_tags: set[int] = set()
        self.reserve_touched = False

    def drain(self) -> None:
        buf, report = self.buf, self.report
        while True:
            try:
                n = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            if n < 24 or not buf[14] & 0x08 or buf[6:12] != self.target_mac:
                continue
            tag = int.from_bytes(buf[20:24], "big")
            if tag == self.sync_tag and buf[19] == Command.QUERY_CONFIG:
                self.sync_tag = None
                continue
            if tag in self.own_tags:
                self.own_tags.discard(tag)
                continue
            report.answers += 1
            if tag in self.void_tags and self.uses[tag] == 1:
                report.void_answered += 1
            self.got_kind[self.tags.get(tag, "unmatched")] += 1
            reply = decode_reply(bytes(buf[:n]))
            if reply is None or reply.decode_error:
                report.malformed_answers += 1
                why = reply.decode_error.split(":")[0] if reply and reply.decode_error else "short"
                self.malformed[why] += 1
            if buf[14] & 0x04:
                code = buf[15]
                self.errors[f"aoe-{code}" if 1 <= code <= 6 else "aoe-other"] += 1
            elif buf[19] == 0 and n >= 36 and buf[27] & 0x01:
                self.errors["ata-err"] += 1

    def sync(self) -> bool:
        """Query Config round trip; False when the target no longer answers."""
        probe = self.probe
        for _ in range(probe.retries + 1):
            frame = probe.frame(Command.QUERY_CONFIG, ConfigBody())
            self.sync_tag = frame.tag
            sent = probe.send(frame)
            while self.sync_tag is not None:
                left = sent + probe.timeout - time.monotonic()
                if left <= 0:
                    break
                readable(self.sock, left)
                self.drain()
            if self.sync_tag is None:
                self.report.syncs += 1
                return True
        self.sync_tag = None
        return False

    def reset_reservation(self) -> None:
        """Force the original reservation back now and then: a random one left in place
        would turn most of the following ATA frames into plain "reserved" refusals."""
        self.reserve_touched = False
        if self.reservation is None:
            return
        frame = self.probe.frame(Command.RESERVE_RELEASE,
                                 ReserveBody(ReserveCommand.FORCE_SET, self.reservation))
        self.own_tags.add(frame.tag)
        self.probe.send(frame)

    def send(self, kind: str, raw: bytes, neutralised: bool) -> None:
        report = self.report
        if neutralised:
            report.neutralised += 1
            if not self.void_ok:
                report.withheld += 1
                return
        if len(raw) > 19 and raw[19] == Command.RESERVE_RELEASE and not neutralised:
            self.reserve_touched = True
        if len(raw) >= 24:
            tag = int.from_bytes(raw[20:24], "big")
            self.tags[tag] = kind
            self.uses[tag] += 1
            if neutralised:
                self.void_tags.add(tag)
        for _ in range(50):
            try:
                self.sock.send(raw)
                break
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    report.send_errors += 1
                    return
            self.drain()
            time.sleep(0.0005)
        else:
            report.send_errors += 1
            return
        self.sent_kind[kind] += 1
        report.frames_sent += 1

    def run(self, factory: FrameFactory, count: int, duration: float | None,
            rate: float | None) -> None:
        report = self.report
        self.sock.setblocking(False)
        start = time.monotonic()
        gap = 1.0 / rate if rate else 0.0
        try:
            for i in range(count):
                now = time.monotonic()
                if duration is not None and now - start >= duration:
                    break
                if gap and now < start + i * gap:
                    time.sleep(start + i * gap - now)
                self.send(*factory.next())
                if i % self.batch == self.batch - 1:
                    if not self.sync():
                        report.stalled_after = report.frames_sent
                        break
                    if self.reserve_touched:
                        self.reset_reservation()
                elif i % 8 == 7:
                    self.drain()
            else:
                self.sync()
            self.drain()
        finally:
            self.sock.setblocking(True)
        report.seconds = round(time.monotonic() - start, 3)
        report.sent_by_kind = dict(self.sent_kind)
        report.answers_by_kind = dict(self.got_kind)
        report.answer_errors = dict(self.errors)
        report.malformed_reasons = dict(self.malformed)


def _restore_state(probe: Probe, learned: _Learned, report: FuzzReport) -> None:
    """Force config string and reservation back; the mask list can only be compared (the
    write rule keeps additions away from the target)."""
    notes, ok = [], True
    probe.config(ConfigCommand.FORCE_SET, learned.config)
    now = probe.config()
    if now is None or not isinstance(now.frame.body, ConfigBody) or \
            now.frame.body.config != learned.config:
        ok = False
        notes.append("config string NOT restored")
    else:
        notes.append(f"config string ({len(learned.config)} bytes)")
    if learned.reserve is not None:
        probe.exchange(probe.frame(Command.RESERVE_RELEASE,
                                   ReserveBody(ReserveCommand.FORCE_SET, learned.reserve)))
        if _read_list(probe, Command.RESERVE_RELEASE) != learned.reserve:
            ok = False
            notes.append("reservation NOT restored")
        else:
            notes.append(f"reservation ({len(learned.reserve)} MACs)")
    if learned.mask is not None:
        now_mask = _read_list(probe, Command.MAC_MASK_LIST)
        if now_mask is None or sorted(now_mask) != sorted(learned.mask):
            ok = False
            notes.append("mask list changed")
        else:
            notes.append(f"mask list unchanged ({len(learned.mask)} entries)")
    report.state_restored = ok
    report.state_detail = ", ".join(notes)


def _check_alive(probe: Probe, report: FuzzReport) -> None:
    cfg = probe.config()
    ident = probe.ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1)
    report.target_alive = cfg is not None and ident is not None and not ident.frame.is_error
    report.alive_detail = (
        "answers Query Config and IDENTIFY" if report.target_alive else
        f"Query Config {'answered' if cfg else 'unanswered'}, "
        f"IDENTIFY {'answered' if ident else 'unanswered'}"
    )


def _check_data(probe: Probe, regions: list[tuple[int, int]], before: list[str],
                per_frame: int, report: FuzzReport) -> None:
    sectors = sum(n for _, n in regions)
    try:
        after = _checksums(probe, regions, per_frame)
    except OSError as exc:
        report.data_intact = False
        report.data_detail = f"could not read back: {exc}"
        return
    changed = [f"{a}+{n}" for (a, n), x, y in zip(regions, before, after, strict=True) if x != y]
    report.data_intact = not changed
    report.data_detail = (f"{sectors} sectors outside the scratch range, sha256 equal"
                          if not changed else "changed: " + ", ".join(changed))


def _restore_scratch(probe: Probe, scratch: tuple[int, int], data: bytes, per_frame: int,
                     report: FuzzReport) -> None:
    lo, n = scratch
    step = per_frame * SECTOR_SIZE
    for off in range(0, len(data), step):
        chunk = data[off : off + step]
        frame = probe.ata_frame(AtaOpcode.WRITE_SECTORS_EXT, lo + off // SECTOR_SIZE,
                                len(chunk) // SECTOR_SIZE, data=chunk, write=True)
        reply = probe.exchange(frame)
        if reply is None or reply.frame.is_error:
            report.state_restored = False
            report.state_detail += ", scratch data NOT restored"
            return
    if probe.read_many(lo, n, per_frame) != data:
        report.state_restored = False
        report.state_detail += ", scratch data differs after restoring"
        return
    report.state_detail += f", scratch data ({n} sectors)"
