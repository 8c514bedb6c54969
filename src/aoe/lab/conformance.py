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

import enum
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ..protocol import ConfigBody, IdentifyInfo, format_mac
from .conformance_probe import Probe, Reply


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_SUPPORTED = "not-supported"
    SKIPPED = "skipped"


@dataclass(slots=True)
class CheckResult:
    """One check: a dotted id (area.name), its status and a one-line detail."""

    check: str
    status: Status
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        out = asdict(self)
        out["status"] = self.status.value
        return out


class Unsupported(Exception):
    """Raised inside a check: the target lacks the feature (message says how we know)."""


class Failed(Exception):
    """Raised inside a check: the target misbehaved (message says how)."""


@dataclass
class Context:
    """What the checks share: the probe, what was learned about the target, the results."""

    probe: Probe
    read_only: bool
    scratch: tuple[int, int] | None
    results: list[CheckResult] = field(default_factory=list)
    config: bytes = b""
    max_sectors: int = 1
    identify: IdentifyInfo | None = None
    mask_supported: bool | None = None
    reserve_supported: bool | None = None
    scratch_data: bytes = b""
    scratch_ok: bool = False

    @property
    def capacity(self) -> int:
        return self.identify.sectors if self.identify else 0

    def record(self, check: str, status: Status, detail: str = "") -> None:
        self.results.append(CheckResult(check, status, detail))

    def status_of(self, check: str) -> Status | None:
        for result in self.results:
            if result.check == check:
                return result.status
        return None

    @contextmanager
    def check(self, name: str) -> Iterator[list[str]]:
        """Run a check body; it appends details to the yielded list and raises Failed or
        Unsupported to end early. Reaching the end is a pass."""
        notes: list[str] = []
        try:
            yield notes
        except Failed as exc:
            self.record(name, Status.FAIL, str(exc))
        except Unsupported as exc:
            self.record(name, Status.NOT_SUPPORTED, str(exc))
        except (OSError, ValueError, TypeError) as exc:
            self.record(name, Status.FAIL, f"{type(exc).__name__}: {exc}")
        else:
            self.record(name, Status.PASS, "; ".join(notes))

    def expect(self, reply: Reply | None, what: str) -> Reply:
        """Like expect_answer, but says whether the target still answers anything at all."""
        if reply is None:
            if self.probe.config(retries=0) is None:
                raise Failed(f"no answer to {what}, and none to Query Config since: "
                             "the target stopped answering (crashed or shut us out)")
            raise Failed(f"no answer to {what}")
        return reply

    def skip(self, names: list[str], why: str) -> None:
        for name in names:
            self.record(name, Status.SKIPPED, why)


def expect_answer(reply: Reply | None, what: str) -> Reply:
    if reply is None:
        raise Failed(f"no answer to {what}")
    return reply


def aoe_error(reply: Reply) -> int:
    """The AoE error code of an answer, 0 when its Error flag is clear."""
    return reply.frame.error if reply.frame.is_error else 0


CheckFn = Callable[[Context], None]
AREAS = ("header", "config", "ata", "write", "reserve", "mask")


def _suites() -> list[tuple[str, CheckFn, list[str]]]:
    """(area, checks, their names), least disruptive first: the mask checks go last because
    a broken list implementation can shut the prober out or bring the target down."""
    from .conformance_access import MASK_ALL, RESERVE_ALL, check_mask, check_reserve
    from .conformance_ata import ATA_CHECKS, WRITE_CHECKS, check_ata, check_scratch_writes
    from .conformance_config import CONFIG_CHECKS, check_config
    from .conformance_header import HEADER_CHECKS, check_header

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
    from ..protocol import AtaOpcode

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
