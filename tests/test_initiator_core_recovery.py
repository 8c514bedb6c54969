"""Recovery decisions of the session core, with a fake clock and hand-made answers (no
sockets): probing after a death with backoff, the IDENTIFY of a target that answers again,
resuming for the same device, refusing another, and giving up."""

from __future__ import annotations

from aoe.initiator.core import REVIVE_FIRST, REVIVE_MAX, Request
from aoe.initiator.errors import TargetDeadError
from aoe.protocol import (
    AtaBody,
    AtaOpcode,
    AtaStatus,
    Command,
    ConfigBody,
    Frame,
    IdentifyInfo,
    build_identify,
    decode,
    encode,
    response_to,
)

from .test_initiator_core import (
    DEAD,
    SLOT,
    TARGET_MACS,
    Harness,
    Sent,
    core_loops,  # noqa: F401 - both kinds of loop
)

SERIAL = "SAME-DEVICE-0001"


def dead_harness(give_up: float | None = None) -> tuple[Harness, Request]:
    """A core whose target went silent with a read outstanding, until declared dead."""
    h = Harness()
    h.core.give_up = give_up
    h.core.identity = (SERIAL, 64)
    req, _ = h.read(0, 2)
    h.sent()
    t0 = h.now
    dead = None
    while dead is None:
        h.now += 0.25
        probes, dead = h.core.on_timer(h.now)
        h.drain()
    assert h.now - t0 >= DEAD
    assert isinstance(dead, TargetDeadError) and h.core.dead is dead
    h.core.fail_all()
    return h, req


def config_answer(h: Harness, probe: bytes) -> bytes:
    frame = decode(probe)
    assert frame.command == Command.QUERY_CONFIG
    return encode(response_to(frame, TARGET_MACS[0], ConfigBody(buffer_count=16, firmware=1,
                                                                 sector_count=2)), pad=True)


def identify_answer(h: Harness, sent: Sent, serial: str, sectors: int) -> bytes:
    req = sent.frame
    assert isinstance(req.body, AtaBody) and req.body.cmd_status == AtaOpcode.IDENTIFY_DEVICE
    page = build_identify(IdentifyInfo(sectors=sectors, serial=serial))
    ans = AtaBody(req.body.aflags, 0, 1, int(AtaStatus.DRDY), 0, page)
    return encode(response_to(req, TARGET_MACS[sent.path], ans), pad=True)


def probes_until(h: Harness, seconds: float) -> list[float]:
    """Times (relative to now) at which on_timer sent probes, over ``seconds``."""
    t0, times = h.now, []
    while h.now - t0 < seconds:
        h.now += 0.05
        probes, dead = h.core.on_timer(h.now)
        assert dead is None
        if probes:
            times.append(round(h.now - t0, 2))
    return times


def test_after_a_death_probes_back_off_up_to_a_few_seconds() -> None:
    h, _ = dead_harness()
    times = probes_until(h, 20.0)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert times[0] <= REVIVE_FIRST + 0.06
    assert gaps == sorted(gaps) and max(gaps) <= REVIVE_MAX + 0.06
    assert max(gaps) >= REVIVE_MAX - 0.06  # reached the ceiling, and kept probing


def _answer_probe_then_identify(h: Harness, serial: str, sectors: int) -> None:
    probes = []
    while not probes:
        h.now += 0.05
        probes, _ = h.core.on_timer(h.now)
    h.deliver([config_answer(h, probes[0][1])])
    [ident] = h.sent()  # the core IDENTIFYs the device before trusting it
    h.deliver([identify_answer(h, ident, serial, sectors)])
    for req in h.core.take_completed():
        req.finish()


def test_the_same_device_brings_io_back() -> None:
    h, _ = dead_harness()
    _answer_probe_then_identify(h, SERIAL, 64)
    assert h.core.dead is None and h.core.revivals == 1
    req, buf = h.read(4, 2)
    sent = h.sent()
    h.answer(sent)
    assert h.core.take_completed() == [req] and req.error is None


def test_another_device_is_refused_and_probing_goes_on() -> None:
    h, _ = dead_harness()
    _answer_probe_then_identify(h, "ANOTHER-DEVICE", 64)
    assert h.core.dead is not None and h.core.revivals == 0
    assert probes_until(h, 5.0)  # still probing
    _answer_probe_then_identify(h, SERIAL, 32)  # same serial, other size: still another
    assert h.core.dead is not None
    _answer_probe_then_identify(h, SERIAL, 64)
    assert h.core.dead is None


def test_give_up_ends_probing_with_an_error() -> None:
    h, _ = dead_harness(give_up=3.0)
    t0 = h.now
    dead = None
    while dead is None:
        h.now += 0.1
        _, dead = h.core.on_timer(h.now)
    assert h.now - t0 >= 3.0 and "did not come back" in str(dead)
    assert dead is not h.core.dead  # a new error: the session is to end


def test_give_up_zero_ends_at_the_death() -> None:
    h = Harness()
    h.core.give_up = 0.0
    h.read(0, 2)
    h.sent()
    dead = None
    while dead is None:
        h.now += 0.25
        _, dead = h.core.on_timer(h.now)
    assert h.core.dead is None  # nothing to probe for: the caller ends the session


def test_probe_frames_are_directed_query_config() -> None:
    h, _ = dead_harness()
    probes = []
    while not probes:
        h.now += 0.05
        probes, _ = h.core.on_timer(h.now)
    frame = decode(probes[0][1])
    assert isinstance(frame, Frame) and frame.dst == TARGET_MACS[0] and frame.slot == SLOT
