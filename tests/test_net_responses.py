"""The loop that discovery, the admin commands and the owner probe share: AoE responses
from a few sockets until a deadline the consumer may move."""

from __future__ import annotations

import socket
import time

from aoe.net.responses import responses
from aoe.protocol import Command, ConfigBody, Frame, HeaderFlag, encode

US = bytes.fromhex("020000000001")
THEM = bytes.fromhex("020000000002")


class Port:
    """One end of a datagram pair standing in for a raw socket; the test writes frames
    into the other end."""

    def __init__(self, fail: bool = False) -> None:
        self.ours, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fail = fail
        self.reads = 0

    def fileno(self) -> int:
        return self.ours.fileno()

    def recv_nowait(self, size: int = 65536) -> bytes | None:
        self.reads += 1
        if self.fail:
            raise OSError(100, "Network is down")
        try:
            return self.ours.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.ours.close()
        self.wire.close()


def _config(tag: int, response: bool = True) -> bytes:
    flags = HeaderFlag.RESPONSE if response else 0
    return encode(Frame(US, THEM, 1, 0, Command.QUERY_CONFIG, tag, ConfigBody(),
                        flags=flags), pad=True)


def test_only_decodable_responses_come_out_with_their_port() -> None:
    a, b = Port(), Port()
    try:
        a.wire.send(b"\x00" * 20)  # too short to decode
        a.wire.send(_config(1, response=False))  # a request: not an answer
        a.wire.send(_config(2))
        b.wire.send(_config(3))
        got = [(port, frame.tag) for port, frame, _ in
               responses([a, b], [time.monotonic() + 0.2])]
    finally:
        a.close()
        b.close()
    assert sorted((id(p), tag) for p, tag in got) == sorted([(id(a), 2), (id(b), 3)])


def test_a_failing_port_is_left_out_and_the_others_still_heard() -> None:
    bad, good = Port(fail=True), Port()
    try:
        bad.wire.send(_config(1))  # readable, but its socket fails
        good.wire.send(_config(2))
        t0 = time.monotonic()
        got = [frame.tag for _, frame, _ in responses([bad, good], [t0 + 0.3])]
        took = time.monotonic() - t0
    finally:
        bad.close()
        good.close()
    assert got == [2]
    assert bad.reads == 1  # dropped after its first failure, not polled again and again
    assert took >= 0.25  # the others are still listened to until the deadline


def test_the_consumer_may_end_the_wait_early() -> None:
    a = Port()
    try:
        a.wire.send(_config(7))
        deadline = [time.monotonic() + 30.0]
        t0 = time.monotonic()
        for _, frame, _ in responses([a], deadline):
            assert frame.tag == 7
            deadline[0] = 0.0  # heard enough
        took = time.monotonic() - t0
    finally:
        a.close()
    assert took < 10.0
