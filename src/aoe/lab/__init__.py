"""Protocol lab: network-namespace hosts joined by veth cables, with shaping and an
impairment relay (conformance and fuzzing live in :mod:`aoe.checks`, capture in
:mod:`aoe.capture`), so every network test runs on real sockets without touching the host's
own interfaces."""

from aoe.lab.cable import Cable, CableEnd, parse_rate
from aoe.lab.core import DEFAULT_PREFIX, Lab, cleanup_all, created_namespaces, namespace_exists
from aoe.lab.host import Host, RemoteError
from aoe.lab.nsutil import LabError, list_netns, thread_netns
from aoe.lab.pair import TwoHosts, make_two_hosts, netns_unavailable_reason

__all__ = [
    "DEFAULT_PREFIX",
    "Cable",
    "CableEnd",
    "Host",
    "Lab",
    "LabError",
    "RemoteError",
    "TwoHosts",
    "cleanup_all",
    "created_namespaces",
    "list_netns",
    "make_two_hosts",
    "namespace_exists",
    "netns_unavailable_reason",
    "parse_rate",
    "thread_netns",
]
