"""What an NBD client sends, cut into messages: one receive buffer for every phase.

The handshake and a blocking reader take exact byte counts; the AoE session's I/O thread,
which serves the socket itself when the device allows it, takes whatever has arrived
without waiting and cuts it into requests (a WRITE with its payload), keeping an
incomplete one for the next time. Many small requests then cost one ``recv``, and a
large payload is received straight into its own buffer.
"""

from __future__ import annotations

import socket

from aoe.export import nbdproto as p

BUFFER = 256 << 10  # bytes received at once (many request headers, or small writes)

Payload = bytes | bytearray


class Inbox:
    """The bytes received from one client and not used yet."""

    def __init__(self, sock: socket.socket, max_payload: int, size: int = BUFFER) -> None:
        self.sock = sock
        self.max_payload = max_payload  # a larger WRITE is a protocol error
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)
        self._start = 0  # unused bytes are _buf[_start:_end]
        self._end = 0
        # A WRITE whose payload is still arriving: the request, its buffer, bytes in it.
        self._req: p.Request | None = None
        self._payload = bytearray()
        self._filled = 0

    def read_exact(self, n: int) -> bytes:
        """The next ``n`` bytes, waiting for them (handshake); EOFError at the end."""
        if n > len(self._buf):
            data = bytearray(n)
            have = self._take_buffered(data)
            self._receive_into(memoryview(data)[have:], True)
            return bytes(data)
        self._fill(n, True)
        start = self._start
        self._start = start + n
        return bytes(self._mv[start : start + n])

    def next_request(self, wait: bool) -> tuple[p.Request, Payload] | None:
        """The next whole request and its payload (empty but for WRITE). Without ``wait``
        it takes only what has arrived and says None when that is not a whole request.
        Raises EOFError when the client has closed, ProtocolError on garbage."""
        req = self._req
        if req is None:
            if self._end - self._start < p.REQUEST_LEN and not self._fill(p.REQUEST_LEN, wait):
                return None
            req = p.parse_request(self._buf, self._start)
            self._start += p.REQUEST_LEN
            if req.command != p.CMD_WRITE or not req.length:
                return req, b""
            if req.length > self.max_payload:
                raise p.ProtocolError(f"write of {req.length} bytes")
            start, have = self._start, self._end - self._start
            if have >= req.length:  # the usual case: the payload came with its header
                self._start = start + req.length
                return req, bytes(self._mv[start : self._start])
            self._req = req
            self._payload = bytearray(req.length)
            self._filled = self._take_buffered(self._payload)
        self._filled += self._receive_into(memoryview(self._payload)[self._filled :], wait)
        if self._filled < len(self._payload):
            return None
        payload, self._req, self._payload = self._payload, None, bytearray()
        return req, payload

    # -- receiving ---------------------------------------------------------------------

    def _take_buffered(self, data: bytearray) -> int:
        """Move the buffered bytes (no more than fit) to the front of ``data``; how many."""
        have = min(len(data), self._end - self._start)
        data[:have] = self._mv[self._start : self._start + have]
        self._start += have
        if self._start == self._end:
            self._start = self._end = 0
        return have

    def _recv_once(self, view: memoryview, wait: bool) -> int | None:
        """One ``recv`` into ``view``: the bytes received, None when nothing has arrived
        (without ``wait``); EOFError when the client has closed."""
        try:
            got = self.sock.recv_into(view, 0, 0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        if not got:
            raise EOFError("client closed the connection")
        return got

    def _fill(self, need: int, wait: bool) -> bool:
        """At least ``need`` unused bytes in the buffer (False: not yet, without wait)."""
        if self._start + need > len(self._buf):  # move the unused bytes to the front
            have = self._end - self._start
            self._buf[:have] = self._mv[self._start : self._end]
            self._start, self._end = 0, have
        while self._end - self._start < need:
            got = self._recv_once(self._mv[self._end :], wait)
            if got is None:
                return False
            self._end += got
        return True

    def _receive_into(self, view: memoryview, wait: bool) -> int:
        """Fill ``view`` straight from the socket (a large payload is not copied twice);
        without ``wait`` only with what has arrived. Returns the bytes received."""
        at = 0
        while at < len(view):
            got = self._recv_once(view[at:], wait)
            if got is None:
                break
            at += got
        return at
