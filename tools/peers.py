"""What a user would pick instead of AoE on the same cable, measured in the same lab.

nbdkit (file plugin) read and written with nbdcopy over TCP, and a plain TCP stream of the
image (`tar c | nc`, as one would move files between two machines). The cable gets private
addresses inside the lab's own namespaces only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from aoe.lab import Cable, Host, Lab

NBD_PORT = 10809
TCP_PORT = 5001


def address_cable(cable: Cable, net: str = "10.231.0") -> tuple[str, str]:
    """Give both ends of the cable an address (a.1, b.2) and return them."""
    addrs = (f"{net}.1", f"{net}.2")
    for end, addr in zip(cable.ends, addrs, strict=True):
        with end.host.iproute() as ipr:
            idx = ipr.link_lookup(ifname=end.ifname)[0]
            ipr.addr("add", index=idx, address=addr, prefixlen=24)
    return addrs


def _wait_port(host: Host, addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with host.enter():
            s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((addr, port))
            return
        except OSError:
            time.sleep(0.1)
        finally:
            s.close()
    raise TimeoutError(f"nothing listens on {addr}:{port}")


def nbdkit_nbdcopy(lab: Lab, server: Host, client: Host, server_addr: str, image: Path,
                   scratch: Path) -> dict[str, float]:
    """MB/s reading the image with nbdcopy from nbdkit, and writing it back."""
    if not (shutil.which("nbdkit") and shutil.which("nbdcopy")):
        raise RuntimeError("nbdkit and nbdcopy are needed (libnbd-bin, nbdkit)")
    size = image.stat().st_size
    proc = server.popen(["nbdkit", "--foreground", "--exit-with-parent", "-i", server_addr,
                         "-p", str(NBD_PORT), "file", str(image)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(client, server_addr, NBD_PORT)
        url = f"nbd://{server_addr}:{NBD_PORT}"
        t0 = time.perf_counter()
        client.run(["nbdcopy", url, str(scratch)], timeout=600)
        read = size / (time.perf_counter() - t0) / 1e6
        t0 = time.perf_counter()
        client.run(["nbdcopy", str(scratch), url], timeout=600)
        write = size / (time.perf_counter() - t0) / 1e6
    finally:
        lab.kill(proc)
    return {"read": read, "write": write}


def tcp_stream(lab: Lab, sender: Host, receiver: Host, receiver_addr: str,
               image: Path) -> float:
    """MB/s of `tar c IMAGE | nc` from sender to receiver (payload bytes / wall time)."""
    size = image.stat().st_size
    sink = receiver.popen(["nc", "-l", "-p", str(TCP_PORT)], stdout=subprocess.DEVNULL)
    try:
        _wait_listen(receiver, TCP_PORT)
        t0 = time.perf_counter()
        sender.run(["sh", "-c", f"tar cf - -C {image.parent} {image.name} | "
                    f"nc -N {receiver_addr} {TCP_PORT}"], timeout=600)
        sink.wait(timeout=60)
        return size / (time.perf_counter() - t0) / 1e6
    finally:
        lab.kill(sink)


def _wait_listen(host: Host, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP socket listens on port inside host (read from /proc/net/tcp)."""
    deadline = time.monotonic() + timeout
    needle = f":{port:04X} "
    while time.monotonic() < deadline:
        out = host.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"], check=False).stdout
        if any(needle in line and " 0A " in line for line in out.splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {host.name}")
