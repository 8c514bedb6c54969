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
HEAVY = ("pyroute2", "scapy", "aoe.lab", "aoe.target", "aoe.export", "mfusepy", "hashlib",
         "_hashlib")


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
