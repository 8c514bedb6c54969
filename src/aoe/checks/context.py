"""What every conformance check shares: the context, its results, and how a check fails.

Kept apart from the runner so the check modules and the runner do not import each other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..protocol import IdentifyInfo
from .probe import Probe, Reply


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
