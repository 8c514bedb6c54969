"""Why an initiator operation failed, one class per cause a user can act on.

Every class carries an ``errno`` so a block-device front end (NBD, FUSE) can hand the
caller the matching POSIX error without knowing the AoE details.
"""

from __future__ import annotations

import errno as _errno


class InitiatorError(Exception):
    """Base class of every initiator failure; the message is meant for a human."""

    errno: int = _errno.EIO


class NotRootError(InitiatorError):
    """Raw AoE sockets need root (CAP_NET_RAW)."""

    errno = _errno.EPERM


class InterfaceUnusableError(InitiatorError):
    """A named network interface is missing, down or cannot carry AoE."""

    errno = _errno.ENODEV


class NoTargetError(InitiatorError):
    """Nobody answered the Query Config: target down, elsewhere, or its ACL excludes us."""

    errno = _errno.ENXIO


class MtuMismatchError(InitiatorError):
    """Small frames get through but full-size ones do not, or the MTU is too small."""

    errno = _errno.EMSGSIZE


class TargetDeadError(InitiatorError):
    """The target stopped answering on every path for longer than the dead time."""

    errno = _errno.EIO


class TargetReadOnlyError(InitiatorError):
    """The export refuses writes."""

    errno = _errno.EROFS


class TargetReservedError(InitiatorError):
    """Another initiator holds a reservation on the target (AoE error 6)."""

    errno = _errno.EACCES


class TargetError(InitiatorError):
    """The target answered with an AoE error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class AtaCommandError(InitiatorError):
    """The device reported an ATA error (status ERR) for a command."""

    def __init__(self, message: str, status: int = 0, error: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class DiskClosedError(InitiatorError):
    """The disk (session) was closed while, or before, the request ran."""

    errno = _errno.EBADF


class ConflictingTargetsError(InitiatorError):
    """Several MACs answer for one shelf.slot but are not the same disk (two targets on one
    address): reading or writing through both would mix two disks."""

    errno = _errno.EADDRINUSE


class OwnerUnsettledError(InitiatorError):
    """A disk opened with its owner check deferred heard another MAC answer for its
    address during the grace: another target, or a path discovery had not seen yet. The
    caller has written nothing; opening the disk again without deferring tells which."""

    errno = _errno.EAGAIN
