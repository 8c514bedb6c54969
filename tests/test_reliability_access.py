"""Access control against hostile initiators, and that it holds across a target restart.

One `aoe serve` process, two cables: a "friend" host and a "stranger" host. Exports:

- 1.0, guarded by a MAC mask list naming only the friend: the stranger gets no answer to
  anything (Query Config, IDENTIFY, reads, writes, list edits, reservations, broadcast),
  and nothing it sends changes a byte or the list;
- 2.1, read-only: every ATA opcode with every combination of the W, E, D and async flags,
  with data attached, unicast and broadcast, LBA28 and LBA48, never changes a byte;
- 1.2, reserved by the friend: the stranger still reads, but its writes get AoE error 6.

Then the target is killed (SIGKILL) and started again: all of it still holds.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from aoe.initiator import AoeDisk, NoTargetError, TargetReadOnlyError, TargetReservedError
from aoe.lab import Lab
from aoe.protocol import (
    BROADCAST_MAC,
    AoeError,
    Command,
    ConfigBody,
    ConfigCommand,
    Directive,
    DirectiveCommand,
    MaskBody,
    MaskCommand,
    ReserveBody,
    ReserveCommand,
    encode,
)
from aoe.protocol.frames import ATA_ARGS, HEADER

from .support.reliability import (
    MIB,
    ExportDef,
    Served,
    figure,
    open_disk,
    serve,
    sha256_of,
    write_random,
)
from .support.target import AOE_BIN, Client, Reply

pytestmark = pytest.mark.netns

SIZE = 4 * MIB
FLAG_SETS = [w | e | d | a for w in (0, 0x01) for e in (0, 0x40) for d in (0, 0x10)
             for a in (0, 0x02)]


def ata_frames(client: Client, dst: bytes, shelf: int, slot: int, rng: random.Random,
               sectors: int) -> list[bytes]:
    """Every ATA opcode with every flag combination, two sectors of data attached, an LBA
    that is valid in both readings (28 and 48 bits) and counts 0 to 3."""
    out = []
    for opcode in range(256):
        for aflags in FLAG_SETS:
            lba = rng.randrange(sectors - 4)
            if not aflags & 0x40:
                lba |= 0xE0 << 24  # LBA28: mode bits in the top byte
            count = rng.choice([0, 1, 2, 2, 3])
            head = HEADER.pack(dst, client.mac, 0x88A2, 0x10, 0, shelf, slot, Command.ATA,
                               client.next_tag())
            args = ATA_ARGS.pack(aflags, rng.randrange(256), count, opcode, lba & 0xFFFFFFFF,
                                 lba >> 32)
            out.append(head + args + rng.randbytes(1024))
    return out


def control_frames(client: Client, dst: bytes, shelf: int, slot: int) -> list[bytes]:
    """Everything else a hostile initiator might try: config set/force, adding itself to
    the mask list, reserving the target for itself."""
    frames = [
        client.config(dst, shelf, slot),
        client.config(dst, shelf, slot, ConfigCommand.SET, b"taken"),
        client.config(dst, shelf, slot, ConfigCommand.FORCE_SET, b"taken"),
        client.frame(dst, shelf, slot, Command.MAC_MASK_LIST, MaskBody(MaskCommand.READ)),
        client.frame(dst, shelf, slot, Command.MAC_MASK_LIST, MaskBody(
            MaskCommand.EDIT, 0, [Directive(DirectiveCommand.ADD, client.mac)])),
        client.frame(dst, shelf, slot, Command.RESERVE_RELEASE,
                     ReserveBody(ReserveCommand.SET, [client.mac])),
        client.frame(dst, shelf, slot, Command.RESERVE_RELEASE,
                     ReserveBody(ReserveCommand.FORCE_SET, [client.mac])),
    ]
    return [encode(f) for f in frames]


def blast(client: Client, frames: list[bytes]) -> list[Reply]:
    """Send every frame; every answer to one of them that came back."""
    replies: list[Reply] = []
    for i, f in enumerate(frames):
        client.send(f)
        if i % 64 == 63:
            replies += client.gather(None, 0.005, None)
    replies += client.gather(None, 0.5, None)
    tags = {f[20:24] for f in frames}
    return [r for r in replies if r.raw[20:24] in tags]  # not announcements or old answers


def mac_of(cable_mac: str) -> bytes:
    return bytes.fromhex(cable_mac.replace(":", ""))


class Rig:
    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.target = lab.host("target")
        self.friend = lab.host("friend")
        self.stranger = lab.host("stranger")
        self.to_friend = lab.cable(self.target, self.friend)
        self.to_stranger = lab.cable(self.target, self.stranger)
        self.images = {}
        for name, seed in (("guarded", 1), ("ro", 2), ("reserved", 3)):
            path = tmp_path / f"{name}.img"
            write_random(path, SIZE, seed)
            self.images[name] = path
        self.served: Served = serve(lab, self.target, tmp_path, ["eth0", "eth1"], [
            ExportDef("1.0", self.images["guarded"]),
            ExportDef("2.1", self.images["ro"], read_only=True),
            ExportDef("1.2", self.images["reserved"]),
        ])
        self.friend_c = Client(self.friend)
        self.stranger_c = Client(self.stranger)
        self.mac_f = mac_of(self.to_friend.a_mac)  # the target, as each host sees it
        self.mac_s = mac_of(self.to_stranger.a_mac)

    def close(self) -> None:
        self.friend_c.close()
        self.stranger_c.close()

    def sums(self) -> dict[str, str]:
        return {n: sha256_of(p) for n, p in self.images.items()}


def check_stranger_locked_out(rig: Rig, rng: random.Random) -> int:
    """The stranger gets nothing from 1.0 and cannot write 2.1 or 1.2, whatever it sends
    and however it addresses it; returns the number of frames sent."""
    c, mac = rig.stranger_c, rig.mac_s
    before = rig.sums()
    frames = []
    for dst, shelf, slot in ((mac, 1, 0), (mac, 1, 0xFF), (BROADCAST_MAC, 0xFFFF, 0xFF),
                             (BROADCAST_MAC, 1, 0)):
        frames += ata_frames(c, dst, shelf, slot, rng, SIZE // 512)[::4]
    for dst in (mac, BROADCAST_MAC):
        frames += control_frames(c, dst, 1, 0)
    replies = blast(c, frames)
    from_guarded = [r for r in replies if (r.frame.shelf, r.frame.slot) == (1, 0)]
    assert from_guarded == [], "the masked export answered a stranger"
    assert replies  # the other two exports did answer (errors, reads)
    # Writes to the reserved export, and an attempt to take the reservation: error 6.
    writes = [f for f in ata_frames(c, mac, 1, 2, rng, SIZE // 512)
              if f[24] & 0x01 and f[27] in (0x30, 0x34) and 0 < f[26] <= 2
              and not (f[27] == 0x34 and not f[24] & 0x40)]  # (that LBA is out of range)
    writes.append(encode(c.frame(mac, 1, 2, Command.RESERVE_RELEASE,
                                 ReserveBody(ReserveCommand.SET, [c.mac]))))
    answers = blast(c, writes)
    assert len(answers) == len(writes)
    assert {(r.frame.is_error, r.frame.error) for r in answers} == {
        (True, AoeError.TARGET_RESERVED)}
    assert rig.sums() == before
    with pytest.raises(NoTargetError), rig.stranger.enter():
        AoeDisk.open(1, 0, ["eth0"], timeout=0.5)
    return len(frames) + len(writes)


def check_read_only(rig: Rig, rng: random.Random) -> int:
    """Every write attempt at 2.1, from the friend, changes nothing."""
    c, mac = rig.friend_c, rig.mac_f
    before = sha256_of(rig.images["ro"])
    frames = []
    for dst, shelf, slot in ((mac, 2, 1), (mac, 2, 0xFF), (BROADCAST_MAC, 0xFFFF, 1),
                             (BROADCAST_MAC, 2, 1)):
        frames += ata_frames(c, dst, shelf, slot, rng, SIZE // 512)
    replies = blast(c, frames)
    assert replies and all((r.frame.shelf, r.frame.slot) == (2, 1) for r in replies)
    assert sha256_of(rig.images["ro"]) == before
    with open_disk(rig.friend, 2, 1, ["eth0"]) as disk:
        assert disk.read(0, 4096) == rig.images["ro"].read_bytes()[:4096]
        with pytest.raises(TargetReadOnlyError):
            disk.write(0, b"x" * 4096)
    source = rig.images["ro"].with_suffix(".src")
    source.write_bytes(b"y" * MIB)
    done = rig.friend.run([AOE_BIN, "copy", str(source), "2.1", "-i", "eth0",
                           "--no-progress"], check=False, timeout=60)
    assert done.returncode == 1 and "read-only" in done.stderr, done.stderr
    assert sha256_of(rig.images["ro"]) == before
    return len(frames) + 1


def reserve(client: Client, dst: bytes, rcmd: int, macs: list[bytes]) -> Reply:
    reply = client.request(client.frame(dst, 1, 2, Command.RESERVE_RELEASE,
                                        ReserveBody(rcmd, macs)))
    assert reply is not None
    return reply


def set_up_guards(rig: Rig) -> None:
    """The friend puts itself on 1.0's mask list and reserves 1.2."""
    f, mac = rig.friend_c, rig.mac_f
    edit = f.request(f.frame(mac, 1, 0, Command.MAC_MASK_LIST, MaskBody(
        MaskCommand.EDIT, 0, [Directive(DirectiveCommand.ADD, f.mac)])))
    assert edit is not None and not edit.frame.is_error
    assert not reserve(f, mac, ReserveCommand.SET, [f.mac]).frame.is_error


def check_guards(rig: Rig, rng: random.Random) -> None:
    """The lists are exactly what the friend set, and the friend can still use both."""
    f, mac = rig.friend_c, rig.mac_f
    masks = f.request(f.frame(mac, 1, 0, Command.MAC_MASK_LIST, MaskBody(MaskCommand.READ)))
    assert masks is not None
    assert [d.mac for d in masks.frame.body.directives] == [f.mac]  # type: ignore[union-attr]
    held = reserve(f, mac, ReserveCommand.READ, [])
    assert held.frame.body.macs == [f.mac]  # type: ignore[union-attr]
    cfg = f.request(f.config(mac, 1, 0))
    assert cfg is not None and isinstance(cfg.frame.body, ConfigBody)
    assert cfg.frame.body.config == b""  # the stranger's set and force-set never landed
    for shelf, slot, name in ((1, 0, "guarded"), (1, 2, "reserved")):
        data = rng.randbytes(8192)
        with open_disk(rig.friend, shelf, slot, ["eth0"]) as disk:
            disk.write(MIB, data)
            assert disk.read(MIB, 8192) == data
        with open(rig.images[name], "rb") as img:
            img.seek(MIB)
            assert img.read(8192) == data


def test_access_control_holds_against_hostile_initiators_and_across_restart(
        lab: Lab, tmp_path: Path) -> None:
    rig = Rig(lab, tmp_path)
    rng = random.Random(77)
    try:
        set_up_guards(rig)
        sent = check_stranger_locked_out(rig, rng)
        sent += check_read_only(rig, rng)
        check_guards(rig, rng)
        # A reserved target: the real initiator sees it clearly, reads still work.
        with open_disk(rig.stranger, 1, 2, ["eth0"]) as disk:
            assert disk.read(0, 4096) == rig.images["reserved"].read_bytes()[:4096]
            with pytest.raises(TargetReservedError, match="reserved by another initiator"):
                disk.write(0, b"z" * 4096)
        # Kill the target outright and start it again: the state was already on disk.
        rig.served.kill9()
        rig.served.start()
        sent_after = check_stranger_locked_out(rig, rng)
        sent_after += check_read_only(rig, rng)
        check_guards(rig, rng)
    finally:
        rig.close()
    rig.served.stop()
    digest = hashlib.sha256(rig.images["ro"].read_bytes()).hexdigest()[:12]
    figure(f"access: {sent} hostile or read-only-write frames before and {sent_after} after "
           f"a SIGKILL restart: no answer from the masked export, read-only image "
           f"unchanged (sha256 {digest}...), reserved export answered error 6")
