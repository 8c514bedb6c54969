"""What a bench run measures: sizes, rounds, MTUs and the scenarios, as parsed options."""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20
SCENARIOS = ("target", "cable", "peers", "paths", "random", "cpu", "netbook", "fastreader")
DESCRIPTIONS = {
    "target": "sequential read/write, aoe serve vs vblade, same initiator, MTU 1500 and 9000",
    "cable": "goodput on a veth shaped to 1 Gbit/s and 100 Mbit/s (tbf), % of the wire limit",
    "peers": "nbdkit + nbdcopy and tar | nc over TCP on the same 1 Gbit/s cable",
    "paths": "FUSE file (dd) and NBD export (nbdcopy) against the raw initiator",
    "random": "random 4 KiB reads and writes (fio, nbd engine) in IOPS",
    "cpu": "CPU seconds per GB and peak RSS of target and initiator (from 'target')",
    "netbook": "the user's commands with each host CPU-capped (cgroup) on a tbf-shaped cable",
    "fastreader": "the target alone read by a batched C reader: aoe serve, vblade, a C floor",
}
NETBOOK_LINKS = [("1gbit", 1500), ("1gbit", 9000), ("100mbit", 1500)]
NETBOOK_CAPS = [25, 100]


@dataclass
class Options:
    size: int = 1024 * MiB  # image size and bytes per sequential transfer
    rounds: int = 3
    mtus: list[int] = field(default_factory=lambda: [1500, 9000])
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    random_seconds: float = 8.0
    quick: bool = False
    netbook_links: list[tuple[str, int]] = field(default_factory=lambda: list(NETBOOK_LINKS))
    netbook_caps: list[int] = field(default_factory=lambda: list(NETBOOK_CAPS))
    netbook_ways: list[str] = field(default_factory=list)
    netbook_size: int = 256 * MiB  # bytes per way in the netbook scenario
    netbook_period_ms: float = 100.0  # CFS period of the caps (the kernel's default)

    def slow_link_size(self, rate_bits: int) -> int:
        """Bytes per transfer on a shaped link: `size`, but no more than about 8 s of
        the link's rate (100 Mbit/s would otherwise take minutes per transfer)."""
        cap = int(rate_bits / 8 * 8)
        return max(4 * MiB, min(self.size, cap) // (4 * MiB) * (4 * MiB))
