"""The Lab: a set of namespaced hosts and veth cables that always cleans up after itself."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import subprocess
import time
import weakref
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from aoe.lab.cable import Cable, CableEnd, parse_rate
from aoe.lab.host import Host
from aoe.lab.nsutil import LabError, list_netns, netns_path, pids_in_netns, remove_netns

DEFAULT_PREFIX = "aoelab-"
_NAME_RE = re.compile(r"[A-Za-z0-9_.]+")
_counter = itertools.count(1)
# Every namespace this process created, so a test session can check none is left.
_created: set[str] = set()


def created_namespaces() -> set[str]:
    """Names of all namespaces Labs in this process have created (removed or not)."""
    return set(_created)


def _unique() -> str:
    return f"{os.getpid()}x{next(_counter)}{secrets.token_hex(2)}"


class Lab:
    """A context manager owning namespaces, cables and processes; close() removes them all.

    Namespaces are named ``<prefix><unique>-<host>``; <unique> differs for every Lab, so
    labs in parallel test runs never collide.
    """

    def __init__(self, prefix: str | None = None, *, unique: str | None = None) -> None:
        self.prefix = DEFAULT_PREFIX if prefix is None else prefix
        if unique is not None and not _NAME_RE.fullmatch(unique):
            raise LabError(f"bad lab name {unique!r}: use letters, digits, '_' or '.'")
        self.unique = unique or _unique()
        self.hosts: dict[str, Host] = {}
        self.cables: list[Cable] = []
        self._procs: dict[int, subprocess.Popen[Any]] = {}
        self._pids: set[int] = set()
        self._mprocs: list[BaseProcess] = []
        self._closed = False
        self._owner_pid = os.getpid()
        # Runs close() at interpreter exit if nobody did.
        self._finalizer = weakref.finalize(self, Lab._finalize, weakref.ref(self))

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, hosts={list(self.hosts)})"

    @property
    def name(self) -> str:
        """Common name part of all this lab's namespaces (prefix + unique)."""
        return f"{self.prefix}{self.unique}"

    # --- building --------------------------------------------------------------------
    def host(self, name: str) -> Host:
        """Create a host (a fresh namespace with lo up and IPv6 off, so the wire stays
        quiet: only frames a test sends cross the cables)."""
        self._check_open()
        if not _NAME_RE.fullmatch(name):
            raise LabError(f"bad host name {name!r}: use letters, digits, '_' or '.'")
        if name in self.hosts:
            raise LabError(f"host {name!r} already exists in {self.name}")
        ns = f"{self.name}-{name}"
        try:
            pr_netns.create(ns)
        except OSError as exc:
            raise LabError(f"cannot create namespace {ns}: {exc}") from exc
        _created.add(ns)
        host = Host(self, name, ns)
        self.hosts[name] = host
        with host.enter():
            _quiet_ipv6()
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return host

    def cable(self, a: Host, b: Host, mtu: int = 1500, rate: str | int | None = None, *,
              a_ifname: str | None = None, b_ifname: str | None = None,
              a_mac: str | None = None, b_mac: str | None = None) -> Cable:
        """Join two hosts with a veth pair, both ends up at `mtu`; shaped if rate is given.

        Ends are named eth0, eth1, ... per host unless names are passed.
        """
        self._check_open()
        for h in (a, b):
            if h.lab is not self or self.hosts.get(h.name) is not h:
                raise LabError(f"host {h!r} is not part of {self.name}")
        if a is b:
            raise LabError("a cable needs two different hosts")
        if rate is not None:
            parse_rate(rate)  # fail before building anything
        a_if = a_ifname or a.next_ifname()
        b_if = b_ifname or b.next_ifname()
        for h, ifn in ((a, a_if), (b, b_if)):
            if ifn in h.ifnames:
                raise LabError(f"host {h.name!r} already has an interface {ifn!r}")
            if len(ifn) > 15:
                raise LabError(f"interface name {ifn!r} is longer than 15 characters")
        peer_fd = os.open(b.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with a.iproute() as ipr:
                peer: dict[str, Any] = {"ifname": b_if, "net_ns_fd": peer_fd}
                if b_mac:
                    peer["address"] = b_mac
                spec: dict[str, Any] = {"ifname": a_if, "kind": "veth", "peer": peer}
                if a_mac:
                    spec["address"] = a_mac
                try:
                    ipr.link("add", **spec)
                except NetlinkError as exc:
                    raise LabError(f"cannot create veth {a.name}:{a_if} <-> "
                                   f"{b.name}:{b_if}: {exc}") from exc
        finally:
            os.close(peer_fd)
        a.ifnames.append(a_if)
        b.ifnames.append(b_if)
        macs = []
        for h, ifn in ((a, a_if), (b, b_if)):
            with h.iproute() as ipr:
                idx = ipr.link_lookup(ifname=ifn)[0]
                try:
                    ipr.link("set", index=idx, mtu=mtu)
                except NetlinkError as exc:
                    raise LabError(f"cannot set MTU {mtu} on {h.name}:{ifn}: {exc}") from exc
                ipr.link("set", index=idx, state="up")
                macs.append(ipr.link("get", index=idx)[0].get("IFLA_ADDRESS"))
        cable = Cable(CableEnd(a, a_if, macs[0]), CableEnd(b, b_if, macs[1]), mtu)
        self.cables.append(cable)
        if rate is not None:
            cable.shape(rate)
        return cable

    def relay_between(self, a: Host, b: Host, *, name: str = "relay", mtu: int = 1500,
                      rate: str | int | None = None, **impairments: Any) -> Any:
        """Build A --cable-- R --cable-- B and start an impairment relay on R.

        Returns a running RelayHandle (see aoe.lab.relay); keyword arguments are
        RelayConfig fields (drop, duplicate, reorder, delay, jitter, corrupt, seed...).
        """
        from aoe.lab.relay import start_relay

        return start_relay(self, a, b, name=name, mtu=mtu, rate=rate, **impairments)

    # --- process tracking ------------------------------------------------------------
    def track(self, proc: subprocess.Popen[Any]) -> None:
        self._procs[proc.pid] = proc

    def untrack(self, proc: subprocess.Popen[Any]) -> None:
        self._procs.pop(proc.pid, None)

    def track_process(self, proc: BaseProcess) -> None:
        self._mprocs.append(proc)

    def track_pid(self, pid: int) -> None:
        self._pids.add(pid)

    def untrack_pid(self, pid: int) -> None:
        self._pids.discard(pid)

    def kill(self, proc: subprocess.Popen[Any], grace: float = 1.0) -> None:
        """End a process this lab started: SIGTERM to its group, SIGKILL after `grace`."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self.untrack(proc)

    # --- teardown --------------------------------------------------------------------
    def detach(self) -> None:
        """Forget everything without removing it (the CLI keeps labs alive this way)."""
        self._procs.clear()
        self._pids.clear()
        self._mprocs.clear()
        self.hosts.clear()
        self.cables.clear()
        self._closed = True
        self._finalizer.detach()

    def close(self) -> None:
        """Stop every process the lab started and remove every namespace it made."""
        if self._closed or os.getpid() != self._owner_pid:
            return  # a forked child (Host.call, spawn) must never tear down its parent's lab
        self._closed = True
        self._finalizer.detach()
        errors: list[str] = []
        for proc in list(self._procs.values()):
            try:
                self.kill(proc)
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"pid {proc.pid}: {exc}")
        for mproc in self._mprocs:
            if mproc.is_alive():
                mproc.terminate()
                mproc.join(1.0)
                if mproc.is_alive():
                    mproc.kill()
                    mproc.join()
        self._mprocs.clear()
        for pid in list(self._pids):
            _signal_pid(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._pids.clear()
        for host in self.hosts.values():
            try:
                remove_namespace(host.netns)
            except Exception as exc:
                errors.append(f"{host.netns}: {exc}")
        self.hosts.clear()
        self.cables.clear()
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    @staticmethod
    def _finalize(ref: weakref.ref[Lab]) -> None:
        lab = ref()
        if lab is not None:
            lab.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.name} is closed")


def remove_namespace(name: str, grace: float = 1.0) -> None:
    """Kill what still runs in a lab namespace (never this process) and remove it."""
    me = os.getpid()
    pids = [p for p in pids_in_netns(name) if p != me]
    for p in pids:
        _signal_pid(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if pids:
            time.sleep(0.02)
    for p in pids:
        _signal_pid(p, signal.SIGKILL)
    remove_netns(name)


def cleanup_all(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove every namespace whose name starts with prefix (leftovers of a crash).

    Returns the names removed.
    """
    if not prefix:
        raise LabError("refusing to clean up with an empty prefix")
    removed = []
    for name in list_netns(prefix):
        remove_namespace(name)
        removed.append(name)
    return removed


def namespace_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def _quiet_ipv6() -> None:
    for key in ("default", "all"):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass  # no IPv6 in this kernel: already quiet


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        _signal_pid(pid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False
