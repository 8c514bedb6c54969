"""The `aoe` command line: a thin click layer over library calls.

Each area registers its commands below; the commands themselves live beside the code they
drive, so every one is also usable as a library call. A command's module is imported only
when that command runs (or when help lists the commands): `aoe copy` on a slow CPU should
not pay for pyroute2 or scapy, which only the lab and capture commands use.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from . import __version__

# --- command registration: name -> "module:attribute" (one line per command) ---
COMMANDS = {
    "decode": "aoe.capture.cli:decode",
    "lab": "aoe.lab.cli:lab_group",
    "link": "aoe.lab.cli:link_group",
    "serve": "aoe.target.cli:serve",
    "status": "aoe.target.ctl_cli:status",
    "ctl": "aoe.target.ctl_cli:ctl",
    "systemd": "aoe.target.systemd:systemd_group",
    "config": "aoe.initiator.admin_cli:config_cmd",
    "mask": "aoe.initiator.admin_cli:mask_cmd",
    "reserve": "aoe.initiator.admin_cli:reserve_cmd",
    "flush": "aoe.initiator.admin_cli:flush_cmd",
    "discover": "aoe.initiator.cli:discover",
    "info": "aoe.initiator.cli:info",
    "copy": "aoe.initiator.cli:copy",
    "mount": "aoe.export.cli:mount",
    "nbd": "aoe.export.cli:nbd",
    "attach": "aoe.export.cli:attach",
    "detach": "aoe.export.cli:detach",
    "conformance": "aoe.checks.cli:conformance",
    "fuzz": "aoe.checks.cli:fuzz",
    "sniff": "aoe.capture.cli:sniff",
    "ping": "aoe.capture.cli:ping",
}

# Commands that end once their raw sockets are closed. Run from the console script they
# leave the kernel's wait at that close to a holder process (aoe.net.rawsock
# .hand_over_closes); the daemons (serve, mount, nbd) and the lab keep closing in place.
EXIT_AFTER_CLOSE = frozenset({"config", "mask", "reserve", "flush", "discover", "info",
                              "copy"})


class LazyGroup(click.Group):
    """A group whose commands (from COMMANDS) are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in COMMANDS:
            return found
        module, _, attr = COMMANDS[cmd_name].partition(":")
        command: Any = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{COMMANDS[cmd_name]} is not a click command")
        self.add_command(command, cmd_name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aoe")
def main() -> None:
    """ATA over Ethernet: serve disks, reach them, and test the protocol."""


def run() -> None:
    """The `aoe` console script: ``main()``, then a quick exit.

    Tearing the interpreter down (module dicts, every object, the GC) costs a command
    6-10 ms of CPU, 25-40 ms of wall time at 25 % of a slow core, and frees nothing the
    kernel would not. Once the command has returned and only this thread is left, the
    exit handlers run, the standard streams are flushed and the process ends with
    ``os._exit``. With other threads still running, or a flush failing, Python's own exit
    does the work as before.
    """
    import sys

    prepare_exit(sys.argv[1:2])
    try:
        main()
    except SystemExit as end:
        code = end.code
        if code is not None and not isinstance(code, int):
            raise
        import atexit
        import os
        import threading

        if threading.active_count() != 1:
            raise
        atexit._run_exitfuncs()
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        except (OSError, ValueError):
            raise end from None
        os._exit(code or 0)


def prepare_exit(command: list[str]) -> None:
    """Before a command that ends once its sockets are closed (EXIT_AFTER_CLOSE): let
    those closes return at once. Only the console script calls this; a library user or a
    test runner in the same process keeps the plain close."""
    if command and command[0] in EXIT_AFTER_CLOSE:
        from .net.rawsock import hand_over_closes

        hand_over_closes()
