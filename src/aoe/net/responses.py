"""Waiting for AoE answers on a few raw sockets at once: the loop the initiator's
discovery and the target's owner probe share (send a query, then take what comes back)."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

from ..protocol import DecodeError, Frame, decode


class Listening(Protocol):
    """What the loop needs of a port (a RawSocket, or a test's stand-in)."""

    def fileno(self) -> int: ...

    def recv_nowait(self, size: int = ...) -> bytes | None: ...


P = TypeVar("P", bound=Listening)


def responses(ports: Sequence[P], deadline: list[float],
              size: int = 65536) -> Iterator[tuple[P, Frame, float]]:
    """Yield (port, frame, when it was taken) for every decodable AoE response arriving on
    any of ``ports`` until ``deadline[0]`` (monotonic; a one-element list, so the consumer
    may move it while iterating). A port whose socket fails is left out of the rest of the
    wait. Waits with poll, not select: a program holding many files (a target with a
    thousand exports) has descriptors above 1024, where select raises ValueError."""
    by_fd = {p.fileno(): p for p in ports}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while by_fd:
        left = deadline[0] - time.monotonic()
        if left <= 0:
            return
        ready = poller.poll(left * 1000.0)
        now = time.monotonic()
        for fd, _ in ready:
            port = by_fd.get(fd)
            while port is not None:
                try:
                    raw = port.recv_nowait(size)
                except OSError:  # the interface went away: listen on the others
                    poller.unregister(fd)
                    del by_fd[fd]
                    break
                if raw is None:
                    break
                try:
                    frame = decode(raw)
                except DecodeError:
                    continue
                if frame.is_response:
                    yield port, frame, now
