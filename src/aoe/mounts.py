"""The mount table as this process sees it (/proc/self/mountinfo): which device is
mounted where. One reader of that format for the target (an image's loop device in use)
and the exports (a FUSE mount's own device, a busy /dev/nbdN)."""

from __future__ import annotations

import re

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
