"""Conformance checks on access control: the MAC Mask List and Reserve/Release.

A second initiator is played by sending frames with a forged, locally administered source
MAC from the same raw socket (the probe listens promiscuously, so the answers sent to that
MAC are seen too). Both lists are read first and restored at the end; a target reserved by
somebody else is left alone.
"""

from __future__ import annotations

import random

from ..protocol import (
    AoeError,
    AtaOpcode,
    AtaStatus,
    Command,
    ConfigBody,
    Directive,
    DirectiveCommand,
    MaskBody,
    MaskCommand,
    MaskError,
    ReserveBody,
    ReserveCommand,
    format_mac,
)
from .context import Context, Failed, Status, Unsupported, aoe_error, expect_answer
from .probe import Probe, Reply

MASK_CHECKS = ["mask.bad-mcmd", "mask.add", "mask.bad-directive", "mask.acl", "mask.delete",
               "mask.restore"]
MASK_STATE = MASK_CHECKS[1:]
RESERVE_CHECKS = ["reserve.bad-rcmd", "reserve.set", "reserve.other-set", "reserve.other-write",
                  "reserve.owner-write", "reserve.force-set", "reserve.release",
                  "reserve.restore"]
RESERVE_STATE = RESERVE_CHECKS[1:]
MASK_ALL = ["mask.read", *MASK_CHECKS]
RESERVE_ALL = ["reserve.read", *RESERVE_CHECKS]


def forged_macs(probe: Probe, count: int) -> list[bytes]:
    """Locally administered unicast MACs, none of them ours or the target's."""
    rng = random.Random()
    out: list[bytes] = []
    while len(out) < count:
        mac = bytes([0x02, 0xA0]) + rng.randbytes(4)
        if mac not in (probe.mac, probe.target_mac) and mac not in out:
            out.append(mac)
    return out


def _unsupported_if_absent(reply: Reply | None, what: str) -> Reply:
    if reply is None:
        raise Unsupported(f"no answer to a {what} read")
    if aoe_error(reply) == AoeError.UNRECOGNIZED_COMMAND:
        raise Unsupported(f"{what} answered with error 1 (unrecognized command)")
    if aoe_error(reply):
        raise Failed(f"{what} read answered with error {aoe_error(reply)}")
    return reply


def _macs(macs: list[bytes]) -> str:
    return "[" + ",".join(format_mac(m) for m in macs) + "]"


# --- MAC Mask List --------------------------------------------------------------------
def mask(probe: Probe, mcmd: int, directives: list[Directive], *,
         src: bytes | None = None) -> Reply | None:
    frame = probe.frame(Command.MAC_MASK_LIST, MaskBody(mcmd, 0, directives), src=src)
    return probe.exchange(frame)


def mask_macs(reply: Reply) -> list[bytes]:
    if not isinstance(reply.frame.body, MaskBody):
        raise Failed(f"MAC Mask List answer without a list ({reply.decode_error or 'raw'})")
    return [d.mac for d in reply.frame.body.directives]


def read_mask(ctx: Context) -> list[bytes]:
    return mask_macs(ctx.expect(mask(ctx.probe, MaskCommand.READ, []), "mask list read"))


def check_mask(ctx: Context) -> None:
    p = ctx.probe
    original: list[bytes] = []
    with ctx.check("mask.read") as notes:
        reply = _unsupported_if_absent(mask(p, MaskCommand.READ, []), "MAC Mask List")
        original = mask_macs(reply)
        ctx.mask_supported = True
        notes.append(f"{len(original)} entries " + _macs(original))
    if not ctx.mask_supported:
        for name in MASK_CHECKS:
            ctx.record(name, Status.NOT_SUPPORTED, "MAC Mask List not supported (mask.read)")
        return
    with ctx.check("mask.bad-mcmd") as notes:
        reply = expect_answer(mask(p, 7, []), "mcmd 7")
        if aoe_error(reply) != AoeError.BAD_ARGUMENT:
            raise Failed(f"mcmd 7 answered with error {aoe_error(reply)}, expected 2")
        notes.append("mcmd 7 answered with error 2")
    if ctx.read_only:
        ctx.skip(MASK_STATE, "read-only run")
        return
    forged = forged_macs(p, 2)
    try:
        _check_mask_edits(ctx, original, forged)
    finally:
        with ctx.check("mask.restore") as notes:
            restore_mask(ctx, original, forged)
            now = read_mask(ctx)
            if sorted(now) != sorted(original):
                raise Failed("mask list differs from the original: "
                             + ",".join(format_mac(m) for m in now))
            notes.append(f"original list of {len(original)} entries restored")


def _check_mask_edits(ctx: Context, original: list[bytes], forged: list[bytes]) -> None:
    p = ctx.probe
    one, two = forged
    with ctx.check("mask.add") as notes:
        # Our own MAC goes in first: a list without it would shut us out.
        adds = [Directive(DirectiveCommand.ADD, p.mac), Directive(DirectiveCommand.ADD, one)]
        reply = ctx.expect(mask(p, MaskCommand.EDIT, adds), "mask edit add")
        if aoe_error(reply) or _merror(reply):
            raise Failed(f"add answered with error {aoe_error(reply)} merror {_merror(reply)}")
        listed = read_mask(ctx)
        if not {p.mac, one} <= set(listed):
            raise Failed("added MACs missing from the list " + _macs(listed))
        notes.append("list now " + _macs(listed))
    with ctx.check("mask.bad-directive") as notes:
        before = read_mask(ctx)
        reply = ctx.expect(mask(p, MaskCommand.EDIT, [Directive(7, two)]), "dcmd 7")
        if _merror(reply) != MaskError.BAD_DIRECTIVE:
            raise Failed(f"dcmd 7 answered with merror {_merror(reply)} (AoE error "
                         f"{aoe_error(reply)}), expected merror 2")
        if read_mask(ctx) != before:
            raise Failed("a bad directive changed the list")
        notes.append("dcmd 7 answered with merror 2, list unchanged")
    with ctx.check("mask.acl") as notes:
        listed = read_mask(ctx)
        if not listed or two in listed:
            raise Failed("needs a non-empty list without the outsider (see mask.add)")
        if p.silence(p.frame(Command.QUERY_CONFIG, ConfigBody(), src=two)):
            raise Failed(f"answered {format_mac(two)}, which the list {_macs(listed)} excludes")
        for member in (one, p.mac):
            frame = p.frame(Command.QUERY_CONFIG, ConfigBody(), src=member)
            ctx.expect(p.exchange(frame), f"Query Config from listed {format_mac(member)}")
        notes.append("unlisted MAC ignored, listed MACs answered")
    with ctx.check("mask.delete") as notes:
        ctx.expect(mask(p, MaskCommand.EDIT, [Directive(DirectiveCommand.DELETE, one)]),
                   "mask edit delete")
        listed = read_mask(ctx)
        if one in listed:
            raise Failed(f"deleted {format_mac(one)} still in the list {_macs(listed)}")
        notes.append("list now " + _macs(listed))


def _merror(reply: Reply) -> int:
    body = reply.frame.body
    return body.merror if isinstance(body, MaskBody) else -1


def restore_mask(ctx: Context, original: list[bytes], forged: list[bytes]) -> None:
    """Put the original list back, speaking as every MAC we used in case it shuts us out.

    Rounds repeat because some targets delete only one matching entry per directive.
    """
    p = ctx.probe
    extra = [m for m in [*forged, p.mac] if m not in original]
    directives = [Directive(DirectiveCommand.DELETE, m) for m in extra]
    directives += [Directive(DirectiveCommand.ADD, m) for m in original]
    for _ in range(3):
        for src in [p.mac, *forged]:
            frame = p.frame(Command.MAC_MASK_LIST, MaskBody(MaskCommand.EDIT, 0, directives),
                            src=src)
            p.exchange(frame, retries=0)
        reply = mask(p, MaskCommand.READ, [])
        if reply is not None and sorted(mask_macs(reply)) == sorted(original):
            return
        if reply is None and p.config(retries=0) is None and p.config(src=forged[0]) is None:
            return  # nobody gets answers any more: the target is gone


# --- Reserve/Release ------------------------------------------------------------------
def reserve(probe: Probe, rcmd: int, macs: list[bytes], *,
            src: bytes | None = None) -> Reply | None:
    frame = probe.frame(Command.RESERVE_RELEASE, ReserveBody(rcmd, macs), src=src)
    return probe.exchange(frame)


def reserve_macs(reply: Reply) -> list[bytes]:
    if not isinstance(reply.frame.body, ReserveBody):
        raise Failed(f"Reserve/Release answer without a list ({reply.decode_error or 'raw'})")
    return reply.frame.body.macs


def read_reserve(ctx: Context) -> list[bytes]:
    return reserve_macs(expect_answer(reserve(ctx.probe, ReserveCommand.READ, []), "reserve read"))


def check_reserve(ctx: Context) -> None:
    p = ctx.probe
    original: list[bytes] = []
    with ctx.check("reserve.read") as notes:
        reply = _unsupported_if_absent(reserve(p, ReserveCommand.READ, []), "Reserve/Release")
        original = reserve_macs(reply)
        ctx.reserve_supported = True
        notes.append(f"{len(original)} MACs " + _macs(original))
    if not ctx.reserve_supported:
        for name in RESERVE_CHECKS:
            ctx.record(name, Status.NOT_SUPPORTED, "Reserve/Release not supported (reserve.read)")
        return
    with ctx.check("reserve.bad-rcmd") as notes:
        # The current list goes along: a target taking rcmd 9 for a set changes nothing.
        reply = expect_answer(reserve(p, 9, original), "rcmd 9")
        if aoe_error(reply) != AoeError.BAD_ARGUMENT:
            raise Failed(f"rcmd 9 answered with error {aoe_error(reply)}, expected 2")
        notes.append("rcmd 9 answered with error 2")
    if ctx.read_only:
        ctx.skip(RESERVE_STATE, "read-only run")
        return
    if original and p.mac not in original:
        ctx.skip(RESERVE_STATE, "target reserved by other initiators: left alone")
        return
    other = forged_macs(p, 1)[0]
    try:
        _check_reservation(ctx, other)
    finally:
        with ctx.check("reserve.restore") as notes:
            reserve(p, ReserveCommand.FORCE_SET, original)
            if read_reserve(ctx) != original:
                raise Failed("reservation differs from the original after restoring it")
            notes.append(f"original reservation of {len(original)} MACs restored")


def _check_reservation(ctx: Context, other: bytes) -> None:
    p = ctx.probe
    with ctx.check("reserve.set") as notes:
        reply = expect_answer(reserve(p, ReserveCommand.SET, [p.mac]), "reserve set")
        if aoe_error(reply):
            raise Failed(f"set answered with error {aoe_error(reply)}")
        if read_reserve(ctx) != [p.mac]:
            raise Failed("reservation read back is not [our MAC]")
        notes.append(f"reserved for {format_mac(p.mac)}")
    reserved = ctx.status_of("reserve.set") is Status.PASS
    with ctx.check("reserve.other-set") as notes:
        if not reserved:
            raise Failed("needs reserve.set")
        reply = expect_answer(reserve(p, ReserveCommand.SET, [other], src=other),
                              "set from another MAC")
        if aoe_error(reply) != AoeError.TARGET_RESERVED:
            raise Failed(f"set from {format_mac(other)} answered with error "
                         f"{aoe_error(reply)}, expected 6")
        if read_reserve(ctx) != [p.mac]:
            raise Failed("refused set changed the reservation")
        notes.append("error 6, reservation unchanged")
    _check_reserved_io(ctx, other, reserved)
    with ctx.check("reserve.force-set") as notes:
        reply = expect_answer(reserve(p, ReserveCommand.FORCE_SET, [other], src=other),
                              "force set from another MAC")
        if aoe_error(reply) or read_reserve(ctx) != [other]:
            raise Failed(f"force set from {format_mac(other)} did not take the reservation")
        notes.append(f"{format_mac(other)} took the reservation by force")
    with ctx.check("reserve.release") as notes:
        reply = expect_answer(reserve(p, ReserveCommand.SET, [], src=other), "release")
        if aoe_error(reply) or read_reserve(ctx) != []:
            raise Failed("the holder's set to an empty list did not release")
        notes.append("empty set by the holder released the target")


def _check_reserved_io(ctx: Context, other: bytes, reserved: bool) -> None:
    p = ctx.probe
    names = ["reserve.other-write", "reserve.owner-write"]
    if not ctx.scratch_ok:
        ctx.skip(names, "needs a scratch range (writes its original data back)")
        return
    lba = ctx.scratch[0] if ctx.scratch else 0
    sector = ctx.scratch_data[:512]
    with ctx.check("reserve.other-write") as notes:
        if not reserved:
            raise Failed("needs reserve.set")
        frame = p.ata_frame(AtaOpcode.WRITE_SECTORS_EXT, lba, 1, data=sector, write=True,
                            src=other)
        reply = expect_answer(p.exchange(frame), "write from another MAC")
        if aoe_error(reply) != AoeError.TARGET_RESERVED:
            raise Failed(f"write from {format_mac(other)} answered with AoE error "
                         f"{aoe_error(reply)}, expected 6")
        read = p.exchange(p.ata_frame(AtaOpcode.READ_SECTORS_EXT, lba, 1, src=other))
        notes.append("error 6; a read from that MAC got "
                     + ("no answer" if read is None else
                        f"error {aoe_error(read)}" if aoe_error(read) else "its data"))
    with ctx.check("reserve.owner-write") as notes:
        reply = expect_answer(p.ata(AtaOpcode.WRITE_SECTORS_EXT, lba, 1, data=sector,
                                    write=True), "write by the holder")
        if aoe_error(reply) or reply.ata.cmd_status & AtaStatus.ERR:
            raise Failed(f"the holder's write failed (AoE error {aoe_error(reply)})")
        notes.append("the holder writes while reserved")
