"""Waiting for one descriptor to become readable, at any descriptor number.

``select()`` refuses descriptors above 1023 (FD_SETSIZE), which a process holding many
files (a test run, a lab with many hosts, a long fuzz run) reaches; ``poll()`` has no
such limit.
"""

from __future__ import annotations

import select
from typing import Protocol


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def readable(fd: int | HasFileno, timeout: float | None) -> bool:
    """True once ``fd`` can be read (data, its end or an error), False after ``timeout``
    seconds without (None: wait as long as it takes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0))
