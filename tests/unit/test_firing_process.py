"""The firing process: its frames, its limits, its death and the service's.

Real processes throughout: the firing process the service starts, real commands, a
real loopback HTTP server.
"""

from __future__ import annotations

import asyncio
import http.server
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from forsun_box import turns
from forsun_box.actions import ActionFailed, ActionSettings, ShellAction, configure_actions
from forsun_box.firing import wire
from forsun_box.firing.client import FiringProcess, close_shared, shared
from forsun_box.firing.curl import CurlError, Request, Response, to_wire
from forsun_box.firing.spawn import CommandLine, spawn_now
from forsun_box.firing.worker import (
    COLLECT_AT_LEAST_S,
    COLLECT_EVERY_S,
    SPAWN_THREADS,
    Arms,
    Http,
    Shell,
    Spawn,
    Worker,
)
from forsun_box.plan import Plan
from tests.helpers import wait_until, wait_until_async

pytestmark = pytest.mark.usefixtures("restore_action_settings")

TS = 1_700_000_123


def _gone(pid: int) -> bool:
    """True once ``pid`` exited (a zombie not yet collected by its parent counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


class _Slow(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(float(self.get_query_argument("s", "0")))
        self.write("ok")


async def _server() -> tuple[HTTPServer, int]:
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([("/slow", _Slow)]))
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def test_frames_are_read_whole_however_the_bytes_arrive() -> None:
    first = [
        (wire.START, 1),
        (wire.PREPARE_HTTP, 2, ("http://x/", "GET", [], None, "", None, 5.0, 9.0)),
    ]
    second = [(3, 200, b"ok", 0)]
    data = wire.frame(first) + wire.frame(second)
    for cut in range(len(data) + 1):
        buffer = bytearray(data[:cut])
        got = wire.unframe(buffer)
        buffer += data[cut:]
        got += wire.unframe(buffer)
        assert got == first + second and not buffer


def test_a_dead_firing_process_fails_what_it_had_and_the_next_use_starts_another() -> None:
    configure_actions(ActionSettings())

    async def main() -> tuple[BaseException | None, int, int, int]:
        server, port = await _server()
        try:
            process = shared(ActionSettings())
            old = process.pid
            slow = asyncio.ensure_future(
                process.fetch(Request(f"http://127.0.0.1:{port}/slow?s=30"))
            )
            await asyncio.sleep(0.2)  # a window for the request to get there
            os.kill(old, signal.SIGKILL)
            error: BaseException | None = None
            try:
                await asyncio.wait_for(slow, 10)
            except CurlError as e:
                error = e
            assert process.closed
            again = shared(ActionSettings())
            answer = await asyncio.wait_for(
                again.fetch(Request(f"http://127.0.0.1:{port}/slow?s=0")), 10
            )
            return error, old, again.pid, answer.code
        finally:
            server.stop()
            close_shared()

    error, old, new, code = asyncio.run(main())
    assert isinstance(error, CurlError) and "firing process exited" in str(error)
    assert new != old and code == 200


class _Ok(http.server.BaseHTTPRequestHandler):
    """Answers 200 and notes each request's path and arrival (wall clock); ``/gate``
    answers once :attr:`gate` is set."""

    arrivals: list[tuple[str, float]] = []  # noqa: RUF012
    gate = threading.Event()

    def do_GET(self) -> None:
        _Ok.arrivals.append((self.path, time.time()))
        if self.path == "/gate":
            _Ok.gate.wait(30)
        _, _, wait = self.path.partition("?s=")
        if wait:
            time.sleep(float(wait))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class _Threaded(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # (a burst's connections all at once)
    daemon_threads = True


@pytest.fixture
def threaded_server() -> Iterator[int]:
    """A loopback HTTP server on its own threads (it answers while the loop is held)."""
    _Ok.arrivals = []
    _Ok.gate = threading.Event()
    server = _Threaded(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def _running(process: FiringProcess) -> None:
    """Once the process answers (it started and reads): a round trip, nothing sent out.

    Instants armed after it are then not already past when the process reads them,
    however slowly the machine started it."""
    id_ = process.prepare(Request("http://127.0.0.1:9/never"))
    process.arm(id_, int(time.time() * 1000) + 3_600_000)
    assert await asyncio.wait_for(process.disarm(id_), 60) is False
    process.unprepare(id_)


def test_armed_requests_and_commands_start_by_themselves_at_their_instant(
    tmp_path: Path, threaded_server: int
) -> None:
    configure_actions(ActionSettings())
    url = f"http://127.0.0.1:{threaded_server}"
    arrived: dict[str, float] = {}

    def seen(path: str) -> bool:
        arrived.update((p, at) for p, at in _Ok.arrivals if p not in arrived)
        return path in arrived

    async def main() -> None:
        process = shared(ActionSettings())
        loop = asyncio.get_running_loop()
        try:
            await _running(process)
            at = int(time.time() * 1000) + 1000
            ids = {}
            for name in ("early", "taken-back", "late"):
                ids[name] = process.prepare(Request(f"{url}/{name}"))
                process.arm(ids[name], at + (300 if name == "late" else 0))
            out = tmp_path / "out"
            shell_id = process.prepare_command(["/bin/sh", "-c", f"echo x >'{out}'"], {}, 0)
            process.arm(shell_id, at)
            assert await process.disarm(ids["taken-back"]) is False
            # nothing is started from here: they go out at their instants by themselves
            assert await wait_until_async(lambda: seen("/late"), 10)
            assert arrived["/early"] >= at / 1000 and arrived["/late"] >= (at + 300) / 1000
            assert "/taken-back" not in arrived  # (its instant came before the late one's)
            assert await wait_until_async(out.exists, 10)
            # a start here only learns the end, which may have come already
            assert await process.disarm(ids["late"]) is True
            for name in ("early", "late"):
                answer: asyncio.Future[int] = loop.create_future()
                process.submit(
                    Request(f"{url}/{name}"),
                    lambda r, e, f=answer: f.set_result(r.code if r else -1),
                    ids[name],
                )
                assert await asyncio.wait_for(answer, 10) == 200
            exited: asyncio.Future[tuple[int, int]] = loop.create_future()
            process.start_command(
                shell_id, lambda status, _, state: exited.set_result((status, state))
            )
            assert await asyncio.wait_for(exited, 10) == (0, wire.EXITED)
            # the one taken back is still prepared: started now, it goes out now
            taken: asyncio.Future[int] = loop.create_future()
            process.submit(
                Request(f"{url}/taken-back"),
                lambda r, e: taken.set_result(r.code if r else -1),
                ids["taken-back"],
            )
            assert await asyncio.wait_for(taken, 10) == 200
            # every request went out once
            paths = sorted(path for path, _ in _Ok.arrivals)
            assert paths == ["/early", "/late", "/taken-back"]
        finally:
            close_shared()

    asyncio.run(main())


def test_an_armed_request_whose_instant_came_goes_out_though_it_waits_for_a_slot() -> None:
    async def main() -> None:
        server, port = await _server()
        process = shared(ActionSettings(http_max_clients=1))
        loop = asyncio.get_running_loop()
        try:
            await _running(process)
            at = int(time.time() * 1000) + 200
            slow = process.prepare(Request(f"http://127.0.0.1:{port}/slow?s=3"))
            waits = process.prepare(Request(f"http://127.0.0.1:{port}/slow?s=0"))
            process.arm(slow, at)
            process.arm(waits, at)
            # the instant came; the one slot is the slow one's for 3 s
            await asyncio.sleep(max(0.0, (at + 1000) / 1000 - time.time()))
            # taken back now, it answers that it went out: its firing is not lost
            assert await process.disarm(waits) is True
            ends: dict[int, asyncio.Future[int]] = {}
            for id_ in (slow, waits):
                ends[id_] = loop.create_future()
                process.submit(
                    Request("http://unused/"),
                    lambda r, e, f=ends[id_]: f.set_result(r.code if r else -1),
                    id_,
                )
            assert await asyncio.wait_for(ends[waits], 10) == 200
            assert await asyncio.wait_for(ends[slow], 10) == 200
        finally:
            close_shared()
            server.stop()

    asyncio.run(main())


def test_the_ends_of_an_armed_burst_come_after_it_together_and_progress_is_said_meanwhile(
    threaded_server: int,
) -> None:
    url = f"http://127.0.0.1:{threaded_server}"

    async def main() -> None:
        process = shared(ActionSettings(http_max_clients=8))
        loop = asyncio.get_running_loop()
        try:
            await _running(process)
            # an armed burst of 6: 2 answered at once, 4 held by the sink until let go
            at = int(time.time() * 1000) + 300
            paths = ["/quick"] * 2 + ["/gate"] * 4
            ids = [process.prepare(Request(f"{url}{path}")) for path in paths]
            for id_ in ids:
                process.arm(id_, at)
            # the quick ones' ends came there, held: only that more ended is said
            assert await wait_until_async(lambda: process.progress > 0, 10)
            # a request started from here meanwhile: its end is not held
            fetched = await asyncio.wait_for(process.fetch(Request(f"{url}/now")), 10)
            assert fetched.code == 200
            assert not any(process.has_end(id_) for id_ in ids)
            let_go_ms = int(time.time() * 1000)
            _Ok.gate.set()
            assert await wait_until_async(lambda: any(process.has_end(id_) for id_ in ids), 10)
            assert all(process.has_end(id_) for id_ in ids)  # all at once, after the burst
            went_out: list[tuple[int, int]] = []
            for id_ in ids:
                answer: asyncio.Future[int] = loop.create_future()
                process.submit(
                    Request("http://unused/"),
                    lambda r, e, f=answer: f.set_result(r.code if r else -1),
                    id_,
                    lambda started, ended: went_out.append((started, ended)),
                )
                assert await asyncio.wait_for(answer, 10) == 200
            assert len(went_out) == 6 and min(started for started, _ in went_out) >= at
            assert all(ended >= let_go_ms for _, ended in went_out[2:])
        finally:
            close_shared()

    asyncio.run(main())


def test_arms_give_their_due_ids_in_the_order_armed_without_those_taken_back() -> None:
    arms = Arms()
    for id_, at in [(1, 2000), (2, 1000), (3, 1000), (4, 3000), (5, 1000)]:
        arms.add(id_, at)
    assert arms.discard(3) and not arms.discard(3)
    assert arms.next_ms() == 1000
    assert arms.due(999, 10) == []
    assert arms.due(2000, 2) == [(2, 1000), (5, 1000)]
    assert arms.due(2000, 10) == [(1, 2000)]
    assert len(arms) == 1 and arms.next_ms() == 3000
    # an instant whose ids were all taken back is no instant to wake up for
    arms.add(6, 2500)
    arms.add(7, 2500)
    assert arms.next_ms() == 2500
    assert arms.discard(6) and arms.discard(7)
    assert arms.next_ms() == 3000 and arms.due(2600, 10) == []
    # armed again at another instant: it goes out there, once
    arms.add(4, 2700)
    assert arms.next_ms() == 2700 and arms.due(5000, 10) == [(4, 2700)]
    assert len(arms) == 0 and arms.next_ms() is None and arms.due(9000, 10) == []


def test_the_collector_runs_while_nothing_is_due_and_at_least_once_a_minute() -> None:
    ours, theirs = socket.socketpair()
    worker = Worker(theirs, 4, 4, 4)
    try:
        worker.collected_at = time.monotonic() - COLLECT_EVERY_S
        assert not worker._collected(0.05, False)  # an armed burst due in 50 ms
        assert not worker._collected(1.0, True)  # transfers run
        before = worker.collected_at
        assert worker._collected(1.0, False)  # idle
        assert worker.collected_at > before
        assert not worker._collected(1.0, False)  # (it just ran)
        # busy for a minute: it runs anyway
        worker.collected_at -= COLLECT_AT_LEAST_S
        assert worker._collected(0.0, True)
    finally:
        worker.shell.close()
        worker.http.multi.close()
        ours.close()
        theirs.close()


def test_the_firing_process_runs_without_automatic_collection() -> None:
    script = textwrap.dedent(
        """
        import gc, socket
        from forsun_box.firing.worker import main
        service, ours = socket.socketpair()
        service.close()  # (the service is gone: the loop ends at once)
        main([str(ours.fileno()), "4", "4", "4"])
        print("collecting" if gc.isenabled() else "not collecting")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "not collecting"


def test_armed_transfers_start_as_slots_free_and_their_ends_go_out_a_slots_worth_at_a_time(
    threaded_server: int,
) -> None:
    ends: list[tuple[object, ...]] = []
    slots = 32
    http = Http(slots, slots, ends.append)
    n = 640
    for i in range(n):
        http.prepare(i, to_wire(Request(f"http://127.0.0.1:{threaded_server}/r{i}")))
        http.arm(i, int(time.time() * 1000) - 1)
    http.drive()
    assert 0 < len(http.running) <= slots  # the first ones, in the free slots
    rounds = []
    deadline = time.monotonic() + 20
    while len(ends) < n and time.monotonic() < deadline:
        before = len(ends)
        http.multi.select(0.05)
        http.drive()
        rounds.append(len(ends) - before)
        assert len(http.running) <= slots
    assert sorted(end[0] for end in ends) == list(range(n))
    # each drive hands back once a slots' worth ended (the loop then sends them on)
    assert max(rounds) <= 2 * slots
    # ended armed: status, body, and when they started and ended there
    assert all(end[1] == 200 and end[2] == b"ok" and end[4] <= end[5] for end in ends)
    http.multi.close()


def _ends_unread(sock: socket.socket) -> int:
    try:
        data = sock.recv(1 << 20, socket.MSG_PEEK)
    except BlockingIOError:
        return 0
    return len(wire.unframe(bytearray(data)))


def test_ends_read_at_once_are_handed_on_a_turn_at_a_time(
    threaded_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_actions(ActionSettings())
    seconds = itertools.count()  # a second passes at every look at the clock
    monkeypatch.setattr(turns, "clock", lambda: float(next(seconds)))
    n = 50

    async def main() -> list[tuple[int, int]]:
        process = shared(ActionSettings())
        try:
            url = f"http://127.0.0.1:{threaded_server}/ok"
            turn = 0
            ended: list[tuple[int, int]] = []

            def on_done(response: Response | None, error: CurlError | None) -> None:
                ended.append((turn, response.code if response is not None else -1))

            for _ in range(n):
                process.submit(Request(url), on_done)
            await asyncio.sleep(0)  # (they go out at the end of a turn)
            # the loop held until every end waits on the socket: one read takes them all
            assert wait_until(lambda: _ends_unread(process._sock) >= n, 10)
            while len(ended) < n and turn < 10 * n:
                turn += 1
                await asyncio.sleep(0)
            return ended
        finally:
            close_shared()

    ended = asyncio.run(main())
    assert [code for _, code in ended] == [200] * n
    assert len({turn for turn, _ in ended}) == n  # one per turn: each report spent a turn


def test_ctrl_c_is_for_the_service_not_the_firing_process() -> None:
    configure_actions(ActionSettings())

    async def main() -> int:
        server, port = await _server()
        try:
            process = shared(ActionSettings())
            await process.fetch(Request(f"http://127.0.0.1:{port}/slow?s=0"))
            os.kill(process.pid, signal.SIGINT)
            answer = await process.fetch(Request(f"http://127.0.0.1:{port}/slow?s=0"))
            assert not process.closed
            return answer.code
        finally:
            server.stop()
            close_shared()

    assert asyncio.run(main()) == 200


def test_the_firing_process_ends_with_the_service(tmp_path: Path) -> None:
    # a service killed outright: its firing process sees the socket close and ends,
    # starting nothing it had armed
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from forsun_box.actions import ActionSettings
        from forsun_box.firing.client import shared

        async def main():
            process = shared(ActionSettings())
            at = int(sys.argv[1])
            process.arm(process.prepare_command(["/bin/sh", "-c", "touch armed"], {}, 0), at)
            await asyncio.sleep(0)  # (it goes out at the end of the turn)
            print(process.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    at = int(time.time() * 1000) + 30_000  # (the test ends long before it)
    service = subprocess.Popen(
        [sys.executable, "-c", script, str(at)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert service.stdout is not None
        worker = int(service.stdout.readline())
        assert not _gone(worker)
        service.kill()
        service.wait(10)
        assert wait_until(lambda: _gone(worker), 10)
        # gone before the instant: the armed command can never start
        assert time.time() * 1000 < at and not (tmp_path / "armed").exists()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)


def _shell(tmp_path: Path, key: str, cmd: str) -> ShellAction:
    params = {"cmd": cmd, "cwd": str(tmp_path)}
    return ShellAction(TS, Plan(key=key, kind="at", action="shell", params=params), "shell", params)


def test_commands_beyond_the_shell_limit_wait_their_turn(tmp_path: Path) -> None:
    configure_actions(ActionSettings(concurrency={"shell": 1}))
    log = tmp_path / "log"
    gate = tmp_path / "gate"

    async def main() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        ends: list[asyncio.Future[BaseException | None]] = []
        try:
            for i in range(3):
                # each waits for the gate file, so they overlap unless the limit holds
                cmd = f"echo start{i} >>log; while [ ! -e gate ]; do sleep 0.01; done; echo end{i} >>log"
                ready = _shell(tmp_path, f"k{i}", cmd).prepare()
                fut: asyncio.Future[BaseException | None] = loop.create_future()
                ready.start(fut.set_result)
                ends.append(fut)
            assert await wait_until_async(lambda: log.exists(), 10)
            await asyncio.sleep(0.3)  # a window for a wrong answer: the others must not start
            assert log.read_text().split() == ["start0"]
            gate.touch()
            return list(await asyncio.wait_for(asyncio.gather(*ends), 10))
        finally:
            close_shared()

    assert asyncio.run(main()) == [None, None, None]
    lines = log.read_text().split()
    assert lines == ["start0", "end0", "start1", "end1", "start2", "end2"]


def test_a_cancelled_command_has_its_process_group_killed(tmp_path: Path) -> None:
    configure_actions(ActionSettings())
    pid_file = tmp_path / "pid"

    async def main() -> None:
        try:
            # a child of the shell in the background: the group goes, not just the shell
            task = asyncio.ensure_future(
                _shell(tmp_path, "k", "sleep 60 & echo $! >pid; wait").execute()
            )
            assert await wait_until_async(lambda: pid_file.exists() and pid_file.read_text(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            close_shared()

    asyncio.run(main())
    assert wait_until(lambda: _gone(int(pid_file.read_text())), 10)


def test_a_command_that_cannot_start_says_why(tmp_path: Path) -> None:
    configure_actions(ActionSettings())

    async def main() -> BaseException | None:
        try:
            ready = _shell(tmp_path, "k", "true").prepare()
            os.environ["FORSUN_TEST_HUGE"] = "x" * (4 << 20)  # beyond what exec takes
            try:
                await asyncio.sleep(0)  # (the environment is read once per turn)
                ready.discard()
                ready = _shell(tmp_path, "k", "true").prepare()
            finally:
                del os.environ["FORSUN_TEST_HUGE"]
            fut: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
            ready.start(fut.set_result)
            return await asyncio.wait_for(fut, 10)
        finally:
            close_shared()

    error = asyncio.run(main())
    assert isinstance(error, ActionFailed) and str(error).startswith("cannot start /bin/sh: ")


class _Shells:
    """Firing processes' ``Shell``s in this process, and the ends they sent."""

    def __init__(self) -> None:
        self.made: list[Shell] = []
        self.ends: list[tuple[object, ...]] = []

    def make(self, spawn: Spawn) -> Shell:
        shell = Shell(4, self.ends.append, spawn=spawn)
        self.made.append(shell)
        return shell


@pytest.fixture
def shells() -> Iterator[_Shells]:
    """Shells made here, and their signal set-up undone after."""
    old_handler = signal.getsignal(signal.SIGCHLD)
    made = _Shells()
    try:
        yield made
    finally:
        for shell in made.made:
            shell.close()
            shell.kill_doomed()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, old_handler)


def _pump_until(shell: Shell, done: Callable[[], bool], timeout: float = 10) -> bool:
    """The firing process's loop, for a shell alone, until ``done()``."""

    def turn() -> bool:
        select.select([shell.wake_fd, shell.epoll.fileno()], [], [], 0.05)
        shell.reap()
        shell.read_pipes()
        shell.run_timers()
        shell.pump()
        return done()

    return wait_until(turn, timeout)


def test_a_command_that_exits_before_its_spawner_answers_is_reported(
    shells: _Shells,
) -> None:
    exited, reaped = threading.Event(), threading.Event()

    def spawn(command: CommandLine) -> tuple[int, int, int]:
        child = spawn_now(command)
        os.waitid(os.P_PID, child[0], os.WEXITED | os.WNOWAIT)  # exited, not collected
        exited.set()
        reaped.wait(10)  # the loop collects it before this answer arrives
        return child

    shell = shells.make(spawn)
    shell.prepare(7, (["/bin/sh", "-c", "echo oops >&2; exit 3"], {}, 0.0))
    shell.start(7)
    assert exited.wait(10)
    shell.reap()
    assert list(shell.exited.values()) == [3]
    reaped.set()
    assert _pump_until(shell, lambda: bool(shells.ends))
    assert shells.ends == [(7, 3, "oops", wire.EXITED)]
    assert not shell.exited and not shell.running and not shell.by_pid


def test_a_command_cancelled_while_it_spawns_is_killed_and_not_reported(
    shells: _Shells, tmp_path: Path
) -> None:
    entered, go = threading.Event(), threading.Event()
    pids: list[int] = []

    def spawn(command: CommandLine) -> tuple[int, int, int]:
        entered.set()
        go.wait(10)
        child = spawn_now(command)
        pids.append(child[0])
        return child

    shell = shells.make(spawn)
    shell.prepare(8, (["/bin/sh", "-c", "sleep 30"], {}, 0.0))
    shell.start(8)
    assert entered.wait(10)
    assert shell.cancel(8)
    go.set()
    assert _pump_until(shell, lambda: bool(pids) and not shell.spawning and not shell.orphans)
    assert _gone(pids[0])
    assert shells.ends == []
    assert not shell.running and not shell.by_pid and not shell.exited


def test_commands_spawn_beside_each_other(shells: _Shells) -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    def spawn(command: CommandLine) -> tuple[int, int, int]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            deadline = time.monotonic() + 2
            while most < min(SPAWN_THREADS, os.cpu_count() or 1) and time.monotonic() < deadline:
                time.sleep(0.001)
            return spawn_now(command)
        finally:
            with lock:
                inside -= 1

    shell = shells.make(spawn)
    for i in range(6):
        shell.prepare(i, (["/bin/sh", "-c", f"exit {i}"], {}, 0.0))
        shell.start(i)
    assert _pump_until(shell, lambda: len(shells.ends) == 6)
    assert sorted(e[:2] for e in shells.ends) == [(i, i) for i in range(6)]
    assert most == min(SPAWN_THREADS, os.cpu_count() or 1)


def test_a_spawn_that_raises_fails_its_command_and_the_next_still_runs(shells: _Shells) -> None:
    calls = 0

    def spawn(command: CommandLine) -> tuple[int, int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MemoryError("no room")
        return spawn_now(command)

    shell = shells.make(spawn)
    shell.prepare(1, (["/bin/sh", "-c", "exit 0"], {}, 0.0))
    shell.start(1)
    assert _pump_until(shell, lambda: len(shells.ends) == 1)
    shell.prepare(2, (["/bin/sh", "-c", "exit 5"], {}, 0.0))
    shell.start(2)
    assert _pump_until(shell, lambda: len(shells.ends) == 2)
    assert shells.ends == [
        (1, 0, "cannot start /bin/sh: no room", wire.NOT_STARTED),
        (2, 5, "", wire.EXITED),
    ]
