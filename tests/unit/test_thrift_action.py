"""The ``thrift`` action against a real Thrift server the tests start: the
generated Processor served by thrift's own threaded server. (forsun-box
firing a plan at such a target: tests/integration/test_thrift.py.)"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from thrift.protocol import TBinaryProtocol
from thrift.server import TServer
from thrift.transport import TSocket, TTransport

from forsun_box.actions import ActionFailed, get_action
from forsun_box.actions.thrift import ThriftAction, close_pools
from forsun_box.plan import Plan
from forsun_box.thrift.forsun import Forsun

TS = 1_700_000_123


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


class Target:
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
                        time.sleep(handler.delay_s)
                    if handler.fail:
                        raise RuntimeError("target refuses")
                    with handler.lock:
                        handler.calls.append((key, ts, params))
                finally:
                    with handler.lock:
                        handler.active -= 1

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
        assert wait_until(self._listening, 5)

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
        try:  # wake the blocked accept()
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.server.serverTransport.close()


@pytest.fixture()
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


def fire(params: dict[str, str], key: str = "k1", ts: int = TS) -> None:
    async def run() -> None:
        try:
            await ThriftAction(ts, Plan(key=key, kind="at", action="thrift", params=params),
                               "thrift", params).execute()
        finally:
            close_pools()

    asyncio.run(run())


def test_registered() -> None:
    assert get_action("thrift") is ThriftAction


def test_calls_forsun_call_with_key_ts_and_params(target: Target) -> None:
    params = {"host": "127.0.0.1", "port": str(target.port), "extra": "x;y=z"}
    fire(params, key="plan-7")
    assert target.calls == [("plan-7", TS, params)]


def test_connections_bounded_and_reused(target: Target) -> None:
    target.delay_s = 0.05
    params = {"host": "127.0.0.1", "port": str(target.port), "max_connections": "2"}

    async def run() -> None:
        plan = Plan(key="many", kind="at", action="thrift", params=params)
        try:
            await asyncio.gather(*(ThriftAction(TS + i, plan, "thrift", params).execute()
                                   for i in range(10)))
        finally:
            close_pools()

    asyncio.run(run())
    assert sorted(ts for _, ts, _ in target.calls) == [TS + i for i in range(10)]
    assert target.max_active == 2


def test_missing_host_fails() -> None:
    with pytest.raises(ActionFailed, match="host"):
        fire({"port": "1"})


@pytest.mark.parametrize("port", ["x", "0", "70000"])
def test_bad_port_fails(port: str) -> None:
    with pytest.raises(ActionFailed, match="port"):
        fire({"host": "127.0.0.1", "port": port})


def test_unreachable_target_fails() -> None:
    with pytest.raises(ActionFailed, match="cannot connect"):
        fire({"host": "127.0.0.1", "port": str(free_port())})


def test_exception_from_target_fails(target: Target) -> None:
    target.fail = True
    with pytest.raises(ActionFailed):
        fire({"host": "127.0.0.1", "port": str(target.port)})


def test_slow_target_times_out(target: Target) -> None:
    target.delay_s = 2
    t0 = time.monotonic()
    with pytest.raises(ActionFailed, match="no answer"):
        fire({"host": "127.0.0.1", "port": str(target.port), "request_timeout": "0.3"})
    assert time.monotonic() - t0 < 1.5
