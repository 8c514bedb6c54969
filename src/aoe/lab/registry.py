"""Labs that outlive the command that made them: a small JSON description per lab.

`aoe lab up` writes one, `aoe lab list/exec/down` read it, so a lab can be built by one
invocation and used or removed by later ones.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aoe.lab.core import DEFAULT_PREFIX, Lab, namespace_exists, remove_namespace
from aoe.lab.nsutil import LabError

STATE_DIR_ENV = "AOE_LAB_STATE_DIR"
DEFAULT_STATE_DIR = "/run/pyaoe/labs"


def state_dir() -> str:
    return os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


@dataclass
class SavedLab:
    """What a persisted lab is made of."""

    name: str
    prefix: str
    hosts: dict[str, str]  # host name -> namespace
    cables: list[dict[str, Any]] = field(default_factory=list)
    created: float = 0.0

    @property
    def path(self) -> str:
        return os.path.join(state_dir(), f"{self.name}.json")

    def alive_hosts(self) -> list[str]:
        return [h for h, ns in self.hosts.items() if namespace_exists(ns)]

    def netns_of(self, host: str) -> str:
        try:
            return self.hosts[host]
        except KeyError:
            raise LabError(f"lab {self.name!r} has no host {host!r} "
                           f"(hosts: {', '.join(self.hosts)})") from None


def save(lab: Lab) -> SavedLab:
    """Write a lab's description; call before Lab.detach() so it stays usable."""
    saved = SavedLab(
        name=lab.unique,
        prefix=lab.prefix,
        hosts={h.name: h.netns for h in lab.hosts.values()},
        cables=[{"a": c.a.name, "a_ifname": c.a_ifname, "a_mac": c.a_mac,
                 "b": c.b.name, "b_ifname": c.b_ifname, "b_mac": c.b_mac,
                 "mtu": c.mtu, "rate": c.rate} for c in lab.cables],
        created=time.time(),
    )
    os.makedirs(state_dir(), exist_ok=True)
    tmp = saved.path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(saved), f, indent=2)
    os.replace(tmp, saved.path)
    return saved


def load(name: str) -> SavedLab:
    path = os.path.join(state_dir(), f"{name}.json")
    try:
        with open(path) as f:
            data = json.load(f)
        return SavedLab(**data)
    except FileNotFoundError:
        raise LabError(f"no lab named {name!r} (see `aoe lab list`)") from None
    except (ValueError, TypeError) as exc:
        raise LabError(f"lab description {path} is damaged: {exc}") from None


def all_saved() -> list[SavedLab]:
    try:
        names = sorted(n[:-5] for n in os.listdir(state_dir()) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            out.append(load(n))
        except LabError:
            continue
    return out


def remove(saved: SavedLab) -> list[str]:
    """Remove a saved lab's namespaces (and whatever runs in them) and its description."""
    removed = []
    for ns in saved.hosts.values():
        if namespace_exists(ns):
            remove_namespace(ns)
            removed.append(ns)
    try:
        os.unlink(saved.path)
    except FileNotFoundError:
        pass
    return removed


def find_host(host: str, lab: str | None) -> tuple[SavedLab, str]:
    """Resolve HOST or LAB/HOST (or --lab) to (lab, namespace); with one lab saved,
    the lab may be left out."""
    if lab is None and "/" in host:
        lab, host = host.split("/", 1)
    if lab is not None:
        saved = load(lab)
        return saved, saved.netns_of(host)
    matches = [s for s in all_saved() if host in s.hosts]
    if len(matches) == 1:
        return matches[0], matches[0].hosts[host]
    if not matches:
        raise LabError(f"no saved lab has a host {host!r} (see `aoe lab list`)")
    names = ", ".join(s.name for s in matches)
    raise LabError(f"host {host!r} is in several labs ({names}): say which with LAB/{host}")


__all__ = ["DEFAULT_PREFIX", "SavedLab", "all_saved", "find_host", "load", "remove", "save",
           "state_dir"]
