"""The redis, mysql and beanstalk actions against real servers (tests/servers.py).

Each test runs the action the way the dispatcher does (one instance per
firing, ``execute()`` awaited) and checks the effect on the server with an
independent client. Failures must come out as one clear line naming the
target, which is what the run history records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiomysql
import greenstalk
import pytest
import redis as redis_sync

from forsun_box.actions import ActionSettings
from forsun_box.actions.base import Action, ActionFailed, configure_actions
from forsun_box.actions.beanstalk import BeanstalkAction
from forsun_box.actions.mysql import MysqlAction
from forsun_box.actions.redis import RedisAction, split_commands
from forsun_box.clock import LoopClock
from forsun_box.dispatcher import RUN_FAILED, RUN_OK, RUN_WILL_RETRY, Dispatcher
from forsun_box.plan import Plan
from forsun_box.stats import Stats
from forsun_box.store.base import Run
from tests.helpers import free_port, wait_until_async

if TYPE_CHECKING:
    from tests.servers import ServerProcess

# the redis_server, mysql_server and beanstalk_server fixtures
pytest_plugins = ["tests.servers"]

TS = 1_700_000_123


pytestmark = pytest.mark.usefixtures("restore_action_settings")


def fire(cls: type[Action], params: dict[str, str], **settings: Any) -> None:
    """One firing of ``cls`` with ``params`` on a fresh loop (pools closed after)."""

    async def main() -> None:
        try:
            await _execute(cls, params)
        finally:
            await cls.close_shared()

    configure_actions(ActionSettings(**settings))
    asyncio.run(main())


async def _execute(cls: type[Action], params: dict[str, str], key: str = "k1") -> None:
    plan = Plan(key=key, kind="at", action=cls.__name__, params=params)
    await cls(TS, plan, plan.action, params).execute()


def fire_many(cls: type[Action], params: list[dict[str, str]], **settings: Any) -> list[Any]:
    """Concurrent firings; returns each one's exception or None."""

    async def main() -> list[Any]:
        try:
            return await asyncio.gather(
                *(_execute(cls, p, f"k{i}") for i, p in enumerate(params)),
                return_exceptions=True,
            )
        finally:
            await cls.close_shared()

    configure_actions(ActionSettings(**settings))
    return asyncio.run(main())


def closed_port() -> int:
    return free_port()  # nothing listens there


# -- redis --------------------------------------------------------------------------


def test_split_commands_follows_shell_quoting() -> None:
    assert split_commands("SET a 1;LPUSH q 'x y' ; INCR n;;") == [
        ["SET", "a", "1"],
        ["LPUSH", "q", "x y"],
        ["INCR", "n"],
    ]
    assert split_commands("SET k 'a;b'") == [["SET", "k", "a;b"]]
    assert split_commands("SET j '{\"id\": 1}'") == [["SET", "j", '{"id": 1}']]
    assert split_commands("  ") == []
    with pytest.raises(ActionFailed, match="command"):
        split_commands("SET k 'unbalanced")


def test_redis_runs_every_command_on_the_selected_db(redis_server: ServerProcess) -> None:
    r = redis_sync.Redis(port=redis_server.port, db=3)
    r.flushdb()
    fire(
        RedisAction,
        {
            "host": "127.0.0.1",
            "port": str(redis_server.port),
            "selected_db": "3",
            "command": "SET greeting 'hello world';RPUSH jobs a b;INCRBY n 5",
        },
    )
    assert r.get("greeting") == b"hello world"
    assert r.lrange("jobs", 0, -1) == [b"a", b"b"]
    assert r.get("n") == b"5"
    assert redis_sync.Redis(port=redis_server.port, db=0).get("greeting") is None


def test_redis_error_reply_fails_with_the_command_and_message(
    redis_server: ServerProcess,
) -> None:
    r = redis_sync.Redis(port=redis_server.port, db=4)
    r.set("text", "abc")
    with pytest.raises(ActionFailed) as e:
        fire(
            RedisAction,
            {
                "port": str(redis_server.port),
                "selected_db": "4",
                "command": "SET before 1;INCR text",
            },
        )
    text = str(e.value)
    assert f"redis 127.0.0.1:{redis_server.port}/4" in text
    assert "INCR failed" in text and "not an integer" in text


def test_redis_wrong_password_and_refused_connection_are_clear(
    redis_server: ServerProcess,
) -> None:
    admin = redis_sync.Redis(port=redis_server.port)
    admin.config_set("requirepass", "s3cret")
    try:
        with pytest.raises(ActionFailed, match=r"(?i)password|auth"):
            fire(
                RedisAction, {"port": str(redis_server.port), "password": "nope", "command": "PING"}
            )
        fire(
            RedisAction,
            {"port": str(redis_server.port), "password": "s3cret", "command": "SET authed yes"},
        )
    finally:
        redis_sync.Redis(port=redis_server.port, password="s3cret").config_set("requirepass", "")
    assert admin.get("authed") == b"yes"
    port = closed_port()
    with pytest.raises(ActionFailed, match=f"redis 127.0.0.1:{port}/0: .*(onnect|refused)"):
        fire(RedisAction, {"port": str(port), "command": "PING"}, server_connect_timeout=2)


def test_redis_run_timeout(redis_server: ServerProcess) -> None:
    started = time.monotonic()
    with pytest.raises(ActionFailed, match=r"timed out after 0\.3 s"):
        fire(
            RedisAction,
            {"port": str(redis_server.port), "command": "BLPOP empty-list 30", "timeout": "0.3"},
        )
    assert time.monotonic() - started < 10  # given up long before the answer


def test_redis_missing_command_and_bad_params() -> None:
    with pytest.raises(ActionFailed, match="missing param command"):
        fire(RedisAction, {"host": "127.0.0.1"})
    with pytest.raises(ActionFailed, match="invalid param port"):
        fire(RedisAction, {"port": "x", "command": "PING"})


def test_redis_pool_is_bounded_by_max_connections(redis_server: ServerProcess) -> None:
    """6 firings each blocking 0.25 s on 2 connections: they queue, none fails."""
    params = {
        "port": str(redis_server.port),
        "selected_db": "5",
        "max_connections": "2",
        "command": "BLPOP never-filled 0.25",
    }
    started = time.monotonic()
    results = fire_many(RedisAction, [params] * 6)
    elapsed = time.monotonic() - started
    assert results == [None] * 6
    assert elapsed >= 0.7  # 3 rounds of 0.25 s: never more than 2 at once


# -- mysql --------------------------------------------------------------------------


def mysql_query(server: ServerProcess, sql: str, db: str | None = None) -> list[Any]:
    async def main() -> list[Any]:
        conn = await aiomysql.connect(
            host="127.0.0.1", port=server.port, user="root", db=db, autocommit=True
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql)
                return list(await cur.fetchall())
        finally:
            conn.close()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def mysql_db(mysql_server: ServerProcess) -> ServerProcess:
    mysql_query(mysql_server, "CREATE DATABASE IF NOT EXISTS timers")
    mysql_query(
        mysql_server,
        "CREATE TABLE IF NOT EXISTS timers.fired "
        "(id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(100))",
    )
    return mysql_server


def test_mysql_statement_is_committed(mysql_db: ServerProcess) -> None:
    fire(
        MysqlAction,
        {
            "port": str(mysql_db.port),
            "db": "timers",
            "user": "root",
            "sql": "INSERT INTO fired (note) VALUES ('from a timer')",
        },
    )
    rows = mysql_query(mysql_db, "SELECT note FROM fired WHERE note = 'from a timer'", "timers")
    assert rows == [("from a timer",)]


def test_mysql_sql_error_is_clear_and_the_pool_keeps_working(mysql_db: ServerProcess) -> None:
    async def main() -> None:
        configure_actions(ActionSettings(mysql_max_connections=1))
        params = {"port": str(mysql_db.port), "db": "timers"}
        try:
            with pytest.raises(ActionFailed) as e:
                await _execute(MysqlAction, {**params, "sql": "INSERT INTO missing VALUES (1)"})
            assert "1146" in str(e.value) and "missing" in str(e.value)
            assert f"mysql root@127.0.0.1:{mysql_db.port}/timers" in str(e.value)
            # The only pooled connection is usable again after the failure.
            await _execute(
                MysqlAction, {**params, "sql": "INSERT INTO fired (note) VALUES ('after error')"}
            )
        finally:
            await MysqlAction.close_shared()

    asyncio.run(main())
    assert mysql_query(
        mysql_db, "SELECT count(*) FROM fired WHERE note = 'after error'", "timers"
    ) == [(1,)]


def test_mysql_refused_timeout_and_missing_sql(mysql_db: ServerProcess) -> None:
    port = closed_port()
    with pytest.raises(ActionFailed, match=f"mysql root@127.0.0.1:{port}/mysql: cannot connect"):
        fire(MysqlAction, {"port": str(port), "sql": "SELECT 1"}, server_connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(ActionFailed, match=r"timed out after 0\.3 s"):
        fire(MysqlAction, {"port": str(mysql_db.port), "sql": "SELECT SLEEP(30)", "timeout": "0.3"})
    assert time.monotonic() - started < 10  # given up long before the answer
    with pytest.raises(ActionFailed, match="missing param sql"):
        fire(MysqlAction, {"port": str(mysql_db.port)})


def test_mysql_pool_is_bounded_by_max_connections(mysql_db: ServerProcess) -> None:
    params = {"port": str(mysql_db.port), "max_connections": "2", "sql": "SELECT SLEEP(0.25)"}
    started = time.monotonic()
    results = fire_many(MysqlAction, [params] * 6)
    elapsed = time.monotonic() - started
    assert results == [None] * 6
    assert elapsed >= 0.7


# -- beanstalk ----------------------------------------------------------------------


def test_beanstalk_puts_the_body_into_the_tube(beanstalk_server: ServerProcess) -> None:
    fire(
        BeanstalkAction,
        {
            "port": str(beanstalk_server.port),
            "name": "timers",
            "body": '{"job": "ünïcode"}',
            "priority": "7",
            "ttr": "99",
        },
    )
    fire(BeanstalkAction, {"port": str(beanstalk_server.port), "body": "plain"})
    with greenstalk.Client(("127.0.0.1", beanstalk_server.port), watch="timers") as c:
        job = c.reserve(timeout=2)
        assert job.body == '{"job": "ünïcode"}'
        stats = c.stats_job(job)
        assert stats["pri"] == 7 and stats["ttr"] == 99 and stats["tube"] == "timers"
        c.delete(job)
    with greenstalk.Client(("127.0.0.1", beanstalk_server.port)) as c:
        job = c.reserve(timeout=2)
        assert job.body == "plain"
        c.delete(job)


def test_beanstalk_reuses_a_connection_across_tubes(beanstalk_server: ServerProcess) -> None:
    async def main() -> None:
        configure_actions(ActionSettings(beanstalk_max_connections=1))
        try:
            for tube in ("t1", "t2", "t1"):
                await _execute(
                    BeanstalkAction,
                    {"port": str(beanstalk_server.port), "name": tube, "body": tube},
                )
        finally:
            await BeanstalkAction.close_shared()

    asyncio.run(main())
    with greenstalk.Client(("127.0.0.1", beanstalk_server.port)) as c:
        assert c.stats_tube("t1")["current-jobs-ready"] == 2
        assert c.stats_tube("t2")["current-jobs-ready"] == 1
        assert c.stats()["total-connections"] >= 1
    for tube in ("t1", "t2"):
        with greenstalk.Client(("127.0.0.1", beanstalk_server.port), watch=tube) as c:
            while True:
                try:
                    c.delete(c.reserve(timeout=0))
                except greenstalk.TimedOutError:
                    break


def test_beanstalk_errors_are_clear(beanstalk_server: ServerProcess) -> None:
    port = closed_port()
    with pytest.raises(ActionFailed, match=f"beanstalk 127.0.0.1:{port}/default: .*refused"):
        fire(BeanstalkAction, {"port": str(port), "body": "x"})
    with pytest.raises(ActionFailed, match="missing param body"):
        fire(BeanstalkAction, {"port": str(beanstalk_server.port)})
    with pytest.raises(ActionFailed, match="invalid param name"):
        fire(BeanstalkAction, {"port": str(beanstalk_server.port), "name": "tübe", "body": "x"})
    with pytest.raises(ActionFailed, match=r"BadFormat|JobTooBig|invalid"):
        # beanstalkd refuses a job bigger than its max-job-size (65535 by default)
        fire(BeanstalkAction, {"port": str(beanstalk_server.port), "body": "x" * 70_000})


def test_beanstalk_connections_are_bounded_by_max_connections(
    beanstalk_server: ServerProcess,
) -> None:
    address = ("127.0.0.1", beanstalk_server.port)
    with greenstalk.Client(address) as c:
        before = c.stats()["total-connections"]
    params = [
        {
            "port": str(beanstalk_server.port),
            "name": "bounded",
            "body": str(i),
            "max_connections": "3",
        }
        for i in range(30)
    ]
    assert fire_many(BeanstalkAction, params) == [None] * 30
    with greenstalk.Client(address, watch="bounded") as c:
        assert c.stats_tube("bounded")["current-jobs-ready"] == 30
        # 30 concurrent firings shared at most 3 connections (+1: this client)
        assert c.stats()["total-connections"] - before <= 3 + 1
        for _ in range(30):
            c.delete(c.reserve(timeout=1))


# -- retries and run history with a real server ----------------------------------------


def run_dispatcher(
    plan: Plan, between: Callable[[], Awaitable[None]] | None = None, **settings: Any
) -> tuple[int, list[Run], list[tuple[str, int, int]], Stats]:
    """Fire ``plan`` once through a real Dispatcher; wait for its retries to settle."""
    runs: list[Run] = []
    statuses: list[tuple[str, int, int]] = []
    stats = Stats()

    async def main() -> int:
        dispatcher = Dispatcher(
            ActionSettings(**settings),
            LoopClock(),
            runs.append,
            lambda k, v, s: statuses.append((k, v, s)),
            stats,
        )
        first = await dispatcher.run(plan, int(time.time() * 1000))
        if between is not None:
            await between()

        def settled() -> bool:
            return not (dispatcher.pending_retries or dispatcher.active)

        assert await wait_until_async(settled, 60)
        await dispatcher.close()
        return first

    first = asyncio.run(main())
    return first, runs, statuses, stats


def test_failed_firings_are_retried_and_every_attempt_recorded(
    redis_server: ServerProcess,
) -> None:
    port = closed_port()
    plan = Plan(
        key="down", kind="at", action="redis", params={"port": str(port), "command": "PING"}
    )
    first, runs, statuses, stats = run_dispatcher(
        plan, retry_max_count=2, retry_delay_seconds=0.05, server_connect_timeout=2
    )
    assert first == -1
    assert [(r.attempt, r.result) for r in runs] == [
        (1, RUN_WILL_RETRY),
        (2, RUN_WILL_RETRY),
        (3, RUN_FAILED),
    ]
    assert all(f"redis 127.0.0.1:{port}/0" in r.error for r in runs)
    assert all(r.duration_ms >= 0 and r.action == "redis" for r in runs)
    assert statuses == [("down", 0, -1)]
    assert stats.action_retried_count == 2
    assert stats.action_executed_count == 3 and stats.action_executed_error_count == 3


def test_a_retry_succeeds_once_the_target_is_ready(redis_server: ServerProcess) -> None:
    r = redis_sync.Redis(port=redis_server.port, db=6)
    r.delete("later")
    plan = Plan(
        key="later",
        kind="at",
        action="redis",
        version=3,
        params={"port": str(redis_server.port), "selected_db": "6", "command": "LSET later 0 done"},
    )

    async def make_ready() -> None:
        r.rpush("later", "pending")

    first, runs, statuses, stats = run_dispatcher(
        plan, make_ready, retry_max_count=3, retry_delay_seconds=0.1
    )
    assert first == -1
    assert [(x.attempt, x.result) for x in runs] == [(1, RUN_WILL_RETRY), (2, RUN_OK)]
    assert "no such key" in runs[0].error and runs[1].error == ""
    assert statuses == [("later", 3, 1)]
    assert stats.action_retried_count == 1
    assert r.lrange("later", 0, -1) == [b"done"]
