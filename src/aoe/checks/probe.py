"""Request/answer exchanges with one AoE target over a raw socket, for the test tools.

The conformance suite, the fuzzer and `aoe ping` all need the same thing: send a frame
(possibly with a forged source MAC, to play a second initiator), then gather the answers
carrying its tag for a while, or prove that none came. The socket joins the interface in
promiscuous mode so answers sent to a forged MAC are seen on real NICs too; the kernel
drops that membership when the socket closes.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from ..net.rawsock import RawSocket
from ..protocol import (
    BROADCAST_MAC,
    AtaBody,
    AtaFlag,
    Body,
    Command,
    ConfigBody,
    DecodeError,
    Frame,
    HeaderFlag,
    decode,
    encode,
)
from ..protocol.ata import lba_field

_RESPONSE = int(HeaderFlag.RESPONSE)


@dataclass(slots=True)
class Reply:
    """One answer: the decoded frame (header only when the body was malformed), raw bytes,
    round-trip time in seconds, and why decoding failed, if it did."""

    frame: Frame
    raw: bytes
    rtt: float
    decode_error: str | None = None

    @property
    def ata(self) -> AtaBody:
        if not isinstance(self.frame.body, AtaBody):
            raise TypeError(f"answer carries no ATA body ({self.decode_error or 'raw'})")
        return self.frame.body

    @property
    def config(self) -> ConfigBody:
        if not isinstance(self.frame.body, ConfigBody):
            raise TypeError(f"answer carries no Query Config body ({self.decode_error or 'raw'})")
        return self.frame.body


def decode_reply(raw: bytes, rtt: float = 0.0) -> Reply | None:
    """Decode an answer leniently: a readable header is enough to report on it."""
    try:
        return Reply(decode(raw), raw, rtt)
    except DecodeError as exc:
        if isinstance(exc.header, Frame):
            return Reply(exc.header, raw, rtt, str(exc))
        return None


class Probe:
    """Talks to the target ``shelf.slot`` through ``ifname``.

    ``timeout`` bounds each wait for an answer (and each proof of silence); ``retries``
    resends an unanswered request that should have been answered, as any initiator would.
    """

    def __init__(
        self,
        ifname: str,
        shelf: int,
        slot: int,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        promiscuous: bool = True,
    ) -> None:
        self.ifname = ifname
        self.shelf = shelf
        self.slot = slot
        self.timeout = timeout
        self.retries = retries
        self.sock = RawSocket(ifname, promiscuous=promiscuous)
        self.mac: bytes = self.sock.mac
        self.mtu: int = self.sock.mtu
        self.target_mac: bytes | None = None
        self.promiscuous = self.sock.promiscuous
        self._tag = random.Random(os.getpid() ^ time.monotonic_ns()).getrandbits(31)
        self._buf = bytearray(65536)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building -----------------------------------------------------------------
    def next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0x7FFFFFFF
        return self._tag

    def frame(
        self,
        command: int,
        body: Body,
        *,
        src: bytes | None = None,
        dst: bytes | None = None,
        shelf: int | None = None,
        slot: int | None = None,
        tag: int | None = None,
        flags: int = 0,
        version: int = 1,
    ) -> Frame:
        """A request to the target (unicast once its MAC is known, broadcast before)."""
        return Frame(
            dst or self.target_mac or BROADCAST_MAC,
            src or self.mac,
            self.shelf if shelf is None else shelf,
            self.slot if slot is None else slot,
            command,
            self.next_tag() if tag is None else tag,
            body,
            flags,
            0,
            version,
        )

    # --- exchanging ---------------------------------------------------------------
    def send(self, frame: Frame | bytes) -> float:
        """Send a frame (padded to 60 bytes) or raw bytes as they are; returns send time."""
        raw = encode(frame, pad=True) if isinstance(frame, Frame) else frame
        sent = time.monotonic()
        self.sock.send(raw)
        return sent

    def gather(
        self, tag: int, sent: float, wait: float, *, first: bool, src: bytes | None = None
    ) -> list[Reply]:
        """Answers carrying ``tag`` until ``wait`` seconds after ``sent`` (or the first)."""
        replies: list[Reply] = []
        deadline = sent + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return replies
            self.sock.settimeout(left)
            try:
                n = self.sock.recv_into(self._buf)
            except (TimeoutError, BlockingIOError):
                return replies
            now = time.monotonic()
            if n < 24 or not self._buf[14] & _RESPONSE:
                continue
            if int.from_bytes(self._buf[20:24], "big") != tag:
                continue
            if src is not None and bytes(self._buf[6:12]) != src:
                continue
            reply = decode_reply(bytes(self._buf[:n]), now - sent)
            if reply is None:
                continue
            replies.append(reply)
            if first:
                return replies

    def exchange(
        self, frame: Frame, *, retries: int | None = None, src: bytes | None = None
    ) -> Reply | None:
        """Send ``frame`` and return the target's first answer, resending if none came.

        Only answers from the target's MAC count (from ``src`` if given; from anyone when
        the MAC is not known yet).
        """
        src = src or self.target_mac
        for _ in range((self.retries if retries is None else retries) + 1):
            sent = self.send(frame)
            got = self.gather(frame.tag, sent, self.timeout, first=True, src=src)
            if got:
                return got[0]
        return None

    def silence(self, frame: Frame | bytes, tag: int | None = None) -> list[Reply]:
        """Send once and collect the target's answers for the whole timeout (none: silence)."""
        if tag is None:
            if not isinstance(frame, Frame):
                raise ValueError("raw frames need an explicit tag")
            tag = frame.tag
        sent = self.send(frame)
        return self.gather(tag, sent, self.timeout, first=False, src=self.target_mac)

    # --- the target -----------------------------------------------------------------
    def discover(self) -> Reply | None:
        """Find the target's MAC with a broadcast Query Config for its shelf.slot."""
        frame = self.frame(Command.QUERY_CONFIG, ConfigBody(), dst=BROADCAST_MAC)
        for _ in range(self.retries + 1):
            sent = self.send(frame)
            while got := self.gather(frame.tag, sent, self.timeout, first=True):
                reply = got[0]
                if (reply.frame.shelf, reply.frame.slot) == (self.shelf, self.slot):
                    self.target_mac = reply.frame.src
                    return reply
        return None

    def config(
        self, ccmd: int = 0, config: bytes = b"", *, retries: int | None = None, **kw: Any
    ) -> Reply | None:
        body = ConfigBody(ccmd=ccmd, config=config)
        return self.exchange(self.frame(Command.QUERY_CONFIG, body, **kw), retries=retries)

    def ata_frame(
        self,
        opcode: int,
        lba: int = 0,
        count: int = 0,
        *,
        ext: bool = True,
        data: bytes = b"",
        write: bool = False,
        **kw: Any,
    ) -> Frame:
        aflags = (AtaFlag.EXTENDED if ext else 0) | (AtaFlag.WRITE if write else 0)
        body = AtaBody(int(aflags), 0, count, opcode, lba_field(lba, ext), data)
        return self.frame(Command.ATA, body, **kw)

    def ata(self, opcode: int, lba: int = 0, count: int = 0, **kw: Any) -> Reply | None:
        return self.exchange(self.ata_frame(opcode, lba, count, **kw))

    def read_many(self, lba: int, count: int, per_frame: int, window: int = 16) -> bytes:
        """Read ``count`` sectors with up to ``window`` READ SECTORS EXT requests in flight,
        resending lost ones; OSError if the target refuses or stops answering."""
        per_frame = max(1, per_frame)
        todo = [(s, min(per_frame, lba + count - s)) for s in range(lba, lba + count, per_frame)]
        todo.reverse()
        pending: dict[int, tuple[int, int, float, int]] = {}  # tag -> (lba, n, sent, tries)
        got: dict[int, bytes] = {}
        while todo or pending:
            while todo and len(pending) < window:
                start, n = todo.pop()
                self._send_read(pending, start, n, 0)
            self.sock.settimeout(min(0.05, self.timeout))
            try:
                size = self.sock.recv_into(self._buf)
            except (TimeoutError, BlockingIOError):
                size = 0
            if size >= 24 and self._buf[14] & _RESPONSE:
                tag = int.from_bytes(self._buf[20:24], "big")
                if tag in pending:
                    start, n, _, _ = pending.pop(tag)
                    reply = decode_reply(bytes(self._buf[:size]))
                    body = reply.frame.body if reply else None
                    if (reply is None or reply.frame.is_error or not isinstance(body, AtaBody)
                            or body.cmd_status & 0x01 or len(body.data) != n * 512):
                        raise OSError(f"read of {n} sectors at {start} failed")
                    got[start] = bytes(body.data)
            now = time.monotonic()
            for tag, (start, n, sent, tries) in list(pending.items()):
                if now - sent > self.timeout:
                    del pending[tag]
                    if tries >= self.retries:
                        raise TimeoutError(f"no answer to a read of {n} sectors at {start}")
                    self._send_read(pending, start, n, tries + 1)
        return b"".join(got[s] for s in sorted(got))

    def _send_read(self, pending: dict[int, tuple[int, int, float, int]], start: int, n: int,
                   tries: int) -> None:
        frame = self.ata_frame(0x24, start, n)
        pending[frame.tag] = (start, n, self.send(frame), tries)
