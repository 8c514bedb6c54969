"""The scapy layers and the codec are two descriptions of one format: they must agree."""

from __future__ import annotations

from hypothesis import given, settings
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from aoe.capture.scapy_layers import (
    AoE,
    AoEATA,
    AoEDirective,
    AoEMacMask,
    AoEQueryConfig,
    AoEReserve,
)
from aoe.protocol import AtaBody, ConfigBody, Frame, MaskBody, ReserveBody, decode, encode
from aoe.protocol.mac import format_mac

from .support.strategies import frames


def to_scapy(frame: Frame) -> Ether:
    """Build the same frame with scapy, field by field (an independent path to the bytes)."""
    pkt = Ether(dst=format_mac(frame.dst), src=format_mac(frame.src), type=0x88A2) / AoE(
        version=frame.version,
        flags=frame.flags,
        error=frame.error,
        shelf=frame.shelf,
        slot=frame.slot,
        cmd=frame.command,
        tag=frame.tag,
    )
    b = frame.body
    if isinstance(b, AtaBody):
        pkt /= AoEATA(
            aflags=b.aflags,
            err_feature=b.err_feature,
            sector_count=b.sector_count,
            cmd_status=b.cmd_status,
            lba=b.lba,
        )
        if b.data:
            pkt /= Raw(bytes(b.data))
    elif isinstance(b, ConfigBody):
        pkt /= AoEQueryConfig(
            buffer_count=b.buffer_count,
            firmware=b.firmware,
            sector_count=b.sector_count,
            aoe_version=b.aoe_version,
            ccmd=b.ccmd,
            config=b.config,
        )
    elif isinstance(b, MaskBody):
        pkt /= AoEMacMask(
            mcmd=b.mcmd,
            merror=b.merror,
            directives=[AoEDirective(dcmd=d.dcmd, mac=format_mac(d.mac)) for d in b.directives],
        )
    elif isinstance(b, ReserveBody):
        pkt /= AoEReserve(rcmd=b.rcmd, macs=[format_mac(m) for m in b.macs])
    return pkt


@settings(max_examples=150, deadline=None)
@given(frames())
def test_scapy_builds_the_same_bytes(frame: Frame) -> None:
    assert raw(to_scapy(frame)) == encode(frame)


@settings(max_examples=150, deadline=None)
@given(frames())
def test_scapy_dissects_codec_bytes(frame: Frame) -> None:
    pkt = Ether(encode(frame))
    aoe = pkt[AoE]
    assert (aoe.shelf, aoe.slot, aoe.cmd, aoe.tag) == (
        frame.shelf,
        frame.slot,
        frame.command,
        frame.tag,
    )
    assert int(aoe.flags) == frame.flags
    b = frame.body
    if isinstance(b, AtaBody):
        ata = pkt[AoEATA]
        assert (ata.lba, ata.sector_count, ata.cmd_status, int(ata.aflags)) == (
            b.lba,
            b.sector_count,
            b.cmd_status,
            b.aflags,
        )
        assert bytes(ata.payload) == bytes(b.data)
    elif isinstance(b, ConfigBody):
        qc = pkt[AoEQueryConfig]
        assert (qc.buffer_count, qc.firmware, qc.sector_count, qc.ccmd, qc.config) == (
            b.buffer_count,
            b.firmware,
            b.sector_count,
            b.ccmd,
            b.config,
        )
    elif isinstance(b, MaskBody):
        mm = pkt[AoEMacMask]
        assert [(d.dcmd, d.mac) for d in mm.directives] == [
            (d.dcmd, format_mac(d.mac)) for d in b.directives
        ]
    elif isinstance(b, ReserveBody):
        assert pkt[AoEReserve].macs == [format_mac(m) for m in b.macs]
    assert decode(raw(pkt)) == frame
