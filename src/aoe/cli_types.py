"""What every command shares: SHELF.SLOT and byte-size parameter types, network errors."""

from __future__ import annotations

from typing import Any

import click

from .net.rawsock import InterfaceError
from .protocol.mac import parse_address
from .units import parse_size


class AddressType(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """SHELF.SLOT, e.g. 1.0; broadcast values are refused."""

    name = "shelf.slot"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(click.ParamType):  # type: ignore[type-arg]
    """A byte count: 4096, 64k, 32M, 1GiB (binary units)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = AddressType()
SIZE = SizeType()


def net_errors(exc: OSError, ifname: str) -> click.ClickException:
    """The one-line error for a raw-socket failure on ``ifname``."""
    if isinstance(exc, InterfaceError):
        return click.ClickException(str(exc))
    if isinstance(exc, PermissionError):
        return click.ClickException("raw sockets need root (CAP_NET_RAW)")
    return click.ClickException(f"{ifname}: {exc}")
