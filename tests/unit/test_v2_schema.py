"""v2 wire shapes: instants, every schedule kind, zones and bounds, preview."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from forsun_box import errors
from forsun_box.api.formats import v2_schema
from forsun_box.api.formats.v2_schema import build_v2_plan, format_instant, parse_instant
from forsun_box.plan import Limits
from forsun_box.store.base import Run

UTCZ = ZoneInfo("UTC")
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ACTIONS = frozenset({"shell", "http"})


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def build(obj, key=None, now=NOW, tz=UTCZ):
    return build_v2_plan(
        obj, key=key, now_ms=now, default_tz=tz, known_actions=ACTIONS, limits=Limits()
    )


def test_instants_iso_with_ms_offsets_and_unix_ms() -> None:
    assert parse_instant("2026-01-01T00:00:00.123Z", "t", UTCZ) == NOW + 123
    assert parse_instant("2026-01-01T01:00:00.5+01:00", "t", UTCZ) == NOW + 500
    assert parse_instant(NOW + 7, "t", UTCZ) == NOW + 7
    assert parse_instant(str(NOW), "t", UTCZ) == NOW
    # no offset: wall time in the given zone
    assert parse_instant("2026-01-01T01:00:00", "t", ZoneInfo("Europe/Paris")) == NOW
    assert format_instant(NOW + 45) == "2026-01-01T00:00:00.045Z"
    assert format_instant(None) is None
    for bad in ("yesterday", True, None, -5, 1.5, [1]):
        with pytest.raises(errors.InvalidValue):
            parse_instant(bad, "t", UTCZ)


def test_delay_kind_interval_in_ms_and_count() -> None:
    p = build({"key": "d", "schedule": {"kind": "delay", "interval_ms": 1500, "count": 3}})
    assert p.kind == "delay" and p.interval_ms == 1500
    assert p.upcoming(10, UTCZ) == [NOW + 1500, NOW + 3000, NOW + 4500]
    out = v2_schema.plan_to_v2(p)
    assert out["schedule"] == {"kind": "delay", "interval_ms": 1500, "count": 3}
    assert out["next_time"] == "2026-01-01T00:00:01.500Z" and out["next_time_ms"] == NOW + 1500


def test_delay_with_start_fires_at_start_then_every_interval() -> None:
    p = build(
        {
            "key": "d",
            "start": NOW + 60_000,
            "schedule": {"kind": "delay", "interval_ms": 1000, "count": 2},
        }
    )
    assert p.upcoming(5, UTCZ) == [NOW + 60_000, NOW + 61_000]


def test_calendar_kind_uses_forsun_fields_in_the_plan_zone() -> None:
    p = build(
        {
            "key": "c",
            "timezone": "Asia/Tokyo",
            "schedule": {"kind": "calendar", "second": 0, "minute": 30, "hour": 9},
        }
    )
    # 09:30 Tokyo = 00:30 UTC
    assert p.next_time == NOW + 30 * 60_000
    assert v2_schema.plan_to_v2(p)["timezone"] == "Asia/Tokyo"


def test_cron_kind_five_and_six_fields() -> None:
    five = build({"key": "c5", "schedule": {"kind": "cron", "expr": "*/15 * * * *"}})
    assert five.upcoming(3, UTCZ) == [NOW + 900_000, NOW + 1_800_000, NOW + 2_700_000]
    six = build({"key": "c6", "schedule": {"kind": "cron", "expr": "*/10 * * * * *", "count": 2}})
    assert six.upcoming(5, UTCZ) == [NOW + 10_000, NOW + 20_000]


def test_at_kind_single_instant_with_ms() -> None:
    p = build({"key": "a", "schedule": {"kind": "at", "at": "2026-01-01T00:00:05.250Z"}})
    assert p.upcoming(3, UTCZ) == [NOW + 5250]
    assert v2_schema.plan_to_v2(p)["schedule"] == {
        "kind": "at",
        "at": "2026-01-01T00:00:05.250Z",
        "at_ms": NOW + 5250,
    }
    with pytest.raises(errors.TimeNeverArrives):
        build({"key": "a", "schedule": {"kind": "at", "at": NOW - 1}})


def test_start_and_end_bound_cron_firings() -> None:
    p = build(
        {
            "key": "b",
            "start": "2026-01-01T10:00:00Z",
            "end": "2026-01-01T12:00:00Z",
            "schedule": {"kind": "cron", "expr": "0 * * * *"},
        }
    )
    assert [format_instant(t) for t in p.upcoming(10, UTCZ)] == [
        "2026-01-01T10:00:00.000Z",
        "2026-01-01T11:00:00.000Z",
    ]
    with pytest.raises(errors.TimeNeverArrives):
        build({"key": "b", "end": NOW + 1000, "schedule": {"kind": "cron", "expr": "0 * * * *"}})


def test_dst_spring_forward_new_york_skipped_hour_fires_after_the_jump() -> None:
    # 2026-03-08 02:30 does not exist in New York: fires at 03:00 EDT (07:00Z).
    now = ms("2026-03-07T12:00:00+00:00")
    p = build(
        {
            "key": "ny",
            "timezone": "America/New_York",
            "schedule": {"kind": "cron", "expr": "30 2 * * *"},
        },
        now=now,
    )
    fires = p.upcoming(2, UTCZ)
    assert format_instant(fires[0]) == "2026-03-08T07:00:00.000Z"
    assert format_instant(fires[1]) == "2026-03-09T06:30:00.000Z"


def test_dst_fall_back_berlin_repeated_hour_fires_once() -> None:
    # 2026-10-25 02:30 happens twice in Berlin: fires at the first (00:30Z) only.
    now = ms("2026-10-24T12:00:00+00:00")
    p = build(
        {
            "key": "be",
            "timezone": "Europe/Berlin",
            "schedule": {"kind": "calendar", "second": 0, "minute": 30, "hour": 2},
        },
        now=now,
    )
    fires = [format_instant(t) for t in p.upcoming(2, UTCZ)]
    assert fires == ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]


def test_validation_errors() -> None:
    cases = [
        ({"schedule": {"kind": "cron", "expr": "* * * * *"}}, errors.MissingArgument),
        ({"key": "x"}, errors.MissingArgument),
        ({"key": "x", "schedule": {"kind": "weekly"}}, errors.InvalidValue),
        ({"key": "x", "schedule": {"kind": "delay"}}, errors.InvalidValue),
        (
            {"key": "x", "schedule": {"kind": "delay", "interval_ms": 5, "cron": "x"}},
            errors.InvalidValue,
        ),
        ({"key": "x", "schedule": {"kind": "cron", "expr": "61 * * * *"}}, errors.InvalidValue),
        ({"key": "x", "schedule": {"kind": "cron"}}, errors.MissingArgument),
        ({"key": "x", "schedule": {"kind": "at"}}, errors.MissingArgument),
        (
            {"key": "x", "timezone": "Mars/Olympus", "schedule": {"kind": "at", "at": NOW + 1}},
            errors.InvalidValue,
        ),
        (
            {"key": "x", "action": "nope", "schedule": {"kind": "at", "at": NOW + 1}},
            errors.UnknownAction,
        ),
        ({"key": "x", "colour": 1, "schedule": {"kind": "at", "at": NOW + 1}}, errors.InvalidValue),
        (
            {"key": "x", "schedule": {"kind": "calendar", "day": 31, "month": 2}},
            errors.TimeNeverArrives,
        ),
        ("not an object", errors.InvalidValue),
    ]
    for obj, exc in cases:
        with pytest.raises(exc):
            build(obj)
    with pytest.raises(errors.InvalidValue):
        build({"key": "a", "schedule": {"kind": "at", "at": NOW + 1}}, key="b")
    assert build({"schedule": {"kind": "at", "at": NOW + 1}}, key="url").key == "url"


def test_run_shape() -> None:
    run = Run("k", NOW, NOW + 12, 30, 2, 2, "boom", "shell")
    assert v2_schema.run_to_v2(run) == {
        "due": "2026-01-01T00:00:00.000Z",
        "due_ms": NOW,
        "started": "2026-01-01T00:00:00.012Z",
        "started_ms": NOW + 12,
        "lateness_ms": 12,
        "duration_ms": 30,
        "attempt": 2,
        "result": "retrying",
        "error": "boom",
        "action": "shell",
        "manual": False,
        "node_id": None,
    }
    assert v2_schema.run_to_v2(Run("k", NOW, NOW, 1, 1, 1, "", "shell", True))["manual"] is True


def test_format_instant_is_utc() -> None:
    when = datetime(2026, 7, 1, 12, 0, 0, 1000, tzinfo=UTC)
    assert format_instant(int(when.timestamp() * 1000)) == "2026-07-01T12:00:00.001Z"


def test_jitter_and_misfire_fields() -> None:
    p = build(
        {
            "key": "j",
            "jitter_ms": 400,
            "misfire": "skip",
            "schedule": {"kind": "delay", "interval_ms": 1500, "count": 3},
        }
    )
    assert (p.jitter_ms, p.misfire, p.grace_ms) == (400, "skip", v2_schema.DEFAULT_GRACE_MS)
    for k, t in enumerate(p.upcoming(5, UTCZ), 1):
        assert NOW + 1500 * k <= t <= NOW + 1500 * k + 400
    out = v2_schema.plan_to_v2(p)
    assert (out["jitter_ms"], out["misfire"], out["grace_ms"]) == (400, "skip", 1000)
    plain = v2_schema.plan_to_v2(build({"key": "x", "schedule": {"kind": "at", "at": NOW + 1}}))
    assert (plain["jitter_ms"], plain["misfire"], plain["grace_ms"]) == (0, None, None)
    c = build(
        {
            "key": "c",
            "jitter_ms": 30_000,
            "misfire": "fire_all",
            "grace_ms": 0,
            "schedule": {"kind": "cron", "expr": "0 * * * *"},
        }
    )
    assert NOW + 3_600_000 <= c.next_time <= NOW + 3_630_000 and c.grace_ms == 0
    for bad in (
        {"jitter_ms": 1500},
        {"jitter_ms": "lots"},
        {"misfire": "maybe"},
        {"misfire": 3},
        {"misfire": "skip", "grace_ms": -1},
    ):
        with pytest.raises(errors.InvalidValue):
            build({"key": "b", **bad, "schedule": {"kind": "delay", "interval_ms": 1500}})
