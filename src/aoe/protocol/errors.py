"""The one exception type the codec raises, and AoE protocol error codes."""

from __future__ import annotations

from enum import IntEnum


class AoeError(IntEnum):
    """Error codes carried in the AoE header when the Error flag is set (r11 section 2.4)."""

    UNRECOGNIZED_COMMAND = 1
    BAD_ARGUMENT = 2
    DEVICE_UNAVAILABLE = 3
    CONFIG_STRING_PRESENT = 4
    UNSUPPORTED_VERSION = 5
    TARGET_RESERVED = 6


class DecodeError(ValueError):
    """A frame that cannot be decoded: too short, truncated, wrong version or inconsistent.

    ``reason`` is a short machine-friendly tag (e.g. ``"short"``, ``"version"``), ``detail``
    a human sentence. When the common header itself was readable, ``header`` holds it, so
    a target can still answer with an AoE error (e.g. unsupported version) instead of
    dropping the frame.
    """

    def __init__(self, reason: str, detail: str, header: object | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.header = header
