"""The impairment relay: frames cross A -- relay -- B, impaired at configured rates."""

from __future__ import annotations

import math
import socket
import struct
import time

import pytest

from aoe.lab import Lab
from aoe.lab.pair import netns_unavailable_reason
from aoe.lab.relay import Impairment, RelayConfig, RelayHandle
from tests.support.wire import aoe_frame, aoe_socket

_SKIP = netns_unavailable_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")

N = 2000
SIZE = 100  # bytes of payload: a 4-byte sequence number and a fixed pattern


def payload(seq: int) -> bytes:
    return struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(SIZE - 4))


def big_rcvbuf(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: no loss in the test
    return s


def wait_settled(relay: RelayHandle, sent: int, direction: str = "a_to_b") -> None:
    """Wait until the relay has taken every frame and sent out all it is going to."""
    deadline = time.monotonic() + 10
    while True:
        c = getattr(relay.stats(), direction)
        if c.received == sent and c.forwarded + c.errors == sent - c.dropped + c.duplicated:
            return
        assert time.monotonic() < deadline, f"relay stuck: {c}"
        time.sleep(0.005)


def exchange(relay: RelayHandle, n: int = N, pace: int = 200) -> list[bytes]:
    """Send n numbered frames A -> B through the relay; return the payloads B got."""
    with relay.b.enter():
        rx = big_rcvbuf(aoe_socket(relay.b_ifname, timeout=2.0))
    with relay.a.enter():
        tx = aoe_socket(relay.a_ifname)
    got: list[bytes] = []
    with rx, tx:
        for seq in range(n):
            tx.send(aoe_frame(relay.b_mac, relay.a_mac, payload(seq)))
            if seq % pace == pace - 1:
                time.sleep(0.001)  # let the relay keep up; no loss outside the relay
        wait_settled(relay, n)
        expected = relay.stats().a_to_b.forwarded
        while len(got) < expected:
            got.append(rx.recv(65536)[14:])
    return got


def seqs(frames: list[bytes]) -> list[int]:
    return [struct.unpack_from("!I", f)[0] for f in frames]


def within(count: int, n: int, p: float, sds: float = 5.0) -> bool:
    """count is a plausible Binomial(n, p) draw (five standard deviations)."""
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sds * sd + 1


def test_plain_relay_forwards_everything_both_ways(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    relay = lab.relay_between(a, b)
    got = exchange(relay)
    assert seqs(got) == list(range(N))
    assert got[7] == payload(7)
    # and back: B -> A
    with a.enter():
        rx = aoe_socket(relay.a_ifname)
    with b.enter():
        tx = aoe_socket(relay.b_ifname)
    with rx, tx:
        tx.send(aoe_frame(relay.a_mac, relay.b_mac, payload(42)))
        assert rx.recv(2048)[14:] == payload(42)
    stats = relay.stop()
    assert stats.a_to_b.forwarded == N and stats.b_to_a.forwarded == 1
    assert stats.total.dropped == 0 and stats.total.received == N + 1


def test_relay_ignores_other_ethertypes(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    relay = lab.relay_between(a, b)
    with b.enter():
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        rx.bind((relay.b_ifname, 0x88B5))
        rx.settimeout(0.2)
    with a.enter():
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        tx.bind((relay.a_ifname, 0x88B5))
    with rx, tx:
        other = bytes.fromhex(relay.b_mac.replace(":", "")) * 2 + b"\x88\xb5" + bytes(50)
        tx.send(other)
        with pytest.raises(TimeoutError):
            rx.recv(2048)
    assert relay.stats().total.received == 0


def test_drop_rate_is_counted_and_seeded(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    relay = lab.relay_between(a, b, drop=0.2, seed=11)
    got = seqs(exchange(relay))
    stats = relay.stop().a_to_b
    assert within(stats.dropped, N, 0.2)
    assert len(got) == N - stats.dropped == stats.forwarded
    assert got == sorted(got)  # dropping does not reorder
    # The same seed makes the same decisions; another seed makes others.
    again = lab.relay_between(lab.host("a2"), lab.host("b2"), name="relay2", drop=0.2, seed=11)
    assert seqs(exchange(again)) == got
    other = lab.relay_between(lab.host("a3"), lab.host("b3"), name="relay3", drop=0.2, seed=12)
    assert seqs(exchange(other)) != got


def test_duplicate_rate(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    relay = lab.relay_between(a, b, duplicate=0.1, seed=3)
    got = seqs(exchange(relay))
    stats = relay.stop().a_to_b
    assert within(stats.duplicated, N, 0.1)
    assert len(got) == N + stats.duplicated
    assert sorted(set(got)) == list(range(N))
    assert sum(1 for i in range(1, len(got)) if got[i] == got[i - 1]) == stats.duplicated


def test_reorder_rate(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    relay = lab.relay_between(a, b, reorder=0.2, seed=5)
    got = seqs(exchange(relay))
    stats = relay.stop().a_to_b
    assert sorted(got) == list(range(N))  # nothing lost, nothing added
    descents = sum(1 for i in range(1, len(got)) if got[i] < got[i - 1])
    assert descents == stats.reordered
    # A frame is held with p only when none is held already: about p/(1+p) of frames.
    expected = N * 0.2 / 1.2
    assert 0.6 * expected < stats.reordered < 1.4 * expected


def test_corruption_flips_one_payload_byte(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    relay = lab.relay_between(a, b, corrupt=0.25, seed=9)
    got = exchange(relay)
    stats = relay.stop().a_to_b
    assert within(stats.corrupted, N, 0.25)
    received = set(got)
    originals = {payload(seq): seq for seq in range(N)}
    intact = {seq for p, seq in originals.items() if p in received}
    damaged = [f for f in got if f not in originals]
    assert len(got) == N and len(damaged) == stats.corrupted
    missing = [s for s in range(N) if s not in intact]
    for frame in damaged:  # each is some lost original with exactly one byte changed
        seq = struct.unpack_from("!I", frame)[0]
        candidates = [seq] if seq in missing else missing  # unless the number was hit
        assert any(hamming(frame, payload(s)) == 1 for s in candidates)


def hamming(x: bytes, y: bytes) -> int:
    return sum(i != j for i, j in zip(x, y, strict=True))


def test_delay_and_jitter(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    cfg = RelayConfig(a_to_b=Impairment(delay=0.03, jitter=0.02), seed=1)
    relay = lab.relay_between(a, b, config=cfg)
    with b.enter():
        rx = big_rcvbuf(aoe_socket(relay.b_ifname, timeout=2.0))
    with a.enter():
        tx = aoe_socket(relay.a_ifname)
    with rx, tx:
        t0 = time.monotonic()
        tx.send(aoe_frame(relay.b_mac, relay.a_mac, payload(0)))
        rx.recv(2048)
        # a lower bound only: the relay held the frame at least delay - jitter
        assert time.monotonic() - t0 >= 0.01
        n = 200
        for seq in range(1, n + 1):
            tx.send(aoe_frame(relay.b_mac, relay.a_mac, payload(seq)))
            time.sleep(0.0005)
        got = seqs([rx.recv(2048)[14:] for _ in range(n)])
    stats = relay.stop()
    assert stats.a_to_b.delayed == n + 1 and stats.a_to_b.forwarded == n + 1
    assert sorted(got) == list(range(1, n + 1))
    assert got != sorted(got)  # ±20 ms jitter on frames 0.5 ms apart reorders them
    assert stats.b_to_a.delayed == 0  # only one direction was impaired


def test_relay_stops_with_lab() -> None:
    with Lab() as lab:
        relay = lab.relay_between(lab.host("a"), lab.host("b"), drop=0.5)
        assert relay.alive()
    assert not relay.alive()


def test_bad_impairment_rejected() -> None:
    with pytest.raises(ValueError, match="drop"):
        Impairment(drop=1.5)
    with pytest.raises(ValueError):
        Impairment(delay=-1)
