"""Closing raw sockets (aoe.net.rawsock.close_all): the close of a packet socket waits for
an RCU grace period in the kernel, so several closes run together, and a command about to
exit hands the wait to a holder process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoe.lab.pair import TwoHosts
from aoe.net import rawsock
from aoe.net.rawsock import RawSocket, close_all

from .support.holder import fd_listing_holder, held_descriptors, reap_holders


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


@pytest.fixture
def handing_over() -> Iterator[None]:
    rawsock.hand_over_closes(True)
    try:
        yield
    finally:
        rawsock.hand_over_closes(False)


def test_handed_over_sockets_are_closed_here_and_held_by_the_holder(
        two_hosts: TwoHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        handing_over: None) -> None:
    holder, listing = fd_listing_holder(tmp_path)
    monkeypatch.setattr(rawsock, "HOLDER", holder)
    with two_hosts.initiator.enter():
        socks = [RawSocket(two_hosts.cable.b_ifname) for _ in range(2)]
    inodes = {os.fstat(s.fileno()).st_ino for s in socks}
    try:
        close_all(socks)
        assert [s.sock.fileno() for s in socks] == [-1, -1]
        fds = held_descriptors(listing)
    finally:
        reap_holders()
    assert {fds["0"], fds["1"], fds["2"]} == {os.devnull}  # no pipe of ours kept open
    assert {f"socket:[{ino}]" for ino in inodes} <= set(fds.values())


def test_without_a_holder_the_sockets_are_closed_in_place(
        two_hosts: TwoHosts, monkeypatch: pytest.MonkeyPatch, handing_over: None) -> None:
    """A holder that cannot start changes nothing: the descriptor stays private (not
    inherited by the next program this process starts) and the close happens here."""
    monkeypatch.setattr(rawsock, "HOLDER", "/nonexistent/holder")
    with two_hosts.initiator.enter():
        sock = RawSocket(two_hosts.cable.b_ifname)
    assert not rawsock._handed_to_holder([sock])
    assert not os.get_inheritable(sock.fileno())
    close_all([sock])
    assert sock.sock.fileno() == -1


def test_stand_ins_without_a_descriptor_are_closed_in_place(handing_over: None) -> None:
    barrier = threading.Barrier(2, timeout=10)
    socks = [MeetingSocket(barrier), MeetingSocket(barrier)]
    close_all(socks)
    assert all(s.closed for s in socks)


def test_nothing_to_close_starts_no_holder(monkeypatch: pytest.MonkeyPatch,
                                           handing_over: None) -> None:
    started: list[object] = []
    monkeypatch.setattr(os, "posix_spawn", lambda *args, **kw: started.append(args))
    close_all([])
    assert started == []
