"""An NBD connection whose requests are read on the device's own I/O thread.

An AoE disk lets the NBD server hand its client socket to the session's I/O thread
(`watch`): requests are then read, submitted and answered on one thread. The device
here has such a thread of its own, like a session: it polls the watched sockets, runs
their callbacks, completes what was submitted and then runs the completion hooks.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aoe.export import nbdproto as p
from aoe.export.blockdev import FileBlockDevice
from aoe.export.nbdserver import MAX_QUEUED, WEIGHT_BYTES, Connection, NbdExport

from .support.export import PassThrough, RawNbd, random_image

SIZE = 4 << 20


class ThreadedDevice(PassThrough):
    """A file device completing aligned reads and writes on its own I/O thread, which
    also serves watched fds (the duck type the NBD server finds on an AoeDisk)."""

    def __init__(self, dev: FileBlockDevice) -> None:
        super().__init__(dev)
        self.hooks: list[Callable[[], None]] = []
        self.watched: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self.kicked: list[int] = []
        self.done: list[Callable[[], None]] = []
        self.submitters: set[str] = set()  # names of the threads that submitted
        self.submitted = 0
        self.holding = False  # completions wait for release()
        self.ended = False
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="device-io", daemon=True)
        self.thread.start()

    # what an AoeDisk adds to the blocking calls (which serve the work queue's path)
    def add_completion_hook(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def remove_completion_hook(self, hook: Callable[[], None]) -> None:
        self.hooks.remove(hook)

    def watch(self, fd: int, on_ready: Callable[[], None], on_end: Callable[[], None]) -> None:
        with self.lock:
            if self.ended:
                raise OSError(errno.ESHUTDOWN, "the device's session ended")
            self.watched[fd] = (on_ready, on_end)
            self.kicked.append(fd)
        os.write(self.wake_w, b"w")

    def unwatch(self, fd: int) -> None:
        with self.lock:
            self.watched.pop(fd, None)

    def submit_read(self, offset: int, buf: memoryview,
                    on_done: Callable[[BaseException | None], None]) -> bool:
        def complete() -> None:
            buf[:] = self.dev.read(offset, len(buf))
            on_done(None)
        return self._submit(complete)

    def submit_write(self, offset: int, data: memoryview,
                     on_done: Callable[[BaseException | None], None]) -> bool:
        def complete() -> None:
            self.dev.write(offset, bytes(data))
            on_done(None)
        return self._submit(complete)

    def _submit(self, complete: Callable[[], None]) -> bool:
        with self.lock:
            if self.ended:
                raise OSError(errno.EIO, "the device's session ended")
            self.submitters.add(threading.current_thread().name)
            self.submitted += 1
            self.done.append(complete)
        if threading.current_thread() is not self.thread:
            os.write(self.wake_w, b"s")
        return True

    def release(self) -> None:
        self.holding = False
        os.write(self.wake_w, b"r")

    def end(self) -> None:
        """The session stops: watchers hear it (on this thread), submits fail from now."""
        with self.lock:
            self.ended = True
        os.write(self.wake_w, b"e")
        self.thread.join(10)

    def _run(self) -> None:
        while True:
            with self.lock:
                fds = list(self.watched)
            poller = select.poll()
            poller.register(self.wake_r, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            ready = [fd for fd, _ in poller.poll(50)]
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            if self.ended:
                break
            with self.lock:
                ready += self.kicked
                self.kicked = []
            for fd in ready:
                entry = self.watched.get(fd)
                if entry is not None:
                    entry[0]()
            if not self.holding:
                with self.lock:
                    batch, self.done = self.done, []
                for complete in batch:
                    complete()
                if batch:
                    for hook in list(self.hooks):
                        hook()
        with self.lock:
            ends = [on_end for _, on_end in self.watched.values()]
            self.watched = {}
        for on_end in ends:
            on_end()

    def close(self) -> None:
        if not self.ended:
            self.end()
        os.close(self.wake_r)
        os.close(self.wake_w)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    random_image(path, SIZE, seed=3)
    return path


@pytest.fixture
def served(image: Path) -> Iterator[tuple[ThreadedDevice, Connection, RawNbd, threading.Thread]]:
    dev = ThreadedDevice(FileBlockDevice(image))
    ours, theirs = socket.socketpair()
    conn = Connection(ours, NbdExport(dev), handshake=False)  # type: ignore[arg-type]
    t = threading.Thread(target=conn.run, name="nbd-conn")
    t.start()
    client = RawNbd(theirs)
    yield dev, conn, client, t
    client.close()
    t.join(10)
    dev.close()
    dev.dev.close()


def _wait_for(check: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_requests_are_read_and_answered_on_the_device_thread(
        served: tuple[ThreadedDevice, Connection, RawNbd, threading.Thread],
        image: Path) -> None:
    """Reads and writes, many in one send and a write's payload in pieces, are taken in
    on the device's thread only; every reply is right; DISC ends the connection."""
    dev, _conn, c, t = served
    data = bytearray(image.read_bytes())
    burst = b"".join(p.pack_request(p.CMD_READ, k, k * 4096, 4096) for k in range(20))
    c.sock.sendall(burst)
    replies = {}
    for _ in range(20):
        error, cookie, payload = c.simple_reply(4096)
        replies[cookie] = (error, payload)
    assert replies == {k: (0, bytes(data[k * 4096 : (k + 1) * 4096])) for k in range(20)}

    payload = os.urandom(64 << 10)
    head = p.pack_request(p.CMD_WRITE, 99, 1 << 20, len(payload))
    for piece in (head[:10], head[10:] + payload[:5000], payload[5000:40000], payload[40000:]):
        c.sock.sendall(piece)
        time.sleep(0.02)
    assert c.simple_reply() == (0, 99, b"")
    data[1 << 20 : (1 << 20) + len(payload)] = payload
    assert image.read_bytes() == bytes(data)
    assert dev.submitters == {"device-io"}
    c.request(p.CMD_DISC, 100)
    t.join(10)
    assert not t.is_alive()
    assert dev.watched == {}


def test_reading_pauses_while_too_many_are_unanswered(
        served: tuple[ThreadedDevice, Connection, RawNbd, threading.Thread],
        image: Path) -> None:
    """With MAX_QUEUED requests unanswered the device thread stops taking requests in
    (the rest wait in the socket), and goes on once answers went out."""
    dev, conn, c, _t = served
    dev.holding = True
    extra = 10
    c.sock.sendall(b"".join(p.pack_request(p.CMD_READ, k, k * 512, 512)
                            for k in range(MAX_QUEUED + extra)))
    _wait_for(lambda: dev.submitted == MAX_QUEUED, "the first requests taken in")
    time.sleep(0.2)
    assert dev.submitted == MAX_QUEUED and conn.queued() == MAX_QUEUED
    dev.release()
    data = image.read_bytes()
    got = sorted(c.simple_reply(512) for _ in range(MAX_QUEUED + extra))
    assert got == [(0, k, data[k * 512 : (k + 1) * 512]) for k in range(MAX_QUEUED + extra)]
    assert dev.submitters == {"device-io"}


def test_large_requests_count_by_the_data_they_hold(
        served: tuple[ThreadedDevice, Connection, RawNbd, threading.Thread],
        image: Path) -> None:
    """Reading ahead is bounded by memory too: a 2 MiB read weighs three small ones, so
    far fewer of them are taken in before reading pauses."""
    dev, conn, c, _t = served
    dev.holding = True
    size = 2 * WEIGHT_BYTES
    weight = 1 + size // WEIGHT_BYTES
    taken = -(-MAX_QUEUED // weight)  # taken while the weight is below MAX_QUEUED
    count = taken + 4
    c.sock.sendall(b"".join(p.pack_request(p.CMD_READ, k, (k % 2) * size, size)
                            for k in range(count)))
    _wait_for(lambda: dev.submitted == taken, "the first requests taken in")
    time.sleep(0.2)
    assert dev.submitted == taken < MAX_QUEUED and conn.queued() == taken * weight
    dev.release()
    data = image.read_bytes()
    got = sorted(c.simple_reply(size) for _ in range(count))
    assert got == [(0, k, data[(k % 2) * size : (k % 2 + 1) * size]) for k in range(count)]
    _wait_for(lambda: conn.queued() == 0, "every request counted answered")


def test_the_connection_reads_on_when_the_device_session_ends(
        served: tuple[ThreadedDevice, Connection, RawNbd, threading.Thread]) -> None:
    """When the device's thread stops while serving the client, the connection's own
    thread takes over: the client's next requests get errors, not silence; FLUSH and
    DISC still work."""
    dev, _conn, c, t = served
    c.request(p.CMD_READ, 1, 0, 512)
    assert c.simple_reply(512)[:2] == (0, 1)
    dev.end()
    c.request(p.CMD_READ, 2, 4096, 512)
    assert c.simple_reply(512) == (p.EIO, 2, b"")
    c.request(p.CMD_FLUSH, 3)
    assert c.simple_reply() == (0, 3, b"")
    c.request(p.CMD_DISC, 4)
    t.join(10)
    assert not t.is_alive()


def test_garbage_read_on_the_device_thread_drops_the_client(
        served: tuple[ThreadedDevice, Connection, RawNbd, threading.Thread]) -> None:
    dev, _conn, c, t = served
    c.request(p.CMD_READ, 1, 0, 512)
    assert c.simple_reply(512)[:2] == (0, 1)
    c.sock.sendall(b"\xde\xad\xbe\xef" + bytes(24))
    assert c.closed_by_server()
    t.join(10)
    assert not t.is_alive()
    assert dev.watched == {}
