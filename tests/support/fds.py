"""A socket on a descriptor above 1024, where select() refuses to wait (FD_SETSIZE): what
a process holding many files (a target with a thousand exports) waits on."""

from __future__ import annotations

import fcntl
import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def _room_above_1024() -> Iterator[None]:
    """The soft descriptor limit raised to 2048 meanwhile (skipped where it cannot be)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2048 if hard == resource.RLIM_INFINITY else min(2048, hard)
    if want <= 1100:
        pytest.skip("this process may not open descriptors above 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _dup_above_1024(fd: int) -> int:
    """The lowest free descriptor above 1024 (dup2 onto a fixed one could close another)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1025)
    assert high > 1024
    return high


@contextmanager
def fd_above_1024(fd: int) -> Iterator[int]:
    """A duplicate of ``fd`` above 1024, closed on the way out."""
    with _room_above_1024():
        high = _dup_above_1024(fd)
        try:
            yield high
        finally:
            os.close(high)


@contextmanager
def above_1024(sock: socket.socket) -> Iterator[socket.socket]:
    """A duplicate of ``sock`` above 1024, as a socket object, closed on the way out."""
    with _room_above_1024():
        high = socket.socket(fileno=_dup_above_1024(sock.fileno()))
        try:
            yield high
        finally:
            high.close()
