"""The mount table as this process sees it (/proc/self/mountinfo): which device is
mounted where. One reader of that format for the target (an image's loop device in use)
and the exports (a FUSE mount's own device, a busy /dev/nbdN). Also the one way to run a
mount helper from a process that may serve a FUSE mount itself."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

_ESCAPE = re.compile(r"\\([0-7]{3})")


def mounts() -> list[tuple[str, str]]:
    """(device "major:minor", mount point) of every mount, oldest first, with the
    kernel's octal escapes undone (\\040 is a space); empty when the table is unreadable.
    Reading it never asks a filesystem anything, so a FUSE mount may call it from init."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    table = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            table.append((fields[2], _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)),
                                                 fields[4])))
    return table


def run_helper(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a mount helper (mount, umount, fusermount3), output captured, from a process
    that may serve a FUSE mount itself.

    The child must not close this process's descriptors before exec: closing an open
    file of our own mount asks our FUSE thread to flush it, and on Pythons that hold the
    GIL across vfork (CPython gh-104372; Debian 12's 3.11.2 among them) that thread cannot
    run until the child has exec'd, so both wait forever. With close_fds=False the kernel
    closes them at exec (Python opens them close-on-exec), after this process resumed.
    """
    import subprocess  # not at import: the target reads the mount table on every start

    return subprocess.run(argv, capture_output=True, text=True, check=False, close_fds=False)
