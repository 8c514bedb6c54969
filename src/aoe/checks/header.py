"""Conformance checks on the common header: echo rules, addressing, errors 1 and 5."""

from __future__ import annotations

import random

from ..protocol import (
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    AoeError,
    AtaOpcode,
    Command,
    ConfigBody,
    Frame,
    HeaderFlag,
    format_mac,
)
from .context import Context, Failed, aoe_error, expect_answer
from .probe import Probe, Reply

UNKNOWN_COMMAND = 0x7E  # below the vendor range 0xF0-0xFF, unassigned in r11
HEADER_CHECKS = [
    "header.echo", "header.response-ignored", "header.unknown-command", "header.bad-version",
    "address.other-target", "address.broadcast-all", "address.broadcast-shelf",
    "address.broadcast-slot",
]


def header_problems(reply: Reply, request: Frame, probe: Probe) -> list[str]:
    """Every way an answer's header differs from what r11 asks of an answer to ``request``."""
    got = reply.frame
    what = Command(request.command).name if request.command < 4 else f"cmd {request.command}"
    out = []
    if reply.decode_error:
        out.append(f"{what}: malformed answer ({reply.decode_error})")
    if got.version != 1:
        out.append(f"{what}: version {got.version}")
    if not got.is_response:
        out.append(f"{what}: R flag clear")
    if got.is_error:
        out.append(f"{what}: E flag set (error {got.error})")
    elif got.error:
        out.append(f"{what}: error byte {got.error} without the E flag")
    if got.tag != request.tag:
        out.append(f"{what}: tag 0x{got.tag:08x} != 0x{request.tag:08x}")
    if got.command != request.command:
        out.append(f"{what}: command {got.command}")
    if (got.shelf, got.slot) != (probe.shelf, probe.slot):
        out.append(f"{what}: answered as {got.shelf}.{got.slot}")
    if got.dst != request.src:
        out.append(f"{what}: sent to {format_mac(got.dst)}, not the requester")
    return out


def check_header(ctx: Context) -> None:
    p = ctx.probe
    rng = random.Random()
    with ctx.check("header.echo") as notes:
        problems: list[str] = []
        # A tag with the top bit set: all 32 bits must come back.
        cfg = p.frame(Command.QUERY_CONFIG, ConfigBody(), tag=0x80000000 | rng.getrandbits(31))
        problems += header_problems(expect_answer(p.exchange(cfg), "Query Config"), cfg, p)
        ata = p.ata_frame(AtaOpcode.IDENTIFY_DEVICE, 0, 1, tag=0xC0000000 | rng.getrandbits(30))
        problems += header_problems(expect_answer(p.exchange(ata), "IDENTIFY"), ata, p)
        if problems:
            raise Failed("; ".join(problems))
        notes.append("tag, command, shelf.slot, addresses, version, flags echoed (config, ATA)")

    with ctx.check("header.response-ignored") as notes:
        frame = p.frame(Command.QUERY_CONFIG, ConfigBody(), flags=int(HeaderFlag.RESPONSE))
        if p.silence(frame):
            raise Failed("answered a frame whose R flag was set (a response, not a request)")
        notes.append("a frame with the R flag set got no answer")

    with ctx.check("header.unknown-command") as notes:
        frame = p.frame(UNKNOWN_COMMAND, b"")
        reply = expect_answer(p.exchange(frame), f"command 0x{UNKNOWN_COMMAND:02x}")
        if aoe_error(reply) != AoeError.UNRECOGNIZED_COMMAND:
            raise Failed(f"answer has error {aoe_error(reply)}, expected 1 (unrecognized)")
        if reply.frame.command != UNKNOWN_COMMAND:
            raise Failed(f"error answer carries command {reply.frame.command}")
        notes.append(f"command 0x{UNKNOWN_COMMAND:02x} answered with error 1")

    with ctx.check("header.bad-version") as notes:
        frame = p.frame(Command.QUERY_CONFIG, ConfigBody(), version=2)
        answer = p.exchange(frame, retries=1)
        if answer is None:
            raise Failed("version 2 request dropped silently; r11 asks for error 5")
        if aoe_error(answer) != AoeError.UNSUPPORTED_VERSION:
            how = f"error {aoe_error(answer)}" if aoe_error(answer) else "no error"
            raise Failed(f"version 2 request answered with {how} (answer version "
                         f"{answer.frame.version}); expected error 5")
        notes.append("version 2 answered with error 5")

    check_addressing(ctx)


def other_address(shelf: int, slot: int) -> tuple[int, int]:
    return (shelf, slot + 1) if slot < 0xFE else (shelf, slot - 1)


def check_addressing(ctx: Context) -> None:
    p = ctx.probe
    with ctx.check("address.other-target") as notes:
        shelf, slot = other_address(p.shelf, p.slot)
        frame = p.frame(Command.QUERY_CONFIG, ConfigBody(), shelf=shelf, slot=slot)
        if p.silence(frame):
            raise Failed(f"answered a Query Config for {shelf}.{slot} sent to its MAC")
        notes.append(f"a request for {shelf}.{slot} sent to its MAC got no answer")

    variants = {
        "address.broadcast-all": (BROADCAST_SHELF, BROADCAST_SLOT),
        "address.broadcast-shelf": (BROADCAST_SHELF, p.slot),
        "address.broadcast-slot": (p.shelf, BROADCAST_SLOT),
    }
    for name, (shelf, slot) in variants.items():
        with ctx.check(name) as notes:
            frame = p.frame(Command.QUERY_CONFIG, ConfigBody(), dst=BROADCAST_MAC,
                            shelf=shelf, slot=slot)
            reply = expect_answer(p.exchange(frame), f"Query Config to {shelf}.{slot}")
            got = reply.frame
            if (got.shelf, got.slot) != (p.shelf, p.slot):
                raise Failed(f"answered as {got.shelf}.{got.slot}, not its own address")
            if got.is_error:
                raise Failed(f"answered with error {got.error}")
            notes.append(f"broadcast to {shelf}.{slot} answered as {got.shelf}.{got.slot}")
