"""Conformance checks on Query Config: read, test, test prefix, set, force set, string rules.

State-changing checks first save the config string and force it back at the end, so a
target leaves the suite with the string it came with.
"""

from __future__ import annotations

from ..protocol import (
    AOE_VERSION,
    AoeError,
    Command,
    ConfigBody,
    ConfigCommand,
    encode,
)
from ..protocol.constants import MAX_CONFIG_STRING
from ..protocol.frames import CONFIG_ARGS
from .context import Context, Failed, Unsupported, aoe_error, expect_answer
from .probe import Reply

STATE_CHECKS = [
    "config.set-when-empty",
    "config.set-when-present",
    "config.force-set",
    "config.max-length",
    "config.over-length",
    "config.length-mismatch",
    "config.restore",
]
CONFIG_CHECKS = [
    "config.read", "config.test-match", "config.test-mismatch", "config.prefix-match",
    "config.prefix-mismatch", "config.bad-ccmd", *STATE_CHECKS,
]


def _config_of(reply: Reply, what: str) -> bytes:
    if aoe_error(reply):
        raise Failed(f"{what}: answered with error {aoe_error(reply)}")
    return reply.config.config


def read_config(ctx: Context) -> bytes:
    reply = expect_answer(ctx.probe.config(ConfigCommand.READ), "Query Config read")
    return _config_of(reply, "read")


def raw_config_frame(ctx: Context, ccmd: int, length: int, payload: bytes) -> tuple[bytes, int]:
    """A Query Config frame whose length field says ``length`` whatever ``payload`` holds."""
    frame = ctx.probe.frame(Command.QUERY_CONFIG, b"")
    head = encode(frame)
    args = CONFIG_ARGS.pack(0, 0, 0, (AOE_VERSION << 4) | ccmd, length)
    raw = head + args + payload
    if len(raw) < 60:
        raw += bytes(60 - len(raw))
    return raw, frame.tag


def check_config(ctx: Context) -> None:
    p = ctx.probe
    with ctx.check("config.read") as notes:
        reply = expect_answer(p.config(ConfigCommand.READ), "Query Config read")
        cfg = reply.config
        problems = []
        if aoe_error(reply):
            problems.append(f"error {aoe_error(reply)}")
        if cfg.ccmd != ConfigCommand.READ:
            problems.append(f"ccmd {cfg.ccmd} in the answer")
        if cfg.aoe_version != AOE_VERSION:
            problems.append(f"AoE version {cfg.aoe_version} in the arguments")
        if cfg.buffer_count < 1:
            problems.append("buffer count 0")
        if cfg.sector_count < 1:
            problems.append("sector count 0")
        if problems:
            raise Failed(", ".join(problems))
        ctx.config = cfg.config
        ctx.max_sectors = cfg.sector_count
        notes.append(f"bufcnt={cfg.buffer_count} maxsect={cfg.sector_count} "
                     f"config of {len(cfg.config)} bytes")

    current = ctx.config
    mismatch = current + b"~" if current else b"pyaoe-no-such-string"
    with ctx.check("config.test-match") as notes:
        reply = expect_answer(p.config(ConfigCommand.TEST, current), "test with its own string")
        if _config_of(reply, "test") != current:
            raise Failed(f"answer carries {reply.config.config!r}, not the target's string")
        notes.append("exact string answered")
    with ctx.check("config.test-mismatch") as notes:
        frame = p.frame(Command.QUERY_CONFIG, ConfigBody(ccmd=ConfigCommand.TEST, config=mismatch))
        if p.silence(frame):
            raise Failed(f"answered a test for {mismatch[:40]!r}, which is not its string")
        notes.append("other string: no answer")
    with ctx.check("config.prefix-match") as notes:
        prefix = current[: max(0, len(current) // 2)]
        reply = expect_answer(p.config(ConfigCommand.TEST_PREFIX, prefix), "test prefix")
        _config_of(reply, "test prefix")
        notes.append(f"prefix of {len(prefix)} bytes answered")
    with ctx.check("config.prefix-mismatch") as notes:
        body = ConfigBody(ccmd=ConfigCommand.TEST_PREFIX, config=mismatch)
        if p.silence(p.frame(Command.QUERY_CONFIG, body)):
            raise Failed(f"answered a prefix test for {mismatch[:40]!r}, not a prefix")
        notes.append("non-prefix: no answer")
    with ctx.check("config.bad-ccmd") as notes:
        # The target's own string goes along: even a target that took ccmd 9 for a set
        # would change nothing.
        reply = expect_answer(p.config(9, current), "ccmd 9")
        if aoe_error(reply) != AoeError.BAD_ARGUMENT:
            raise Failed(f"ccmd 9 answered with error {aoe_error(reply)}, expected 2")
        notes.append("ccmd 9 answered with error 2")

    if ctx.read_only:
        ctx.skip(STATE_CHECKS, "read-only run")
        return
    try:
        _check_set_rules(ctx, current)
    finally:
        with ctx.check("config.restore") as notes:
            reply = expect_answer(p.config(ConfigCommand.FORCE_SET, current), "force set")
            if read_config(ctx) != current:
                raise Failed("config string differs from the original after restoring it")
            notes.append(f"original string of {len(current)} bytes restored")


def _check_set_rules(ctx: Context, original: bytes) -> None:
    p = ctx.probe
    first, second = b"pyaoe-conformance-1", b"pyaoe-conformance-2"
    with ctx.check("config.set-when-empty") as notes:
        reply = expect_answer(p.config(ConfigCommand.FORCE_SET, b""), "force set to empty")
        if _config_of(reply, "force set") != b"":
            raise Failed("force set to the empty string did not empty it")
        reply = expect_answer(p.config(ConfigCommand.SET, first), "set while empty")
        if _config_of(reply, "set while empty") != first:
            raise Failed(f"set while empty answered {reply.config.config!r}")
        notes.append("set accepted while the string was empty")
    with ctx.check("config.set-when-present") as notes:
        p.config(ConfigCommand.FORCE_SET, first)
        reply = expect_answer(p.config(ConfigCommand.SET, second), "set while present")
        if aoe_error(reply) != AoeError.CONFIG_STRING_PRESENT:
            raise Failed(f"set over an existing string answered with error "
                         f"{aoe_error(reply)}, expected 4")
        if read_config(ctx) != first:
            raise Failed("refused set changed the string anyway")
        notes.append("error 4, string unchanged")
    with ctx.check("config.force-set") as notes:
        reply = expect_answer(p.config(ConfigCommand.FORCE_SET, second), "force set")
        if _config_of(reply, "force set") != second or read_config(ctx) != second:
            raise Failed("force set did not replace the string")
        notes.append("force set replaced the string")
    with ctx.check("config.max-length") as notes:
        if ctx.probe.mtu + 14 < 32 + MAX_CONFIG_STRING:
            raise Unsupported(f"MTU {ctx.probe.mtu} cannot carry a 1024-byte config string")
        longest = bytes(ord("a") + i % 26 for i in range(MAX_CONFIG_STRING))
        reply = expect_answer(p.config(ConfigCommand.FORCE_SET, longest), "1024-byte string")
        if _config_of(reply, "1024-byte force set") != longest or read_config(ctx) != longest:
            raise Failed("a 1024-byte string was not stored and returned whole")
        notes.append("1024-byte string stored and returned")
    _check_bad_lengths(ctx, second)


def _check_bad_lengths(ctx: Context, before: bytes) -> None:
    p = ctx.probe
    p.config(ConfigCommand.FORCE_SET, before)
    with ctx.check("config.over-length") as notes:
        if ctx.probe.mtu + 14 < 32 + MAX_CONFIG_STRING + 1:
            raise Unsupported(f"MTU {ctx.probe.mtu} cannot carry a 1025-byte config string")
        raw, tag = raw_config_frame(ctx, ConfigCommand.FORCE_SET, MAX_CONFIG_STRING + 1,
                                    b"x" * (MAX_CONFIG_STRING + 1))
        replies = p.silence(raw, tag)
        after = read_config(ctx)
        if after != before:
            raise Failed(f"a 1025-byte string changed the config (now {len(after)} bytes)")
        how = _refusal(replies)
        notes.append(f"1025-byte force set refused ({how}), string unchanged")
    with ctx.check("config.length-mismatch") as notes:
        present = b"pyaoe-length-check-" + b"x" * 21  # 40 bytes: the frame needs no padding
        how = []
        for extra in (16, 200):
            raw, tag = raw_config_frame(ctx, ConfigCommand.FORCE_SET, len(present) + extra,
                                        present)
            replies = p.silence(raw, tag)
            after = read_config(ctx)
            if after != before:
                p.config(ConfigCommand.FORCE_SET, before)
                raise Failed(f"a length field {extra} bytes beyond the frame set a "
                             f"{len(after)}-byte string (read past the frame)")
            how.append(f"+{extra}: {_refusal(replies)}")
        notes.append(f"lengths beyond the frame refused ({', '.join(how)}), unchanged")


def _refusal(replies: list[Reply]) -> str:
    if not replies:
        return "no answer"
    errors = sorted({aoe_error(r) for r in replies})
    return "error " + ",".join(str(e) for e in errors)

