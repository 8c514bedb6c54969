"""`make demo` must stay true: the whole user story runs and says so."""

from __future__ import annotations

import subprocess
import sys

from aoe.lab import list_netns

from .conftest import needs_netns


@needs_netns
def test_demo_runs_the_whole_story() -> None:
    before = set(list_netns("aoedemo-"))
    done = subprocess.run(
        [sys.executable, "-m", "aoe.lab.demo"], capture_output=True, text=True, timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "checksum matches" in out
    assert "fsck.ext4 -n over AoE is clean" in out
    assert "now holds reply.txt" in out
    assert set(list_netns("aoedemo-")) == before
