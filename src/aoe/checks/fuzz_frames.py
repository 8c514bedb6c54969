"""Frame generators and the safety rule of the fuzzer.

Generators are structure-aware: each knows one AoE message and fills it with edge values
(LBA at and past the end, counts of 0 and above the limit, lengths that lie), or breaks the
framing (truncation, trailing bytes, wrong version, stray flags, random bytes, mutations of
valid frames).

The safety rule (:meth:`FrameFactory.make_safe`) is applied to every frame after it is
built or mutated, on the raw bytes, so no mutation can slip past it. A frame counts as
reaching the target when its shelf and slot match the target's or are broadcast. Such a
frame is *neutralised* (its shelf.slot rewritten to an address nobody answers, so a
conforming target must drop it) when it could:

- write sectors outside the scratch range: any ATA opcode other than the read-only ones
  (READ SECTORS (EXT), IDENTIFY, CHECK POWER MODE, FLUSH CACHE (EXT), NOP), unless every
  sector it could touch - under both the 28-bit and the 48-bit reading of its LBA, with a
  count of 0 taken as 65536 - lies inside the scratch range or at/after the device's end;
  an ATA frame too short to show its opcode and LBA counts as a write;
- shut the fuzzer out: a MAC Mask List edit with an "add" directive (a list naming only
  random MACs would silence us), naming our own MAC, or whose directive count promises more
  directives than the frame holds (a sloppy target reads stale buffer bytes as directives);
- change state on other targets: any state change (write, config set, mask edit, reserve
  set) addressed by broadcast.

Config string and reservation changes addressed to the target itself are allowed: the
fuzzer saves both first and forces them back afterwards.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import (
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    ETHERTYPE_AOE,
    AtaFlag,
    AtaOpcode,
    HeaderFlag,
)
from ..protocol.ata import LBA28_MAX_SECTORS
from ..protocol.constants import (
    ATA_HEADER_LEN,
    MAX_CONFIG_STRING,
    SECTOR_SIZE,
    ConfigCommand,
    DirectiveCommand,
    MaskCommand,
)
from ..protocol.frames import ATA_ARGS, CONFIG_ARGS, HEADER, MASK_ARGS, RESERVE_ARGS

READ_ONLY_OPCODES = frozenset({
    AtaOpcode.READ_SECTORS, AtaOpcode.READ_SECTORS_EXT, AtaOpcode.IDENTIFY_DEVICE,
    AtaOpcode.CHECK_POWER_MODE, AtaOpcode.FLUSH_CACHE, AtaOpcode.FLUSH_CACHE_EXT, 0x00,
})
WRITE_OPCODES = (AtaOpcode.WRITE_SECTORS, AtaOpcode.WRITE_SECTORS_EXT)
MAX_SPAN = 65536  # a count of 0 may mean 256 (LBA28) or 65536 (LBA48) sectors
STATE_CCMDS = (ConfigCommand.SET, ConfigCommand.FORCE_SET)


@dataclass(frozen=True)
class FuzzTarget:
    """What generators and the safety rule need to know about the target and the link."""

    mac: bytes  # ours
    target_mac: bytes
    shelf: int
    slot: int
    capacity: int
    max_sectors: int
    max_frame: int  # our MTU + Ethernet header
    scratch: tuple[int, int] | None
    void: tuple[int, int]  # a shelf.slot nobody answers


class FrameFactory:
    """Makes fuzz frames: ``next()`` returns (kind, raw bytes, neutralised)."""

    def __init__(self, target: FuzzTarget, rng: random.Random) -> None:
        self.t = target
        self.rng = rng
        self._tag = rng.getrandbits(32)
        self.kinds: list[tuple[str, Callable[[], bytes], int]] = [
            ("ata-read", self.ata_read, 14),
            ("ata-write", self.ata_write, 8),
            ("ata-other", self.ata_other, 6),
            ("lba-edge", self.lba_edge, 6),
            ("config", self.config, 8),
            ("mask", self.mask, 5),
            ("reserve", self.reserve, 5),
            ("unknown-command", self.unknown_command, 3),
            ("bad-version", self.bad_version, 4),
            ("stray-flags", self.stray_flags, 3),
            ("truncated", self.truncated, 8),
            ("oversized", self.oversized, 5),
            ("broadcast", self.broadcast, 5),
            ("random", self.random_bytes, 5),
            ("mutated", self.mutated, 15),
        ]
        self._pick = [k for k, _, w in self.kinds for _ in range(w)]
        self._gen = {k: g for k, g, _ in self.kinds}

    # --- plumbing -----------------------------------------------------------------------
    def next(self) -> tuple[str, bytes, bool]:
        kind = self.rng.choice(self._pick)
        raw = self._gen[kind]()[: self.t.max_frame]
        safe, neutralised = self.make_safe(raw)
        return kind, safe, neutralised

    def tag(self) -> int:
        self._tag = (self._tag + 1) & 0xFFFFFFFF
        return self._tag

    def header(self, command: int, *, shelf: int | None = None, slot: int | None = None,
               dst: bytes | None = None, version: int = 1, flags: int = 0,
               error: int = 0) -> bytes:
        return HEADER.pack(
            dst or self.t.target_mac, self.t.mac, ETHERTYPE_AOE, (version << 4) | flags, error,
            self.t.shelf if shelf is None else shelf, self.t.slot if slot is None else slot,
            command, self.tag(),
        )

    def _lba(self) -> int:
        t, r = self.t, self.rng
        choices = [0, 1, t.capacity - 2, t.capacity - 1, t.capacity, t.capacity + 1,
                   LBA28_MAX_SECTORS - 1, LBA28_MAX_SECTORS, (1 << 32) - 1, 1 << 32,
                   (1 << 48) - 1, r.randrange(max(1, t.capacity)), r.getrandbits(48)]
        if t.scratch:
            choices += [t.scratch[0], t.scratch[0] + t.scratch[1] - 1]
        return max(0, r.choice(choices)) & ((1 << 48) - 1)

    def _count(self) -> int:
        m = self.t.max_sectors
        return self.rng.choice([0, 1, 2, m, m, m + 1, 255, self.rng.randrange(256)]) & 0xFF

    def _ata(self, opcode: int, lba: int, count: int, *, ext: bool, write: bool,
             data_sectors: int | None = None) -> bytes:
        r = self.rng
        aflags = (AtaFlag.EXTENDED if ext else 0) | (AtaFlag.WRITE if write else 0)
        if r.random() < 0.1:
            aflags |= r.choice([AtaFlag.ASYNC, AtaFlag.DEVICE, 0x80, 0x20])
        if not ext:
            lba = (lba & 0x0FFFFFFF) | (r.choice([0xE0, 0xE0, 0xE0, 0x40, 0x00, 0xF0]) << 24)
        args = ATA_ARGS.pack(int(aflags), r.choice([0, 0, r.randrange(256)]), count, opcode,
                             lba & 0xFFFFFFFF, lba >> 32)
        sectors = count if data_sectors is None else data_sectors
        data = r.randbytes(sectors * SECTOR_SIZE) if write and sectors else b""
        return self.header(0) + args + data

    # --- generators ----------------------------------------------------------------------
    def ata_read(self) -> bytes:
        ext = self.rng.random() < 0.6
        op = AtaOpcode.READ_SECTORS_EXT if ext else AtaOpcode.READ_SECTORS
        if self.rng.random() < 0.15:  # the opcode of the other addressing mode
            op = AtaOpcode.READ_SECTORS if ext else AtaOpcode.READ_SECTORS_EXT
        return self._ata(op, self._lba(), self._count(), ext=ext, write=False)

    def ata_write(self) -> bytes:
        r, t = self.rng, self.t
        ext = r.random() < 0.6
        op = WRITE_OPCODES[1] if ext else WRITE_OPCODES[0]
        count = self._count()
        if t.scratch and r.random() < 0.8:
            lo, n = t.scratch
            lba = lo + r.randrange(n)
        else:
            lba = self._lba()
        fits = max(0, (t.max_frame - ATA_HEADER_LEN) // SECTOR_SIZE)
        data = r.choice([count, count, max(0, count - 1), count + 1, 0])
        return self._ata(op, lba, count, ext=ext, write=r.random() < 0.9,
                         data_sectors=min(data, fits))

    def ata_other(self) -> bytes:
        r = self.rng
        op = r.choice([AtaOpcode.IDENTIFY_DEVICE, AtaOpcode.CHECK_POWER_MODE,
                       AtaOpcode.FLUSH_CACHE, AtaOpcode.FLUSH_CACHE_EXT, AtaOpcode.SMART,
                       0x00, 0xEF, 0xC8, 0x25, r.randrange(256)])
        return self._ata(op, self._lba(), r.choice([0, 1, 2, 255]), ext=r.random() < 0.5,
                         write=False)

    def lba_edge(self) -> bytes:
        r, t = self.rng, self.t
        lba = r.choice([t.capacity - 1, t.capacity, t.capacity + r.randrange(1, 64),
                        LBA28_MAX_SECTORS - 1, LBA28_MAX_SECTORS, (1 << 48) - 1])
        count = r.choice([1, 2, t.max_sectors, t.max_sectors + 1, 0])
        ext = r.random() < 0.7
        op = AtaOpcode.READ_SECTORS_EXT if ext else AtaOpcode.READ_SECTORS
        return self._ata(op, max(0, lba), count, ext=ext, write=False)

    def config(self) -> bytes:
        r = self.rng
        ccmd = r.choice([0, 0, 1, 2, 3, 4, r.randrange(16)])
        room = max(0, self.t.max_frame - 32)
        text = r.randbytes(r.choice([0, 1, 16, r.randrange(min(room, MAX_CONFIG_STRING) + 1)]))
        length = len(text)
        if r.random() < 0.2:  # a length field that lies
            length = r.choice([length + 1, length + 100, MAX_CONFIG_STRING + 1, 0xFFFF])
        args = CONFIG_ARGS.pack(r.getrandbits(16), r.getrandbits(16), r.getrandbits(8),
                                (r.choice([1, 1, 1, 0, 2, 15]) << 4) | ccmd, length & 0xFFFF)
        return self.header(1) + args + text

    def mask(self) -> bytes:
        r = self.rng
        mcmd = r.choice([MaskCommand.READ, MaskCommand.EDIT, MaskCommand.EDIT, 2, r.randrange(256)])
        n = r.choice([0, 1, 2, 5, r.randrange(64)])
        dirs = b"".join(
            struct.pack("!BB6s", r.choice([0, 0, 1]),
                        r.choice([0, DirectiveCommand.DELETE, DirectiveCommand.DELETE, 3, 255]),
                        bytes([0x02]) + r.randbytes(5))
            for _ in range(n)
        )
        count = n if r.random() < 0.8 else r.randrange(256)
        return self.header(2) + MASK_ARGS.pack(mcmd, r.choice([0, 0, 1, 2]), count) + dirs

    def reserve(self) -> bytes:
        r = self.rng
        rcmd = r.choice([0, 0, 1, 2, 3, r.randrange(256)])
        n = r.choice([0, 1, 2, r.randrange(40)])
        macs = b"".join(bytes([0x02]) + r.randbytes(5) for _ in range(n))
        count = n if r.random() < 0.8 else r.randrange(256)
        return self.header(3) + RESERVE_ARGS.pack(rcmd, count) + macs

    def unknown_command(self) -> bytes:
        r = self.rng
        return self.header(r.randrange(4, 256)) + r.randbytes(r.choice([0, 4, 12, 64]))

    def _valid(self) -> bytes:
        return self.rng.choice([self.ata_read, self.ata_other, self.config, self.reserve,
                                self.mask, self.ata_write])()

    def bad_version(self) -> bytes:
        raw = bytearray(self._valid())
        raw[14] = (self.rng.choice([0, 2, 3, 15]) << 4) | (raw[14] & 0x0F)
        return bytes(raw)

    def stray_flags(self) -> bytes:
        raw = bytearray(self._valid())
        r = self.rng
        raw[14] = (raw[14] & 0xF0) | r.choice([HeaderFlag.RESPONSE, HeaderFlag.ERROR, 0xC, 0x3])
        if r.random() < 0.5:
            raw[15] = r.randrange(1, 256)
        return bytes(raw)

    def truncated(self) -> bytes:
        raw = self._valid()
        return raw[: self.rng.randrange(14, max(15, len(raw)))]

    def oversized(self) -> bytes:
        raw = self._valid()
        room = self.t.max_frame - len(raw)
        return raw + self.rng.randbytes(self.rng.randrange(1, room + 1)) if room > 0 else raw

    def broadcast(self) -> bytes:
        r = self.rng
        shelf, slot = r.choice([(BROADCAST_SHELF, BROADCAST_SLOT), (BROADCAST_SHELF, self.t.slot),
                                (self.t.shelf, BROADCAST_SLOT)])
        dst = r.choice([BROADCAST_MAC, self.t.target_mac])
        raw = bytearray(self._valid())
        raw[0:6] = dst
        struct.pack_into("!HB", raw, 16, shelf, slot)
        return bytes(raw)

    def random_bytes(self) -> bytes:
        r = self.rng
        body = r.randbytes(r.randrange(1, self.t.max_frame - 13))
        dst = r.choice([self.t.target_mac, BROADCAST_MAC])
        return dst + self.t.mac + ETHERTYPE_AOE.to_bytes(2, "big") + body

    def mutated(self) -> bytes:
        r = self.rng
        raw = bytearray(self._valid())
        for _ in range(r.randrange(1, 9)):
            if len(raw) <= 15:
                break
            pos = r.randrange(14, len(raw))  # keep the Ethernet header: the target must see it
            op = r.randrange(6)
            if op == 0:
                raw[pos] ^= 1 << r.randrange(8)
            elif op == 1:
                raw[pos] = r.randrange(256)
            elif op == 2:
                raw[pos] = r.choice([0x00, 0xFF, 0x7F, 0x80, 0x01])
            elif op == 3:
                raw[pos:pos] = r.randbytes(r.randrange(1, 9))
            elif op == 4:
                del raw[pos : pos + r.randrange(1, 9)]
            else:
                raw[pos:pos] = raw[pos : pos + r.randrange(1, 17)]
        return bytes(raw)

    # --- the safety rule ------------------------------------------------------------------
    def reaches_target(self, raw: bytes) -> tuple[bool, bool]:
        """(addressed to the target at all, by broadcast) from the raw shelf/slot bytes."""
        if len(raw) < 19 or int.from_bytes(raw[12:14], "big") != ETHERTYPE_AOE:
            return False, False
        shelf, slot = struct.unpack_from("!HB", raw, 16)
        shelf_ok = shelf in (self.t.shelf, BROADCAST_SHELF)
        slot_ok = slot in (self.t.slot, BROADCAST_SLOT)
        return shelf_ok and slot_ok, shelf == BROADCAST_SHELF or slot == BROADCAST_SLOT

    def changes_state(self, raw: bytes) -> tuple[bool, bool]:
        """(might change target state, might harm the data or shut us out)."""
        command = raw[19] if len(raw) > 19 else None
        if command is None:
            return False, False
        if command == 0:
            read_only = len(raw) > 27 and raw[27] in READ_ONLY_OPCODES
            return not read_only, not self._write_is_safe(raw)
        if command == 1:
            return len(raw) > 29 and raw[29] & 0x0F in STATE_CCMDS, False
        if command == 2:
            if len(raw) <= 25 or raw[25] == MaskCommand.READ:
                return False, False
            return True, self._mask_edit_dangerous(raw)
        if command == 3:
            return len(raw) > 24 and raw[24] != 0, False
        return False, False

    def _write_is_safe(self, raw: bytes) -> bool:
        if len(raw) < 28:
            return False  # cannot see the opcode: assume the worst
        if raw[27] in READ_ONLY_OPCODES:
            return True
        if len(raw) < ATA_HEADER_LEN:
            return False
        count = raw[26] or MAX_SPAN
        lba = int.from_bytes(raw[28:34], "little")
        return all(self._span_safe(start, count) for start in (lba, lba & 0x0FFFFFFF))

    def _span_safe(self, start: int, count: int) -> bool:
        if start >= self.t.capacity:
            return True
        if self.t.scratch is None:
            return False
        lo, n = self.t.scratch
        return lo <= start and start + count <= lo + n

    def _mask_edit_dangerous(self, raw: bytes) -> bool:
        # A count promising more directives than the frame holds may make a target read
        # stale buffer bytes as directives: treat that as dangerous too.
        if len(raw) < 28 or 28 + 8 * raw[27] > len(raw):
            return True
        for off in range(28, len(raw) - 1, 8):
            if raw[off + 1] == DirectiveCommand.ADD or raw[off + 2 : off + 8] == self.t.mac:
                return True
        return False

    def make_safe(self, raw: bytes) -> tuple[bytes, bool]:
        """The frame itself, or with its address moved to the void when the rule says so."""
        reaches, broadcast = self.reaches_target(raw)
        if not reaches:
            return raw, False
        state, dangerous = self.changes_state(raw)
        if not (dangerous or (state and broadcast)):
            return raw, False
        patched = bytearray(raw)
        struct.pack_into("!HB", patched, 16, *self.t.void)
        return bytes(patched), True
