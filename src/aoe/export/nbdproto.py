"""NBD wire format (fixed newstyle handshake and transmission), without any I/O.

Values follow the NBD protocol document (doc/proto.md of the NBD project). All integers
are big-endian.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import NamedTuple

# -- handshake -------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0  # client flags
FLAG_C_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# -- transmission flags (per export) ---------------------------------------------------
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8

# -- transmission ----------------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_ERROR = (1 << 15) + 1

# error values (a fixed subset of Linux errno numbers)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

CMD_NAMES = {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC", CMD_FLUSH: "FLUSH",
             CMD_TRIM: "TRIM", CMD_CACHE: "CACHE", CMD_WRITE_ZEROES: "WRITE_ZEROES",
             CMD_BLOCK_STATUS: "BLOCK_STATUS"}

_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_STRUCTURED = struct.Struct(">IHHQI")
_STRUCTURED_DATA = struct.Struct(">IHHQIQ")  # a chunk header and the data's offset

OPT_HEADER_LEN = _OPT_HEADER.size  # 16
REQUEST_LEN = _REQUEST.size  # 28


class ProtocolError(Exception):
    """The peer broke the protocol in a way that ends the session (hard disconnect)."""


def server_greeting(flags: int = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) -> bytes:
    """First bytes the server sends: NBDMAGIC, IHAVEOPT, handshake flags."""
    return struct.pack(">QQH", NBDMAGIC, IHAVEOPT, flags)


def parse_option_header(data: bytes) -> tuple[int, int]:
    """(option, data length) from a 16-byte option header."""
    magic, option, length = _OPT_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise ProtocolError(f"bad option magic {magic:#x}")
    return option, length


def option_reply(option: int, reply: int, payload: bytes = b"") -> bytes:
    return _OPT_REPLY.pack(OPT_REPLY_MAGIC, option, reply, len(payload)) + payload


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def info_string(kind: int, text: str) -> bytes:
    return struct.pack(">H", kind) + text.encode()


def server_entry(name: str, description: str = "") -> bytes:
    """Payload of an NBD_REP_SERVER reply (answer to NBD_OPT_LIST)."""
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + description.encode()


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """Answer to NBD_OPT_EXPORT_NAME: size, flags and (unless negotiated away) 124 zeroes."""
    return struct.pack(">QH", size, flags) + (b"" if no_zeroes else bytes(124))


@dataclass(frozen=True)
class InfoRequest:
    """Decoded data of NBD_OPT_INFO / NBD_OPT_GO."""

    name: str
    requests: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    """Decode NBD_OPT_INFO/GO data; ValueError when the lengths do not add up."""
    if len(data) < 6:
        raise ValueError("option data shorter than 6 bytes")
    (name_len,) = struct.unpack_from(">I", data)
    if name_len > len(data) - 6:
        raise ValueError("export name longer than the option data")
    name = data[4 : 4 + name_len].decode("utf-8", errors="strict")
    (count,) = struct.unpack_from(">H", data, 4 + name_len)
    if 6 + name_len + 2 * count != len(data):
        raise ValueError("information request count does not match the option length")
    requests = struct.unpack_from(f">{count}H", data, 6 + name_len)
    return InfoRequest(name, tuple(requests))


class Request(NamedTuple):
    """One transmission-phase request header (a tuple: built once per request, cheaply)."""

    flags: int
    command: int
    cookie: int
    offset: int
    length: int


def parse_request(data: bytes | bytearray | memoryview, at: int | None = None) -> Request:
    """The request header that is ``data`` (or that starts at ``at`` in it)."""
    if at is None:
        magic, flags, command, cookie, offset, length = _REQUEST.unpack(data)
    else:
        magic, flags, command, cookie, offset, length = _REQUEST.unpack_from(data, at)
    if magic != REQUEST_MAGIC:
        raise ProtocolError(f"bad request magic {magic:#x}")
    return Request(flags, command, cookie, offset, length)


def pack_request(command: int, cookie: int, offset: int = 0, length: int = 0,
                 flags: int = 0) -> bytes:
    """A request header (clients and tests use it)."""
    return _REQUEST.pack(REQUEST_MAGIC, flags, command, cookie, offset, length)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """Simple reply header; read data (if any) follows it."""
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def parse_simple_reply(data: bytes) -> tuple[int, int]:
    """(error, cookie) from a 16-byte simple reply."""
    magic, error, cookie = _SIMPLE_REPLY.unpack(data)
    if magic != SIMPLE_REPLY_MAGIC:
        raise ProtocolError(f"bad reply magic {magic:#x}")
    return error, cookie


def structured_data_header(cookie: int, offset: int, length: int) -> bytes:
    """Header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk carrying `length` data bytes."""
    return _STRUCTURED_DATA.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                 REPLY_TYPE_OFFSET_DATA, cookie, 8 + length, offset)


def structured_error(cookie: int, error: int, message: str = "") -> bytes:
    """A final NBD_REPLY_TYPE_ERROR chunk."""
    text = message.encode()[:4096]
    payload = struct.pack(">IH", error, len(text)) + text
    return _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR,
                            cookie, len(payload)) + payload


def error_from_exception(exc: BaseException) -> int:
    """Map a device failure to the NBD error a client understands."""
    code = getattr(exc, "errno", None)
    if code in (errno.EPERM, errno.EROFS, errno.EACCES):
        return EPERM
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ENOSPC
    if code == errno.EINVAL:
        return EINVAL
    if code == errno.ENOMEM:
        return ENOMEM
    return EIO
