"""`aoe lab`: labs that persist across invocations, exec inside them, the relay command."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from aoe.lab import list_netns, namespace_exists
from aoe.lab.pair import netns_unavailable_reason

_SKIP = netns_unavailable_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


_SCRIPT = Path(sys.executable).with_name("aoe")
AOE = [str(_SCRIPT)] if _SCRIPT.exists() else [
    sys.executable, "-c", "from aoe.cli import main; main(prog_name='aoe')"]


@pytest.fixture
def aoe(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `aoe ...` in a subprocess with a private state dir and namespace prefix."""
    prefix = f"aoelabcli{os.getpid()}{secrets.token_hex(2)}-"
    env = dict(os.environ, AOE_LAB_STATE_DIR=str(tmp_path / "labs"))

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        args = list(argv)
        if args[0] == "lab" and args[1] in ("up", "down", "list"):
            args[2:2] = ["--prefix", prefix]
        res = subprocess.run([*AOE, *args], env=env, text=True,
                             capture_output=True, timeout=60)
        assert "Traceback" not in res.stderr, res.stderr
        if check:
            assert res.returncode == 0, res.stderr
        return res

    run.prefix = prefix  # type: ignore[attr-defined]
    yield run
    run("lab", "down", "--all", check=False)
    assert list_netns(prefix) == []


def test_up_list_exec_down(aoe) -> None:  # type: ignore[no-untyped-def]
    up = aoe("lab", "up", "--name", "t1", "--hosts", "3", "--mtu", "9000", "--json")
    desc = json.loads(up.stdout)
    assert sorted(desc["hosts"]) == ["h1", "h2", "h3"]
    assert [(c["a"], c["b"]) for c in desc["cables"]] == [("h1", "h2"), ("h2", "h3")]
    assert all(namespace_exists(ns) for ns in desc["hosts"].values())
    listed = json.loads(aoe("lab", "list", "--json").stdout)
    assert [lab["name"] for lab in listed["labs"]] == ["t1"]
    mtu = aoe("lab", "exec", "t1/h2", "--", "cat", "/sys/class/net/eth1/mtu").stdout
    assert mtu.strip() == "9000"
    assert aoe("lab", "exec", "h3", "--", "sh", "-c", "exit 3", check=False).returncode == 3
    again = aoe("lab", "up", "--name", "t1", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    aoe("lab", "down", "t1")
    assert not any(namespace_exists(ns) for ns in desc["hosts"].values())
    assert "no labs" in aoe("lab", "list").stdout


def test_bad_arguments_give_clear_errors(aoe) -> None:  # type: ignore[no-untyped-def]
    for argv, needle in (
        (["lab", "up", "--cable", "x:y"], "want A:B"),
        (["lab", "up", "--rate", "fast"], "bad rate"),
        (["lab", "up", "--name", "bad/name"], "bad lab name"),
        (["lab", "down"], "give a lab NAME or --all"),
        (["lab", "down", "nosuchlab"], "no lab named"),
        (["lab", "exec", "nosuchhost", "--", "true"], "no saved lab has a host"),
        (["lab", "relay", "eth0", "eth1", "--drop", "2"], "--drop"),
        (["lab", "relay", "eth0", "eth1", "--delay", "soon"], "bad time"),
        (["lab", "relay", "nope0", "nope1", "--duration", "0.1"], "relay port"),
    ):
        res = aoe(*argv, check=False)
        assert res.returncode != 0 and needle in res.stderr, (argv, res.stderr)


def test_down_all_removes_strays_with_prefix(aoe) -> None:  # type: ignore[no-untyped-def]
    aoe("lab", "up", "--hosts", "2")
    assert len(list_netns(aoe.prefix)) == 2
    assert "removed 2 namespace(s)" in aoe("lab", "down", "--all").stdout
    assert list_netns(aoe.prefix) == []


def test_relay_command_runs_in_a_lab_host(aoe) -> None:  # type: ignore[no-untyped-def]
    aoe("lab", "up", "--name", "r1", "--host", "a", "--host", "r", "--host", "b")
    res = aoe("lab", "relay", "eth0", "eth1", "--in", "r1/r", "--drop", "0.5",
              "--duration", "0.2", "--json")
    counts = json.loads(res.stdout)
    assert counts["total"]["received"] == 0 and set(counts) == {"a_to_b", "b_to_a", "total"}
