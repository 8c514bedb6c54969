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

from aoe.export.blockdev import BlockDevice
from aoe.export.daemon import DaemonError, Ready, run_detached
from aoe.export.source import Source, SourceError, open_source, parse_source

F = TypeVar("F", bound=Callable[..., Any])


def _disk_options(f: F) -> F:
    """Options shared by every command that opens a disk."""
    f = click.option("-v", "--verbose", count=True, help="Log more (twice: debug).")(f)
    f = click.option("-r", "--read-only", is_flag=True,
                     help="Export read-only (also automatic when the device is).")(f)
    f = click.option("--timeout", type=click.FloatRange(0.1, 60.0), default=2.0,
                     show_default=True, help="Seconds to wait for the AoE target to answer.")(f)
    f = click.option("-i", "--iface", "ifaces", multiple=True, metavar="IFACE",
                     help="Interface to find the AoE disk on (repeatable; default: all).")(f)
    return f


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
            timeout: float) -> Iterator[BlockDevice]:
    try:
        dev = open_source(source, ifaces=ifaces, read_only=read_only, timeout=timeout)
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

@click.command("mount")
@click.argument("disk")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@_disk_options
@click.option("--name", default="disk", show_default=True,
              help="Name of the file that holds the disk inside MOUNTPOINT.")
@click.option("-f", "--foreground", is_flag=True,
              help="Stay in the foreground (default: detach once mounted).")
@click.option("--cached", is_flag=True,
              help="Let the kernel cache and read ahead (default: direct I/O, never stale).")
@click.option("--allow-other", is_flag=True, help="Let other users (and root) open the file.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Where a detached mount writes its log (default: nowhere).")
def mount(disk: str, mountpoint: str, ifaces: tuple[str, ...], timeout: float,
          read_only: bool, verbose: int, name: str, foreground: bool, cached: bool,
          allow_other: bool, log_path: str | None) -> None:
    """Show DISK as the file MOUNTPOINT/disk (FUSE), e.g. for `mount -o loop`.

    Unmount with `fusermount3 -u MOUNTPOINT` (or `umount` as root); SIGINT and SIGTERM
    unmount cleanly too. fsync on the file flushes the disk's write cache.
    """
    source = _source(disk)
    mp = os.path.abspath(mountpoint)
    if not os.path.isdir(mp):
        raise click.BadParameter(f"{mountpoint} is not a directory", param_hint="MOUNTPOINT")
    if os.path.ismount(mp):
        raise click.BadParameter(f"{mountpoint} is already a mount point",
                                 param_hint="MOUNTPOINT")
    if "/" in name or name in ("", ".", ".."):
        raise click.BadParameter("a plain file name is needed", param_hint="--name")
    if not os.path.exists("/dev/fuse"):
        raise click.ClickException("/dev/fuse is missing: the kernel has no FUSE support")
    _logging(verbose)

    def work(ready: Ready) -> None:
        from aoe.export.fuse import mount_blockdev

        with _opened(source, ifaces, read_only, timeout) as dev:
            message = f"{source.label} mounted as {os.path.join(mp, name)} (pid {os.getpid()})"
            try:
                mount_blockdev(dev, mp, name=name, read_only=read_only, direct_io=not cached,
                               allow_other=allow_other, fsname=f"aoe:{source.label}",
                               ready=lambda: ready(message), debug=verbose > 2)
            except (RuntimeError, OSError) as exc:
                raise click.ClickException(f"FUSE mount on {mp} failed: {exc}") from None

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
        export_name: str | None, ifaces: tuple[str, ...], timeout: float, read_only: bool,
        verbose: int, workers: int, daemon: bool, log_path: str | None) -> None:
    """Serve DISK over NBD (for nbdinfo, nbdcopy, qemu, nbdfuse, nbd-client).

    Runs until SIGINT or SIGTERM. Prints the NBD URI to connect to.
    """
    source = _source(disk)
    if (socket_path is None) == (port is None):
        raise click.UsageError("give exactly one of --socket PATH and --port N")
    name = source.label if export_name is None else export_name
    _logging(verbose)

    def work(ready: Ready) -> None:
        from aoe.export.nbdserver import serve_nbd

        with _opened(source, ifaces, read_only, timeout) as dev:
            try:
                serve_nbd(dev, socket_path=socket_path, host=address, port=port, name=name,
                          read_only=read_only, workers=workers,
                          ready=lambda srv: ready(srv.uri))
            except OSError as exc:
                where = socket_path or f"{address}:{port}"
                raise click.ClickException(f"cannot listen on {where}: "
                                           f"{exc.strerror or exc}") from None

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
def attach(disk: str, device: str, ifaces: tuple[str, ...], timeout: float, read_only: bool,
           verbose: int, connections: int, method: str, foreground: bool,
           log_path: str | None) -> None:
    """Bind DISK to the kernel block device DEVICE (/dev/nbdN), so that e.g.
    `mount /dev/nbd0p1 /mnt` works. Needs the kernel's nbd driver. Undo with
    `aoe detach DEVICE`.
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
        with _opened(source, ifaces, read_only, timeout) as dev:
            try:
                attach_blockdev(dev, device, read_only=read_only, connections=connections,
                                method=method, ready=lambda a: ready(
                                    f"{source.label} attached as {a.device} "
                                    f"({a.method}, pid {os.getpid()})"))
            except (NbdUnavailable, OSError) as exc:
                raise click.ClickException(f"attaching {device} failed: {exc}") from None

    _run(work, background=not foreground, log_path=log_path)


@click.command("detach")
@click.argument("device")
@click.option("--method", type=click.Choice(["auto", "netlink", "ioctl"]), default="auto",
              show_default=True, help="How to reach the kernel device.")
@click.option("--force", is_flag=True,
              help="Disconnect even while the device is mounted or held (loses unwritten data).")
def detach(device: str, method: str, force: bool) -> None:
    """Disconnect DEVICE (/dev/nbdN) attached by `aoe attach`; its server then exits.
    Refused while DEVICE or a partition of it is mounted."""
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
