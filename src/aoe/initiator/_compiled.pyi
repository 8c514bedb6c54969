"""Types of the compiled core loops (_compiled.c); core.py's Python loops are the reference."""

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .core import InFlight, Request
from .window import PathWindow

def answers(
    tags: dict[int, InFlight],
    paths: list[PathWindow],
    completed: list[Request],
    drop_answered: Callable[[PathWindow, float], None],
    now: float,
    port: object,
    buf: Any,
    lengths: Sequence[int],
    start: int,
    count: int,
    size: int,
    rx_ok: bytes,
) -> tuple[int, int]: ...
def configure(frame: type, request: type, path: type, budget: type) -> None: ...
def cut(
    pending: deque[Request],
    tags: dict[int, InFlight],
    path: PathWindow,
    room: int,
    now: float,
    seq: int,
    turn: int,
) -> tuple[int, int]: ...
