"""Low-level network-namespace helpers shared by the lab and the link tools.

Network namespaces belong to threads, not processes: `setns(2)` moves only the
calling thread. Everything here works on the *current thread*, which is what lets a
test open raw sockets inside a lab host from the test process itself.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..libc import libc as _libc  # loaded at import: no dlopen after fork() (preexec)

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
NETNS_RUN_DIR = "/run/netns"


class LabError(RuntimeError):
    """A lab operation failed (namespace, cable, process or shaping set-up)."""


def netns_path(name: str) -> str:
    """Path of the bind mount that keeps a named namespace alive (as `ip netns` uses)."""
    return os.path.join(NETNS_RUN_DIR, name)


def setns_fd(fd: int) -> None:
    """Move the calling thread into the network namespace referred to by `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def current_netns_fd() -> int:
    """Open a handle on the calling thread's own network namespace."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def thread_netns(name_or_path: str) -> Iterator[None]:
    """Run the body with the current thread inside a named namespace, then switch back."""
    path = name_or_path if "/" in name_or_path else netns_path(name_or_path)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name_or_path!r} does not exist") from None
    saved = current_netns_fd()
    try:
        setns_fd(target)
        try:
            yield
        finally:
            setns_fd(saved)
    finally:
        os.close(target)
        os.close(saved)


def list_netns(prefix: str = "") -> list[str]:
    """Names of the named namespaces (those `ip netns list` shows) starting with prefix."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def pids_in_netns(name: str) -> list[int]:
    """Processes whose main thread lives in the named namespace (by inode match)."""
    try:
        st = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ps = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ps.st_dev, ps.st_ino) == (st.st_dev, st.st_ino):
            pids.append(int(entry))
    return pids


def enter_for_exec(netns_fd: int, private_sysfs: bool) -> None:
    """Child-side set-up before exec: join the namespace and, optionally, give the child
    its own /sys so /sys/class/net shows the namespace's interfaces (like `ip netns exec`).

    Only async-signal-tolerant calls here: this runs between fork and exec.
    """
    if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")
    if not private_sysfs:
        return
    if _libc.unshare(CLONE_NEWNS) != 0:
        return
    if _libc.mount(b"", b"/", None, MS_SLAVE | MS_REC, None) != 0:
        return
    _libc.umount2(b"/sys", MNT_DETACH)
    _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)


def remove_netns(name: str) -> None:
    """Unmount and delete a named namespace; the kernel frees it (and its veths) once
    no process or socket still holds it."""
    path = netns_path(name).encode()
    _libc.umount2(path, MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
