"""One owner per address: before serving, ask the segment who already answers for it.

Two targets answering for one shelf.slot make initiators mix two disks. The probe
broadcasts one Query Config for every address on each interface and waits briefly for
answers from other MACs; the caller refuses to start (unless forced) when one comes.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterable, Sequence

from ..net.rawsock import RawSocket
from ..protocol import (
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    Command,
    ConfigBody,
    ConfigCommand,
    DecodeError,
    Frame,
    decode,
    encode,
)

PROBE_WAIT = 0.45  # seconds to listen; the query is sent three times meanwhile
PROBE_REPEAT = 0.15


def other_owners(socks: Sequence[tuple[str, RawSocket]], addresses: Iterable[tuple[int, int]],
                 wait: float = PROBE_WAIT) -> dict[tuple[int, int], list[tuple[str, str]]]:
    """Addresses among ``addresses`` that another MAC answers for: {address: [(iface, mac)]}.

    One broadcast Query Config per interface reaches every target on the segment."""
    wanted = set(addresses)
    own = {s.mac for _, s in socks}
    found: dict[tuple[int, int], list[tuple[str, str]]] = {}
    if not wanted or not socks:
        return found
    tag = int.from_bytes(os.urandom(4), "big") | 0x80000000
    by_fd = {s.fileno(): (name, s) for name, s in socks}
    poller = select.poll()  # not select(): a target with many exports has high descriptors
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    end = time.monotonic() + wait
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_send:
            for _, s in socks:
                body = ConfigBody(ccmd=ConfigCommand.READ)
                f = Frame(BROADCAST_MAC, s.mac, BROADCAST_SHELF, BROADCAST_SLOT,
                          Command.QUERY_CONFIG, tag, body)
                try:
                    s.send(encode(f, pad=True))
                except OSError:
                    pass
            next_send = now + PROBE_REPEAT
        ready = poller.poll(max(0.0, min(end, next_send) - now) * 1000.0)
        for fd, _ in ready:
            name, s = by_fd[fd]
            _take_answers(name, s, wanted, own, found)
    return found


def _take_answers(name: str, s: RawSocket, wanted: set[tuple[int, int]], own: set[bytes],
                  found: dict[tuple[int, int], list[tuple[str, str]]]) -> None:
    """Note in ``found`` every other MAC answering for a wanted address, from what is
    waiting on ``s`` (interface ``name``)."""
    while True:
        try:
            raw = s.sock.recv(65536, socket.MSG_DONTWAIT)
        except OSError:  # nothing more waiting (or the socket failed): done for now
            return
        try:
            frame = decode(raw)
        except DecodeError:
            continue
        if not frame.is_response or frame.command != Command.QUERY_CONFIG:
            continue
        addr = (frame.shelf, frame.slot)
        if addr not in wanted or frame.src in own:
            continue
        who = (name, frame.src.hex(":"))
        if who not in found.setdefault(addr, []):
            found[addr].append(who)
