"""A real Linux kernel for tests: Debian's distribution kernel booted in qemu (software
emulation, no KVM needed) with a tap in a lab host as its only network card.

The guest is what the other machine of a two-machine set-up would be: it runs the kernel's
own AoE initiator (aoe.ko) or pyaoe's `aoe attach` over the kernel's nbd driver. The host's
root file system is shared read-only over 9p and the guest chroots into it, so every
program of the host (python from the project's virtualenv included, at the same path) runs
in the guest; a tmpfs over /tmp, /run and /var/tmp keeps the guest's scratch files apart
(the environment and checkout the package runs from stay visible even when they lie there).

Protocol on the serial console: the guest prints ``@@pyaoe-vm start`` once it has its
root, then whatever the script prints, then ``@@pyaoe-vm exit <status>``. Scripts may
print ``@@key=value`` lines; `VmResult.marks` collects them.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..fdwait import readable
from ..libc import libc as _libc

if TYPE_CHECKING:
    from aoe.lab.host import Host

KERNEL_DIR_ENV = "PYAOE_KERNEL_DIR"
DEFAULT_KERNEL_DIR = "/var/cache/pyaoe/kernel"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
QEMU = "qemu-system-x86_64"

START_MARK = "@@pyaoe-vm start"
EXIT_MARK = "@@pyaoe-vm exit "
_MARK_RE = re.compile(r"^@@([A-Za-z0-9_.:-]+)=(.*)$")

# Loaded in this order by every guest (each one's dependencies first, found in .modinfo).
BASE_MODULES = ("e1000", "virtio_pci", "9pnet_virtio", "9p", "crc32c_generic", "ext4", "aoe",
                "nbd")
_tap_counter = itertools.count(1)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
PR_SET_PDEATHSIG = 1


class VmError(RuntimeError):
    """The guest could not be built or booted, or did not finish in time."""


class VmUnavailable(VmError):
    """Something the harness needs is missing from this machine (qemu, busybox, kernel)."""


@dataclass(frozen=True)
class Kernel:
    """An unpacked distribution kernel: its image and its modules tree."""

    version: str
    image: Path
    modules: Path

    def module_paths(self) -> dict[str, Path]:
        """Every module of this kernel by name ('-' spelled '_', as the kernel does)."""
        found: dict[str, Path] = {}
        for path in self.modules.rglob("*.ko"):
            found[path.name[:-3].replace("-", "_")] = path
        return found

    def with_dependencies(self, names: Iterable[str]) -> list[Path]:
        """The modules named and all they depend on, each after its dependencies."""
        index = self.module_paths()
        ordered: list[Path] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            key = name.replace("-", "_")
            if key in seen:
                return
            seen.add(key)
            path = index.get(key)
            if path is None:
                raise VmUnavailable(f"kernel {self.version} has no module {name!r}")
            for dep in module_depends(path):
                visit(dep)
            ordered.append(path)

        for name in names:
            visit(name)
        return ordered


def module_depends(path: Path) -> list[str]:
    """The 'depends=' entry of a module's .modinfo (what insmod needs loaded first)."""
    data = path.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    end = data.index(b"\0", at + 1)
    value = data[at + len(b"\0depends="):end].decode()
    return [d for d in value.split(",") if d]


def find_kernel(base: str | Path | None = None) -> Kernel:
    """The kernel unpacked by scripts/setup.sh (or under $PYAOE_KERNEL_DIR)."""
    root = Path(base or os.environ.get(KERNEL_DIR_ENV) or DEFAULT_KERNEL_DIR)
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise VmUnavailable(f"no kernel under {root}/boot: run scripts/setup.sh")
    image = images[-1]
    version = image.name[len("vmlinuz-"):]
    modules = root / "lib" / "modules" / version
    if not modules.is_dir():
        raise VmUnavailable(f"no modules for kernel {version} under {modules.parent}")
    return Kernel(version, image, modules)


def find_busybox() -> Path:
    """A statically linked busybox (the initramfs has no libraries)."""
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        if path.is_file() and b"\0/lib64/ld-linux" not in path.read_bytes()[:8192]:
            return path
    raise VmUnavailable("no static busybox: install busybox-static (scripts/setup.sh)")


def unavailable_reason() -> str | None:
    """Why guests cannot be booted here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (taps in lab namespaces)"
    if not any(os.access(os.path.join(d, QEMU), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin").split(":")):
        return f"{QEMU} is not installed: run scripts/setup.sh"
    try:
        find_kernel()
        find_busybox()
    except VmUnavailable as exc:
        return str(exc)
    return None


# --- initramfs -------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    """One entry of a 'newc' cpio archive (the format the kernel unpacks as initramfs)."""
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def build_initramfs(files: Mapping[str, bytes | tuple[bytes, int]]) -> bytes:
    """A newc cpio holding `files` (path -> data, or (data, mode)); parents made as dirs."""
    dirs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    out = bytearray()
    ino = itertools.count(1)
    for d in sorted(dirs):
        out += _cpio_entry(d, 0o040755, ino=next(ino))
    for path, content in files.items():
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        out += _cpio_entry(path.strip("/"), 0o100000 | mode, data, ino=next(ino))
    out += _cpio_entry("TRAILER!!!", 0, ino=0)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


SCRATCH_DIRS = ("/tmp", "/run", "/var/tmp")  # a tmpfs of the guest's own over each


def default_keep() -> list[str]:
    """What the guest runs from: this Python environment and the package's checkout."""
    package = Path(__file__).resolve().parent.parent  # .../aoe
    return sorted({os.path.realpath(sys.prefix), str(package.parent.parent)})


def hidden_by_scratch(paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` that lie under a scratch directory (the guest would not see them)."""
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if " " not in real and any(real.startswith(d + "/") for d in SCRATCH_DIRS):
            out.append(real)
    return sorted(set(out))


_INIT = r"""#!/bin/busybox sh
# pyaoe guest init: modules, the host's root over 9p, then the script in a chroot.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
BB=/bin/busybox
for m in $($BB cat /modules.order); do
  args=$($BB grep "^${m%.ko} " /modules.args | $BB cut -d' ' -f2-)
  $BB insmod "/modules/$m" $args || echo "@@pyaoe-vm insmod-failed $m"
done
opts=trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144
$BB mount -t 9p -o $opts hostroot /newroot || { echo "@@pyaoe-vm exit 125"; $BB poweroff -f; }
for d in proc sys dev; do /bin/busybox mount --move /$d /newroot/$d; done
# Host paths the scratch tmpfs would hide (a checkout under /tmp) are held aside and put back.
KEEP=$($BB cat /keep.list)
for p in $KEEP; do $BB mkdir -p /keep$p; $BB mount --bind /newroot$p /keep$p; done
for d in tmp run var/tmp; do /bin/busybox mount -t tmpfs tmpfs /newroot/$d; done
for p in $KEEP; do $BB mkdir -p /newroot$p; $BB mount --bind /keep$p /newroot$p; done
/bin/busybox mkdir -p /newroot/dev/pts /newroot/dev/shm
/bin/busybox mount -t devpts devpts /newroot/dev/pts
/bin/busybox cp -a /vm /newroot/tmp/vm
/bin/busybox ip link set lo up
echo "@@pyaoe-vm start"
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$BB chroot /newroot /usr/bin/env -i PATH=$PATH HOME=/root TERM=dumb \
  /bin/sh -c 'cd /tmp/vm && exec /bin/sh /tmp/vm/script.sh' </dev/console 2>&1
echo "@@pyaoe-vm exit $?"
/bin/busybox sync
/bin/busybox poweroff -f
"""


@dataclass
class VmResult:
    """What a guest printed and how it ended."""

    output: str  # the script's output (between the start and exit marks)
    status: int  # the script's exit status
    boot_seconds: float  # from starting qemu to the start mark
    run_seconds: float  # from the start mark to the exit mark
    console: str  # everything on the serial console (kernel messages included)
    marks: dict[str, str] = field(default_factory=dict)

    def mark(self, key: str) -> str:
        """The value of an ``@@key=value`` line, with the output in the error if missing."""
        if key not in self.marks:
            raise KeyError(f"guest printed no @@{key}=...; output:\n{self.output}")
        return self.marks[key]


class Guest:
    """One boot of the distribution kernel with a tap in `host` as its e1000 card.

    Use as a context manager around `run()`; close() kills qemu (by pid) and deletes the
    tap. The lab also kills qemu at its own close, should a test stop half-way.
    """

    def __init__(self, host: Host, *, mtu: int = 1500, memory_mb: int = 512,
                 modules: Iterable[str] = BASE_MODULES,
                 module_args: Mapping[str, str] | None = None,
                 kernel: Kernel | None = None, tap: str | None = None,
                 keep: Iterable[str] | None = None) -> None:
        self.host = host
        # Host paths the guest must see even under its scratch tmpfs: by default this
        # Python environment and the checkout the package runs from.
        self.keep = list(keep) if keep is not None else default_keep()
        self.mtu = mtu
        self.memory_mb = memory_mb
        self.kernel = kernel or find_kernel()
        self.modules = list(modules)
        self.module_args = dict(module_args or {})
        self.tap = tap or f"vmtap{os.getpid() % 100000}x{next(_tap_counter)}"[:15]
        # A locally administered MAC, unique per guest of this process.
        n = next(_tap_counter)
        pid = os.getpid()
        self.mac = "52:54:" + ":".join(f"{b:02x}" for b in ((pid >> 8) & 0xFF, pid & 0xFF,
                                                             (n >> 8) & 0xFF, n & 0xFF))
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._tap_made = False

    # --- set-up and teardown ------------------------------------------------------------
    def __enter__(self) -> Guest:
        self.make_tap()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def make_tap(self) -> None:
        """The guest's cable end on the host side: a tap in the lab host, up at the MTU."""
        if self._tap_made:
            return
        with self.host.enter():
            _persistent_tap(self.tap)
        self._tap_made = True
        with self.host.iproute() as ipr:
            idx = ipr.link_lookup(ifname=self.tap)[0]
            ipr.link("set", index=idx, mtu=self.mtu, state="up")
        self.host.ifnames.append(self.tap)

    def close(self) -> None:
        """Kill qemu if it still runs and delete the tap (idempotent)."""
        self._stop()
        if self._tap_made:
            self._tap_made = False
            try:
                with self.host.iproute() as ipr:
                    found = ipr.link_lookup(ifname=self.tap)
                    if found:
                        ipr.link("del", index=found[0])
            except Exception:  # noqa: BLE001 - the namespace may already be gone
                pass
            if self.tap in self.host.ifnames:
                self.host.ifnames.remove(self.tap)

    # --- running --------------------------------------------------------------------------
    def initramfs(self, script: str, files: Mapping[str, bytes] | None = None) -> bytes:
        """The guest's initramfs: busybox, the init, the modules, the script, its files."""
        paths = self.kernel.with_dependencies(self.modules)
        content: dict[str, bytes | tuple[bytes, int]] = {
            "bin/busybox": (find_busybox().read_bytes(), 0o755),
            "init": (_INIT.encode(), 0o755),
            "modules.order": "".join(p.name + "\n" for p in paths).encode(),
            "keep.list": "".join(p + "\n" for p in hidden_by_scratch(self.keep)).encode(),
            "modules.args": "".join(f"{k} {v}\n" for k, v in self.module_args.items()).encode(),
            "vm/script.sh": (script.encode(), 0o755),
        }
        for path in paths:
            content[f"modules/{path.name}"] = path.read_bytes()
        for name, data in (files or {}).items():
            if "/" in name.strip("/") or name in ("script.sh", ""):
                raise VmError(f"guest file name {name!r}: use a plain name")
            content[f"vm/{name}"] = data
        return build_initramfs(content)

    def qemu_argv(self, initrd: str) -> list[str]:
        append = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init"
        return [
            QEMU, "-machine", "pc,accel=tcg", "-m", str(self.memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-monitor", "none",
            "-kernel", str(self.kernel.image), "-initrd", initrd, "-append", append,
            "-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
            "-device", f"e1000,netdev=net0,mac={self.mac}",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
        ]

    def run(self, script: str, *, files: Mapping[str, bytes] | None = None,
            timeout: float = 300.0, boot_timeout: float = 180.0,
            on_line: Callable[[str], None] | None = None) -> VmResult:
        """Boot, run `script` with /bin/sh in the guest (cwd holds `files`), power off.

        The guest's eth0 is up at this guest's MTU before the script starts. `on_line` is
        called with each line the script prints, as it comes (so a test can act on the
        host when the guest asks, e.g. stop a target half-way). Raises
        VmError when the guest does not start within boot_timeout or finish within
        timeout; qemu is killed either way.
        """
        if self._proc is not None:
            raise VmError("this guest is already running")
        self.make_tap()
        prologue = (f"ip link set eth0 mtu {self.mtu} up\n"
                    "i=0; while [ $i -lt 50 ] && ! grep -q 1 /sys/class/net/eth0/carrier; "
                    "do sleep 0.1; i=$((i+1)); done\n")
        self._workdir = tempfile.TemporaryDirectory(prefix="pyaoe-vm-")
        initrd = os.path.join(self._workdir.name, "initramfs.cpio")
        Path(initrd).write_bytes(self.initramfs(prologue + script, files))
        started = time.monotonic()
        proc = self.host.popen(self.qemu_argv(initrd), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=_die_with_parent)
        self._proc = proc
        try:
            return self._collect(proc, started, timeout, boot_timeout, on_line)
        finally:
            self._stop()

    def _stop(self) -> None:
        """Kill qemu (by pid) if it still runs; the tap stays for the next run."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self.host.lab.kill(proc, grace=2.0)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _collect(self, proc: subprocess.Popen[bytes], started: float, timeout: float,
                 boot_timeout: float, on_line: Callable[[str], None] | None) -> VmResult:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = bytearray()
        boot_at: float | None = None
        status: int | None = None
        seen_lines = 0
        while status is None:
            now = time.monotonic()
            limit = started + boot_timeout if boot_at is None else boot_at + timeout
            if now >= limit:
                what = "boot" if boot_at is None else "script"
                raise VmError(f"guest {what} timed out after "
                              f"{boot_timeout if boot_at is None else timeout:.0f}s; console:\n"
                              + _tail(buf))
            if not readable(fd, min(1.0, limit - now)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise VmError(f"qemu ended (status {proc.wait()}) before the script did; "
                              "console:\n" + _tail(buf))
            buf += chunk
            text = buf.decode(errors="replace").replace("\r", "")
            if boot_at is None and START_MARK + "\n" in text:
                boot_at = time.monotonic()
            if boot_at is not None and on_line is not None:
                lines = text.split(START_MARK + "\n", 1)[1].split("\n")[:-1]
                for line in lines[seen_lines:]:
                    if not line.startswith(EXIT_MARK):
                        on_line(line)
                seen_lines = len(lines)
            at = text.find(EXIT_MARK)
            if at >= 0 and "\n" in text[at:]:
                status = int(text[at + len(EXIT_MARK):].split("\n", 1)[0])
        end = time.monotonic()
        try:
            proc.wait(30)  # poweroff -f: qemu exits by itself
        except subprocess.TimeoutExpired:
            pass
        console = buf.decode(errors="replace").replace("\r", "")
        body = console.split(START_MARK + "\n", 1)[-1].split(EXIT_MARK, 1)[0]
        marks = {}
        for line in body.splitlines():
            m = _MARK_RE.match(line.strip())
            if m:
                marks[m.group(1)] = m.group(2)
        assert boot_at is not None
        return VmResult(body, status, boot_at - started, end - boot_at, console, marks)


def _die_with_parent() -> None:
    """In qemu before exec: SIGKILL it when the process that started it dies, so a test
    run killed outright leaves no emulator running."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _persistent_tap(name: str) -> None:
    """Create a persistent tap in the calling thread's network namespace (TUNSETIFF acts
    where the caller is; qemu attaches to it by name later)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _tail(buf: bytes | bytearray, lines: int = 40) -> str:
    return "\n".join(buf.decode(errors="replace").replace("\r", "").splitlines()[-lines:])


def run_guest(host: Host, script: str, *, mtu: int = 1500,
              files: Mapping[str, bytes] | None = None, timeout: float = 300.0,
              **guest_args: Any) -> VmResult:
    """Boot one guest on a new tap in `host`, run the script, clean up: the one-call form."""
    with Guest(host, mtu=mtu, **guest_args) as guest:
        return guest.run(script, files=files, timeout=timeout)
