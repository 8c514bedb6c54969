"""``aoe serve``: export disk images or block devices over AoE until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from ..cli_types import ADDRESS, SIZE
from ..protocol.mac import format_mac
from .config import ConfigError, ServeConfig, load_config
from .counters import Counters
from .logs import setup_logging
from .server import InterfaceSpec, Target, TargetError
from .state import StateError
from .store import ExportSpec, StoreError

log = logging.getLogger("aoe.target")

DEFAULT_STATE_DIR = "/var/lib/pyaoe"
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return -1 if os.geteuid() == 0 else 0


def check_privileges() -> None:
    """Raw sockets and link set-up need CAP_NET_RAW and CAP_NET_ADMIN (root has both)."""
    caps = _effective_caps()
    needed = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN)
    if caps != -1 and caps & needed != needed:
        raise click.ClickException(
            "aoe serve must run as root (it needs CAP_NET_RAW for raw sockets and "
            "CAP_NET_ADMIN to bring interfaces up)"
        )


def _print_counters(counters: Counters, as_json: bool) -> None:
    click.echo(counters.format(as_json=as_json))
    sys.stdout.flush()


@click.command("serve")
@click.argument("iface", required=False)
@click.argument("address", required=False, type=ADDRESS, metavar="[SHELF.SLOT]")
@click.argument("file", required=False, metavar="[FILE]")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file describing many exports and interfaces.")
@click.option("--mtu", type=click.IntRange(68, 65535), help="Set this MTU on the interfaces.")
@click.option("--offset", type=SIZE, default=0, show_default=True,
              help="Export starts this many bytes into FILE (multiple of 512).")
@click.option("--length", type=SIZE, default=None,
              help="Export this many bytes (default: to the end of FILE).")
@click.option("-r", "--read-only", is_flag=True, help="Refuse writes (ATA abort).")
@click.option("--direct", is_flag=True, help="Open FILE with O_DIRECT.")
@click.option("--sync", "sync_", is_flag=True, help="Open FILE with O_SYNC.")
@click.option("--config-string", default=None,
              help="Initial AoE config string (a saved one takes precedence).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help=f"Where per-export state is kept [default: {DEFAULT_STATE_DIR}].")
@click.option("--no-announce", is_flag=True, help="Do not broadcast a Query Config on start.")
@click.option("--batch", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Frames taken per system call.")
@click.option("--json", "as_json", is_flag=True, help="Counters and logs as JSON lines.")
@click.option("-v", "--verbose", count=True, help="-v: start-up and state changes; -vv: all.")
def serve(iface: str | None, address: tuple[int, int] | None, file: str | None,
          config_path: str | None, mtu: int | None, offset: int, length: int | None,
          read_only: bool, direct: bool, sync_: bool, config_string: str | None,
          state_dir: str | None, no_announce: bool, batch: int, as_json: bool,
          verbose: int) -> None:
    """Serve FILE (a disk image or block device) as AoE target SHELF.SLOT on IFACE.

    \b
    One export:    aoe serve eth0 1.0 disk.img
    Many exports:  aoe serve -c exports.toml

    Runs in the foreground until SIGINT or SIGTERM; SIGUSR1 prints the counters, which
    are printed again on exit.
    """
    setup_logging(verbose, as_json)
    cfg = _build_config(iface, address, file, config_path, mtu, offset, length, read_only,
                        direct, sync_, config_string, state_dir)
    check_privileges()
    counters = Counters()
    target = Target(cfg.exports, cfg.interfaces, state_dir=cfg.state_dir,
                    announce=not no_announce, batch=batch, counters=counters)
    try:
        target.open()
    except (TargetError, StoreError, StateError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        target.install_signal_handlers(lambda c: _print_counters(c, as_json))
        _print_ready(target, as_json)
        target.serve_forever()
    finally:
        target.close()
        _print_counters(counters, as_json)


def _print_ready(target: Target, as_json: bool) -> None:
    if as_json:
        ports = [{"interface": p.name, "mac": format_mac(p.sock.mac), "mtu": p.sock.mtu,
                  "max_sectors": p.engine.max_sectors, "buffer_count": p.engine.buffer_count,
                  "exports": [e.spec.name for e in p.engine.exports]} for p in target.ports]
        click.echo(json.dumps({"ready": {"pid": os.getpid(), "ports": ports}}))
    else:
        for p in target.ports:
            names = ", ".join(e.spec.name for e in p.engine.exports)
            click.echo(f"ready: {names} on {p.name} mac={format_mac(p.sock.mac)} "
                       f"mtu={p.sock.mtu} max_sectors={p.engine.max_sectors} "
                       f"buffer_count={p.engine.buffer_count}")
    sys.stdout.flush()


def _build_config(iface: str | None, address: tuple[int, int] | None, file: str | None,
                  config_path: str | None, mtu: int | None, offset: int, length: int | None,
                  read_only: bool, direct: bool, sync_: bool, config_string: str | None,
                  state_dir: str | None) -> ServeConfig:
    if config_path is not None:
        if iface or address or file:
            raise click.UsageError("give either IFACE SHELF.SLOT FILE or --config, not both")
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        if mtu is not None:
            for i in cfg.interfaces:
                i.mtu = mtu
        if state_dir is not None:
            cfg.state_dir = state_dir
        elif cfg.state_dir is None:
            cfg.state_dir = DEFAULT_STATE_DIR
        return cfg
    if not (iface and address and file):
        raise click.UsageError("need IFACE SHELF.SLOT FILE (e.g. aoe serve eth0 1.0 disk.img) "
                               "or --config FILE")
    if not Path(file).exists():
        raise click.BadParameter(f"{file}: no such file or device", param_hint="FILE")
    cfg_bytes = None
    if config_string is not None:
        cfg_bytes = config_string.encode("utf-8")
        if len(cfg_bytes) > 1024:
            raise click.BadParameter("longer than 1024 bytes", param_hint="--config-string")
    spec = ExportSpec(shelf=address[0], slot=address[1], path=file, offset=offset,
                      length=length, read_only=read_only, direct=direct, sync=sync_,
                      config=cfg_bytes)
    return ServeConfig([spec], [InterfaceSpec(iface, mtu)], state_dir or DEFAULT_STATE_DIR)
