"""The NBD request reader: the client's byte stream cut into requests, however it arrives.

Requests are taken without waiting (as the AoE session's I/O thread takes them) from a
stream delivered in pieces of every size, a WRITE's payload split anywhere; the same
buffer serves the handshake's exact reads and a blocking reader.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from aoe.export import nbdproto as p
from aoe.export.nbdinput import Inbox

MAX = 1 << 20


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    yield ours, theirs
    ours.close()
    theirs.close()


def _stream(rng: random.Random, count: int) -> tuple[bytes, list[tuple[p.Request, bytes]]]:
    """``count`` requests (reads, writes of 0 to 300 KiB, a flush now and then) as bytes."""
    wire = bytearray()
    expected: list[tuple[p.Request, bytes]] = []
    for cookie in range(count):
        kind = rng.choice((p.CMD_READ, p.CMD_WRITE, p.CMD_WRITE, p.CMD_FLUSH))
        length = rng.choice((0, 100, 512, 4096, 70000, 300 << 10)) if kind != p.CMD_FLUSH else 0
        payload = rng.randbytes(length) if kind == p.CMD_WRITE else b""
        req = p.Request(0, kind, cookie, rng.randrange(1 << 30), length)
        wire += p.pack_request(kind, cookie, req.offset, length) + payload
        expected.append((req, payload))
    return bytes(wire), expected


@pytest.mark.parametrize("buffer", [100, 1000, 64 << 10])
def test_requests_come_whole_from_pieces_of_any_size(
        pair: tuple[socket.socket, socket.socket], buffer: int) -> None:
    """Taken without waiting after each piece: a request is returned only once whole (a
    WRITE's payload too), in order, never twice; nothing is returned early. Buffers
    smaller than a payload, and than a few headers, are refilled and compacted."""
    ours, theirs = pair
    rng = random.Random(7)
    wire, expected = _stream(rng, 300)
    inbox = Inbox(ours, MAX, size=buffer)
    got: list[tuple[p.Request, bytes]] = []
    at = 0
    while at < len(wire):
        piece = rng.choice((1, 3, 27, 28, 29, 500, 4096, 65536, 200000))
        theirs.sendall(wire[at : at + piece])
        at += piece
        while (item := inbox.next_request(False)) is not None:
            req, payload = item
            got.append((req, bytes(payload)))
        sent_whole = sum(p.REQUEST_LEN + len(pl) for _, pl in got)
        assert sent_whole <= min(at, len(wire))
    assert got == expected
    assert inbox.next_request(False) is None  # nothing more: not an error


def test_a_blocking_reader_and_the_handshake_share_the_buffer(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Exact reads (the handshake) and a blocking request reader take from the same
    bytes: a request sent right behind the handshake is not lost in a buffer."""
    ours, theirs = pair
    inbox = Inbox(ours, MAX, size=4096)
    big = bytes(range(256)) * 40  # longer than the buffer
    theirs.sendall(b"\x00\x01\x02\x03" + big + p.pack_request(p.CMD_WRITE, 5, 0, 9) + b"ninebytes")
    assert inbox.read_exact(4) == b"\x00\x01\x02\x03"
    assert inbox.read_exact(len(big)) == big
    item = inbox.next_request(True)
    assert item is not None
    assert item[0].cookie == 5 and bytes(item[1]) == b"ninebytes"


def test_end_of_stream_and_garbage_are_errors(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    inbox = Inbox(ours, MAX)
    theirs.sendall(p.pack_request(p.CMD_WRITE, 1, 0, 4096) + b"x" * 100)
    assert inbox.next_request(False) is None  # the payload is still coming
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        inbox.next_request(False)

    a, b = socket.socketpair()
    try:
        bad = Inbox(a, MAX)
        b.sendall(b"\xde\xad\xbe\xef" + bytes(24))
        with pytest.raises(p.ProtocolError):
            bad.next_request(False)
        big = Inbox(a, MAX)
        b.sendall(p.pack_request(p.CMD_WRITE, 2, 0, MAX + 1))
        with pytest.raises(p.ProtocolError, match="write of"):
            big.next_request(True)
    finally:
        a.close()
        b.close()
