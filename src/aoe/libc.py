"""The C library, for the few calls Python does not wrap (recvmmsg, setns, malloc...).

Loaded once, from the process's own symbols: ``ctypes.util.find_library("c")`` would run
ldconfig in a subprocess at import time (about 10 ms of every command's start)."""

from __future__ import annotations

import ctypes

libc = ctypes.CDLL(None, use_errno=True)
