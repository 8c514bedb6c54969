"""tools/bench, smallest run: one cheap scenario end to end, a sane table, nothing left over.

Speed is not asserted (benchmarks say it); this checks the tool works and cleans up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aoe.lab import list_netns

from .conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "tools" / "bench"

pytestmark = pytest.mark.netns


def _shm_dirs() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith("pyaoe-bench-")}


def test_bench_quick_target_scenario(tmp_path: Path) -> None:
    require_netns()
    if shutil.which("vblade") is None:
        pytest.skip("vblade missing")
    before = _shm_dirs()
    out_json = tmp_path / "bench.json"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nprose that must stay\n")
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--scenarios", "target", "--mtus", "9000",
         "--size", "16M", "--no-write-docs", "--docs", str(docs), "--json", str(out_json)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # SIGTERM first: the bench then removes its lab
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr
    assert "| 9000 | read |" in stdout and "| 9000 | write |" in stdout
    report = json.loads(out_json.read_text())
    [table] = report["tables"]
    assert table["key"] == "target"
    assert [row[:2] for row in table["rows"]] == [["9000", "read"], ["9000", "write"]]
    for row in table["rows"]:
        serve, vblade, ratio = float(row[2]), float(row[3]), float(row[4])
        assert serve > 0 and vblade > 0
        assert abs(ratio - serve / vblade) < 0.02  # the ratio is that of the two medians
    assert {b["series"] for b in table["bars"]} == {"aoe serve", "vblade"}
    assert len(report["tables"][0]["goals"]) == 4
    # --no-write-docs leaves the docs alone; nothing of the run is left behind.
    assert docs.read_text() == "# Benchmarks\n\nprose that must stay\n"
    assert not [n for n in list_netns() if n.startswith(f"aoelab-{proc.pid}x")]
    assert _shm_dirs() == before


def test_bench_rejects_bad_arguments() -> None:
    for args in (["--scenarios", "nope"], ["--size", "1x"], ["--rounds", "0"]):
        done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr and "error:" in done.stderr


def test_bench_section_replacement_keeps_the_rest(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from benchkit.report import BEGIN, END, write_section
    finally:
        sys.path.remove(str(ROOT / "tools"))
    doc = tmp_path / "b.md"
    doc.write_text(f"# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## Later\n\ntext\n")
    write_section(doc, "new table")
    text = doc.read_text()
    assert "old" not in text and f"{BEGIN}\nnew table\n{END}" in text
    assert text.startswith("# B\n\nintro\n") and text.endswith("## Later\n\ntext\n")
    doc2 = tmp_path / "c.md"
    doc2.write_text("# C\n")
    write_section(doc2, "first")
    assert doc2.read_text() == f"# C\n\n{BEGIN}\nfirst\n{END}\n"
