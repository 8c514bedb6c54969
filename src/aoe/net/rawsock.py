"""The one raw socket: AF_PACKET bound to one interface and (by default) the AoE EtherType.

Every part of the project that puts frames on a link opens it here: the target, the
initiator, the relay, the sniffer, the checks, the tests and the benchmarks. By default it
ignores its own outgoing frames (otherwise a responder would answer itself); a sniffer asks
for them instead. It exposes plain send/recv, the interface's MAC and MTU, and batches of
frames per system call (:mod:`aoe.net.mmsg`). :func:`close_all` closes several at once,
since each close waits for the kernel; a command that exits right after may leave that
wait to a holder process (:func:`hand_over_closes`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..protocol.constants import ETHERTYPE_AOE

if TYPE_CHECKING:
    from .mmsg import FrameBatch

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_STATISTICS = 6
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


class SupportsClose(Protocol):
    """A socket, RawSocket or anything else :func:`close_all` can close."""

    def close(self) -> None: ...


def frame_truesize(frame_len: int) -> int:
    """Kernel memory one queued frame costs against a socket buffer: its data rounded up
    to a power of two plus the socket buffer bookkeeping (an estimate on the safe side)."""
    size = 1
    while size < frame_len + 384:
        size <<= 1
    return size + 256


class InterfaceError(OSError):
    """The interface is missing, down or cannot be used for AoE."""

    def __str__(self) -> str:  # the message alone: it already names the cause
        return str(self.strerror)


def interface_problem(ifname: str, exc: OSError) -> InterfaceError:
    """The error to report when ``ifname`` could not be used (no such device, ...)."""
    if exc.errno == errno.ENODEV:
        return InterfaceError(errno.ENODEV, f"interface {ifname!r} does not exist")
    return InterfaceError(exc.errno or errno.ENODEV,
                          f"interface {ifname!r}: {exc.strerror or exc}")


def _ifreq(sock: socket.socket, ifname: str, request: int) -> bytes:
    req = struct.pack("16s16x", ifname.encode())
    try:
        return fcntl.ioctl(sock.fileno(), request, req)
    except OSError as exc:
        raise interface_problem(ifname, exc) from None


def set_promiscuous(sock: socket.socket, ifname: str) -> bool:
    """Ask for every frame on the link (released when the socket closes); False if refused."""
    try:
        index = socket.if_nametoindex(ifname)
        mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except OSError:
        return False
    return True


_FILTERS: list[object] = []


def _ethertype_filter(ethertype: int) -> bytes:
    """A classic BPF program keeping frames of one EtherType (a struct sock_fprog)."""
    import ctypes

    program = [
        (0x28, 0, 0, 12),  # ldh [12]
        (0x15, 0, 1, ethertype),  # jeq #ethertype, keep, drop
        (0x06, 0, 0, 0x40000),  # keep: ret #262144
        (0x06, 0, 0, 0),  # drop: ret #0
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    _FILTERS.append(buf)  # the kernel copies it, but keep it alive until then
    return struct.pack("HL", len(program), ctypes.addressof(buf))


def packet_statistics(sock: socket.socket) -> tuple[int, int]:
    """(frames that reached the packet socket, frames of those it dropped for want of
    room) since the call before: the kernel's PACKET_STATISTICS, read and reset."""
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return int(packets), int(drops)


class RawSocket:
    """A raw socket on ``ifname`` receiving only frames of ``ethertype`` (AoE by default).

    ``promiscuous`` asks for frames addressed to other stations too (best effort: see
    :attr:`promiscuous` for whether the kernel agreed); ``outgoing`` also shows the frames
    this host sends, as a sniffer wants (then :meth:`recvfrom` tells them apart);
    ``rcvbuf`` sizes both socket buffers, past the system limit when run as root.
    """

    def __init__(self, ifname: str, ethertype: int = ETHERTYPE_AOE, rcvbuf: int = 8 << 20, *,
                 promiscuous: bool = False, outgoing: bool = False,
                 timeout: float | None = None) -> None:
        self.ifname = ifname
        self.ethertype = ethertype
        # Only ETH_P_ALL sockets are shown outgoing frames; a filter keeps the EtherType.
        proto = ETH_P_ALL if outgoing else ethertype
        try:
            # Protocol 0: nothing is received until bind() names the interface and the
            # EtherType. (Created with a protocol, the socket would hear every interface
            # until then, and bind() would wait ~7 ms for the kernel to unhook it.)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise InterfaceError(1, "raw sockets need root (CAP_NET_RAW)") from None
        self.sock = sock
        try:
            if outgoing:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _ethertype_filter(ethertype))
            else:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._size_buffers(rcvbuf)
            try:
                sock.bind((ifname, proto))
            except OSError as exc:
                raise interface_problem(ifname, exc) from None
            hwaddr = _ifreq(sock, ifname, SIOCGIFHWADDR)
            self.mac = hwaddr[18:24]
            self.hwtype = struct.unpack_from("H", hwaddr, 16)[0]  # ARPHRD_*: 1 is Ethernet
            self.mtu = struct.unpack_from("i", _ifreq(sock, ifname, SIOCGIFMTU), 16)[0]
            self.promiscuous = promiscuous and set_promiscuous(sock, ifname)
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise

    def _size_buffers(self, size: int) -> None:
        for opt, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
                self.sock.setsockopt(socket.SOL_SOCKET, force, size)  # past rmem_max: root
            except OSError:
                pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue_capacity(self, frame_len: int) -> int:
        """How many received frames of ``frame_len`` bytes the socket buffer holds."""
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return max(1, rcvbuf // frame_truesize(frame_len))

    def batch(self, count: int = 64, slot_size: int = 9216,
              out: RawSocket | None = None) -> FrameBatch:
        """``count`` frame slots received from this socket with one system call and sent
        with one (out of ``out`` if given, as a relay forwards)."""
        from .mmsg import FrameBatch

        return FrameBatch(self.sock, count, slot_size,
                          out_fd=None if out is None else out.fileno())

    def arrivals(self) -> int:
        """Frames that reached this socket (queued, or dropped for want of room) since the
        call before: the kernel's count, read and reset without receiving any."""
        return packet_statistics(self.sock)[0]

    def send(self, frame: bytes | bytearray | memoryview) -> int:
        return self.sock.send(frame)

    def recv_into(self, buf: bytearray | memoryview) -> int:
        return self.sock.recv_into(buf)

    def recv(self, size: int = 65536) -> bytes:
        return self.sock.recv(size)

    def recv_nowait(self, size: int = 65536) -> bytes | None:
        """A frame waiting on the socket, or None if none is (never blocks, whatever the
        socket's mode)."""
        try:
            return self.sock.recv(size, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None

    def recvfrom(self, size: int = 65536) -> tuple[bytes, bool]:
        """A frame and whether this host sent it (seen only with ``outgoing``)."""
        raw, addr = self.sock.recvfrom(size)
        return raw, addr[2] == PACKET_OUTGOING

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


HOLDER = "/bin/true"
_QUIET_STREAMS = tuple((os.POSIX_SPAWN_OPEN, fd, os.devnull,
                        os.O_RDONLY if fd == 0 else os.O_WRONLY, 0) for fd in (0, 1, 2))


class _Closing:
    """How :func:`close_all` closes, set once per process by :func:`hand_over_closes`."""

    hand_over = False


def hand_over_closes(enabled: bool = True) -> None:
    """Let :func:`close_all` leave the kernel's wait to a holder process from now on.

    For a command that exits once its sockets are closed (`aoe copy`, `aoe discover`): the
    last close of a packet socket waits out an RCU grace period, 8-16 ms of the user's
    wall time at every exit. With this set, the sockets are handed to a short-lived
    child (:data:`HOLDER`, with the standard streams on /dev/null so that no pipe stays
    open) whose exit is their last close, and the command goes on at once. Not for a
    process that lives on: it would not reap the child.
    """
    _Closing.hand_over = enabled


def _handed_to_holder(sockets: Sequence[SupportsClose]) -> bool:
    """Start the holder with the sockets' descriptors; False (nothing changed) if the
    sockets have no descriptor above the standard streams or the holder cannot start."""
    fds = []
    for one in sockets:
        fileno = getattr(one, "fileno", None)
        if fileno is None:
            return False
        fd = fileno()
        if not isinstance(fd, int) or fd <= 2:
            return False
        fds.append(fd)
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        os.posix_spawn(HOLDER, [HOLDER], {}, file_actions=_QUIET_STREAMS)
    except OSError:
        for fd in fds:
            os.set_inheritable(fd, False)
        return False
    return True


def close_all(sockets: Sequence[SupportsClose]) -> None:
    """Close several raw sockets at once; the first error, if any, once all are closed.

    Closing a packet socket waits in the kernel for an RCU grace period (packet_release
    calls synchronize_net: 8-16 ms here). One after another, N sockets wait N periods;
    closed from N threads at once, they share one (three sockets: 38 ms against 18). A
    command on a host with several interfaces up has a socket on each. After
    :func:`hand_over_closes`, a holder process takes the wait and these closes return at
    once.
    """
    errors: list[OSError] = []

    def close(one: SupportsClose) -> None:
        try:
            one.close()
        except OSError as exc:
            errors.append(exc)

    if (sockets and _Closing.hand_over and _handed_to_holder(sockets)) or len(sockets) <= 1:
        for one in sockets:
            close(one)  # quick: one socket, or the holder's exit is the last close
        if errors:
            raise errors[0]
        return
    import threading  # only here: one socket needs no thread

    others = [threading.Thread(target=close, args=(one,), name="aoe-close")
              for one in sockets[1:]]
    for t in others:
        t.start()
    close(sockets[0])
    for t in others:
        t.join()
    if errors:
        raise errors[0]
