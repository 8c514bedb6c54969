"""Discovery of one addressed target stops once every port has its answer."""

from __future__ import annotations

import socket
import threading
import time

from aoe.initiator.discovery import query_config
from aoe.protocol.constants import Command, HeaderFlag
from aoe.protocol.frames import ConfigBody, Frame, decode, encode

from .support.fds import above_1024

TARGET_MAC = bytes.fromhex("020000000a01")


class AnsweringPort:
    """A port whose every Query Config is answered at once by 7.7 (from `macs`)."""

    def __init__(self, name: str, mac: bytes, macs: list[bytes], late: float = 0.0) -> None:
        self.ifname, self.mac, self.mtu = name, mac, 9000
        self.late = late  # the second and later MACs answer this many seconds after the first
        self._ours, self._wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ours.setblocking(False)
        self.macs = macs
        self.sent = 0

    def fileno(self) -> int:
        return self._ours.fileno()

    def send(self, frame: bytes) -> None:
        self.sent += 1
        query = decode(frame)
        for n, mac in enumerate(self.macs):
            answer = encode(Frame(self.mac, mac, 7, 7, Command.QUERY_CONFIG, query.tag,
                                  ConfigBody(buffer_count=16, sector_count=17),
                                  flags=HeaderFlag.RESPONSE))
            if n and self.late:
                threading.Timer(self.late, self._wire.send, (answer,)).start()
            else:
                self._wire.send(answer)

    def recv_nowait(self, size: int = 65536) -> bytes | None:
        try:
            return self._ours.recv(size)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self._ours.close()
        self._wire.close()


def test_returns_once_every_port_answered_and_keeps_every_mac() -> None:
    ports = [AnsweringPort("eth0", bytes.fromhex("020000000001"),
                           [TARGET_MAC, bytes.fromhex("020000000a02")]),
             AnsweringPort("eth1", bytes.fromhex("020000000002"), [TARGET_MAC])]
    t0 = time.monotonic()
    try:
        [info] = query_config(ports, (7, 7), timeout=60.0, settle=30.0)  # type: ignore[arg-type]
    finally:
        for p in ports:
            p.close()
    assert time.monotonic() - t0 < 20  # the settle (30 s) was not waited for
    assert sorted((p.ifname, p.target_mac) for p in info.paths) == [
        ("eth0", TARGET_MAC), ("eth0", bytes.fromhex("020000000a02")), ("eth1", TARGET_MAC)]
    assert [p.sent for p in ports] == [1, 1]


def test_a_second_owner_answering_a_little_later_is_still_heard() -> None:
    """Two targets on one address: the second answers 20 ms after the first (a slower
    host). Discovery must see both, or the initiator would mix two disks unknowingly."""
    second = bytes.fromhex("020000000b02")
    ports = [AnsweringPort("eth0", bytes.fromhex("020000000001"), [TARGET_MAC, second],
                           late=0.02)]
    try:
        [info] = query_config(ports, (7, 7), timeout=60.0, settle=30.0)  # type: ignore[arg-type]
    finally:
        for p in ports:
            p.close()
    assert {p.target_mac for p in info.paths} == {TARGET_MAC, second}
    assert ports[0].sent == 1  # heard within the grace: no second query


def test_broadcast_discovery_still_settles() -> None:
    """Without an addressed target more targets may answer: the settle time holds."""
    port = AnsweringPort("eth0", bytes.fromhex("020000000001"), [TARGET_MAC])
    t0 = time.monotonic()
    try:
        found = query_config([port], None, timeout=5.0, settle=0.3)  # type: ignore[list-item]
    finally:
        port.close()
    assert time.monotonic() - t0 >= 0.3
    assert [(t.shelf, t.slot) for t in found] == [(7, 7)]


def test_discovery_waits_on_descriptors_above_1024() -> None:
    """A program holding many files (a server embedding AoeDisk) has its raw sockets above
    1024, where select() raises ValueError: discovery still hears the target."""
    port = AnsweringPort("eth0", bytes.fromhex("020000000001"), [TARGET_MAC])
    try:
        with above_1024(port._ours) as high:
            high.setblocking(False)
            low, port._ours = port._ours, high
            try:
                [info] = query_config([port], (7, 7), timeout=5.0, settle=1.0)  # type: ignore[list-item]
            finally:
                port._ours = low
    finally:
        port.close()
    assert [p.target_mac for p in info.paths] == [TARGET_MAC]
