"""How a long command ends on SIGINT or SIGTERM: promptly, with one line saying what was
done, and with the shell's exit status for a signal (128 + N: 130 for SIGINT, 143 for SIGTERM).

Click turns a KeyboardInterrupt into "Aborted!" and status 1, and says nothing of a partial
output file; commands that run long use these helpers instead.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):  # noqa: N818  # like KeyboardInterrupt: not an Exception
    """SIGINT or SIGTERM arrived; raised in the main thread by :func:`raise_on_stop_signals`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def verb(signum: int) -> str:
    """'interrupted' for SIGINT (Ctrl-C), 'terminated' for SIGTERM."""
    return "interrupted" if signum == signal.SIGINT else "terminated"


def exit_on_signal(signum: int, what: str) -> NoReturn:
    """Print "<interrupted|terminated> <what>" on stderr and exit with 128 + signum."""
    sys.stderr.write(f"{verb(signum)} {what}\n")
    sys.stderr.flush()
    sys.exit(128 + signum)


@contextmanager
def raise_on_stop_signals() -> Iterator[None]:
    """In the main thread, make SIGINT and SIGTERM raise :class:`Interrupted` (which no
    ``except Exception`` swallows); the previous handlers come back afterwards. A process
    started with SIGINT ignored (a background job of a script) keeps ignoring it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    saved: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        saved[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for num, handler in saved.items():
            signal.signal(num, handler)


class StopSignalRecorder:
    """Wrap the current SIGINT/SIGTERM handlers (a server's "stop" handlers) so that the
    first signal that came is remembered in :attr:`signum` before the wrapped handler runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopSignalRecorder:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            self._saved[sig] = signal.signal(sig, self._wrap(previous))
        return self

    def _wrap(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        def _record(signum: int, frame: FrameType | None) -> None:
            if self.signum is None:
                self.signum = signum
            if callable(previous):
                previous(signum, frame)
            else:  # SIG_DFL (or None): stop the way the signal would have
                raise Interrupted(signum)

        return _record

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


class StopSignalWaiter:
    """For a main thread that sits in C code (a FUSE loop) where Python handlers cannot
    run: SIGINT and SIGTERM are blocked in this thread and in every thread it starts
    afterwards, and a watcher thread takes them with sigwait and calls ``on_signal`` (which
    must make the C loop return, e.g. by unmounting)."""

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self.on_signal = on_signal
        self.signum: int | None = None
        self._old_mask: set[int] | None = None
        self._signals: set[int] = set()

    def __enter__(self) -> StopSignalWaiter:
        # A signal this process ignores (SIGINT in a script's background job) stays ignored:
        # it is blocked as well, but never waited for. Blocked, it reaches no handler that
        # a C library puts in meanwhile (mfusepy sets SIGINT to SIG_DFL so that libfuse
        # installs its own, which would unmount); pending, it is dropped once the
        # process's SIG_IGN is back, before the mask is.
        self._signals = {s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
        self._old_mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS)))
        threading.Thread(target=self._watch, name="aoe-stop-signals", daemon=True).start()
        return self

    def _watch(self) -> None:
        while True:
            signum = signal.sigwait(self._signals)
            if self.signum is None:
                self.signum = signum
                self.on_signal(signum)

    def __exit__(self, *exc: object) -> None:
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
