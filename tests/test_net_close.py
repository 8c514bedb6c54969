"""Closing several raw sockets at once (aoe.net.rawsock.close_all): the close of a packet
socket waits for an RCU grace period in the kernel, so the closes run together."""

from __future__ import annotations

import threading

import pytest

from aoe.lab.pair import TwoHosts
from aoe.net.rawsock import RawSocket, close_all


class MeetingSocket:
    """A socket stand-in whose close waits at a barrier for the others' closes: closed one
    after another, the first never sees the rest arrive and the barrier breaks."""

    def __init__(self, barrier: threading.Barrier, error: OSError | None = None) -> None:
        self.barrier = barrier
        self.error = error
        self.closed = False

    def close(self) -> None:
        self.barrier.wait()
        self.closed = True
        if self.error is not None:
            raise self.error


def test_the_closes_run_at_the_same_time() -> None:
    barrier = threading.Barrier(3, timeout=10)
    socks = [MeetingSocket(barrier) for _ in range(3)]
    close_all(socks)
    assert all(s.closed for s in socks)
    assert not [t for t in threading.enumerate() if t.name == "aoe-close"]


def test_a_failed_close_is_raised_once_every_socket_is_closed() -> None:
    barrier = threading.Barrier(3, timeout=10)
    socks = [MeetingSocket(barrier), MeetingSocket(barrier, OSError(9, "Bad file descriptor")),
             MeetingSocket(barrier)]
    with pytest.raises(OSError, match="Bad file descriptor"):
        close_all(socks)
    assert all(s.closed for s in socks)


def test_one_socket_is_closed_without_a_thread() -> None:
    """A single close runs in the caller's thread (a barrier of one party passes)."""
    sock = MeetingSocket(threading.Barrier(1))
    before = threading.active_count()
    close_all([sock])
    close_all([])
    assert sock.closed and threading.active_count() == before


def test_raw_sockets_of_a_host_are_all_closed(two_hosts: TwoHosts) -> None:
    host = two_hosts.initiator
    with host.enter():
        socks = [RawSocket(two_hosts.cable.b_ifname) for _ in range(3)]
    close_all(socks)
    assert [s.sock.fileno() for s in socks] == [-1, -1, -1]
