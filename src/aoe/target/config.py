"""The target's TOML configuration: many exports, several interfaces, one process.

Example::

    state_dir = "/var/lib/pyaoe"          # optional
    interfaces = ["eth0", { name = "eth1", mtu = 9000 }]

    [[export]]
    address = "1.0"                       # SHELF.SLOT (or shelf = 1, slot = 0)
    path = "/srv/aoe/disk0.img"
    offset = "1M"                         # optional: a slice of the store
    length = "4G"
    read_only = false
    direct = false                        # O_DIRECT
    sync = false                          # O_SYNC
    config = "rack 3"                     # initial config string
    interfaces = ["eth0"]                 # optional: default is every interface
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import units
from ..protocol.mac import parse_address
from .server import InterfaceSpec
from .store import ExportSpec

_EXPORT_KEYS = {
    "address",
    "shelf",
    "slot",
    "path",
    "file",
    "offset",
    "length",
    "read_only",
    "direct",
    "sync",
    "config",
    "interfaces",
    "serial",
    "model",
}
_TOP_KEYS = {"state_dir", "interfaces", "export", "mtu"}


class ConfigError(Exception):
    """The configuration file is missing, not TOML, or describes something impossible."""


@dataclass
class ServeConfig:
    exports: list[ExportSpec] = field(default_factory=list)
    interfaces: list[InterfaceSpec] = field(default_factory=list)
    state_dir: str | None = None


def config_size(value: object, what: str) -> int:
    """Bytes from an integer or a string such as ``"512M"``, ``"4G"``, ``"1MiB"``."""
    if not isinstance(value, (int, str)):
        raise ConfigError(f'{what}: expected a size such as 4096, "512M" or "4G", got {value!r}')
    try:
        return units.parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def load_config(path: str | Path) -> ServeConfig:
    """Read and check a TOML configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return parse_config(data, base=p.parent)


def parse_config(data: dict[str, Any], base: Path | None = None) -> ServeConfig:
    """Build a :class:`ServeConfig` from parsed TOML; relative paths are taken from ``base``."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    cfg = ServeConfig()
    default_mtu = data.get("mtu")
    if default_mtu is not None and (not isinstance(default_mtu, int) or default_mtu < 68):
        raise ConfigError(f"mtu: expected an integer MTU, got {default_mtu!r}")
    ifaces = data.get("interfaces", [])
    if isinstance(ifaces, str):
        ifaces = [ifaces]
    if not isinstance(ifaces, list):
        raise ConfigError("interfaces: expected a list of names or {name, mtu} tables")
    for i, item in enumerate(ifaces):
        if isinstance(item, str):
            cfg.interfaces.append(InterfaceSpec(item, default_mtu))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            mtu = item.get("mtu", default_mtu)
            if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)):
                raise ConfigError(f"interfaces[{i}].mtu: expected an integer")
            extra = set(item) - {"name", "mtu"}
            if extra:
                raise ConfigError(f"interfaces[{i}]: unknown keys {', '.join(sorted(extra))}")
            cfg.interfaces.append(InterfaceSpec(item["name"], mtu))
        else:
            raise ConfigError(f"interfaces[{i}]: expected a name or a {{name, mtu}} table")
    state_dir = data.get("state_dir")
    if state_dir is not None:
        if not isinstance(state_dir, str):
            raise ConfigError("state_dir: expected a path")
        cfg.state_dir = str(_resolve(state_dir, base))
    exports = data.get("export", [])
    if not isinstance(exports, list) or not exports:
        raise ConfigError("no [[export]] tables: nothing to serve")
    for i, ex in enumerate(exports):
        if not isinstance(ex, dict):
            raise ConfigError(f"export[{i}]: expected a table")
        cfg.exports.append(_parse_export(ex, i, base))
    if not cfg.interfaces:
        named = sorted({n for e in cfg.exports for n in (e.interfaces or [])})
        if not named:
            raise ConfigError('no interfaces: set interfaces = ["eth0"]')
        cfg.interfaces = [InterfaceSpec(n, default_mtu) for n in named]
    return cfg


def _resolve(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base is None else base / p


def _parse_export(ex: dict[str, Any], i: int, base: Path | None) -> ExportSpec:
    where = f"export[{i}]"
    unknown = set(ex) - _EXPORT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    if "address" in ex:
        try:
            shelf, slot = parse_address(str(ex["address"]))
        except ValueError as exc:
            raise ConfigError(f"{where}.address: {exc}") from None
    elif "shelf" in ex and "slot" in ex:
        shelf, slot = ex["shelf"], ex["slot"]
        if not (
            isinstance(shelf, int)
            and isinstance(slot, int)
            and 0 <= shelf <= 0xFFFE
            and 0 <= slot <= 0xFE
        ):
            raise ConfigError(f"{where}: shelf must be 0-65534 and slot 0-254")
    else:
        raise ConfigError(f'{where}: needs address = "SHELF.SLOT"')
    path = ex.get("path", ex.get("file"))
    if not isinstance(path, str) or not path:
        raise ConfigError(f'{where}: needs path = "/path/to/image-or-device"')
    where = f"export e{shelf}.{slot}"
    for flag in ("read_only", "direct", "sync"):
        if flag in ex and not isinstance(ex[flag], bool):
            raise ConfigError(f"{where}.{flag}: expected true or false")
    config = ex.get("config")
    if config is not None:
        if not isinstance(config, str):
            raise ConfigError(f"{where}.config: expected a string")
        config_b: bytes | None = config.encode("utf-8")
        if len(config_b or b"") > 1024:
            raise ConfigError(f"{where}.config: longer than 1024 bytes")
    else:
        config_b = None
    ifaces = ex.get("interfaces")
    if ifaces is not None:
        if isinstance(ifaces, str):
            ifaces = [ifaces]
        if not (isinstance(ifaces, list) and all(isinstance(n, str) for n in ifaces)):
            raise ConfigError(f"{where}.interfaces: expected a list of interface names")
    for key in ("serial", "model"):
        if key in ex and not isinstance(ex[key], str):
            raise ConfigError(f"{where}.{key}: expected a string")
    return ExportSpec(
        shelf=shelf,
        slot=slot,
        path=str(_resolve(path, base)),
        offset=config_size(ex.get("offset", 0), f"{where}.offset"),
        length=config_size(ex["length"], f"{where}.length") if "length" in ex else None,
        read_only=ex.get("read_only", False),
        direct=ex.get("direct", False),
        sync=ex.get("sync", False),
        config=config_b,
        interfaces=ifaces,
        serial=ex.get("serial"),
        model=ex.get("model"),
    )
