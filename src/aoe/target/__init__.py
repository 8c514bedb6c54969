"""The AoE target: exports (backing stores), the request engine, state and the serve loop."""

from .config import ConfigError, ServeConfig, load_config, parse_config
from .counters import Counters
from .engine import Engine
from .export import Export, ExportError, ExportSpec
from .server import InterfaceSpec, Target, TargetError
from .state import ExportState, StateError

__all__ = [
    "ConfigError",
    "Counters",
    "Engine",
    "Export",
    "ExportError",
    "ExportSpec",
    "ExportState",
    "InterfaceSpec",
    "ServeConfig",
    "StateError",
    "Target",
    "TargetError",
    "load_config",
    "parse_config",
]
