"""Capture commands: `aoe decode` (a pcap file, through the project's own codec), `aoe sniff`
(live frames on a link) and `aoe ping` (Query Config + IDENTIFY round trips).

Thin click wrappers over :mod:`aoe.capture.pcap` and :mod:`aoe.capture.sniff`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..cli_types import ADDRESS, deprecated_form, iface_option, net_errors, one_iface
from ..protocol import ETHERTYPE_AOE, DecodeError, format_mac
from ..protocol import decode as decode_frame
from ..protocol.describe import describe, to_dict
from .pcap import PcapError, read_pcap


@click.command()
@click.argument("pcap", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame.")
@click.option("--all", "show_all", is_flag=True, help="Also list non-AoE frames.")
def decode(pcap: Path, as_json: bool, show_all: bool) -> None:
    """Pretty-print the AoE frames in PCAP (classic pcap, Ethernet).

    \b
    Example:  aoe decode capture.pcap --json
    """
    try:
        records = list(read_pcap(pcap))
    except PcapError as exc:
        raise click.ClickException(str(exc)) from None
    for number, (stamp, raw) in enumerate(records, 1):
        if len(raw) < 14 or int.from_bytes(raw[12:14], "big") != ETHERTYPE_AOE:
            if show_all:
                click.echo(f"{number:5d} {stamp:.6f} (not AoE, {len(raw)} bytes)")
            continue
        try:
            frame = decode_frame(raw)
        except DecodeError as exc:
            if as_json:
                click.echo(json.dumps({"n": number, "time": stamp, "malformed": str(exc)}))
            else:
                click.echo(f"{number:5d} {stamp:.6f} MALFORMED {exc}")
            continue
        if as_json:
            click.echo(json.dumps({"n": number, "time": stamp, **to_dict(frame)}))
        else:
            click.echo(f"{number:5d} {stamp:.6f} {describe(frame)}")


@click.command("sniff")
@click.argument("old_iface", required=False, metavar="")
@iface_option("Interface to listen on. Default: the one Ethernet interface that is up.")
@click.option("--target", "target", type=ADDRESS, default=None, metavar="SHELF.SLOT",
              help="Only frames for this target (broadcasts reaching it included).")
@click.option("--command", "commands", multiple=True,
              type=click.Choice(["ata", "config", "mask", "reserve"]),
              help="Only this AoE command (repeatable).")
@click.option("--count", "-c", type=click.IntRange(1), default=None,
              help="Stop after this many frames.")
@click.option("--timeout", type=click.FloatRange(0.01), default=None,
              help="Stop after this many seconds.")
@click.option("--pcap", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the frames to this pcap file (as they come).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame.")
@click.option("-v", "--verbose", is_flag=True, help="Add scapy's field-by-field dissection.")
@click.option("--no-promisc", is_flag=True, help="Do not put the interface in promiscuous mode.")
def sniff(old_iface: str | None, ifaces: tuple[str, ...], target: tuple[int, int] | None,
          commands: tuple[str, ...], count: int | None, timeout: float | None,
          pcap: Path | None, as_json: bool, verbose: bool, no_promisc: bool) -> None:
    """Print the AoE frames crossing an interface as they come (Ctrl-C stops).

    \b
    Example:  aoe sniff -i eth0 --target 1.0 --pcap aoe.pcap
    """
    if old_iface is not None:
        deprecated_form("aoe sniff IFACE", "aoe sniff -i IFACE")
        ifaces = (old_iface, *ifaces)
    iface = _listen_iface(ifaces)
    from .sniff import Captured, dissect, parse_commands
    from .sniff import sniff as run_sniff

    def show(cap: Captured) -> None:
        if as_json:
            click.echo(json.dumps(cap.to_dict()))
        else:
            click.echo(cap.line())
            if verbose:
                click.echo(dissect(cap.raw))
        sys.stdout.flush()

    def ready() -> None:
        click.echo(f"listening on {iface} for AoE frames", err=True)
        sys.stderr.flush()

    try:
        got = run_sniff(iface, target=target,
                        commands=parse_commands(commands) if commands else None,
                        count=count, timeout=timeout, promiscuous=not no_promisc, pcap=pcap,
                        on_frame=show, on_ready=ready)
    except OSError as exc:
        raise net_errors(exc, iface) from None
    click.echo(f"{len(got)} frames captured" + (f", written to {pcap}" if pcap else ""),
               err=True)


def _listen_iface(ifaces: tuple[str, ...]) -> str:
    if len(ifaces) > 1:
        raise click.UsageError("sniff listens on one interface: give -i once")
    if ifaces:
        return ifaces[0]
    from ..net.link import default_interfaces

    up = default_interfaces()
    if len(up) != 1:
        raise click.UsageError(
            "name the interface to listen on with -i IFACE "
            f"({'none is up' if not up else 'up: ' + ', '.join(up)})")
    return up[0]


@click.command("ping")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@iface_option("Interface to probe through (repeatable: the first where SHELF.SLOT "
              "answers is used). Default: every Ethernet interface that is up.")
@click.option("--interface", "old_iface", hidden=True, default=None,
              help="Old spelling of --iface.")
@click.option("--count", "-c", type=click.IntRange(1), default=3, show_default=True,
              help="Probes to send.")
@click.option("--interval", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds between probes.")
@click.option("--timeout", "-W", type=click.FloatRange(0.01, 30), default=1.0,
              show_default=True, help="Seconds to wait for each answer.")
@click.option("--json", "as_json", is_flag=True, help="Result as JSON.")
def ping(address: tuple[int, int], ifaces: tuple[str, ...], old_iface: str | None,
         count: int, interval: float, timeout: float, as_json: bool) -> None:
    """Probe SHELF.SLOT with Query Config and IDENTIFY, printing round-trip times.

    \b
    Example:  aoe ping 1.0 -i eth0 -c 5

    Exits 1 when no probe is answered. SIGINT (Ctrl-C) or SIGTERM stops it; the summary
    is printed and the exit status is 130 (143 for SIGTERM).
    """
    from ..stopsignals import Interrupted, raise_on_stop_signals, verb
    from .sniff import PingProbe, PingResult
    from .sniff import ping as run_ping

    if old_iface is not None:
        deprecated_form("aoe ping --interface IFACE", "aoe ping -i IFACE")
        ifaces = (old_iface, *ifaces)
    name = f"{address[0]}.{address[1]}"
    probes: list[PingProbe] = []

    def show(one: PingProbe) -> None:
        probes.append(one)
        if as_json:
            return
        if one.config_rtt is None:
            click.echo(f"{name}: seq={one.seq} no answer within {timeout:g} s")
            return
        mac = format_mac(one.mac) if one.mac else "?"
        ident = f"{one.identify_rtt * 1e3:.3f} ms" if one.identify_rtt is not None else "-"
        note = f" ({one.note})" if one.note else ""
        click.echo(f"{name} from {mac}: seq={one.seq} config {one.config_rtt * 1e3:.3f} ms, "
                   f"identify {ident}{note}")
        sys.stdout.flush()

    stopped: Interrupted | None = None
    iface = "?"
    try:
        with raise_on_stop_signals():
            iface = one_iface(ifaces, address, timeout)
            if not as_json:
                click.echo(f"AoE ping {name} via {iface}: Query Config + IDENTIFY")
            try:
                result = run_ping(iface, *address, count=count, interval=interval,
                                  timeout=timeout, on_probe=show)
            except OSError as exc:
                raise net_errors(exc, iface) from None
    except Interrupted as stop:
        stopped = stop
        result = PingResult(name, iface)
        result.probes.extend(probes)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if stopped is not None:
        click.echo(f"{verb(stopped.signum)} after {len(probes)} probe(s)", err=True)
        sys.exit(stopped.exit_code)
    if result.answered == 0:
        raise click.ClickException(
            f"no answer from {name} on {iface} after {count} probe(s): is the target running "
            "and on this link?")
