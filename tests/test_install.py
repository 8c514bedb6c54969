"""The README's "Install with pip" path, as a user without the Makefile takes it: a fresh
virtualenv, `pip install .` from a copy of the checkout, then the `aoe` command.

Runs in CI with the rest of the suite; pip takes what it needs from PyPI or its cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _copy_checkout(dest: Path) -> None:
    """The files a clean clone has (no .venv, no build output)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                    "__pycache__", ".mypy_cache", ".ruff_cache",
                                    ".pytest_cache", "docs", "tests", "tools")
    shutil.copytree(ROOT, dest, ignore=ignore)


@pytest.mark.install
def test_pip_install_into_a_fresh_venv(tmp_path: Path) -> None:
    src = tmp_path / "pyaoe"
    _copy_checkout(src)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr

    helped = subprocess.run([str(env_dir / "bin" / "aoe"), "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "discover", "copy", "mount", "nbd", "lab"):
        assert f"  {command}" in helped.stdout

    # The installed metadata: the tested lower bounds and the license file travel with it.
    show = subprocess.run([str(py), "-c", (
        "import importlib.metadata as m, json; d = m.distribution('pyaoe'); "
        "print(json.dumps({'requires': d.requires, 'license': d.metadata['License-Expression'],"
        " 'files': [str(f) for f in d.files or []],"
        " 'classifiers': d.metadata.get_all('Classifier')}))")],
        capture_output=True, text=True, timeout=60, check=False)
    assert show.returncode == 0, show.stderr
    meta = json.loads(show.stdout)
    assert set(meta["requires"]) >= {"mfusepy>=3.1", "pyroute2>=0.7.3", "click>=8.1",
                                     "scapy>=2.5"}
    assert meta["license"] == "MIT"
    assert any(f.endswith("licenses/LICENSE") for f in meta["files"])
    assert "Operating System :: POSIX :: Linux" in meta["classifiers"]


def test_license_file_matches_pyproject() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "pyaoe contributors" in text
    # the development install (setup.sh) carries the same declared license
    assert metadata.metadata("pyaoe")["License-Expression"] == "MIT"


def test_the_dev_venv_is_made_from_the_interpreter_setup_picks() -> None:
    """scripts/setup.sh makes .venv from the distribution's python3 (or $PYTHON): the
    performance figures in docs/ are taken on that interpreter."""
    cfg = ROOT / ".venv" / "pyvenv.cfg"
    if not cfg.exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running from the checkout's .venv (scripts/setup.sh makes it)")
    chosen = os.environ.get("PYTHON") or "/usr/bin/python3"
    if not os.environ.get("PYTHON") and not os.path.exists(chosen):
        pytest.skip("no distribution python3 here: setup falls back to python3 on PATH")
    real = "import os, sys; print(os.path.realpath(sys.executable))"
    expected = subprocess.run([chosen, "-c", real], capture_output=True, text=True,
                              timeout=60, check=True).stdout.strip()
    fields = dict(line.split(" = ", 1) for line in cfg.read_text().splitlines() if " = " in line)
    assert fields["executable"] == expected
    assert os.path.realpath(sys._base_executable) == expected  # type: ignore[attr-defined]
