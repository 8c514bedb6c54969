"""A dissector nobody here wrote (tshark) must read the frames the codec writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aoe.capture.pcap import write_pcap
from aoe.protocol import (
    AtaBody,
    AtaFlag,
    AtaOpcode,
    ConfigBody,
    Frame,
    HeaderFlag,
    encode,
    lba_field,
)

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")
RSP = int(HeaderFlag.RESPONSE)
FIELDS = [
    "aoe.version",
    "aoe.cmd",
    "aoe.response",
    "aoe.major",
    "aoe.minor",
    "aoe.tag",
    "aoe.ata.cmd",
    "aoe.lba",
    "aoe.sector_count",
    "aoe.aflags.e",
    "aoe.aflags.w",
    "aoe.error",
    "aoe.flags_error",
    "_ws.malformed",
    "_ws.expert.message",
]


def _tshark(path: Path) -> list[dict[str, str]]:
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in FIELDS:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [dict(zip(FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]


def test_tshark_reads_codec_frames(tmp_path: Path) -> None:
    read_ext = AtaBody(int(AtaFlag.EXTENDED), 0, 2, AtaOpcode.READ_SECTORS_EXT, 0x123456789A)
    write28 = AtaBody(
        int(AtaFlag.WRITE), 0, 1, AtaOpcode.WRITE_SECTORS, lba_field(77, False), b"\xab" * 512
    )
    frames = [
        Frame(b"\xff" * 6, A, 0xFFFF, 0xFF, 1, 0x11, ConfigBody()),
        Frame(A, B, 3, 4, 1, 0x11, ConfigBody(16, 0x4019, 2, 1, 0, b"cfg"), RSP),
        Frame(B, A, 3, 4, 0, 0x22, read_ext),
        Frame(A, B, 3, 4, 0, 0x22, AtaBody(int(AtaFlag.EXTENDED), 0, 2, 0x40, 0, bytes(1024)), RSP),
        Frame(B, A, 3, 4, 0, 0x33, write28),
        Frame(B, A, 3, 4, 0, 0x44, AtaBody(0, 0, 1, AtaOpcode.IDENTIFY_DEVICE, 0)),
        Frame(A, B, 3, 4, 0, 0x55, AtaBody(), RSP | int(HeaderFlag.ERROR), 2),
    ]
    pcap = tmp_path / "codec.pcap"
    write_pcap(pcap, [encode(f, pad=True) for f in frames])
    rows = _tshark(pcap)
    assert len(rows) == len(frames)
    for row in rows:
        assert row["_ws.malformed"] == ""
        assert "alformed" not in row["_ws.expert.message"]
        assert row["aoe.version"] == "1"
    assert [r["aoe.cmd"] for r in rows] == ["1", "1", "0", "0", "0", "0", "0"]
    assert [int(r["aoe.tag"], 16) for r in rows] == [f.tag for f in frames]
    assert int(rows[0]["aoe.major"], 16) == 0xFFFF and int(rows[0]["aoe.minor"], 16) == 0xFF
    assert rows[1]["aoe.response"] in ("1", "True")
    assert int(rows[2]["aoe.ata.cmd"], 16) == 0x24
    assert int(rows[2]["aoe.lba"], 16) == 0x123456789A
    assert rows[2]["aoe.sector_count"] == "2"
    assert rows[2]["aoe.aflags.e"] in ("1", "True")
    assert int(rows[4]["aoe.ata.cmd"], 16) == 0x30
    assert rows[4]["aoe.aflags.w"] in ("1", "True")
    assert int(rows[5]["aoe.ata.cmd"], 16) == 0xEC
    assert rows[6]["aoe.error"] == "2" and rows[6]["aoe.flags_error"] in ("1", "True")


def test_tshark_names_the_commands(tmp_path: Path) -> None:
    frames = [
        Frame(b"\xff" * 6, A, 1, 2, 1, 1, ConfigBody()),
        Frame(
            B, A, 1, 2, 0, 2, AtaBody(int(AtaFlag.EXTENDED), 0, 1, AtaOpcode.READ_SECTORS_EXT, 0)
        ),
    ]
    pcap = tmp_path / "names.pcap"
    write_pcap(pcap, [encode(f, pad=True) for f in frames])
    text = subprocess.run(
        ["tshark", "-r", str(pcap), "-V"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "Query Config Information" in text
    assert "Issue ATA Command" in text
    assert "Malformed" not in text
