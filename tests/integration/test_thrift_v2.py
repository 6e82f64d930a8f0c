"""forsun-box's additions to the Thrift API (pause, resume, fire, getRuns,
preview, createCron, createAt) against a real forsun-box process, through the
client generated from the IDL."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from forsun_box.thrift.forsun import Forsun
from forsun_box.thrift.forsun.ttypes import ForsunPlan, ForsunPlanError, ForsunRun
from tests.helpers import Server, thrift_client, wait_until

DAY_MS = 86_400_000


connect = thrift_client


@pytest.fixture
def client(server: Server) -> Iterator[Forsun.Client]:
    with connect(server.thrift_port) as c:
        yield c


def error_code(fn: Callable[..., Any], *args: Any) -> int:
    with pytest.raises(ForsunPlanError) as info:
        fn(*args)
    return int(info.value.code)


def hourly(c: Forsun.Client, key: str) -> ForsunPlan:
    return c.createTimeout(key, 0, 0, 1, 0, 0, 0, 0, "shell", {"cmd": "true"})


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- pause / resume


def test_pause_and_resume_round_trip(client: Forsun.Client) -> None:
    created = hourly(client, "v2-pause")
    paused = client.pause("v2-pause")
    assert paused.key == "v2-pause" and paused.is_time_out
    assert client.pause("v2-pause").key == "v2-pause"  # pausing twice is harmless
    resumed = client.resume("v2-pause")
    assert resumed.key == "v2-pause"
    # resumed from the next occurrence after now: an hour ahead, as created
    assert abs(resumed.next_time - created.next_time) <= 2
    assert client.get("v2-pause").key == "v2-pause"


def test_paused_plan_is_reported_paused_by_v2(client: Forsun.Client, server: Server) -> None:
    hourly(client, "v2-paused-flag")
    client.pause("v2-paused-flag")
    status, body = server.call("GET", "/v2/plans/v2-paused-flag")
    assert status == 200 and body["paused"] is True
    client.resume("v2-paused-flag")
    status, body = server.call("GET", "/v2/plans/v2-paused-flag")
    assert status == 200 and body["paused"] is False


def test_pause_resume_unknown_and_empty_keys(client: Forsun.Client) -> None:
    assert error_code(client.pause, "v2-nope") == 1003
    assert error_code(client.resume, "v2-nope") == 1003
    assert error_code(client.pause, "") == 1007
    assert error_code(client.resume, "") == 1007


# ---------------------------------------------------------------- fire / runs


def test_fire_runs_now_and_records_a_run(client: Forsun.Client) -> None:
    hourly(client, "v2-fire")
    before = now_ms()
    assert client.fire("v2-fire") == 1  # ok
    assert wait_until(lambda: len(client.getRuns("v2-fire", 10)) >= 1, 10)
    runs = client.getRuns("v2-fire", 10)
    run = runs[0]
    assert isinstance(run, ForsunRun)
    assert run.result == 1 and run.attempt == 1 and run.error == ""
    assert before - 1000 <= run.due_ms <= now_ms() and run.started_ms >= run.due_ms
    assert run.duration_ms >= 0
    # firing does not touch the schedule
    assert client.get("v2-fire").current_count == 0


def test_fire_failing_action_records_its_error(client: Forsun.Client) -> None:
    client.createTimeout("v2-fail", 0, 0, 1, 0, 0, 0, 0, "shell", {"cmd": "exit 3"})
    assert client.fire("v2-fail") == -1  # failed
    assert wait_until(lambda: len(client.getRuns("v2-fail", 10)) >= 1, 10)
    run = client.getRuns("v2-fail", 10)[0]
    assert run.result == -1 and run.error.startswith("exit status 3")  # no retry configured


def test_get_runs_limit_newest_first(client: Forsun.Client) -> None:
    hourly(client, "v2-many")
    for _ in range(3):
        client.fire("v2-many")
    assert wait_until(lambda: len(client.getRuns("v2-many", 10)) >= 3, 10)
    assert len(client.getRuns("v2-many", 2)) == 2
    runs = client.getRuns("v2-many", 0)  # 0: the default limit
    assert len(runs) == 3
    assert [r.started_ms for r in runs] == sorted((r.started_ms for r in runs), reverse=True)


def test_fire_and_runs_errors(client: Forsun.Client) -> None:
    assert error_code(client.fire, "v2-nope") == 1003
    assert error_code(client.fire, "") == 1007
    assert error_code(client.getRuns, "", 5) == 1007
    assert client.getRuns("v2-nope", 5) == []  # history outlives plans: no error
    hourly(client, "v2-no-runs")
    assert client.getRuns("v2-no-runs", 5) == []


# ---------------------------------------------------------------- preview


def test_preview_delay_plan_honours_count(client: Forsun.Client) -> None:
    plan = client.createTimeout("v2-prev", 10, 0, 0, 0, 0, 0, 3, "shell", {"cmd": "true"})
    times = client.preview("v2-prev", 10)
    assert len(times) == 3  # count 3: no more than three firings
    assert times[0] // 1000 == plan.next_time
    assert [b - a for a, b in itertools.pairwise(times)] == [10_000, 10_000]
    assert client.preview("v2-prev", 2) == times[:2]
    assert len(client.preview("v2-prev", 0)) == 3  # 0: the default (5), capped by count


def test_preview_errors(client: Forsun.Client) -> None:
    assert error_code(client.preview, "v2-nope", 5) == 1003
    assert error_code(client.preview, "", 5) == 1007


# ---------------------------------------------------------------- createCron


def test_create_cron_plan(client: Forsun.Client, server: Server) -> None:
    plan = client.createCron("v2-cron", "*/15 * * * *", "shell", {"cmd": "true"}, "UTC", 0)
    assert plan.key == "v2-cron" and not plan.is_time_out
    assert plan.action == "shell" and plan.params == {"cmd": "true"}
    times = client.preview("v2-cron", 4)
    assert len(times) == 4
    assert all(t % (15 * 60_000) == 0 for t in times)
    assert [b - a for a, b in itertools.pairwise(times)] == [15 * 60_000] * 3
    assert plan.next_time == times[0] // 1000
    status, body = server.call("GET", "/v2/plans/v2-cron")
    assert status == 200
    assert body["schedule"]["kind"] == "cron" and body["timezone"] == "UTC"
    # read in forsun's shape: second 0, minute -2 (a step forsun cannot say), the rest any;
    # not -1 everywhere, which reads as "every second"
    fields = (plan.second, plan.minute, plan.hour, plan.day, plan.month, plan.week, plan.count)
    assert fields == (0, -2, -1, -1, -1, -1, 0)
    got = server.ok("GET", "/v1/plan?key=v2-cron")
    assert [got[f] for f in ("second", "minute", "hour", "count")] == [0, -2, -1, 0]
    client.createCron("v2-cron-9", "0 9 * * *", "shell", {"cmd": "true"}, "", 3)
    daily = client.get("v2-cron-9")
    assert (daily.second, daily.minute, daily.hour, daily.day, daily.count) == (0, 0, 9, -1, 3)


def test_create_cron_in_a_zone_with_count(client: Forsun.Client) -> None:
    client.createCron("v2-cron-ny", "0 9 * * *", "shell", {"cmd": "true"}, "America/New_York", 2)
    times = client.preview("v2-cron-ny", 5)
    assert len(times) == 2  # count 2
    for t in times:
        local = datetime.fromtimestamp(t / 1000, ZoneInfo("America/New_York"))
        assert (local.hour, local.minute, local.second) == (9, 0, 0)


def test_create_cron_replaces_same_key(client: Forsun.Client) -> None:
    client.createCron("v2-cron-r", "0 * * * *", "shell", {"cmd": "true"}, "", 0)
    client.createCron("v2-cron-r", "30 * * * *", "shell", {"cmd": "true"}, "", 0)
    t = client.preview("v2-cron-r", 1)[0]
    assert (t // 60_000) % 60 == 30


def test_create_cron_errors(client: Forsun.Client) -> None:
    assert error_code(client.createCron, "e", "not a cron", "shell", {}, "", 0) == 1008
    assert error_code(client.createCron, "e", "", "shell", {}, "", 0) == 1007
    assert error_code(client.createCron, "e", "* * * * *", "nope-action", {}, "", 0) == 1006
    assert error_code(client.createCron, "e", "* * * * *", "shell", {}, "Mars/Olympus", 0) == 1008
    with pytest.raises(ForsunPlanError):
        client.get("e")


# ---------------------------------------------------------------- createAt


def test_create_at_plan_with_milliseconds(client: Forsun.Client, server: Server) -> None:
    at = now_ms() + DAY_MS + 250
    plan = client.createAt("v2-at", at, "shell", {"cmd": "true"})
    assert plan.key == "v2-at" and plan.next_time == at // 1000
    assert client.preview("v2-at", 5) == [at]  # one firing, to the millisecond
    status, body = server.call("GET", "/v2/plans/v2-at")
    assert status == 200 and body["schedule"]["kind"] == "at"
    # read in forsun's shape: the instant's fields in the server's zone, fired once
    local = time.localtime(at // 1000)
    for got in (client.get("v2-at"), server.ok("GET", "/v1/plan?key=v2-at")):
        get = got.get if isinstance(got, dict) else lambda f, g=got: getattr(g, f)
        assert [get(f) for f in ("second", "minute", "hour", "day", "month", "week")] == [
            local.tm_sec,
            local.tm_min,
            local.tm_hour,
            local.tm_mday,
            local.tm_mon,
            -1,
        ]
        assert get("count") == 1


def test_create_at_fires(client: Forsun.Client) -> None:
    at = now_ms() + 3000  # soon, yet surely still ahead when the call lands
    client.createAt("v2-at-soon", at, "shell", {"cmd": "true"})
    assert wait_until(lambda: len(client.getRuns("v2-at-soon", 5)) >= 1, 30)
    run = client.getRuns("v2-at-soon", 5)[0]  # the finished one-shot keeps its history
    assert run.due_ms == at and run.result == 1
    assert wait_until(lambda: "v2-at-soon" not in client.getKeys("v2-at-soon"), 30)


def test_create_at_errors(client: Forsun.Client) -> None:
    assert error_code(client.createAt, "e2", now_ms() - DAY_MS, "shell", {"cmd": "x"}) == 1002
    assert error_code(client.createAt, "e2", now_ms() + DAY_MS, "nope-action", {}) == 1006
    with pytest.raises(ForsunPlanError):
        client.get("e2")


def test_old_methods_still_answer_on_the_same_connection(client: Forsun.Client) -> None:
    assert client.ping() == 0
    hourly(client, "v2-mixed")
    client.pause("v2-mixed")
    assert "v2-mixed" in client.getKeys("v2-mixed")
    assert client.remove("v2-mixed").key == "v2-mixed"
