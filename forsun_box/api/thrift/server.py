"""forsun's Thrift API (FORSUN_COMPAT §3) served on the asyncio event loop.

Plain unframed binary protocol, as thrift's ``TSocket`` +
``TBufferedTransport`` + ``TBinaryProtocol`` speak it. Each connection is an
:class:`asyncio.Protocol` (:class:`_Connection`): received bytes are
buffered until a whole message decodes (see :mod:`forsun_box.thrift.codec`),
the matching :class:`ForsunService` coroutine runs, and its reply is written
before the next buffered message is looked at, so replies keep the order of
the calls. A slow, idle or half-open client therefore only ever holds its
own connection; garbage, a message over the size bound, or a message left
unfinished for ``message_timeout_s`` closes that connection alone. A client
that doesn't read its answers stops being read (back-pressure from the
transport's write buffer), and one that sends calls faster than they are
answered stops being read once a chunk's worth is waiting.

The methods themselves are :mod:`forsun_box.api.thrift.methods`, the
struct mapping :mod:`forsun_box.api.thrift.structs`; this module is the
protocol: connections, dispatch, answers and errors, and who may connect
(the peers of ``thrift_allow``, the connection cap).

Errors: a :class:`~forsun_box.errors.ForsunBoxError` becomes
``ForsunPlanError(code, message)`` for the methods that declare it; the
others (``getTime``...) answer a ``TApplicationException`` carrying the
code in its message. Unexpected errors are logged with their stack and
answered as code 1001.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from thrift.Thrift import TApplicationException

from forsun_box import errors
from forsun_box.api.security import PeerFilter
from forsun_box.api.service import ForsunService
from forsun_box.api.thrift.methods import ForsunMethods, Method
from forsun_box.stats import Stats
from forsun_box.thrift import codec
from forsun_box.thrift.forsun.ttypes import ForsunPlanError

log = logging.getLogger("forsun_box.thrift")
# refused peers are logged where the other access decisions are
access_log = logging.getLogger("forsun_box.access")

READ_CHUNK = 256 * 1024


class ThriftServer:
    """The Thrift API of one :class:`ForsunService` (start with :meth:`start`)."""

    def __init__(
        self,
        service: ForsunService,
        stats: Stats | None = None,
        limits: codec.Limits | None = None,
        message_timeout_s: float = 60.0,
        peers: PeerFilter | None = None,
        max_connections: int = 0,
    ) -> None:
        self.service = service
        # who may connect: the peers ``peers`` admits (every one without it), at
        # most ``max_connections`` at once (0: no limit); one refused is closed
        self.peers = peers
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused = 0
        self.stats = stats
        self.limits = limits or codec.Limits(
            max_message_bytes=16 << 20, max_string_bytes=16 << 20, max_container_items=65536
        )
        self.message_timeout_s = message_timeout_s
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: set[_Connection] = set()
        # method name -> (args class, result class, handler, declares ForsunPlanError)
        self._methods: dict[str, Method] = ForsunMethods(service).table()
        codec.known_names(self._methods)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port``; returns the bound port. Raises OSError."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection (requests in progress are cut)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for conn in list(self._connections):
            conn.close()
            if conn.work is not None:
                tasks.append(conn.work)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ connections

    def _incr(self, name: str, n: int = 1) -> None:
        if self.stats is not None:
            self.stats.incr(name, n)

    def _refusal(self, host: str) -> str:
        """Why a connection from ``host`` is refused now, or "" when it is admitted."""
        if self.peers is not None and not self.peers.admits(host):
            return "not loopback nor in thrift_allow"
        if self.max_connections and self.open_connections >= self.max_connections:
            return f"{self.open_connections} connections open (the limit)"
        return ""

    async def _serve(self, conn: _Connection) -> None:
        """One connection's life, from admission to close."""
        host = str(conn.peer[0]) if conn.peer else ""
        refusal = self._refusal(host)
        if refusal:
            self.refused += 1
            access_log.warning("thrift connection from %s refused: %s", host, refusal)
            conn.close()
            return
        self.open_connections += 1
        self._connections.add(conn)
        self._incr("connecting_count")
        self._incr("connected_count")
        try:
            conn.admit()
            await conn.closed
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection's surprise reach the loop
            log.exception("thrift connection from %s failed", conn.peer)
        finally:
            self.open_connections -= 1
            self._incr("connecting_count", -1)
            self._connections.discard(conn)
            conn.close()

    def _unknown_method(self, header: codec.Header) -> bytes | None:
        self._incr("requested_count")
        self._incr("requested_error_count")
        if header.mtype == codec.ONEWAY:
            return None
        exc = TApplicationException(
            TApplicationException.UNKNOWN_METHOD, f"unknown method {header.name}"
        )
        return codec.encode_message(header.name, codec.EXCEPTION, header.seqid, exc)

    async def _call(self, header: codec.Header, entry: Method, args: Any) -> bytes | None:
        stats = self.stats
        if stats is not None:
            stats.incr("requesting_count")
        try:
            success = await entry[2](args)
        except Exception as e:
            # (stats first, as for a success: the error answer is built after)
            if stats is not None:
                stats.incr("requesting_count", -1)
                stats.incr("requested_count")
                stats.incr("requested_error_count")
            if header.mtype == codec.ONEWAY:
                if not isinstance(e, errors.ForsunBoxError):
                    log.exception("thrift: unexpected error in %s", header.name)
                return None
            return self._error_reply(header, entry, e)
        except BaseException:  # cancelled: counted as answered, as any call that ended
            if stats is not None:
                stats.incr("requesting_count", -1)
                stats.incr("requested_count")
            raise
        if stats is not None:
            stats.incr("requesting_count", -1)
            stats.incr("requested_count")
        if header.mtype == codec.ONEWAY:
            return None
        try:
            return codec.encode_reply(header.name, header.seqid, entry[1], success)
        except Exception as e:  # a value the IDL can't carry: say so, keep the connection
            return self._encode_failed(header, e)

    def _error_reply(self, header: codec.Header, entry: Method, e: Exception) -> bytes:
        """The answer to a call whose handler raised ``e``."""
        declares = entry[3]
        if isinstance(e, errors.ForsunBoxError):
            code, message = e.code, e.message
        else:
            log.exception("thrift: unexpected error in %s", header.name, exc_info=e)
            code, message = errors.UNKNOWN, f"unknown error: {e.__class__.__name__}"
        body: Any
        if declares:
            body = entry[1]()
            body.err = ForsunPlanError(code=code, message=message)
            mtype = codec.REPLY
        else:
            body = TApplicationException(TApplicationException.INTERNAL_ERROR, f"{code}: {message}")
            mtype = codec.EXCEPTION
        try:
            return codec.encode_message(header.name, mtype, header.seqid, body)
        except Exception as exc:
            return self._encode_failed(header, exc)

    def _encode_failed(self, header: codec.Header, e: Exception) -> bytes:
        log.exception("thrift: cannot encode the answer to %s", header.name, exc_info=e)
        exc = TApplicationException(
            TApplicationException.INTERNAL_ERROR, f"{errors.UNKNOWN}: {e.__class__.__name__}"
        )
        return codec.encode_message(header.name, codec.EXCEPTION, header.seqid, exc)


class _Connection(asyncio.Protocol):
    """One client connection: whole messages are decoded and answered in order.

    At most one call runs at a time (``work``, a task that answers every
    whole message buffered meanwhile before it ends), so replies keep the
    order of the calls without a task waiting on every idle connection.
    """

    def __init__(self, server: ThriftServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.work: asyncio.Task[None] | None = None
        self._buf = b""
        self._pos = 0  # where the first unanswered message starts in _buf
        self._admitted = False
        self._eof = False
        self._read_paused = False
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports don't derive from asyncio.Transport, but behave as one)
        self.transport = transport  # type: ignore[assignment]
        codec.set_no_delay(transport)
        self.peer = transport.get_extra_info("peername")
        server = self.server
        task = asyncio.get_running_loop().create_task(server._serve(self))
        server._tasks.add(task)
        task.add_done_callback(server._tasks.discard)

    def data_received(self, data: bytes) -> None:
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        elif self._buf:
            self._buf += data
        else:
            self._buf = data
        if self.work is None and self._admitted:
            self._start()
        elif len(self._buf) > READ_CHUNK and not self._read_paused:
            # A call is running (or the peer not yet admitted): what follows waits.
            self._pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        # Answer the calls already received before closing (a half-sent message
        # never completes): keep the transport open while some are pending.
        return self.work is not None or (self._write_paused and self._pos < len(self._buf))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._buf = b""
        self._pos = 0
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # The peer isn't reading its answers: stop reading its calls.
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.work is None and self._admitted:
            self._start()
        self._maybe_resume_reading()

    def close(self) -> None:
        """Close the connection (answers already written are still sent)."""
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def admit(self) -> None:
        """Start answering (called once the server accepted the peer)."""
        self._admitted = True
        self._maybe_resume_reading()
        if self.work is None:
            self._start()

    # ----------------------------------------------------------- messages

    def _start(self) -> None:
        """Begin answering the buffered messages, if a whole one is there."""
        call = self._next()
        if call is not None:
            self.work = asyncio.get_running_loop().create_task(self._answer(*call))
        elif self._eof:
            self.close()

    async def _answer(self, header: codec.Header, entry: Any, args: Any) -> None:
        """Run calls one after another while whole messages are buffered."""
        server = self.server
        transport = self.transport
        assert transport is not None
        try:
            while True:
                reply = await server._call(header, entry, args)
                if reply is not None and not transport.is_closing():
                    transport.write(reply)
                call = self._next()
                if call is None:
                    break
                header, entry, args = call
        finally:
            self.work = None
        if self._eof:
            self.close()
        else:
            self._maybe_resume_reading()

    def _next(self) -> tuple[codec.Header, Any, Any] | None:
        """The next whole buffered call, answering unknown methods on the way.

        None when no whole message is buffered, when writing is paused, or
        when the connection was closed for bad input.
        """
        server = self.server
        limits = server.limits
        transport = self.transport
        assert transport is not None
        while True:
            buf, pos = self._buf, self._pos
            if pos >= len(buf) or self._write_paused or transport.is_closing():
                if pos and pos >= len(buf):
                    self._buf = b""
                    self._pos = 0
                    self._cancel_timer()
                return None
            try:
                header = codec.read_header(buf, limits, pos)
                entry = server._methods.get(header.name)
                if entry is None:
                    _, end = codec.message_length(buf, limits, pos)
                else:
                    args, end = codec.decode_body(buf, header.body_start, entry[0], limits)
                    if end - pos > limits.max_message_bytes:
                        raise codec.ProtocolError("message too large")
            except codec.NeedMore:
                if len(buf) - pos > limits.max_message_bytes:
                    log.warning("thrift: message from %s over the size bound; closing", self.peer)
                    self.close()
                    return None
                if self._timer is None:
                    # A message has begun: it must complete within the time-out.
                    self._timer = asyncio.get_running_loop().call_later(
                        server.message_timeout_s, self._expire
                    )
                return None
            except codec.ProtocolError as e:
                log.warning("thrift: bad input from %s (%s); closing", self.peer, e)
                self.close()
                return None
            if self._timer is not None:
                self._cancel_timer()
            if end >= len(buf):
                self._buf = b""
                self._pos = 0
            else:
                self._pos = end
            if entry is not None:
                return header, entry, args
            reply = server._unknown_method(header)
            if reply is not None:
                transport.write(reply)

    def _expire(self) -> None:
        self._timer = None
        log.warning(
            "thrift: message from %s unfinished for %ss; closing",
            self.peer,
            self.server.message_timeout_s,
        )
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        # Read on while no call runs: a message bigger than a chunk must arrive
        # whole (or exceed the size bound) to be answered.
        if (
            self._read_paused
            and not self._write_paused
            and self._admitted
            and self.work is None
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._read_paused = False
            self.transport.resume_reading()
