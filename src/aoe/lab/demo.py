"""`make demo`: the whole user story on one machine.

Two namespaces joined by a jumbo-frame veth stand for two machines on a crossover cable.
The target side exports an ext4 image holding a file; the initiator side discovers it,
maps it to a local file through FUSE, loop-mounts that file, reads the file back and checks
it, writes a new file, and the target's image is then checked for it. Everything started is
stopped and removed at the end, also on failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aoe.lab import Lab

SHELF_SLOT = "1.0"
IMAGE_MIB = 64


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _aoe() -> list[str]:
    """The `aoe` command of this installation."""
    exe = Path(sys.executable).with_name("aoe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aoe.cli"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_image(work: Path) -> tuple[Path, str]:
    """An ext4 image populated without mounting (mkfs.ext4 -d), and the checksum of its file."""
    content = work / "content"
    content.mkdir()
    story = content / "story.txt"
    story.write_text("Two machines, one cable, no TCP/IP: this file crossed it as AoE frames.\n")
    (content / "random.bin").write_bytes(os.urandom(4 << 20))
    image = work / "disk.img"
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "pyaoe-demo",
            "-d",
            str(content),
            str(image),
            f"{IMAGE_MIB}M",
        ],
        check=True,
    )
    return image, _sha256(content / "random.bin")


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the FUSE mount exited early with status {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not appear within {timeout:.0f} s")


def _wait_ready(serve: subprocess.Popen[str]) -> None:
    """Block until `aoe serve` says it is ready (its first stdout line starts with ready:)."""
    assert serve.stdout is not None
    line = serve.stdout.readline()
    if not line.startswith("ready:"):
        raise RuntimeError(f"aoe serve did not start (exit {serve.poll()}): {line.strip()}")
    print(f"  {line.strip()}", flush=True)


def run_demo() -> None:
    if os.geteuid() != 0:
        raise SystemExit("demo: needs root (network namespaces, raw sockets, mounts)")
    for tool in ("mkfs.ext4", "debugfs", "fusermount3", "mount", "umount", "fsck.ext4"):
        if shutil.which(tool) is None:
            raise SystemExit(f"demo: {tool} is missing; run `make demo` (it installs it)")
    aoe = _aoe()
    with tempfile.TemporaryDirectory(prefix="pyaoe-demo-") as tmp, Lab(prefix="aoedemo-") as lab:
        work = Path(tmp)
        image, random_sum = _make_image(work)
        _say(f"made a {IMAGE_MIB} MiB ext4 image with story.txt and random.bin: {image}")
        target, initiator = lab.host("target"), lab.host("initiator")
        cable = lab.cable(target, initiator, mtu=9000)
        _say(f"lab {lab.name}: target:eth0 <-> initiator:eth0, MTU {cable.mtu}")

        serve = target.popen(
            [*aoe, "serve", SHELF_SLOT, str(image), "-i", "eth0"], stdout=subprocess.PIPE, text=True
        )
        _wait_ready(serve)
        _say(f"target: aoe serve {SHELF_SLOT} {image.name} -i eth0 (pid {serve.pid}) is ready")

        _say("initiator: aoe discover -i eth0")
        found = initiator.run(
            [*aoe, "discover", "-i", "eth0", "--timeout", "2"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        print(found.stdout, end="", flush=True)
        if SHELF_SLOT not in found.stdout:
            raise RuntimeError(f"discovery did not list {SHELF_SLOT}")

        fuse_dir, mnt = work / "aoe", work / "mnt"
        fuse_dir.mkdir()
        mnt.mkdir()
        # private_sysfs=False: the FUSE mount must land in the shared mount namespace.
        fuse = initiator.popen(
            [*aoe, "mount", SHELF_SLOT, str(fuse_dir), "-i", "eth0", "--foreground"],
            private_sysfs=False,
        )
        loop_mounted = False
        try:
            _wait_for(fuse_dir / "disk", fuse, 30)
            _say(f"initiator: aoe mount {SHELF_SLOT} {fuse_dir} -> {fuse_dir / 'disk'}")
            subprocess.run(["mount", "-o", "loop", str(fuse_dir / "disk"), str(mnt)], check=True)
            loop_mounted = True
            _say(f"initiator: mount -o loop {fuse_dir / 'disk'} {mnt}")
            print((mnt / "story.txt").read_text(), end="", flush=True)
            if _sha256(mnt / "random.bin") != random_sum:
                raise RuntimeError("random.bin read back over AoE differs from the original")
            _say("random.bin (4 MiB) read back over AoE: checksum matches")
            (mnt / "reply.txt").write_text("written on the initiator, stored on the target\n")
            subprocess.run(["umount", str(mnt)], check=True)
            loop_mounted = False
            check = subprocess.run(
                ["fsck.ext4", "-n", "-f", str(fuse_dir / "disk")], capture_output=True, text=True,
                check=False,
            )
            if check.returncode != 0:
                raise RuntimeError(f"fsck found problems:\n{check.stdout}{check.stderr}")
            _say("initiator: wrote reply.txt, unmounted; fsck.ext4 -n over AoE is clean")
        finally:
            if loop_mounted:
                subprocess.run(["umount", "-l", str(mnt)], check=False)
            lab.kill(fuse)
            subprocess.run(["fusermount3", "-u", "-q", str(fuse_dir)], check=False)
        lab.kill(serve)
        reply = subprocess.run(
            ["debugfs", "-R", "cat /reply.txt", str(image)],
            capture_output=True,
            text=True,
            check=True,
        )
        if "stored on the target" not in reply.stdout:
            raise RuntimeError("reply.txt is not in the target's image")
        _say(f"target: {image.name} now holds reply.txt: {reply.stdout.strip()!r}")
    _say("done: lab removed, nothing left running")


def main() -> None:
    try:
        run_demo()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
