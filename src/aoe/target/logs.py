"""Structured log lines: ``time level event key=value ...``, or one JSON object per line.

Log calls pass their fields through ``extra=``; the formatter prints whatever the record
carries beyond the standard attributes, so fields stay machine-readable (grep, jq).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _text(value: Any) -> str:
    s = value if isinstance(value, str) else json.dumps(value, default=str)
    if not s or any(ch in s for ch in ' "=\n'):
        return json.dumps(s)
    return s


class KeyValueFormatter(logging.Formatter):
    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps  # the journal stamps each line itself

    def format(self, record: logging.LogRecord) -> str:
        parts = [record.levelname.lower(), _text(record.getMessage())]
        if self.timestamps:
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            parts.insert(0, f"{ts}.{int(record.msecs):03d}")
        parts += [f"{k}={_text(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "event": record.getMessage()}
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(verbosity: int, as_json: bool = False, stream: TextIO | None = None,
                  timestamps: bool = True) -> None:
    """Warnings by default, ``-v`` start-up and state changes, ``-vv`` every decision."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter(timestamps))
    root = logging.getLogger("aoe")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
