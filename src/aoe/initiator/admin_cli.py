"""`aoe config`, `aoe mask`, `aoe reserve`, `aoe flush`: administer a target over the wire."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ..cli_types import ADDRESS, MAC
from ..net.link import LinkError
from ..protocol import AtaBody, ConfigBody, ConfigCommand, format_mac
from ..protocol.frames import MaskBody, ReserveBody
from . import admin
from .admin import Answer
from .errors import InitiatorError

F = TypeVar("F", bound=Callable[..., Any])

_CCMD = {"set": ConfigCommand.SET, "test": ConfigCommand.TEST,
         "prefix": ConfigCommand.TEST_PREFIX, "force": ConfigCommand.FORCE_SET}


def _options(default_timeout: float = 1.0) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        fn = click.option("-i", "--iface", "ifaces", multiple=True, metavar="IFACE",
                          help="Interface to use (repeatable). Default: every Ethernet "
                               "interface that is up.")(fn)
        fn = click.option("--timeout", type=click.FloatRange(0.01, 60),
                          default=default_timeout, show_default=True,
                          help="Seconds to wait for answers.")(fn)
        return fn
    return wrap


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (InitiatorError, LinkError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(str(exc.strerror or exc)) from None


def _fail_if_any(answers: list[Answer], what: str) -> None:
    bad = [a for a in answers if a.error or a.body is None]
    if bad:
        raise click.ClickException("; ".join(f"{format_mac(a.mac)}: {what} failed ({a.error_text})"
                                              for a in bad))


def _addr(address: tuple[int, int]) -> str:
    return f"{address[0]}.{address[1]}"


@click.command("config")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.argument("action", required=False, type=click.Choice(sorted(_CCMD)))
@click.argument("text", required=False)
@_options()
def config_cmd(address: tuple[int, int], action: str | None, text: str | None,
               ifaces: tuple[str, ...], timeout: float) -> None:
    """Read the config string of SHELF.SLOT, or set / test / prefix / force it.

    \b
    Example:  aoe config 1.0 -i eth0           read it (from every MAC that answers)
              aoe config 1.0 set "rack 3"      set it if it is empty
              aoe config 1.0 force "rack 3"    set it even if it is not
              aoe config 1.0 test "rack 3"     exit 0 only if it is exactly that
              aoe config 1.0 prefix "rack"     exit 0 only if it starts with that
    """
    if action is not None and text is None:
        raise click.UsageError(f"{action} needs a STRING")
    if action is None and text is not None:
        raise click.UsageError("give set, test, prefix or force before the STRING")
    ccmd = _CCMD[action] if action else ConfigCommand.READ
    with _one_line_errors():
        answers = admin.config(ifaces or None, address, ccmd, (text or "").encode(), timeout)
    if not answers:
        if action in ("test", "prefix"):
            raise click.ClickException(f"{_addr(address)}: no target's config string "
                                       f"{'is' if action == 'test' else 'starts with'} "
                                       f"{text!r}")
        raise click.ClickException(f"no answer from AoE target {_addr(address)}")
    _fail_if_any(answers, f"config {action or 'read'}")
    for a in answers:
        assert isinstance(a.body, ConfigBody)
        value = a.body.config.decode("utf-8", "replace")
        click.echo(f"{_addr(address)} {format_mac(a.mac)} config {value!r}")


@click.command("mask")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.argument("action", required=False, type=click.Choice(["add", "del"]))
@click.argument("macs", nargs=-1, type=MAC, metavar="[MAC...]")
@_options()
def mask_cmd(address: tuple[int, int], action: str | None, macs: tuple[bytes, ...],
             ifaces: tuple[str, ...], timeout: float) -> None:
    """Read the MAC mask list of SHELF.SLOT, or add / del MACs (empty list: everyone).

    Adding a MAC other than this host's locks this host out.

    \b
    Example:  aoe mask 1.0 add 02:00:00:00:00:01 -i eth0
    """
    if action and not macs:
        raise click.UsageError(f"{action} needs at least one MAC")
    if macs and not action:
        raise click.UsageError("give add or del before the MACs")
    with _one_line_errors():
        answers = admin.mask(ifaces or None, address,
                             add=macs if action == "add" else (),
                             delete=macs if action == "del" else (), timeout=timeout)
    _fail_if_any(answers, "mask list")
    for a in answers:
        assert isinstance(a.body, MaskBody)
        if a.body.merror:
            raise click.ClickException(f"{format_mac(a.mac)}: mask list edit stopped after "
                                       f"{len(a.body.directives)} directive(s): "
                                       f"{admin.mask_error_text(a.body.merror)}")
        listed = ", ".join(format_mac(d.mac) for d in a.body.directives) or "empty (everyone)"
        click.echo(f"{_addr(address)} {format_mac(a.mac)} mask {listed}")


@click.command("reserve")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.argument("macs", nargs=-1, type=MAC, metavar="[MAC...]")
@click.option("--release", is_flag=True, help="Empty the reserve list.")
@click.option("--force", is_flag=True, help="Set the list even if another MAC holds it.")
@_options()
def reserve_cmd(address: tuple[int, int], macs: tuple[bytes, ...], release: bool, force: bool,
                ifaces: tuple[str, ...], timeout: float) -> None:
    """Read the reserve list of SHELF.SLOT, reserve it for MACs, or --release it.

    \b
    Example:  aoe reserve 1.0 02:00:00:00:00:01 -i eth0
              aoe reserve 1.0 --release -i eth0
    """
    if release and macs:
        raise click.UsageError("give MACs or --release, not both")
    wanted: list[bytes] | None = [] if release else (list(macs) if macs else None)
    if force and wanted is None:
        raise click.UsageError("--force needs MACs or --release")
    with _one_line_errors():
        answers = admin.reserve(ifaces or None, address, wanted, force, timeout)
    _fail_if_any(answers, "reserve" if wanted else "release" if release else "reserve read")
    for a in answers:
        assert isinstance(a.body, ReserveBody)
        held = ", ".join(format_mac(m) for m in a.body.macs) or "not reserved"
        click.echo(f"{_addr(address)} {format_mac(a.mac)} reserve {held}")


@click.command("flush")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@_options(default_timeout=10.0)
def flush_cmd(address: tuple[int, int], ifaces: tuple[str, ...], timeout: float) -> None:
    """Ask SHELF.SLOT to put every acknowledged write on stable storage (FLUSH CACHE).

    \b
    Example:  aoe flush 1.0 -i eth0
    """
    with _one_line_errors():
        answers = admin.flush(ifaces or None, address, timeout)
    _fail_if_any(answers, "flush")
    for a in answers:
        assert isinstance(a.body, AtaBody)
        if a.body.cmd_status & admin.ATA_ERR:
            why = ("the target does not support FLUSH CACHE (command aborted)"
                   if a.body.err_feature & 0x04 else f"ATA error 0x{a.body.err_feature:02x}")
            raise click.ClickException(f"{format_mac(a.mac)}: flush failed: {why}")
        click.echo(f"{_addr(address)} {format_mac(a.mac)} flushed")
