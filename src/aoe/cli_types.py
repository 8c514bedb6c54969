"""What every command shares: SHELF.SLOT and byte-size parameter types, network errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .net.rawsock import InterfaceError
from .protocol.mac import parse_address, parse_mac
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


F = TypeVar("F", bound=Callable[..., Any])

ADDRESS = AddressType()
SIZE = SizeType()


class MacType(click.ParamType):  # type: ignore[type-arg]
    """A MAC address: 02:00:00:00:00:01, 02-00-00-00-00-01 or 020000000001."""

    name = "mac"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> bytes:
        if isinstance(value, bytes):
            return value
        try:
            return parse_mac(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


MAC = MacType()


IFACE_HELP = "Interface to use (repeatable). Default: every Ethernet interface that is up."
SIZE_HELP = "K, M, G mean KiB, MiB, GiB (binary)"


def iface_option(help_text: str = IFACE_HELP) -> Callable[[F], F]:
    """The one spelling of the interface option: -i/--iface, repeatable (into `ifaces`)."""
    return click.option("-i", "--iface", "ifaces", multiple=True, metavar="IFACE",
                        help=help_text)


def deprecated_form(old: str, new: str) -> None:
    """The one line an old command form prints (it still works)."""
    click.echo(f"warning: `{old}` is deprecated; write `{new}`", err=True)


def looks_like_address(text: str) -> bool:
    """N.N: meant as SHELF.SLOT even when a number is out of range (so that the range,
    not the syntax, is what the error talks about)."""
    shelf, dot, slot = text.partition(".")
    return bool(dot) and shelf.isdigit() and slot.isdigit()


def address_or_fail(text: str, param_hint: str) -> tuple[int, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None


def old_iface_first(first: str, second: str | None, ifaces: tuple[str, ...], command: str,
                    ) -> tuple[tuple[int, int], tuple[str, ...]]:
    """`aoe COMMAND SHELF.SLOT -i IFACE` (or the old `aoe COMMAND IFACE SHELF.SLOT`, which
    still works with a warning): the address and the interfaces."""
    if second is None:
        return address_or_fail(first, "SHELF.SLOT"), ifaces
    deprecated_form(f"aoe {command} IFACE SHELF.SLOT", f"aoe {command} SHELF.SLOT -i IFACE")
    return address_or_fail(second, "SHELF.SLOT"), (first, *ifaces)


def one_iface(ifaces: tuple[str, ...], address: tuple[int, int], timeout: float) -> str:
    """The one interface given, or the first of several (or of every one that is up) on
    which SHELF.SLOT answers a Query Config."""
    if len(ifaces) == 1:
        return ifaces[0]
    from .initiator.discovery import discover
    from .initiator.errors import InitiatorError

    try:
        found = discover(list(ifaces) or None, address, timeout, with_identify=False)
    except (InitiatorError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    for target in found:
        for path in target.paths:
            return path.ifname
    where = ", ".join(ifaces) if ifaces else "any interface that is up"
    raise click.ClickException(
        f"no answer from {address[0]}.{address[1]} on {where} within {timeout:g} s")


def net_errors(exc: OSError, ifname: str) -> click.ClickException:
    """The one-line error for a raw-socket failure on ``ifname``."""
    if isinstance(exc, InterfaceError):
        return click.ClickException(str(exc))
    if isinstance(exc, PermissionError):
        return click.ClickException("raw sockets need root (CAP_NET_RAW)")
    return click.ClickException(f"{ifname}: {exc}")
