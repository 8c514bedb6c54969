"""The initiator of `tools/bench`: one AoeDisk in a process of its own, driven over a pipe.

It runs inside the lab's initiator namespace (`python -m benchkit.worker IFACE SHELF.SLOT`)
so that its CPU time and peak memory are the initiator's alone. Each line on stdin is a
JSON command, each answer one JSON line:

    {"op": "read", "length": N}              -> aoe copy DISK /dev/null (copy_from_disk)
    {"op": "write", "src": PATH, "length": N} -> aoe copy PATH DISK (copy_to_disk, flushed)
    {"op": "quit"}

Answers carry "seconds", "cpu" (CPU seconds of every thread during the operation) and
"rss" (peak resident bytes during it), or "error".
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

from aoe.initiator import AoeDisk, InitiatorError
from aoe.initiator.copy import copy_from_disk, copy_to_disk
from benchkit.procstat import peak_rss, reset_peak_rss


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def open_disk(iface: str, shelf: int, slot: int, wait: float) -> AoeDisk:
    """Open the disk, retrying while the target is still starting."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return AoeDisk.open(shelf, slot, [iface], timeout=0.5, dead_timeout=30.0)
        except InitiatorError:
            if time.monotonic() > deadline:
                raise


def run_op(disk: AoeDisk, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    length = int(cmd["length"])
    reset_peak_rss()
    c0, t0 = _cpu(), time.perf_counter()
    if op == "read":
        with open(os.devnull, "wb") as null:
            copy_from_disk(disk, null, 0, length)
    elif op == "write":
        with open(cmd["src"], "rb") as src:
            copy_to_disk(disk, src, 0, length)
    else:
        raise ValueError(f"unknown op {op!r}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu": _cpu() - c0, "rss": peak_rss(),
            "retransmits": disk.stats().retransmits}


def main() -> None:
    iface, address = sys.argv[1], sys.argv[2]
    shelf, slot = (int(x) for x in address.split("."))
    out = sys.stdout
    try:
        disk = open_disk(iface, shelf, slot, 20.0)
    except Exception as exc:  # reported to the bench, which stops
        out.write(json.dumps({"error": f"cannot open {address} on {iface}: {exc}"}) + "\n")
        out.flush()
        return
    with disk:
        path = disk.info.paths[0]
        out.write(json.dumps({"ready": True, "frame_sectors": path.frame_sectors,
                              "buffer_count": path.buffer_count}) + "\n")
        out.flush()
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                break
            try:
                answer = run_op(disk, cmd)
            except Exception as exc:  # the bench reports it and stops
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
