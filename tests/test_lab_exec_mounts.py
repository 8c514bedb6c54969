"""`aoe mount` run through `aoe lab exec`: the FUSE file must be visible to every process
(here: the test's own), and `fusermount3 -u` must work from outside. With
--private-mounts (what `ip netns exec` does) the mount stays inside the command's own
mount namespace, and `aoe mount` says so."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aoe.lab.pair import netns_unavailable_reason

from .support.export import umount_quietly
from .support.initiator import write_image

_SKIP = netns_unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

AOE = str(Path(sys.executable).with_name("aoe"))
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def lab_cli(tmp_path: Path) -> Iterator[tuple[Run, dict[str, Any], dict[str, str]]]:
    """A two-host lab made with `aoe lab up` (private state dir and prefix)."""
    prefix = f"aoeinit{os.getpid()}{secrets.token_hex(2)}-"
    env = dict(os.environ, AOE_LAB_STATE_DIR=str(tmp_path / "labs"))

    def run(*argv: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([AOE, *argv], env=env, text=True, capture_output=True,
                              timeout=60, **kw, check=False)
        assert "Traceback" not in done.stderr, done.stderr
        if check:
            assert done.returncode == 0, done.stderr
        return done

    desc = json.loads(run("lab", "up", "--prefix", prefix, "--name", "mnt", "--hosts", "2",
                          "--json").stdout)
    try:
        yield run, desc, env
    finally:
        run("lab", "down", "--prefix", prefix, "mnt", check=False)


def _pid(message: str) -> int:
    found = re.search(r"\(pid (\d+)\)", message)
    assert found, message
    return int(found.group(1))


def _gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def test_mount_through_lab_exec_is_visible_outside(
        lab_cli: tuple[Run, dict[str, Any], dict[str, str]], tmp_path: Path) -> None:
    run, desc, env = lab_cli
    cable = desc["cables"][0]
    image = tmp_path / "disk.img"
    data = write_image(image, 2 << 20, seed=7)
    vblade = subprocess.Popen([AOE, "lab", "exec", f"mnt/{cable['a']}", "--", "vblade", "5",
                               "2", cable["a_ifname"], str(image)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    mp = tmp_path / "mp"
    mp.mkdir()
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    pids = []
    try:
        done = run("lab", "exec", f"mnt/{cable['b']}", "--", AOE, "mount", "5.2", str(mp),
                   "-i", cable["b_ifname"], "--timeout", "5")
        pids.append(_pid(done.stdout))
        assert "mount namespace of its own" not in done.stderr
        # the test process (another mount namespace user) sees and reads the file
        assert os.path.ismount(mp)
        with open(mp / "disk", "rb") as f:
            assert f.read(1 << 20) == data[: 1 << 20]
        unmounted = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True,
                                   text=True, check=False)
        assert unmounted.returncode == 0, unmounted.stderr
        _gone(pids[-1])

        # what `ip netns exec` does: the mount lives and dies in a private namespace
        done = run("lab", "exec", "--private-mounts", f"mnt/{cable['b']}", "--", AOE, "mount",
                   "5.2", str(hidden), "-i", cable["b_ifname"], "--timeout", "5")
        pids.append(_pid(done.stdout))
        assert "warning: this process has a mount namespace of its own" in done.stderr
        assert not os.path.ismount(hidden) and os.listdir(hidden) == []
        os.kill(pids[-1], signal.SIGTERM)
        _gone(pids[-1])
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        umount_quietly(mp, fuse=True)
        os.killpg(vblade.pid, signal.SIGTERM)
        vblade.wait(10)
