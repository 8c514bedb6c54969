"""`aoe serve` and vblade against the Linux kernel's own AoE initiator (aoe.ko), in a qemu
guest booted from Debian's distribution kernel.

One boot per MTU runs every step in one guest script (discovery, whole-disk reads, raw
writes, ext4) on both targets at once, so a difference between pyaoe and vblade shows in
the same run; the checks below then read what the guest printed and the images it wrote.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.lab.vm import Guest, VmResult

from .support.vm import (
    FrameSizes,
    SeenQuery,
    debugfs_cat,
    fsck,
    random_image,
    require_vm,
    sha256_file,
    start_serve,
)

pytestmark = [pytest.mark.vm, pytest.mark.netns]

MiB = 1 << 20
DISK = 16 * MiB
FS_SIZE = "8M"  # ext4 on the first 8 MiB; the raw writes go after it
# (offset, size): several sizes, aligned and not to 4 KiB, one spanning many frames
WRITES = [(8 * MiB, 512), (8 * MiB + 3584, 4096), (9 * MiB + 512, 1536),
          (10 * MiB + 4096, 65536), (12 * MiB + 1024, MiB + 512)]
BIG_FILE = 2 * MiB + 123
RW = {"aoe serve": "e1.0", "vblade": "e2.0"}
READ_ONLY = "e1.1"
MASKED = "e1.2"
OTHER_MAC = "02:00:00:00:0a:01"  # the only initiator the masked export admits


@dataclass
class KernelRun:
    mtu: int
    result: VmResult
    images: dict[str, Path]
    shas: dict[str, str]
    writes: dict[str, bytes]
    big: bytes
    largest_frames: dict[int, int] = field(default_factory=dict)  # shelf -> bytes
    queries: list[SeenQuery] = field(default_factory=list)  # Query Configs on the cable
    guest_mac: bytes = b""


def _pattern(i: int, size: int) -> bytes:
    unit = f"write {i} of {size} bytes|".encode()
    return (unit * (size // len(unit) + 1))[:size]


POLL_MTU = 1500  # the boot that stays up past the driver's 60 s Query Config poll


def _poll_wait(mtu: int) -> str:
    """At one MTU only (it costs a minute): stay up until the driver's periodic Query
    Config (every 60 s from module load, which came before the script) has gone out."""
    if mtu != POLL_MTU:
        return ""
    return """while [ $(cut -d. -f1 /proc/uptime) -lt $(( ${t0%.*} + 64 )) ]; do sleep 1; done
echo "@@polled=yes"
"""


def _guest_script(mtu: int) -> str:
    devs = " ".join([*RW.values(), READ_ONLY])
    wait = " && ".join(f"[ -b /dev/etherd/{d} ]" for d in [*RW.values(), READ_ONLY])
    writes = " ".join(f"{off}:{size}:w{i}.bin" for i, (off, size) in enumerate(WRITES))
    return f"""
mount -t debugfs none /sys/kernel/debug
t0=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ $i -lt 600 ] && ! {{ {wait}; }}; do
  [ $((i % 50)) -eq 0 ] && echo > /dev/etherd/discover
  sleep 0.1; i=$((i+1))
done
echo "@@discover_s=$(awk -v a=$t0 -v b=$(cut -d' ' -f1 /proc/uptime) 'BEGIN{{print b-a}}')"
echo > /dev/etherd/discover; sleep 3   # the masked export gets its chance to answer
echo "@@devices=$(ls /dev/etherd | grep '^e' | tr '\\n' ' ')"
for d in {devs}; do
  [ -b /dev/etherd/$d ] || continue
  echo "@@$d.size=$(blockdev --getsize64 /dev/etherd/$d)"
  echo "@@$d.maxbcnt=$(sed -n 's/^maxbcnt: *//p' /sys/kernel/debug/aoe/$d)"
  dd if=/dev/etherd/$d bs=1M iflag=direct 2>dd.err | sha256sum > sum
  echo "@@$d.sha256=$(cut -d' ' -f1 sum)"
  echo "@@$d.dd=$(tail -n1 dd.err)"
done
for d in {" ".join(RW.values())}; do
  [ -b /dev/etherd/$d ] || continue
  mkfs.ext4 -q -F -E nodiscard -L guest /dev/etherd/$d {FS_SIZE}; echo "@@$d.mkfs=$?"
  mkdir -p /tmp/mnt-$d
  mount -t ext4 /dev/etherd/$d /tmp/mnt-$d; echo "@@$d.mount=$?"
  cp big.bin /tmp/mnt-$d/big.bin && mkdir /tmp/mnt-$d/dir && \\
    for n in 1 2 3 4 5 6 7 8 9 10; do echo "small file $n" > /tmp/mnt-$d/dir/f$n; done
  echo "@@$d.files=$?"
  sync; umount /tmp/mnt-$d; echo "@@$d.umount=$?"
  n=0
  for w in {writes}; do
    off=${{w%%:*}}; rest=${{w#*:}}; size=${{rest%%:*}}; file=${{rest#*:}}
    dd if=$file of=/dev/etherd/$d bs=$size count=1 seek=$off \\
       oflag=direct,seek_bytes conv=notrunc,fsync 2>/dev/null
    echo "@@$d.write$n=$?"; n=$((n+1))
  done
done
dd if=w0.bin of=/dev/etherd/{READ_ONLY} bs=512 count=1 oflag=direct conv=notrunc,fsync \\
  2>ro.err; echo "@@{READ_ONLY}.write_rc=$?"
echo "@@{READ_ONLY}.write_err=$(tail -n1 ro.err)"
dmesg | grep -i aoe
echo "@@frames_msgs=$(dmesg | grep -c 'byte data frames')"
{_poll_wait(mtu)}"""


def _boot(mtu: int, tmp: Path) -> KernelRun:
    images: dict[str, Path] = {}
    shas: dict[str, str] = {}
    for name, size in [*((d, DISK) for d in RW.values()), (READ_ONLY, 4 * MiB),
                       (MASKED, MiB)]:
        images[name] = tmp / f"{name}.img"
        shas[name] = random_image(images[name], size, f"{name}-{mtu}")
    writes = {f"w{i}.bin": _pattern(i, size) for i, (_, size) in enumerate(WRITES)}
    big = _pattern(99, BIG_FILE)
    state = tmp / "state"
    with Lab("aoevm-") as lab:
        host = lab.host("target")
        with Guest(host, mtu=mtu, module_args={"aoe": "aoe_iflist=eth0"}) as guest:
            config = tmp / "exports.toml"
            config.write_text(
                f'state_dir = "{state}"\ninterfaces = ["{guest.tap}"]\n'
                f'[[export]]\naddress = "1.0"\npath = "{images["e1.0"]}"\n'
                f'[[export]]\naddress = "1.1"\npath = "{images[READ_ONLY]}"\nread_only = true\n'
                f'[[export]]\naddress = "1.2"\npath = "{images[MASKED]}"\n'
                f'allow = ["{OTHER_MAC}"]\n')
            serve = start_serve(host, ["-c", str(config)])
            host.popen(["vblade", "2", "0", guest.tap, str(images["e2.0"])],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sizes = FrameSizes(host, guest.tap)
            try:
                result = guest.run(_guest_script(mtu), files={**writes, "big.bin": big},
                                   timeout=400)
            finally:
                largest = sizes.stop()
            guest_mac = bytes.fromhex(guest.mac.replace(":", ""))
            lab.kill(serve)
    print(f"MTU {mtu}: boot {result.boot_seconds:.1f}s, script {result.run_seconds:.1f}s, "
          f"largest frames by shelf {largest}")
    print(result.output)
    return KernelRun(mtu, result, images, shas, writes, big, largest, sizes.queries,
                     guest_mac)


@pytest.fixture(scope="module", params=[1500, 9000], ids=["mtu1500", "mtu9000"])
def kernel_run(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelRun]:
    require_vm()
    yield _boot(request.param, tmp_path_factory.mktemp(f"kvm{request.param}"))


@pytest.mark.parametrize("target", list(RW))
def test_kernel_discovers_the_export(kernel_run: KernelRun, target: str) -> None:
    dev = RW[target]
    assert dev in kernel_run.result.mark("devices").split(), kernel_run.result.output
    assert int(kernel_run.result.mark(f"{dev}.size")) == DISK


@pytest.mark.parametrize("target", list(RW))
def test_kernel_reads_the_whole_disk(kernel_run: KernelRun, target: str) -> None:
    dev = RW[target]
    assert kernel_run.result.mark(f"{dev}.sha256") == kernel_run.shas[dev]


@pytest.mark.parametrize("target", list(RW))
def test_kernel_frame_size_follows_the_mtu(kernel_run: KernelRun, target: str) -> None:
    """1500: 2 sectors per frame; 9000: 17 (8704 bytes after the 36 header bytes), both in
    what the driver reports and in the largest frames seen on the cable."""
    expected = 1024 if kernel_run.mtu == 1500 else 8704
    dev = RW[target]
    assert int(kernel_run.result.mark(f"{dev}.maxbcnt")) == expected
    shelf = int(dev[1:].split(".")[0])
    assert kernel_run.largest_frames.get(shelf) == 36 + expected, kernel_run.largest_frames


@pytest.mark.parametrize("target", list(RW))
def test_kernel_writes_land_in_the_image(kernel_run: KernelRun, target: str) -> None:
    dev = RW[target]
    data = kernel_run.images[dev].read_bytes()
    for i, (off, size) in enumerate(WRITES):
        assert kernel_run.result.mark(f"{dev}.write{i}") == "0"
        assert data[off:off + size] == kernel_run.writes[f"w{i}.bin"], (i, off, size)


@pytest.mark.parametrize("target", list(RW))
def test_kernel_ext4_is_clean_on_the_host(kernel_run: KernelRun, target: str) -> None:
    dev = RW[target]
    for step in ("mkfs", "mount", "files", "umount"):
        assert kernel_run.result.mark(f"{dev}.{step}") == "0", (step, kernel_run.result.output)
    checked = fsck(kernel_run.images[dev])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert debugfs_cat(kernel_run.images[dev], "/big.bin") == kernel_run.big
    assert debugfs_cat(kernel_run.images[dev], "/dir/f7") == b"small file 7\n"


def test_kernel_query_config_polls_are_answered(kernel_run: KernelRun) -> None:
    """Every Query Config the driver broadcasts (at load, on `echo > discover` and, at
    one MTU, its own poll a minute later) gets aoe serve's answer (shelf 1, same tag)."""
    asked = [q for q in kernel_run.queries if not q.response and q.src == kernel_run.guest_mac]
    answered = {q.tag for q in kernel_run.queries if q.response and q.shelf == 1}
    assert asked, kernel_run.queries
    assert all(q.tag in answered for q in asked), (asked, answered)
    if kernel_run.mtu == POLL_MTU:
        assert kernel_run.result.mark("polled") == "yes"
        span = asked[-1].when - asked[0].when
        assert span >= 55, f"the driver's Query Configs span only {span:.1f} s: {asked}"


def test_kernel_cannot_write_a_read_only_export(kernel_run: KernelRun) -> None:
    res = kernel_run.result
    assert res.mark(f"{READ_ONLY}.sha256") == kernel_run.shas[READ_ONLY]  # still readable
    assert res.mark(f"{READ_ONLY}.write_rc") != "0", res.output
    assert sha256_file(kernel_run.images[READ_ONLY]) == kernel_run.shas[READ_ONLY]


def test_kernel_does_not_see_an_export_masked_to_another_mac(kernel_run: KernelRun) -> None:
    assert MASKED not in kernel_run.result.mark("devices").split()
    assert sha256_file(kernel_run.images[MASKED]) == kernel_run.shas[MASKED]
