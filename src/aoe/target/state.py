"""Per-export state that initiators change and that must survive a restart.

The config string, the MAC mask list and the reserve list are set over the wire; a target
that forgot them on restart would silently open a reserved or masked disk to everyone. Each
export keeps them in a small JSON file, replaced atomically (temp file, fsync, rename, fsync
of the directory) so a crash leaves either the old or the new state, never a torn one.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol.mac import format_mac, parse_mac

STATE_VERSION = 1


class StateError(Exception):
    """A state file exists but cannot be read or written."""


@dataclass
class ExportState:
    """What an initiator may change on an export, plus the serial number handed out once."""

    config: bytes = b""
    masks: list[bytes] = field(default_factory=list)
    reservations: list[bytes] = field(default_factory=list)
    serial: str = ""
    path: Path | None = None  # where it is saved; None keeps it in memory only

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config_b64": base64.b64encode(self.config).decode("ascii"),
            "config_text": self.config.decode("utf-8", "replace"),
            "masks": [format_mac(m) for m in self.masks],
            "reservations": [format_mac(m) for m in self.reservations],
            "serial": self.serial,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> ExportState:
        try:
            return cls(
                config=base64.b64decode(data.get("config_b64", ""), validate=True),
                masks=[parse_mac(m) for m in data.get("masks", [])],
                reservations=[parse_mac(m) for m in data.get("reservations", [])],
                serial=str(data.get("serial", "")),
                path=path,
            )
        except (ValueError, TypeError) as exc:
            raise StateError(f"state file {path}: {exc}") from None

    @classmethod
    def load(cls, path: Path | None) -> ExportState | None:
        """The saved state, or None when there is no file yet."""
        if path is None:
            return None
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"state file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise StateError(f"state file {path} does not hold a JSON object")
        return cls.from_json(data, path)

    def save(self, durable: bool = True) -> None:
        """Write the state atomically; a no-op for in-memory state. ``durable=False`` skips
        the fsyncs, for a state that can be derived again from the configuration."""
        if self.path is None:
            return
        write_atomic(self.path, json.dumps(self.to_json(), indent=2).encode() + b"\n",
                     durable)


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if not durable:
            return
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateError(f"cannot write state file {path}: {exc.strerror}") from None
