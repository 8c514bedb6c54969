"""`aoe discover`, `aoe info`, `aoe copy` run as real commands inside the initiator's
namespace against vblade, plus their error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aoe.cli import main
from aoe.lab import Lab

from .support.holder import fd_listing_holder, held_descriptors
from .support.initiator import AOE_BIN, SHELF, SLOT, Rig, make_rig

SIZE = 4 << 20
ZEROS = ((1 << 20, 1 << 20), (SIZE - (1 << 20), 1 << 20))  # two 1 MiB runs of zeros
ADDR = f"{SHELF}.{SLOT}"


@pytest.fixture
def rig(lab: Lab, tmp_path: Path) -> Rig:
    return make_rig(lab, "vblade", tmp_path, mtu=9000, size=SIZE, zero_ranges=ZEROS)


def aoe(rig: Rig, *args: str, check: bool = True) -> subprocess.CompletedProcess[Any]:
    """Run the aoe command in the initiator host (stdout and stderr are pipes), in the
    test's own folder so that relative file names land there."""
    done = rig.initiator.run([AOE_BIN, *args], check=False, timeout=60, cwd=rig.image.parent)
    if check and done.returncode != 0:
        raise AssertionError(f"aoe {' '.join(args)} failed: {done.stderr}")
    return done


def test_discover_table_and_json(rig: Rig) -> None:
    table = aoe(rig, "discover", "--timeout", "0.3").stdout  # default: every up interface
    assert ADDR in table and "4.0 MiB" in table and "Coraid EtherDrive vblade" in table
    assert f"{rig.ifaces[0]}>" in table
    found = json.loads(aoe(rig, "discover", ADDR, "-i", rig.ifaces[0], "--json",
                           "--timeout", "0.3").stdout)
    assert len(found) == 1
    t = found[0]
    assert t["address"] == ADDR and t["size"] == SIZE and t["sectors"] == SIZE // 512
    assert t["buffer_count"] >= 1 and t["max_sectors"] == 17 and t["aoe_version"] == 1
    assert t["model"] == "Coraid EtherDrive vblade" and t["firmware"] and t["serial"]
    assert t["config"] == "" and t["interfaces"] == rig.ifaces
    assert t["paths"][0]["frame_sectors"] == 17


def test_discover_stops_listening_once_answers_stop(rig: Rig) -> None:
    """--timeout is the longest wait for a first answer, not a wait every run pays: once
    the targets have answered and nothing new comes, the listing is printed."""
    t0 = time.monotonic()
    table = aoe(rig, "discover", "--timeout", "60").stdout
    assert ADDR in table
    assert time.monotonic() - t0 < 30  # far from the 60 s a full wait would take


def test_info(rig: Rig) -> None:
    out = aoe(rig, "info", ADDR, "-i", rig.ifaces[0]).stdout
    assert f"size:          {SIZE} bytes" in out
    assert "max sectors:   17" in out and "lba48:         yes" in out
    assert f"path:          {rig.ifaces[0]}" in out
    details = json.loads(aoe(rig, "info", ADDR, "--json").stdout)
    assert details["size"] == SIZE and details["lba48_in_use"] is True


def test_copy_disk_to_file_sparse_and_verified(rig: Rig, tmp_path: Path) -> None:
    out = tmp_path / "copy.img"
    done = aoe(rig, "copy", ADDR, str(out), "--verify", "-i", rig.ifaces[0])
    assert out.read_bytes() == rig.data
    assert "verified" in done.stderr and "ETA" not in done.stderr  # no bar when piped
    allocated = os.stat(out).st_blocks * 512
    assert allocated <= SIZE - (2 << 20)  # both zero runs are holes
    dense = tmp_path / "dense.img"
    aoe(rig, "copy", ADDR, str(dense), "--no-sparse")
    assert dense.read_bytes() == rig.data
    assert os.stat(dense).st_blocks * 512 >= SIZE


def test_copy_ranges_both_ways(rig: Rig, tmp_path: Path) -> None:
    part = tmp_path / "part.bin"
    aoe(rig, "copy", ADDR, str(part), "--offset", "4097", "--length", "10000")
    assert part.read_bytes() == rig.data[4097:14097]
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 40
    src.write_bytes(payload)
    done = aoe(rig, "copy", str(src), ADDR, "--offset", "1000", "--verify", "--progress")
    assert "ETA" in done.stderr and "MB/s" in done.stderr and "verified" in done.stderr
    expected = bytearray(rig.data)
    expected[1000 : 1000 + len(payload)] = payload
    assert rig.image_now() == bytes(expected)
    aoe(rig, "copy", str(src), ADDR, "--offset", "2M", "--length", "100")
    expected[2 << 20 : (2 << 20) + 100] = payload[:100]
    assert rig.image_now() == bytes(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", f"{SHELF}.{SLOT + 1}", "--timeout", "0.2"], "no answer from AoE target"),
        (["copy", ADDR, "x.img", "-i", "nosuch0"], "interface 'nosuch0' does not exist"),
        (["copy", ADDR, "/nonexistent/dir/x.img"], "No such file or directory"),
        (["copy", "a.img", "b.img"], "exactly one of SOURCE and DEST"),
        (["info", "7"], "not a SHELF.SLOT address"),
        (["copy", ADDR, "x.img", "--length", "8M"], "past the end of the disk"),
        (["copy", ADDR, "x.img", "--offset", "lots"], "is not a size"),
    ],
)
def test_error_messages(rig: Rig, tmp_path: Path, args: list[str], message: str) -> None:
    done = aoe(rig, *args, check=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_refused_copy_leaves_the_output_file_alone(rig: Rig, tmp_path: Path) -> None:
    """A range past the end is refused before the destination is opened for writing."""
    out = tmp_path / "precious.img"
    out.write_bytes(b"keep me")
    done = aoe(rig, "copy", ADDR, str(out), "--length", "8M", check=False)
    assert done.returncode != 0 and "past the end of the disk" in done.stderr
    assert out.read_bytes() == b"keep me"
    missing = tmp_path / "never.img"
    done = aoe(rig, "copy", ADDR, str(missing), "--offset", "9M", check=False)
    assert done.returncode != 0 and "outside the disk" in done.stderr
    assert not missing.exists()


def test_not_root_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["discover"])
    assert result.exit_code == 1
    assert "run as root" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_copy_through_stdout_and_stdin(rig: Rig, tmp_path: Path) -> None:
    done = rig.initiator.run([AOE_BIN, "copy", ADDR, "-", "--offset", "512", "--length", "5000"],
                             text=False, timeout=60)
    assert done.stdout == rig.data[512:5512]
    src = tmp_path / "in.bin"
    src.write_bytes(b"\xa5" * 3000)
    with open(src, "rb") as stdin:
        rig.initiator.run([AOE_BIN, "copy", "-", ADDR, "--offset", "100"], stdin=stdin,
                          timeout=60)
    assert rig.image_now()[100:3100] == b"\xa5" * 3000
    assert rig.image_now()[3100:] == rig.data[3100:] and rig.image_now()[:100] == rig.data[:100]


def test_copy_into_a_named_pipe(rig: Rig, tmp_path: Path) -> None:
    """A FIFO as DEST is written in order, as stdout is (it cannot seek)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = tmp_path / "got.bin"
    with open(got, "wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
        try:
            done = aoe(rig, "copy", ADDR, str(fifo), "--length", "3M", check=False)
        finally:
            reader.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert got.read_bytes() == rig.data[: 3 << 20]


def test_copy_json_summary(rig: Rig, tmp_path: Path) -> None:
    done = aoe(rig, "copy", ADDR, "j.img", "--json", "--verify")
    summary = json.loads(done.stdout)
    assert summary["bytes"] == SIZE and summary["verified"] is True
    assert summary["sha256"] == __import__("hashlib").sha256(rig.data).hexdigest()
    assert summary["holes"] >= 2 << 20 and summary["seconds"] > 0
    assert summary["source"] == ADDR and summary["dest"] == "j.img"
    assert (tmp_path / "j.img").read_bytes() == rig.data
    # The session's counters: every frame of the copy was answered.
    session = summary["session"]
    assert session["answers"] >= SIZE // 8704 and session["send_errors"] == 0
    assert session["frames_sent"] == session["answers"] + session["retransmits"]


def test_a_copy_that_goes_well_loads_no_logging_and_ends_through_the_exit_handlers(
        rig: Rig, tmp_path: Path) -> None:
    """The whole command as the console script runs it: the copy logs nothing, so
    logging (and concurrent.futures, which imports it) is never loaded, and the quick exit
    still runs the exit handlers and leaves the file complete."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('loaded:', *sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('logging', 'concurrent')), file=sys.stderr))\n"
        f"sys.argv = ['aoe', 'copy', {ADDR!r}, 'quiet.img']\n"
        "from aoe.cli import run\n"
        "run()\n"
    )
    done = rig.initiator.run([sys.executable, "-c", code], check=False, timeout=60,
                             cwd=rig.image.parent)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "loaded:"
    assert (tmp_path / "quiet.img").read_bytes() == rig.data


def test_the_console_copy_leaves_its_socket_to_a_holder_and_nothing_else(
        rig: Rig, tmp_path: Path) -> None:
    """`aoe copy` from the console script hands its raw socket's last close (the kernel's
    grace period) to the holder, with the standard streams on /dev/null: a pipe reading
    the command's output sees its end when the command ends."""
    holder, listing = fd_listing_holder(tmp_path)
    code = ("import sys\nfrom aoe.net import rawsock\n"
            f"rawsock.HOLDER = {holder!r}\n"
            f"sys.argv = ['aoe', 'copy', {ADDR!r}, 'held.img']\n"
            "from aoe.cli import run\nrun()\n")
    done = rig.initiator.run([sys.executable, "-c", code], check=False, timeout=60,
                             cwd=rig.image.parent)
    assert done.returncode == 0, done.stderr
    fds = held_descriptors(listing)
    assert {fds.pop("0"), fds.pop("1"), fds.pop("2")} == {os.devnull}
    assert fds and all(v.startswith("socket:[") for v in fds.values()), fds
    assert (tmp_path / "held.img").read_bytes() == rig.data
