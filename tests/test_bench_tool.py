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
from aoe.lab.pair import TwoHosts

from .conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "tools" / "bench"

pytestmark = pytest.mark.netns


def _shm_dirs(pid: int) -> set[str]:
    """The scratch directories a bench run of process ``pid`` left in /dev/shm."""
    return {p for p in os.listdir("/dev/shm") if p.startswith(f"pyaoe-bench-{pid}-")}


def test_bench_quick_target_scenario(tmp_path: Path) -> None:
    require_netns()
    if shutil.which("vblade") is None:
        pytest.skip("vblade missing")
    out_json = tmp_path / "bench.json"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nprose that must stay\n")
    proc, stdout, stderr = _run_bench(
        ["--quick", "--scenarios", "target", "--mtus", "9000", "--size", "16M",
         "--no-write-docs", "--docs", str(docs), "--json", str(out_json)], 120)
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
    # The retired "aoe serve ≥ 1.5× vblade through the same initiator" goal is gone.
    goals = [g["text"] for g in report["tables"][0]["goals"]]
    assert len(goals) == 2 and not any("vblade" in g for g in goals)
    # --no-write-docs leaves the docs alone; nothing of the run is left behind.
    assert docs.read_text() == "# Benchmarks\n\nprose that must stay\n"
    assert not [n for n in list_netns() if n.startswith(f"aoelab-{proc.pid}x")]
    assert not _shm_dirs(proc.pid)


def _run_bench(args: list[str], limit: float) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen([sys.executable, str(BENCH), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    finally:
        if proc.poll() is None:  # SIGTERM first: the bench then removes its lab
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc, stdout, stderr


def _bench_cgroups(pid: int) -> list[str]:
    found = []
    for root, _dirs, _files in os.walk("/sys/fs/cgroup"):
        name = os.path.basename(root)
        if name.startswith(f"pyaoe-perf-bench-{pid}-"):
            found.append(root)
    return found


def test_bench_quick_netbook_scenario(tmp_path: Path) -> None:
    """Capped groups joined, a shaped cable, a tiny transfer per way; all removed."""
    require_netns()
    for tool in ("nc", "cc", "mkfs.ext4"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing")
    out_json = tmp_path / "bench.json"
    proc, stdout, stderr = _run_bench(
        ["--quick", "--scenarios", "netbook", "--mtus", "1500", "--size", "8M",
         "--netbook-links", "1gbit/1500", "--netbook-caps", "25",
         "--netbook-ways", "copy-to-file,tar-nc,c-pair,c-pair-file", "--netbook-size", "4M",
         "--netbook-period", "20", "--no-write-docs", "--json", str(out_json)], 240)
    assert proc.returncode == 0, stderr
    [table] = json.loads(out_json.read_text())["tables"]
    assert table["key"] == "netbook"
    assert any("CFS period 20 ms" in note for note in table["notes"])
    rows = {row[3]: row for row in table["rows"]}
    assert set(rows) == {"aoe serve + aoe copy to a file", "tar \\| nc",
                         "C responder + C reader (floor)",
                         "C responder + C reader to a file (floor)"}
    for row in rows.values():
        assert row[:3] == ["1gbit", "1500", "25 %"]
        assert float(row[4]) > 0 and float(row[6]) > 0  # MB/s, start-up seconds
        assert float(row[7]) > 0 and float(row[8]) > 0  # each side's group counted CPU
    assert rows["tar \\| nc"][9] == "1.00"
    # tbf holds TCP near the gigabit rate; an unshaped veth carries it many times faster.
    assert float(rows["tar \\| nc"][4]) < 200
    assert not _bench_cgroups(proc.pid)
    assert not [n for n in list_netns() if n.startswith(f"aoelab-{proc.pid}x")]
    assert not _shm_dirs(proc.pid)


def test_cpu_cap_joins_before_the_namespace_and_caps() -> None:
    """A process started in a CpuCap is in the group and in the host's namespace, and a
    busy loop in a 25 % group gets about a quarter of a core."""
    require_netns()
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from benchkit.cgroup import CpuCap, available
    finally:
        sys.path.remove(str(ROOT / "tools"))
    if available():
        pytest.skip(str(available()))
    from aoe.lab import Lab

    with Lab() as lab, CpuCap(f"pyaoe-perf-bench-{os.getpid()}-test", 25,
                              period_us=10_000) as cap:
        host = lab.host("h")
        cpu_dir = cap.dirs[0]
        period = ((cpu_dir / "cpu.max").read_text().split()[1] if cap.version == 2
                  else (cpu_dir / "cpu.cfs_period_us").read_text().strip())
        assert period == "10000"  # --netbook-period 10
        out = cap.run(host, ["sh", "-c", "cat /proc/self/cgroup; readlink /proc/self/ns/net"])
        lines = out.stdout.split()
        assert any(line.endswith(f"/{cap.name}") for line in lines)
        with host.enter():
            assert os.readlink("/proc/thread-self/ns/net") == lines[-1]
        c0 = cap.cpu_seconds()
        cap.run(host, [sys.executable, "-c",
                       "import time\nend = time.monotonic() + 2\n"
                       "while time.monotonic() < end: pass"])
        used = cap.cpu_seconds() - c0
        assert 0.2 < used < 1.0, used  # 25 % of 2 s is 0.5 s; uncapped it would be ~2 s
        name = cap.name
    assert not any(name in root for root, _d, _f in os.walk("/sys/fs/cgroup"))


def test_c_floor_pair_serves_the_image_faithfully(tmp_path: Path,
                                                 two_hosts_jumbo: TwoHosts) -> None:
    """The C responder the bench builds is a real AoE target (pyaoe's initiator reads
    and writes it byte for byte), in both of its ways of reading, and the C reader reads
    what it asks for."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from benchkit.fastreader import build
    finally:
        sys.path.remove(str(ROOT / "tools"))
    exe = build(tmp_path)
    image = tmp_path / "disk.img"
    data = os.urandom(8 << 20)
    image.write_bytes(data)
    hosts = two_hosts_jumbo
    aoe = str(Path(sys.executable).with_name("aoe"))
    out = tmp_path / "out.img"
    for mode in ("serve-copy", "serve"):  # the last one stays up for the writes below
        proc = hosts.target.popen([str(exe), mode, hosts.cable.a_ifname, "7", "7",
                                   str(image)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        out.unlink(missing_ok=True)
        hosts.initiator.run([aoe, "copy", "-i", hosts.cable.b_ifname, "7.7", str(out)],
                            timeout=120)
        assert out.read_bytes() == data, mode
        if mode == "serve-copy":
            hosts.lab.kill(proc)
    patch = tmp_path / "patch.bin"
    patch.write_bytes(os.urandom(1 << 20))
    hosts.initiator.run([aoe, "copy", "-i", hosts.cable.b_ifname, str(patch), "7.7"],
                        timeout=120)
    assert image.read_bytes()[: 1 << 20] == patch.read_bytes()
    got = hosts.initiator.run([str(exe), "read", hosts.cable.b_ifname, "7", "7",
                               str(4 << 20), "32"], timeout=60).stdout.split()
    assert int(got[0]) == 4 << 20 and float(got[1]) > 0
    # With a file to write, the reader leaves there exactly what it read (4 MiB and one
    # sector: the last request is short), and nothing of what the file held before.
    copied = tmp_path / "read.img"
    copied.write_bytes(b"\xee" * (5 << 20))
    hosts.initiator.run([str(exe), "read", hosts.cable.b_ifname, "7", "7",
                         str((4 << 20) + 512), "32", str(copied)], timeout=60)
    assert copied.read_bytes() == image.read_bytes()[: (4 << 20) + 512]
    hosts.lab.kill(proc)


def test_bench_quick_fastreader_scenario(tmp_path: Path) -> None:
    """Each target alone in a group of its own, capped and not, read by the C reader."""
    require_netns()
    for tool in ("vblade", "cc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing")
    out_json = tmp_path / "bench.json"
    proc, _stdout, stderr = _run_bench(
        ["--quick", "--scenarios", "fastreader", "--mtus", "9000", "--size", "8M",
         "--no-write-docs", "--json", str(out_json)], 240)
    assert proc.returncode == 0, stderr
    [table] = json.loads(out_json.read_text())["tables"]
    assert [row[:3] for row in table["rows"]] == [
        ["9000", cap, target] for cap in ("25 %", "100 %")
        for target in ("aoe serve", "vblade", "C responder (floor)",
                       "C responder, reads copied (pread)")]
    for row in table["rows"]:
        assert float(row[3]) > 0 and float(row[4]) > 0  # MB/s, the target's CPU s/GB
        assert int(row[5]) >= 0  # requests the reader resent
    assert table["headers"][5:] == ["requests resent", "/ vblade", "/ C responder"]
    assert [row[7] for row in table["rows"] if row[2] == "C responder (floor)"] == [
        "1.00", "1.00"]
    assert len(table["goals"]) == 2
    assert not _bench_cgroups(proc.pid)


def test_bench_rejects_bad_arguments() -> None:
    for args in (["--scenarios", "nope"], ["--size", "1x"], ["--rounds", "0"],
                 ["--netbook-links", "1gbit"], ["--netbook-caps", "0"],
                 ["--netbook-ways", "scp"]):
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
    write_section(doc, "netbook table", "netbook")  # a section of its own, appended once
    write_section(doc, "netbook table 2", "netbook")
    text = doc.read_text()
    assert f"{BEGIN}\nnew table\n{END}" in text and "netbook table\n" not in text
    assert text.endswith("<!-- netbook:begin -->\nnetbook table 2\n<!-- netbook:end -->\n")
    doc2 = tmp_path / "c.md"
    doc2.write_text("# C\n")
    write_section(doc2, "first")
    assert doc2.read_text() == f"# C\n\n{BEGIN}\nfirst\n{END}\n"


def test_warm_memory_touches_the_pages_and_gives_them_back() -> None:
    """The netbook ways' warm-up really faults `size` bytes in (the peak resident size
    grows by it) and frees them again (the resident size falls back)."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tools')!r})\n"
        "from benchkit.env import warm_memory\n"
        "def kib(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1])\n"
        "peak0 = kib('VmHWM')\n"
        "warm_memory(96 << 20)\n"
        "print(peak0, kib('VmHWM'), kib('VmRSS'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    peak0, peak1, rss = (int(x) for x in out.split())
    assert peak1 - peak0 >= 96 * 1024 - 1024  # touched, not merely mapped
    assert rss < peak1 - 64 * 1024  # and unmapped again
