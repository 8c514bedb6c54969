"""SIGHUP: re-read the TOML and apply the difference while the other exports keep serving.

New and changed exports are opened (and their addresses probed) in a worker thread; the
switch itself runs in the serving thread between two bursts (:meth:`Target.call_soon`), so
every request is answered wholly by the old or wholly by the new configuration and no
queued request is lost. Exports whose store did not change keep their open file, their
counters and their initiators; only their config string and allowed MACs are updated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..net.rawsock import RawSocket, close_all
from .probe import other_owners
from .state import StateError
from .store import ExportSpec, Store, StoreError, settle_state

if TYPE_CHECKING:
    from .config import ServeConfig
    from .server import Target

log = logging.getLogger("aoe.target")

# Fields that describe the store: a change means closing and opening the export again.
_STORE_FIELDS = ("path", "offset", "length", "read_only", "direct", "sync", "interfaces",
                 "serial", "model")


def store_changed(a: ExportSpec, b: ExportSpec) -> bool:
    return any(getattr(a, f) != getattr(b, f) for f in _STORE_FIELDS)


def apply_config(target: Target, cfg: ServeConfig) -> None:
    """Open what is new (worker thread), then hand the switch to the serving thread."""
    old = {(e.shelf, e.slot): e for e in target.exports}
    new = {(s.shelf, s.slot): s for s in cfg.exports}
    served_ifaces = {p.name for p in target.ports}
    wanted_ifaces = {i.name for i in cfg.interfaces}
    if wanted_ifaces != served_ifaces:
        log.warning("reload_interfaces_unchanged", extra={
            "serving": sorted(served_ifaces), "configured": sorted(wanted_ifaces),
            "why": "interfaces change only on restart"})
    to_open: list[ExportSpec] = []
    for addr, spec in new.items():
        bad = [n for n in spec.interfaces or [] if n not in served_ifaces]
        if bad:
            log.error("reload_export_skipped", extra={
                "export": spec.name, "why": f"interface {bad[0]!r} is not served"})
            continue
        if addr not in old or store_changed(old[addr].spec, spec):
            to_open.append(spec)
    added = [s for s in to_open if (s.shelf, s.slot) not in old]
    taken = _probe(target, added) if target.probe else {}
    opened: dict[tuple[int, int], Store] = {}
    for spec in to_open:
        addr = (spec.shelf, spec.slot)
        if addr in taken and not spec.force:
            who = ", ".join(f"{mac} on {ifn}" for ifn, mac in taken[addr])
            log.error("reload_export_skipped", extra={
                "export": spec.name, "why": f"another AoE target answers for it ({who})"})
            continue
        try:
            opened[addr] = Store.open(spec, target.state_dir, target.keep_state)
        except (StoreError, StateError) as exc:
            log.error("reload_export_skipped", extra={"export": spec.name, "why": str(exc)})
    target.call_soon(lambda: _switch(target, old, new, opened))


def _probe(target: Target, specs: Sequence[ExportSpec]
           ) -> dict[tuple[int, int], list[tuple[str, str]]]:
    """Probe with sockets of our own, so the serving sockets lose no request meanwhile."""
    if not specs:
        return {}
    socks: list[tuple[str, RawSocket]] = []
    try:
        for p in target.ports:
            try:
                socks.append((p.name, RawSocket(p.name)))
            except OSError as exc:
                log.warning("probe_failed", extra={"interface": p.name, "err": str(exc)})
        return other_owners(socks, [(s.shelf, s.slot) for s in specs])
    finally:
        close_all([s for _, s in socks])


def _switch(target: Target, old: dict[tuple[int, int], Store],
            new: dict[tuple[int, int], ExportSpec],
            opened: dict[tuple[int, int], Store]) -> None:
    """Serving thread: swap the export set on every engine, close what went away."""
    from .server import warn_if_open

    exports: list[Store] = []
    retired: list[Store] = []
    added, changed, updated = [], [], []
    for addr, spec in new.items():
        if addr in opened:
            exports.append(opened[addr])
            if addr in old:
                retired.append(old[addr])
                changed.append(spec.name)
            else:
                added.append(spec.name)
        elif addr in old:
            exp = old[addr]
            exports.append(exp)
            if not store_changed(exp.spec, spec) and _update_state(exp, spec):
                updated.append(spec.name)
    removed = [e for a, e in old.items() if a not in new]
    retired += removed
    for p in target.ports:
        p.engine.set_exports([e for e in exports
                              if e.spec.interfaces is None or p.name in e.spec.interfaces])
    target.exports = exports
    target.specs = [e.spec for e in exports]
    for e in retired:
        e.close()
    target.fit_mask_limits()
    fresh = [opened[a] for a in opened]
    for e in fresh:
        log.info("export", extra=e.describe())
        warn_if_open(e)
    if target.announce and fresh:
        target.send_announcements(fresh)
    log.warning("reloaded", extra={
        "exports": len(exports), "added": len(added), "removed": len(removed),
        "changed": len(changed), "settings_updated": len(updated),
        "names": _short(added + [e.spec.name for e in removed] + changed + updated)})
    if target.on_change is not None:
        target.on_change()


def _update_state(exp: Store, spec: ExportSpec) -> bool:
    """Config string and allowed MACs from the TOML (it wins: the operator just edited it)."""
    exp.spec = spec
    if settle_state(spec, exp.state, keep_state=False):
        exp.state.save()
        exp.set_masks(exp.state.masks)
        return True
    return False


def _short(names: list[str], limit: int = 8) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")
