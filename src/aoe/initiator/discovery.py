"""Find targets: Query Config on each interface, collect answers, then IDENTIFY each one.

One target (shelf.slot) may answer from several MACs and on several local interfaces;
every (interface, target MAC) pair it answered on becomes a *path* the session can use.
This is a plain blocking loop over poll(): discovery happens once, speed is not the goal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..net.rawsock import RawSocket, close_all
from ..net.responses import responses
from ..protocol import (
    AOE_VERSION,
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    SECTOR_SIZE,
    AtaBody,
    AtaOpcode,
    Command,
    ConfigBody,
    ConfigCommand,
    DecodeError,
    Frame,
    encode,
    format_mac,
    max_sectors_for_mtu,
    parse_identify,
)
from .errors import ConflictingTargetsError, MtuMismatchError
from .ports import check_root, open_ports, resolve_interfaces

RESEND_INTERVAL = 0.25  # seconds between Query Configs while collecting answers
# How long a listing of every target (`aoe discover`) goes on after the last new answer:
# longer than RESEND_INTERVAL, so a target that missed the first query answers the next.
LIST_SETTLE = 0.3
# How long an addressed query keeps listening once every port has an answer: enough for a
# second target on the segment that claims the same address (two disks, one shelf.slot)
# to answer as well, so that the mix is refused rather than missed.
OTHER_OWNER_GRACE = 0.05


@dataclass
class PathInfo:
    """One way to reach a target: a local interface and one of the target's MACs (both
    MACs as the 6 bytes on the wire; as_dict() and the CLI show them as text)."""

    ifname: str
    local_mac: bytes
    target_mac: bytes
    mtu: int  # of the local interface
    buffer_count: int  # what this target MAC announced
    max_sectors: int  # sectors per ATA command this target MAC announced
    rtt: float  # of the Query Config exchange, seconds

    @property
    def frame_sectors(self) -> int:
        """Sectors per frame on this path: the smaller of target's and local MTU's limit."""
        return max(0, min(self.max_sectors, max_sectors_for_mtu(self.mtu), 255))


@dataclass
class TargetInfo:
    """What discovery learnt about one shelf.slot."""

    shelf: int
    slot: int
    paths: list[PathInfo] = field(default_factory=list)
    buffer_count: int = 0
    firmware_version: int = 0
    max_sectors: int = 0
    aoe_version: int = AOE_VERSION
    config: bytes = b""
    sectors: int | None = None  # None until IDENTIFY answered
    model: str = ""
    serial: str = ""
    firmware: str = ""
    lba48: bool = False
    flush_cache: bool = False
    flush_cache_ext: bool = False
    identify_error: str | None = None
    conflict: str | None = None  # several MACs answer for this address with different disks

    @property
    def address(self) -> str:
        return f"{self.shelf}.{self.slot}"

    @property
    def size(self) -> int | None:
        return None if self.sectors is None else self.sectors * SECTOR_SIZE

    @property
    def ifnames(self) -> list[str]:
        return list(dict.fromkeys(p.ifname for p in self.paths))

    @property
    def target_macs(self) -> list[bytes]:
        return list(dict.fromkeys(p.target_mac for p in self.paths))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (config string decoded leniently)."""
        out = asdict(self)
        out["address"] = self.address
        out["size"] = self.size
        out["config"] = self.config.decode("utf-8", "replace")
        for path, as_dict in zip(self.paths, out["paths"], strict=True):
            as_dict["frame_sectors"] = path.frame_sectors
            as_dict["local_mac"] = format_mac(path.local_mac)
            as_dict["target_mac"] = format_mac(path.target_mac)
        out["interfaces"] = self.ifnames
        out["target_macs"] = [format_mac(mac) for mac in self.target_macs]
        return out


def _query_frame(port: RawSocket, shelf: int, slot: int, tag: int) -> bytes:
    body = ConfigBody(ccmd=ConfigCommand.READ)
    frame = Frame(BROADCAST_MAC, port.mac, shelf, slot, Command.QUERY_CONFIG, tag, body)
    return encode(frame, pad=True)


def identify_frame(dst: bytes, src: bytes, shelf: int, slot: int, tag: int) -> bytes:
    body = AtaBody(sector_count=1, cmd_status=AtaOpcode.IDENTIFY_DEVICE)
    return encode(Frame(dst, src, shelf, slot, Command.ATA, tag, body), pad=True)


def query_config(
    ports: Sequence[RawSocket],
    target: tuple[int, int] | None = None,
    timeout: float = 1.0,
    settle: float | None = None,
    grace: float = OTHER_OWNER_GRACE,
) -> list[TargetInfo]:
    """Broadcast Query Config on every port and gather the answers into targets.

    ``target`` directs the query at one shelf.slot. Collection runs for ``timeout``
    seconds, or stops ``settle`` seconds after the last new path once any answer came.
    With ``settle`` and a ``target``, it stops ``grace`` seconds after that target has
    answered on every port (so a second MAC answering for the same address, a second path
    or a second disk, is still heard): a start-up should not wait once there is nothing
    left to learn. A caller that listens on after (AoeDisk's deferred owner check) passes
    a grace of 0.
    The query is sent again every RESEND_INTERVAL while collecting (each time with its
    own tag, for the RTT), so one lost frame on a lossy link does not hide a target.
    """
    shelf, slot = target if target is not None else (BROADCAST_SHELF, BROADCAST_SLOT)
    first_tag = int.from_bytes(os.urandom(4), "big")
    sent: dict[tuple[int, str], float] = {}  # (tag, ifname) -> when the query went out
    found: dict[tuple[int, int], TargetInfo] = {}
    seen: set[tuple[str, bytes, int, int]] = set()
    asked_on = {port.ifname for port in ports}
    end = time.monotonic() + timeout
    stop = end
    quiet_at: float | None = None  # when an addressed query has heard enough
    attempt = 0
    while time.monotonic() < stop:
        tag = ((first_tag + attempt) & 0xFFFFFFFF) | 0x80000000  # high bit: not an I/O tag
        attempt += 1
        for port in ports:
            port.send(_query_frame(port, shelf, slot, tag))
            sent[(tag, port.ifname)] = time.monotonic()
        deadline = [min(stop, time.monotonic() + RESEND_INTERVAL)]
        for port, frame, now in responses(ports, deadline):
            body = frame.body
            asked = sent.get((frame.tag, port.ifname))
            if frame.command != Command.QUERY_CONFIG or asked is None or frame.is_error:
                continue
            if not isinstance(body, ConfigBody):
                continue
            if target is not None and (frame.shelf, frame.slot) != target:
                continue
            key = (port.ifname, frame.src, frame.shelf, frame.slot)
            if key in seen:
                continue
            seen.add(key)
            info = found.get((frame.shelf, frame.slot))
            if info is None:
                info = TargetInfo(
                    frame.shelf,
                    frame.slot,
                    buffer_count=body.buffer_count,
                    firmware_version=body.firmware,
                    max_sectors=body.sector_count,
                    aoe_version=body.aoe_version,
                    config=body.config,
                )
                found[(frame.shelf, frame.slot)] = info
            info.paths.append(
                PathInfo(
                    port.ifname,
                    port.mac,
                    frame.src,
                    port.mtu,
                    body.buffer_count,
                    body.sector_count,
                    now - asked,
                )
            )
            if settle is not None:
                stop = min(end, now + settle)
                if (target is not None and quiet_at is None
                        and {p.ifname for p in info.paths} >= asked_on):
                    # Every port has its answer: wait only as long as a second target
                    # claiming the same address would take to answer too.
                    quiet_at = now + grace
                if quiet_at is not None:
                    stop = min(stop, quiet_at)
                deadline[0] = min(deadline[0], stop)
    return sorted(found.values(), key=lambda t: (t.shelf, t.slot))


def identify(
    ports: Sequence[RawSocket], info: TargetInfo, timeout: float = 0.5, tries: int = 3
) -> TargetInfo:
    """Send ATA IDENTIFY DEVICE over the target's paths (each in turn) and fill in
    size, model, serial, firmware and LBA48 support. Failure is recorded, not raised."""
    by_name = {p.ifname: p for p in ports}
    tag = int.from_bytes(os.urandom(4), "big") | 0x80000000
    info.identify_error = "no answer to IDENTIFY DEVICE"
    for attempt in range(tries * max(1, len(info.paths))):
        path = info.paths[attempt % len(info.paths)]
        port = by_name[path.ifname]
        dst = path.target_mac
        tag = (tag + 1) | 0x80000000
        port.send(identify_frame(dst, port.mac, info.shelf, info.slot, tag & 0xFFFFFFFF))
        deadline = [time.monotonic() + timeout]
        for _port, frame, _now in responses([port], deadline):
            if (frame.command, frame.tag, frame.src) != (Command.ATA, tag & 0xFFFFFFFF, dst):
                continue
            if (frame.shelf, frame.slot) != (info.shelf, info.slot):
                continue
            if frame.is_error:
                info.identify_error = f"target answered IDENTIFY with AoE error {frame.error}"
                return info
            body = frame.body
            if not isinstance(body, AtaBody) or len(body.data) != SECTOR_SIZE:
                continue
            try:
                ident = parse_identify(body.data)
            except DecodeError as exc:
                info.identify_error = f"bad IDENTIFY page: {exc.detail}"
                return info
            info.sectors = ident.sectors
            info.model, info.serial, info.firmware = ident.model, ident.serial, ident.firmware
            info.lba48 = ident.lba48
            info.flush_cache, info.flush_cache_ext = ident.flush_cache, ident.flush_cache_ext
            info.identify_error = None
            return info
    return info


def identify_all(ports: Sequence[RawSocket], targets: Sequence[TargetInfo],
                 timeout: float = 0.5, tries: int = 3) -> None:
    """IDENTIFY many targets at once: every request sent, then the answers gathered by tag,
    so a segment with hundreds of targets is identified in about one round trip. Targets
    still silent after ``tries`` rounds go through :func:`identify` one by one."""
    by_name = {p.ifname: p for p in ports}
    base = int.from_bytes(os.urandom(4), "big") & 0x7FFF0000
    waiting = {i: t for i, t in enumerate(targets) if t.paths}
    for attempt in range(tries):
        if not waiting:
            return
        tags: dict[tuple[int, bytes], int] = {}
        for i, info in waiting.items():
            path = info.paths[attempt % len(info.paths)]
            port = by_name[path.ifname]
            dst = path.target_mac
            tag = (base + i + attempt * len(targets)) & 0x7FFFFFFF
            tag |= 0x80000000
            tags[(tag, dst)] = i
            try:
                port.send(identify_frame(dst, port.mac, info.shelf, info.slot, tag))
            except OSError:
                pass
        deadline = [time.monotonic() + timeout]
        for _port, frame, _now in responses(ports, deadline):
            idx = tags.get((frame.tag, frame.src), -1) if frame.command == Command.ATA else -1
            found = waiting.get(idx)
            if found is None or (frame.shelf, frame.slot) != (found.shelf, found.slot):
                continue
            info, i = found, idx
            body = frame.body
            if frame.is_error or not isinstance(body, AtaBody) or len(body.data) != SECTOR_SIZE:
                continue
            try:
                ident = parse_identify(body.data)
            except DecodeError as exc:
                info.identify_error = f"bad IDENTIFY page: {exc.detail}"
                del waiting[i]
                continue
            info.sectors = ident.sectors
            info.model, info.serial, info.firmware = ident.model, ident.serial, ident.firmware
            info.lba48 = ident.lba48
            info.flush_cache, info.flush_cache_ext = ident.flush_cache, ident.flush_cache_ext
            info.identify_error = None
            del waiting[i]
            if not waiting:
                return
    for info in waiting.values():
        identify(ports, info, tries=1)


def discover(
    ifaces: Iterable[str] | None = None,
    target: tuple[int, int] | None = None,
    timeout: float = 1.0,
    *,
    settle: float | None = None,
    with_identify: bool = True,
) -> list[TargetInfo]:
    """Find AoE targets on ``ifaces`` (default: every Ethernet interface that is up).

    Returns one TargetInfo per shelf.slot that answered (possibly none), each with its
    paths and, unless ``with_identify`` is false, its IDENTIFY data.
    """
    check_root()
    names = resolve_interfaces(ifaces)
    ports = open_ports(names)
    try:
        targets = query_config(ports, target, timeout, settle)
        if with_identify:
            identify_all(ports, targets)
            for info in targets:
                find_conflict(ports, info)
        return targets
    finally:
        close_all(ports)


def require_frame_size(info: TargetInfo) -> None:
    """MtuMismatchError when no path can carry even one sector per frame."""
    for path in info.paths:
        if path.frame_sectors < 1:
            raise MtuMismatchError(
                f"target {info.address} announces {path.max_sectors} sectors per command "
                f"and {path.ifname} has MTU {path.mtu}: no sector fits in one frame"
            )


def find_conflict(ports: Sequence[RawSocket], info: TargetInfo) -> str | None:
    """When several MACs answer for one shelf.slot, IDENTIFY each: they are paths to one disk
    only if serial and size agree. Otherwise record (and return) a message naming the MACs."""
    macs = info.target_macs
    if len(macs) < 2:
        return None
    seen: dict[tuple[str, int | None], list[bytes]] = {}
    for mac in macs:
        one = TargetInfo(info.shelf, info.slot, [p for p in info.paths if p.target_mac == mac])
        identify(ports, one)
        key = (one.serial, one.sectors) if one.identify_error is None else ("?", None)
        seen.setdefault(key, []).append(mac)
    if len(seen) < 2:
        return None
    parts = [f"{', '.join(format_mac(x) for x in m)} (serial {s or '?'}, "
             f"{'?' if n is None else n * SECTOR_SIZE} bytes)" for (s, n), m in seen.items()]
    info.conflict = (f"{info.address} is answered by different disks: {'; '.join(parts)}; "
                     "two targets share this address, so nothing is read or written")
    return info.conflict


def require_one_disk(ports: Sequence[RawSocket], info: TargetInfo) -> None:
    """ConflictingTargetsError when the MACs answering for ``info`` are not one disk."""
    if find_conflict(ports, info):
        raise ConflictingTargetsError(info.conflict or "")
