#!/usr/bin/env python3
"""Frames per second through the impairment relay (A -> relay -> B), in a lab.

A blaster on A pushes AoE-EtherType frames with sendmmsg as fast as it can; the figure is
the relay's own forwarded counter over a fixed window. Run as root:
    .venv/bin/python tools/bench_relay.py [--size 1024] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time

from aoe.lab import Lab
from aoe.net.rawsock import RawSocket
from aoe.protocol.constants import ETHERTYPE_AOE
from aoe.protocol.mac import parse_mac


def blast(ifname: str, frame: bytes, seconds: float) -> int:
    """Send `frame` repeatedly for `seconds`, 64 per system call; returns frames sent."""
    sock = RawSocket(ifname)
    batch = sock.batch(64, max(len(frame), 64))
    for view in batch.views:
        view[: len(frame)] = frame
    lengths = [len(frame)] * batch.count
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sent += batch.send_slots(lengths, batch.count)
    sent -= batch.send_errors
    sock.close()
    return sent


def measure(label: str, size: int, seconds: float, **impairment: float) -> float:
    with Lab() as lab:
        a, b = lab.host("a"), lab.host("b")
        relay = lab.relay_between(a, b, mtu=max(1500, size), **impairment)
        frame = (parse_mac(relay.b_mac) + parse_mac(relay.a_mac)
                 + ETHERTYPE_AOE.to_bytes(2, "big") + bytes(size - 14))
        before = relay.stats().a_to_b
        t0 = time.monotonic()
        sent = a.call(blast, relay.a_ifname, frame, seconds, timeout=seconds + 10)
        time.sleep(0.05)
        after = relay.stop().a_to_b
        elapsed = time.monotonic() - t0
        fwd = after.forwarded - before.forwarded
        rate = fwd / seconds
        print(f"{label:<28} size {size:5d}  offered {sent / seconds:9.0f}/s  "
              f"received {after.received / seconds:9.0f}/s  forwarded {rate:9.0f}/s  "
              f"({rate * size * 8 / 1e9:5.2f} Gbit/s)  [{elapsed:.1f}s]")
        return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, action="append", help="frame size in bytes")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    for size in args.size or [60, 1038, 8718]:
        measure("plain (batched fast path)", size, args.seconds)
        measure("impaired (drop 1%)", size, args.seconds, drop=0.01)
        measure("impaired (all kinds)", size, args.seconds, drop=0.01, duplicate=0.01,
                reorder=0.01, corrupt=0.01)


if __name__ == "__main__":
    main()
