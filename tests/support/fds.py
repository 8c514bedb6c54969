"""A socket on a descriptor above 1024, where select() refuses to wait (FD_SETSIZE): what
a process holding many files (a target with a thousand exports) waits on."""

from __future__ import annotations

import fcntl
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def above_1024(sock: socket.socket) -> Iterator[socket.socket]:
    """A duplicate of ``sock`` on the lowest free descriptor above 1024 (dup2 onto a fixed
    one could close another), the soft descriptor limit raised for it meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2048 if hard == resource.RLIM_INFINITY else min(2048, hard)
    if want <= 1100:
        pytest.skip("this process may not open descriptors above 1100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    high: socket.socket | None = None
    try:
        high = socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 1025))
        assert high.fileno() > 1024
        yield high
    finally:
        if high is not None:
            high.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
