"""Types of the compiled burst path (_burst.c); engine.py's Python path is the reference."""

from collections.abc import Sequence

from .store import Store

def burst(
    views: list[memoryview],
    lengths: Sequence[int],
    start: int,
    n: int,
    out: list[int],
    mac: bytes,
    by_addr: dict[bytes, Store],
    max_sectors: int,
    now: float,
) -> tuple[int, int, int, int, int, int, tuple[Store, bool, int, int, list[int]] | None]: ...
