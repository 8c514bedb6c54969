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
from .capture.cli import decode, ping, sniff  # noqa: E402

for _cmd in (decode, sniff, ping):
    main.add_command(_cmd)

from .lab.cli import lab_group, link_group  # noqa: E402

main.add_command(lab_group)
main.add_command(link_group)

from .target.cli import serve  # noqa: E402

main.add_command(serve)

from .initiator.cli import copy, discover, info  # noqa: E402

main.add_command(discover)
main.add_command(info)
main.add_command(copy)

from .export.cli import attach, detach, mount, nbd  # noqa: E402

for _cmd in (mount, nbd, attach, detach):
    main.add_command(_cmd)

from .checks.cli import conformance, fuzz  # noqa: E402

for _cmd in (conformance, fuzz):
    main.add_command(_cmd)
