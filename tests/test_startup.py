"""Start-up cost of the user's commands: what `aoe copy` imports, and the rtnetlink reader
that replaced pyroute2 on the initiator's start-up path (same answers as pyroute2)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from aoe.lab.pair import TwoHosts, netns_unavailable_reason
from aoe.net import link

_SKIP = netns_unavailable_reason()

# hashlib loads OpenSSL (4 ms of every start-up); only `aoe copy --verify` needs it.
# logging (with traceback, string, textwrap) and concurrent.futures (which imports logging)
# cost 3-4 ms; the initiator logs only when something goes wrong.
HEAVY = ("pyroute2", "scapy", "aoe.lab", "aoe.target", "aoe.export", "mfusepy", "hashlib",
         "_hashlib", "logging", "concurrent")


def _imported_by(command: str) -> list[str]:
    code = (
        "import json, sys\n"
        "from aoe.cli import main\n"
        f"main.get_command(None, {command!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return list(json.loads(out))


@pytest.mark.parametrize("command", ["copy", "discover", "info"])
def test_initiator_commands_import_no_lab_capture_or_target(command: str) -> None:
    heavy = [m for m in _imported_by(command) if m.split(".")[0] in HEAVY
             or any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_every_command_still_registered() -> None:
    from click.testing import CliRunner

    from aoe.cli import COMMANDS, main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert f"  {name} " in result.output
        assert main.get_command(None, name) is not None  # type: ignore[arg-type]
    assert main.get_command(None, "no-such-command") is None  # type: ignore[arg-type]


@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_rtnetlink_reader_agrees_with_pyroute2(two_hosts_jumbo: TwoHosts) -> None:
    from pyroute2 import IPRoute

    with two_hosts_jumbo.target.enter():
        deadline = time.monotonic() + 10  # a new veth reports carrier a moment after "up"
        while link.link_info("eth0").operstate != "UP" and time.monotonic() < deadline:
            time.sleep(0.05)
        ours = link.list_links()
        with IPRoute() as ipr:
            theirs = sorted((link._info_from_msg(m) for m in ipr.link("dump")),
                            key=lambda i: i.index)
        one = link.link_info("eth0")
        with pytest.raises(link.LinkNotFoundError):
            link.link_info("nosuch0")
    assert ours == theirs
    assert one.kind == "veth" and one.mtu == 9000 and one.operstate == "UP"


def test_no_library_search_at_start() -> None:
    """ctypes.util.find_library runs ldconfig in a subprocess: no module of the data path
    calls it while it loads (the C library comes from the process's own symbols, libfuse
    by its soname)."""
    code = (
        "import ctypes.util\n"
        "def no_search(name):\n"
        "    raise SystemExit('find_library(%r) was called' % name)\n"
        "ctypes.util.find_library = no_search\n"
        "from aoe.cli import main\n"
        "for name in ('copy', 'serve', 'nbd', 'mount'):\n"
        "    main.get_command(None, name)\n"
        "import aoe.net.mmsg, aoe.export.readahead, aoe.export.fuse\n"
        "aoe.export.fuse._load_mfusepy()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_lazy_logger_logs_as_the_named_logger(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from aoe.lazylog import get_logger

    log = get_logger("aoe.initiator")
    with caplog.at_level(logging.WARNING, logger="aoe.initiator"):
        log.info("not shown")
        try:
            raise OSError(5, "gone")
        except OSError:
            log.exception("target %s failed", "1.0")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("aoe.initiator", "ERROR", "target 1.0 failed")]
    assert caplog.records[0].exc_info is not None


def _run_console(prelude: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`aoe ARGV...` the way the console script runs it, after ``prelude``."""
    code = (f"import sys\n{prelude}\nsys.argv = ['aoe', *{list(argv)!r}]\n"
            "from aoe.cli import run\nrun()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_console_script_is_the_quick_exit() -> None:
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="aoe")
    assert script.value == "aoe.cli:run"


def test_the_quick_exit_runs_exit_handlers_and_flushes_output() -> None:
    done = _run_console("import atexit\natexit.register(lambda: print('handler ran'))",
                        "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("aoe, version ")
    assert done.stdout.splitlines()[-1] == "handler ran"


def test_a_usage_error_through_the_quick_exit_still_says_why() -> None:
    done = _run_console("", "copy")
    assert done.returncode == 2
    assert "Missing argument" in done.stderr


def test_a_thread_still_running_gets_the_usual_exit() -> None:
    """Python's own exit waits for a non-daemon thread; the quick one must not cut it."""
    prelude = ("import threading, time\n"
               "threading.Thread(target=lambda: (time.sleep(0.3), print('late', flush=True)))"
               ".start()")
    done = _run_console(prelude, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "late"


@pytest.mark.parametrize(("argv", "hands_over"), [
    (("copy",), True), (("discover", "--timeout", "0"), True), (("flush",), True),
    (("serve",), False), (("mount",), False), (("--version",), False)])
def test_only_commands_that_end_after_their_closes_hand_them_over(
        argv: tuple[str, ...], hands_over: bool) -> None:
    """The daemons keep closing in place (they would not reap a holder); usage errors
    end each command at once, so this starts no target and sends nothing."""
    prelude = ("import atexit\nfrom aoe.net import rawsock\n"
               "atexit.register(lambda: print('hand over:', rawsock._Closing.hand_over))")
    done = _run_console(prelude, *argv)
    assert done.stdout.splitlines()[-1] == f"hand over: {hands_over}", done.stderr
