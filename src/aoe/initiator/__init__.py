"""AoE initiator: discover targets and use them as thread-safe block devices.

    from aoe.initiator import AoeDisk
    with AoeDisk.open(1, 2, ifaces=["eth0"]) as disk:
        head = disk.read(0, 4096)
"""

from ..net.link import default_interfaces
from .discovery import PathInfo, TargetInfo, discover
from .disk import AoeDisk
from .errors import (
    AtaCommandError,
    ConflictingTargetsError,
    DiskClosedError,
    InitiatorError,
    InterfaceUnusableError,
    MtuMismatchError,
    NoTargetError,
    NotRootError,
    OwnerUnsettledError,
    TargetDeadError,
    TargetError,
    TargetReadOnlyError,
    TargetReservedError,
)
from .session import Session, SessionStats

__all__ = [
    "AoeDisk",
    "AtaCommandError",
    "ConflictingTargetsError",
    "DiskClosedError",
    "InitiatorError",
    "InterfaceUnusableError",
    "MtuMismatchError",
    "NoTargetError",
    "NotRootError",
    "OwnerUnsettledError",
    "PathInfo",
    "Session",
    "SessionStats",
    "TargetDeadError",
    "TargetError",
    "TargetInfo",
    "TargetReadOnlyError",
    "TargetReservedError",
    "default_interfaces",
    "discover",
]
