"""`aoe status` and `aoe ctl`: ask a running `aoe serve` through its control socket."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..cli_types import ADDRESS, MAC
from .control import ControlError, find_sockets, request

_SOCKET_HELP = "Control socket of the target [default: every socket in /run/pyaoe]."


def _statuses(paths: tuple[str, ...]) -> list[tuple[Path, dict[str, Any]]]:
    socks = find_sockets(paths)
    if not socks:
        raise click.ClickException("no running aoe serve found (no control socket in "
                                   "/run/pyaoe; is it running, or started with "
                                   "--control-socket elsewhere?)")
    out = []
    for s in socks:
        try:
            answer = request(s, {"op": "status"})
        except ControlError as exc:
            if paths:
                raise click.ClickException(str(exc)) from None
            continue  # a stale socket of a target that died
        if "error" in answer:
            raise click.ClickException(f"{s}: {answer['error']}")
        out.append((s, answer["status"]))
    if not out:
        raise click.ClickException("no running aoe serve answered on /run/pyaoe")
    return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_status(path: Path, st: dict[str, Any]) -> str:
    c = st["counters"]
    errors = sum(c["errors"].values())
    ifaces = ", ".join(f"{i['name']} {i['mac']} mtu {i['mtu']} ({i['max_sectors']} sectors/frame)"
                       for i in st["interfaces"])
    lines = [f"aoe serve pid {st['pid']} up {st['uptime_s']:.0f} s  ({path})",
             f"  interfaces: {ifaces}",
             f"  frames in {c['frames_in']} out {c['frames_out']}, read {_human(c['bytes_read'])}"
             f", written {_human(c['bytes_written'])}, errors {errors}"]
    for e in st["exports"]:
        mode = "ro" if e["read_only"] else "rw"
        access = ", ".join(e["masks"]) if e["masks"] else "everyone"
        lines.append(f"  {e['export']}  {_human(e['size'])} {mode}  {e['path']}")
        lines.append(f"    frames {e['frames']}  read {_human(e['bytes_read'])}  written "
                     f"{_human(e['bytes_written'])}  errors {e['errors']}")
        lines.append(f"    config {e['config']!r}  allowed: {access}  reserved: "
                     f"{', '.join(e['reservations']) or 'no'}")
        for i in e["initiators"]:
            lines.append(f"    initiator {i['mac']}  frames {i['frames']}  "
                         f"last seen {i['last_seen_s']:.1f} s ago")
    return "\n".join(lines)


@click.command("status")
@click.option("-s", "--socket", "sockets", multiple=True, metavar="PATH", help=_SOCKET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Print again every --interval seconds.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
              help="Seconds between two prints with --watch.")
def status(sockets: tuple[str, ...], as_json: bool, watch: bool, interval: float) -> None:
    """Show a running target: exports, counters, initiators seen, masks, reservations.

    \b
    Example:  aoe status
              aoe status --watch --interval 2
    """
    while True:
        found = _statuses(sockets)
        if as_json:
            click.echo(json.dumps([dict(socket=str(p), **st) for p, st in found],
                                  indent=None if watch else 2))
        else:
            if watch:
                click.echo("\033[H\033[2J", nl=False)
            click.echo("\n".join(format_status(p, st) for p, st in found))
        if not watch:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


def _send(sockets: tuple[str, ...], req: dict[str, Any]) -> None:
    """Send to the target that serves the export; print its answer."""
    misses = []
    for s in find_sockets(sockets):
        try:
            answer = request(s, req)
        except ControlError as exc:
            misses.append(str(exc))
            continue
        err = answer.get("error")
        if err and str(err).startswith("not served here"):
            misses.append(f"{s}: {err}")
            continue
        if err:
            raise click.ClickException(str(err))
        ok = answer["ok"]
        click.echo(", ".join(ok) if isinstance(ok, list) else str(ok))
        return
    raise click.ClickException(f"no running aoe serve serves {req['export']}"
                               + (f" ({misses[0]})" if len(misses) == 1 else ""))


@click.group("ctl")
@click.option("-s", "--socket", "sockets", multiple=True, metavar="PATH", help=_SOCKET_HELP)
@click.pass_context
def ctl(ctx: click.Context, sockets: tuple[str, ...]) -> None:
    """Change a running target as its operator (mask list, reservation, config string)."""
    ctx.obj = sockets


def _name(addr: tuple[int, int]) -> str:
    return f"{addr[0]}.{addr[1]}"


@ctl.group("mask")
def mask() -> None:
    """The MAC mask list: only the MACs listed may use the export (empty: everyone)."""


@mask.command("add")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.argument("macs", type=MAC, nargs=-1, required=True, metavar="MAC...")
@click.pass_obj
def mask_add(sockets: tuple[str, ...], address: tuple[int, int], macs: tuple[bytes, ...]) -> None:
    """Allow MAC on SHELF.SLOT.

    \b
    Example:  aoe ctl mask add 1.0 02:00:00:00:00:01
    """
    for m in macs:
        _send(sockets, {"op": "mask", "action": "add", "export": _name(address), "mac": m.hex()})


@mask.command("del")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.argument("macs", type=MAC, nargs=-1, required=True, metavar="MAC...")
@click.pass_obj
def mask_del(sockets: tuple[str, ...], address: tuple[int, int], macs: tuple[bytes, ...]) -> None:
    """Remove MAC from the mask list of SHELF.SLOT.

    \b
    Example:  aoe ctl mask del 1.0 02:00:00:00:00:01
    """
    for m in macs:
        _send(sockets, {"op": "mask", "action": "del", "export": _name(address), "mac": m.hex()})


@mask.command("clear")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.pass_obj
def mask_clear(sockets: tuple[str, ...], address: tuple[int, int]) -> None:
    """Empty the mask list of SHELF.SLOT (open to every initiator).

    \b
    Example:  aoe ctl mask clear 1.0
    """
    _send(sockets, {"op": "mask", "action": "clear", "export": _name(address)})


@ctl.group("reserve")
def reserve() -> None:
    """The reservation an initiator set with Reserve/Release."""


@reserve.command("clear")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.pass_obj
def reserve_clear(sockets: tuple[str, ...], address: tuple[int, int]) -> None:
    """Drop the reservation of SHELF.SLOT (e.g. after its holder died).

    \b
    Example:  aoe ctl reserve clear 1.0
    """
    _send(sockets, {"op": "reserve_clear", "export": _name(address)})


@ctl.group("config")
def config() -> None:
    """The AoE config string."""


@config.command("set")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.argument("value")
@click.pass_obj
def config_set(sockets: tuple[str, ...], address: tuple[int, int], value: str) -> None:
    """Set the config string of SHELF.SLOT (replacing any).

    \b
    Example:  aoe ctl config set 1.0 "rack 3"
    """
    _send(sockets, {"op": "config_set", "export": _name(address), "value": value})
