"""A lab host: one network namespace plus ways to run code inside it."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from pyroute2 import IPRoute

from aoe.fdwait import readable
from aoe.lab.nsutil import LabError, enter_for_exec, netns_path, setns_fd, thread_netns


class ProcessTracker(Protocol):
    """What a host needs from its lab: somewhere to record the processes it starts, so
    the lab can end them all (by id) when it closes. :class:`aoe.lab.Lab` is one."""

    def track(self, proc: subprocess.Popen[Any]) -> None: ...
    def untrack(self, proc: subprocess.Popen[Any]) -> None: ...
    def kill(self, proc: subprocess.Popen[Any], grace: float = 1.0) -> None: ...
    def track_process(self, proc: BaseProcess) -> None: ...
    def track_pid(self, pid: int) -> None: ...
    def untrack_pid(self, pid: int) -> None: ...


_FORK = multiprocessing.get_context("fork")


class RemoteError(LabError):
    """A callable run by Host.call raised an exception that could not be sent back as is."""


class Host:
    """A named network namespace in a Lab. Create hosts with `Lab.host(name)`."""

    def __init__(self, lab: ProcessTracker, name: str, netns: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.ifnames: list[str] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r})"

    @property
    def path(self) -> str:
        """Path of the namespace handle under /run/netns."""
        return netns_path(self.netns)

    def next_ifname(self) -> str:
        """First free ethN name on this host (cables number their ends per host)."""
        n = 0
        while f"eth{n}" in self.ifnames:
            n += 1
        return f"eth{n}"

    @contextmanager
    def enter(self) -> Iterator[Host]:
        """Switch the current thread into this host's namespace for the body.

        Sockets created inside stay bound to this namespace after the block ends.
        """
        with thread_netns(self.path):
            yield self

    @contextmanager
    def iproute(self) -> Iterator[IPRoute]:
        """An rtnetlink handle bound to this host's namespace."""
        with self.enter():
            ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def popen(
        self, argv: Sequence[str], *, private_sysfs: bool = True, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; the Lab kills it (by pid) at close.

        The child gets its own session so its whole process group can be ended, and, by
        default, a private /sys mount so tools see this host's interfaces there.
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kw.setdefault("start_new_session", True)
            user_preexec = kw.pop("preexec_fn", None)

            def preexec() -> None:
                enter_for_exec(fd, private_sysfs)
                if user_preexec is not None:
                    user_preexec()

            proc = subprocess.Popen(list(argv), preexec_fn=preexec, **kw)  # noqa: PLW1509
        finally:
            os.close(fd)
        self.lab.track(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 30.0,
        capture_output: bool = True,
        text: bool = True,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command to completion inside the namespace (output captured by default)."""
        if capture_output:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
        proc = self.popen(argv, text=text, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.lab.kill(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout or 0, out, err) from None
        finally:
            self.lab.untrack(proc)
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def spawn(self, fn: Callable[..., Any], *args: Any,
              **kwargs: Any) -> BaseProcess:
        """Start fn(*args, **kwargs) in a forked process inside the namespace and return
        at once. The Lab terminates it at close if it still runs."""
        proc = _FORK.Process(target=_run_in_netns, args=(self.path, fn, args, kwargs),
                             name=f"{self.name}:{getattr(fn, '__name__', 'fn')}", daemon=True)
        proc.start()
        self.lab.track_process(proc)
        return proc

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 30.0,
             **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) in a forked child inside the namespace; return its
        result or re-raise its exception here. The result must be picklable."""
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 0
            try:
                os.close(rfd)
                setns_fd(os.open(self.path, os.O_RDONLY))
                try:
                    payload = pickle.dumps((True, fn(*args, **kwargs)))
                except BaseException as exc:  # noqa: BLE001 - sent to the parent
                    try:
                        payload = pickle.dumps((False, exc))
                    except Exception:
                        payload = pickle.dumps((False, RemoteError(repr(exc))))
                with os.fdopen(wfd, "wb") as out:
                    out.write(payload)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(wfd)
        self.lab.track_pid(pid)
        try:
            data = _read_all(rfd, timeout)
        except TimeoutError:
            _kill_pid(pid)
            raise TimeoutError(f"{self.name}: call to {fn!r} timed out after {timeout}s") from None
        finally:
            os.close(rfd)
            _reap(pid)
            self.lab.untrack_pid(pid)
        if not data:
            raise RemoteError(f"{self.name}: child running {fn!r} died without a result")
        ok, value = pickle.loads(data)
        if ok:
            return value
        raise value


def _run_in_netns(path: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None:
    fd = os.open(path, os.O_RDONLY)
    setns_fd(fd)
    os.close(fd)
    fn(*args, **kwargs)


def _read_all(fd: int, timeout: float | None) -> bytes:
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not readable(fd, wait):
            raise TimeoutError
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
