"""A stand-in for the holder process that takes over the last close of raw sockets
(aoe.net.rawsock.HOLDER): it writes where each of its descriptors points, then exits."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

NAME = "holder"


def fd_listing_holder(tmp_path: Path) -> tuple[str, Path]:
    """The holder program, and the file it writes ("FD TARGET" lines) once it has run.
    Written in Python: a shell would list descriptors of its own (its script, the pipes of
    its command substitutions)."""
    out = tmp_path / "holder-fds.txt"
    script = tmp_path / NAME
    script.write_text(
        f"#!{sys.executable} -I\n"
        "import os\n"
        "lines = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        lines.append(f'{fd} {os.readlink(f\"/proc/self/fd/{fd}\")}')\n"
        "    except OSError:\n"
        "        pass  # the descriptor listdir itself used\n"
        f"with open({str(out) + '.tmp'!r}, 'w') as f:\n"
        "    f.write('\\n'.join(lines) + '\\n')\n"
        f"os.rename({str(out) + '.tmp'!r}, {str(out)!r})\n")
    script.chmod(0o755)
    return str(script), out


def held_descriptors(listing: Path) -> dict[str, str]:
    """What the holder held, by descriptor number; fails if it never ran."""
    for _ in range(500):
        if listing.exists():
            return dict(line.split(" ", 1) for line in listing.read_text().splitlines())
        time.sleep(0.02)
    raise AssertionError(f"the holder never ran ({listing} is missing)")


def reap_holders() -> None:
    """Wait for the holders this process started (its children named NAME), and for no
    other child: a fixture's process must not be waited for."""
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name == NAME:
                os.waitpid(int(pid), 0)
