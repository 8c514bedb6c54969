"""AF_PACKET sockets bound to one interface and the AoE EtherType.

The socket ignores its own outgoing frames (otherwise a responder would answer itself),
and exposes plain send/recv plus the interface's MAC and MTU, which every user needs.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

from ..protocol.constants import ETHERTYPE_AOE

SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


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


class RawSocket:
    """A raw socket on ``ifname`` receiving only AoE frames (EtherType 0x88A2)."""

    def __init__(self, ifname: str, ethertype: int = ETHERTYPE_AOE, rcvbuf: int = 8 << 20) -> None:
        self.ifname = ifname
        self.ethertype = ethertype
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
        except PermissionError:
            raise InterfaceError(1, "raw sockets need root (CAP_NET_RAW)") from None
        self.sock = sock
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE),
                               (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                    sock.setsockopt(socket.SOL_SOCKET, force, rcvbuf)  # past rmem_max: root
                except OSError:
                    pass
            try:
                sock.bind((ifname, ethertype))
            except OSError as exc:
                raise interface_problem(ifname, exc) from None
            hwaddr = _ifreq(sock, ifname, SIOCGIFHWADDR)
            self.mac = hwaddr[18:24]
            self.hwtype = struct.unpack_from("H", hwaddr, 16)[0]  # ARPHRD_*: 1 is Ethernet
            self.mtu = struct.unpack_from("i", _ifreq(sock, ifname, SIOCGIFMTU), 16)[0]
        except BaseException:
            sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue_capacity(self, frame_len: int) -> int:
        """How many received frames of ``frame_len`` bytes the socket buffer holds."""
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return max(1, rcvbuf // frame_truesize(frame_len))

    def send(self, frame: bytes | bytearray | memoryview) -> int:
        return self.sock.send(frame)

    def recv_into(self, buf: bytearray | memoryview) -> int:
        return self.sock.recv_into(buf)

    def recv(self, size: int = 65536) -> bytes:
        return self.sock.recv(size)

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
