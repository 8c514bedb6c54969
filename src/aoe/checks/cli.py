"""Protocol-testing commands: `aoe conformance` and `aoe fuzz`.

Thin click wrappers: the work is done by :func:`aoe.checks.conformance.run_conformance` and
:func:`aoe.checks.fuzz.run_fuzz`.
"""

from __future__ import annotations

import sys

import click

from ..cli_types import ADDRESS, net_errors


def _scratch(lba: int | None, sectors: int | None) -> tuple[int, int] | None:
    if lba is None and sectors is None:
        return None
    if lba is None or sectors is None:
        raise click.UsageError("--scratch-lba and --scratch-sectors go together")
    return lba, sectors


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
@click.argument("iface")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
@scratch_options
@click.option("--read-only", is_flag=True, help="Skip every write and every state change.")
@click.option("--timeout", type=click.FloatRange(0.01, 30), default=1.0, show_default=True,
              help="Seconds to wait for each answer (and to prove silence).")
@click.option("--skip", "skip", multiple=True,
              type=click.Choice(["header", "config", "ata", "write", "reserve", "mask"]),
              help="Leave out an area of checks (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Results as JSON.")
@click.option("--markdown", is_flag=True, help="Results as a Markdown table.")
def conformance(iface: str, address: tuple[int, int], scratch_lba: int | None,
                scratch_sectors: int | None, read_only: bool, timeout: float,
                skip: tuple[str, ...], as_json: bool, markdown: bool) -> None:
    """Check that target SHELF.SLOT on IFACE speaks AoE r11 correctly.

    Writes happen only inside the scratch range, whose data is restored; without one the
    write checks are skipped. Config string, mask list and reservation are changed during
    the run and restored. Exits 1 if any check fails.
    """
    from .conformance import failed, format_markdown, format_table, run_conformance, to_json

    scratch = _scratch(scratch_lba, scratch_sectors)
    try:
        results = run_conformance(iface, *address, scratch=scratch, read_only=read_only,
                                  timeout=timeout, skip=skip)
    except OSError as exc:
        raise net_errors(exc, iface) from None
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
@click.argument("iface")
@click.argument("address", type=ADDRESS, metavar="SHELF.SLOT")
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
def fuzz(iface: str, address: tuple[int, int], count: int, duration: float | None,
         seed: int | None, scratch_lba: int | None, scratch_sectors: int | None,
         rate: float | None, timeout: float, as_json: bool) -> None:
    """Send generated and mutated frames at SHELF.SLOT, then check it survived.

    Frames that could write go only to the scratch range; without one they are redirected
    to an address nobody answers. Data outside the scratch range is checksummed before and
    after. Exits 1 if the target died, data changed or state could not be restored.
    """
    from .fuzz import FuzzError, run_fuzz

    try:
        report = run_fuzz(iface, *address, count=count, duration=duration, seed=seed,
                          scratch=_scratch(scratch_lba, scratch_sectors), rate=rate,
                          timeout=timeout)
    except FuzzError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise net_errors(exc, iface) from None
    click.echo(report.to_json() if as_json else report.format())
    if not report.ok:
        sys.exit(1)
