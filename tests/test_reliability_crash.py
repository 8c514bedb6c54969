"""Target crash: `aoe serve` killed with SIGKILL in the middle of a copy.

Restarted within the dead-target time, the copy goes on as if nothing happened (the
initiator resends what was lost) and ends bit-identical, with no error for the caller.
Restarted after it, the caller gets a clear error: the library raises TargetDeadError and
`aoe copy` exits with status 1 and says why, without reporting what it copied as a success.
"""

from __future__ import annotations

import io
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aoe.initiator import TargetDeadError
from aoe.initiator.copy import copy_from_disk, copy_to_disk
from aoe.lab import Lab

from .support.reliability import (
    MIB,
    ExportDef,
    Served,
    delayed,
    figure,
    open_disk,
    serve,
    sha256_of,
    write_random,
)
from .support.target import AOE_BIN

pytestmark = pytest.mark.netns

DEAD_TIME = 5.0  # the initiator's dead-target time in the "back in time" case
SHORT_DEAD_TIME = 1.5  # ... and in the "too late" cases


class Crasher:
    """A copy progress callback that kills the target once ``fraction`` of the copy is
    done and starts it again ``down_for`` seconds later (None: the test restarts it)."""

    def __init__(self, served: Served, fraction: float, down_for: float | None) -> None:
        self.served = served
        self.fraction = fraction
        self.down_for = down_for
        self.killed_at: float | None = None
        self.ready_at: float | None = None
        self.restarter = None

    def __call__(self, done: int, total: int) -> None:
        if self.killed_at is None and done >= total * self.fraction:
            self.served.kill9()
            self.killed_at = time.monotonic()
            if self.down_for is not None:
                self.restarter = delayed(self.down_for, self.restart)

    def restart(self) -> None:
        self.served.start()
        self.ready_at = time.monotonic()

    def join(self) -> None:
        if self.restarter is not None:
            self.restarter.join(30)

    @property
    def outage(self) -> float:
        assert self.killed_at is not None and self.ready_at is not None
        return self.ready_at - self.killed_at


def _setup(lab: Lab, tmp_path: Path, size: int, rate: str | None = None) -> tuple[Served, Path]:
    target, initiator = lab.host("target"), lab.host("initiator")
    lab.cable(target, initiator, rate=rate)
    image = tmp_path / "disk.img"
    write_random(image, size, seed=11)
    return serve(lab, target, tmp_path, ["eth0"], [ExportDef("5.2", image)]), image


def test_copy_survives_a_target_killed_and_restarted_in_time(lab: Lab, tmp_path: Path) -> None:
    size = 64 * MIB
    served, image = _setup(lab, tmp_path, size)
    original = image.read_bytes()
    initiator = lab.hosts["initiator"]
    with open_disk(initiator, 5, 2, ["eth0"], dead_timeout=DEAD_TIME) as disk:
        # Disk -> file, killed a third of the way.
        crash = Crasher(served, 1 / 3, down_for=0.5)
        out = io.BytesIO()
        t0 = time.monotonic()
        copy_from_disk(disk, out, progress=crash, chunk=1 * MIB)
        read_time = time.monotonic() - t0
        crash.join()
        assert out.getvalue() == original
        read_outage = crash.outage
        retransmits_read = disk.stats().retransmits
        # File -> disk, killed a third of the way.
        new = random.Random(5).randbytes(size)
        crash = Crasher(served, 1 / 3, down_for=0.5)
        t0 = time.monotonic()
        copy_to_disk(disk, io.BytesIO(new), progress=crash, chunk=1 * MIB)
        write_time = time.monotonic() - t0
        crash.join()
        assert disk.read(0, size) == new
        stats = disk.stats()
    assert served.starts == 3 and served.alive()
    served.stop()
    assert image.read_bytes() == new
    assert retransmits_read > 0 and stats.retransmits > retransmits_read
    figure(f"crash in time: {size >> 20} MiB disk->file {read_time:.2f} s with a "
           f"{read_outage:.2f} s outage; file->disk {write_time:.2f} s with a "
           f"{crash.outage:.2f} s outage (dead time {DEAD_TIME} s); {stats.as_dict()}")


@pytest.mark.parametrize("direction", ["read", "write"])
def test_library_raises_target_dead_when_the_restart_is_too_late(
        lab: Lab, tmp_path: Path, direction: str) -> None:
    size = 64 * MIB
    served, image = _setup(lab, tmp_path, size)
    original = image.read_bytes()
    initiator = lab.hosts["initiator"]
    disk = open_disk(initiator, 5, 2, ["eth0"], dead_timeout=SHORT_DEAD_TIME)
    crash = Crasher(served, 1 / 3, down_for=None)
    new = random.Random(6).randbytes(size)
    with disk:
        with pytest.raises(TargetDeadError, match="did not answer") as caught:
            if direction == "read":
                copy_from_disk(disk, io.BytesIO(), progress=crash, chunk=1 * MIB)
            else:
                copy_to_disk(disk, io.BytesIO(new), progress=crash, chunk=1 * MIB)
        assert crash.killed_at is not None
        failed_after = time.monotonic() - crash.killed_at
        crash.restart()  # after the dead time: the session stays failed ...
        with pytest.raises(TargetDeadError):
            disk.read(0, 4096)
    # ... and a new one works with the restarted target.
    with open_disk(initiator, 5, 2, ["eth0"], dead_timeout=SHORT_DEAD_TIME) as again:
        head = again.read(0, 1 * MIB)
    served.stop()
    now = image.read_bytes()
    if direction == "read":
        assert head == original[: 1 * MIB] and now == original
    else:  # some of the new data landed; every sector is either old or new, nothing else
        assert head == now[: 1 * MIB]
        assert now != original
        assert all(now[i : i + 512] in (original[i : i + 512], new[i : i + 512])
                   for i in range(0, size, 512))
    figure(f"crash too late ({direction}): TargetDeadError {failed_after:.2f} s after the "
           f"kill (dead time {SHORT_DEAD_TIME} s): {caught.value}")


def _run_cli_copy(lab: Lab, argv: list[str], served: Served,
                  landed: Callable[[], bool]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `aoe copy` in the initiator host; kill the target once ``landed()`` says the
    copy is under way; restart it only after the command has given up."""
    initiator = lab.hosts["initiator"]
    proc = initiator.popen([AOE_BIN, "copy", *argv], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not landed():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the copy never got going"
        time.sleep(0.02)
    served.kill9()
    killed = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - killed
    lab.untrack(proc)
    served.start()  # after the dead time
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), took


def test_cli_copy_fails_clearly_when_the_target_stays_dead(lab: Lab, tmp_path: Path) -> None:
    size = 32 * MIB
    served, image = _setup(lab, tmp_path, size, rate="100mbit")  # a copy takes seconds
    out_file = tmp_path / "out.img"
    dead = str(SHORT_DEAD_TIME)

    def some_output() -> bool:
        return out_file.exists() and out_file.stat().st_size >= 2 * MIB

    done, took = _run_cli_copy(lab, ["5.2", str(out_file), "-i", "eth0", "--dead-time", dead,
                                     "--no-progress"], served, some_output)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Error: target 5.2 did not answer" in done.stderr
    assert "copied" not in done.stderr and "Traceback" not in done.stderr
    read_message = done.stderr.strip()
    # The other way: writes start landing in the image, then the target dies.
    source = tmp_path / "source.img"
    write_random(source, size, seed=12)
    before = sha256_of(image, 0, MIB)

    def some_written() -> bool:
        return sha256_of(image, 0, MIB) != before

    done, took_w = _run_cli_copy(lab, [str(source), "5.2", "-i", "eth0", "--dead-time", dead,
                                       "--no-progress"], served, some_written)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Error: target 5.2 did not answer" in done.stderr
    assert "copied" not in done.stderr and "Traceback" not in done.stderr
    # The restarted target serves again: a fresh command succeeds.
    ok = lab.hosts["initiator"].run([AOE_BIN, "copy", "5.2", str(tmp_path / "head.img"),
                                     "-i", "eth0", "--length", "1M", "--no-progress"],
                                    check=False, timeout=60)
    assert ok.returncode == 0 and "copied" in ok.stderr, ok.stderr
    served.stop()
    figure(f"cli crash: aoe copy exited 1 after {took:.2f} s (read) and {took_w:.2f} s "
           f"(write) with --dead-time {dead}: {read_message}")
