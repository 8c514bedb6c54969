"""Types of the compiled answer loop (_answers.c); core.py's Python loop is the reference."""

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
