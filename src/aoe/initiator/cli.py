"""`aoe discover`, `aoe info`, `aoe copy`: thin click wrappers over the initiator library.

Every failure the user can act on arrives as an InitiatorError (or a bad argument) and is
printed as one line, never as a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

import click

from ..cli_types import (
    SIZE_HELP,
    AddressType,
    SizeType,
    address_or_fail,
    iface_option,
    looks_like_address,
)
from ..net.link import LinkError
from ..protocol import format_mac
from ..stopsignals import Interrupted, exit_on_signal, raise_on_stop_signals
from .copy import (
    CopyResult,
    VerifyError,
    check_range,
    copy_from_disk,
    copy_to_disk,
    pending_output,
)
from .discovery import LIST_SETTLE, TargetInfo
from .discovery import discover as discover_targets
from .disk import AoeDisk
from .errors import InitiatorError, OwnerUnsettledError

F = TypeVar("F", bound=Callable[..., Any])

def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _json(value: object, indent: int) -> str:
    """JSON text for --json; json is imported only by the commands that print it."""
    import json

    return json.dumps(value, indent=indent)


def _iface_options(fn: F) -> F:
    fn = iface_option()(fn)
    fn = click.option(
        "--timeout",
        type=click.FloatRange(0.01, 60),
        default=1.0,
        show_default=True,
        help="Seconds to wait for Query Config answers (discovery).",
    )(fn)
    return fn


def _session_options(fn: F) -> F:
    fn = click.option(
        "--give-up",
        type=click.FloatRange(0),
        default=0.0,
        show_default=True,
        help="Seconds after the target was declared dead that the session still probes "
             "for it (0: it ends at once).",
    )(fn)
    fn = click.option(
        "--dead-time",
        type=click.FloatRange(0.1, 3600),
        default=10.0,
        show_default=True,
        help="Seconds without any answer before the target is declared dead.",
    )(fn)
    return fn


@contextmanager
def _friendly_errors() -> Iterator[None]:
    """Turn the errors a user can act on into one-line messages (exit status 1)."""
    try:
        yield
    except (InitiatorError, LinkError, VerifyError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise click.ClickException(f"{exc.strerror or exc}{where}") from None


# --- discover -------------------------------------------------------------------------
def _paths_text(info: TargetInfo) -> str:
    return ", ".join(f"{p.ifname}>{format_mac(p.target_mac)}" for p in info.paths)


def _table(targets: list[TargetInfo]) -> str:
    head = ("TARGET", "SIZE", "MODEL", "SERIAL", "FIRMWARE", "BUFS", "MAXSECT", "AOE",
            "CONFIG", "PATHS (iface>target mac)")
    rows = [head]
    for t in targets:
        size = human_size(t.size) if t.size is not None else f"? ({t.identify_error})"
        rows.append((
            t.address,
            size,
            t.model or "-",
            t.serial or "-",
            f"{t.firmware or '-'} (0x{t.firmware_version:04x})",
            str(t.buffer_count),
            str(t.max_sectors),
            str(t.aoe_version),
            repr(t.config.decode("utf-8", "replace")),
            _paths_text(t),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    return "\n".join(lines)


@click.command()
@click.argument("target", type=AddressType(), required=False)
@_iface_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of targets).")
def discover(
    target: tuple[int, int] | None, ifaces: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Find AoE targets (all, or only TARGET as SHELF.SLOT) and IDENTIFY each one.

    Listening ends 0.3 s after the last new answer (the query is repeated meanwhile, for a
    target that missed it), or after --timeout when nothing answers.

    Exits 1 when none answered (with --json too, after printing an empty list).

    \b
    Example:  aoe discover -i eth0
              aoe discover 1.0 --json
    """
    with _friendly_errors():
        found = discover_targets(ifaces or None, target, timeout,
                                 settle=min(timeout, LIST_SETTLE))
    if as_json:
        click.echo(_json([t.as_dict() for t in found], indent=2))
    if not found:  # an error in either form (the JSON form has printed its empty list)
        which = f"target {target[0]}.{target[1]}" if target else "AoE target"
        raise click.ClickException(
            f"no {which} answered within {timeout:g} s (if one runs, its access list may "
            "exclude this host)"
        )
    if not as_json:
        click.echo(_table(found))
    for t in found:
        if t.conflict:
            click.echo(f"warning: {t.conflict}", err=True)


# --- info ---------------------------------------------------------------------------------
def _disk_details(disk: AoeDisk) -> dict[str, Any]:
    """What discovery learnt, plus the session's view of each path (window, RTT, RTO)."""
    out = disk.info.as_dict()
    out["lba48_in_use"] = disk.lba48
    live = disk.session.path_states()
    out["paths"] = [dict(found, **now) for found, now in zip(out["paths"], live, strict=True)]
    return out


@click.command()
@click.argument("target", type=AddressType())
@_iface_options
@_session_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(
    target: tuple[int, int],
    ifaces: tuple[str, ...],
    timeout: float,
    dead_time: float,
    give_up: float,
    as_json: bool,
) -> None:
    """Show what an AoE target (SHELF.SLOT) reports and how it is reached.

    \b
    Example:  aoe info 1.0 -i eth0
    """
    with _friendly_errors():
        with AoeDisk.open(*target, ifaces or None, timeout=timeout,
                          dead_timeout=dead_time, give_up=give_up) as disk:
            details = _disk_details(disk)
    if as_json:
        click.echo(_json(details, indent=2))
        return
    lines = [
        f"target:        {details['address']}",
        f"size:          {details['size']} bytes ({human_size(details['size'])}), "
        f"{details['sectors']} sectors",
        f"model:         {details['model']}",
        f"serial:        {details['serial']}",
        f"firmware:      {details['firmware']} (AoE firmware 0x{details['firmware_version']:04x})",
        f"aoe version:   {details['aoe_version']}",
        f"config:        {details['config']!r}",
        f"buffer count:  {details['buffer_count']}",
        f"max sectors:   {details['max_sectors']} per command",
        f"lba48:         {'yes' if details['lba48'] else 'no'}"
        f" ({'in use' if details['lba48_in_use'] else 'not used'})",
        f"flush:         {_flush_text(details)}",
    ]
    for p in details["paths"]:
        lines.append(
            f"path:          {p['ifname']} ({p['local_mac']}, MTU {p['mtu']}) -> "
            f"{p['target_mac']}: {p['frame_sectors']} sectors/frame, "
            f"{p['buffer_count']} buffers, rtt {p['rtt'] * 1e3:.3f} ms"
        )
    click.echo("\n".join(lines))


def _flush_text(details: dict[str, Any]) -> str:
    kinds = [name for key, name in (("flush_cache_ext", "FLUSH CACHE EXT"),
                                    ("flush_cache", "FLUSH CACHE")) if details[key]]
    return ", ".join(kinds) or "not supported (no write cache)"


# --- copy -------------------------------------------------------------------------------------
class _ProgressBar:
    """One status line on stderr: done/total, percent, rate, ETA; at most 10 updates/s."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 else 0.0
        width = 30
        fill = int(width * pct / 100)
        sys.stderr.write(
            f"\r[{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}%  {human_size(done)} / "
            f"{human_size(total)}  {rate / 1e6:7.1f} MB/s  ETA {int(eta) // 60}:"
            f"{int(eta) % 60:02d} "
        )
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _as_address(text: str, hint: str) -> tuple[int, int] | None:
    """SHELF.SLOT, or None for a file name; N.N out of range is an error about the range."""
    if not looks_like_address(text):
        return None
    return address_or_fail(text, hint)


def _summary(result: CopyResult) -> str:
    parts = [
        f"copied {human_size(result.nbytes)} in {result.seconds:.2f} s "
        f"({result.rate / 1e6:.1f} MB/s)"
    ]
    if result.holes:
        parts.append(f"{human_size(result.holes)} left as holes")
    if result.verified:
        parts.append(f"verified (SHA-256 {result.sha256})")
    return ", ".join(parts)


@click.command()
@click.argument("source")
@click.argument("dest")
@_iface_options
@_session_options
@click.option("--offset", type=SizeType(), default=0, show_default=True,
              help=f"Byte offset on the disk ({SIZE_HELP}).")
@click.option("--length", type=SizeType(), default=None,
              help=f"Bytes to copy ({SIZE_HELP}). Default: to the end of the disk (or of "
                   "the input file).")
@click.option("--verify", is_flag=True, help="Re-read the destination and compare SHA-256.")
@click.option("--sparse/--no-sparse", default=True, show_default=True,
              help="Leave holes in the output file where the disk reads zeros.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr. Default: only when stderr is a terminal.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout (bytes, seconds, rate, holes, sha256, "
                   "and the session's counters: frames sent, retransmits, ...).")
def copy(
    source: str,
    dest: str,
    ifaces: tuple[str, ...],
    timeout: float,
    dead_time: float,
    give_up: float,
    offset: int,
    length: int | None,
    verify: bool,
    sparse: bool,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Copy an AoE disk to a file (aoe copy SHELF.SLOT FILE) or a file onto one
    (aoe copy FILE SHELF.SLOT). FILE may be - for stdout/stdin; write ./1.2 for a file
    whose name looks like an address.

    SIGINT (Ctrl-C) or SIGTERM stops the copy at once, says how much was copied and exits
    with 130 (143 for SIGTERM).

    \b
    Example:  aoe copy 1.0 backup.img -i eth0 --verify
              aoe copy backup.img 1.0 -i eth0
              aoe copy 1.0 - --offset 1M --length 64K | hexdump -C
    """
    src_addr, dst_addr = _as_address(source, "SOURCE"), _as_address(dest, "DEST")
    if (src_addr is None) == (dst_addr is None):
        raise click.UsageError("exactly one of SOURCE and DEST must be a SHELF.SLOT address")
    if as_json and dest == "-":
        raise click.UsageError("--json prints on stdout: it cannot go with - as DEST")
    show = sys.stderr.isatty() if progress is None else progress
    bar = _ProgressBar() if show else None
    moved = _Moved(bar)
    address = src_addr or dst_addr
    assert address is not None
    try:
        with raise_on_stop_signals(), _friendly_errors():
            result = _copy(src_addr, source, dest, address, ifaces, timeout, dead_time,
                           give_up, offset, length, verify, sparse, moved)
    except Interrupted as stop:
        if bar is not None:
            bar.finish()
        exit_on_signal(stop.signum, moved.what(source, dest, src_addr is not None))
    if as_json:
        click.echo(_json(dict(_summary_dict(result), source=source, dest=dest), indent=2))
    else:
        click.echo(_summary(result), err=True)


class _Moved:
    """Bytes moved so far (for the line an interrupted copy prints); drives the bar too."""

    def __init__(self, bar: _ProgressBar | None) -> None:
        self.bar = bar
        self.done = 0
        self.total: int | None = None

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.bar is not None:
            self.bar(done, total)

    def what(self, source: str, dest: str, from_disk: bool) -> str:
        if self.total is None:
            return f"before any data was copied; {dest} was not changed" if from_disk \
                else f"before any data was written to {dest}"
        whole = f"after {human_size(self.done)} of {human_size(self.total)}"
        if not from_disk:
            return f"{whole}; only part of {source} is on disk {dest}"
        return f"{whole}; {'the output' if dest == '-' else dest} is incomplete"


def _copy(src_addr: tuple[int, int] | None, source: str, dest: str, address: tuple[int, int],
          ifaces: tuple[str, ...], timeout: float, dead_time: float, give_up: float,
          offset: int, length: int | None, verify: bool, sparse: bool, moved: _Moved) -> CopyResult:
    def open_disk(defer: bool = False) -> AoeDisk:
        return AoeDisk.open(*address, ifaces or None, timeout=timeout, dead_timeout=dead_time,
                            give_up=give_up, defer_owner_check=defer)

    try:
        if src_addr is not None:
            return _copy_out(open_disk, dest, offset, length, verify, sparse, moved)
        with open_disk() as disk, _input(source) as src:
            result = copy_to_disk(disk, src, offset, length, verify=verify, progress=moved)
            result.session = disk.stats().as_dict()
            return result
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--offset/--length") from None
    finally:
        if moved.bar is not None:
            moved.bar.finish()


def _copy_out(open_disk: Callable[[bool], AoeDisk], dest: str, offset: int,
              length: int | None, verify: bool, sparse: bool, moved: _Moved) -> CopyResult:
    """Disk to file. The first reads go out while discovery still listens for a second
    target claiming the address (the owner check, deferred); the output is emptied and
    written only once none did. If one more MAC answered, the disk is opened again the
    usual way, which tells another path from another disk."""
    with _output(dest) as (out, start):
        for defer in (True, False):
            with open_disk(defer) as disk:
                total = check_range(disk.size, offset, length)
                moved(0, total)

                def ready(disk: AoeDisk = disk) -> None:
                    disk.confirm_owner()
                    start()

                try:
                    result = copy_from_disk(disk, out, offset, length, sparse=sparse,
                                            verify=verify, progress=moved, before_output=ready)
                except OwnerUnsettledError:
                    if not defer:
                        raise
                    continue
                result.session = disk.stats().as_dict()
                return result
    raise AssertionError("unreachable: the second open does not defer")


@contextmanager
def _output(name: str) -> Iterator[tuple[BinaryIO, Callable[[], None]]]:
    if name == "-":
        yield sys.stdout.buffer, lambda: None
        return
    with pending_output(name) as opened:
        yield opened


def _summary_dict(result: CopyResult) -> dict[str, Any]:
    return {"bytes": result.nbytes, "seconds": round(result.seconds, 6),
            "rate_bytes_per_second": round(result.rate), "holes": result.holes,
            "verified": result.verified, "sha256": result.sha256, "session": result.session}


@contextmanager
def _input(name: str) -> Iterator[BinaryIO]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as f:
        yield f
