"""`aoe lab ...` and `aoe link ...`: thin click wrappers over aoe.lab and aoe.net.link."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import click

from aoe.lab import registry
from aoe.lab.cable import parse_rate, parse_time
from aoe.lab.core import DEFAULT_PREFIX, Lab, cleanup_all, namespace_exists
from aoe.lab.nsutil import LabError, enter_for_exec, list_netns, netns_path, thread_netns
from aoe.protocol.constants import MIN_MTU

F = TypeVar("F", bound=Callable[..., Any])


def _prefix_option(f: F) -> F:
    return click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                        help="Namespace name prefix of lab namespaces.")(f)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn library errors into one-line CLI errors instead of tracebacks."""
    from aoe.net.link import LinkError

    try:
        yield
    except (LabError, LinkError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except PermissionError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: lab commands need root") from None


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("lab commands need root (network namespaces)")


@click.group("lab")
def lab_group() -> None:
    """Network namespaces joined by veth cables, for trying AoE safely."""


@lab_group.command("up")
@click.option("--name", help="Lab name (letters, digits, '_', '.'); default: generated.")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="A host to create (repeatable). Default: target, initiator.")
@click.option("--hosts", "count", type=click.IntRange(1, 64),
              help="Create this many hosts named h1..hN instead.")
@click.option("--cable", "cables", multiple=True, metavar="A:B",
              help="Join two hosts (repeatable). Default: a chain in host order.")
@click.option("--mtu", type=click.IntRange(68, 65535), default=1500, show_default=True,
              help="MTU of every cable end, in bytes (9000 for jumbo frames).")
@click.option("--rate", help="Shape every cable, e.g. 1gbit or 100mbit.")
@click.option("--json", "as_json", is_flag=True, help="Print the lab description as JSON.")
@_prefix_option
def lab_up(name: str | None, hosts: tuple[str, ...], count: int | None,
           cables: tuple[str, ...], mtu: int, rate: str | None, as_json: bool,
           prefix: str) -> None:
    """Create a lab that stays up until `aoe lab down`.

    \b
    Example:  aoe lab up --name demo --hosts 2 --mtu 9000 --rate 1gbit
    """
    _need_root()
    if hosts and count:
        raise click.BadParameter("give --host names or --hosts N, not both", param_hint="--hosts")
    names = list(hosts) or ([f"h{i}" for i in range(1, count + 1)] if count
                            else ["target", "initiator"])
    if len(set(names)) != len(names):
        raise click.BadParameter("host names must differ", param_hint="--host")
    pairs = []
    for spec in cables:
        a, sep, b = spec.partition(":")
        if not sep or a not in names or b not in names or a == b:
            raise click.BadParameter(f"{spec!r}: want A:B with two different hosts of this lab",
                                     param_hint="--cable")
        pairs.append((a, b))
    if not cables:
        pairs = list(zip(names, names[1:], strict=False))
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate") from None
    with _clear_errors():
        if name is not None:
            _check_free(name, prefix)
        lab = Lab(prefix, unique=name)
        try:
            made = {n: lab.host(n) for n in names}
            for a, b in pairs:
                lab.cable(made[a], made[b], mtu=mtu, rate=rate)
            saved = registry.save(lab)
        except BaseException:
            lab.close()
            raise
        lab.detach()
    if as_json:
        click.echo(json.dumps({"name": saved.name, "hosts": saved.hosts,
                               "cables": saved.cables}, indent=2))
        return
    click.echo(f"lab {saved.name}")
    for host, ns in saved.hosts.items():
        click.echo(f"  host {host:<12} netns {ns}")
    for c in saved.cables:
        click.echo(f"  cable {c['a']}:{c['a_ifname']} ({c['a_mac']}) <-> "
                   f"{c['b']}:{c['b_ifname']} ({c['b_mac']})  mtu {c['mtu']}"
                   + (f"  rate {_human_rate(c['rate'])}" if c["rate"] else ""))


def _human_rate(bits: int) -> str:
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= size and bits % size == 0:
            return f"{bits // size}{unit}"
    return f"{bits}bit"


def _check_free(name: str, prefix: str) -> None:
    if os.path.exists(os.path.join(registry.state_dir(), f"{name}.json")):
        raise LabError(f"a lab named {name!r} already exists (aoe lab down {name})")
    if list_netns(f"{prefix}{name}-"):
        raise LabError(f"namespaces {prefix}{name}-* already exist")


@lab_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the labs as JSON.")
@_prefix_option
def lab_list(as_json: bool, prefix: str) -> None:
    """Show saved labs and any stray lab namespaces.

    \b
    Example:  aoe lab list --json
    """
    saved = registry.all_saved()
    known = {ns for s in saved for ns in s.hosts.values()}
    stray = [ns for ns in list_netns(prefix) if ns not in known] if prefix else []
    if as_json:
        click.echo(json.dumps({"labs": [{"name": s.name, "hosts": s.hosts,
                                         "alive": s.alive_hosts(), "cables": s.cables}
                                        for s in saved], "stray": stray}, indent=2))
        return
    if not saved and not stray:
        click.echo("no labs")
    for s in saved:
        alive = s.alive_hosts()
        state = "up" if len(alive) == len(s.hosts) else f"{len(alive)}/{len(s.hosts)} hosts up"
        click.echo(f"{s.name}: {state}; hosts {', '.join(s.hosts)}; {len(s.cables)} cable(s)")
    for ns in stray:
        click.echo(f"stray namespace {ns} (aoe lab down --all removes it)")


@lab_group.command("down")
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True,
              help="Remove every saved lab and every namespace named PREFIX*.")
@_prefix_option
def lab_down(name: str | None, everything: bool, prefix: str) -> None:
    """Remove a lab (its namespaces and what runs in them).

    \b
    Example:  aoe lab down demo
    """
    _need_root()
    if bool(name) == everything:
        raise click.UsageError("give a lab NAME or --all")
    with _clear_errors():
        if everything:
            removed = []
            for s in registry.all_saved():
                if s.prefix == prefix:
                    removed += registry.remove(s)
            removed += cleanup_all(prefix)
        else:
            assert name is not None
            removed = registry.remove(registry.load(name))
    click.echo(f"removed {len(removed)} namespace(s)")


@lab_group.command("exec", context_settings={"ignore_unknown_options": True,
                                             "allow_interspersed_args": False})
@click.option("--lab", "lab_name", help="Lab of the host (or write LAB/HOST).")
@click.option("--private-mounts", is_flag=True,
              help="Also give the command a mount namespace of its own with the host's "
                   "/sys (as `ip netns exec` does). Mounts it makes (aoe mount) are then "
                   "invisible outside it. Default: enter only the network namespace "
                   "(as `nsenter --net` does).")
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(lab_name: str | None, private_mounts: bool, host: str,
             argv: tuple[str, ...]) -> None:
    """Run a command inside a lab host's network namespace.

    Only the network namespace is entered, so a FUSE mount the command makes (aoe mount)
    is visible to every process and `fusermount3 -u` works from anywhere.

    \b
    Example:  aoe lab exec h2 -- aoe mount 1.0 /mnt/aoe
              aoe lab exec --private-mounts h2 -- cat /sys/class/net/eth0/mtu
    """
    _need_root()
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise click.UsageError("no command given: aoe lab exec HOST -- CMD [ARGS]")
    with _clear_errors():
        _, ns = registry.find_host(host, lab_name)
        if not namespace_exists(ns):
            raise LabError(f"namespace {ns} is gone; recreate the lab")
    fd = os.open(netns_path(ns), os.O_RDONLY)
    enter_for_exec(fd, private_sysfs=private_mounts)
    os.close(fd)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], list(argv))
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]!r}: {exc.strerror}") from None


def _time_option(name: str, help_text: str) -> Callable[[F], F]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
        if value is None:
            return 0.0
        try:
            return parse_time(value) if value[-1:].isalpha() else float(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option(name, callback=convert, help=help_text)


@lab_group.command("relay")
@click.argument("port_a")
@click.argument("port_b")
@click.option("--in", "where", metavar="[LAB/]HOST",
              help="Run inside this lab host (default: the current namespace).")
@click.option("--drop", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of frames dropped (0..1).")
@click.option("--duplicate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of frames sent twice (0..1).")
@click.option("--reorder", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of frames held back until the next one has gone out (0..1).")
@click.option("--corrupt", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of frames with one byte flipped after the Ethernet header (0..1).")
@_time_option("--delay", "Delay per frame, e.g. 5ms.")
@_time_option("--jitter", "Uniform ± jitter on the delay, e.g. 2ms.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed of the impairments (the same seed repeats a run).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds (default: until Ctrl-C / SIGTERM).")
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
def lab_relay(port_a: str, port_b: str, where: str | None, drop: float, duplicate: float,
              reorder: float, corrupt: float, delay: float, jitter: float, seed: int,
              duration: float | None, as_json: bool) -> None:
    """Forward AoE frames between PORT_A and PORT_B, impaired; print counters at the end.

    \b
    Example:  aoe lab relay r0 r1 --in demo/relay --drop 0.01 --delay 2ms --seed 7
    """
    from aoe.lab.relay import Relay

    with _clear_errors():
        ctx: Any = nullcontext()
        if where is not None:
            _, ns = registry.find_host(where, None)
            ctx = thread_netns(ns)
        relay = Relay(port_a, port_b, drop=drop, duplicate=duplicate, reorder=reorder,
                      corrupt=corrupt, delay=delay, jitter=jitter, seed=seed)
        with ctx:
            if not as_json:
                click.echo(f"relaying EtherType 0x88A2 between {port_a} and {port_b} "
                           "(Ctrl-C to stop)", err=True)
            try:
                relay.run(duration)
            except KeyboardInterrupt:
                pass
    stats = relay.stats()
    if as_json:
        click.echo(json.dumps(stats.as_dict(), indent=2))
        return
    for label, counts in (("a->b", stats.a_to_b), ("b->a", stats.b_to_a)):
        click.echo(f"{label}: " + " ".join(f"{k}={v}" for k, v in vars(counts).items()))


# --- aoe link ---------------------------------------------------------------------------
def _netns_option(f: F) -> F:
    return click.option("--in", "where", metavar="[LAB/]HOST",
                        help="Act inside this lab host instead of the current namespace.")(f)


def _in_place(where: str | None) -> Any:
    if where is None:
        return nullcontext()
    _, ns = registry.find_host(where, None)
    return thread_netns(ns)


def _show(info: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict()))
        return
    max_mtu = info.max_mtu if info.max_mtu is not None else "?"
    click.echo(f"{info.name}: {'up' if info.up else 'down'} ({info.operstate}) "
               f"mtu {info.mtu} (max {max_mtu}) mac {info.mac} kind {info.kind or '-'}")


@click.group("link")
def link_group() -> None:
    """Interface state that matters to AoE: up/down, MTU, MAC."""


@link_group.command("show")
@click.argument("iface")
@_netns_option
@click.option("--json", "as_json", is_flag=True, help="Print the interface as JSON.")
def link_show(iface: str, where: str | None, as_json: bool) -> None:
    """Show an interface: state, MTU, max MTU, MAC.

    \b
    Example:  aoe link show eth0 --in demo/h1
    """
    from aoe.net.link import link_info

    with _clear_errors(), _in_place(where):
        _show(link_info(iface), as_json)


@link_group.command("up")
@click.argument("iface")
@_netns_option
def link_up_cmd(iface: str, where: str | None) -> None:
    """Bring an interface up.

    \b
    Example:  aoe link up eth0
    """
    from aoe.net.link import link_up

    with _clear_errors(), _in_place(where):
        _show(link_up(iface), False)


@link_group.command("mtu")
@click.argument("iface")
@click.argument("mtu", type=int)
@_netns_option
@click.option("--force", is_flag=True,
              help=f"Allow an MTU below {MIN_MTU}, which cannot carry one sector per frame.")
def link_mtu_cmd(iface: str, mtu: int, where: str | None, force: bool) -> None:
    """Set an interface's MTU (checked against its maximum): 9000 for jumbo frames, 17
    sectors per AoE frame; 1500 carries 2.

    \b
    Example:  aoe link mtu eth0 9000
    """
    from aoe.net.link import set_mtu

    if mtu < MIN_MTU and not force:
        raise click.BadParameter(
            f"{mtu} is too small for AoE: one 512-byte sector and the 36-byte header need "
            f"{MIN_MTU} (use --force to set it anyway)", param_hint="MTU")
    with _clear_errors(), _in_place(where):
        _show(set_mtu(iface, mtu), False)
