"""The firing process: its frames, its limits, its death and the service's.

Real processes throughout: the firing process the service starts, real commands, a
real loopback HTTP server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from forsun_box.actions import ActionFailed, ActionSettings, ShellAction, configure_actions
from forsun_box.firing import wire
from forsun_box.firing.client import close_shared, shared
from forsun_box.firing.curl import CurlError, Request
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
    # a service killed outright: its firing process sees the socket close and ends
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from forsun_box.actions import ActionSettings
        from forsun_box.firing.client import shared

        async def main():
            print(shared(ActionSettings()).pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    service = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert service.stdout is not None
        worker = int(service.stdout.readline())
        assert not _gone(worker)
        service.kill()
        service.wait(10)
        assert wait_until(lambda: _gone(worker), 10)
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
