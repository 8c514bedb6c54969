"""Run a long-lived export in the background, reporting success only once it is up.

The fork happens before any device is opened: the AoE initiator runs threads, and threads
do not survive fork(). The parent waits on a pipe until the child says it is ready (exit 0)
or relays the child's error (exit non-zero), so `aoe mount` in a script fails visibly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

Ready = Callable[[str], None]


class DaemonError(RuntimeError):
    """The background child failed before it was ready; the message is the child's."""


def run_detached(work: Callable[[Ready], None], log_path: str | None = None) -> str:
    """Fork; in the child (new session, stdio detached) call work(ready). The parent
    returns the child's ready message once work calls ready(message), or raises
    DaemonError with the child's error text."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return _parent_wait(rfd, pid)
    os.close(rfd)
    code = 1
    reported = False
    try:
        os.setsid()
        _detach_stdio(log_path, keep_stderr=True)

        def ready(message: str) -> None:
            nonlocal reported
            if not reported:
                reported = True
                os.write(wfd, b"OK " + message.encode() + b"\n")
                os.close(wfd)
                _detach_stdio(log_path, keep_stderr=False)

        work(ready)
        code = 0
    except SystemExit as exc:  # a signal's exit status (130, 143) after a clean stop
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # relayed to the parent, which prints it
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if reported:  # the parent is gone: only the log can hear it now
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            os.write(wfd, b"ERR " + text.replace("\n", " ").encode() + b"\n")
    finally:
        sys.stdout.flush()
        os._exit(code)


def _parent_wait(rfd: int, pid: int) -> str:
    chunks = []
    while True:
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    os.close(rfd)
    line = b"".join(chunks).decode(errors="replace").strip()
    if line.startswith("OK "):
        return line[3:]
    try:  # the child is gone or going: reap it so no zombie stays with us
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if line.startswith("ERR "):
        raise DaemonError(line[4:])
    raise DaemonError("the background process exited before it was ready")


def _detach_stdio(log_path: str | None, keep_stderr: bool) -> None:
    """stdin from /dev/null; stdout (and stderr once ready) to the log or /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else null
    os.dup2(out, 1)
    if not keep_stderr:
        os.dup2(out, 2)
    for fd in {null, out}:
        if fd > 2:
            os.close(fd)
