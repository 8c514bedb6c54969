"""An NBD server exporting one block device over a Unix or TCP socket.

Each connection negotiates with the fixed newstyle handshake, then one thread reads
requests while a small pool executes them: a client that pipelines gets its requests
served concurrently (replies go out in completion order, which NBD allows), and runs of
contiguous requests are merged into one device call, since the initiator moves large
requests more cheaply than many small ones. Every client shares the same device object,
whose flush covers all completed writes, so multi-conn is advertised.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from aoe.export import nbdproto as p
from aoe.export.blockdev import BlockDevice
from aoe.export.nbdinput import Inbox, Payload

log = logging.getLogger(__name__)

MAX_PAYLOAD = 32 << 20  # largest READ/WRITE accepted (the protocol's interoperable maximum)
MAX_OPTION_DATA = 64 << 10  # larger option data is treated as abuse: hard disconnect
ZERO_CHUNK = 1 << 20  # WRITE_ZEROES is carried out as writes of this size
MERGE_MAX = 4 << 20  # a run of contiguous reads or writes is one device call up to this
MAX_QUEUED = 128  # weight (see _weight) of one connection's requests read ahead of their
WEIGHT_BYTES = 1 << 20  # execution: 128 small requests, or about 128 MiB of data
REUSED_BUFFER_MAX = 4 << 20  # read buffers up to this size are kept per worker thread
DEFAULT_WORKERS = 2  # device calls at once per connection: more only add GIL contention
SEND_BUFFER = 8 << 20  # per connection: several whole replies fit without a sender thread
SO_SNDBUFFORCE = 32
ASYNC_MAX = 4 << 20  # larger reads and writes go through the workers (one device call)


Reply = bytes | bytearray | memoryview
Submit = Callable[[int, memoryview, Callable[[BaseException | None], None]], bool]


class NbdError(Exception):
    """A request fails with this NBD error value; the session goes on."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.code = code


class NbdExport:
    """What the server offers: one device under a name (the empty name also selects it).

    It is read-only when asked to be or when the device says so (an AoE disk learns it
    when the target first refuses a write; later sessions then see the flag).
    """

    def __init__(self, dev: BlockDevice, name: str = "", description: str = "",
                 read_only: bool = False, multi_conn: bool = True) -> None:
        self.dev = dev
        self.name = name
        self.description = description
        self.force_read_only = read_only
        self.multi_conn = multi_conn
        self.zeroes = bytes(ZERO_CHUNK)

    @property
    def read_only(self) -> bool:
        return self.force_read_only or self.dev.read_only

    @property
    def size(self) -> int:
        return self.dev.size

    @property
    def min_block(self) -> int:
        return 512 if self.size % 512 == 0 else 1

    def matches(self, name: str) -> bool:
        return name in ("", self.name)

    def flags(self, structured: bool = False) -> int:
        f = p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA | p.TF_SEND_WRITE_ZEROES
        if self.read_only:
            f |= p.TF_READ_ONLY
        if self.multi_conn:
            f |= p.TF_CAN_MULTI_CONN
        if structured:
            f |= p.TF_SEND_DF
        return f


class WorkQueue:
    """A connection's worker threads. Requests wait in arrival order; a worker takes the
    oldest and, when it is a read or a write, the later requests that continue it on the
    disk (up to MERGE_MAX bytes), so that a client's run of small requests costs one
    device call. (Connections could share one; each has its own so that a client that
    stops reading its replies only ever blocks its own workers.)"""

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self._items: deque[tuple[Connection, p.Request, Payload]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._work, name="nbd-worker", daemon=True)
                         for _ in range(workers)]
        for t in self._threads:
            t.start()

    def put(self, conn: Connection, req: p.Request, payload: Payload) -> None:
        with self._ready:
            self._items.append((conn, req, payload))
            self._ready.notify()

    def close(self) -> None:
        """Let the workers finish what is queued, then stop them."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for t in self._threads:
            t.join()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closing:
                    self._ready.wait()
                if not self._items:
                    return
                conn, batch = self._take()
            conn.serve_batch(batch)

    def _take(self) -> tuple[Connection, list[tuple[p.Request, Payload]]]:
        """The oldest request and its continuation (called with the lock held)."""
        conn, first, payload = self._items.popleft()
        batch = [(first, payload)]
        kind = conn.merge_kind(first)
        if kind is None:
            return conn, batch
        end, total = first.offset + first.length, first.length
        i = 0
        while i < len(self._items) and total < MERGE_MAX:
            other, req, data = self._items[i]
            if other is conn and req.offset == end and conn.merge_kind(req) == kind \
                    and total + req.length <= MERGE_MAX:
                del self._items[i]
                batch.append((req, data))
                end += req.length
                total += req.length
            else:
                i += 1
        return conn, batch


class Connection:
    """One client session: handshake (optional) then transmission until DISC or EOF."""

    def __init__(self, sock: socket.socket, export: NbdExport, *, handshake: bool = True,
                 workers: int = DEFAULT_WORKERS, pool: WorkQueue | None = None) -> None:
        self.sock = sock
        _widen_send_buffer(sock)
        self.export = export
        self.handshake = handshake
        self.structured = False
        self._inbox = Inbox(sock, MAX_PAYLOAD)
        self._send_lock = threading.Condition()
        self._spill: deque[list[Reply]] = deque()  # replies the socket did not take
        self._sender: threading.Thread | None = None
        self._closed_send = False
        self._spilled = self._drained = 0  # replies handed to the sender thread, and sent
        self._workers = workers
        self._pool = pool  # shared with the server's other connections, or our own
        self._pending = 0  # weight of the requests taken in and not yet answered
        self._idle_lock = threading.Lock()  # guards _pending and _waiting; taken
        self._idle = threading.Condition(self._idle_lock)  # alone where nobody waits
        self._waiting = False  # the reader waits for _pending to go down
        self._dev = export.dev
        self._local = threading.local()
        # Replies completed on the device's I/O thread, sent together at the end of its
        # round of completions (when the device offers such a hook): one sendmsg for many.
        self._outbox: list[Reply] = []
        self._outbox_weight = 0
        self._unhook: Callable[[Callable[[], None]], None] | None = None  # set while hooked
        # Requests read on the device's I/O thread (see _read_on_device_thread).
        self._queue: WorkQueue | None = None
        self._paused = False  # too many requests unanswered: the I/O thread stopped reading
        self._ended = threading.Event()  # it stopped for good: the client is done, or...
        self._device_ended = False  # ...the device's session ended: this thread reads on
        self._end_error: BaseException | None = None  # why the client is done, if it failed
        self._watch: Callable[[int, Callable[[], None], Callable[[], None]], None] = _no_watch
        self._unwatch: Callable[[int], None] = _no_unwatch
        # Devices that complete requests on their own thread (see _submit), looked up once.
        self._submit_read: Submit | None = getattr(self._dev, "submit_read", None)
        self._submit_write: Submit | None = getattr(self._dev, "submit_write", None)

    # -- I/O helpers -----------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        return self._inbox.read_exact(n)

    def _send(self, *parts: Reply, wait: bool = True) -> None:
        """Send one reply whole. Without ``wait`` the caller never blocks: what the socket
        does not take at once waits, in order, for this connection's sender thread (replies
        sent from the AoE session's I/O thread must not wait for a slow client). With
        ``wait`` the call returns once the reply has left, so its buffers may be reused."""
        views: list[Reply] = list(parts)
        with self._send_lock:
            if self._closed_send:
                raise BrokenPipeError("connection closed")
            if not self._spill:
                try:
                    views = _send_some(self.sock, views, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
                if not views:
                    return
            self._spill.append(views)
            self._spilled += 1
            ticket = self._spilled
            if self._sender is None:
                self._sender = threading.Thread(target=self._drain_spill, daemon=True,
                                                name="nbd-sender")
                self._sender.start()
            self._send_lock.notify_all()
            while wait and self._drained < ticket:
                if self._closed_send:
                    raise BrokenPipeError("connection closed")
                self._send_lock.wait()

    def _drain_spill(self) -> None:
        """Send what :meth:`_send` could not, blocking as long as the client needs."""
        while True:
            with self._send_lock:
                while not self._spill and not self._closed_send:
                    self._send_lock.wait()
                if not self._spill:
                    return
                views = self._spill[0]
            try:
                while views:
                    views = _send_some(self.sock, views, 0)
            except OSError as exc:
                log.debug("reply failed: %s", exc)
                with self._send_lock:
                    self._closed_send = True
                    self._spill.clear()
                    self._send_lock.notify_all()
                _shutdown(self.sock)
                return
            with self._send_lock:
                self._spill.popleft()
                self._drained += 1
                self._send_lock.notify_all()

    def _flush_replies(self) -> None:
        """Wait until every queued reply left, then stop the sender thread."""
        with self._send_lock:
            while self._spill and not self._closed_send:
                self._send_lock.wait()
            self._closed_send = True
            self._send_lock.notify_all()
        if self._sender is not None and self._sender is not threading.current_thread():
            self._sender.join()

    # -- session ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve the session to its end; never raises for client misbehaviour."""
        try:
            if self.handshake and not self._negotiate():
                return
            self._transmit()
        except (EOFError, ConnectionError) as exc:
            log.debug("connection ended: %s", exc)
        except p.ProtocolError as exc:
            log.warning("dropping client: %s", exc)
        except OSError as exc:
            log.debug("connection error: %s", exc)
        finally:
            self._flush_replies()
            _shutdown(self.sock)
            self.sock.close()

    def _negotiate(self) -> bool:
        """Option haggling; True once transmission starts, False if the session ends."""
        self._send(p.server_greeting())
        (client_flags,) = struct.unpack(">I", self._recv(4))
        if client_flags & ~p.KNOWN_CLIENT_FLAGS:
            raise p.ProtocolError(f"unknown client flags {client_flags:#x}")
        no_zeroes = bool(client_flags & p.FLAG_C_NO_ZEROES)
        while True:
            option, length = p.parse_option_header(self._recv(p.OPT_HEADER_LEN))
            if length > MAX_OPTION_DATA:
                raise p.ProtocolError(f"option {option} carries {length} bytes")
            data = self._recv(length)
            if option == p.OPT_EXPORT_NAME:
                if not self.export.matches(data.decode(errors="replace")):
                    return False  # the only way to refuse EXPORT_NAME
                self._send(p.export_name_reply(self.export.size, self._flags(), no_zeroes))
                return True
            if option == p.OPT_ABORT:
                self._send(p.option_reply(option, p.REP_ACK))
                return False
            if option in (p.OPT_INFO, p.OPT_GO):
                if self._info(option, data) and option == p.OPT_GO:
                    return True
            elif option == p.OPT_LIST:
                self._list(data)
            elif option == p.OPT_STRUCTURED_REPLY:
                if data:
                    self._reject(option, p.REP_ERR_INVALID, "no data expected")
                else:
                    self.structured = True
                    self._send(p.option_reply(option, p.REP_ACK))
            else:
                self._reject(option, p.REP_ERR_UNSUP, f"option {option} is not supported")

    def _flags(self) -> int:
        return self.export.flags(self.structured)

    def _reject(self, option: int, reply: int, message: str) -> None:
        self._send(p.option_reply(option, reply, message.encode()))

    def _list(self, data: bytes) -> None:
        if data:
            self._reject(p.OPT_LIST, p.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            return
        entry = p.server_entry(self.export.name, self.export.description)
        self._send(p.option_reply(p.OPT_LIST, p.REP_SERVER, entry),
                   p.option_reply(p.OPT_LIST, p.REP_ACK))

    def _info(self, option: int, data: bytes) -> bool:
        try:
            req = p.parse_info_request(data)
        except (ValueError, UnicodeDecodeError) as exc:
            self._reject(option, p.REP_ERR_INVALID, str(exc))
            return False
        if not self.export.matches(req.name):
            self._reject(option, p.REP_ERR_UNKNOWN, f"no export named {req.name!r}")
            return False
        ex = self.export
        replies = [p.info_export(ex.size, self._flags()),
                   p.info_block_size(ex.min_block, 4096, MAX_PAYLOAD)]
        if p.INFO_NAME in req.requests:
            replies.append(p.info_string(p.INFO_NAME, ex.name))
        if p.INFO_DESCRIPTION in req.requests and ex.description:
            replies.append(p.info_string(p.INFO_DESCRIPTION, ex.description))
        self._send(*(p.option_reply(option, p.REP_INFO, r) for r in replies),
                   p.option_reply(option, p.REP_ACK))
        return True

    # -- transmission ----------------------------------------------------------------

    def _transmit(self) -> None:
        """Serve requests until DISC or EOF. Plain aligned reads and writes go straight to
        a device that completes them itself (an AoE disk answers from its session's I/O
        thread, which then also reads the requests); the work queue's threads execute the
        rest (merging runs of contiguous reads or writes into one device call) and send
        the replies."""
        pool = self._queue = self._pool or WorkQueue(self._workers)
        add_hook = getattr(self._dev, "add_completion_hook", None)
        remove_hook = getattr(self._dev, "remove_completion_hook", None)
        if add_hook is not None and remove_hook is not None:
            add_hook(self._send_outbox)
            self._unhook = remove_hook
        try:
            if self._read_on_device_thread():
                return
            while True:  # this thread reads
                got = self._inbox.next_request(True)
                assert got is not None  # waits for a whole request
                req, payload = got
                if req.command == p.CMD_DISC:
                    log.debug("client disconnected (DISC)")
                    return
                with self._idle:
                    while self._pending >= MAX_QUEUED:
                        self._waiting = True
                        self._idle.wait()
                    self._pending += _weight(req)
                if not self._submit(req, payload):
                    pool.put(self, req, payload)
        finally:
            with self._idle:  # answer everything taken in before the socket closes
                while self._pending:
                    self._waiting = True
                    self._idle.wait()
            if self._unhook is not None:
                self._unhook(self._send_outbox)
                self._unhook = None
            if pool is not self._pool:
                pool.close()

    def _read_on_device_thread(self) -> bool:
        """Let the AoE session's I/O thread read this client's requests as they arrive,
        so that a request passes no thread on its way to the wire and back; wait here
        until the client is done (True, or its error raised). False when the device
        cannot, or when its session ended first: this thread then reads on."""
        watch = getattr(self._dev, "watch", None)
        unwatch = getattr(self._dev, "unwatch", None)
        if watch is None or unwatch is None or self._unhook is None:
            return False
        self._watch, self._unwatch = watch, unwatch
        try:
            self._watch_socket()
        except Exception:  # noqa: BLE001 - the session is closed: read here, answer errors
            return False
        self._ended.wait()
        if self._end_error is not None:
            raise self._end_error
        return not self._device_ended

    def _on_readable(self) -> None:
        """Take every whole request that has arrived (on the device's I/O thread, never
        waiting): hand each on, or stop reading while MAX_QUEUED (by weight) are
        unanswered."""
        inbox, idle_lock, queue = self._inbox, self._idle_lock, self._queue
        assert queue is not None
        try:
            while True:
                # Only this thread raises _pending: unlocked, it can only look too high.
                if self._pending >= MAX_QUEUED and self._pause():
                    break
                got = inbox.next_request(False)
                if got is None:
                    break
                req, payload = got
                if req.command == p.CMD_DISC:
                    log.debug("client disconnected (DISC)")
                    self._stop_reading(None)
                    break
                with idle_lock:
                    self._pending += _weight(req)
                if not self._submit(req, payload):
                    queue.put(self, req, payload)
        except (EOFError, OSError, p.ProtocolError) as exc:
            self._stop_reading(exc)
        self._send_outbox()  # replies to requests refused at once

    def _pause(self) -> bool:
        """Stop reading while MAX_QUEUED (by weight) is unanswered (True); _answered
        watches the socket again."""
        with self._idle:
            if self._pending < MAX_QUEUED:
                return False
            self._paused = True
            self._unwatch(self.sock.fileno())
            return True

    def _stop_reading(self, error: BaseException | None) -> None:
        """The client is done (DISC, EOF, garbage): wake the connection's thread."""
        self._unwatch(self.sock.fileno())
        self._end_error = error
        self._ended.set()

    def _on_device_end(self) -> None:
        """The device's session ended while reading for us: our thread takes over."""
        self._device_ended = True
        self._ended.set()

    def _read_again(self) -> None:
        """Requests were answered since reading paused: the I/O thread reads on (with
        _idle held)."""
        self._paused = False
        try:
            self._watch_socket()
        except Exception:  # noqa: BLE001 - the session ended meanwhile
            self._on_device_end()

    def _watch_socket(self) -> None:
        self._watch(self.sock.fileno(), self._on_readable, self._on_device_end)

    def _send_outbox(self) -> None:
        """Send the replies of one round of device completions at once (I/O thread)."""
        weight = self._outbox_weight
        if not weight:
            return
        parts, self._outbox, self._outbox_weight = self._outbox, [], 0
        self._send_replies(parts, weight)

    def _send_replies(self, parts: list[Reply], weight: int) -> None:
        """Send replies made of ``parts`` without waiting (their buffers are their own)
        and count their requests (``weight`` in all) answered, whatever the client did
        meanwhile."""
        try:
            self._send(*parts, wait=False)
        except OSError as err:  # the client went away: wake the reader
            log.debug("reply failed: %s", err)
            _shutdown(self.sock)
        finally:
            self._answered(weight)

    def _submit(self, req: p.Request, payload: Payload) -> bool:
        """Hand a plain aligned read or write straight to a device that completes requests
        on its own thread (an AoE disk): no worker waits, and the reply is sent from the
        completion. False leaves the request to the workers.

        The reply for success is made here, before the data comes."""
        kind = self.merge_kind(req)
        if kind is None or req.length > ASYNC_MAX or (kind == p.CMD_WRITE and req.flags):
            return False
        reading = kind == p.CMD_READ
        submit = self._submit_read if reading else self._submit_write
        if submit is None:
            return False
        data = memoryview(bytearray(req.length)) if reading else memoryview(payload)
        parts = self._reply_parts(req, 0, data if reading else b"")

        def done(exc: BaseException | None) -> None:
            reply = parts
            if exc is not None:
                log.warning("%s at %d+%d failed: %s", p.CMD_NAMES.get(kind),
                            req.offset, req.length, exc)
                reply = self._reply_parts(req, p.error_from_exception(exc), b"")
            if self._unhook is not None and not refused:
                self._outbox += reply  # sent, and counted, by _send_outbox
                self._outbox_weight += _weight(req)
                return
            self._send_replies(reply, _weight(req))

        refused = False  # a refusal is answered at once, not with a round's replies
        try:
            return bool(submit(req.offset, data, done))
        except Exception as exc:  # refused at once (closed, dead, read-only): answer it
            refused = True
            done(exc)
            return True

    def _answered(self, weight: int) -> None:
        with self._idle_lock:
            self._pending -= weight
            if self._paused and self._pending < MAX_QUEUED:
                self._read_again()
            if self._waiting:  # only then is a wake-up worth its cost
                self._waiting = False
                self._idle.notify_all()

    def queued(self) -> int:
        """Weight (see _weight) of this connection's requests taken in and not yet
        answered: their number when they are small."""
        return self._pending

    def serve_batch(self, batch: list[tuple[p.Request, Payload]]) -> None:
        """Execute and answer one request, or a run that continues on the disk."""
        try:
            if len(batch) == 1:
                self._serve(*batch[0])
            else:
                self._serve_merged(batch)
        except OSError as exc:  # the client went away: wake the reader
            log.debug("reply failed: %s", exc)
            _shutdown(self.sock)
        finally:
            self._answered(sum(_weight(req) for req, _ in batch))

    def merge_kind(self, req: p.Request) -> int | None:
        """READ or WRITE for a request that may share a device call, else None (it is
        then served alone, with its own checks and errors)."""
        if not 0 < req.length <= MERGE_MAX or req.offset + req.length > self.export.size:
            return None
        if req.command == p.CMD_READ and req.flags & ~p.CMD_FLAG_DF == 0:
            return p.CMD_READ if self.structured or not req.flags else None
        if req.command == p.CMD_WRITE and req.flags & ~p.CMD_FLAG_FUA == 0:
            return None if self.export.read_only else p.CMD_WRITE
        return None

    def _serve_merged(self, batch: list[tuple[p.Request, Payload]]) -> None:
        """One device call for a run of contiguous requests, then one reply each."""
        first = batch[0][0]
        total = sum(req.length for req, _ in batch)
        error = 0
        data: Reply = b""
        try:
            if first.command == p.CMD_READ:
                data = self._read(first.offset, total)
            else:
                self._dev.write(first.offset, b"".join(payload for _, payload in batch))
                if any(req.flags & p.CMD_FLAG_FUA for req, _ in batch):
                    self._dev.flush()
        except Exception as exc:  # every request of the run gets the error
            error = p.error_from_exception(exc)
            log.warning("%s at %d+%d failed: %s", p.CMD_NAMES.get(first.command),
                        first.offset, total, exc)
        view = memoryview(data)
        parts: list[Reply] = []  # all the replies of the run in one sendmsg
        for req, _ in batch:
            at = req.offset - first.offset
            parts += self._reply_parts(req, error, view[at : at + req.length] if data else b"")
        self._send(*parts)

    def _serve(self, req: p.Request, payload: Payload) -> None:
        error = 0
        data: Reply = b""
        try:
            data = self._execute(req, payload)
        except NbdError as exc:
            error = exc.code
            log.debug("%s failed: %s", p.CMD_NAMES.get(req.command, req.command), exc)
        except Exception as exc:  # a device failure must not end the session
            error = p.error_from_exception(exc)
            log.warning("%s at %d+%d failed: %s", p.CMD_NAMES.get(req.command),
                        req.offset, req.length, exc)
        self._reply(req, error, data)

    def _reply(self, req: p.Request, error: int, data: Reply, wait: bool = True) -> None:
        self._send(*self._reply_parts(req, error, data), wait=wait)

    def _reply_parts(self, req: p.Request, error: int, data: Reply) -> list[Reply]:
        """Header and data of the reply to `req` (structured for reads if negotiated)."""
        if self.structured and req.command == p.CMD_READ:
            if error:
                return [p.structured_error(req.cookie, error, os.strerror(error))]
            return [p.structured_data_header(req.cookie, req.offset, len(data)), data]
        return [p.simple_reply(req.cookie, error), data if not error else b""]

    def _read_buffer(self, n: int) -> memoryview:
        """This worker's reusable read buffer (valid until its reply has been sent)."""
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            buf = bytearray(max(n, 1 << 20))
            if len(buf) <= REUSED_BUFFER_MAX:
                self._local.buf = buf
        return memoryview(buf)[:n]

    def _read(self, offset: int, length: int) -> Reply:
        readinto = getattr(self._dev, "readinto", None)
        if readinto is None:
            return self._dev.read(offset, length)
        view = self._read_buffer(length)  # the device fills it: no copy, no allocation
        readinto(offset, view)
        return view

    def _execute(self, req: p.Request, payload: Payload) -> Reply:
        allowed = p.CMD_FLAG_FUA
        if req.command == p.CMD_WRITE_ZEROES:
            allowed |= p.CMD_FLAG_NO_HOLE
        elif req.command == p.CMD_READ and self.structured:
            allowed |= p.CMD_FLAG_DF  # we always send a single chunk anyway
        if req.flags & ~allowed:
            raise NbdError(p.EINVAL, f"flags {req.flags:#x} not valid here")
        dev, size = self._dev, self.export.size
        inside = req.offset + req.length <= size
        if req.command == p.CMD_READ:
            if not inside:
                raise NbdError(p.EINVAL, "read beyond the end")
            if req.length > MAX_PAYLOAD:
                raise NbdError(p.EINVAL, "read too large")
            if not req.length:
                return b""
            return self._read(req.offset, req.length)
        if req.command in (p.CMD_WRITE, p.CMD_WRITE_ZEROES):
            self._write(req, payload, inside)
            return b""
        if req.command == p.CMD_FLUSH:
            if not self.export.read_only:
                dev.flush()
            return b""
        raise NbdError(p.EINVAL, f"command {req.command} is not supported")

    def _write(self, req: p.Request, payload: Payload, inside: bool) -> None:
        """WRITE or WRITE_ZEROES, flushed before the reply when the client asked (FUA)."""
        if self.export.read_only:
            raise NbdError(p.EPERM, "the export is read-only")
        if not inside:
            raise NbdError(p.ENOSPC, "write beyond the end")
        if req.command == p.CMD_WRITE:
            if payload:
                self._dev.write(req.offset, payload)
        else:
            self._write_zeroes(req.offset, req.length)
        if req.flags & p.CMD_FLAG_FUA:
            self._dev.flush()

    def _write_zeroes(self, offset: int, length: int) -> None:
        zeroes = self.export.zeroes
        end = offset + length
        while offset < end:
            n = min(len(zeroes), end - offset)
            self._dev.write(offset, zeroes[:n] if n < len(zeroes) else zeroes)
            offset += n


class NbdServer:
    """Listens on a Unix socket path or a TCP address and serves every client in its own
    thread. Use as a context manager, then `start()` (background) or `serve_forever()`."""

    def __init__(
        self,
        dev: BlockDevice,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "",
        description: str = "",
        read_only: bool = False,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if (socket_path is None) == (port is None):
            raise ValueError("give exactly one of socket_path and port")
        self.export = NbdExport(dev, name=name, description=description, read_only=read_only)
        self.workers = workers
        self.socket_path = None if socket_path is None else os.path.abspath(socket_path)
        self._listener = self._listen(host, port)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[threading.Thread, socket.socket] = {}
        self._thread: threading.Thread | None = None

    def _listen(self, host: str, port: int | None) -> socket.socket:
        if self.socket_path is not None:
            _remove_stale_socket(self.socket_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.socket_path)
            except OSError:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
        sock.listen(16)
        return sock

    @property
    def address(self) -> Any:
        """The socket path, or the bound (host, port) (port 0 resolves to the real one)."""
        return self.socket_path or self._listener.getsockname()[:2]

    @property
    def uri(self) -> str:
        """An NBD URI for clients such as nbdinfo and nbdcopy."""
        if self.socket_path:
            return f"nbd+unix:///{self.export.name}?socket={self.socket_path}"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"nbd://{host}:{port}/{self.export.name}"

    def start(self) -> NbdServer:
        """Accept clients in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="nbd-accept",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Accept clients until close()."""
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._listener and not self._stopping.is_set():
                        self._accept()
        finally:
            sel.close()

    def _accept(self) -> None:
        try:
            conn, peer = self._listener.accept()
        except OSError:
            return
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("client connected: %s", peer or "unix")
        thread = threading.Thread(target=self._run_client, args=(conn,), daemon=True,
                                  name="nbd-conn")
        with self._lock:
            self._clients[thread] = conn
        thread.start()

    def _run_client(self, conn: socket.socket) -> None:
        try:
            Connection(conn, self.export, workers=self.workers).run()
        finally:
            with self._lock:
                self._clients.pop(threading.current_thread(), None)

    def close(self) -> None:
        """Stop accepting, end every session (in-flight requests finish first) and
        remove the socket file."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(10)
        self._listener.close()
        with self._lock:
            clients = list(self._clients.items())
        for _, conn in clients:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for thread, _ in clients:
            thread.join(30)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.socket_path is not None:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _weight(req: p.Request) -> int:
    """What a request counts against MAX_QUEUED until it is answered: one, and one more
    per WEIGHT_BYTES it moves, so that deep queues of small requests are read ahead while
    large ones are bounded by the memory they hold."""
    return 1 + req.length // WEIGHT_BYTES


def _no_watch(_fd: int, _ready: Callable[[], None], _end: Callable[[], None]) -> None:
    raise OSError("this device reads no client for us")


def _no_unwatch(_fd: int) -> None:
    pass


def _send_some(sock: socket.socket, parts: list[Reply], flags: int) -> list[Reply]:
    """One sendmsg of ``parts``; what is left of them (usually nothing)."""
    sent = sock.sendmsg(parts, [], flags)
    done, count = 0, len(parts)
    while done < count:
        size = len(parts[done])
        if sent < size:
            break
        sent -= size
        done += 1
    if done == count:
        return []
    rest = parts[done:]
    rest[0] = memoryview(rest[0])[sent:]
    return rest


def _widen_send_buffer(sock: socket.socket) -> None:
    """Room for a few large replies in the socket, so that replies sent without waiting
    rarely need the sender thread (root may exceed the system's wmem_max)."""
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
            return
        except OSError:
            continue


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _remove_stale_socket(path: str) -> None:
    """A leftover socket file from an earlier server is removed; anything else is kept."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens there any more
    else:
        raise FileExistsError(f"a server is already listening on {path}")
    finally:
        probe.close()


def serve_nbd(
    dev: BlockDevice,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    name: str = "",
    read_only: bool = False,
    workers: int = DEFAULT_WORKERS,
    ready: Callable[[NbdServer], None] | None = None,
    stop: threading.Event | None = None,
) -> int | None:
    """Export `dev` over NBD until SIGINT/SIGTERM (main thread) or until `stop` is set.

    `ready(server)` runs once the socket listens (the CLI prints the URI there). Returns
    the signal that ended it, if one did.
    """
    stop = stop or threading.Event()
    # The handlers first: a client (or a script) may signal as soon as the socket listens.
    with StopOnSignals(stop) as stopper, NbdServer(
            dev, socket_path=socket_path, host=host, port=port, name=name,
            read_only=read_only, workers=workers) as server:
        server.start()
        if ready is not None:
            ready(server)
        while not stop.wait(0.1):  # a signal is noticed at once
            pass
    return stopper.signum


class StopOnSignals:
    """In the main thread, make SIGINT and SIGTERM set an event instead of killing."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.saved: dict[int, Any] = {}
        self.signum: int | None = None  # the first signal that came

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._stop)
        return self

    def _stop(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        self.stop.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
