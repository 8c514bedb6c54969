"""`aoe decode`: pretty-print the AoE frames of a pcap file with the project's own codec."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .pcap import PcapError, read_pcap
from .protocol import DecodeError
from .protocol import decode as decode_frame
from .protocol.describe import describe, to_dict


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
        if len(raw) < 14 or raw[12:14] != b"\x88\xa2":
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
