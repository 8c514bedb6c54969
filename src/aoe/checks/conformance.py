"""A protocol conformance suite any AoE target can be put through (ours, vblade, hardware).

Each check sends real frames through a raw socket and records one result:

- ``pass``: the target did what AoE r11 (and ATA, for the register set) asks;
- ``fail``: it answered wrongly, or stayed silent where an answer is required;
- ``not-supported``: an optional feature it does not announce (LBA48, FLUSH CACHE EXT), or a
  whole command class it does not implement (it answers "unrecognized command" or never
  answers), so the checks built on it cannot run; never counted as a pass;
- ``skipped``: not run by request (``read_only``) or for want of a scratch range.

Writes go only to the scratch range the caller names, and that range's data is read first
and written back at the end; config string, MAC mask list and reservation are restored too.
``read_only`` skips every write and every state change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..protocol import AtaOpcode, ConfigBody, format_mac
from .access import MASK_ALL, RESERVE_ALL, check_mask, check_reserve
from .ata import ATA_CHECKS, WRITE_CHECKS, check_ata, check_scratch_writes
from .config import CONFIG_CHECKS, check_config
from .context import CheckFn, CheckResult, Context, Status
from .header import HEADER_CHECKS, check_header
from .probe import Probe

__all__ = [
    "AREAS",
    "CheckResult",
    "Status",
    "all_check_names",
    "failed",
    "format_markdown",
    "format_table",
    "run_conformance",
    "summary",
    "to_json",
]


AREAS = ("header", "config", "ata", "write", "reserve", "mask")


def _suites() -> list[tuple[str, CheckFn, list[str]]]:
    """(area, checks, their names), least disruptive first: the mask checks go last because
    a broken list implementation can shut the prober out or bring the target down."""
    return [
        ("header", check_header, HEADER_CHECKS),
        ("config", check_config, CONFIG_CHECKS),
        ("ata", check_ata, ATA_CHECKS),
        ("write", check_scratch_writes, WRITE_CHECKS),
        ("reserve", check_reserve, RESERVE_ALL),
        ("mask", check_mask, MASK_ALL),
    ]


def all_check_names() -> list[str]:
    """Every check id the suite can report, in run order."""
    names = ["discovery"]
    for _, _, checks in _suites():
        names += checks
    return [*names, "target.alive"]


def run_conformance(
    ifname: str,
    shelf: int,
    slot: int,
    *,
    scratch: tuple[int, int] | None = None,
    read_only: bool = False,
    timeout: float = 1.0,
    retries: int = 2,
    skip: Iterable[str] = (),
) -> list[CheckResult]:
    """Put the target ``shelf.slot`` reachable through ``ifname`` through every check.

    ``scratch`` is ``(first LBA, sector count)``: the only sectors written, restored after.
    ``timeout`` is how long to wait for each answer, and how long silence must last.
    ``skip`` names areas (see AREAS) not to run.
    """
    if scratch is not None and (scratch[0] < 0 or scratch[1] < 1):
        raise ValueError("scratch range needs a first LBA >= 0 and at least one sector")
    unknown = set(skip) - set(AREAS)
    if unknown:
        raise ValueError(f"unknown area(s) {sorted(unknown)}; areas are {', '.join(AREAS)}")
    with Probe(ifname, shelf, slot, timeout=timeout, retries=retries) as probe:
        ctx = Context(probe, read_only, scratch)
        reply = probe.discover()
        if reply is None or not isinstance(reply.frame.body, ConfigBody):
            ctx.record("discovery", Status.FAIL,
                       f"no answer from {shelf}.{slot} to a broadcast Query Config on {ifname}")
            return ctx.results
        cfg = reply.config
        ctx.config = cfg.config
        ctx.max_sectors = max(1, cfg.sector_count)
        ctx.record("discovery", Status.PASS,
                   f"{shelf}.{slot} at {format_mac(reply.frame.src)}: bufcnt={cfg.buffer_count}"
                   f" fw=0x{cfg.firmware:04x} maxsect={cfg.sector_count}"
                   f" config={cfg.config[:40]!r}")
        dead_after = ""
        for area, suite, names in _suites():
            if dead_after:
                ctx.skip(names, f"target stopped answering after the {dead_after} checks")
            elif area in skip:
                ctx.skip(names, f"area {area!r} skipped by request")
            else:
                suite(ctx)
                if not _alive(ctx):
                    dead_after = area
        if dead_after:
            ctx.record("target.alive", Status.FAIL,
                       f"no answer to Query Config or IDENTIFY after the {dead_after} checks")
        else:
            ctx.record("target.alive", Status.PASS, "answers Query Config and IDENTIFY")
        return ctx.results


def _alive(ctx: Context) -> bool:
    probe = ctx.probe
    return (probe.config() is not None
            and probe.ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1) is not None)


def summary(results: list[CheckResult]) -> dict[str, int]:
    counts = Counter(r.status.value for r in results)
    return {s.value: counts.get(s.value, 0) for s in Status}


def failed(results: list[CheckResult]) -> bool:
    return any(r.status is Status.FAIL for r in results)


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table, one line per check, then the totals."""
    width = max([len(r.check) for r in results] + [5])
    lines = [f"{'check':<{width}}  {'result':<13}  detail", f"{'-' * width}  {'-' * 13}  ------"]
    for r in results:
        lines.append(f"{r.check:<{width}}  {r.status.value:<13}  {r.detail}")
    totals = summary(results)
    lines.append("")
    lines.append(", ".join(f"{n} {name}" for name, n in totals.items()))
    return "\n".join(lines)


def format_markdown(results: list[CheckResult]) -> str:
    """The same table in Markdown, for reports in docs/."""
    lines = ["| check | result | detail |", "|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|")
        lines.append(f"| `{r.check}` | {r.status.value} | {detail} |")
    return "\n".join(lines)


def to_json(results: list[CheckResult], **meta: Any) -> str:
    return json.dumps(
        {**meta, "results": [r.to_dict() for r in results], "summary": summary(results)},
        indent=2,
    )
