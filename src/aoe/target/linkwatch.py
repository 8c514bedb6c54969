"""Follow the served interfaces through netlink link events: an MTU change is handed to
the serving thread (new max sectors, announced); carrier loss and return are logged.

A plain rtnetlink socket subscribed to the link group is read by a thread of its own (in
the target's network namespace); pyroute2 decodes each RTM_NEWLINK message."""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

log = logging.getLogger("aoe.target")

RTMGRP_LINK = 1
RTM_NEWLINK = 16
IFF_LOWER_UP = 0x10000
_NLMSG_HDR = struct.Struct("=IHHII")


class LinkWatch:
    """Calls ``on_mtu(name, mtu)`` on MTU changes of the watched interfaces."""

    def __init__(self, names: list[str], on_mtu: Callable[[str, int], None]) -> None:
        self.on_mtu = on_mtu
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))  # subscribe before reading the state: no gap
        self.state: dict[int, dict[str, Any]] = {}
        with IPRoute() as ipr:
            for name in names:
                for msg in ipr.get_links(ifname=name):
                    self.state[msg["index"]] = {
                        "name": name, "mtu": msg.get_attr("IFLA_MTU"),
                        "carrier": bool(msg["flags"] & IFF_LOWER_UP)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aoe-linkwatch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _run(self) -> None:
        poller = select.poll()  # not select(): a target with many exports has high descriptors
        poller.register(self.sock.fileno(), select.POLLIN)
        while not self._stop.is_set():
            ready = poller.poll(500)
            if not ready:
                continue
            try:
                data = self.sock.recv(65536)
            except OSError as exc:  # e.g. ENOBUFS after a burst: log, keep watching
                log.warning("link_watch_error", extra={"err": exc.strerror})
                continue
            pos = 0
            while pos + _NLMSG_HDR.size <= len(data):
                length, kind = _NLMSG_HDR.unpack_from(data, pos)[:2]
                if length < _NLMSG_HDR.size:
                    break
                if kind == RTM_NEWLINK:
                    try:
                        msg = ifinfmsg(data[pos:pos + length])
                        msg.decode()
                    except Exception as exc:  # a message pyroute2 cannot decode
                        log.debug("link_watch_undecodable", extra={"err": str(exc)})
                    else:
                        self._link(msg)
                pos += (length + 3) & ~3

    def _link(self, msg: Any) -> None:
        st = self.state.get(msg["index"])
        if st is None:
            return
        mtu = msg.get_attr("IFLA_MTU")
        carrier = bool(msg["flags"] & IFF_LOWER_UP)
        if carrier != st["carrier"]:
            st["carrier"] = carrier
            if carrier:
                log.warning("carrier_back", extra={"interface": st["name"]})
            else:
                log.warning("carrier_lost", extra={"interface": st["name"],
                                                   "why": "cable unplugged or peer down"})
        if mtu is not None and mtu != st["mtu"]:
            st["mtu"] = mtu
            self.on_mtu(st["name"], mtu)
