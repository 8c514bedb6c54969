"""The control socket: `aoe status` and `aoe ctl` talk to a running target through it.

A Unix stream socket under /run/pyaoe (directory 0700, socket 0600, and the peer's uid
checked with SO_PEERCRED): one JSON request line in, one JSON answer line out. Requests
are served by a thread of their own; what changes an export goes through the export's
own setters, which the engine reads on its next frame.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocol.mac import format_mac, parse_mac
from .store import MAX_CONFIG, Store

if TYPE_CHECKING:
    from .server import Target

log = logging.getLogger("aoe.target")

RUN_DIR = Path("/run/pyaoe")
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The control socket cannot be made, reached, or answered with an error."""


def default_socket_path() -> Path:
    return RUN_DIR / f"serve-{os.getpid()}.sock"


def export_status(e: Store, now: float) -> dict[str, Any]:
    peers = sorted(e.peers.items(), key=lambda kv: -kv[1][1])
    return {
        "export": e.spec.name,
        "path": e.spec.path,
        "size": e.sectors * 512,
        "read_only": e.read_only,
        "frames": int(sum(p[0] for _, p in peers)),
        "bytes_read": e.bytes_read,
        "bytes_written": e.bytes_written,
        "errors": e.errors,
        "config": e.config.decode("utf-8", "replace"),
        "masks": [format_mac(m) for m in e.state.masks],
        "reservations": [format_mac(m) for m in e.state.reservations],
        "initiators": [{"mac": format_mac(m), "frames": int(p[0]),
                        "last_seen_s": round(max(0.0, now - p[1]), 1)} for m, p in peers],
    }


def target_status(t: Target) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "uptime_s": round(now - t.started, 1),
        "interfaces": [{"name": p.name, "mac": p.sock.mac.hex(":"), "mtu": p.sock.mtu,
                        "max_sectors": p.engine.max_sectors} for p in t.ports],
        "counters": t.counters.as_dict(),
        "exports": [export_status(e, now) for e in t.exports],
    }


class ControlServer:
    """Accepts control requests for one target until :meth:`close`."""

    def __init__(self, target: Target, path: Path) -> None:
        self.target = target
        self.path = path
        self.sock = _listen(path)
        self._thread = threading.Thread(target=self._serve, name="aoe-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    self._one(conn)
                except OSError:
                    pass

    def _one(self, conn: socket.socket) -> None:
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid not in (0, os.geteuid()):
            _send(conn, {"error": "permission denied: the control socket is for root"})
            return
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            req = json.loads(data)
            if not isinstance(req, dict):
                raise ValueError("expected a JSON object")
            answer = self.handle(req)
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"error": f"bad request: {exc}"}
        except ControlError as exc:
            answer = {"error": str(exc)}
        _send(conn, answer)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        t = self.target
        if op == "status":
            return {"status": target_status(t)}
        if op == "reload":
            t.request_reload()
            return {"ok": "reload started"}
        exp = self._export(str(req["export"]))
        if op == "mask":
            action = req["action"]
            masks = exp.mask_list()
            if action == "clear":
                masks = []
            else:
                mac = parse_mac(str(req["mac"]))
                if action == "add" and mac not in masks:
                    if len(masks) >= exp.mask_limit:
                        raise ControlError(f"{exp.spec.name}: mask list is full "
                                           f"({exp.mask_limit} MACs)")
                    masks.append(mac)
                elif action == "del":
                    if mac not in masks:
                        raise ControlError(f"{exp.spec.name}: {format_mac(mac)} is not in "
                                           "the mask list")
                    masks.remove(mac)
                elif action != "add":
                    raise ControlError(f"unknown mask action {action!r}")
            exp.set_masks(masks)
            log.warning("mask_edited", extra={"export": exp.spec.name, "by": "operator",
                                              "masks": [format_mac(m) for m in masks]})
            return {"ok": [format_mac(m) for m in masks]}
        if op == "reserve_clear":
            exp.set_reservations([])
            log.warning("reserve_cleared", extra={"export": exp.spec.name, "by": "operator"})
            return {"ok": []}
        if op == "config_set":
            value = str(req["value"]).encode("utf-8")
            if len(value) > MAX_CONFIG:
                raise ControlError("config string is longer than 1024 bytes")
            exp.set_config(value)
            log.warning("config_set", extra={"export": exp.spec.name, "by": "operator"})
            return {"ok": value.decode()}
        raise ControlError(f"unknown request {op!r}")

    def _export(self, name: str) -> Store:
        for e in self.target.exports:
            if e.spec.name == name or f"{e.shelf}.{e.slot}" == name:
                return e
        raise ControlError(f"not served here: {name}")


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


def sweep_stale(directory: Path = RUN_DIR) -> list[Path]:
    """Remove ``serve-PID.sock`` files whose process is gone (a target that was killed
    could not remove its own); returns what was removed."""
    removed: list[Path] = []
    try:
        names = list(directory.glob("serve-*.sock"))
    except OSError:
        return removed
    for p in names:
        pid = p.name[len("serve-"):-len(".sock")]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _listen(path: Path) -> socket.socket:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.parent == RUN_DIR:
            os.chmod(path.parent, 0o700)
            sweep_stale(RUN_DIR)
    except OSError as exc:
        raise ControlError(f"cannot create {path.parent}: {exc.strerror}") from None
    if path.exists() or path.is_symlink():
        try:
            request(path, {"op": "status"}, timeout=1.0)
        except ControlError:
            path.unlink(missing_ok=True)  # left by a target that died
        else:
            raise ControlError(f"control socket {path} belongs to a running aoe serve")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        s.bind(str(path))
    except OSError as exc:
        s.close()
        raise ControlError(f"cannot create control socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    s.listen(16)
    return s


def request(path: Path, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a target's control socket and return its answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except PermissionError:
        raise ControlError(f"{path}: permission denied (run as root)") from None
    except FileNotFoundError:
        raise ControlError(f"{path}: no such control socket (is aoe serve running?)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    finally:
        s.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: no answer from the target") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: unexpected answer")
    return answer


def find_sockets(paths: tuple[str, ...] = ()) -> list[Path]:
    """The sockets named, or every socket under /run/pyaoe."""
    if paths:
        return [Path(p) for p in paths]
    try:
        return sorted(RUN_DIR.glob("*.sock"))
    except OSError:
        return []
