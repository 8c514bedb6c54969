"""Target counters: plain attributes so the data path can bump them for the price of an add."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# Error kinds, as they appear under "errors" in the counters.
DECODE = "decode"  # frame dropped: too short, truncated or inconsistent
TRUNCATED_RECV = "truncated_recv"  # frame larger than the receive slot (dropped)
ACL = "acl"  # dropped: source not in a non-empty MAC mask list
AOE_UNRECOGNIZED = "aoe_unrecognized_command"
AOE_BAD_ARGUMENT = "aoe_bad_argument"
AOE_CONFIG_PRESENT = "aoe_config_string_present"
AOE_UNSUPPORTED_VERSION = "aoe_unsupported_version"
AOE_RESERVED = "aoe_target_reserved"
ATA_ABORTED = "ata_aborted"  # unsupported ATA command or bad register values
ATA_OUT_OF_RANGE = "ata_out_of_range"
ATA_READ_ONLY = "ata_read_only"
ATA_IO = "ata_io"  # the backing store returned an error or a short transfer
MASK_DIRECTIVE = "mask_directive"  # MAC Mask List edit failed (merror set)
SEND = "send"  # the kernel refused a reply frame
RECV = "recv"  # the socket reported an error (e.g. the link went down)
INTERNAL = "internal"  # a bug: the frame or burst was dropped, the target kept serving


class Counters:
    """Frames in/out, bytes moved and errors by kind, for one target process."""

    __slots__ = (
        "frames_in",
        "frames_out",
        "bursts",
        "naps",
        "naps_in_vain",
        "ignored",
        "reads",
        "writes",
        "bytes_read",
        "bytes_written",
        "flushes",
        "errors",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bursts = 0  # receive calls that returned frames: frames_in / bursts = batching
        self.naps = 0  # waits for a trickle of frames to gather (aoe.target.pacing)
        self.naps_in_vain = 0  # ... judged to have gathered nothing: the peer waited for us
        self.ignored = 0  # well-formed frames that were not for us (other target, responses)
        self.reads = 0
        self.writes = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.flushes = 0
        self.errors: Counter[str] = Counter()

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bursts": self.bursts,
            "naps": self.naps,
            "naps_in_vain": self.naps_in_vain,
            "ignored": self.ignored,
            "reads": self.reads,
            "writes": self.writes,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "flushes": self.flushes,
            "errors": dict(sorted(self.errors.items())),
        }

    def format(self, as_json: bool = False) -> str:
        """One line: JSON, or ``key=value`` pairs with errors as ``errors.kind=n``."""
        d = self.as_dict()
        if as_json:
            return json.dumps({"counters": d}, sort_keys=False)
        errors = d.pop("errors")
        parts = [f"{k}={v}" for k, v in d.items()]
        parts += [f"errors.{k}={v}" for k, v in errors.items()]
        return "counters: " + " ".join(parts)
