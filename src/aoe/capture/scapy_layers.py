"""Scapy layers for AoE r11, for crafting and dissecting frames in tests and `aoe sniff`.

They are an independent second description of the wire format: tests check that these
layers and the codec in :mod:`aoe.protocol` agree byte for byte. Never used on the data path.
"""

from __future__ import annotations

from typing import Any

from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    MACField,
    PacketListField,
    ShortField,
    StrLenField,
    XByteField,
    XShortField,
)
from scapy.fields import Field as _Field
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

from ..protocol.constants import ETHERTYPE_AOE

_COMMANDS = {0: "ata", 1: "query_config", 2: "mac_mask_list", 3: "reserve_release"}
_ERRORS = {
    0: "none",
    1: "unrecognized_command",
    2: "bad_argument",
    3: "device_unavailable",
    4: "config_string_present",
    5: "unsupported_version",
    6: "target_reserved",
}


class LBA48Field(_Field[int, bytes]):
    """Six LBA bytes, least significant first, as the AoE ATA header carries them."""

    def __init__(self, name: str, default: int) -> None:
        super().__init__(name, default, "6s")

    def i2m(self, pkt: Packet | None, x: int | None) -> bytes:
        return int(x or 0).to_bytes(6, "little")

    def m2i(self, pkt: Packet | None, x: bytes) -> int:
        return int.from_bytes(x, "little")


class AoE(Packet):
    name = "AoE"
    fields_desc = [
        BitField("version", 1, 4),
        FlagsField("flags", 0, 4, ["r0", "r1", "E", "R"]),
        ByteEnumField("error", 0, _ERRORS),
        XShortField("shelf", 0),
        XByteField("slot", 0),
        ByteEnumField("cmd", 0, _COMMANDS),
        IntField("tag", 0),
    ]

    def answers(self, other: Any) -> int:
        return int(isinstance(other, AoE) and other.tag == self.tag and bool(self.flags & 0x8))


class AoEATA(Packet):
    name = "AoE ATA"
    fields_desc = [
        FlagsField("aflags", 0, 8, ["W", "A", "b2", "b3", "D", "b5", "E", "b7"]),
        XByteField("err_feature", 0),
        ByteField("sector_count", 0),
        XByteField("cmd_status", 0),
        LBA48Field("lba", 0),
        ShortField("reserved", 0),
    ]


class AoEQueryConfig(Packet):
    name = "AoE Query Config"
    fields_desc = [
        ShortField("buffer_count", 0),
        XShortField("firmware", 0),
        ByteField("sector_count", 0),
        BitField("aoe_version", 1, 4),
        BitEnumField(
            "ccmd", 0, 4, {0: "read", 1: "test", 2: "test_prefix", 3: "set", 4: "force_set"}
        ),
        FieldLenField("config_len", None, length_of="config", fmt="!H"),
        StrLenField("config", b"", length_from=lambda p: p.config_len),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class AoEDirective(Packet):
    name = "AoE MAC directive"
    fields_desc = [
        ByteField("reserved", 0),
        ByteEnumField("dcmd", 0, {0: "none", 1: "add", 2: "delete"}),
        MACField("mac", "00:00:00:00:00:00"),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class AoEMacMask(Packet):
    name = "AoE MAC Mask List"
    fields_desc = [
        ByteField("reserved", 0),
        ByteEnumField("mcmd", 0, {0: "read", 1: "edit"}),
        ByteEnumField("merror", 0, {0: "none", 1: "unspecified", 2: "bad_dcmd", 3: "full"}),
        FieldLenField("dir_count", None, count_of="directives", fmt="B"),
        PacketListField("directives", [], AoEDirective, count_from=lambda p: p.dir_count),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class AoEReserve(Packet):
    name = "AoE Reserve/Release"
    fields_desc = [
        ByteEnumField("rcmd", 0, {0: "read", 1: "set", 2: "force_set"}),
        FieldLenField("nmacs", None, count_of="macs", fmt="B"),
        FieldListField("macs", [], MACField("", "00:00:00:00:00:00"), count_from=lambda p: p.nmacs),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


bind_layers(Ether, AoE, type=ETHERTYPE_AOE)
bind_layers(AoE, AoEATA, cmd=0)
bind_layers(AoE, AoEQueryConfig, cmd=1)
bind_layers(AoE, AoEMacMask, cmd=2)
bind_layers(AoE, AoEReserve, cmd=3)

__all__ = [
    "AoE",
    "AoEATA",
    "AoEDirective",
    "AoEMacMask",
    "AoEQueryConfig",
    "AoEReserve",
    "ETHERTYPE_AOE",
    "LBA48Field",
]
