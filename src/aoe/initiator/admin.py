"""Administration over the wire, as AoE lets any initiator do it: the config string, the
MAC mask list, reservations, and a cache flush, sent to every MAC that answers for a
shelf.slot and reported per MAC."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..net.rawsock import RawSocket, close_all
from ..net.responses import responses
from ..protocol import (
    AtaBody,
    AtaFlag,
    Command,
    ConfigBody,
    ConfigCommand,
    Frame,
    encode,
)
from ..protocol.constants import DirectiveCommand, MaskCommand, MaskError, ReserveCommand
from ..protocol.errors import AoeError
from ..protocol.frames import Body, Directive, MaskBody, ReserveBody
from .discovery import query_config
from .errors import InitiatorError, NoTargetError
from .ports import check_root, open_ports, resolve_interfaces

FLUSH_CACHE_EXT = 0xEA
ATA_ERR = 0x01


@dataclass
class Answer:
    """What one target MAC said."""

    mac: bytes  # the target's MAC (text only where it is shown)
    ifname: str
    body: Body | None  # None: no answer within the timeout
    error: int = 0  # AoE error code, 0 for none

    @property
    def error_text(self) -> str:
        if self.body is None:
            return "no answer"
        if not self.error:
            return ""
        try:
            return AoeError(self.error).name.lower().replace("_", " ")
        except ValueError:
            return f"AoE error {self.error}"


def _exchange(ifaces: Iterable[str] | None, address: tuple[int, int], command: int,
              body: Body, timeout: float, broadcast_config: bool = False) -> list[Answer]:
    """Find the MACs answering for ``address``, send ``body`` to each, gather answers."""
    check_root()
    ports = open_ports(resolve_interfaces(ifaces))
    try:
        if broadcast_config:
            return _broadcast_config(ports, address, body, timeout)
        found = query_config(ports, address, timeout, settle=0.1)
        if not found:
            raise NoTargetError(f"no answer from AoE target {address[0]}.{address[1]} within "
                                f"{timeout:g} s (not running, or its mask list excludes us)")
        by_name = {p.ifname: p for p in ports}
        pending: dict[int, Answer] = {}
        seen: set[bytes] = set()
        tag = int.from_bytes(os.urandom(4), "big") | 0x80000000
        for path in found[0].paths:
            if path.target_mac in seen:
                continue  # one request per target MAC, on the first path that reached it
            seen.add(path.target_mac)
            tag = ((tag + 1) & 0xFFFFFFFF) | 0x80000000
            port = by_name[path.ifname]
            dst = path.target_mac
            port.send(encode(Frame(dst, port.mac, address[0], address[1], command, tag, body),
                             pad=True))
            pending[tag] = Answer(path.target_mac, path.ifname, None)
        return _collect(ports, pending, command, timeout)
    finally:
        close_all(ports)


def _collect(ports: Sequence[RawSocket], pending: dict[int, Answer], command: int,
             timeout: float) -> list[Answer]:
    answers = list(pending.values())
    deadline = [time.monotonic() + timeout]
    for _port, frame, _now in responses(ports, deadline):
        a = pending.get(frame.tag)
        if a is None or frame.command != command or frame.src != a.mac:
            continue
        a.body, a.error = frame.body, frame.error if frame.is_error else 0
        del pending[frame.tag]
        if not pending:
            break
    return answers


def _broadcast_config(ports: Sequence[RawSocket], address: tuple[int, int], body: Body,
                      timeout: float) -> list[Answer]:
    """Config TEST/PREFIX/SET are answered only by targets they concern: broadcast them."""
    tag = int.from_bytes(os.urandom(4), "big") | 0x80000000
    for p in ports:
        p.send(encode(Frame(b"\xff" * 6, p.mac, address[0], address[1],
                            Command.QUERY_CONFIG, tag, body), pad=True))
    out: list[Answer] = []
    deadline = [time.monotonic() + timeout]
    for port, frame, _now in responses(ports, deadline):
        if frame.tag != tag or frame.command != Command.QUERY_CONFIG:
            continue
        if (frame.shelf, frame.slot) != address:
            continue
        out.append(Answer(frame.src, port.ifname, frame.body,
                          frame.error if frame.is_error else 0))
    return out


def config(ifaces: Iterable[str] | None, address: tuple[int, int], ccmd: int = 0,
           text: bytes = b"", timeout: float = 1.0) -> list[Answer]:
    """Query Config with ``ccmd`` (read, test, test prefix, set, force set)."""
    if len(text) > 1024:
        raise InitiatorError("a config string holds at most 1024 bytes")
    body = ConfigBody(ccmd=ccmd, config=text)
    return _exchange(ifaces, address, Command.QUERY_CONFIG, body, timeout,
                     broadcast_config=ccmd != ConfigCommand.READ)


def mask(ifaces: Iterable[str] | None, address: tuple[int, int],
         add: Sequence[bytes] = (), delete: Sequence[bytes] = (),
         timeout: float = 1.0) -> list[Answer]:
    """Read the MAC mask list, or edit it (add, then delete)."""
    if not add and not delete:
        body = MaskBody(MaskCommand.READ)
    else:
        body = MaskBody(MaskCommand.EDIT, 0,
                        [Directive(DirectiveCommand.ADD, m) for m in add]
                        + [Directive(DirectiveCommand.DELETE, m) for m in delete])
    return _exchange(ifaces, address, Command.MAC_MASK_LIST, body, timeout)


def reserve(ifaces: Iterable[str] | None, address: tuple[int, int],
            macs: Sequence[bytes] | None = None, force: bool = False,
            timeout: float = 1.0) -> list[Answer]:
    """Read the reserve list (``macs`` None) or set it (empty: release)."""
    if macs is None:
        body = ReserveBody(ReserveCommand.READ)
    else:
        body = ReserveBody(ReserveCommand.FORCE_SET if force else ReserveCommand.SET,
                           list(macs))
    return _exchange(ifaces, address, Command.RESERVE_RELEASE, body, timeout)


def flush(ifaces: Iterable[str] | None, address: tuple[int, int],
          timeout: float = 10.0) -> list[Answer]:
    """ATA FLUSH CACHE EXT: everything the target acknowledged is on its stable storage."""
    body = AtaBody(int(AtaFlag.EXTENDED), 0, 0, FLUSH_CACHE_EXT, 0, b"")
    return _exchange(ifaces, address, Command.ATA, body, timeout)


def mask_error_text(merror: int) -> str:
    try:
        return MaskError(merror).name.lower().replace("_", " ")
    except ValueError:
        return f"mask error {merror}"
