"""CPU-capped cgroups for the netbook scenario: each host's processes share one quota.

cgroup v2 (`cpu.max`, usage in `cpu.stat`) where the unified tree has the cpu controller,
else cgroup v1 (`cpu.cfs_quota_us` in the cpu hierarchy, usage in `cpuacct.usage`, which
may be a hierarchy of its own). A process joins before it enters its network namespace:
entering one through `popen` mounts a fresh /sys in which the cgroup tree is absent, so
the cgroup files are opened in the parent and written by the child between fork and exec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aoe.lab import Host
from aoe.lab.nsutil import enter_for_exec

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _v2_root() -> Path | None:
    """The unified tree when it carries the cpu controller (pure v2 or hybrid)."""
    for root in (ROOT, ROOT / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return root
    return None


def _v1_dir(controller: str) -> Path | None:
    """The v1 hierarchy holding `controller` (mounted alone or co-mounted)."""
    for path in sorted(ROOT.iterdir()) if ROOT.is_dir() else []:
        if controller in path.name.split(",") and (path / "cgroup.procs").exists():
            return path
    return None


def available() -> str | None:
    """Why CPU caps cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "CPU caps need root"
    if _v2_root() is None and _v1_dir("cpu") is None:
        return "no cgroup cpu controller (neither v2 cpu.max nor v1 cpu.cfs_quota_us)"
    return None


class CpuCap:
    """One cgroup with a CPU quota (percent of one core, None = uncapped)."""

    def __init__(self, name: str, percent: float | None = None,
                 period_us: int = PERIOD_US) -> None:
        self.name = name
        self.period_us = period_us
        self.dirs: list[Path] = []
        v2 = _v2_root()
        if v2 is not None:
            self.version = 2
            with open(v2 / "cgroup.subtree_control", "w") as f:
                f.write("+cpu")
            self.dirs = [v2 / name]
        else:
            self.version = 1
            cpu, acct = _v1_dir("cpu"), _v1_dir("cpuacct")
            assert cpu is not None
            self.dirs = [cpu / name] + ([acct / name] if acct and acct != cpu else [])
        for d in self.dirs:
            d.mkdir()
        self.set(percent)

    @property
    def _cpu(self) -> Path:
        return self.dirs[0]

    def set(self, percent: float | None) -> None:
        """Cap the group at `percent` of one core, or lift the cap (None)."""
        self.percent = percent
        period = self.period_us
        quota = -1 if percent is None else max(1000, int(period * percent / 100))
        if self.version == 2:
            (self._cpu / "cpu.max").write_text(
                f"{'max' if quota < 0 else quota} {period}")
        else:
            (self._cpu / "cpu.cfs_period_us").write_text(str(period))
            (self._cpu / "cpu.cfs_quota_us").write_text(str(quota))

    def cpu_seconds(self) -> float:
        """CPU seconds every process that ever ran in the group has used (user + system)."""
        if self.version == 2:
            for line in (self._cpu / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            return 0.0
        return int((self.dirs[-1] / "cpuacct.usage").read_text()) / 1e9

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(out)

    def popen(self, host: Host | None, argv: Sequence[str], *, private_sysfs: bool = True,
              **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside this group and then inside `host`'s namespace (or the
        machine's own, host None). The lab tracks and kills it like any other."""
        fds = [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs]
        ns_fd = -1 if host is None else os.open(host.path, os.O_RDONLY | os.O_CLOEXEC)

        def preexec() -> None:
            me = str(os.getpid()).encode()
            for fd in fds:
                os.write(fd, me)
            if ns_fd >= 0:
                enter_for_exec(ns_fd, private_sysfs)

        kw.setdefault("start_new_session", True)
        try:
            proc = subprocess.Popen(list(argv), preexec_fn=preexec, **kw)  # noqa: PLW1509
        finally:
            for fd in fds:
                os.close(fd)
            if ns_fd >= 0:
                os.close(ns_fd)
        if host is not None:
            host.lab.track(proc)
        return proc

    def run(self, host: Host | None, argv: Sequence[str], timeout: float = 900.0,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion in the group (output captured); raise on failure."""
        proc = self.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            proc.communicate()
            raise
        finally:
            if host is not None:
                host.lab.untrack(proc)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, list(argv), out, err)
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def kill_all(self, grace: float = 3.0) -> None:
        """End every process left in the group, with the quota lifted so they can exit
        (processes left behind would share, and spend, the next measurement's quota)."""
        percent = self.percent
        self.set(None)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.pids():
                break
        self.set(percent)

    def remove(self) -> None:
        """Kill what is left and delete the group."""
        try:
            self.kill_all()
        finally:
            for d in self.dirs:
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)

    def __enter__(self) -> CpuCap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
