"""The ``thrift`` action against a real Thrift server the tests start: the
generated Processor served by thrift's own threaded server. (forsun-box
firing a plan at such a target: tests/integration/test_thrift.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from forsun_box.actions import ActionFailed, get_action
from forsun_box.actions.thrift import ThriftAction, close_pools
from forsun_box.plan import Plan
from tests.helpers import ThriftTarget, free_port

TS = 1_700_000_123


@pytest.fixture
def target() -> Iterator[ThriftTarget]:
    t = ThriftTarget()
    yield t
    t.close()


def fire(params: dict[str, str], key: str = "k1", ts: int = TS) -> None:
    async def run() -> None:
        try:
            await ThriftAction(
                ts, Plan(key=key, kind="at", action="thrift", params=params), "thrift", params
            ).execute()
        finally:
            close_pools()

    asyncio.run(run())


def test_registered() -> None:
    assert get_action("thrift") is ThriftAction


def test_calls_forsun_call_with_key_ts_and_params(target: ThriftTarget) -> None:
    params = {"host": "127.0.0.1", "port": str(target.port), "extra": "x;y=z"}
    fire(params, key="plan-7")
    assert target.calls == [("plan-7", TS, params)]


def test_connections_bounded_and_reused(target: ThriftTarget) -> None:
    target.delay_s = 0.05
    params = {"host": "127.0.0.1", "port": str(target.port), "max_connections": "2"}

    async def run() -> None:
        plan = Plan(key="many", kind="at", action="thrift", params=params)
        try:
            await asyncio.gather(
                *(ThriftAction(TS + i, plan, "thrift", params).execute() for i in range(10))
            )
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


def test_exception_from_target_fails(target: ThriftTarget) -> None:
    target.fail = True
    with pytest.raises(ActionFailed):
        fire({"host": "127.0.0.1", "port": str(target.port)})


def test_slow_target_times_out(target: ThriftTarget) -> None:
    target.delay_s = 10
    t0 = time.monotonic()
    with pytest.raises(ActionFailed, match="no answer"):
        fire({"host": "127.0.0.1", "port": str(target.port), "request_timeout": "0.3"})
    assert time.monotonic() - t0 < 5  # given up long before the answer
