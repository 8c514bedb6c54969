"""What an export serves: an AoE disk named SHELF.SLOT, or a local image as file:PATH.

The same spelling works for every export command, so an export can be tried on a plain
file before there is a network, and tests can drive the real commands without one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from aoe.export.blockdev import BlockDevice, FileBlockDevice


class SourceError(ValueError):
    """The disk named on the command line cannot be parsed or opened."""


@dataclass(frozen=True)
class Source:
    """A parsed disk name."""

    shelf: int | None = None
    slot: int | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        """Short name used as NBD export name and FUSE fsname."""
        if self.path is not None:
            return self.path.rstrip("/").rsplit("/", 1)[-1] or "disk"
        return f"e{self.shelf}.{self.slot}"


def parse_source(text: str) -> Source:
    """'1.2' or 'e1.2' (shelf 0-65534, slot 0-254) or 'file:PATH'."""
    if text.startswith("file:"):
        path = text[5:]
        if not path:
            raise SourceError("file: needs a path, e.g. file:disk.img")
        return Source(path=path)
    m = re.fullmatch(r"e?(\d+)\.(\d+)", text)
    if not m:
        raise SourceError(f"{text!r} is not SHELF.SLOT (e.g. 1.0) or file:PATH")
    shelf, slot = int(m.group(1)), int(m.group(2))
    if shelf > 0xFFFE or slot > 0xFE:
        raise SourceError(f"{text!r}: shelf must be 0-65534 and slot 0-254")
    return Source(shelf=shelf, slot=slot)


def open_source(
    source: Source,
    *,
    ifaces: Sequence[str] = (),
    read_only: bool = False,
    timeout: float = 2.0,
    dead_timeout: float | None = None,
    give_up: float | None = None,
) -> BlockDevice:
    """Open the device; errors come back as SourceError with a one-line reason."""
    if source.path is not None:
        try:
            return FileBlockDevice(source.path, read_only=read_only)
        except OSError as exc:
            raise SourceError(f"cannot open {source.path}: {exc.strerror or exc}") from None
    from aoe.initiator import AoeDisk, InitiatorError

    assert source.shelf is not None and source.slot is not None
    try:
        return AoeDisk.open(source.shelf, source.slot, list(ifaces) or None,
                            timeout=timeout, read_only=read_only,
                            dead_timeout=10.0 if dead_timeout is None else dead_timeout,
                            give_up=give_up)
    except InitiatorError as exc:
        raise SourceError(str(exc)) from None
    except PermissionError as exc:
        raise SourceError(f"{exc.strerror or exc}: AoE needs root (raw sockets)") from None
