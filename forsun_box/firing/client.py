"""The service's side of the firing process (:mod:`forsun_box.firing.worker`).

:class:`FiringProcess` starts the process, sends it requests and commands (batched: one
write for every few dozen messages, or one per turn of the loop) and hands their ends to
callbacks on the event loop. :func:`shared` is the running loop's one process, which the
http and shell actions use; it is started on first use and rebuilt when its limits
change (``http_max_clients``, the http and shell concurrency) or the process died.

The process bounds how many requests and commands run at once: at most
``http_max_clients`` connections, at most the http action's concurrency of requests and
the shell action's of commands. Starts beyond that wait there, in order, not here: a
burst's starts all go out at once.

If the process dies, every request and command it had started ends with an error (the
retry policy applies) and the next use starts a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pycurl

from forsun_box.firing import wire
from forsun_box.firing.curl import CurlError, Request, Response, to_wire
from forsun_box.turns import Turn

if TYPE_CHECKING:
    from forsun_box.actions.base import ActionSettings

logger = logging.getLogger("forsun_box.actions")

#: messages gathered before they are written at once (else at the end of the loop's turn)
FLUSH_AT = 32
#: socket buffer asked for on both ends, bytes
_SOCKET_BUFFER = 4 << 20
#: bytes of ends read per turn of the loop (~1,000 ends; they are handed on a turn's
#: worth at a time: :mod:`forsun_box.turns`)
READ_CHUNK = 32 << 10
#: the frozen executable's argument that makes it the firing process
FROZEN_FLAG = "--firing-process"

#: how a request ends: the answer, or the error (exactly one of them is None)
OnDone = Callable[[Response | None, CurlError | None], None]
#: how a command ends: (exit status, the end of its output, state: wire.EXITED...)
OnExit = Callable[[int, str, int], None]
#: when what an arm started started and ended (unix ms)
WentOut = Callable[[int, int], None]


def _command(fd: int, limits: Limits) -> list[str]:
    numbers = [str(fd), *(str(n) for n in limits)]
    if getattr(sys, "frozen", False):
        return [sys.executable, FROZEN_FLAG, *numbers]
    # the package's own directory first: it is importable even where only the service's
    # sys.path knew it (the environment is left as it is: commands inherit it)
    home = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {home!r}); "
        "from forsun_box.firing.worker import main; sys.exit(main())"
    )
    return [sys.executable, "-c", code, *numbers]


#: connections, requests and commands running at once, at most
Limits = tuple[int, int, int]


def limits_of(settings: ActionSettings) -> Limits:
    """The limits ``settings`` give a firing process."""
    max_clients = max(1, settings.http_max_clients)
    return (
        max_clients,
        min(max_clients, settings.concurrency_for("http")),
        settings.concurrency_for("shell"),
    )


class FiringProcess:
    """One firing process and what it was asked to do; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self.loop = loop
        self.limits = limits
        self.max_clients = limits[0]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        try:
            self._process = subprocess.Popen(
                _command(theirs.fileno(), limits),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._fd = ours.fileno()
        self._ids = itertools.count(1)
        #: started ids -> who learns their end
        self._waiting: dict[int, Callable[[tuple[Any, ...]], None]] = {}
        self._messages: list[tuple[Any, ...]] = []
        self._flush_soon = False
        self._unsent = bytearray()
        self._inbox = bytearray()
        #: ends read, not yet handed to their callbacks
        self._ends: deque[tuple[Any, ...]] = deque()
        #: armed ids not started here yet (the process starts them at their instant)
        self._armed: set[int] = set()
        #: ... of which the end came before they were started here
        self._early: dict[int, tuple[Any, ...]] = {}
        #: ids disarmed, waiting for the process's answer
        self._disarming: dict[int, asyncio.Future[bool]] = {}
        self._reporting = False
        #: how many times the process said that more of what arms started ended (their
        #: ends held there, see :data:`wire.PROGRESS`)
        self.progress = 0
        self._environment: dict[str, str] | None = None
        self._environment_read = False
        self._closed = False
        self._why = "the http client is closed"
        loop.add_reader(self._fd, self._receive)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran or the process died."""
        return self._closed

    @property
    def pid(self) -> int:
        return self._process.pid

    # -- http -------------------------------------------------------------------------------

    def prepare(self, request: Request) -> int:
        """Have ``request`` set up ahead; the id to :meth:`submit` it with later (or to
        :meth:`unprepare`)."""
        id_ = next(self._ids)
        self._send((wire.PREPARE_HTTP, id_, to_wire(request)))
        return id_

    def unprepare(self, id_: int) -> None:
        """A request from :meth:`prepare` that will not be sent."""
        self._armed.discard(id_)
        if self._early.pop(id_, None) is not None:
            logger.warning("a firing that was dropped had gone out at its instant already")
        if not self._closed:
            self._send((wire.DROP, id_))

    # -- armed: started by the process at their instant ------------------------------------

    def arm(self, id_: int, at_ms: int) -> None:
        """Have the process start the request or command ``id_`` prepared by itself at the
        wall-clock instant ``at_ms``. Its start here (:meth:`submit`,
        :meth:`start_command`) then sends nothing: it only learns the end."""
        if not self._closed:
            self._armed.add(id_)
            self._send((wire.ARM, id_, at_ms))

    def disarm(self, id_: int) -> asyncio.Future[bool]:
        """Take back an :meth:`arm`; the future says whether the instant came first and
        the process started it already (it then still wants its start here, to learn its
        end). Once the process is gone: False, as nothing of it runs."""
        future: asyncio.Future[bool] = self.loop.create_future()
        if self._closed or id_ not in self._armed:
            future.set_result(id_ in self._early)
            return future
        self._armed.discard(id_)
        self._disarming[id_] = future
        self._send((wire.DISARM, id_))
        return future

    def has_end(self, id_: int) -> bool:
        """True when the end of the armed ``id_`` came before it was started here."""
        return id_ in self._early

    def usable(self, id_: int | None) -> bool:
        """True when what ``id_`` prepared can be started here (its process runs, or it
        went out already and its end is known)."""
        return not self._closed or id_ in self._early

    def _wait_for(
        self, id_: int, ended: Callable[[tuple[Any, ...]], None], on_went_out: WentOut | None
    ) -> None:
        """Start ``id_`` (or, armed, only wait for its end). ``ended`` gets the end's first
        four items; the two more of an end its arm started go to ``on_went_out`` first."""

        def deliver(end: tuple[Any, ...]) -> None:
            if len(end) > 4:
                if on_went_out is not None:
                    on_went_out(end[4], end[5])
                end = end[:4]
            ended(end)

        early = self._early.pop(id_, None)
        if early is not None:
            self.loop.call_soon(deliver, early)
            return
        self._waiting[id_] = deliver
        if id_ in self._armed:
            self._armed.discard(id_)
        else:
            self._send((wire.START, id_))

    def submit(
        self,
        request: Request,
        on_done: OnDone,
        id_: int | None = None,
        on_went_out: WentOut | None = None,
    ) -> int:
        """Send ``request`` (``id_``: as prepared); ``on_done(response, error)`` is called
        once, later, from the loop (just after ``on_went_out(started_ms, ended_ms)`` when
        its arm started it). Returns its id (for :meth:`cancel`). Raises
        :class:`CurlError` when the process is closed (``on_done`` is then not called)."""
        if not self.usable(id_):
            raise CurlError(pycurl.E_FAILED_INIT, self._why)
        if id_ is None:
            id_ = self.prepare(request)

        def ended(end: tuple[Any, ...]) -> None:
            _, code, payload, curl_code = end
            if code is None:  # closed before its end came
                on_done(None, CurlError(pycurl.E_FAILED_INIT, payload))
            elif curl_code:
                on_done(None, CurlError(curl_code, payload))
            else:
                on_done(Response(code, payload), None)

        self._wait_for(id_, ended, on_went_out)
        return id_

    async def fetch(self, request: Request) -> Response:
        """Send ``request``; the final answer, whatever its code. Raises :class:`CurlError`."""
        future: asyncio.Future[Response] = self.loop.create_future()

        def on_done(response: Response | None, error: CurlError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(response)  # type: ignore[arg-type]

        id_ = self.submit(request, on_done)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(id_)  # (a no-op once it ended)
            raise

    # -- shell ------------------------------------------------------------------------------

    def prepare_command(self, argv: list[str], env: dict[str, str], timeout_s: float) -> int:
        """Have a command set up ahead: ``/bin/sh`` with ``argv`` and the service's
        environment with ``env`` on top, killed after ``timeout_s`` (0: never).

        The service's environment is read at the first preparation of a turn of the
        loop (a burst prepares thousands in one): the turn's others share it."""
        if not self._environment_read:
            self._environment_read = True
            self.loop.call_soon(self._read_environment_again)
            environment = dict(os.environ)
            if environment != self._environment:
                self._environment = environment
                self._send((wire.ENVIRONMENT, environment))
        id_ = next(self._ids)
        self._send((wire.PREPARE_SHELL, id_, (argv, env, timeout_s)))
        return id_

    def _read_environment_again(self) -> None:
        self._environment_read = False

    def start_command(self, id_: int, on_exit: OnExit, on_went_out: WentOut | None = None) -> None:
        """Spawn the command ``id_`` prepared; ``on_exit(status, output, state)`` is called
        once, later, from the loop (``on_went_out`` as for :meth:`submit`). Raises
        :class:`OSError` when the process is closed."""
        if not self.usable(id_):
            raise OSError(self._why)

        def ended(end: tuple[Any, ...]) -> None:
            _, status, output, state = end
            if status is None:  # closed before its end came
                on_exit(-1, output, wire.LOST)
            else:
                on_exit(status, output, state)

        self._wait_for(id_, ended, on_went_out)

    def drop(self, id_: int) -> None:
        """A command from :meth:`prepare_command` that will not be started."""
        self.unprepare(id_)

    # -- both -------------------------------------------------------------------------------

    def cancel(self, id_: int) -> None:
        """Stop a started request or command; its callback is not called."""
        if self._waiting.pop(id_, None) is not None and not self._closed:
            self._send((wire.CANCEL, id_))

    def close(self, why: str = "the http client is closed") -> None:
        """Stop the process; what it had started ends with an error saying ``why``."""
        if self._closed:
            return
        self._closed = True
        self._why = why
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
            if self._unsent:
                self.loop.remove_writer(self._fd)
        self._last_words()
        self._sock.close()
        waiting, self._waiting = self._waiting, {}
        ends, self._ends = self._ends, deque()
        disarming, self._disarming = self._disarming, {}
        self._armed.clear()
        if not self.loop.is_closed():
            for end in ends:  # (read already: they ended as they say)
                if len(end) == 2:
                    _answer(disarming.pop(end[0], None), end[1])
                    continue
                known = waiting.pop(end[0], None)
                if known is not None:
                    self.loop.call_soon(_closing_end, known, end)
            for future in disarming.values():
                _answer(future, False)
            for id_, ended in waiting.items():
                self.loop.call_soon(_closing_end, ended, (id_, None, why, None))
        try:
            self._process.wait(2)  # it ends as soon as it sees the socket closed
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)

    # -- the socket ---------------------------------------------------------------------------

    def _last_words(self) -> None:
        """Send what is not sent yet (a cancel, say) before the socket closes."""
        if self._messages:
            self._unsent += wire.frame(self._messages)
            self._messages = []
        if not self._unsent or self._process.poll() is not None:
            return
        try:
            self._sock.settimeout(1.0)
            self._sock.sendall(self._unsent)
        except OSError:
            pass  # it is gone or stuck: what it had is lost either way
        self._unsent.clear()

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._closed:
            return  # (a preparation on a closed process: started elsewhere, or never)
        messages = self._messages
        messages.append(message)
        if len(messages) >= FLUSH_AT:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        if self._closed or not self._messages:
            return
        data = wire.frame(self._messages)
        self._messages = []
        if self._unsent:
            self._unsent += data  # the writer callback sends it after what waits already
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self.loop.add_writer(self._fd, self._send_unsent)

    def _send_unsent(self) -> None:
        try:
            sent = self._sock.send(self._unsent)
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        del self._unsent[:sent]
        if not self._unsent:
            self.loop.remove_writer(self._fd)

    def _receive(self) -> None:
        try:
            chunk = self._sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._lost()
            return
        inbox = self._inbox
        inbox += chunk
        self._ends.extend(wire.unframe(inbox))
        if not self._reporting:
            self._report()

    def _report(self) -> None:
        """Hand the ends read to their callbacks, a turn's worth; the rest next turn."""
        ends = self._ends
        waiting = self._waiting
        turn = Turn()
        while ends:
            end = ends.popleft()
            if len(end) == 1:  # PROGRESS
                self.progress += 1
                continue
            if len(end) == 2:  # a DISARM's answer
                if end[1] and end[0] not in self._waiting:
                    self._armed.add(end[0])  # it went out there: only its end is to come
                _answer(self._disarming.pop(end[0], None), end[1])
                continue
            ended = waiting.pop(end[0], None)
            if ended is None:
                if end[0] in self._armed or end[0] in self._disarming:
                    self._early[end[0]] = end  # it went out at its instant
                continue
            try:
                ended(end)
            except Exception:
                logger.exception("reporting the end of a firing failed")
            if turn.over():
                break
        self._reporting = bool(ends)
        if ends:
            self.loop.call_soon(self._report)

    def _lost(self) -> None:
        code = self._process.poll()
        in_flight = len(self._waiting)
        logger.warning(
            "the firing process %d exited (status %s); %d request(s) and command(s) in flight fail",
            self._process.pid,
            code,
            in_flight,
        )
        self.close(f"the firing process exited (status {code})")


class Armable:
    """What a preparation in the firing process does to be armed (see
    :class:`forsun_box.actions.base.Prepared`): it holds ``client``, the id its
    preparation has there (``id``, None once started here or dropped) and ``went_out``."""

    __slots__ = ("client", "id", "went_out")
    client: FiringProcess
    id: int | None
    went_out: tuple[int, int] | None

    def arm(self, at_ms: int) -> None:
        if self.id is not None:
            self.client.arm(self.id, at_ms)

    def disarm(self) -> asyncio.Future[bool] | None:
        return None if self.id is None else self.client.disarm(self.id)

    def ended(self) -> bool:
        """Armed: its end came already (it went out at its instant)."""
        return self.id is not None and self.client.has_end(self.id)

    def progress(self) -> int:
        """A count that grows while ends of what arms started are held in the process
        (its ends come later, together)."""
        return self.client.progress

    def _went_out(self, started_ms: int, ended_ms: int) -> None:
        self.went_out = (started_ms, ended_ms)


def _answer(future: asyncio.Future[bool] | None, started: bool) -> None:
    if future is not None and not future.done():
        future.set_result(started)


def _closing_end(ended: Callable[[tuple[Any, ...]], None], end: tuple[Any, ...]) -> None:
    try:
        ended(end)
    except Exception:
        logger.exception("reporting the end of a firing failed")


# loop -> its process; weak so a finished loop's entry goes away
_processes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FiringProcess] = (
    weakref.WeakKeyDictionary()
)
#: the process most recently handed out (the common case: one loop, one process)
_last: FiringProcess | None = None


def shared(settings: ActionSettings) -> FiringProcess:
    """The running loop's firing process for ``settings``, (re)started when its limits
    changed or it is closed."""
    global _last
    limits = limits_of(settings)
    loop = asyncio.get_running_loop()
    found = _last
    # the weak mapping builds a weakref per look-up: check the last one first
    if found is None or found.loop is not loop or found.closed:
        found = _processes.get(loop)
    if found is not None and found.limits == limits and not found.closed:
        _last = found
        return found
    if found is not None:
        found.close()
    found = _processes[loop] = FiringProcess(loop, limits)
    _last = found
    return found


def close_shared() -> None:
    """Stop the running loop's firing process (if any)."""
    global _last
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    found = _processes.pop(loop, None)
    if found is not None:
        found.close()
    if _last is not None and _last.loop is loop:
        _last = None
