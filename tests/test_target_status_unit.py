"""Per-export status counters in the engine (no network): initiators seen, bytes, errors,
and the bound on remembered initiators that forged source MACs cannot grow past."""

from __future__ import annotations

import os
from pathlib import Path

from aoe.protocol import AtaBody, Command, ConfigBody, Frame, encode
from aoe.target.control import export_status, sweep_stale
from aoe.target.engine import Engine
from aoe.target.store import MAX_PEERS, ExportSpec, Store

TARGET = bytes.fromhex("020000000001")


def _mac(i: int) -> bytes:
    return bytes.fromhex("0a0000") + i.to_bytes(3, "big")


def test_status_counts_and_peer_bound(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(b"\1" * (1 << 20))
    with Store.open(ExportSpec(1, 0, str(img)), tmp_path / "st") as e:
        eng = Engine([e], TARGET, 1500)
        eng.now = 1000.0
        for i in range(MAX_PEERS + 100):
            f = Frame(TARGET, _mac(i), 1, 0, Command.QUERY_CONFIG, i, ConfigBody())
            assert eng.handle(encode(f))
        read = Frame(TARGET, _mac(1), 1, 0, Command.ATA, 7,
                     AtaBody(0x40, 0, 2, 0x24, 0, b""))
        assert eng.handle(encode(read))
        beyond = Frame(TARGET, _mac(2), 1, 0, Command.ATA, 8,
                       AtaBody(0x40, 0, 2, 0x24, 1 << 40, b""))
        assert eng.handle(encode(beyond))  # out of range: an ATA error, counted
        st = export_status(e, 1002.5)
    assert len(e.peers) == MAX_PEERS
    assert st["bytes_read"] == 1024 and st["errors"] == 1
    one = next(p for p in st["initiators"] if p["mac"] == "0a:00:00:00:00:01")
    assert one == {"mac": "0a:00:00:00:00:01", "frames": 2, "last_seen_s": 2.5}


def test_stale_sockets_are_swept(tmp_path: Path) -> None:
    """A killed target leaves serve-PID.sock behind; the next start removes it (and only
    sockets whose process is gone)."""
    dead = tmp_path / "serve-999999999.sock"
    alive = tmp_path / f"serve-{os.getpid()}.sock"
    other = tmp_path / "targets.sock"
    for p in (dead, alive, other):
        p.touch()
    assert sweep_stale(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
