"""`aoe mount`, `aoe nbd`, `aoe attach`, `aoe detach`: thin click layers over the exports.

DISK is SHELF.SLOT (an AoE disk found on --iface, default all up interfaces) or
file:PATH (a local image, handy for trying an export without a network).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from aoe.cli_types import iface_option
from aoe.export.blockdev import BlockDevice
from aoe.export.daemon import DaemonError, Ready, run_detached
from aoe.export.fuse import CACHE_MODES
from aoe.export.source import Source, SourceError, open_source, parse_source
from aoe.stopsignals import StopSignalWaiter, exit_on_signal, verb

F = TypeVar("F", bound=Callable[..., Any])


def _disk_options(f: F) -> F:
    """Options shared by every command that opens a disk."""
    f = click.option("-v", "--verbose", count=True, help="Log more (twice: debug).")(f)
    f = click.option("-r", "--read-only", is_flag=True,
                     help="Export read-only (also automatic when the device is).")(f)
    f = click.option("--dead-time", type=click.FloatRange(0.1, 3600), default=10.0,
                     show_default=True,
                     help="Seconds without any answer from the AoE target before its I/O "
                          "fails (EIO).")(f)
    f = click.option("--timeout", type=click.FloatRange(0.1, 60.0), default=2.0,
                     show_default=True, help="Seconds to wait for the AoE target to answer "
                                             "discovery.")(f)
    f = click.option("--give-up", type=click.FloatRange(0), default=None,
                     help="Seconds after the AoE target was declared dead that its return "
                          "is still waited for (I/O resumes when the same device answers "
                          "again). Default: never give up.")(f)
    f = iface_option()(f)
    return f


def private_mount_namespace() -> bool:
    """True when this process's mount namespace is not the system's (init's) or not its
    parent's (ip netns exec, unshare -m): a mount made here is then invisible elsewhere."""
    try:
        own = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False
    for pid in (1, os.getppid()):
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != own:
                return True
        except OSError:  # not ours to read (not root, or a sandbox): no opinion
            continue
    return False


def _source(text: str) -> Source:
    try:
        return parse_source(text)
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="DISK") from None


def _logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 3:  # mfusepy logs every callback at debug level
        logging.getLogger("fuse").setLevel(max(level, logging.INFO))


@contextmanager
def _opened(source: Source, ifaces: tuple[str, ...], read_only: bool,
            timeout: float, dead_time: float | None = None,
            give_up: float | None = None) -> Iterator[BlockDevice]:
    try:
        dev = open_source(source, ifaces=ifaces, read_only=read_only, timeout=timeout,
                          dead_timeout=dead_time, give_up=give_up)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield dev
    finally:
        dev.close()


def _run(work: Callable[[Ready], None], background: bool, log_path: str | None) -> None:
    """Run `work` here, or detached (the command returns once it reports ready)."""
    if not background:
        work(lambda message: click.echo(message, err=True))
        return
    try:
        message = run_detached(work, log_path)
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(message)


# -- aoe mount -------------------------------------------------------------------------

def _check_mountpoint(mountpoint: str, name: str, nonempty: bool) -> str:
    """The absolute mount point, or a one-line error saying why a FUSE mount there would
    fail or hide something."""
    mp = os.path.abspath(mountpoint)
    if not os.path.exists(mp):
        raise click.BadParameter(f"{mountpoint} does not exist (create it: mkdir -p "
                                 f"{mountpoint})", param_hint="MOUNTPOINT")
    if not os.path.isdir(mp):
        raise click.BadParameter(f"{mountpoint} is not a directory", param_hint="MOUNTPOINT")
    if os.path.ismount(mp):
        raise click.BadParameter(f"{mountpoint} is already a mount point",
                                 param_hint="MOUNTPOINT")
    if os.listdir(mp) and not nonempty:
        raise click.BadParameter(f"{mountpoint} is not empty: the mount would hide its files "
                                 "(use an empty directory, or --nonempty)",
                                 param_hint="MOUNTPOINT")
    if "/" in name or name in ("", ".", ".."):
        raise click.BadParameter("a plain file name is needed", param_hint="--name")
    if not os.path.exists("/dev/fuse"):
        raise click.ClickException("/dev/fuse is missing: the kernel has no FUSE support")
    return mp


@click.command("mount")
@click.argument("disk")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@_disk_options
@click.option("--name", default="disk", show_default=True,
              help="Name of the file that holds the disk inside MOUNTPOINT.")
@click.option("-f", "--foreground", is_flag=True,
              help="Stay in the foreground (default: detach once mounted).")
@click.option("--cache", type=click.Choice(CACHE_MODES), default="open",
              show_default=True,
              help="How the kernel caches the file: emptied at each open (what others wrote "
                   "shows at the next open), kept across opens, or none (every read "
                   "reaches the disk).")
@click.option("--cached", is_flag=True, hidden=True,
              help="Same as --cache keep (the flag of 0.1.0).")
@click.option("--allow-other", is_flag=True, help="Let other users (and root) open the file.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Where a detached mount writes its log (default: nowhere).")
@click.option("--nonempty", is_flag=True,
              help="Mount even over a directory that holds files (they are hidden meanwhile).")
def mount(disk: str, mountpoint: str, ifaces: tuple[str, ...], give_up: float | None,
          timeout: float, dead_time: float, read_only: bool, verbose: int, name: str,
          foreground: bool, cache: str, cached: bool, allow_other: bool,
          log_path: str | None, nonempty: bool) -> None:
    """Show DISK as the file MOUNTPOINT/disk (FUSE), e.g. for `mount -o loop`.

    Unmount with `fusermount3 -u MOUNTPOINT` (or `umount` as root); SIGINT and SIGTERM
    unmount cleanly too (exit status 130, 143). fsync on the file flushes the disk's
    write cache.

    \b
    Example:  aoe mount 1.0 /mnt/aoe -i eth0 && mount -o loop /mnt/aoe/disk /mnt/data
    """
    source = _source(disk)
    mp = _check_mountpoint(mountpoint, name, nonempty)
    if cached:  # the flag of 0.1, kept working
        cache = "keep"
    _logging(verbose)
    if private_mount_namespace():
        click.echo("warning: this process has a mount namespace of its own (as under "
                   "`ip netns exec`): the mount will be visible only inside it. Enter only "
                   "the network namespace instead: `aoe lab exec HOST -- aoe mount ...` or "
                   "`nsenter --net=/run/netns/NS aoe mount ...`", err=True)

    def work(ready: Ready) -> None:
        from aoe.export.fuse import mount_blockdev, unmount

        up = False

        def on_ready(message: str) -> None:
            nonlocal up
            up = True
            ready(message)

        def on_signal(signum: int) -> None:
            if not up:  # still opening the disk: nothing to undo
                sys.stderr.write(f"{verb(signum)} before {mp} was mounted\n")
                sys.stderr.flush()
                os._exit(128 + signum)
            try:  # ends the FUSE loop; lazy, so a file still open does not block it
                unmount(mp, lazy=True)
            except OSError as exc:
                if os.path.ismount(mp):
                    logging.getLogger("aoe.export").error("%s", exc)
                    return
                # unmounted by someone else already: the loop may wait for ever for its
                # last user; every write was acknowledged by the target, so just go
                sys.stderr.write(f"{verb(signum)}: {mp} was unmounted already\n")
                sys.stderr.flush()
                os._exit(128 + signum)

        # The FUSE loop runs in C, where Python signal handlers cannot run: a watcher
        # thread takes SIGINT/SIGTERM and unmounts.
        with StopSignalWaiter(on_signal) as signals:
            with _opened(source, ifaces, read_only, timeout, dead_time, give_up) as dev:
                message = (f"{source.label} mounted as {os.path.join(mp, name)} "
                           f"(pid {os.getpid()})")
                try:
                    mount_blockdev(dev, mp, name=name, read_only=read_only,
                                   cache=cache, allow_other=allow_other,
                                   fsname=f"aoe:{source.label}",
                                   ready=lambda: on_ready(message), debug=verbose > 2)
                except (RuntimeError, OSError) as exc:
                    if signals.signum is None:
                        raise click.ClickException(f"FUSE mount on {mp} failed: {exc}") \
                            from None
        if signals.signum is not None:
            exit_on_signal(signals.signum, f"and unmounted: {os.path.join(mp, name)} is gone")

    _run(work, background=not foreground, log_path=log_path)


# -- aoe nbd ---------------------------------------------------------------------------

@click.command("nbd")
@click.argument("disk")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
              help="Listen on this Unix socket.")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Listen on this TCP port (10809 is NBD's; 0 picks a free one).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on with --port.")
@click.option("--export-name", "export_name",
              help="Export name (default: eSHELF.SLOT or the file name; '' always works).")
@_disk_options
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads per client for the requests an AoE disk cannot take "
                   "without waiting (flushes, unaligned or FUA writes, zeroing); runs of "
                   "contiguous requests are merged, so few are needed.")
@click.option("-d", "--daemon", is_flag=True,
              help="Detach once listening (default: stay in the foreground).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Where a detached server writes its log.")
def nbd(disk: str, socket_path: str | None, port: int | None, address: str,
        export_name: str | None, ifaces: tuple[str, ...], give_up: float | None,
        timeout: float, dead_time: float,
        read_only: bool, verbose: int, workers: int, daemon: bool, log_path: str | None) -> None:
    """Serve DISK over NBD (for nbdinfo, nbdcopy, qemu, nbdfuse, nbd-client).

    Runs until SIGINT or SIGTERM (exit status 130, 143). Prints the NBD URI to connect to.

    \b
    Example:  aoe nbd 1.0 --socket /tmp/aoe.sock -i eth0
              nbdcopy 'nbd+unix:///e1.0?socket=/tmp/aoe.sock' disk.img
    """
    source = _source(disk)
    if (socket_path is None) == (port is None):
        raise click.UsageError("give exactly one of --socket PATH and --port N")
    name = source.label if export_name is None else export_name
    _logging(verbose)

    def work(ready: Ready) -> None:
        from aoe.export.nbdserver import serve_nbd

        with _opened(source, ifaces, read_only, timeout, dead_time, give_up) as dev:
            try:
                signum = serve_nbd(dev, socket_path=socket_path, host=address, port=port, name=name,
                          read_only=read_only, workers=workers,
                          ready=lambda srv: ready(srv.uri))
            except OSError as exc:
                where = socket_path or f"{address}:{port}"
                raise click.ClickException(f"cannot listen on {where}: "
                                           f"{exc.strerror or exc}") from None
        if signum is not None:
            exit_on_signal(signum, f"and stopped serving {source.label} over NBD")

    _run(work, background=daemon, log_path=log_path)


# -- aoe attach / detach ---------------------------------------------------------------

@click.command("attach")
@click.argument("disk")
@click.argument("device")
@_disk_options
@click.option("--connections", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Sockets the kernel spreads requests over (netlink only).")
@click.option("--method", type=click.Choice(["auto", "netlink", "ioctl"]), default="auto",
              show_default=True, help="How to configure the kernel device.")
@click.option("-f", "--foreground", is_flag=True,
              help="Stay in the foreground (default: detach once attached).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Where a detached attachment writes its log.")
def attach(disk: str, device: str, ifaces: tuple[str, ...], give_up: float | None,
           timeout: float, dead_time: float, read_only: bool, verbose: int, connections: int,
           method: str, foreground: bool, log_path: str | None) -> None:
    """Bind DISK to the kernel block device DEVICE (/dev/nbdN), so that e.g.
    `mount /dev/nbd0p1 /mnt` works. Needs the kernel's nbd driver. Undo with
    `aoe detach DEVICE`.

    \b
    Example:  aoe attach 1.0 /dev/nbd0 -i eth0 && mount /dev/nbd0 /mnt/data
    """
    from aoe.export.attach import NbdUnavailable, attach_blockdev, check_nbd

    source = _source(disk)
    try:
        check_nbd(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DEVICE") from None
    except NbdUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    _logging(verbose)

    def work(ready: Ready) -> None:
        with _opened(source, ifaces, read_only, timeout, dead_time, give_up) as dev:
            try:
                signum = attach_blockdev(dev, device, read_only=read_only, connections=connections,
                                method=method, ready=lambda a: ready(
                                    f"{source.label} attached as {a.device} "
                                    f"({a.method}, pid {os.getpid()})"))
            except (NbdUnavailable, OSError) as exc:
                raise click.ClickException(f"attaching {device} failed: {exc}") from None
        if signum is not None:
            exit_on_signal(signum, f"and detached {device}")

    _run(work, background=not foreground, log_path=log_path)


@click.command("detach")
@click.argument("device")
@click.option("--method", type=click.Choice(["auto", "netlink", "ioctl"]), default="auto",
              show_default=True, help="How to reach the kernel device.")
@click.option("--force", is_flag=True,
              help="Disconnect even while the device is mounted or held (loses unwritten data).")
def detach(device: str, method: str, force: bool) -> None:
    """Disconnect DEVICE (/dev/nbdN) attached by `aoe attach`; its server then exits.
    Refused while DEVICE or a partition of it is mounted.

    \b
    Example:  aoe detach /dev/nbd0
    """
    from aoe.export.attach import DeviceBusy, NbdUnavailable
    from aoe.export.attach import detach as detach_device

    try:
        detach_device(device, method=method, force=force)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DEVICE") from None
    except DeviceBusy as exc:
        raise click.ClickException(f"not detaching {device}: {exc}") from None
    except (NbdUnavailable, OSError) as exc:
        raise click.ClickException(str(exc)) from None
