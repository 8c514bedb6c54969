"""The request engine without sockets: frame in, frames out, for every path it can take."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from aoe.protocol import (
    BROADCAST_MAC,
    AtaBody,
    AtaErrorBits,
    AtaFlag,
    AtaOpcode,
    AtaStatus,
    Command,
    ConfigBody,
    ConfigCommand,
    Directive,
    DirectiveCommand,
    Frame,
    HeaderFlag,
    MaskBody,
    MaskCommand,
    ReserveBody,
    ReserveCommand,
    decode,
    encode,
    parse_identify,
)
from aoe.protocol.errors import AoeError
from aoe.target import Counters, Engine, ExportSpec, Store, StoreError
from aoe.target.engine import SMART_DATA_PAGE

TARGET = bytes.fromhex("020000000001")
INIT = bytes.fromhex("020000000002")
OTHER = bytes.fromhex("020000000003")
SECTORS = 2048  # 1 MiB image


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes((i * 13) & 0xFF for i in range(SECTORS * 512)))
    return p


@pytest.fixture
def export(image: Path, tmp_path: Path) -> Store:
    e = Store.open(ExportSpec(1, 2, str(image)), tmp_path / "state")
    yield e
    e.close()


@pytest.fixture(params=["python", "compiled"])
def engine(export: Store, request: pytest.FixtureRequest) -> Engine:
    """Each test once per burst path: the Python reference and the compiled one."""
    e = Engine([export], TARGET, 1500)
    use_burst_path(e, request.param)
    return e


def use_burst_path(engine: Engine, path: str) -> None:
    if path == "python":
        engine._compiled = None
    elif not engine.accelerated:
        pytest.skip("the compiled burst path was not built")


def ata(opcode: int, lba: int = 0, count: int = 0, data: bytes = b"", *, ext: bool = True,
        write: bool | None = None, feature: int = 0, src: bytes = INIT, tag: int = 5,
        shelf: int = 1, slot: int = 2, dst: bytes = TARGET) -> bytes:
    if write is None:
        write = bool(data)
    aflags = (AtaFlag.EXTENDED if ext else 0) | (AtaFlag.WRITE if write else 0)
    body = AtaBody(int(aflags), feature, count, opcode, lba, data)
    return encode(Frame(dst, src, shelf, slot, Command.ATA, tag, body))


def cmd(command: int, body: object, *, src: bytes = INIT, tag: int = 9, shelf: int = 1,
        slot: int = 2, dst: bytes = TARGET) -> bytes:
    return encode(Frame(dst, src, shelf, slot, command, tag, body))  # type: ignore[arg-type]


def one(engine: Engine, frame: bytes) -> Frame:
    out = engine.handle(frame)
    assert len(out) == 1, out
    assert len(out[0]) >= 60  # every frame the target sends is padded
    f = decode(out[0])
    assert f.is_response and f.dst == INIT or f.dst in (OTHER, BROADCAST_MAC)
    assert f.src == TARGET
    return f


def ata_status(f: Frame) -> tuple[int, int]:
    assert isinstance(f.body, AtaBody)
    return f.body.cmd_status, f.body.err_feature


# --- the data path ------------------------------------------------------------------
def test_read_lba48_and_lba28(engine: Engine, image: Path) -> None:
    content = image.read_bytes()
    for ext in (True, False):
        op = AtaOpcode.READ_SECTORS_EXT if ext else AtaOpcode.READ_SECTORS
        lba = 100 if ext else (100 | 0xE0 << 24)  # LBA28 carries the device bits in byte 3
        f = one(engine, ata(op, lba, 2, ext=ext))
        assert not f.is_error and ata_status(f) == (AtaStatus.DRDY, 0)
        assert bytes(f.body.data) == content[100 * 512 : 102 * 512]  # type: ignore[union-attr]
        assert f.tag == 5 and (f.shelf, f.slot) == (1, 2)
    assert engine.counters.reads == 2 and engine.counters.bytes_read == 2048


def test_write_reaches_the_file_before_the_answer(engine: Engine, image: Path) -> None:
    data = os.urandom(1024)
    f = one(engine, ata(AtaOpcode.WRITE_SECTORS_EXT, 7, 2, data))
    assert ata_status(f) == (AtaStatus.DRDY, 0) and not f.body.data  # type: ignore[union-attr]
    assert image.read_bytes()[7 * 512 : 9 * 512] == data
    assert engine.counters.writes == 1 and engine.counters.bytes_written == 1024


def test_zero_sector_read_is_empty_success(engine: Engine) -> None:
    f = one(engine, ata(AtaOpcode.READ_SECTORS_EXT, 0, 0))
    assert ata_status(f) == (AtaStatus.DRDY, 0) and not f.body.data  # type: ignore[union-attr]


@pytest.mark.parametrize("lba,count", [(SECTORS - 1, 2), (SECTORS, 1), ((1 << 48) - 1, 1)])
def test_out_of_range_is_idnf(engine: Engine, lba: int, count: int, image: Path) -> None:
    before = image.read_bytes()
    for op, data in ((AtaOpcode.READ_SECTORS_EXT, b""),
                     (AtaOpcode.WRITE_SECTORS_EXT, b"\x55" * 512 * count)):
        f = one(engine, ata(op, lba, count, data))
        status, err = ata_status(f)
        assert status & AtaStatus.ERR and err & AtaErrorBits.IDNF
    assert image.read_bytes() == before
    assert engine.counters.errors["ata_out_of_range"] == 2


def test_lba28_ignores_high_bits(engine: Engine, image: Path) -> None:
    # Without the E flag only 28 bits count: 0xF000_0000 | 3 addresses sector 3.
    f = one(engine, ata(AtaOpcode.READ_SECTORS, 0xF0000003, 1, ext=False))
    assert bytes(f.body.data) == image.read_bytes()[3 * 512 : 4 * 512]  # type: ignore[union-attr]


def test_too_many_sectors_is_bad_argument(engine: Engine) -> None:
    for frame in (ata(AtaOpcode.READ_SECTORS_EXT, 0, 3),
                  ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 3, b"\0" * 1536)):
        f = one(engine, frame)
        assert f.is_error and f.error == AoeError.BAD_ARGUMENT
    assert engine.counters.errors["aoe_bad_argument"] == 2


def test_jumbo_mtu_allows_seventeen_sectors(export: Store) -> None:
    eng = Engine([export], TARGET, 9000)
    f = one(eng, ata(AtaOpcode.READ_SECTORS_EXT, 0, 17))
    assert len(f.body.data) == 17 * 512  # type: ignore[union-attr]
    f = one(eng, ata(AtaOpcode.READ_SECTORS_EXT, 0, 18))
    assert f.error == AoeError.BAD_ARGUMENT


def test_write_flag_must_match_opcode(engine: Engine, image: Path) -> None:
    before = image.read_bytes()
    f = one(engine, ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 1, write=False))
    assert ata_status(f) == (AtaStatus.DRDY | AtaStatus.ERR, AtaErrorBits.ABRT)
    f = one(engine, ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, b"\0" * 512, write=True))
    assert ata_status(f)[1] == AtaErrorBits.ABRT
    assert image.read_bytes() == before


def test_write_missing_its_data_is_dropped_and_counted(engine: Engine, image: Path) -> None:
    full = ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 2, b"\x11" * 1024)
    assert engine.handle(full[:-100]) == []
    assert engine.counters.errors["decode"] == 1
    assert image.read_bytes()[:1024] != b"\x11" * 1024


def test_read_only_export_refuses_writes(image: Path, tmp_path: Path) -> None:
    with Store.open(ExportSpec(1, 2, str(image), read_only=True), tmp_path / "s") as e:
        eng = Engine([e], TARGET, 1500)
        before = image.read_bytes()
        f = one(eng, ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 1, b"\xff" * 512))
        assert ata_status(f) == (AtaStatus.DRDY | AtaStatus.ERR, AtaErrorBits.ABRT)
        assert image.read_bytes() == before
        assert eng.counters.errors["ata_read_only"] == 1
        f = one(eng, ata(AtaOpcode.READ_SECTORS_EXT, 0, 1))  # reads still work
        assert bytes(f.body.data) == before[:512]  # type: ignore[union-attr]
        f = one(eng, ata(AtaOpcode.FLUSH_CACHE_EXT))
        assert ata_status(f) == (AtaStatus.DRDY, 0)


def test_short_read_from_the_store_is_an_ata_error(engine: Engine, image: Path) -> None:
    os.truncate(image, 100 * 512)  # the file shrank under the target
    f = one(engine, ata(AtaOpcode.READ_SECTORS_EXT, 500, 1))
    status, err = ata_status(f)
    assert status & AtaStatus.ERR and err & AtaErrorBits.UNC
    assert engine.counters.errors["ata_io"] == 1


def test_slice_bounds_protect_the_rest_of_the_store(image: Path, tmp_path: Path) -> None:
    spec = ExportSpec(1, 2, str(image), offset=512 * 1000, length=512 * 10)
    content = image.read_bytes()
    with Store.open(spec, None) as e:
        assert e.sectors == 10
        eng = Engine([e], TARGET, 1500)
        f = one(eng, ata(AtaOpcode.READ_SECTORS_EXT, 8, 2))
        assert bytes(f.body.data) == content[1008 * 512 : 1010 * 512]  # type: ignore[union-attr]
        f = one(eng, ata(AtaOpcode.WRITE_SECTORS_EXT, 9, 2, b"\x01" * 1024))
        assert ata_status(f)[0] & AtaStatus.ERR
        f = one(eng, ata(AtaOpcode.WRITE_SECTORS_EXT, 9, 1, b"\x02" * 512))
        assert ata_status(f) == (AtaStatus.DRDY, 0)
    after = image.read_bytes()
    assert after[1009 * 512 : 1010 * 512] == b"\x02" * 512
    assert after[: 1009 * 512] == content[: 1009 * 512]
    assert after[1010 * 512 :] == content[1010 * 512 :]


# --- other ATA commands -------------------------------------------------------------
def test_identify_page(engine: Engine, export: Store) -> None:
    f = one(engine, ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1, ext=False))
    info = parse_identify(bytes(f.body.data))  # type: ignore[union-attr]
    assert info.sectors == SECTORS and info.lba48 and info.flush_cache_ext and info.smart
    assert info.serial and info.serial == export.state.serial


def test_identify_serial_is_stable_across_reopen(image: Path, tmp_path: Path) -> None:
    serials = []
    for _ in range(2):
        with Store.open(ExportSpec(1, 2, str(image)), tmp_path / "st") as e:
            serials.append(parse_identify(e.identify_page).serial)
    assert serials[0] == serials[1] != ""


def test_flush_and_check_power_mode(engine: Engine) -> None:
    for op in (AtaOpcode.FLUSH_CACHE, AtaOpcode.FLUSH_CACHE_EXT):
        assert ata_status(one(engine, ata(op))) == (AtaStatus.DRDY, 0)
    assert engine.counters.flushes == 2
    f = one(engine, ata(AtaOpcode.CHECK_POWER_MODE))
    assert f.body.sector_count == 0xFF  # type: ignore[union-attr]


@pytest.mark.parametrize("opcode", [0x00, 0xC8, 0xCA, 0x25, 0xEF, 0xFF])
def test_other_ata_commands_are_aborted(engine: Engine, opcode: int) -> None:
    f = one(engine, ata(opcode, 0, 1))
    assert not f.is_error
    assert ata_status(f) == (AtaStatus.DRDY | AtaStatus.ERR, AtaErrorBits.ABRT)
    assert engine.counters.errors["ata_aborted"] == 1


def smart(feature: int, mid: int = 0x4F, high: int = 0xC2) -> bytes:
    return ata(AtaOpcode.SMART, (high << 16) | (mid << 8), 0, ext=False, feature=feature)


def test_smart_return_status_and_read_data(engine: Engine) -> None:
    f = one(engine, smart(0xDA))
    assert ata_status(f) == (AtaStatus.DRDY, 0)
    lba = f.body.lba  # type: ignore[union-attr]
    assert (lba >> 8) & 0xFF == 0x4F and (lba >> 16) & 0xFF == 0xC2  # no threshold exceeded
    assert len(f.body.data) == 512  # type: ignore[union-attr]
    f = one(engine, smart(0xD0))
    assert bytes(f.body.data) == SMART_DATA_PAGE and sum(SMART_DATA_PAGE) % 256 == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("frame", [smart(0xDA, mid=0), smart(0xD5)], ids=["signature", "feature"])
def test_smart_bad_registers_are_aborted(engine: Engine, frame: bytes) -> None:
    assert ata_status(one(engine, frame)) == (AtaStatus.DRDY | AtaStatus.ERR, AtaErrorBits.ABRT)


# --- frames that are not for us or do not decode ------------------------------------
def test_undecodable_and_foreign_frames(engine: Engine) -> None:
    good = ata(AtaOpcode.READ_SECTORS_EXT, 0, 1)
    c = engine.counters
    assert engine.handle(b"") == [] and engine.handle(good[:20]) == []
    assert c.errors["decode"] == 2
    assert engine.handle(good[:12] + b"\x08\x00" + good[14:]) == []  # not AoE
    assert c.errors["decode"] == 3
    assert engine.handle(good[:30]) == []  # ATA header cut short
    assert c.errors["decode"] == 4
    resp = bytearray(good)
    resp[14] |= HeaderFlag.RESPONSE
    assert engine.handle(bytes(resp)) == []  # an answer, not a request
    assert engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, dst=OTHER)) == []  # other MAC
    assert engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, shelf=9)) == []  # other target
    assert engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, slot=0xFF, shelf=9)) == []
    assert c.ignored == 4
    assert c.frames_out == 0


def test_unsupported_version_is_error_5(engine: Engine) -> None:
    frame = bytearray(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1))
    frame[14] = 0x20  # version 2
    f = one(engine, bytes(frame))
    assert f.is_error and f.error == AoeError.UNSUPPORTED_VERSION and f.version == 1


def test_unknown_command_is_error_1(engine: Engine) -> None:
    for command in (4, 0x10, 0xF0, 0xFF):
        f = one(engine, cmd(command, b"\xab" * 8))
        assert f.is_error and f.error == AoeError.UNRECOGNIZED_COMMAND and f.command == command
    assert engine.counters.errors["aoe_unrecognized_command"] == 4


def test_broadcast_reaches_every_matching_export(image: Path, tmp_path: Path) -> None:
    with Store.open(ExportSpec(1, 2, str(image)), None) as a, \
            Store.open(ExportSpec(1, 3, str(image)), None) as b, \
            Store.open(ExportSpec(4, 2, str(image)), None) as c:
        eng = Engine([a, b, c], TARGET, 1500)
        q = ConfigBody()
        got = {(decode(r).shelf, decode(r).slot)
               for r in eng.handle(cmd(1, q, dst=BROADCAST_MAC, shelf=0xFFFF, slot=0xFF))}
        assert got == {(1, 2), (1, 3), (4, 2)}
        got = {(decode(r).shelf, decode(r).slot) for r in eng.handle(cmd(1, q, slot=0xFF))}
        assert got == {(1, 2), (1, 3)}
        got = {(decode(r).shelf, decode(r).slot) for r in eng.handle(cmd(1, q, shelf=0xFFFF))}
        assert got == {(1, 2), (4, 2)}
        out = eng.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, shelf=0xFFFF, slot=2))
        assert len(out) == 2 and all(len(decode(r).body.data) == 512 for r in out)  # type: ignore[union-attr]


# --- Query Config -------------------------------------------------------------------
def config(ccmd: int, text: bytes = b"", **kw: object) -> bytes:
    return cmd(Command.QUERY_CONFIG, ConfigBody(0, 0, 0, 0, ccmd, text), **kw)  # type: ignore[arg-type]


def test_query_config_fields(engine: Engine) -> None:
    f = one(engine, config(ConfigCommand.READ))
    body = f.body
    assert isinstance(body, ConfigBody)
    assert body.sector_count == 2 and body.buffer_count == 16 and body.aoe_version == 1
    assert body.config == b"" and body.ccmd == ConfigCommand.READ


def test_config_string_commands(engine: Engine, export: Store) -> None:
    f = one(engine, config(ConfigCommand.SET, b"abc"))
    assert not f.is_error and f.body.config == b"abc"  # type: ignore[union-attr]
    f = one(engine, config(ConfigCommand.SET, b"xyz"))
    assert f.is_error and f.error == AoeError.CONFIG_STRING_PRESENT
    assert f.body.config == b"abc"  # type: ignore[union-attr]
    f = one(engine, config(ConfigCommand.SET, b"abc"))  # even the same string: already set
    assert f.error == AoeError.CONFIG_STRING_PRESENT
    assert engine.handle(config(ConfigCommand.TEST, b"ab")) == []
    assert one(engine, config(ConfigCommand.TEST, b"abc")).body.config == b"abc"  # type: ignore[union-attr]
    assert one(engine, config(ConfigCommand.TEST_PREFIX, b"ab")).body.config == b"abc"  # type: ignore[union-attr]
    assert one(engine, config(ConfigCommand.TEST_PREFIX, b"")).body.config == b"abc"  # type: ignore[union-attr]
    assert engine.handle(config(ConfigCommand.TEST_PREFIX, b"abcd")) == []
    f = one(engine, config(ConfigCommand.FORCE_SET, b""))
    assert not f.is_error and export.config == b""
    f = one(engine, config(ConfigCommand.FORCE_SET, b"q" * 1024))
    assert f.body.config == b"q" * 1024  # type: ignore[union-attr]


def test_bad_ccmd_is_bad_argument(engine: Engine) -> None:
    for ccmd in (5, 9, 15):
        f = one(engine, config(ccmd))
        assert f.is_error and f.error == AoeError.BAD_ARGUMENT


def test_config_with_truncated_string_is_dropped(engine: Engine) -> None:
    frame = config(ConfigCommand.SET, b"x" * 100)
    assert engine.handle(frame[:-50]) == []
    assert engine.counters.errors["decode"] == 1


# --- MAC Mask List ------------------------------------------------------------------
def mask(mcmd: int, *directives: tuple[int, bytes], **kw: object) -> bytes:
    body = MaskBody(mcmd, 0, [Directive(d, m) for d, m in directives])
    return cmd(Command.MAC_MASK_LIST, body, **kw)  # type: ignore[arg-type]


def test_mask_list_edit_and_acl(engine: Engine, export: Store) -> None:
    f = one(engine, mask(MaskCommand.EDIT, (DirectiveCommand.ADD, INIT),
                         (DirectiveCommand.ADD, OTHER), (DirectiveCommand.NONE, OTHER),
                         (DirectiveCommand.ADD, INIT)))
    assert [d.mac for d in f.body.directives] == [INIT, OTHER]  # type: ignore[union-attr]
    read = one(engine, mask(MaskCommand.READ))
    assert [d.mac for d in read.body.directives] == [INIT, OTHER]  # type: ignore[union-attr]
    f = one(engine, mask(MaskCommand.EDIT, (DirectiveCommand.DELETE, INIT)))
    assert [d.mac for d in f.body.directives] == [OTHER]  # type: ignore[union-attr]
    # INIT is no longer listed: everything from it is dropped (and counted), even reads.
    assert engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1)) == []
    assert engine.handle(config(ConfigCommand.READ)) == []
    assert engine.counters.errors["acl"] == 2
    out = engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, src=OTHER))
    assert len(out) == 1 and decode(out[0]).dst == OTHER
    assert export.mask_list() == [OTHER]


def test_mask_bad_directive_keeps_earlier_ones(engine: Engine, export: Store) -> None:
    f = one(engine, mask(MaskCommand.EDIT, (DirectiveCommand.ADD, INIT), (9, OTHER),
                         (DirectiveCommand.ADD, OTHER)))
    assert f.body.merror == 2 and len(f.body.directives) == 1  # type: ignore[union-attr]
    assert export.mask_list() == [INIT]
    assert engine.counters.errors["mask_directive"] == 1


def test_mask_list_full(export: Store) -> None:
    eng = Engine([export], TARGET, 1500)
    export.mask_limit = 2
    macs = [bytes([2, 0, 0, 0, 1, i]) for i in range(3)]
    f = one(eng, mask(MaskCommand.EDIT, (DirectiveCommand.ADD, INIT),
                      *[(DirectiveCommand.ADD, m) for m in macs]))
    assert f.body.merror == 3 and len(f.body.directives) == 2  # type: ignore[union-attr]
    assert export.mask_list() == [INIT, macs[0]]


def test_bad_mcmd_is_bad_argument(engine: Engine) -> None:
    f = one(engine, mask(7))
    assert f.is_error and f.error == AoeError.BAD_ARGUMENT


# --- Reserve/Release ----------------------------------------------------------------
def reserve(rcmd: int, *macs: bytes, **kw: object) -> bytes:
    return cmd(Command.RESERVE_RELEASE, ReserveBody(rcmd, list(macs)), **kw)  # type: ignore[arg-type]


def test_reserve_release(engine: Engine, image: Path) -> None:
    f = one(engine, reserve(ReserveCommand.SET, INIT, INIT))
    assert f.body.macs == [INIT]  # type: ignore[union-attr]
    # OTHER may read but not write.
    out = engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, src=OTHER))
    assert len(decode(out[0]).body.data) == 512  # type: ignore[union-attr]
    w = decode(engine.handle(ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 1, b"o" * 512, src=OTHER))[0])
    assert w.error == AoeError.TARGET_RESERVED and image.read_bytes()[:512] != b"o" * 512
    r = decode(engine.handle(reserve(ReserveCommand.SET, OTHER, src=OTHER))[0])
    assert r.error == AoeError.TARGET_RESERVED and r.body.macs == [INIT]  # type: ignore[union-attr]
    assert ata_status(one(engine, ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 1, b"i" * 512))) == (
        AtaStatus.DRDY, 0)
    assert one(engine, reserve(ReserveCommand.READ)).body.macs == [INIT]  # type: ignore[union-attr]
    f = decode(engine.handle(reserve(ReserveCommand.FORCE_SET, OTHER, src=OTHER))[0])
    assert not f.is_error and f.body.macs == [OTHER]  # type: ignore[union-attr]
    f = decode(engine.handle(reserve(ReserveCommand.SET, src=OTHER))[0])  # release
    assert f.body.macs == []  # type: ignore[union-attr]
    assert ata_status(one(engine, ata(AtaOpcode.WRITE_SECTORS_EXT, 0, 1, b"j" * 512))) == (
        AtaStatus.DRDY, 0)


def test_bad_rcmd_and_oversized_list(engine: Engine) -> None:
    f = one(engine, reserve(3))
    assert f.error == AoeError.BAD_ARGUMENT
    macs = [bytes([2, 1, 0, 0, i >> 8, i & 0xFF]) for i in range(250)]
    f = one(engine, reserve(ReserveCommand.SET, *macs))  # 250 MACs do not fit 1500 bytes
    assert f.error == AoeError.BAD_ARGUMENT and f.body.macs == []  # type: ignore[union-attr]


# --- persistence --------------------------------------------------------------------
def test_state_persists_across_reopen(image: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(ExportSpec(1, 2, str(image), config=b"initial"), state) as e:
        eng = Engine([e], TARGET, 1500)
        assert e.config == b"initial"
        one(eng, config(ConfigCommand.FORCE_SET, b"saved"))
        one(eng, mask(MaskCommand.EDIT, (DirectiveCommand.ADD, INIT)))
        one(eng, reserve(ReserveCommand.SET, INIT))
    (state_file,) = state.glob("e1.2-*.json")
    saved = json.loads(state_file.read_text())
    assert saved["masks"] == ["02:00:00:00:00:02"] and saved["config_text"] == "saved"
    assert not list(state.glob(".*tmp"))  # the temp file was renamed away
    with Store.open(ExportSpec(1, 2, str(image), config=b"initial"), state,
                    keep_state=True) as e:
        assert e.config == b"saved"  # --keep-state: saved state wins over the configuration
        assert e.mask_list() == [INIT] and e.reserve_list() == [INIT] and e.guarded
    with Store.open(ExportSpec(1, 2, str(image), config=b"initial"), state) as e:
        assert e.config == b"initial"  # by default the configuration wins (and says so)
        assert e.mask_list() == [INIT] and e.reserve_list() == [INIT] and e.guarded
    with Store.open(ExportSpec(1, 2, str(image)), state) as e:
        assert e.config == b"initial"  # nothing configured: the saved value stays


def test_announcements(export: Store) -> None:
    eng = Engine([export], TARGET, 9000)
    (a,) = eng.announcements()
    f = decode(a)
    assert len(a) >= 60 and f.dst == BROADCAST_MAC and f.is_response and f.tag == 0
    assert f.body.sector_count == 17  # type: ignore[union-attr]
    export.set_masks([INIT, OTHER])
    assert [decode(x).dst for x in eng.announcements()] == [INIT, OTHER]


def test_fast_path_is_used_for_plain_io(engine: Engine) -> None:
    buf = bytearray(engine.frame_size)
    frame = ata(AtaOpcode.READ_SECTORS_EXT, 1, 2)
    buf[: len(frame)] = frame
    n = engine.respond_in_place(buf, memoryview(buf), len(frame))
    assert n == 36 + 1024
    f = decode(bytes(buf[:n]))
    assert f.tag == 5 and f.dst == INIT
    # Anything unusual goes to the general path, leaving the buffer untouched.
    q = config(ConfigCommand.READ)
    buf[: len(q)] = q
    assert engine.respond_in_place(buf, memoryview(buf), len(q)) == -1
    assert bytes(buf[: len(q)]) == q


def test_counters_format(engine: Engine) -> None:
    engine.handle(ata(AtaOpcode.READ_SECTORS_EXT, 0, 2))
    engine.handle(b"junk")
    text = engine.counters.format()
    assert text.startswith("counters: frames_in=2 frames_out=1 ")
    assert "bytes_read=1024" in text and "errors.decode=1" in text
    data = json.loads(engine.counters.format(as_json=True))["counters"]
    assert data["frames_in"] == 2 and data["errors"] == {"decode": 1}


def test_engine_rejects_tiny_mtu_and_duplicate_addresses(export: Store) -> None:
    with pytest.raises(ValueError):
        Engine([export], TARGET, 500)
    with pytest.raises(ValueError):
        Engine([export, export], TARGET, 1500)
    assert isinstance(Counters(), Counters)


def test_fuzzed_frames_never_raise(engine: Engine, image: Path) -> None:
    """Random and mutated frames through the engine: no exception, valid replies only."""
    import random

    rng = random.Random(1234)
    seeds = [ata(AtaOpcode.READ_SECTORS_EXT, 3, 2), ata(AtaOpcode.WRITE_SECTORS_EXT, 5, 1,
                                                        b"\x00" * 512),
             config(ConfigCommand.READ), mask(MaskCommand.READ), reserve(ReserveCommand.READ),
             ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1)]
    for _ in range(3000):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(12, len(base))  # keep dst/src: exercise the handling
            base[i] = rng.randrange(256)
        if rng.random() < 0.2:
            base = base[: rng.randrange(len(base) + 1)]
        if rng.random() < 0.1:
            base = bytearray(rng.randbytes(rng.randrange(80)))
        for reply in engine.handle(bytes(base)):
            assert len(reply) >= 60
            struct.unpack_from("!6s6sH", reply)
    # Still serving right data afterwards (writes only ever hit sectors the frames named).
    f = one(engine, ata(AtaOpcode.READ_SECTORS_EXT, 1000, 1))
    assert bytes(f.body.data) == image.read_bytes()[1000 * 512 : 1001 * 512]  # type: ignore[union-attr]


# --- the burst path (what the serve loop uses) --------------------------------------
def burst(engine: Engine, frames: list[bytes]) -> tuple[list[int], list[memoryview]]:
    size = -(-engine.frame_size // 64) * 64
    buf = bytearray(size * len(frames))
    views = [memoryview(buf)[i * size : (i + 1) * size] for i in range(len(frames))]
    for v, f in zip(views, frames, strict=True):
        v[: len(f)] = f
    out = [0] * len(frames)
    engine.respond_batch(views, [len(f) for f in frames], len(frames), out)
    return out, views


def test_burst_of_sequential_reads_is_one_run(engine: Engine, image: Path) -> None:
    content = image.read_bytes()
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, 10 + 2 * i, 2, tag=i) for i in range(16)]
    out, views = burst(engine, frames)
    assert out == [36 + 1024] * 16
    for i, v in enumerate(views):
        f = decode(bytes(v[: out[i]]))
        assert f.tag == i and f.dst == INIT and f.src == TARGET and f.is_response
        assert bytes(f.body.data) == content[(10 + 2 * i) * 512 : (12 + 2 * i) * 512]  # type: ignore[union-attr]
    assert engine.counters.reads == 16


def test_burst_keeps_request_order_around_writes(engine: Engine, image: Path) -> None:
    old = image.read_bytes()[20 * 512 : 22 * 512]
    new = os.urandom(1024)
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, 20, 2, tag=1),
              ata(AtaOpcode.WRITE_SECTORS_EXT, 20, 2, new, tag=2),
              ata(AtaOpcode.READ_SECTORS_EXT, 20, 2, tag=3)]
    out, views = burst(engine, frames)
    assert bytes(views[0][36 : out[0]]) == old
    assert out[1] == 60 and views[1][27] == AtaStatus.DRDY
    assert bytes(views[2][36 : out[2]]) == new


def test_burst_of_adjacent_writes_is_one_pwritev(engine: Engine, image: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.pwritev

    def counting(fd: int, bufs: list[memoryview], pos: int) -> int:
        calls.append(len(bufs))
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "pwritev", counting)
    use_burst_path(engine, "python")  # counts the Python path's calls
    data = os.urandom(8 * 1024)
    frames = [ata(AtaOpcode.WRITE_SECTORS_EXT, 40 + 2 * i, 2, data[i * 1024:(i + 1) * 1024],
                  tag=i) for i in range(8)]
    out, views = burst(engine, frames)
    assert calls == [8]
    assert out == [60] * 8
    assert image.read_bytes()[40 * 512 : 56 * 512] == data
    for i, v in enumerate(views):
        f = decode(bytes(v[:60]))
        assert f.tag == i and f.dst == INIT and f.is_response and ata_status(f) == (
            AtaStatus.DRDY, 0)
        assert bytes(v[36:60]) == bytes(24)  # the reply does not echo the data
    assert engine.counters.writes == 8 and engine.counters.bytes_written == 8 * 1024


def test_burst_write_failure_hits_only_the_frames_that_fail(
        engine: Engine, export: Store, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, bufs: list[memoryview], pos: int) -> int:
        raise OSError(5, "I/O error")

    real_write = Store.write_from

    def flaky(self: Store, view: memoryview, pos: int) -> int:
        if pos == 62 * 512:
            raise OSError(5, "I/O error")
        return real_write(self, view, pos)

    monkeypatch.setattr(os, "pwritev", broken)
    use_burst_path(engine, "python")  # the compiled path's failures: test_target_burst.py
    monkeypatch.setattr(Store, "write_from", flaky)
    data = os.urandom(4 * 1024)
    frames = [ata(AtaOpcode.WRITE_SECTORS_EXT, 60 + 2 * i, 2, data[i * 1024:(i + 1) * 1024],
                  tag=i) for i in range(4)]
    out, views = burst(engine, frames)
    assert out == [60] * 4
    statuses = [ata_status(decode(bytes(v[:60]))) for v in views]
    assert statuses[1] == (AtaStatus.DRDY | AtaStatus.ERR, AtaErrorBits.UNC | AtaErrorBits.ABRT)
    assert statuses[0] == statuses[2] == statuses[3] == (AtaStatus.DRDY, 0)
    content = image.read_bytes()
    assert content[60 * 512 : 62 * 512] == data[:1024]
    assert content[64 * 512 : 68 * 512] == data[2048:]
    assert engine.counters.writes == 3 and engine.counters.errors["ata_io"] == 1


def test_burst_leaves_other_frames_to_the_general_path(engine: Engine) -> None:
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, tag=1), config(ConfigCommand.READ),
              ata(AtaOpcode.READ_SECTORS_EXT, 0, 1, shelf=0xFFFF), b"short",
              ata(AtaOpcode.READ_SECTORS_EXT, 1, 1, tag=4)]
    out, views = burst(engine, frames)
    assert out[0] > 0 and out[4] > 0 and out[1] == out[2] == out[3] == -1
    for i in (1, 2):  # untouched, ready for respond_slow
        assert bytes(views[i][: len(frames[i])]) == frames[i]


def test_burst_read_failure_hits_only_the_frames_past_the_end(engine: Engine,
                                                              image: Path) -> None:
    os.truncate(image, 104 * 512)  # the store shrank after the export was opened
    content = image.read_bytes()
    frames = [ata(AtaOpcode.READ_SECTORS_EXT, 100 + 2 * i, 2, tag=i) for i in range(4)]
    out, views = burst(engine, frames)
    assert out == [36 + 1024, 36 + 1024, 60, 60]
    assert bytes(views[1][36:out[1]]) == content[102 * 512 : 104 * 512]
    for i in (2, 3):
        f = decode(bytes(views[i][:60]))
        assert f.tag == i and ata_status(f) == (AtaStatus.DRDY | AtaStatus.ERR,
                                                AtaErrorBits.UNC | AtaErrorBits.ABRT)
    assert engine.counters.errors["ata_io"] == 2


def test_burst_and_single_frame_paths_agree(engine: Engine, export: Store) -> None:
    """Whatever the burst path answers in place, the one-frame path answers identically."""
    import random

    rng = random.Random(7)
    other = Engine([export], TARGET, 1500)
    for _ in range(300):
        op = rng.choice([0x20, 0x24, 0x30, 0x34, 0xEC, 0xE5, 0xE7, 0x00])
        count = rng.choice([0, 1, 2, 3])
        lba = rng.choice([0, 5, SECTORS - 1, SECTORS, 1 << 30])
        write = op in (0x30, 0x34) if rng.random() < 0.9 else op not in (0x30, 0x34)
        data = bytes([rng.randrange(256)]) * (512 * count) if write else b""
        frame = ata(op, lba, count, data, ext=rng.random() < 0.5, write=write,
                    tag=rng.randrange(99))
        if len(frame) > engine.frame_size:
            continue  # longer than the MTU: cannot arrive in a receive slot
        expected = other.handle(frame)
        out, views = burst(engine, [frame])
        if out[0] > 0:
            assert [bytes(views[0][: out[0]])] == expected, (op, count, lba)
        elif out[0] == 0:
            assert expected == []


def test_identify_smart_flag_round_trip() -> None:
    """Codec addition used by the target: IdentifyInfo.smart sets words 82/85 bit 0."""
    from aoe.protocol import IdentifyInfo, build_identify

    page = build_identify(IdentifyInfo(1000, smart=True))
    w82, w85 = struct.unpack_from("<H", page, 164)[0], struct.unpack_from("<H", page, 170)[0]
    assert w82 & 1 and w85 & 1 and sum(page) % 256 == 0
    assert parse_identify(page).smart
    assert not parse_identify(build_identify(IdentifyInfo(1000))).smart


def test_state_belongs_to_the_disk_not_just_the_address(image: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    other = tmp_path / "other.img"
    other.write_bytes(bytes(512 * 8))
    with Store.open(ExportSpec(1, 2, str(image)), state) as e:
        e.set_reservations([INIT])
    with Store.open(ExportSpec(1, 2, str(other)), state) as e:
        assert e.reserve_list() == [] and not e.guarded
    with Store.open(ExportSpec(1, 2, str(image)), state) as e:
        assert e.reserve_list() == [INIT]


def test_burst_on_an_o_direct_store(image: Path, tmp_path: Path) -> None:
    """An O_DIRECT store takes the burst path too: runs go through the store's aligned
    bounce buffer, so reads and writes land exactly as on a buffered store."""
    try:
        store = Store.open(ExportSpec(1, 2, str(image), direct=True), tmp_path / "sd")
    except StoreError as exc:
        pytest.skip(f"no O_DIRECT here: {exc}")
    with store:
        engine = Engine([store], TARGET, 9000)
        data = os.urandom(6 * 17 * 512)
        frames = [ata(AtaOpcode.WRITE_SECTORS_EXT, 200 + 17 * i, 17,
                      data[i * 17 * 512 : (i + 1) * 17 * 512], tag=i) for i in range(6)]
        out, _ = burst(engine, frames)
        assert out == [60] * 6
        assert image.read_bytes()[200 * 512 : (200 + 6 * 17) * 512] == data
        frames = [ata(AtaOpcode.READ_SECTORS_EXT, 200 + 17 * i, 17, tag=i) for i in range(6)]
        out, views = burst(engine, frames)
        assert out == [36 + 17 * 512] * 6
        got = b"".join(bytes(v[36 : out[i]]) for i, v in enumerate(views))
        assert got == data
        assert engine.counters.reads == 6 and engine.counters.writes == 6


def test_store_vector_calls_match_one_piece_calls(export: Store, image: Path) -> None:
    """readv_into/writev_from move the same bytes as read_into/write_from piece by piece."""
    pieces = [bytearray(os.urandom(512 * n)) for n in (1, 3, 2)]
    assert export.writev_from([memoryview(p) for p in pieces], 300 * 512) == 6 * 512
    back = [bytearray(len(p)) for p in pieces]
    assert export.readv_into([memoryview(b) for b in back], 300 * 512) == 6 * 512
    assert back == pieces
    one = bytearray(6 * 512)
    assert export.read_into(memoryview(one), 300 * 512) == 6 * 512
    assert bytes(one) == b"".join(pieces) == image.read_bytes()[300 * 512 : 306 * 512]
