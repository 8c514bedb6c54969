"""MAC address text <-> bytes, and shelf.slot parsing: small, strict, shared by everyone."""

from __future__ import annotations

import re

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
_ADDR_RE = re.compile(r"^\s*(\d+)\.(\d+)\s*$")


def parse_mac(text: str) -> bytes:
    """``"00:11:22:33:44:55"`` (or with dashes, or bare hex) to six bytes."""
    if not _MAC_RE.match(text.strip()):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes.fromhex(re.sub(r"[:-]", "", text.strip()))


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_address(text: str) -> tuple[int, int]:
    """``"SHELF.SLOT"`` to (shelf, slot); shelf is 16 bits, slot 8 bits."""
    m = _ADDR_RE.match(text)
    if not m:
        raise ValueError(f"not a SHELF.SLOT address: {text!r}")
    shelf, slot = int(m.group(1)), int(m.group(2))
    if shelf > 0xFFFE or slot > 0xFE:
        raise ValueError(
            f"{text!r}: shelf must be 0-65534 and slot 0-254 (65535 and 255 mean broadcast)"
        )
    return shelf, slot
