"""Byte counts written the way people write them: 4096, 64k, 32M, 1GiB, 4G (binary units)."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string such as "512M", "64kb", "1GiB"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (examples: 4096, 64k, 32M, 1GiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]
