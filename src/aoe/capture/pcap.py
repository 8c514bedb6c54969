"""Classic pcap files: read captures, write them as frames come; no dependency."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
LINKTYPE_ETHERNET = 1


class PcapError(ValueError):
    """The file is not a classic Ethernet pcap this reader understands."""


def read_pcap(path: Path) -> Iterator[tuple[float, bytes]]:
    """Yield (timestamp, frame) from a classic pcap file (pcapng is not supported)."""
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in _PCAP_MAGICS:
        raise PcapError(f"{path}: not a pcap file (pcapng? convert with editcap -F pcap)")
    endian, unit = _PCAP_MAGICS[data[:4]]
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype} is not Ethernet")
    record = struct.Struct(endian + "IIII")
    pos = 24
    while pos + record.size <= len(data):
        sec, frac, caplen, _origlen = record.unpack_from(data, pos)
        pos += record.size
        if pos + caplen > len(data):
            raise PcapError(f"{path}: truncated record at byte {pos - record.size}")
        yield sec + frac * unit, data[pos : pos + caplen]
        pos += caplen


class PcapWriter:
    """A classic microsecond pcap written record by record, flushed as it goes, so a
    capture cut short (Ctrl-C, kill) is still a readable file."""

    def __init__(self, path: Path) -> None:
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        self._f.flush()

    def write(self, stamp: float, raw: bytes) -> None:
        sec = int(stamp)
        self._f.write(struct.pack("<IIII", sec, int((stamp - sec) * 1e6), len(raw), len(raw)))
        self._f.write(raw)
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """Write frames as a classic microsecond Ethernet pcap, frame i stamped i seconds."""
    with PcapWriter(path) as writer:
        for i, frame in enumerate(frames):
            writer.write(float(i), frame)
