"""Loggers that import :mod:`logging` at their first use.

Importing logging (and traceback, string, textwrap with it) is a few ms of CPU, and at
25 % of a slow core every ms of start-up is four of wall time. A command that logs nothing,
such as a copy that goes well, never pays for it; one that does gets the same logger as
``logging.getLogger(name)``, configured the usual way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import logging


class _LazyLogger:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import logging

        return getattr(logging.getLogger(self._name), attr)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, looked up when first used."""
    return cast("logging.Logger", _LazyLogger(name))
