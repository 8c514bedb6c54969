"""One owner per address: before serving, ask the segment who already answers for it.

Two targets answering for one shelf.slot make initiators mix two disks. The probe
broadcasts one Query Config for every address on each interface and waits briefly for
answers from other MACs; the caller refuses to start (unless forced) when one comes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

from ..net.rawsock import RawSocket
from ..net.responses import responses
from ..protocol import (
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    Command,
    ConfigBody,
    ConfigCommand,
    Frame,
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
    names = {id(s): name for name, s in socks}
    ports = [s for _, s in socks]
    queries = [(s, encode(Frame(BROADCAST_MAC, s.mac, BROADCAST_SHELF, BROADCAST_SLOT,
                                Command.QUERY_CONFIG, tag,
                                ConfigBody(ccmd=ConfigCommand.READ)), pad=True))
               for s in ports]  # the same query every round
    end = time.monotonic() + wait
    while (now := time.monotonic()) < end:
        for s, query in queries:
            try:
                s.send(query)
            except OSError:
                pass
        deadline = [min(end, now + PROBE_REPEAT)]
        for s, frame, _ in responses(ports, deadline):
            addr = (frame.shelf, frame.slot)
            if frame.command != Command.QUERY_CONFIG or addr not in wanted or frame.src in own:
                continue
            who = (names[id(s)], frame.src.hex(":"))
            if who not in found.setdefault(addr, []):
                found[addr].append(who)
    return found
