"""The lab itself: hosts, cables, raw frames through them, shaping, teardown, clean-up."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from aoe.lab import Lab, LabError, cleanup_all, list_netns, namespace_exists
from aoe.lab.pair import TwoHosts, netns_unavailable_reason
from aoe.net.link import link_info
from tests.support.wire import aoe_frame, aoe_socket, mac_bytes

_SKIP = netns_unavailable_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def test_hosts_show_in_ip_netns_list_and_vanish_after_close() -> None:
    with Lab() as lab:
        a = lab.host("a")
        b = lab.host("b")
        assert a.netns == f"{lab.name}-a" and a.netns.startswith("aoelab-")
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
        assert a.netns in listed and b.netns in listed
        lab.cable(a, b)
    assert not namespace_exists(a.netns) and not namespace_exists(b.netns)


def test_parallel_labs_do_not_collide(lab_factory) -> None:  # type: ignore[no-untyped-def]
    one, two = lab_factory(), lab_factory()
    assert one.host("x").netns != two.host("x").netns


def test_teardown_on_exception_kills_processes() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        h = lab.host("h")
        proc = h.popen(["sleep", "60"])
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not namespace_exists(h.netns)


def test_cable_names_mtu_and_macs(lab: Lab) -> None:
    a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
    ab = lab.cable(a, b, mtu=9000)
    ac = lab.cable(a, c)
    assert (ab.a_ifname, ab.b_ifname, ac.a_ifname, ac.b_ifname) == ("eth0", "eth0", "eth1", "eth0")
    with a.enter():
        info = link_info("eth0")
        assert info.mtu == 9000 and info.up and info.kind == "veth"
        assert info.mac == ab.a_mac
        assert link_info("eth1").mtu == 1500
        assert link_info("lo").up
    assert b.call(link_info, "eth0").mac == ab.b_mac
    assert ab.peer(b).mac == ab.a_mac
    with pytest.raises(LabError):
        lab.cable(a, b, a_ifname="eth0")


def test_host_run_popen_and_call(two_hosts: TwoHosts) -> None:
    out = two_hosts.target.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    assert out == two_hosts.cable.a_mac
    assert two_hosts.target.call(os.getpid) != os.getpid()
    assert two_hosts.initiator.call(sorted, [3, 1, 2]) == [1, 2, 3]
    with pytest.raises(ZeroDivisionError):
        two_hosts.initiator.call(divmod, 1, 0)
    with pytest.raises(subprocess.CalledProcessError):
        two_hosts.target.run(["false"])


def test_host_enter_is_per_thread_and_restores(two_hosts: TwoHosts) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    with two_hosts.target.enter():
        assert os.readlink("/proc/thread-self/ns/net") != before
        assert link_info("eth0").mac == two_hosts.cable.a_mac
    assert os.readlink("/proc/thread-self/ns/net") == before


@pytest.mark.parametrize("two_hosts", [1500, 9000], indirect=True)
def test_aoe_frames_cross_the_cable(two_hosts: TwoHosts) -> None:
    cable = two_hosts.cable
    with two_hosts.target.enter():
        rx = aoe_socket(cable.a_ifname)
    with two_hosts.initiator.enter():
        tx = aoe_socket(cable.b_ifname)
    with rx, tx:
        big = bytes(range(256)) * ((two_hosts.mtu - 10) // 256)
        for payload in (b"hello aoe", big):
            tx.send(aoe_frame(cable.a_mac, cable.b_mac, payload))
            frame = rx.recv(65536)
            assert frame[12:14] == b"\x88\xa2"
            assert frame[:6] == mac_bytes(cable.a_mac) and frame[6:12] == mac_bytes(cable.b_mac)
            assert frame[14:] == payload
        too_big = aoe_frame(cable.a_mac, cable.b_mac, bytes(two_hosts.mtu + 1))
        with pytest.raises(OSError):
            tx.send(too_big)


def test_set_link_down_stops_frames_and_up_restores(two_hosts: TwoHosts) -> None:
    cable = two_hosts.cable
    with two_hosts.target.enter():
        rx = aoe_socket(cable.a_ifname, timeout=0.3)
    with two_hosts.initiator.enter():
        tx = aoe_socket(cable.b_ifname)
    frame = aoe_frame(cable.a_mac, cable.b_mac, b"x" * 50)
    with rx, tx:
        cable.set_link(False)
        assert two_hosts.target.call(link_info, "eth0").operstate != "UP"
        try:
            tx.send(frame)
        except OSError:
            pass  # a down interface may refuse outright
        # Nothing arrives: a timeout, or ENETDOWN reported once on a socket bound to a
        # port that went down.
        with pytest.raises(OSError):
            rx.recv(2048)
        cable.set_link(True)
        deadline = time.monotonic() + 5
        while two_hosts.target.call(link_info, "eth0").operstate != "UP":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # The flap left ENETDOWN pending on both sockets; reading SO_ERROR clears it.
        for s in (rx, tx):
            s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        tx.send(frame)
        assert rx.recv(2048) == frame


def test_set_mtu_on_cable(two_hosts: TwoHosts) -> None:
    two_hosts.cable.set_mtu(4000)
    assert two_hosts.target.call(link_info, "eth0").mtu == 4000
    assert two_hosts.initiator.call(link_info, "eth0").mtu == 4000


def _blast_bytes(two_hosts: TwoHosts, window: float) -> int:
    """Send full-size AoE frames for `window` seconds; return the bytes that arrived."""
    cable = two_hosts.cable
    with two_hosts.target.enter():
        rx = aoe_socket(cable.a_ifname, timeout=None)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    with two_hosts.initiator.enter():
        tx = aoe_socket(cable.b_ifname)
    frame = aoe_frame(cable.a_mac, cable.b_mac, bytes(cable.mtu))
    got = 0
    with rx, tx:
        tx.setblocking(False)
        rx.setblocking(False)
        end = time.monotonic() + window
        while time.monotonic() < end:
            for _ in range(32):
                try:
                    tx.send(frame)
                except OSError:  # queue full (EAGAIN/ENOBUFS): the qdisc is holding back
                    break
            try:
                while True:
                    got += len(rx.recv(65536))
            except BlockingIOError:
                pass
    return got


def test_shaping_caps_throughput(two_hosts: TwoHosts) -> None:
    window = 0.3
    free = _blast_bytes(two_hosts, window)
    two_hosts.cable.shape("10mbit")
    shaped = _blast_bytes(two_hosts, window)
    cap = 10e6 / 8 * window
    burst_allowance = 2 * (two_hosts.mtu + 64) + 1e4
    # The tbf cap holds (plus one bucket of burst), and it is far below the free rate.
    assert shaped <= 1.2 * cap + burst_allowance
    assert shaped > 0.3 * cap
    assert free > 3 * shaped
    two_hosts.cable.unshape()
    assert _blast_bytes(two_hosts, window) > 3 * shaped


def test_shape_rejects_bad_rate(two_hosts: TwoHosts) -> None:
    with pytest.raises(ValueError, match="bad rate"):
        two_hosts.cable.shape("fast")
    with pytest.raises(ValueError):
        two_hosts.cable.shape("100gbit")


def test_cleanup_all_removes_leftovers() -> None:
    prefix = f"aoelabt{os.getpid()}-"
    lab = Lab(prefix)
    a, b = lab.host("a"), lab.host("b")
    lab.cable(a, b)
    sleeper = a.popen(["sleep", "60"])
    lab.detach()  # as if the owning process had crashed
    assert set(list_netns(prefix)) == {a.netns, b.netns}
    removed = cleanup_all(prefix)
    assert sorted(removed) == sorted([a.netns, b.netns])
    assert list_netns(prefix) == []
    assert sleeper.wait(5) is not None
    with pytest.raises(LabError):
        cleanup_all("")
