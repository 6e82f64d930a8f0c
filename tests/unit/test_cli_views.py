"""The forsun client's views: forsun's one-line plan, its info lines, its error lines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forsun_box.cli import views
from forsun_box.cli.client import (
    COMMAND_ERROR,
    CONNECT_ERROR,
    PLAN_ERROR,
    UNKNOWN_COMMAND,
    CommandError,
)


def plan(**kw: object) -> SimpleNamespace:
    base = dict(
        key="k",
        is_time_out=False,
        second=-1,
        minute=-1,
        hour=-1,
        day=-1,
        month=-1,
        week=-1,
        count=0,
        current_count=0,
        status=0,
        next_time=0,
        last_timeout=0,
        action="shell",
        params={},
    )
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def test_calendar_plan_line_is_valid_set_input() -> None:
    p = plan(second=0, minute=32, hour=16, next_time=1_796_229_120, params={"cmd": "ls -l"})
    assert views.plan_line(p) == "2026-12-02 16:32:00+00:00 k 0 32 16 * * * shell \"cmd='ls -l'\""


def test_delay_plan_fields_as_forsun_writes_them() -> None:
    p = plan(is_time_out=True, second=5, minute=0, hour=0, day=0, month=0, week=-1, count=3)
    assert views.time_fields(p) == "*/5/3 * * * * *"
    # forsun writes a delay plan's -1 fields (missing in a v1 body) as numbers too
    p = plan(is_time_out=True, second=30, count=1)
    assert views.time_fields(p) == "*/30/1 */-1/1 */-1/1 */-1/1 */-1/1 *"


def test_params_always_single_quoted_in_double_quotes() -> None:
    p = plan(action="http", params={"url": "http://h/?a=1", "method": "post"})
    assert views.plan_line(p).endswith(" http \"url='http://h/?a=1';method='post'\"")


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("0", "0.00B"),
        ("1023", "1023.00B"),
        ("1536", "1.50K"),
        ("5000000", "4.77M"),
        ("3000000000000", "2.73G"),
    ],
)
def test_sizes_as_forsun_prints_them(raw: str, text: str) -> None:
    assert views.forsun_info({"mem_rss": raw})[5] == f"mem_rss:\t{text}"


def test_info_has_forsuns_keys_groups_and_local_current_time() -> None:
    lines = views.forsun_info({"current_time": "1796229120", "plan_count": "7", "extra": "x"})
    assert len(lines) == 43 and lines[8] == "" and lines[-1] == ""
    assert "current_time:\t2026-12-02 16:32:00+00:00" in lines
    assert "plan_count:\t7" in lines and not any(x.startswith("extra") for x in lines)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            CommandError("plan not found", PLAN_ERROR, 1003),
            "cmd ForsunPlanError:  1003 plan not found",
        ),
        (CommandError("frob", UNKNOWN_COMMAND), "Unknown cmd  frob"),
        (CommandError("usage: get KEY", COMMAND_ERROR), "cmd error:  usage: get KEY"),
        (CommandError("refused", CONNECT_ERROR), "connect forsun server fail:  refused"),
    ],
)
def test_error_lines_are_forsuns(error: CommandError, line: str) -> None:
    assert error.line(views.FORSUN) == line
    assert error.line(views.LONG).startswith("forsun: ")
    assert '"errcode"' in error.line(views.JSON)
