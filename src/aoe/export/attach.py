"""Bind a block device to a kernel nbd device (/dev/nbdN), as nbd-client does.

The kernel speaks only the NBD transmission phase, so no handshake is needed: we make a
socketpair per connection, serve one end with the NBD server's request loop and hand the
other end to the kernel. The kernel is configured through the "nbd" generic-netlink family
(NBD_CMD_CONNECT / NBD_CMD_DISCONNECT); without it, through the classic ioctls
(NBD_SET_SOCK, NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS, NBD_SET_FLAGS, NBD_DO_IT).

All of this needs the kernel's nbd driver. When it is missing (no /sys/module/nbd, no
"nbd" netlink family, no /dev/nbdN) every call raises NbdUnavailable with that reason.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aoe.export.blockdev import BlockDevice
from aoe.export.nbdserver import DEFAULT_WORKERS, Connection, NbdExport, StopOnSignals
from aoe.mounts import mounts

log = logging.getLogger(__name__)

# generic netlink plumbing
NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# the kernel's nbd netlink family (include/uapi/linux/nbd-netlink.h)
NBD_GENL_FAMILY = "nbd"
NBD_GENL_VERSION = 1
NBD_CMD_CONNECT = 1
NBD_CMD_DISCONNECT = 2
NBD_ATTR_INDEX = 1
NBD_ATTR_SIZE_BYTES = 2
NBD_ATTR_BLOCK_SIZE_BYTES = 3
NBD_ATTR_TIMEOUT = 4
NBD_ATTR_SERVER_FLAGS = 5
NBD_ATTR_CLIENT_FLAGS = 6
NBD_ATTR_SOCKETS = 7
NBD_SOCK_ITEM = 1
NBD_SOCK_FD = 1

# the classic ioctls (include/uapi/linux/nbd.h): _IO(0xab, n)
NBD_SET_SOCK = 0xAB00
NBD_SET_BLKSIZE = 0xAB01
NBD_DO_IT = 0xAB03
NBD_CLEAR_SOCK = 0xAB04
NBD_CLEAR_QUE = 0xAB05
NBD_SET_SIZE_BLOCKS = 0xAB07
NBD_DISCONNECT = 0xAB08
NBD_SET_TIMEOUT = 0xAB09
NBD_SET_FLAGS = 0xAB0A

BLOCK_SIZE = 512  # logical sector of the nbd device: matches the disk's partition tables


class NbdUnavailable(RuntimeError):
    """The kernel cannot provide /dev/nbdN here (driver not loaded or not built)."""


class DeviceBusy(RuntimeError):
    """Detaching would pull the disk from under a mounted file system or another holder."""


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error."""


# -- generic netlink, just what is needed ----------------------------------------------

def _nla(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + bytes(-len(payload) % 4)


def _nla_u32(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=I", value))


def _nla_u64(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=Q", value))


def _nla_nested(kind: int, *children: bytes) -> bytes:
    return _nla(kind | NLA_F_NESTED, b"".join(children))


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    return attrs


class GenlSocket:
    """A blocking generic-netlink socket that sends one request and collects its answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> GenlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, family: int, cmd: int, version: int, attrs: bytes) -> list[dict[int, bytes]]:
        """Send one command (with ACK) and return the attributes of every answer message."""
        self._seq += 1
        body = struct.pack("=BBH", cmd, version, 0) + attrs
        head = struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST | NLM_F_ACK,
                           self._seq, 0)
        self.sock.send(head + body)
        answers: list[dict[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            pos = 0
            while pos + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
                payload = data[pos + 16 : pos + length]
                pos += (length + 3) & ~3
                if seq != self._seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise NetlinkError(-code, os.strerror(-code))
                    return answers  # the ACK ends the exchange
                if kind == NLMSG_DONE:
                    return answers
                answers.append(_parse_attrs(payload[4:]))  # skip the genl header

    def family_id(self, name: str) -> int:
        """Resolve a generic-netlink family; FileNotFoundError when the kernel has none."""
        try:
            answers = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1,
                                   _nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"))
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT,
                                        f"no generic netlink family {name!r}") from None
            raise
        for attrs in answers:
            if CTRL_ATTR_FAMILY_ID in attrs:
                return int(struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0])
        raise NetlinkError(errno.EPROTO, f"no family id in the answer for {name!r}")


# -- finding the device ----------------------------------------------------------------

def nbd_index(device: str) -> int:
    """N from /dev/nbdN (or nbdN); ValueError for anything else."""
    m = re.fullmatch(r"(?:/dev/)?nbd(\d+)", device)
    if not m:
        raise ValueError(f"{device!r} is not an nbd device name (expected /dev/nbdN)")
    return int(m.group(1))


def nbd_family() -> int | None:
    """The nbd netlink family id, or None when the driver does not provide it."""
    with GenlSocket() as genl:
        try:
            return genl.family_id(NBD_GENL_FAMILY)
        except FileNotFoundError:
            return None


def check_nbd(device: str) -> int:
    """Raise NbdUnavailable (with what is missing and what to do) unless `device` can
    be attached; return its index."""
    index = nbd_index(device)
    driver = os.path.isdir("/sys/module/nbd")
    family = nbd_family()
    if not driver and family is None:
        raise NbdUnavailable(
            "the kernel's nbd driver is not available on this machine (no /sys/module/nbd, "
            "no 'nbd' generic netlink family, no /dev/nbd*). Load it with 'modprobe nbd' "
            "where the kernel ships the module, or export the disk with 'aoe nbd' or "
            "'aoe mount' instead."
        )
    path = f"/dev/nbd{index}"
    if family is None and not os.path.exists(path):
        raise NbdUnavailable(f"{path} does not exist (the nbd driver made fewer devices; "
                             f"see its nbds_max parameter)")
    if os.path.exists(path) and not stat.S_ISBLK(os.stat(path).st_mode):
        raise NbdUnavailable(f"{path} is not a block device")
    return index


# -- attach / detach -------------------------------------------------------------------

@dataclass
class Attachment:
    """A live binding: the server ends of the socketpairs and their threads."""

    index: int
    method: str
    threads: list[threading.Thread]
    done: threading.Event

    @property
    def device(self) -> str:
        return f"/dev/nbd{self.index}"


def attach_blockdev(
    dev: BlockDevice,
    device: str,
    *,
    read_only: bool = False,
    connections: int = 1,
    method: str = "auto",
    timeout: int = 30,
    workers: int = DEFAULT_WORKERS,
    ready: Callable[[Attachment], None] | None = None,
    stop: threading.Event | None = None,
) -> int | None:
    """Serve `dev` as `device` (/dev/nbdN) until it is detached or, in the main thread,
    until SIGINT/SIGTERM (which detaches it; the signal is returned). Raises NbdUnavailable
    early when the kernel has no nbd driver.

    `method` is "netlink", "ioctl" or "auto" (netlink when the family exists). The ioctl
    interface takes one connection; netlink takes `connections` sockets (multi-conn).
    """
    index = check_nbd(device)
    if method == "auto":
        method = "netlink" if nbd_family() is not None else "ioctl"
    if method not in ("netlink", "ioctl"):
        raise ValueError(f"unknown attach method {method!r}")
    if method == "ioctl":
        connections = 1
    export = NbdExport(dev, read_only=read_only)
    stop = stop or threading.Event()
    done = threading.Event()
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(connections)]
    threads = []
    for ours, _theirs in pairs:
        conn = Connection(ours, export, handshake=False, workers=workers)
        t = threading.Thread(target=conn.run, name="nbd-kernel", daemon=True)
        threads.append(t)
    attachment = Attachment(index, method, threads, done)
    kernel_fds = [theirs.fileno() for _, theirs in pairs]
    for t in threads:
        t.start()
    try:
        if method == "netlink":
            _netlink_connect(index, kernel_fds, export, timeout)
            for _, theirs in pairs:
                theirs.close()  # the kernel holds its own reference now
            waiter = threading.Thread(target=_wait_threads, args=(threads, done), daemon=True)
        else:
            waiter = threading.Thread(target=_ioctl_run, args=(index, kernel_fds[0], export,
                                                               timeout, done), daemon=True)
        waiter.start()
        if ready is not None:
            ready(attachment)
        with StopOnSignals(stop) as stopper:
            while not done.wait(0.1):
                if stop.is_set():
                    detach(f"/dev/nbd{index}", method=method)
                    stop.clear()
        return stopper.signum
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
        for t in threads:
            t.join(10)


def _wait_threads(threads: list[threading.Thread], done: threading.Event) -> None:
    for t in threads:
        t.join()
    done.set()


def _netlink_connect(index: int, fds: list[int], export: NbdExport, timeout: int) -> None:
    sockets = _nla_nested(NBD_ATTR_SOCKETS, *(
        _nla_nested(NBD_SOCK_ITEM, _nla_u32(NBD_SOCK_FD, fd)) for fd in fds))
    attrs = b"".join([
        _nla_u32(NBD_ATTR_INDEX, index),
        _nla_u64(NBD_ATTR_SIZE_BYTES, export.size),
        _nla_u64(NBD_ATTR_BLOCK_SIZE_BYTES, BLOCK_SIZE),
        _nla_u64(NBD_ATTR_SERVER_FLAGS, export.flags()),
        _nla_u64(NBD_ATTR_TIMEOUT, timeout),
        sockets,
    ])
    with GenlSocket() as genl:
        family = genl.family_id(NBD_GENL_FAMILY)
        try:
            genl.request(family, NBD_CMD_CONNECT, NBD_GENL_VERSION, attrs)
        except NetlinkError as exc:
            if exc.errno == errno.EBUSY:
                raise NbdUnavailable(f"/dev/nbd{index} is already in use") from None
            raise


def _ioctl_run(index: int, fd: int, export: NbdExport, timeout: int, done: threading.Event) -> None:
    """Configure the device and sit in NBD_DO_IT until it is disconnected."""
    dev_fd = os.open(f"/dev/nbd{index}", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(dev_fd, NBD_SET_BLKSIZE, BLOCK_SIZE)
        fcntl.ioctl(dev_fd, NBD_SET_SIZE_BLOCKS, export.size // BLOCK_SIZE)
        fcntl.ioctl(dev_fd, NBD_SET_TIMEOUT, timeout)
        fcntl.ioctl(dev_fd, NBD_SET_FLAGS, export.flags())
        fcntl.ioctl(dev_fd, NBD_SET_SOCK, fd)
        try:
            fcntl.ioctl(dev_fd, NBD_DO_IT)  # blocks while the device is attached
        except OSError as exc:
            log.debug("NBD_DO_IT ended: %s", exc)
        fcntl.ioctl(dev_fd, NBD_CLEAR_QUE)
        fcntl.ioctl(dev_fd, NBD_CLEAR_SOCK)
    except OSError as exc:
        log.error("ioctl attach of /dev/nbd%d failed: %s", index, exc)
    finally:
        os.close(dev_fd)
        done.set()


def busy_reason(index: int) -> str | None:
    """Why /dev/nbdN (or one of its partitions) must not be disconnected now: a mount or
    a holder (device mapper, md) using it; None when nothing does."""
    block = Path(f"/sys/block/nbd{index}")
    numbers: dict[str, str] = {}
    for dev_file in [block / "dev", *block.glob(f"nbd{index}p*/dev")]:
        try:
            numbers[dev_file.read_text().strip()] = f"/dev/{dev_file.parent.name}"
        except OSError:
            continue
    for device, where in mounts():
        if device in numbers:
            return f"{numbers[device]} is mounted on {where}: unmount it first"
    for name in {Path(n).name for n in numbers.values()}:
        holders = sorted(p.name for p in (Path("/sys/class/block") / name / "holders").glob("*"))
        if holders:
            return f"/dev/{name} is held by {', '.join(holders)}: release it first"
    return None


def detach(device: str, method: str = "auto", *, force: bool = False) -> None:
    """Disconnect /dev/nbdN: the kernel tells the server (NBD_CMD_DISC) and the serving
    process exits. Refused (DeviceBusy) while the device is mounted or held, since the
    file system on it would lose what it has not written yet, unless `force`."""
    index = check_nbd(device)
    if not force:
        reason = busy_reason(index)
        if reason is not None:
            raise DeviceBusy(reason)
    if method == "auto":
        method = "netlink" if nbd_family() is not None else "ioctl"
    if method == "netlink":
        with GenlSocket() as genl:
            family = genl.family_id(NBD_GENL_FAMILY)
            genl.request(family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION,
                         _nla_u32(NBD_ATTR_INDEX, index))
        return
    dev_fd = os.open(f"/dev/nbd{index}", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(dev_fd, NBD_DISCONNECT)
        fcntl.ioctl(dev_fd, NBD_CLEAR_SOCK)
    finally:
        os.close(dev_fd)
