"""Shared test helpers: free ports, a real server process, a tiny HTTP client and sink."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    ctype: str | None = "application/json",
    raw: bytes | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON body or raw text)."""
    data = raw
    if data is None and body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        # ctype None: send no media type (urllib would otherwise add a form type)
        req.add_header("Content-Type", ctype or "")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode(errors="replace")


class Server:
    """forsun-box run as a real process on free loopback ports."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = list(extra)
        self.http_port = free_port()
        self.thrift_port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "forsun_box",
            "serve",
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.thrift_port),
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "INFO",
            *self.extra,
        ]

    def start(self, wait: bool = True) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, body = call(self.http_port, "GET", "/v1/ping", timeout=1)
            except OSError:
                return False
            return status == 200 and body["errcode"] == 0

        if wait_until(ready, timeout, interval=0.05):
            return
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return call(self.http_port, method, path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, reply = self.call(method, path, body, **kw)
        assert status == 200, (status, reply)
        assert reply["errcode"] == 0, reply
        return reply["data"]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("server did not stop within the timeout") from None
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class Sink:
    """A local HTTP server recording (arrival ms, path, headers) of every request."""

    def __init__(self) -> None:
        self.hits: list[tuple[int, str, dict[str, str]]] = []
        self.cond = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _hit(self) -> None:
                now = time.time_ns() // 1_000_000
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with sink.cond:
                    sink.hits.append((now, self.path, dict(self.headers)))
                    sink.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = do_PUT = do_DELETE = _hit

            def log_message(self, *args: Any) -> None:
                pass

        class Listener(http.server.ThreadingHTTPServer):
            # the default backlog of 5 drops SYNs under a burst of firings (retried 1 s,
            # 3 s later), which would show as lateness of the server under test
            request_queue_size = 1024
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (crash tests) is expected

        self.server = Listener(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, n: int, timeout: float) -> list[tuple[int, str, dict[str, str]]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.hits) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.hits)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def whole_module_selected(request: pytest.FixtureRequest) -> bool:
    """Whether every test of the requesting module is in this session's selection.

    A test that checks what the rest of its module did (it runs last, in file
    order) decides by this, never by what happened to run before it.
    """
    module = request.module
    defined = {name for name in vars(module) if name.startswith("test_")}
    selected = {
        item.originalname
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is module
    }
    return defined <= selected


def wait_until(pred: Callable[..., T], timeout: float, interval: float = 0.02) -> T:
    """Poll ``pred`` until it gives a true value or ``timeout`` s pass; its last value.

    The one way a test waits on a condition (``assert wait_until(...)``); its
    twin for a coroutine is ``wait_until_async``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


async def wait_until_async(
    pred: Callable[..., Awaitable[T] | T], timeout: float, interval: float = 0.02
) -> T:
    """``wait_until`` inside an event loop: ``pred`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() >= deadline:
            return value  # type: ignore[return-value]
        await asyncio.sleep(interval)


@contextmanager
def thrift_client(port: int, strict: bool = True, timeout_ms: int = 10_000) -> Iterator[Any]:
    """forsun's generated client over TSocket + TBufferedTransport + TBinaryProtocol."""
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport

    from forsun_box.thrift.forsun import Forsun

    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(timeout_ms)
    transport = TTransport.TBufferedTransport(sock)
    protocol = TBinaryProtocol.TBinaryProtocol(transport, strictWrite=strict)
    transport.open()
    try:
        yield Forsun.Client(protocol)
    finally:
        transport.close()


class ThriftTarget:
    """forsun_call recorder served by thrift's blocking TThreadedServer."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[str, int, dict[str, str]]] = []
        self.delay_s = delay_s
        self.fail = fail
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.port = free_port()
        handler = self

        class Handler:
            def forsun_call(self, key: str, ts: int, params: dict[str, str]) -> None:
                with handler.lock:
                    handler.active += 1
                    handler.max_active = max(handler.max_active, handler.active)
                try:
                    if handler.delay_s:
                        time.sleep(handler.delay_s)  # a slow target
                    if handler.fail:
                        raise RuntimeError("target refuses")
                    with handler.lock:
                        handler.calls.append((key, ts, params))
                finally:
                    with handler.lock:
                        handler.active -= 1

        from thrift.protocol import TBinaryProtocol
        from thrift.server import TServer
        from thrift.transport import TSocket, TTransport

        from forsun_box.thrift.forsun import Forsun

        self.server = TServer.TThreadedServer(
            Forsun.Processor(Handler()),
            TSocket.TServerSocket("127.0.0.1", self.port),
            TTransport.TBufferedTransportFactory(),
            TBinaryProtocol.TBinaryProtocolFactory(),
            daemon=True,
        )
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert wait_until(self._listening, 30)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def _serve(self) -> None:
        # thrift's own serve() loops for ever once its socket is closed: accept here
        transport = self.server.serverTransport
        transport.listen()
        while True:
            try:
                client = transport.accept()
            except Exception:
                return
            if self.closed:
                client.close()
                return
            threading.Thread(target=self.server.handle, args=(client,), daemon=True).start()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):  # wake the blocked accept()
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self.server.serverTransport.close()
