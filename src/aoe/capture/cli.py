"""Capture commands: `aoe decode` (a pcap file, through the project's own codec), `aoe sniff`
(live frames on a link) and `aoe ping` (Query Config + IDENTIFY round trips).

Thin click wrappers over :mod:`aoe.capture.pcap` and :mod:`aoe.capture.sniff`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..cli_types import ADDRESS, net_errors
from ..protocol import ETHERTYPE_AOE, DecodeError, format_mac
from ..protocol import decode as decode_frame
from ..protocol.describe import describe, to_dict
from .pcap import PcapError, read_pcap


@click.command()
@click.argument("pcap", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame.")
@click.option("--all", "show_all", is_flag=True, help="Also list non-AoE frames.")
def decode(pcap: Path, as_json: bool, show_all: bool) -> None:
    """Pretty-print the AoE frames in PCAP (classic pcap, Ethernet)."""
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
@click.argument("iface")
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
def sniff(iface: str, target: tuple[int, int] | None, commands: tuple[str, ...],
          count: int | None, timeout: float | None, pcap: Path | None, as_json: bool,
          verbose: bool, no_promisc: bool) -> None:
    """Print the AoE frames crossing IFACE as they come (Ctrl-C stops)."""
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


@click.command("ping")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@click.option("-i", "--interface", "iface", required=True, help="Interface to probe through.")
@click.option("--count", "-c", type=click.IntRange(1), default=3, show_default=True,
              help="Probes to send.")
@click.option("--interval", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds between probes.")
@click.option("--timeout", "-W", type=click.FloatRange(0.01, 30), default=1.0,
              show_default=True, help="Seconds to wait for each answer.")
@click.option("--json", "as_json", is_flag=True, help="Result as JSON.")
def ping(address: tuple[int, int], iface: str, count: int, interval: float, timeout: float,
         as_json: bool) -> None:
    """Probe SHELF.SLOT with Query Config and IDENTIFY, printing round-trip times.

    Exits 1 when no probe is answered.
    """
    from .sniff import PingProbe
    from .sniff import ping as run_ping

    name = f"{address[0]}.{address[1]}"

    def show(one: PingProbe) -> None:
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

    if not as_json:
        click.echo(f"AoE ping {name} via {iface}: Query Config + IDENTIFY")
    try:
        result = run_ping(iface, *address, count=count, interval=interval, timeout=timeout,
                          on_probe=show)
    except OSError as exc:
        raise net_errors(exc, iface) from None
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if result.answered == 0:
        raise click.ClickException(
            f"no answer from {name} on {iface} after {count} probe(s): is the target running "
            "and on this link?")
