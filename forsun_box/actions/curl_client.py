"""An HTTP client driving libcurl's multi interface (pycurl) straight from an asyncio loop.

libcurl does the HTTP work in C (connection reuse, parsing, TLS, redirects, digest auth,
decompression); this module only wires its socket and timer callbacks to the event loop and
hands finished transfers to futures or callbacks. Each request costs a handful of ``setopt`` calls on a
recycled easy handle, so a request on a kept-alive connection costs a few tens of
microseconds of CPU instead of the hundreds of a general-purpose wrapper.

- :class:`CurlClient`: one per event loop; ``max_clients`` transfers run at once (more wait
  in order), and libcurl never holds more than ``max_clients`` connections.
- :class:`Request` / :class:`Response`: what goes in, what comes out.
- :class:`CurlError`: a transfer that got no HTTP answer (refused, time-out, TLS...).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pycurl

logger = logging.getLogger("forsun_box.actions")

#: bytes of an answer's body kept (the rest is read and dropped): enough for an error message
BODY_KEEP = 200
#: redirects followed, as the previous client did
MAX_REDIRECTS = 5
#: idle easy handles kept for reuse, at most
_MAX_FREE_HANDLES = 64
#: easy handles set up ahead for requests not sent yet, at most (~5 KB each); a request
#: prepared beyond this is set up when it is sent
MAX_PREPARED_HANDLES = 10_000
#: methods that carry a body by nature; curl sends them as a POST-style upload
_POST = "POST"
_HEAD = "HEAD"
_GET = "GET"

_AUTH = {"basic": pycurl.HTTPAUTH_BASIC, "digest": pycurl.HTTPAUTH_DIGEST}
_HTTP_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS


class CurlError(Exception):
    """A transfer ended without an HTTP answer; ``str()`` is libcurl's message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Request:
    """One HTTP request. ``headers`` are ``(name, value)`` pairs sent as given."""

    url: str
    method: str = _GET
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    user_agent: str = ""
    #: ``(username, password, mode)`` with mode ``basic`` or ``digest``
    auth: tuple[str, str, str] | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 120.0
    #: the ``HTTPHEADER`` lines, when built ahead (:func:`header_lines`)
    lines: list[bytes] | None = None


@dataclass(slots=True)
class Response:
    """The final answer (after redirects): status code and the body's first bytes."""

    code: int
    body: bytes


#: how a transfer ends: the answer, or the error (exactly one of them is None)
OnDone = Callable[["Response | None", "CurlError | None"], None]


class _Transfer:
    """A request in flight: who learns how it ended, and the answer body's first bytes.

    ``owns_slot``: the transfer gives its slot back when it ends (:meth:`CurlClient.submit`);
    otherwise the caller does (:meth:`CurlClient.fetch`)."""

    __slots__ = ("body", "on_done", "owns_slot")

    def __init__(self, on_done: OnDone, owns_slot: bool) -> None:
        self.on_done = on_done
        self.body = b""
        self.owns_slot = owns_slot

    def write(self, data: bytes) -> None:
        # libcurl hands the body over in pieces; keep the start, drop the rest
        if len(self.body) < BODY_KEEP:
            self.body += data[: BODY_KEEP - len(self.body)]


class _Queued:
    """A submitted request waiting for a slot (with its handle, when set up ahead)."""

    __slots__ = ("curl", "on_done", "request", "since")

    def __init__(
        self, request: Request, on_done: OnDone, since: float, curl: pycurl.Curl | None
    ) -> None:
        self.request = request
        self.on_done = on_done
        self.since = since
        self.curl = curl


def header_lines(request: Request) -> list[bytes]:
    """The ``HTTPHEADER`` lines of ``request``.

    An empty value is written ``Name;``: libcurl reads ``Name:`` as "remove this header".
    A body is sent without a Content-Type unless the caller gave one or the method is POST
    (libcurl's form type there, as before).
    """
    lines = [
        (f"{name}: {value}" if value else f"{name};").encode() for name, value in request.headers
    ]
    if request.body is not None:
        lower = {name.lower() for name, _ in request.headers}
        if request.method != _POST and "content-type" not in lower:
            lines.append(b"Content-Type:")
        if "expect" not in lower:
            lines.append(b"Expect:")  # no 100-continue round trip for large bodies
    return lines


def _eventfds() -> set[int]:
    """The open eventfds of this process (empty where /proc is not available)."""
    found: set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]":
                found.add(int(name))
        except (OSError, ValueError):
            continue  # closed meanwhile, or the listing's own descriptor
    return found


def _new_multi() -> tuple[pycurl.CurlMulti, frozenset[int]]:
    """A multi handle and the eventfds libcurl opened for it (open as long as it is)."""
    before = _eventfds()
    multi = pycurl.CurlMulti()
    return multi, frozenset(_eventfds() - before)


class CurlClient:
    """Runs libcurl transfers on ``loop``; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_clients: int) -> None:
        self.loop = loop
        self.max_clients = max(1, max_clients)
        self._multi, self._own_fds = _new_multi()
        # The multi's own eventfd is watched while transfers run and dropped after each
        # one; re-watching it costs two epoll_ctl calls per request. It lives as long as
        # the multi, so it stays watched ("parked") between transfers instead. (A transfer
        # socket may be closed by libcurl after its removal, so those are always dropped.)
        self._parked: set[int] = set()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        # the connection bound: libcurl closes an idle connection to make room for a new one
        self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, self.max_clients)
        self._multi.setopt(pycurl.M_MAXCONNECTS, self.max_clients)
        self._fds: dict[int, int] = {}  # fd -> events watched (1 read, 2 write)
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False  # _timer is a call at once, not yet run
        self._active: dict[pycurl.Curl, _Transfer] = {}
        self._free: list[pycurl.Curl] = []
        # waiting for a slot, in order: a fetch's future, or a submitted request
        self._waiting: deque[asyncio.Future[None] | _Queued] = deque()
        self._busy = 0  # slots taken: transfers running or about to
        self._prepared = 0  # handles set up ahead by prepare(), not yet sent
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    # -- requests -------------------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
        """Send ``request``; the final answer, whatever its code. Raises :class:`CurlError`."""
        if self._closed:
            raise CurlError(pycurl.E_FAILED_INIT, "the http client is closed")
        if self._busy >= self.max_clients or self._waiting:
            await self._wait_turn(request)  # returns holding a slot
        else:
            self._busy += 1
        curl = self._free.pop() if self._free else pycurl.Curl()
        try:
            try:
                self._setup(curl, request)
            except pycurl.error as e:
                self._recycle(curl)
                raise CurlError(e.args[0], str(e.args[-1])) from None
            future: asyncio.Future[Response] = self.loop.create_future()

            def on_done(response: Response | None, error: CurlError | None) -> None:
                if not future.done():
                    if error is not None:
                        future.set_exception(error)
                    else:
                        assert response is not None
                        future.set_result(response)

            transfer = _Transfer(on_done, False)
            curl.setopt(pycurl.WRITEFUNCTION, transfer.write)
            self._active[curl] = transfer
            self._multi.add_handle(curl)
            try:
                return await future
            finally:
                # still ours when cancelled while running (a finished handle may already
                # serve another request): stop the transfer, its connection is dropped
                if self._active.get(curl) is transfer:
                    del self._active[curl]
                    self._multi.remove_handle(curl)
                    self._recycle(curl)
        finally:
            self._release()

    def prepare(self, request: Request) -> pycurl.Curl | None:
        """An easy handle with every option of ``request`` set, for :meth:`submit` later;
        None when :data:`MAX_PREPARED_HANDLES` are prepared already. Give it back with
        :meth:`unprepare` if it is not sent. Raises :class:`CurlError` for an option
        libcurl refuses."""
        if self._prepared >= MAX_PREPARED_HANDLES or self._closed:
            return None
        curl = self._free.pop() if self._free else pycurl.Curl()
        try:
            self._setup(curl, request)
        except pycurl.error as e:
            self._recycle(curl)
            raise CurlError(e.args[0], str(e.args[-1])) from None
        self._prepared += 1
        return curl

    def unprepare(self, curl: pycurl.Curl) -> None:
        """A handle from :meth:`prepare` that will not be sent."""
        self._prepared -= 1
        self._recycle(curl)

    def submit(self, request: Request, on_done: OnDone, curl: pycurl.Curl | None = None) -> None:
        """Send ``request`` without a task: ``on_done(response, error)`` is called once,
        later, from the loop. ``curl``: its handle from :meth:`prepare` (this client's).
        Waits for a slot like :meth:`fetch` (at most the request's ``request_timeout``,
        checked when the slot comes). Raises :class:`CurlError` when the request cannot
        start now (closed client, an option libcurl refuses); then ``on_done`` is not
        called."""
        if curl is not None:
            self._prepared -= 1
        if self._closed:
            if curl is not None:
                curl.close()
            raise CurlError(pycurl.E_FAILED_INIT, "the http client is closed")
        if self._busy >= self.max_clients or self._waiting:
            self._waiting.append(_Queued(request, on_done, self.loop.time(), curl))
            return
        self._busy += 1
        try:
            self._launch(request, on_done, curl)
        except CurlError:
            self._release()
            raise

    def _launch(self, request: Request, on_done: OnDone, curl: pycurl.Curl | None) -> None:
        """Start a submitted request in the slot it holds. Raises :class:`CurlError`."""
        if curl is None:
            curl = self._free.pop() if self._free else pycurl.Curl()
            try:
                self._setup(curl, request)
            except pycurl.error as e:
                self._recycle(curl)
                raise CurlError(e.args[0], str(e.args[-1])) from None
        transfer = _Transfer(on_done, True)
        curl.setopt(pycurl.WRITEFUNCTION, transfer.write)
        self._active[curl] = transfer
        self._multi.add_handle(curl)

    def _grant(self, queued: _Queued) -> bool:
        """Hand a free slot to a submitted request; False when it did not keep it."""
        request = queued.request
        if self.loop.time() - queued.since > request.request_timeout:
            if queued.curl is not None:
                self._recycle(queued.curl)
            error = CurlError(
                pycurl.E_OPERATION_TIMEDOUT,
                f"timed out waiting for a free connection (http_max_clients {self.max_clients})",
            )
        else:
            try:
                self._launch(request, queued.on_done, queued.curl)
                return True
            except CurlError as e:
                error = e
        self.loop.call_soon(queued.on_done, None, error)
        return False

    async def _wait_turn(self, request: Request) -> None:
        """Wait for a transfer slot, at most the request's time-out."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, request.request_timeout)
        except BaseException as e:
            if waiter.done() and not waiter.cancelled() and not self._closed:
                self._release()  # granted just as we gave up: hand the slot on
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            if isinstance(e, TimeoutError):
                raise CurlError(
                    pycurl.E_OPERATION_TIMEDOUT,
                    "timed out waiting for a free connection "
                    f"(http_max_clients {self.max_clients})",
                ) from None
            raise
        if self._closed:
            raise CurlError(pycurl.E_FAILED_INIT, "the http client is closed")

    def _release(self) -> None:
        """Give up a slot: to the oldest waiter if any, else back to the pool."""
        if self._closed:
            return
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if type(waiter) is _Queued:
                if self._grant(waiter):
                    return  # the slot passes on, _busy unchanged
            elif not waiter.done():  # type: ignore[union-attr]
                waiter.set_result(None)  # type: ignore[union-attr]
                return
        self._busy -= 1

    def _setup(self, curl: pycurl.Curl, request: Request) -> None:
        """Set every option of ``request`` on a reset handle."""
        setopt = curl.setopt
        # bytes: libcurl takes UTF-8 where pycurl would refuse a non-ASCII str
        setopt(pycurl.URL, request.url.encode())
        setopt(pycurl.NOSIGNAL, 1)
        setopt(pycurl.PROTOCOLS, _HTTP_PROTOCOLS)
        setopt(pycurl.REDIR_PROTOCOLS, _HTTP_PROTOCOLS)
        setopt(pycurl.FOLLOWLOCATION, 1)
        setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
        setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(request.connect_timeout * 1000)))
        setopt(pycurl.TIMEOUT_MS, max(1, int(request.request_timeout * 1000)))
        setopt(pycurl.ACCEPT_ENCODING, "gzip,deflate")
        if request.user_agent:
            setopt(pycurl.USERAGENT, request.user_agent.encode())
        lines = request.lines
        setopt(pycurl.HTTPHEADER, header_lines(request) if lines is None else lines)
        method, body = request.method, request.body
        if method == _HEAD:
            setopt(pycurl.NOBODY, 1)
        elif body is not None:
            setopt(pycurl.POSTFIELDSIZE, len(body))
            setopt(pycurl.COPYPOSTFIELDS, body)
            if method != _POST:
                setopt(pycurl.CUSTOMREQUEST, method)
        elif method != _GET:
            setopt(pycurl.CUSTOMREQUEST, method)
        if request.auth is not None:
            username, password, mode = request.auth
            setopt(pycurl.HTTPAUTH, _AUTH[mode])
            setopt(pycurl.USERNAME, username.encode())
            setopt(pycurl.PASSWORD, password.encode())

    def _recycle(self, curl: pycurl.Curl) -> None:
        if self._closed or len(self._free) >= _MAX_FREE_HANDLES:
            curl.close()
            return
        curl.reset()  # drops the options and the Python callbacks they hold
        self._free.append(curl)

    # -- libcurl <-> event loop -----------------------------------------------------------

    def _on_socket(self, what: int, fd: int, multi: Any, socketp: Any) -> None:
        """libcurl's socket callback: watch ``fd`` for what it asks."""
        if self._closed:
            return  # close() has unwatched everything
        loop = self.loop
        old = self._fds.get(fd, 0)
        if fd in self._own_fds:
            if what == pycurl.POLL_REMOVE and old == 1:
                self._parked.add(fd)
                return
            self._parked.discard(fd)
        if what == pycurl.POLL_REMOVE:
            new = 0
        elif what == pycurl.POLL_IN:
            new = 1
        elif what == pycurl.POLL_OUT:
            new = 2
        else:  # POLL_INOUT
            new = 3
        if old & 1 and not new & 1:
            loop.remove_reader(fd)
        if old & 2 and not new & 2:
            loop.remove_writer(fd)
        if new & 1 and not old & 1:
            loop.add_reader(fd, self._on_event, fd, pycurl.CSELECT_IN)
        if new & 2 and not old & 2:
            loop.add_writer(fd, self._on_event, fd, pycurl.CSELECT_OUT)
        if new:
            self._fds[fd] = new
        else:
            self._fds.pop(fd, None)

    def _on_timer(self, timeout_ms: int) -> None:
        """libcurl's timer callback: call it back after ``timeout_ms`` (-1: never)."""
        if timeout_ms == 0 and self._soon:
            return  # a call at once is already on its way (libcurl asks per added transfer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._soon = False
        if timeout_ms == 0:
            self._soon = True
            self._timer = self.loop.call_soon(self._on_due)
        elif timeout_ms > 0:
            self._timer = self.loop.call_later(timeout_ms / 1000, self._on_due)

    def _on_due(self) -> None:
        self._timer = None
        self._soon = False
        self._on_event(pycurl.SOCKET_TIMEOUT, 0)

    def _on_event(self, fd: int, events: int) -> None:
        """A watched socket is ready, or the timer is due: let libcurl work, then reap."""
        if self._closed:
            return
        if fd in self._parked:
            # ready while libcurl does not want it: stop watching until it asks again
            self._parked.discard(fd)
            self._fds.pop(fd, None)
            self.loop.remove_reader(fd)
            return
        # (Transfers added while reaping go out when libcurl's timer, due at once,
        # runs: one call for all those added in this turn of the loop. Each call lets
        # go of the interpreter lock, and getting it back can mean waiting for the
        # store's thread: fewer calls, fewer waits.)
        try:
            self._multi.socket_action(fd, events)
        except pycurl.error as e:  # a multi-level failure; transfers report their own
            logger.warning("http client: %s", e)
        self._reap()

    def _reap(self) -> None:
        """Resolve the futures of finished transfers."""
        multi = self._multi
        while True:
            queued, ok, failed = multi.info_read()
            for curl in ok:
                self._finish(curl, None)
            for curl, errno, message in failed:
                self._finish(curl, CurlError(errno, message))
            if not queued:
                return

    def _finish(self, curl: pycurl.Curl, error: CurlError | None) -> None:
        transfer = self._active.pop(curl, None)
        code = curl.getinfo(pycurl.RESPONSE_CODE) if error is None else 0
        self._multi.remove_handle(curl)
        self._recycle(curl)
        if transfer is None:
            return
        if transfer.owns_slot:
            self._release()
        if error is not None:
            transfer.on_done(None, error)
        else:
            transfer.on_done(Response(code, transfer.body), None)

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every transfer (their callers get :class:`CurlError`) and free libcurl."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        closed = CurlError(pycurl.E_FAILED_INIT, "the http client is closed")
        for waiter in self._waiting:
            if type(waiter) is _Queued:
                if waiter.curl is not None:
                    waiter.curl.close()
                self.loop.call_soon(waiter.on_done, None, closed)
            elif not waiter.done():  # type: ignore[union-attr]
                waiter.set_result(None)  # type: ignore[union-attr]  # it sees _closed, raises
        self._waiting.clear()
        # unwatch the sockets while they are still open, then let libcurl close them
        fds, self._fds = self._fds, {}
        self._parked.clear()
        if not self.loop.is_closed():
            for fd, events in fds.items():
                if events & 1:
                    self.loop.remove_reader(fd)
                if events & 2:
                    self.loop.remove_writer(fd)
        active, self._active = self._active, {}
        for curl, transfer in active.items():
            self._multi.remove_handle(curl)
            curl.close()
            transfer.on_done(None, closed)
        for curl in self._free:
            curl.close()
        self._free.clear()
        self._multi.close()
