#!/usr/bin/env python3
"""Micro-benchmark of the sans-I/O codec: microseconds per operation on the hot path.

Usage: python tools/bench_codec.py [--json]
Results are written by hand into docs/protocol.md; they vary with the machine.
"""

from __future__ import annotations

import json
import sys
import timeit

from aoe.protocol import AtaBody, AtaFlag, ConfigBody, Frame, decode, encode, response_to
from aoe.protocol.frames import ATA_ARGS, HEADER

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")


def cases() -> dict[str, tuple[object, int]]:
    read_req = encode(Frame(B, A, 1, 0, 0, 7, AtaBody(int(AtaFlag.EXTENDED), 0, 17, 0x24, 1234)))
    write_req = encode(
        Frame(
            B,
            A,
            1,
            0,
            0,
            7,
            AtaBody(int(AtaFlag.EXTENDED | AtaFlag.WRITE), 0, 17, 0x34, 1, bytes(17 * 512)),
        )
    )
    qc = encode(Frame(B, A, 1, 0, 1, 7, ConfigBody(config=b"pyaoe")))
    req = decode(read_req)
    data = bytes(17 * 512)
    rsp_body = AtaBody(int(AtaFlag.EXTENDED), 0, 17, 0x40, 1234, data)
    out = bytearray(36)

    def fast_header() -> None:
        HEADER.unpack_from(read_req)
        ATA_ARGS.unpack_from(read_req, 24)

    def fast_response_header() -> None:
        HEADER.pack_into(out, 0, A, B, 0x88A2, 0x18, 0, 1, 0, 0, 7)
        ATA_ARGS.pack_into(out, 24, 0x40, 0, 17, 0x40, 1234, 0)

    return {
        "decode ATA read request": (lambda: decode(read_req), 200_000),
        "decode ATA write request (8.5 KiB, zero-copy data)": (lambda: decode(write_req), 200_000),
        "decode Query Config": (lambda: decode(qc), 200_000),
        "encode ATA read response (8.5 KiB data)": (
            lambda: encode(response_to(req, B, rsp_body)),
            100_000,
        ),
        "raw struct: unpack header + ATA args": (fast_header, 500_000),
        "raw struct: pack response header into buffer": (fast_response_header, 500_000),
    }


def main() -> None:
    results = {}
    for name, (fn, n) in cases().items():
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n  # type: ignore[arg-type]
        results[name] = round(best * 1e6, 3)
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'operation':55s} {'µs/op':>8s}")
        for name, us in results.items():
            print(f"{name:55s} {us:8.3f}")


if __name__ == "__main__":
    main()
