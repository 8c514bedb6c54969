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
    allow = ["02:00:00:00:00:01"]         # optional: only these initiators (mask list)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import units
from ..protocol.mac import parse_address, parse_mac
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
    "allow",
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
    cfg.interfaces = _parse_interfaces(data.get("interfaces", []), default_mtu)
    state_dir = data.get("state_dir")
    if state_dir is not None:
        if not isinstance(state_dir, str):
            raise ConfigError("state_dir: expected a path")
        cfg.state_dir = str(_resolve(state_dir, base))
    exports = data.get("export", [])
    if not isinstance(exports, list) or not exports:
        raise ConfigError("no [[export]] tables: nothing to serve")
    seen: dict[tuple[int, int], int] = {}
    for i, ex in enumerate(exports):
        if not isinstance(ex, dict):
            raise ConfigError(f"export[{i}]: expected a table")
        spec = _parse_export(ex, i, base)
        first = seen.setdefault((spec.shelf, spec.slot), i)
        if first != i:
            raise ConfigError(f"export[{i}]: address {spec.shelf}.{spec.slot} is already "
                              f"used by export[{first}]")
        cfg.exports.append(spec)
    if not cfg.interfaces:
        named = sorted({n for e in cfg.exports for n in (e.interfaces or [])})
        if not named:
            raise ConfigError('no interfaces: set interfaces = ["eth0"]')
        cfg.interfaces = [InterfaceSpec(n, default_mtu) for n in named]
    return cfg


def _parse_interfaces(ifaces: Any, default_mtu: int | None) -> list[InterfaceSpec]:
    """``interfaces = "eth0"``, ``["eth0", ...]`` or ``[{name = "eth0", mtu = 9000}, ...]``."""
    if isinstance(ifaces, str):
        ifaces = [ifaces]
    if not isinstance(ifaces, list):
        raise ConfigError("interfaces: expected a list of names or {name, mtu} tables")
    out: list[InterfaceSpec] = []
    for i, item in enumerate(ifaces):
        if isinstance(item, str):
            out.append(InterfaceSpec(item, default_mtu))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            mtu = item.get("mtu", default_mtu)
            if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)):
                raise ConfigError(f"interfaces[{i}].mtu: expected an integer")
            extra = set(item) - {"name", "mtu"}
            if extra:
                raise ConfigError(f"interfaces[{i}]: unknown keys {', '.join(sorted(extra))}")
            out.append(InterfaceSpec(item["name"], mtu))
        else:
            raise ConfigError(f"interfaces[{i}]: expected a name or a {{name, mtu}} table")
    return out

def _resolve(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base is None else base / p


def _parse_export(ex: dict[str, Any], i: int, base: Path | None) -> ExportSpec:
    where = f"export[{i}]"
    unknown = set(ex) - _EXPORT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    shelf, slot = _export_address(ex, where)
    path = ex.get("path", ex.get("file"))
    if not isinstance(path, str) or not path:
        raise ConfigError(f'{where}: needs path = "/path/to/image-or-device"')
    where = f"export e{shelf}.{slot}"
    for flag in ("read_only", "direct", "sync"):
        if flag in ex and not isinstance(ex[flag], bool):
            raise ConfigError(f"{where}.{flag}: expected true or false")
    config_b = _export_config(ex.get("config"), where)
    ifaces = _export_interfaces(ex.get("interfaces"), where)
    for key in ("serial", "model"):
        if key in ex and not isinstance(ex[key], str):
            raise ConfigError(f"{where}.{key}: expected a string")
    allow = _parse_allow(ex.get("allow"), where)
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
        allow=allow,
    )


def _export_address(ex: dict[str, Any], where: str) -> tuple[int, int]:
    """Shelf and slot from ``address = "SHELF.SLOT"`` or from ``shelf`` and ``slot``."""
    if "address" in ex:
        try:
            return parse_address(str(ex["address"]))
        except ValueError as exc:
            raise ConfigError(f"{where}.address: {exc}") from None
    if "shelf" in ex and "slot" in ex:
        shelf, slot = ex["shelf"], ex["slot"]
        if not (
            isinstance(shelf, int)
            and isinstance(slot, int)
            and 0 <= shelf <= 0xFFFE
            and 0 <= slot <= 0xFE
        ):
            raise ConfigError(f"{where}: shelf must be 0-65534 and slot 0-254")
        return shelf, slot
    raise ConfigError(f'{where}: needs address = "SHELF.SLOT"')


def _export_config(config: Any, where: str) -> bytes | None:
    """The initial config string, as the bytes an initiator will read."""
    if config is None:
        return None
    if not isinstance(config, str):
        raise ConfigError(f"{where}.config: expected a string")
    config_b = config.encode("utf-8")
    if len(config_b) > 1024:
        raise ConfigError(f"{where}.config: longer than 1024 bytes")
    return config_b


def _string_list(value: object, where: str, what: str) -> list[str] | None:
    """A TOML value that is a string or a list of strings, as a list (None if absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of {what}")
    return value


def _export_interfaces(ifaces: Any, where: str) -> list[str] | None:
    """The interfaces an export is limited to (None: every served interface)."""
    return _string_list(ifaces, f"{where}.interfaces", "interface names")


def _parse_allow(value: object, where: str) -> list[bytes] | None:
    """``allow = ["aa:bb:cc:dd:ee:ff", ...]``: the MACs seeded into the mask list."""
    texts = _string_list(value, f"{where}.allow", "MAC addresses")
    if texts is None:
        return None
    out: list[bytes] = []
    for m in texts:
        try:
            mac = parse_mac(m)
        except ValueError as exc:
            raise ConfigError(f"{where}.allow: {exc}") from None
        if mac not in out:
            out.append(mac)
    if len(out) > 255:
        raise ConfigError(f"{where}.allow: at most 255 MACs (the AoE mask list limit)")
    return out
