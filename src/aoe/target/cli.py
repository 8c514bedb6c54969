"""``aoe serve``: export disk images or block devices over AoE until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from ..cli_types import MAC, SIZE, address_or_fail, deprecated_form, iface_option
from ..protocol.mac import format_mac
from ..stopsignals import StopSignalRecorder, exit_on_signal
from .config import ConfigError, ServeConfig, load_config
from .control import ControlError, ControlServer, default_socket_path
from .counters import Counters
from .linkwatch import LinkWatch
from .logs import setup_logging
from .notify import Notifier, under_journald
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
@click.argument("args", nargs=-1, metavar="[SHELF.SLOT FILE]")
@iface_option("Interface to serve on (repeatable). Default: every Ethernet interface "
              "that is up.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file describing many exports and interfaces.")
@click.option("--mtu", type=click.IntRange(68, 65535),
              help="Set this MTU (bytes) on the interfaces (default: leave it as it is).")
@click.option("--offset", type=SIZE, default=0, show_default=True,
              help="Export starts this many bytes into FILE (multiple of 512; K, M, G "
                   "mean KiB, MiB, GiB).")
@click.option("--length", type=SIZE, default=None,
              help="Export this many bytes (K, M, G mean KiB, MiB, GiB; default: to the end "
                   "of FILE).")
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
@click.option("--allow", "allow", multiple=True, type=MAC, metavar="MAC",
              help="Only this initiator may use the export (repeatable; seeds the mask list).")
@click.option("--keep-state", is_flag=True,
              help="Saved config string and mask list win over the command line and TOML.")
@click.option("--force", is_flag=True,
              help="Serve even if another target answers for the address or the store is "
                   "mounted, loop-attached or held.")
@click.option("--control-socket", "control_path", type=click.Path(dir_okay=False),
              default=None, help="Unix socket for aoe status / aoe ctl "
              "[default: /run/pyaoe/serve-PID.sock].")
@click.option("--json", "as_json", is_flag=True, help="Counters and logs as JSON lines.")
@click.option("-v", "--verbose", count=True, help="-v: start-up and state changes; -vv: all.")
def serve(args: tuple[str, ...], ifaces: tuple[str, ...],
          config_path: str | None, mtu: int | None, offset: int, length: int | None,
          read_only: bool, direct: bool, sync_: bool, config_string: str | None,
          state_dir: str | None, no_announce: bool, batch: int, allow: tuple[bytes, ...],
          keep_state: bool, force: bool, control_path: str | None, as_json: bool,
          verbose: int) -> None:
    """Serve FILE (a disk image or block device) as AoE target SHELF.SLOT.

    \b
    Example:       aoe serve 1.0 disk.img -i eth0
    Many exports:  aoe serve -c exports.toml
    (The old form `aoe serve eth0 1.0 disk.img` still works.)

    Runs in the foreground until SIGINT or SIGTERM (exit status 130 or 143); SIGHUP
    re-reads --config and applies the difference; SIGUSR1 prints the counters, which are
    printed again on exit. `aoe status` and `aoe ctl` reach it through its control socket.
    """
    setup_logging(verbose, as_json, timestamps=not under_journald())
    address, file, ifaces = _positional(args, ifaces, config_path is not None)

    def configure() -> ServeConfig:
        cfg = _build_config(ifaces, address, file, config_path, mtu, offset, length, read_only,
                            direct, sync_, config_string, state_dir)
        for spec in cfg.exports:
            if allow and spec.allow is None:
                spec.allow = list(allow)
            spec.force = spec.force or force
        return cfg

    cfg = configure()
    check_privileges()
    _raise_file_limit(len(cfg.exports))
    notifier = Notifier()
    counters = Counters()
    try:
        target = Target(cfg.exports, cfg.interfaces, state_dir=cfg.state_dir,
                        announce=not no_announce, batch=batch, counters=counters,
                        keep_state=keep_state, probe=True)
        target.open()
    except (TargetError, StoreError, StateError) as exc:
        raise click.ClickException(str(exc)) from None
    control: ControlServer | None = None
    watch: LinkWatch | None = None
    began = time.monotonic()
    try:
        try:
            control = ControlServer(target, Path(control_path) if control_path
                                    else default_socket_path())
        except ControlError as exc:
            raise click.ClickException(str(exc)) from None
        if config_path is not None:
            def reread() -> ServeConfig:
                notifier.send(reloading=1, status="reloading the configuration")
                return _reload_config(configure)

            target.reload_source = reread

        def changed() -> None:
            notifier.send(ready=1, status=summary(target))

        target.on_change = changed
        watch = LinkWatch([p.name for p in target.ports],
                          lambda name, mtu: target.call_soon(
                              lambda: target.mtu_changed(name, mtu)))
        target.install_signal_handlers(lambda c: _print_counters(c, as_json))
        with StopSignalRecorder() as signals:
            _print_ready(target, as_json)
            notifier.send(ready=1, status=summary(target), mainpid=os.getpid())
            target.serve_forever()
    finally:
        notifier.send(stopping=1, status="stopping")
        if control is not None:
            control.close()
        if watch is not None:
            watch.close()
        target.close()
        _print_counters(counters, as_json)
        notifier.close()
    if signals.signum is not None:
        exit_on_signal(signals.signum,
                       f"after serving for {time.monotonic() - began:.1f} s; exports closed")


def _raise_file_limit(exports: int) -> None:
    """One descriptor per export: lift the soft limit to the hard one when many are served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < exports + 256:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.warning("file_limit", extra={"soft": soft, "exports": exports})


def _reload_config(configure: Callable[[], ServeConfig]) -> ServeConfig:
    try:
        return configure()
    except click.ClickException as exc:
        raise ConfigError(exc.format_message()) from None


def summary(target: Target) -> str:
    """The one-line STATUS= systemd shows: what is served where."""
    ifaces = ", ".join(f"{p.name} (mtu {p.sock.mtu})" for p in target.ports)
    n = len(target.exports)
    return f"serving {n} export{'s' if n != 1 else ''} on {ifaces}"


def _print_ready(target: Target, as_json: bool) -> None:
    if as_json:
        ports = [{"interface": p.name, "mac": format_mac(p.sock.mac), "mtu": p.sock.mtu,
                  "max_sectors": p.engine.max_sectors, "buffer_count": p.engine.buffer_count,
                  "exports": [e.spec.name for e in p.engine.exports],
                  "compiled_burst_path": p.engine.accelerated} for p in target.ports]
        click.echo(json.dumps({"ready": {"pid": os.getpid(), "ports": ports}}))
    else:
        for p in target.ports:
            names = ", ".join(e.spec.name for e in p.engine.exports)
            click.echo(f"ready: {names} on {p.name} mac={format_mac(p.sock.mac)} "
                       f"mtu={p.sock.mtu} max_sectors={p.engine.max_sectors} "
                       f"buffer_count={p.engine.buffer_count}")
    sys.stdout.flush()


def _positional(args: tuple[str, ...], ifaces: tuple[str, ...], with_config: bool,
                ) -> tuple[tuple[int, int] | None, str | None, tuple[str, ...]]:
    """SHELF.SLOT FILE (interfaces from -i), or the old IFACE SHELF.SLOT FILE."""
    if not args:
        return None, None, ifaces
    if with_config:
        raise click.UsageError("give either SHELF.SLOT FILE or --config, not both")
    if len(args) == 3:
        deprecated_form("aoe serve IFACE SHELF.SLOT FILE", "aoe serve SHELF.SLOT FILE -i IFACE")
        return address_or_fail(args[1], "SHELF.SLOT"), args[2], (args[0], *ifaces)
    if len(args) != 2:
        raise click.UsageError("need SHELF.SLOT FILE (e.g. aoe serve 1.0 disk.img -i eth0) "
                               "or --config FILE")
    return address_or_fail(args[0], "SHELF.SLOT"), args[1], ifaces


def _build_config(ifaces: tuple[str, ...], address: tuple[int, int] | None, file: str | None,
                  config_path: str | None, mtu: int | None, offset: int, length: int | None,
                  read_only: bool, direct: bool, sync_: bool, config_string: str | None,
                  state_dir: str | None) -> ServeConfig:
    if config_path is not None:
        if ifaces:
            raise click.UsageError("with --config the interfaces come from the file, not -i")
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
    if not (address and file):
        raise click.UsageError("need SHELF.SLOT FILE (e.g. aoe serve 1.0 disk.img -i eth0) "
                               "or --config FILE")
    if not ifaces:
        from ..net.link import default_interfaces

        ifaces = tuple(default_interfaces())
        if not ifaces:
            raise click.UsageError("no Ethernet interface is up here: name one with -i IFACE")
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
    return ServeConfig([spec], [InterfaceSpec(name, mtu) for name in dict.fromkeys(ifaces)],
                       state_dir or DEFAULT_STATE_DIR)
