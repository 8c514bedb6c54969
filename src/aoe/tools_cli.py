"""Protocol-testing commands: `aoe conformance`, `aoe fuzz`, `aoe sniff`, `aoe ping`.

Thin click wrappers: the work is done by :func:`aoe.lab.conformance.run_conformance`,
:func:`aoe.lab.fuzz.run_fuzz`, :func:`aoe.sniff.sniff` and :func:`aoe.sniff.ping`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_types import (
    ADDRESS,
    deprecated_form,
    iface_option,
    old_iface_first,
    one_iface,
)
from .net.rawsock import InterfaceError


def _scratch(lba: int | None, sectors: int | None) -> tuple[int, int] | None:
    if lba is None and sectors is None:
        return None
    if lba is None or sectors is None:
        raise click.UsageError("--scratch-lba and --scratch-sectors go together")
    return lba, sectors


def _net_errors(exc: OSError, ifname: str) -> click.ClickException:
    if isinstance(exc, InterfaceError):
        return click.ClickException(str(exc))
    if isinstance(exc, PermissionError):
        return click.ClickException("raw sockets need root (CAP_NET_RAW)")
    return click.ClickException(f"{ifname}: {exc}")


_scratch_options = [
    click.option("--scratch-lba", type=click.IntRange(0), default=None,
                 help="First sector the run may write (its data is restored afterwards)."),
    click.option("--scratch-sectors", type=click.IntRange(1), default=None,
                 help="How many sectors from --scratch-lba may be written."),
]


def scratch_options(fn: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_scratch_options):
        fn = option(fn)
    return fn


@click.command("conformance")
@click.argument("first", metavar="SHELF.SLOT")
@click.argument("second", required=False, metavar="")
@iface_option("Interface to test through (repeatable: the first where SHELF.SLOT answers "
              "is used). Default: every Ethernet interface that is up.")
@scratch_options
@click.option("--read-only", is_flag=True, help="Skip every write and every state change.")
@click.option("--timeout", type=click.FloatRange(0.01, 30), default=1.0, show_default=True,
              help="Seconds to wait for each answer (and to prove silence).")
@click.option("--skip", "skip", multiple=True,
              type=click.Choice(["header", "config", "ata", "write", "reserve", "mask"]),
              help="Leave out an area of checks (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Results as JSON.")
@click.option("--markdown", is_flag=True, help="Results as a Markdown table.")
def conformance(first: str, second: str | None, ifaces: tuple[str, ...],
                scratch_lba: int | None, scratch_sectors: int | None, read_only: bool,
                timeout: float, skip: tuple[str, ...], as_json: bool, markdown: bool) -> None:
    """Check that target SHELF.SLOT speaks AoE r11 correctly.

    \b
    Example:  aoe conformance 1.0 -i eth0 --scratch-lba 2048 --scratch-sectors 64

    Writes happen only inside the scratch range, whose data is restored; without one the
    write checks are skipped. Config string, mask list and reservation are changed during
    the run and restored. Exits 1 if any check fails.
    """
    from .lab.conformance import failed, format_markdown, format_table, run_conformance, to_json

    address, ifaces = old_iface_first(first, second, ifaces, "conformance")
    scratch = _scratch(scratch_lba, scratch_sectors)
    iface = one_iface(ifaces, address, timeout)
    try:
        results = run_conformance(iface, *address, scratch=scratch, read_only=read_only,
                                  timeout=timeout, skip=skip)
    except OSError as exc:
        raise _net_errors(exc, iface) from None
    if as_json:
        click.echo(to_json(results, target=f"{address[0]}.{address[1]}", interface=iface,
                           read_only=read_only, scratch=list(scratch) if scratch else None))
    elif markdown:
        click.echo(format_markdown(results))
    else:
        click.echo(format_table(results))
    if failed(results):
        sys.exit(1)


@click.command("fuzz")
@click.argument("first", metavar="SHELF.SLOT")
@click.argument("second", required=False, metavar="")
@iface_option("Interface to send through (repeatable: the first where SHELF.SLOT answers "
              "is used). Default: every Ethernet interface that is up.")
@click.option("--count", "-n", type=click.IntRange(0), default=10000, show_default=True,
              help="Frames to send.")
@click.option("--duration", type=click.FloatRange(0.1), default=None,
              help="Stop after this many seconds even if --count is not reached.")
@click.option("--seed", type=int, default=None, help="Random seed (printed; reruns repeat).")
@scratch_options
@click.option("--rate", type=click.FloatRange(1), default=None,
              help="Frames per second at most (default: as fast as possible).")
@click.option("--timeout", type=click.FloatRange(0.01, 30), default=1.0, show_default=True,
              help="Seconds to wait for each answer before and after the run.")
@click.option("--json", "as_json", is_flag=True, help="Report as JSON.")
def fuzz(first: str, second: str | None, ifaces: tuple[str, ...], count: int,
         duration: float | None, seed: int | None, scratch_lba: int | None,
         scratch_sectors: int | None, rate: float | None, timeout: float,
         as_json: bool) -> None:
    """Send generated and mutated frames at SHELF.SLOT, then check it survived.

    \b
    Example:  aoe fuzz 1.0 -i eth0 --count 50000 --seed 7

    Frames that could write go only to the scratch range; without one they are redirected
    to an address nobody answers. Data outside the scratch range is checksummed before and
    after. Exits 1 if the target died, data changed or state could not be restored.
    """
    from .lab.fuzz import FuzzError, run_fuzz

    address, ifaces = old_iface_first(first, second, ifaces, "fuzz")
    iface = one_iface(ifaces, address, timeout)
    try:
        report = run_fuzz(iface, *address, count=count, duration=duration, seed=seed,
                          scratch=_scratch(scratch_lba, scratch_sectors), rate=rate,
                          timeout=timeout)
    except FuzzError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise _net_errors(exc, iface) from None
    click.echo(report.to_json() if as_json else report.format())
    if not report.ok:
        sys.exit(1)


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
        raise _net_errors(exc, iface) from None
    click.echo(f"{len(got)} frames captured" + (f", written to {pcap}" if pcap else ""),
               err=True)


def _listen_iface(ifaces: tuple[str, ...]) -> str:
    if len(ifaces) > 1:
        raise click.UsageError("sniff listens on one interface: give -i once")
    if ifaces:
        return ifaces[0]
    from .initiator.ports import default_interfaces

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
    from .sniff import PingProbe, PingResult
    from .sniff import ping as run_ping
    from .stopsignals import Interrupted, raise_on_stop_signals, verb

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
        mac = one.mac.hex(":") if one.mac else "?"
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
                raise _net_errors(exc, iface) from None
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
