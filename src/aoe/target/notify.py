"""The systemd notify protocol (sd_notify), without libsystemd: one datagram per message to
the socket named by $NOTIFY_SOCKET ("@name" is in the abstract namespace)."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, STATUS=..., RELOADING=1, STOPPING=1; a no-op outside systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: str | int) -> bool:
        """One message of ``KEY=value`` lines; False when it could not be delivered."""
        if self.sock is None:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self.sock.sendto(msg.encode(), self.address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def under_journald() -> bool:
    """True when stderr is the journal's stream (it stamps the time itself)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(2)
        dev, ino = (int(x) for x in stream.split(":", 1))
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)
