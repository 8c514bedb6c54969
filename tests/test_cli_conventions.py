"""One command line: every command shows an example, every option says what it does (with
its unit and default), the interface option is spelt -i/--iface everywhere, the address
comes first, old forms still work with a one-line warning, and --json forms fail like
their text forms."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from aoe.cli import main
from aoe.cli_types import SizeType
from aoe.lab.pair import TwoHosts

from .support.initiator import AOE_BIN


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[
        tuple[str, click.Command]]:
    """Every leaf command of the tree, as ("lab up", command); each lazily registered
    one is loaded as `aoe NAME` would load it."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


ALL = list(commands())
NAMES = [name for name, _ in ALL]
COMMANDS = dict(ALL)


def test_the_tree_is_walked() -> None:
    assert {"serve", "discover", "copy", "mount", "nbd", "ping", "lab up", "link show"} \
        <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_command_shows_an_example(name: str) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    example = result.output.split("Example:", 1)[1].split("\n", 1)[0]
    assert f"aoe {name.split()[0]}" in example, example


def _has_default(param: click.Option) -> bool:
    """A real default value (click >= 8.3 marks "none given" with a sentinel, not None)."""
    return param.default is not None and not isinstance(param.default, enum.Enum)


@pytest.mark.parametrize("name", NAMES)
def test_every_option_has_help_with_default_and_unit(name: str) -> None:
    for param in COMMANDS[name].params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        where = f"aoe {name} {param.opts[0]}"
        assert param.help, f"{where} has no help text"
        text = param.help.lower()
        valued = not param.is_flag and not param.count and not param.multiple
        if valued and _has_default(param):
            assert param.show_default or "default" in text, f"{where} hides its default"
        if isinstance(param.type, SizeType):
            assert "kib" in text and "mib" in text, f"{where} does not say K/M/G are binary"
        if "seconds" in (param.name or "") or param.name in ("timeout", "dead_time",
                                                            "interval", "duration"):
            assert "second" in text, f"{where} does not give its unit"


@pytest.mark.parametrize("name", NAMES)
def test_one_spelling_for_the_interface_option(name: str) -> None:
    for param in COMMANDS[name].params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        if "--iface" in param.opts or "--interface" in param.opts:
            assert param.opts == ["-i", "--iface"] and param.multiple, f"aoe {name}"
            assert "default" in (param.help or "").lower(), f"aoe {name}"


@pytest.mark.parametrize("name", ["serve", "discover", "info", "copy", "mount", "nbd",
                                  "attach", "conformance", "fuzz", "ping", "sniff"])
def test_commands_that_use_the_network_take_iface(name: str) -> None:
    opts = {o for p in COMMANDS[name].params if isinstance(p, click.Option) for o in p.opts}
    assert "--iface" in opts


def test_an_address_out_of_range_is_what_copy_complains_about() -> None:
    result = CliRunner().invoke(main, ["copy", "1.300", "x.img"])
    assert result.exit_code == 2
    assert "slot" in result.output and "255" in result.output, result.output
    assert "exactly one of SOURCE and DEST" not in result.output


@pytest.mark.parametrize("argv, old", [
    (["ping", "1.0", "--interface", "nosuch0", "-c", "1"], "aoe ping --interface IFACE"),
    (["conformance", "nosuch0", "1.0"], "aoe conformance IFACE SHELF.SLOT"),
    (["fuzz", "nosuch0", "1.0"], "aoe fuzz IFACE SHELF.SLOT"),
    (["sniff", "nosuch0", "--count", "1"], "aoe sniff IFACE"),
    (["serve", "nosuch0", "1.0", "/nonexistent.img"], "aoe serve IFACE SHELF.SLOT FILE"),
])
def test_old_forms_warn_in_one_line_and_still_work(argv: list[str], old: str) -> None:
    result = CliRunner().invoke(main, argv)
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: `{old}` is deprecated; write " + warnings[0].split(
        "write ", 1)[1]], result.output
    # then the command runs as before: here it fails on the missing interface or file,
    # which it could only have reached by taking the old arguments as meant
    assert "nosuch0" in result.output or "/nonexistent.img" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.netns
def test_discover_json_exits_1_like_the_text_form(two_hosts: TwoHosts) -> None:
    args = [AOE_BIN, "discover", "9.9", "-i", "eth0", "--timeout", "0.2"]
    text = two_hosts.initiator.run(args, check=False)
    as_json = two_hosts.initiator.run([*args, "--json"], check=False)
    assert text.returncode == as_json.returncode == 1
    assert json.loads(as_json.stdout) == []
    assert "no target 9.9 answered" in as_json.stderr
