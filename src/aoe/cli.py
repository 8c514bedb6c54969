"""The `aoe` command line: a thin click layer over library calls.

Each area registers its commands below; the commands themselves live beside the code they
drive, so every one is also usable as a library call.
"""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aoe")
def main() -> None:
    """ATA over Ethernet: serve disks, reach them, and test the protocol."""


# --- command registration (one line per area; keep edits minimal) ---
from .decode_cli import decode  # noqa: E402

main.add_command(decode)
