"""The systemd units pass `systemd-analyze verify`, and under journald the target's log
lines carry no timestamp of their own (the journal adds one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aoe.lab.pair import TwoHosts

from .support.service import stop
from .support.target import aoe_cmd, make_image

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (scripts/setup.sh)")


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(path)], check=False,
                          capture_output=True, text=True, timeout=60, cwd=path.parent)


def test_units_verify(tmp_path: Path) -> None:
    p = subprocess.run(aoe_cmd("systemd", "install", "--dir", str(tmp_path)),
                       check=False, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    plain = tmp_path / "aoe-serve.service"
    template = tmp_path / "aoe-serve@.service"
    text = plain.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    exe = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert exe and os.access(exe.group(1), os.X_OK)
    r = _verify(plain)
    assert r.returncode == 0, r.stderr
    instance = tmp_path / "aoe-serve@disk0.service"
    instance.write_text(template.read_text())
    r = _verify(instance)
    assert r.returncode == 0, r.stderr
    assert "/etc/pyaoe/%i.toml" in template.read_text()
    # The check can fail: a broken unit does not pass.
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ExecStart=/", "ExecStart="))
    assert _verify(broken).returncode != 0


@pytest.mark.netns
def test_no_timestamps_under_journald(two_hosts: TwoHosts, tmp_path: Path) -> None:
    img = make_image(tmp_path / "d.img", 1 << 20)
    for journald in (False, True):
        log = tmp_path / f"log{journald}"
        with open(log, "w") as err:
            st = os.fstat(err.fileno())
            env = dict(os.environ)
            env.pop("JOURNAL_STREAM", None)
            if journald:
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            proc = two_hosts.target.popen(
                aoe_cmd("serve", "-v", "--state-dir", str(tmp_path / "st"),
                        "--control-socket", str(tmp_path / "c.sock"), "-i", "eth0", "1.0",
                        str(img)),
                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready")
            stop(two_hosts.lab, proc)
        # The last line, what the stop did, is a message to the user, not a log record.
        lines = [ln for ln in log.read_text().splitlines()
                 if ln and not ln.startswith("terminated after")]
        assert lines
        stamped = [ln for ln in lines if re.match(r"\d{4}-\d\d-\d\dT", ln)]
        if journald:
            assert not stamped and lines[0].split()[0] in ("info", "warning"), lines
        else:
            assert len(stamped) == len(lines), lines
