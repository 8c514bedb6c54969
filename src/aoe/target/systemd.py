"""systemd units for the target, and `aoe systemd install` to put them in place.

``aoe-serve.service`` runs one daemon for every export in /etc/pyaoe/targets.toml;
``aoe-serve@NAME.service`` runs one per file /etc/pyaoe/NAME.toml. Both are Type=notify:
systemd considers them started once every export answers (READY=1), and `systemctl reload`
sends SIGHUP.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

UNIT_DIR = Path("/etc/systemd/system")

_COMMON = """\
[Unit]
Description={description}
Documentation=https://github.com/pyaoe/pyaoe/blob/main/docs/target.md
Wants=network.target
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} serve --config {config} --control-socket /run/pyaoe/{sock}.sock -v
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
# A stop by SIGTERM ends the process with status 143 (128 + 15), as a shell reports it.
SuccessExitStatus=143
Restart=on-failure
RestartSec=2
RuntimeDirectory=pyaoe
RuntimeDirectoryPreserve=yes
RuntimeDirectoryMode=0700
StateDirectory=pyaoe
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def units(exe: str) -> dict[str, str]:
    """File name -> content of each unit, for the `aoe` found at ``exe``."""
    return {
        "aoe-serve.service": _COMMON.format(
            description="AoE target (pyaoe): exports in /etc/pyaoe/targets.toml",
            exe=exe, config="/etc/pyaoe/targets.toml", sock="targets"),
        "aoe-serve@.service": _COMMON.format(
            description="AoE target (pyaoe): exports in /etc/pyaoe/%i.toml",
            exe=exe, config="/etc/pyaoe/%i.toml", sock="%i"),
    }


def aoe_executable() -> str:
    here = Path(sys.executable).with_name("aoe")
    if here.exists():
        return str(here)
    return shutil.which("aoe") or "/usr/local/bin/aoe"


def install(unit_dir: Path = UNIT_DIR, exe: str | None = None) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units(exe or aoe_executable()).items():
        path = unit_dir / name
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written


@click.group("systemd")
def systemd_group() -> None:
    """systemd units that run `aoe serve` as a service."""


@systemd_group.command("install")
@click.option("--dir", "unit_dir", type=click.Path(file_okay=False), default=str(UNIT_DIR),
              show_default=True, help="Where to write the units.")
def install_cmd(unit_dir: str) -> None:
    """Write aoe-serve.service and aoe-serve@.service (then: systemctl daemon-reload).

    \b
    Example:  aoe systemd install && systemctl daemon-reload
    """
    try:
        paths = install(Path(unit_dir))
    except OSError as exc:
        raise click.ClickException(f"cannot write units to {unit_dir}: {exc.strerror}") from None
    for p in paths:
        click.echo(f"wrote {p}")
    click.echo("next: put exports in /etc/pyaoe/targets.toml, then "
               "systemctl daemon-reload && systemctl enable --now aoe-serve")


@systemd_group.command("show")
def show_cmd() -> None:
    """Print the units.

    \b
    Example:  aoe systemd show
    """
    for name, text in units(aoe_executable()).items():
        click.echo(f"# {name}\n{text}")
