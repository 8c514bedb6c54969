"""Human-readable and JSON-friendly views of decoded frames (for decode, sniff and logs)."""

from __future__ import annotations

from typing import Any

from .ata import AtaOpcode
from .constants import (
    AtaFlag,
    Command,
    ConfigCommand,
    DirectiveCommand,
    MaskCommand,
    ReserveCommand,
)
from .errors import AoeError
from .frames import AtaBody, ConfigBody, Frame, MaskBody, ReserveBody
from .mac import format_mac


def _name(enum: Any, value: int) -> str:
    try:
        return str(enum(value).name)
    except ValueError:
        return f"0x{value:02x}"


def _ata_flags(aflags: int) -> str:
    names = [f.name or "" for f in AtaFlag if f and aflags & f]
    return "|".join(names) or "-"


def describe(frame: Frame) -> str:
    """One line: addresses, direction, command and its arguments."""
    kind = "rsp" if frame.is_response else "req"
    head = (
        f"{format_mac(frame.src)} > {format_mac(frame.dst)} {frame.shelf}.{frame.slot} "
        f"tag=0x{frame.tag:08x} {kind} {_name(Command, frame.command)}"
    )
    if frame.is_error:
        head += f" ERROR={_name(AoeError, frame.error)}"
    body = frame.body
    if isinstance(body, AtaBody):
        if frame.is_response:
            op = f"status=0x{body.cmd_status:02x} err=0x{body.err_feature:02x}"
        else:
            op = _name(AtaOpcode, body.cmd_status)
        return (
            f"{head} {op} aflags={_ata_flags(body.aflags)} count={body.sector_count} "
            f"lba={body.lba} data={len(body.data)}"
        )
    if isinstance(body, ConfigBody):
        return (
            f"{head} ccmd={_name(ConfigCommand, body.ccmd)} bufcnt={body.buffer_count} "
            f"fw=0x{body.firmware:04x} maxsect={body.sector_count} ver={body.aoe_version} "
            f"config={body.config!r}"
        )
    if isinstance(body, MaskBody):
        dirs = ",".join(
            f"{_name(DirectiveCommand, d.dcmd)}:{format_mac(d.mac)}" for d in body.directives
        )
        return f"{head} mcmd={_name(MaskCommand, body.mcmd)} merror={body.merror} [{dirs}]"
    if isinstance(body, ReserveBody):
        macs = ",".join(format_mac(m) for m in body.macs)
        return f"{head} rcmd={_name(ReserveCommand, body.rcmd)} [{macs}]"
    return f"{head} raw={len(body)} bytes"


def to_dict(frame: Frame) -> dict[str, Any]:
    """A JSON-serialisable dict of every field."""
    out: dict[str, Any] = {
        "src": format_mac(frame.src),
        "dst": format_mac(frame.dst),
        "version": frame.version,
        "response": frame.is_response,
        "error_flag": frame.is_error,
        "error": frame.error,
        "shelf": frame.shelf,
        "slot": frame.slot,
        "command": _name(Command, frame.command),
        "tag": frame.tag,
    }
    body = frame.body
    if isinstance(body, AtaBody):
        out.update(
            aflags=body.aflags,
            err_feature=body.err_feature,
            sector_count=body.sector_count,
            cmd_status=body.cmd_status,
            lba=body.lba,
            data_len=len(body.data),
        )
    elif isinstance(body, ConfigBody):
        out.update(
            buffer_count=body.buffer_count,
            firmware=body.firmware,
            max_sectors=body.sector_count,
            aoe_version=body.aoe_version,
            ccmd=body.ccmd,
            config=body.config.decode("latin-1"),
        )
    elif isinstance(body, MaskBody):
        out.update(
            mcmd=body.mcmd,
            merror=body.merror,
            directives=[{"dcmd": d.dcmd, "mac": format_mac(d.mac)} for d in body.directives],
        )
    elif isinstance(body, ReserveBody):
        out.update(rcmd=body.rcmd, macs=[format_mac(m) for m in body.macs])
    else:
        out["raw_len"] = len(body)
    return out
