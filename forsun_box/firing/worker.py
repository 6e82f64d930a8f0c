"""The firing process: it sends the http requests and spawns the shell commands of firings.

The service starts one (:mod:`forsun_box.firing.client`) and keeps it for its lifetime;
they talk over one Unix socket (:mod:`forsun_box.firing.wire`). Requests and commands
arrive ahead of their instant and are set up then -- easy handles with every option set,
command lines and environments as C arrays -- so that at the instant a start is one
``curl_multi_add_handle`` or one ``posix_spawn``. Those the service *arms* start here by
themselves at their instant, on this process's reading of the wall clock: a burst's
sends do not wait for the service to come round to them. Their ends are held here while
requests or commands still run or wait, and sent after the burst, together (at most a
second later; meanwhile a PROGRESS says more ended): reading them meanwhile would take
the service's share of the cores from the burst.

Why a process of its own: at the instant of a burst, the service still answers its APIs,
commits its records and runs its store's thread, all under one interpreter lock; here
nothing else runs. It has one loop, the loop of a bare libcurl multi
client: wait on libcurl's sockets (``curl_multi_fdset``), the service's socket and the
commands' pipes and exits, then one ``curl_multi_perform`` for every transfer at once.
Spawns alone run on threads of their own (:class:`Shell`): a spawn holds its thread until
the child's ``exec``, and meanwhile the loop goes on.
Few descriptors are open here, so a spawn costs what it costs a bare program.

At most ``HTTP_LIMIT`` transfers run at once (more wait in order, and give up when they
waited longer than their ``request_timeout``), libcurl keeps at most ``MAX_CLIENTS``
connections, and at most ``SHELL_LIMIT`` commands run at once (more wait in order). The process ends when the service's end of the socket closes (the service
stopped or died); commands still running go on.

Run as ``python -m forsun_box.firing.worker FD MAX_CLIENTS HTTP_LIMIT SHELL_LIMIT`` (the
frozen executable: ``forsun-box --firing-process FD ...``).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

import pycurl

from forsun_box.firing import wire
from forsun_box.firing.curl import (
    BODY_KEEP,
    MAX_FREE_HANDLES,
    MAX_PREPARED_HANDLES,
    Wire,
    from_wire,
    setup_handle,
)
from forsun_box.firing.spawn import CommandLine, Environment, spawn_now
from forsun_box.slack import first_leg

SHELL = "/bin/sh"
#: bytes of a command's stdout / stderr kept for the error text
OUTPUT_TAIL_BYTES = 4096
#: how long output pipes may stay open after the shell exits (a detached background
#: child can hold them forever)
PIPE_GRACE_S = 1.0
#: how long a process group gets between SIGTERM and SIGKILL
KILL_GRACE_S = 2.0
#: commands spawned less than this ago and still running are "starting"...
STARTING_S = 0.05
#: ... and at most this many per core start at once (more wait for them to exit or age)
STARTING_PER_CPU = 8
#: threads that spawn, at most one per core (a spawn holds its thread until the exec)
SPAWN_THREADS = 2
#: the longest wait for anything, seconds
_IDLE_S = 1.0
#: armed commands queued per turn of the loop at most (armed transfers start as slots free)
ARMED_PER_TURN = 512
#: descriptors at or above this are waited on with poll (select's limit)
_SELECT_LIMIT = 1024
#: the ends of what arms started are held while transfers or commands run or wait, and
#: sent once none does -- but not held longer than this, seconds...
HOLD_MAX_S = 1.0
#: ... and meanwhile a PROGRESS goes out this often at most while more ends come
PROGRESS_S = 0.025
#: the collector runs only while the process is idle, with nothing due for this long...
COLLECT_HEADROOM_S = 0.25
#: ... at most this often, seconds...
COLLECT_EVERY_S = 5.0
#: ... and, busy or not, at least this often
COLLECT_AT_LEAST_S = 60.0

Send = Callable[[tuple[Any, ...]], None]
Spawn = Callable[[CommandLine], tuple[int, int, int]]
#: what a spawn gave: (pid, stdout, stderr), or the error
_Result = tuple[int, int, int] | Exception
#: a spawner's answer: (id, timeout, result)
_Spawned = tuple[int, float, _Result]
#: what a command's timer does
_TIME_OUT, _KILL, _PIPES = 1, 2, 3


class _Body:
    """The first bytes of an answer's body (the rest is read and dropped)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        if len(self.data) < BODY_KEEP:
            self.data += chunk[: BODY_KEEP - len(self.data)]


class Arms:
    """Armed ids by their instant (unix ms), in the order armed at each instant: a
    burst's ids come out of one list instead of one by one off a heap."""

    __slots__ = ("at", "by_instant", "instants", "live")

    def __init__(self) -> None:
        #: armed id -> its instant; an id taken back is dropped here and skipped later
        self.at: dict[int, int] = {}
        self.by_instant: dict[int, deque[int]] = {}
        #: instant -> how many of its ids are still armed (at 0 the instant goes)
        self.live: dict[int, int] = {}
        self.instants: list[int] = []  # a heap of instants, some of them gone

    def __len__(self) -> int:
        return len(self.at)

    def add(self, id_: int, at_ms: int) -> None:
        self.discard(id_)
        self.at[id_] = at_ms
        ids = self.by_instant.get(at_ms)
        if ids is None:
            ids = self.by_instant[at_ms] = deque()
            self.live[at_ms] = 0
            heapq.heappush(self.instants, at_ms)
        ids.append(id_)
        self.live[at_ms] += 1

    def discard(self, id_: int) -> bool:
        """Take back the arm of ``id_``; True when it was armed."""
        instant = self.at.pop(id_, None)
        if instant is None:
            return False
        self._gone(instant)
        return True

    def next_ms(self) -> int | None:
        """The earliest instant with ids still armed."""
        instants, by_instant = self.instants, self.by_instant
        while instants and instants[0] not in by_instant:
            heapq.heappop(instants)
        return instants[0] if instants else None

    def due(self, now_ms: int, n: int) -> list[tuple[int, int]]:
        """Up to ``n`` armed ``(id, instant)`` whose instant came, earliest first, taken out."""
        taken: list[tuple[int, int]] = []
        at, live = self.at, self.live
        while len(taken) < n:
            instant = self.next_ms()
            if instant is None or instant > now_ms:
                break
            popleft = self.by_instant[instant].popleft
            left = live[instant]  # (the deque may hold more: ids taken back)
            want = n - len(taken)
            add = taken.append
            while want and left:
                id_ = popleft()
                if at.get(id_) != instant:
                    continue  # taken back, or armed again elsewhere
                del at[id_]
                add((id_, instant))
                want -= 1
                left -= 1
            if left:
                live[instant] = left
            else:
                del live[instant]
                del self.by_instant[instant]  # (its heap entry goes at the next look)
        return taken

    def _gone(self, instant: int) -> None:
        """One id of ``instant`` is no longer armed (the instant goes with its last)."""
        left = self.live[instant] - 1
        if left:
            self.live[instant] = left
            return
        del self.live[instant]
        del self.by_instant[instant]  # (its heap entry goes at the next look)


class _Prepared:
    """What the transfers and the commands share: ids prepared, and those armed."""

    prepared: dict[int, Any]
    arms: Arms

    def owns(self, id_: int) -> bool:
        return id_ in self.prepared

    def arm(self, id_: int, at_ms: int) -> bool:
        """Arm ``id_`` for the instant ``at_ms``; False when it is not prepared here."""
        if id_ not in self.prepared:
            return False
        self.arms.add(id_, at_ms)
        return True


class Http(_Prepared):
    """The transfers: prepared, armed, waiting for a slot, running."""

    def __init__(self, max_clients: int, limit: int, send: Send) -> None:
        self.max_clients = max(1, max_clients)
        self.limit = max(1, limit)
        self.send = send
        self.multi = pycurl.CurlMulti()
        # the connection bound: libcurl closes an idle connection to make room for a new one
        self.multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, self.max_clients)
        self.multi.setopt(pycurl.M_MAXCONNECTS, self.max_clients)
        #: id -> (request, its handle set up with its body, or None: set up at the start)
        self.prepared: dict[int, tuple[Wire, pycurl.Curl | None, _Body | None]] = {}
        self.handles = 0  # prepared with their handle set up
        #: prepared ids to start at their instant, when a slot is free
        self.arms = Arms()
        #: started, waiting for a slot: (id, request, handle, body, since monotonic)
        self.queue: deque[tuple[int, Wire, pycurl.Curl | None, _Body | None, float]] = deque()
        #: handle -> (id, body, when its arm started it (unix ms) or 0)
        self.running: dict[pycurl.Curl, tuple[int, _Body, int]] = {}
        self.free: list[pycurl.Curl] = []
        #: handles of ended transfers, recycled once no transfer runs (not in a burst)
        self.spent: list[pycurl.Curl] = []

    def prepare(self, id_: int, request: Wire) -> None:
        curl = body = None
        if self.handles < MAX_PREPARED_HANDLES:
            curl = self._set_up(request)
            if curl is not None:
                self.handles += 1
                body = _Body()
                curl.setopt(pycurl.WRITEFUNCTION, body.write)
        self.prepared[id_] = (request, curl, body)

    def start(self, id_: int) -> None:
        """Send what ``id_`` prepared, or queue it."""
        self.arms.discard(id_)
        request, curl, body = self.prepared.pop(id_)
        if curl is not None:
            self.handles -= 1
        if len(self.running) < self.limit and not self.queue:
            self._launch(id_, request, curl, body, 0)
        else:
            self.queue.append((id_, request, curl, body, time.monotonic()))

    def drop(self, id_: int) -> bool:
        self.arms.discard(id_)
        entry = self.prepared.pop(id_, None)
        if entry is None:
            return False
        if entry[1] is not None:
            self.handles -= 1
            self._recycle(entry[1])
        return True

    def cancel(self, id_: int) -> bool:
        if self.drop(id_):
            return True
        for curl, entry in self.running.items():
            if entry[0] == id_:
                del self.running[curl]
                self.multi.remove_handle(curl)
                self._recycle(curl)
                return True
        for i, queued in enumerate(self.queue):
            if queued[0] == id_:
                del self.queue[i]
                if queued[2] is not None:
                    self._recycle(queued[2])
                return True
        return False

    def arm_wait_s(self) -> float | None:
        """How long until an armed id is to start: 0 when one is due and a slot is free
        for it; None when none is armed, or the due ones wait for a slot."""
        instant = self.arms.next_ms()
        if instant is None:
            return None
        wait = instant / 1000 - time.time()
        if wait > 0:
            return wait
        return 0.0 if len(self.running) < self.limit and not self.queue else None

    def drive(self) -> None:
        """Start what waits and is due, let libcurl work on every transfer, report those
        that ended; again while a slot freed for a waiting one, until a slots' worth
        ended (the loop then sends the ends and reads the service's messages)."""
        multi = self.multi
        total = 0
        while True:
            self._grant()
            if not self.running:
                return
            ret, _ = multi.perform()
            while ret == pycurl.E_CALL_MULTI_PERFORM:
                ret, _ = multi.perform()
            ended = 0
            while True:
                queued, ok, failed = multi.info_read()
                if ok or failed:
                    ended_ms = int(time.time() * 1000)
                    if ok:
                        self._answered(ok, ended_ms)
                    for curl, code, message in failed:
                        self._finish(curl, code, message, ended_ms)
                    ended += len(ok) + len(failed)
                if not queued:
                    break
            total += ended
            if not (ended and total < self.limit and (self.queue or self.arm_due())):
                return

    def arm_due(self) -> bool:
        """True when an armed id's instant came (it waits for a slot)."""
        instant = self.arms.next_ms()
        return instant is not None and instant <= time.time() * 1000

    def busy(self) -> bool:
        """True while transfers run or wait for a slot (else libcurl has nothing to do)."""
        return bool(self.running or self.queue)

    def recycle_spent(self) -> None:
        spent, self.spent = self.spent, []
        for curl in spent:
            self._recycle(curl)

    def timeout_s(self) -> float | None:
        ms = self.multi.timeout()
        return None if ms < 0 else ms / 1000

    def _grant(self) -> None:
        """Start in the free slots the transfers waiting for one, then the armed ones
        whose instant came."""
        free = self.limit - len(self.running)
        if free <= 0:
            return
        queue = self.queue
        if queue:
            now = time.monotonic()
            while queue and free > 0:
                id_, request, curl, body, since = queue.popleft()
                if now - since > request[7]:
                    self._waited_too_long(id_, curl, 0)
                    continue
                free -= self._launch(id_, request, curl, body, 0)
        if free <= 0 or not self.arms.at:
            return
        now_s = time.time()
        now_ms = int(now_s * 1000)
        prepared, running, add = self.prepared, self.running, self.multi.add_handle
        for id_, instant in self.arms.due(now_ms, free):
            request, curl, body = prepared.pop(id_)
            if curl is not None:
                self.handles -= 1
            if now_s - instant / 1000 > request[7]:
                self._waited_too_long(id_, curl, now_ms)
            elif curl is not None and body is not None:  # (set up ahead: only its send)
                running[curl] = (id_, body, now_ms)
                add(curl)
            else:
                self._launch(id_, request, curl, body, now_ms)

    def _waited_too_long(self, id_: int, curl: pycurl.Curl | None, armed_ms: int) -> None:
        if curl is not None:
            self._recycle(curl)
        message = f"timed out waiting for a free connection (http_max_clients {self.max_clients})"
        self._send_end((id_, 0, message, pycurl.E_OPERATION_TIMEDOUT), armed_ms)

    def _set_up(self, request: Wire) -> pycurl.Curl | None:
        curl = self.free.pop() if self.free else pycurl.Curl()
        try:
            setup_handle(curl, from_wire(request))
        except pycurl.error:
            self._recycle(curl)
            return None  # set up again at the start, which reports the error
        return curl

    def _launch(
        self,
        id_: int,
        request: Wire,
        curl: pycurl.Curl | None,
        body: _Body | None,
        armed_ms: int,
    ) -> bool:
        """Add the transfer of ``id_`` to libcurl (``armed_ms``: when its arm started it);
        False when its handle could not be set up (its end says why)."""
        if curl is None or body is None:
            curl = self.free.pop() if self.free else pycurl.Curl()
            try:
                setup_handle(curl, from_wire(request))
            except pycurl.error as e:
                self._recycle(curl)
                self._send_end((id_, 0, str(e.args[-1]), e.args[0]), armed_ms)
                return False
            body = _Body()
            curl.setopt(pycurl.WRITEFUNCTION, body.write)
        self.running[curl] = (id_, body, armed_ms)
        self.multi.add_handle(curl)
        return True

    def _answered(self, curls: list[pycurl.Curl], ended_ms: int) -> None:
        """:meth:`_finish` of the transfers ``curls`` that got an answer, in one loop (a
        burst's ends come hundreds at a time)."""
        running, remove, spent, send = self.running, self.multi.remove_handle, self.spent, self.send
        code_of = pycurl.RESPONSE_CODE
        for curl in curls:
            entry = running.pop(curl, None)
            status = curl.getinfo(code_of)
            remove(curl)
            spent.append(curl)
            if entry is not None:
                id_, body, armed_ms = entry
                send(
                    (id_, status, body.data, 0, armed_ms, ended_ms)
                    if armed_ms
                    else (id_, status, body.data, 0)
                )

    def _finish(self, curl: pycurl.Curl, code: int, message: str, ended_ms: int) -> None:
        entry = self.running.pop(curl, None)
        status = curl.getinfo(pycurl.RESPONSE_CODE) if not code else 0
        self.multi.remove_handle(curl)
        self.spent.append(curl)
        if entry is None:
            return
        id_, body, armed_ms = entry
        end = (id_, 0, message, code) if code else (id_, status, body.data, 0)
        self._send_end(end, armed_ms, ended_ms)

    def _send_end(self, end: tuple[Any, ...], armed_ms: int, ended_ms: int = 0) -> None:
        """Send an end; one of a transfer its arm started (at ``armed_ms``) says when it
        started and ended (``ended_ms``, else now)."""
        if armed_ms:
            end = (*end, armed_ms, ended_ms or int(time.time() * 1000))
        self.send(end)

    def _recycle(self, curl: pycurl.Curl) -> None:
        if len(self.free) >= MAX_FREE_HANDLES:
            curl.close()
            return
        curl.reset()  # drops the options and the Python callbacks they hold
        self.free.append(curl)


class _Tail:
    """The last ``limit`` bytes of a stream."""

    __slots__ = ("data", "limit", "truncated")

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        s = self.data.decode("utf-8", "replace").strip()
        return ("..." + s) if self.truncated and s else s


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class _Command:
    """One running command: its pipes and its output so far."""

    __slots__ = (
        "code",
        "err",
        "err_fd",
        "id",
        "out",
        "out_fd",
        "pid",
        "spawned",
        "starting",
        "timed_out",
    )

    def __init__(self, id_: int, pid: int, out_fd: int, err_fd: int, spawned: float) -> None:
        self.id = id_
        self.pid = pid
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.out = _Tail()
        self.err = _Tail()
        self.code: int | None = None
        self.timed_out = False
        self.spawned = spawned
        self.starting = True


class Shell(_Prepared):
    """The commands: prepared, waiting for a slot, spawning, running, and their timers.

    Output pipes are watched through an epoll set of their own (one descriptor in the
    loop's wait, however many commands run), exits through SIGCHLD written to a wake-up
    pipe; every child of this process is a command, so each wake-up reaps them all.

    Spawns happen on :data:`SPAWN_THREADS` threads (at most one per core): a spawn holds
    its caller until the child has called ``exec``, and meanwhile another thread spawns
    the next command and the loop reads pipes, reaps and reports ends. A spawned child
    reaches the loop through the same wake-up pipe; one that exited before the loop knew
    its pid waits in ``exited`` for it.

    Besides the limit, commands start no faster than the machine runs them: at most
    :data:`STARTING_PER_CPU` per core are in their first :data:`STARTING_S` at once. A
    burst of short commands then runs a few at a time per core instead of hundreds at
    once competing for the cores (which made the whole burst slower), and a long command
    stops counting after its first moments.
    """

    def __init__(
        self,
        limit: int,
        send: Send,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn = spawn_now,
    ) -> None:
        self.limit = max(1, limit)
        self.clock = clock
        cpus = os.cpu_count() or 1
        self.starting_limit = STARTING_PER_CPU * cpus
        self.starting: deque[_Command] = deque()  # in the order spawned
        self.starting_count = 0
        self.send = send
        self.environment = Environment(dict(os.environ))
        self.prepared: dict[int, tuple[CommandLine, float]] = {}
        #: prepared ids to start at their instant
        self.arms = Arms()
        #: ids their arm started -> when (unix ms), for their end to say
        self.armed_started: dict[int, int] = {}
        self.queue: deque[tuple[int, CommandLine, float]] = deque()
        self.spawning: set[int] = set()  # ids handed to the spawners
        self.unwanted: set[int] = set()  # ... of which cancelled meanwhile
        self.spawned: deque[_Spawned] = deque()  # the spawners' answers
        self.running: dict[int, _Command] = {}
        self.by_pid: dict[int, _Command] = {}
        self.orphans: set[int] = set()  # pids nobody waits for (cancelled), not yet reaped
        self.exited: dict[int, int] = {}  # pid -> exit code, reaped before it was known
        self.pipes: dict[int, _Command] = {}  # pipe -> its command
        self.epoll = select.epoll()
        self.timers: list[tuple[float, int, int, int]] = []  # (when, seq, id, what)
        self._seq = 0
        self.doomed: dict[int, int] = {}  # id -> pid, for the SIGKILL after a SIGTERM
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _nothing)  # (the wake-up byte is what matters)
        self._jobs: SimpleQueue[tuple[int, CommandLine, float] | None] = SimpleQueue()
        self._spawners = [
            threading.Thread(target=self._spawner, args=(spawn,), name="spawner", daemon=True)
            for _ in range(max(1, min(SPAWN_THREADS, cpus)))
        ]
        for thread in self._spawners:
            thread.start()

    def prepare(self, id_: int, spec: tuple[list[str], dict[str, str], float]) -> None:
        argv, extra, timeout_s = spec
        self.prepared[id_] = (CommandLine(SHELL, argv, self.environment, extra), timeout_s)

    def start(self, id_: int) -> None:
        self.arms.discard(id_)
        command, timeout_s = self.prepared.pop(id_)
        self.queue.append((id_, command, timeout_s))
        self.pump()

    def pump(self) -> None:
        """Queue the armed commands whose instant came (:data:`ARMED_PER_TURN` at most),
        hand waiting commands to the spawners while the limits allow."""
        queue = self.queue
        if self.arms.at:
            self._queue_armed()
        if not queue:
            return
        now = self.clock()
        starting = self.starting
        while starting and now - starting[0].spawned >= STARTING_S:
            self._started(starting.popleft())
        spawning = self.spawning
        while (
            queue
            and len(self.running) + len(spawning) < self.limit
            and self.starting_count + len(spawning) < self.starting_limit
        ):
            job = queue.popleft()
            spawning.add(job[0])
            self._jobs.put(job)

    def drop(self, id_: int) -> bool:
        self.arms.discard(id_)
        return self.prepared.pop(id_, None) is not None

    def busy(self) -> bool:
        """True while commands run, spawn or wait (armed ones whose instant came too)."""
        if self.running or self.queue or self.spawning or self.spawned:
            return True
        instant = self.arms.next_ms()
        return instant is not None and instant <= time.time() * 1000

    def cancel(self, id_: int) -> bool:
        self.armed_started.pop(id_, None)
        if self.drop(id_):
            return True
        if id_ in self.spawning:
            self.unwanted.add(id_)
            return True
        child = self.running.get(id_)
        if child is None:
            for i, queued in enumerate(self.queue):
                if queued[0] == id_:
                    del self.queue[i]
                    return True
            return False
        self._doom(id_, child.pid)
        self._forget(child)  # nobody waits for its end
        return True

    def read_pipes(self) -> None:
        """Read what the commands wrote; a pipe at its end is closed."""
        pipes = self.pipes
        for fd, _ in self.epoll.poll(0):
            child = pipes.get(fd)
            if child is None:
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                (child.out if fd == child.out_fd else child.err).add(chunk)
                continue
            self._close(fd)
            if fd == child.out_fd:
                child.out_fd = -1
            else:
                child.err_fd = -1
            if child.code is not None and child.out_fd < 0 and child.err_fd < 0:
                self._finish(child)

    def reap(self) -> None:
        """Take the spawners' children and collect every command that exited (the
        wake-up pipe said one of them happened)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 4096):
                pass
        spawned = self.spawned
        while spawned:
            self._arrived(*spawned.popleft())
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no children left
            if pid == 0:
                return
            child = self.by_pid.pop(pid, None)
            if child is not None:
                self._exited(child, os.waitstatus_to_exitcode(status))
            elif pid in self.orphans:
                self.orphans.discard(pid)
            else:  # its spawner has not answered yet
                self.exited[pid] = os.waitstatus_to_exitcode(status)

    def kill_doomed(self) -> None:
        """SIGKILL now the process groups that were to get it later (this process ends)."""
        for pid in self.doomed.values():
            _kill_group(pid, signal.SIGKILL)
        self.doomed.clear()

    def close(self) -> None:
        """Stop the spawners: what waits for them is dropped, a spawn under way ends."""
        with contextlib.suppress(Empty):
            while True:
                self._jobs.get_nowait()
        for _ in self._spawners:
            self._jobs.put(None)
        for thread in self._spawners:
            thread.join()

    def run_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, id_, what = heapq.heappop(timers)
            if what == _KILL:
                pid = self.doomed.pop(id_, 0)
                if pid:
                    _kill_group(pid, signal.SIGKILL)
                continue
            child = self.running.get(id_)
            if child is None:
                continue
            if what == _TIME_OUT:
                child.timed_out = True
                self._doom(id_, child.pid)
            elif what == _PIPES:
                self._finish(child)

    def timeout_s(self) -> float | None:
        waits = []
        if self.timers:
            waits.append(self.timers[0][0] - time.monotonic())
        instant = self.arms.next_ms()
        if instant is not None:
            waits.append(instant / 1000 - time.time())
        if self.queue and self.starting:
            waits.append(self.starting[0].spawned + STARTING_S - self.clock())
        return max(0.0, min(waits)) if waits else None

    # -- inside ---------------------------------------------------------------------------

    def _queue_armed(self) -> None:
        now_ms = int(time.time() * 1000)
        prepared, started, queue = self.prepared, self.armed_started, self.queue
        for id_, _ in self.arms.due(now_ms, ARMED_PER_TURN):
            command, timeout_s = prepared.pop(id_)
            started[id_] = now_ms
            queue.append((id_, command, timeout_s))

    def _end(self, end: tuple[Any, ...]) -> None:
        """Send an end; one of an id its arm started says when it started and ended."""
        started = self.armed_started.pop(end[0], None) if self.armed_started else None
        self.send(end if started is None else (*end, started, int(time.time() * 1000)))

    def _spawner(self, spawn: Spawn) -> None:
        jobs, answer, wake = self._jobs, self.spawned.append, self._wake_w
        while (job := jobs.get()) is not None:
            id_, command, timeout_s = job
            result: _Result
            try:
                result = spawn(command)
                os.set_blocking(result[1], False)
                os.set_blocking(result[2], False)
            except Exception as e:  # the command fails, not the spawner
                result = e
            answer((id_, timeout_s, result))
            with contextlib.suppress(BlockingIOError):
                os.write(wake, b"\0")

    def _arrived(self, id_: int, timeout_s: float, result: _Result) -> None:
        self.spawning.discard(id_)
        if isinstance(result, Exception):
            self.unwanted.discard(id_)
            self._end((id_, 0, f"cannot start {SHELL}: {result}", wire.NOT_STARTED))
            return
        pid, out_fd, err_fd = result
        child = _Command(id_, pid, out_fd, err_fd, self.clock())
        self.starting.append(child)
        self.starting_count += 1
        for fd in (out_fd, err_fd):
            self.pipes[fd] = child
            self.epoll.register(fd, select.EPOLLIN)
        self.running[id_] = child
        code = self.exited.pop(pid, None)
        if code is None:
            self.by_pid[pid] = child
        if id_ in self.unwanted:
            self.unwanted.discard(id_)
            child.code = code  # None: reaped when it exits, unreported
            self._doom(id_, pid)
            self._forget(child)
        elif code is not None:
            self._exited(child, code)
        elif timeout_s > 0:
            self._at(time.monotonic() + timeout_s, id_, _TIME_OUT)

    def _exited(self, child: _Command, code: int) -> None:
        child.code = code
        self._started(child)
        if child.out_fd < 0 and child.err_fd < 0:
            self._finish(child)
        else:
            # a detached background child may hold the pipes open forever
            self._at(time.monotonic() + PIPE_GRACE_S, child.id, _PIPES)

    def _doom(self, id_: int, pid: int) -> None:
        """SIGTERM to the group now, SIGKILL after the grace."""
        _kill_group(pid, signal.SIGTERM)
        self.doomed[id_] = pid
        self._at(time.monotonic() + KILL_GRACE_S, id_, _KILL)

    def _at(self, when: float, id_: int, what: int) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, id_, what))

    def _close(self, fd: int) -> None:
        if self.pipes.pop(fd, None) is not None:
            self.epoll.unregister(fd)
            os.close(fd)

    def _started(self, child: _Command) -> None:
        if child.starting:
            child.starting = False
            self.starting_count -= 1

    def _forget(self, child: _Command) -> None:
        self.running.pop(child.id, None)
        self._started(child)
        if self.by_pid.pop(child.pid, None) is not None and child.code is None:
            self.orphans.add(child.pid)  # reaped when it exits, unreported
        for fd in (child.out_fd, child.err_fd):
            if fd >= 0:
                self._close(fd)
        child.out_fd = child.err_fd = -1

    def _finish(self, child: _Command) -> None:
        if self.running.get(child.id) is not child:
            return
        code = child.code
        self._forget(child)
        text = child.err.text() or child.out.text()
        if child.timed_out:
            self._end((child.id, code or 0, text, wire.TIMED_OUT))
            _kill_group(child.pid, signal.SIGKILL)
        else:
            self._end((child.id, code or 0, text, wire.EXITED))


def _nothing(signum: int, frame: object) -> None:
    """SIGCHLD's handler: the wake-up pipe has its byte already."""


def _wait(readers: list[int], writers: list[int], timeout: float | None) -> list[int]:
    """The readable ones of ``readers`` once something is ready or ``timeout`` passed."""
    if max(readers, default=0) < _SELECT_LIMIT and max(writers, default=0) < _SELECT_LIMIT:
        try:
            return select.select(readers, writers, [], timeout)[0]
        except InterruptedError:
            return []
    poller = select.poll()
    for fd in readers:
        poller.register(fd, select.POLLIN)
    for fd in writers:
        poller.register(fd, select.POLLOUT | (select.POLLIN if fd in readers else 0))
    ready = poller.poll(None if timeout is None else timeout * 1000)
    return [
        fd for fd, events in ready if events & (select.POLLIN | select.POLLHUP | select.POLLERR)
    ]


class Worker:
    """The loop: the service's messages in, ends out, libcurl and the commands between."""

    def __init__(
        self, sock: socket.socket, max_clients: int, http_limit: int, shell_limit: int
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.ends: list[tuple[Any, ...]] = []
        #: ends of what arms started, not sent yet (a burst's, sent after it)
        self.held: list[tuple[Any, ...]] = []
        self.held_since = 0.0
        self.progress_at = 0.0
        self.progress_held = 0  # how many were held when the last PROGRESS went
        self.out = bytearray()
        self.inbox = bytearray()
        self.http = Http(max_clients, http_limit, self._end)
        self.shell = Shell(shell_limit, self._end)
        self.open = True
        self.collected_at = time.monotonic()

    def run(self) -> None:
        http, shell = self.http, self.shell
        fd, wake_fd, epoll_fd = self.fd, shell.wake_fd, shell.epoll.fileno()
        while self.open:
            transfers = http.busy()
            reads, writes, _ = http.multi.fdset() if transfers else ([], [], [])
            readers = [fd, wake_fd, *reads]
            if shell.pipes:
                readers.append(epoll_fd)
            if self.out:
                writes = [*writes, fd]
            timeout = _IDLE_S
            for t in (
                http.timeout_s() if transfers else None,
                http.arm_wait_s(),
                shell.timeout_s(),
            ):
                if t is not None and t < timeout:
                    timeout = max(0.0, t)
            if self.held:
                timeout = min(timeout, max(0.0, self.held_since + HOLD_MAX_S - time.monotonic()))
            elif self._collected(timeout, transfers):
                continue
            readable = _wait(readers, writes, first_leg(timeout))
            if readable:
                # (``in``: a burst makes hundreds of libcurl's sockets readable at once)
                if fd in readable:
                    self._receive()
                if wake_fd in readable:
                    shell.reap()
                if epoll_fd in readable:
                    shell.read_pipes()
            if shell.timers:
                shell.run_timers()
            shell.pump()
            if transfers or http.busy() or http.arms.at:
                http.drive()
            elif http.spent:
                http.recycle_spent()
            if self.held:
                self._release_held()
            self._flush()
        shell.close()
        shell.kill_doomed()

    def _collected(self, idle_s: float, transfers: bool) -> bool:
        """Run the collector when nothing is due for ``idle_s`` (at least
        :data:`COLLECT_HEADROOM_S`), no transfer or command runs and the last run is
        :data:`COLLECT_EVERY_S` old, or, whatever runs, once it is
        :data:`COLLECT_AT_LEAST_S` old; True when it ran. (Automatic collection is off
        here: a pass over a burst's prepared handles takes milliseconds, and the burst's
        own objects are freed by their counts.)"""
        since = time.monotonic() - self.collected_at
        idle = idle_s >= COLLECT_HEADROOM_S and not (transfers or self.shell.busy())
        if (idle and since >= COLLECT_EVERY_S) or since >= COLLECT_AT_LEAST_S:
            gc.collect()
            self.collected_at = time.monotonic()
            return True
        return False

    def _receive(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.open = False  # the service is gone (what it sent last is still done)
                break
            self.inbox += chunk
        for message in wire.unframe(self.inbox):
            self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        http, shell = self.http, self.shell
        if kind == wire.START:
            id_ = message[1]
            if http.owns(id_):
                http.start(id_)
            elif shell.owns(id_):
                shell.start(id_)
        elif kind == wire.PREPARE_HTTP:
            http.prepare(message[1], message[2])
        elif kind == wire.PREPARE_SHELL:
            shell.prepare(message[1], message[2])
        elif kind == wire.ARM:
            http.arm(message[1], message[2]) or shell.arm(message[1], message[2])
        elif kind == wire.DISARM:
            id_ = message[1]
            instant = http.arms.at.get(id_) or shell.arms.at.get(id_)
            if instant is not None and instant <= time.time() * 1000:
                # its instant came (it waits for a slot): it goes out, as if started
                self.ends.append((id_, True))
                return
            armed = http.arms.discard(id_) or shell.arms.discard(id_)
            self.ends.append((id_, not armed and not (http.owns(id_) or shell.owns(id_))))
        elif kind == wire.DROP:
            http.drop(message[1]) or shell.drop(message[1])
        elif kind == wire.CANCEL:
            http.cancel(message[1]) or shell.cancel(message[1])
        elif kind == wire.ENVIRONMENT:
            shell.environment = Environment(message[1])

    def _end(self, end: tuple[Any, ...]) -> None:
        """An end to send; one of what an arm started (it says when it started and
        ended) is held (:meth:`_release_held`)."""
        if len(end) <= 4:
            self.ends.append(end)
            return
        if not self.held:
            self.held_since = time.monotonic()
            self.progress_held = 0
        self.held.append(end)

    def _release_held(self) -> None:
        """Send the held ends once no transfer or command runs or waits (a burst is
        over: reading them no longer takes the service's share of the cores from it), or
        once the first was held ``HOLD_MAX_S``; meanwhile say that more came."""
        now = time.monotonic()
        if not (self.http.busy() or self.http.arm_due() or self.shell.busy()) or (
            now - self.held_since >= HOLD_MAX_S
        ):
            self.ends += self.held
            self.held = []
        elif len(self.held) > self.progress_held and now - self.progress_at >= PROGRESS_S:
            self.progress_at = now
            self.progress_held = len(self.held)
            self.ends.append(wire.PROGRESS)

    def _flush(self) -> None:
        if self.ends:
            self.out += wire.frame(self.ends)
            self.ends.clear()
        if not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.open = False
            return
        del self.out[:sent]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd, max_clients, http_limit, shell_limit = (int(arg) for arg in args[:4])
    # a terminal's Ctrl-C or hang-up is for the service, which stops this process itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    gc.disable()  # (the loop collects when idle: Worker._collected)
    sock = socket.socket(fileno=fd)
    Worker(sock, max_clients, http_limit, shell_limit).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
