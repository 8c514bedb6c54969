"""`aoe decode` turns a pcap into readable lines, and refuses bad files without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from aoe.capture.pcap import write_pcap
from aoe.cli import main
from aoe.protocol import AtaBody, ConfigBody, Frame, MaskBody, ReserveBody, encode

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")


def test_decode_pretty_and_json(tmp_path: Path) -> None:
    frames = [
        encode(Frame(B, A, 1, 2, 1, 0x10, ConfigBody(config=b"hello")), pad=True),
        encode(Frame(B, A, 1, 2, 0, 0x11, AtaBody(0x40, 0, 2, 0x24, 99))),
        encode(Frame(B, A, 1, 2, 2, 0x12, MaskBody())),
        encode(Frame(B, A, 1, 2, 3, 0x13, ReserveBody())),
        b"\x00" * 14,  # not AoE
        encode(Frame(B, A, 1, 2, 1, 0x14, ConfigBody(config=b"x" * 100)))[:-10],  # truncated
    ]
    pcap = tmp_path / "t.pcap"
    write_pcap(pcap, frames)
    runner = CliRunner()
    out = runner.invoke(main, ["decode", str(pcap)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 5
    assert "QUERY_CONFIG" in lines[0] and "b'hello'" in lines[0]
    assert "READ_SECTORS_EXT" in lines[1] and "lba=99" in lines[1]
    assert "MAC_MASK_LIST" in lines[2] and "RESERVE_RELEASE" in lines[3]
    assert "MALFORMED" in lines[4] and "truncated" in lines[4]
    out = runner.invoke(main, ["decode", "--json", str(pcap)])
    records = [json.loads(line) for line in out.output.splitlines()]
    assert records[1]["lba"] == 99 and records[1]["tag"] == 0x11
    assert "malformed" in records[4]


def test_decode_rejects_non_pcap(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    out = CliRunner().invoke(main, ["decode", str(bad)])
    assert out.exit_code != 0
    assert "not a pcap file" in out.output
    assert "Traceback" not in out.output
    out = CliRunner().invoke(main, ["decode", str(tmp_path / "missing.pcap")])
    assert out.exit_code == 2 and "Traceback" not in out.output
