"""`aoe attach` on a real kernel's nbd driver: a qemu guest runs pyaoe from the host's root
(shared read-only) against `aoe serve` on the host side of its cable.

The host this suite runs on may have no nbd driver (then `aoe attach` can only say so, as
test_export_attach checks); the guest always has one, so the attach path runs everywhere.
One boot covers: attach, ext4 on /dev/nbd0, a refused detach while mounted, unmount and
detach, a target that never answers, and a target that goes away while attached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.lab.vm import Guest, VmResult

from .support.vm import (
    AOE_BIN,
    debugfs_cat,
    fsck,
    random_image,
    require_vm,
    start_serve,
)

pytestmark = [pytest.mark.vm, pytest.mark.netns]

MiB = 1 << 20
BIG = bytes(range(256)) * (3 * MiB // 256) + b"tail"


@dataclass
class AttachRun:
    result: VmResult
    disk: Path
    gone_disk: Path
    gone_before: bytes  # the image as it was served before the outage
    stopped_target: bool


def _script() -> str:
    aoe = AOE_BIN
    return f"""
AOE={aoe}
up() {{ cut -d' ' -f1 /proc/uptime; }}
t0=$(up)
$AOE attach -i eth0 --timeout 10 --log /tmp/attach.log 1.0 /dev/nbd0 > attach.out 2>&1
echo "@@attach=$?"
echo "@@attach_out=$(tail -n1 attach.out)"
echo "@@attach_s=$(awk -v a=$t0 -v b=$(up) 'BEGIN{{print b-a}}')"
echo "@@size=$(blockdev --getsize64 /dev/nbd0)"
dd if=/dev/nbd0 of=/dev/null bs=1M count=4 iflag=direct 2> dd.err; echo "@@read=$?"
echo "@@read_dd=$(tail -n1 dd.err)"
mkfs.ext4 -q -F -E nodiscard /dev/nbd0; echo "@@mkfs=$?"
mkdir -p /tmp/mnt
mount -t ext4 /dev/nbd0 /tmp/mnt; echo "@@mount=$?"
cp big.bin /tmp/mnt/big.bin && mkdir /tmp/mnt/dir && echo "over nbd" > /tmp/mnt/dir/note
echo "@@files=$?"
$AOE detach /dev/nbd0 > busy.out 2>&1; echo "@@busy=$?"
echo "@@busy_err=$(tail -n1 busy.out)"
sync; umount /tmp/mnt; echo "@@umount=$?"
$AOE detach /dev/nbd0 > detach.out 2>&1; echo "@@detach=$?"
cat detach.out
i=0; while [ $i -lt 100 ] && [ -e /sys/block/nbd0/pid ]; do sleep 0.1; i=$((i+1)); done
echo "@@detached=$([ -e /sys/block/nbd0/pid ] && echo no || echo yes)"
echo "@@attach_log=$(tr '\\n' '|' < /tmp/attach.log)"

$AOE attach -i eth0 --foreground --timeout 10 1.0 /dev/nbd3 > sig.out 2>&1 &
pid=$!
i=0; while [ $i -lt 100 ] && [ ! -e /sys/block/nbd3/pid ]; do sleep 0.1; i=$((i+1)); done
echo "@@sig_attached=$([ -e /sys/block/nbd3/pid ] && echo yes || echo no)"
t2=$(up)
kill -TERM $pid; wait $pid; echo "@@sig_status=$?"
echo "@@sig_s=$(awk -v a=$t2 -v b=$(up) 'BEGIN{{print b-a}}')"
echo "@@sig_detached=$([ -e /sys/block/nbd3/pid ] && echo no || echo yes)"
echo "@@sig_out=$(tail -n1 sig.out)"

$AOE attach -i eth0 --timeout 2 9.9 /dev/nbd1 > absent.out 2>&1; echo "@@absent=$?"
echo "@@absent_err=$(tail -n1 absent.out)"

$AOE attach -i eth0 --timeout 10 --log /tmp/gone.log 1.1 /dev/nbd2 > gone.out 2>&1
echo "@@gone_attach=$?"
dd if=/dev/nbd2 of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null; echo "@@gone_before=$?"
echo "@@host:stop-target"
sleep 2
t1=$(up)
dd if=/dev/nbd2 of=/dev/null bs=64k count=1 skip=32 iflag=direct 2> gone.err
echo "@@gone_read=$?"
echo "@@gone_read_s=$(awk -v a=$t1 -v b=$(up) 'BEGIN{{print b-a}}')"
echo "@@gone_read_err=$(grep -i error gone.err | tail -n1)"
echo "@@gone_write=$(dd if=big.bin of=/dev/nbd2 bs=4096 count=1 oflag=direct 2>/dev/null; echo $?)"
echo "@@host:start-target"
i=0
until dd if=/dev/nbd2 of=/dev/null bs=64k count=1 skip=32 iflag=direct 2>/dev/null; do
  i=$((i+1)); [ $i -ge 60 ] && break; sleep 0.5
done
echo "@@back_read=$([ $i -lt 60 ] && echo 0 || echo 1)"
echo "@@back_write=$(dd if=big.bin of=/dev/nbd2 bs=4096 count=1 seek=8 oflag=direct \
  conv=fsync 2>/dev/null; echo $?)"
$AOE detach /dev/nbd2 > gone_detach.out 2>&1; echo "@@gone_detach=$?"
i=0; while [ $i -lt 100 ] && [ -e /sys/block/nbd2/pid ]; do sleep 0.1; i=$((i+1)); done
echo "@@gone_log=$(tr '\\n' '|' < /tmp/gone.log)"
"""


@pytest.fixture(scope="module")
def attach_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttachRun]:
    require_vm()
    tmp = tmp_path_factory.mktemp("kvmattach")
    disk, gone_disk = tmp / "disk.img", tmp / "gone.img"
    disk.write_bytes(bytes(16 * MiB))
    random_image(gone_disk, 8 * MiB, "gone")
    gone_before = gone_disk.read_bytes()
    stopped = False
    with Lab("aoevm-") as lab:
        host = lab.host("target")
        with Guest(host) as guest:
            main = start_serve(host, ["--state-dir", str(tmp / "state"), "1.0", str(disk),
                                      "-i", guest.tap])
            going = start_serve(host, ["--state-dir", str(tmp / "state"), "1.1",
                                       str(gone_disk), "-i", guest.tap])

            def on_line(line: str) -> None:
                nonlocal stopped, going
                if line.strip() == "@@host:stop-target":
                    lab.kill(going)
                    stopped = True
                elif line.strip() == "@@host:start-target":  # the same target comes back
                    going = start_serve(host, ["--state-dir", str(tmp / "state"), "1.1",
                                               str(gone_disk), "-i", guest.tap])

            result = guest.run(_script(), files={"big.bin": BIG}, timeout=400,
                               on_line=on_line)
            lab.kill(main)
            lab.kill(going)
    print(f"boot {result.boot_seconds:.1f}s, script {result.run_seconds:.1f}s")
    print(result.output)
    yield AttachRun(result, disk, gone_disk, gone_before, stopped)


def test_attach_mkfs_mount_write_detach(attach_run: AttachRun) -> None:
    res = attach_run.result
    assert res.mark("attach") == "0", res.output
    assert "attached as /dev/nbd0" in res.mark("attach_out")
    assert int(res.mark("size")) == 16 * MiB
    for step in ("read", "mkfs", "mount", "files", "umount", "detach"):
        assert res.mark(step) == "0", (step, res.output)
    assert res.mark("detached") == "yes"  # the kernel let go of the device


def test_the_file_system_written_through_nbd_is_clean_on_the_host(
        attach_run: AttachRun) -> None:
    checked = fsck(attach_run.disk)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert debugfs_cat(attach_run.disk, "/big.bin") == BIG
    assert debugfs_cat(attach_run.disk, "/dir/note") == b"over nbd\n"


def test_detach_while_mounted_is_refused(attach_run: AttachRun) -> None:
    res = attach_run.result
    assert res.mark("busy") == "1", res.output
    err = res.mark("busy_err")
    assert "not detaching /dev/nbd0" in err and "mounted on /tmp/mnt" in err, err
    assert "Traceback" not in res.output


def test_sigterm_detaches_and_exits_143(attach_run: AttachRun) -> None:
    """SIGTERM to `aoe attach`: the kernel device is let go, one line says so, the exit
    status is the shell's for SIGTERM."""
    res = attach_run.result
    assert res.mark("sig_attached") == "yes", res.output
    assert res.mark("sig_status") == "143", res.output
    assert res.mark("sig_detached") == "yes", res.output
    out = res.mark("sig_out")
    assert "and detached /dev/nbd3" in out and "Traceback" not in out, out
    print(f"attach stopped {res.mark('sig_s')} s after SIGTERM")


def test_attach_to_a_target_that_never_answers(attach_run: AttachRun) -> None:
    res = attach_run.result
    assert res.mark("absent") == "1", res.output
    assert "9.9" in res.mark("absent_err") and "Traceback" not in res.output


def test_target_gone_while_attached_fails_io_clearly(attach_run: AttachRun) -> None:
    res = attach_run.result
    assert attach_run.stopped_target
    assert res.mark("gone_attach") == "0" and res.mark("gone_before") == "0", res.output
    assert res.mark("gone_read") != "0", res.output
    assert "Input/output error" in res.mark("gone_read_err")
    assert res.mark("gone_write") != "0"
    assert res.mark("gone_detach") == "0", res.output
    log = res.mark("gone_log")
    assert "Traceback" not in log
    assert "1.1" in log or "e1.1" in log, log
    # nothing reached the image while the target was away


def test_attach_serves_again_once_the_target_is_back(attach_run: AttachRun) -> None:
    """No detach and attach again: the same device reads and writes once the same target
    answers again."""
    res = attach_run.result
    assert res.mark("back_read") == "0", res.output
    assert res.mark("back_write") == "0", res.output
    log = res.mark("gone_log")
    assert "is back after" in log, log
    # The image holds exactly one change: the write made after the return (block 8); the
    # write attempted during the outage (block 0) never reached it.
    expected = bytearray(attach_run.gone_before)
    expected[8 * 4096:9 * 4096] = BIG[:4096]
    assert attach_run.gone_disk.read_bytes() == bytes(expected)

