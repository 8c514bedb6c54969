"""The NBD server at the protocol level, with a bare client that can send what real clients
never do: malformed options, unknown commands, out-of-range requests, and a read that
stalls so another request must overtake it."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoe.export import nbdproto as p
from aoe.export.blockdev import FileBlockDevice
from aoe.export.nbdserver import MAX_PAYLOAD, Connection, NbdExport, NbdServer

from .support.export import CountFlushes, PassThrough, RawNbd, random_image

SIZE = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    random_image(tmp_path / "disk.img", SIZE, seed=3)
    return tmp_path / "disk.img"


@pytest.fixture
def server(image: Path, tmp_path: Path) -> Iterator[NbdServer]:
    dev = FileBlockDevice(image)
    with NbdServer(dev, socket_path=tmp_path / "nbd.sock", name="e1.2",
                   description="test disk") as srv:
        srv.start()
        yield srv
    dev.close()


def connect(srv: NbdServer) -> RawNbd:
    return RawNbd.unix(srv.socket_path or "")


def go(srv: NbdServer, structured: bool = False) -> RawNbd:
    """A client in transmission phase on the server's export."""
    c = connect(srv)
    c.greeting()
    if structured:
        c.option(p.OPT_STRUCTURED_REPLY)
        assert c.option_reply()[1] == p.REP_ACK
    assert c.go(srv.export.name)[-1][0] == p.REP_ACK
    return c


def test_greeting_and_list(server: NbdServer) -> None:
    c = connect(server)
    flags = c.greeting()
    assert flags == p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
    c.option(p.OPT_LIST)
    option, reply, payload = c.option_reply()
    assert (option, reply) == (p.OPT_LIST, p.REP_SERVER)
    (n,) = struct.unpack_from(">I", payload)
    assert payload[4 : 4 + n] == b"e1.2" and payload[4 + n :] == b"test disk"
    assert c.option_reply()[1] == p.REP_ACK
    c.option(p.OPT_LIST, b"junk")
    assert c.option_reply()[1] == p.REP_ERR_INVALID
    c.option(p.OPT_ABORT)
    assert c.option_reply()[1] == p.REP_ACK
    assert c.closed_by_server()


def test_unknown_client_flags_end_the_session(server: NbdServer) -> None:
    c = connect(server)
    c.greeting(client_flags=0x80)
    assert c.closed_by_server()


def test_info_go_and_option_errors(server: NbdServer) -> None:
    c = connect(server)
    c.greeting()
    replies = c.go("nope", option=p.OPT_INFO)
    assert [r for r, _ in replies] == [p.REP_ERR_UNKNOWN]
    c.option(p.OPT_INFO, b"\x00\x00\x00\x09ab")  # name length beyond the data
    assert c.option_reply()[1] == p.REP_ERR_INVALID
    c.option(99)
    assert c.option_reply()[1] == p.REP_ERR_UNSUP
    c.option(p.OPT_STARTTLS)
    assert c.option_reply()[1] == p.REP_ERR_UNSUP
    replies = c.go("e1.2", requests=(p.INFO_BLOCK_SIZE, p.INFO_NAME, p.INFO_DESCRIPTION),
                   option=p.OPT_INFO)
    infos = {struct.unpack_from(">H", d)[0]: d[2:] for r, d in replies if r == p.REP_INFO}
    assert replies[-1][0] == p.REP_ACK
    size, flags = struct.unpack(">QH", infos[p.INFO_EXPORT])
    assert size == SIZE
    assert flags & p.TF_HAS_FLAGS and flags & p.TF_SEND_FLUSH and flags & p.TF_SEND_FUA
    assert flags & p.TF_CAN_MULTI_CONN and not flags & (p.TF_READ_ONLY | p.TF_SEND_TRIM)
    assert struct.unpack(">III", infos[p.INFO_BLOCK_SIZE]) == (512, 4096, MAX_PAYLOAD)
    assert infos[p.INFO_NAME] == b"e1.2" and infos[p.INFO_DESCRIPTION] == b"test disk"
    # INFO did not leave negotiation; the default (empty) name selects the same export
    assert c.go("")[-1][0] == p.REP_ACK
    c.request(p.CMD_READ, 7, 0, 16)
    assert c.simple_reply(16)[:2] == (0, 7)


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_enters_transmission(server: NbdServer, image: Path,
                                         no_zeroes: bool) -> None:
    c = connect(server)
    c.greeting(p.FLAG_C_FIXED_NEWSTYLE | (p.FLAG_C_NO_ZEROES if no_zeroes else 0))
    c.option(p.OPT_EXPORT_NAME, b"e1.2")
    size, flags = struct.unpack(">QH", c.recv(10))
    assert size == SIZE and flags & p.TF_HAS_FLAGS
    if not no_zeroes:
        assert c.recv(124) == bytes(124)
    c.request(p.CMD_READ, 1, 4096, 100)
    assert c.simple_reply(100) == (0, 1, image.read_bytes()[4096:4196])


def test_export_name_of_unknown_export_hangs_up(server: NbdServer) -> None:
    c = connect(server)
    c.greeting()
    c.option(p.OPT_EXPORT_NAME, b"other")
    assert c.closed_by_server()


def test_pipelined_requests_all_answered(server: NbdServer, image: Path) -> None:
    c = go(server)
    data = image.read_bytes()
    lengths = {}
    for k in range(40):  # everything sent before any reply is read
        off, n = k * 20000, 4096 + k * 100
        c.request(p.CMD_READ, 1000 + k, off, n)
        lengths[1000 + k] = (off, n)
    seen = set()
    for _ in range(40):
        error, cookie = p.parse_simple_reply(c.recv(16))
        off, n = lengths[cookie]
        assert error == 0 and c.recv(n) == data[off : off + n]
        seen.add(cookie)
    assert seen == set(lengths)


def test_writes_flush_zeroes_and_errors(server: NbdServer, image: Path) -> None:
    c = go(server)
    c.request(p.CMD_WRITE, 1, 8192, 5, data=b"hello")
    assert c.simple_reply() == (0, 1, b"")
    c.request(p.CMD_WRITE, 2, 9000, 3, flags=p.CMD_FLAG_FUA, data=b"abc")
    assert c.simple_reply() == (0, 2, b"")
    c.request(p.CMD_WRITE_ZEROES, 3, 65536, 3 * 65536 + 100, flags=p.CMD_FLAG_NO_HOLE)
    assert c.simple_reply() == (0, 3, b"")
    c.request(p.CMD_FLUSH, 4)
    assert c.simple_reply() == (0, 4, b"")
    now = image.read_bytes()
    assert now[8192:8197] == b"hello" and now[9000:9003] == b"abc"
    assert now[65536 : 4 * 65536 + 100] == bytes(3 * 65536 + 100)
    assert now[4 * 65536 + 100] != 0 or now[4 * 65536 + 101] != 0
    cases = [
        (p.CMD_READ, SIZE - 10, 20, 0, p.EINVAL),  # beyond the end
        (p.CMD_WRITE_ZEROES, SIZE - 512, 1024, 0, p.ENOSPC),
        (p.CMD_TRIM, 0, 4096, 0, p.EINVAL),  # not advertised: declined
        (p.CMD_BLOCK_STATUS, 0, 4096, 0, p.EINVAL),
        (42, 0, 0, 0, p.EINVAL),  # unknown command
        (p.CMD_READ, 0, 512, p.CMD_FLAG_DF, p.EINVAL),  # DF needs structured replies
        (p.CMD_WRITE_ZEROES, 0, 512, p.CMD_FLAG_FAST_ZERO, p.EINVAL),
    ]
    for n, (cmd, off, length, flags, expected) in enumerate(cases):
        c.request(cmd, 100 + n, off, length, flags)
        assert c.simple_reply() == (expected, 100 + n, b""), (cmd, off, length)
    c.request(p.CMD_WRITE, 200, SIZE - 2, 4, data=b"wxyz")  # payload is consumed anyway
    assert c.simple_reply() == (p.ENOSPC, 200, b"")
    c.request(p.CMD_READ, 201, 8192, 5)  # and the stream is still in step
    assert c.simple_reply(5) == (0, 201, b"hello")
    c.request(p.CMD_DISC, 202)
    assert c.closed_by_server()


def test_read_only_export_refuses_writes(image: Path, tmp_path: Path) -> None:
    before = image.read_bytes()
    with FileBlockDevice(image) as dev, NbdServer(dev, socket_path=tmp_path / "ro.sock",
                                                  read_only=True) as srv:
        srv.start()
        c = connect(srv)
        c.greeting()
        replies = c.go("")
        (flags,) = struct.unpack_from(">H", replies[0][1], 10)
        assert flags & p.TF_READ_ONLY
        c.request(p.CMD_WRITE, 1, 0, 4, data=b"nope")
        assert c.simple_reply() == (p.EPERM, 1, b"")
        c.request(p.CMD_WRITE_ZEROES, 2, 0, 4096)
        assert c.simple_reply() == (p.EPERM, 2, b"")
        c.request(p.CMD_READ, 3, 0, 4)
        assert c.simple_reply(4) == (0, 3, before[:4])
        c.close()
    assert image.read_bytes() == before


def test_structured_replies(server: NbdServer, image: Path) -> None:
    c = go(server, structured=True)
    c.request(p.CMD_READ, 5, 1000, 300, flags=p.CMD_FLAG_DF)
    magic, flags, kind, cookie, length = struct.unpack(">IHHQI", c.recv(20))
    assert (magic, cookie, kind) == (p.STRUCTURED_REPLY_MAGIC, 5, p.REPLY_TYPE_OFFSET_DATA)
    assert flags & p.REPLY_FLAG_DONE and length == 8 + 300
    payload = c.recv(length)
    assert struct.unpack_from(">Q", payload)[0] == 1000
    assert payload[8:] == image.read_bytes()[1000:1300]
    c.request(p.CMD_READ, 6, SIZE, 512)  # beyond the end: an error chunk
    magic, flags, kind, cookie, length = struct.unpack(">IHHQI", c.recv(20))
    assert (kind, cookie) == (p.REPLY_TYPE_ERROR, 6) and flags & p.REPLY_FLAG_DONE
    error, msg_len = struct.unpack_from(">IH", c.recv(length))
    assert error == p.EINVAL
    c.request(p.CMD_FLUSH, 7)  # non-read commands may still use simple replies
    assert c.simple_reply() == (0, 7, b"")


def test_flush_and_fua_call_the_device_flush(image: Path, tmp_path: Path) -> None:
    dev = CountFlushes(FileBlockDevice(image))
    with NbdServer(dev, socket_path=tmp_path / "c.sock") as srv:
        srv.start()
        c = go(srv)
        steps = [
            (p.CMD_WRITE, 0, b"plain", 0),
            (p.CMD_WRITE, p.CMD_FLAG_FUA, b"fua", 1),
            (p.CMD_WRITE_ZEROES, p.CMD_FLAG_FUA, b"", 1),
            (p.CMD_FLUSH, 0, b"", 1),
            (p.CMD_READ, 0, b"", 0),
        ]
        for n, (cmd, flags, data, flushes) in enumerate(steps):
            before = dev.flushes
            length = len(data) if cmd == p.CMD_WRITE else 0 if cmd == p.CMD_FLUSH else 512
            c.request(cmd, n, 4096, length, flags, data)
            assert c.simple_reply(512 if cmd == p.CMD_READ else 0)[:2] == (0, n)
            assert dev.flushes - before == flushes, (cmd, flags)
        c.close()
    dev.close()


class GatedDevice(FileBlockDevice):
    """A file device whose reads at one offset wait for a gate, so that a request can be
    held in flight while others are served."""

    def __init__(self, path: Path, gated_offset: int) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gated_offset = gated_offset

    def read(self, offset: int, length: int) -> bytes:
        if offset == self.gated_offset:
            assert self.gate.wait(20), "gate never opened"
        return super().read(offset, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        if offset == self.gated_offset:
            assert self.gate.wait(20), "gate never opened"
        return super().readinto(offset, buf)


def test_replies_overtake_a_stalled_request(image: Path, tmp_path: Path) -> None:
    dev = GatedDevice(image, gated_offset=4096)
    with NbdServer(dev, socket_path=tmp_path / "g.sock") as srv:
        srv.start()
        c = go(srv)
        c.request(p.CMD_READ, 1, 4096, 512)  # stalls in the device
        c.request(p.CMD_READ, 2, 0, 512)
        error, cookie, _ = c.simple_reply(512)
        assert (error, cookie) == (0, 2)  # answered while 1 is still in flight
        dev.gate.set()
        assert c.simple_reply(512)[:2] == (0, 1)
        c.close()
    dev.close()


class FailingDevice(FileBlockDevice):
    """A file device with one unreadable sector."""

    def read(self, offset: int, length: int) -> bytes:
        if offset <= 0x8000 < offset + length:
            raise OSError(5, "medium error")
        return super().read(offset, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        if offset <= 0x8000 < offset + len(buf):
            raise OSError(5, "medium error")
        return super().readinto(offset, buf)


def test_device_errors_become_eio_and_session_goes_on(image: Path, tmp_path: Path) -> None:
    dev = FailingDevice(image)
    with NbdServer(dev, socket_path=tmp_path / "f.sock") as srv:
        srv.start()
        c = go(srv)
        c.request(p.CMD_READ, 1, 0x8000, 512)
        assert c.simple_reply(512) == (p.EIO, 1, b"")
        c.request(p.CMD_READ, 2, 0, 512)
        assert c.simple_reply(512)[:2] == (0, 2)
        c.close()
    dev.close()


class HeldDevice(FileBlockDevice):
    """Counts device calls; a read at offset 0 waits for a gate (so requests pile up in
    the server's queue meanwhile); reads covering BAD fail."""

    BAD = 0xE0000

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.arrived = threading.Event()
        self.gate = threading.Event()
        self.reads = self.writes = 0

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        self.reads += 1
        if offset == 0:
            self.arrived.set()
            assert self.gate.wait(20), "gate never opened"
        if offset <= self.BAD < offset + len(buf):
            raise OSError(5, "medium error")
        return super().readinto(offset, buf)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        super().write(offset, data)


def test_contiguous_requests_share_one_device_call(image: Path) -> None:
    CHUNK = 32768  # noqa: N806
    dev = HeldDevice(image)
    ours, theirs = socket.socketpair()
    conn = Connection(ours, NbdExport(dev), handshake=False, workers=1)
    t = threading.Thread(target=conn.run)
    t.start()
    c = RawNbd(theirs)
    data = bytearray(image.read_bytes())

    def hold_then(requests: list[tuple[int, int, int, bytes]]) -> None:
        """Park the only worker on a gated read, queue `requests`, then release."""
        dev.arrived.clear()
        dev.gate.clear()
        c.request(p.CMD_READ, 999, 0, 512)
        assert dev.arrived.wait(10)
        for cmd, cookie, off, payload in requests:
            c.request(cmd, cookie, off, CHUNK if cmd == p.CMD_READ else len(payload),
                      data=payload)
        for _ in range(1000):  # wait until the reader has taken them all in
            if conn.queued() == len(requests) + 1:
                break
            threading.Event().wait(0.01)
        assert conn.queued() == len(requests) + 1
        dev.gate.set()
        assert c.simple_reply(512)[:2] == (0, 999)

    hold_then([(p.CMD_READ, k, k * CHUNK, b"") for k in range(1, 17)])
    for _ in range(16):
        error, cookie = p.parse_simple_reply(c.recv(16))
        assert error == 0
        assert c.recv(CHUNK) == data[cookie * CHUNK : (cookie + 1) * CHUNK]
    assert dev.reads == 2  # the gated one, then all sixteen at once

    writes = [(p.CMD_WRITE, 100 + k, 4096 * k, bytes([k]) * 4096) for k in range(8)]
    hold_then(writes)
    assert sorted(c.simple_reply()[1] for _ in writes) == [100 + k for k in range(8)]
    assert dev.writes == 1
    for _, _, off, payload in writes:
        data[off : off + len(payload)] = payload
    assert image.read_bytes() == bytes(data)

    bad = HeldDevice.BAD // CHUNK
    hold_then([(p.CMD_READ, 200 + k, (bad - 1 + k) * CHUNK, b"") for k in range(3)])
    assert sorted(c.simple_reply() for _ in range(3)) == [(p.EIO, 200 + k, b"")
                                                           for k in range(3)]
    c.request(p.CMD_READ, 300, 65536, 512)
    assert c.simple_reply(512) == (0, 300, bytes(data[65536 : 65536 + 512]))
    c.request(p.CMD_DISC, 301)
    t.join(10)
    c.close()
    dev.close()


def test_bad_request_magic_is_a_hard_disconnect(server: NbdServer) -> None:
    c = go(server)
    c.sock.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, p.CMD_READ, 1, 0, 512))
    assert c.closed_by_server()


def test_transmission_only_session_as_the_kernel_speaks(image: Path) -> None:
    """What /dev/nbdN does after `aoe attach`: no handshake, requests straight away."""
    ours, theirs = socket.socketpair()
    dev = FileBlockDevice(image)
    conn = Connection(ours, NbdExport(dev), handshake=False)
    t = threading.Thread(target=conn.run)
    t.start()
    c = RawNbd(theirs)
    c.request(p.CMD_WRITE, 1, 512, 4, data=b"KERN")
    assert c.simple_reply() == (0, 1, b"")
    c.request(p.CMD_READ, 2, 510, 8)
    data = image.read_bytes()
    assert c.simple_reply(8) == (0, 2, data[510:512] + b"KERN" + data[516:518])
    c.request(p.CMD_DISC, 3)
    t.join(10)
    assert not t.is_alive()
    c.close()
    dev.close()


def test_server_refuses_a_live_socket_and_cleans_its_own(image: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.sock"
    with FileBlockDevice(image) as dev:
        with NbdServer(dev, socket_path=path) as srv:
            srv.start()
            with pytest.raises(FileExistsError):
                NbdServer(dev, socket_path=path)
        assert not path.exists()
        (tmp_path / "plain").write_text("x")
        with pytest.raises(FileExistsError):
            NbdServer(dev, socket_path=tmp_path / "plain")


class RoundDevice(PassThrough):
    """A file device that completes reads on its own thread, in rounds, like an AoE disk:
    every request of a round gets its ``on_done``, then the completion hooks run."""

    def __init__(self, dev: FileBlockDevice, round_size: int) -> None:
        super().__init__(dev)
        self.round_size = round_size
        self.hooks: list[object] = []
        self.waiting: list[tuple[int, memoryview, object]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # the test lets the hooks run

    def add_completion_hook(self, hook: object) -> None:
        self.hooks.append(hook)

    def remove_completion_hook(self, hook: object) -> None:
        self.hooks.remove(hook)

    def submit_read(self, offset: int, buf: memoryview, on_done: object) -> bool:
        with self.lock:
            self.waiting.append((offset, buf, on_done))
            if len(self.waiting) < self.round_size:
                return True
            batch, self.waiting = self.waiting, []
        threading.Thread(target=self._complete, args=(batch,), daemon=True).start()
        return True

    def _complete(self, batch: list[tuple[int, memoryview, object]]) -> None:
        for offset, buf, on_done in batch:
            buf[:] = self.dev.read(offset, len(buf))
            on_done(None)  # type: ignore[operator]
        self.release.wait(10)
        for hook in list(self.hooks):
            hook()  # type: ignore[operator]


def test_replies_completed_together_are_sent_together(image: Path, tmp_path: Path) -> None:
    """Reads completed in one round of a device's I/O thread are answered by its
    completion hook, all at once, not one send per completion; the hook goes when the
    client does."""
    dev = FileBlockDevice(image)
    rounds = RoundDevice(dev, round_size=8)
    data = image.read_bytes()
    with NbdServer(rounds, socket_path=tmp_path / "r.sock") as srv:  # type: ignore[arg-type]
        srv.start()
        c = go(srv)
        try:
            for i in range(8):
                c.request(p.CMD_READ, i, i * 4096, 4096)
            c.sock.settimeout(0.3)
            with pytest.raises(TimeoutError):  # done, but held for the round's end
                c.sock.recv(1, socket.MSG_PEEK)
            assert len(rounds.hooks) == 1
            rounds.release.set()
            c.sock.settimeout(10)
            got = {}
            for _ in range(8):
                error, cookie, payload = c.simple_reply(4096)
                got[cookie] = (error, payload)
            assert got == {i: (0, data[i * 4096:(i + 1) * 4096]) for i in range(8)}
            c.request(p.CMD_DISC, 99)
            assert c.closed_by_server()
        finally:
            c.close()
        for _ in range(100):  # the connection's thread unhooks as it ends
            if not rounds.hooks:
                break
            time.sleep(0.05)
        assert rounds.hooks == []
    dev.close()
