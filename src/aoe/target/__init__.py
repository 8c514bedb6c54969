"""The AoE target: stores (backing files and devices), the request engine, state and the serve
loop."""

from .config import ConfigError, ServeConfig, load_config, parse_config
from .counters import Counters
from .engine import Engine
from .server import InterfaceSpec, Target, TargetError
from .state import ExportState, StateError
from .store import ExportSpec, Store, StoreError

__all__ = [
    "ConfigError",
    "Counters",
    "Engine",
    "ExportSpec",
    "ExportState",
    "InterfaceSpec",
    "ServeConfig",
    "StateError",
    "Store",
    "StoreError",
    "Target",
    "TargetError",
    "load_config",
    "parse_config",
]
