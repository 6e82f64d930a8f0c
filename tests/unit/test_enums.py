"""The named values keep the exact values the wire and the stores carry."""

from __future__ import annotations

import json

import orjson

from forsun_box.enums import CATCHUP_POLICIES, Kind, Misfire, PlanStatus, RunResult


def test_values_are_the_ones_on_the_wire() -> None:
    assert [(s.name, int(s)) for s in PlanStatus] == [("PENDING", 0), ("OK", 1), ("FAILED", -1)]
    assert [(r.name, int(r)) for r in RunResult] == [("OK", 1), ("FAILED", -1), ("RETRYING", 2)]
    assert [str(m) for m in Misfire] == ["", "skip", "fire_once", "fire_all"]
    assert [str(k) for k in Kind] == ["delay", "calendar", "cron", "at"]
    assert [str(p) for p in CATCHUP_POLICIES] == ["fire_once", "fire_all", "skip"]


def test_members_encode_as_their_plain_values() -> None:
    values = [PlanStatus.FAILED, RunResult.RETRYING, Misfire.SKIP, Kind.AT, Misfire.SERVER]
    assert orjson.dumps(values) == b'[-1,2,"skip","at",""]'
    assert json.dumps(values) == '[-1, 2, "skip", "at", ""]'
    assert f"{PlanStatus.OK}|{RunResult.FAILED}|{Kind.CRON}" == "1|-1|cron"
    assert {1: "x"}[PlanStatus.OK] == "x" and {"skip": 1}[Misfire.SKIP] == 1


def test_labels_and_unknown_values() -> None:
    assert [s.label for s in PlanStatus] == ["pending", "ok", "failed"]
    assert [r.label for r in RunResult] == ["ok", "failed", "retrying"]
    assert RunResult.label_of(2) == "retrying" and RunResult.label_of(7) == "failed"
    assert PlanStatus.label_of(0) == "pending" and PlanStatus.label_of(5) == "failed"


def test_records_hold_plain_values() -> None:
    """Plans and run records carry plain ints and strs, not members: the engine tells
    an inline first attempt by ``type(status) is int``, and plans are pickled and
    encoded by the thousand."""
    from zoneinfo import ZoneInfo

    from forsun_box import dispatcher
    from forsun_box.plan import DELAY, KINDS, build_plan

    p = build_plan(key="k", kind=DELAY, now_ms=0, default_tz=ZoneInfo("UTC"), second=5)
    assert type(p.kind) is str and type(p.status) is int
    assert all(type(k) is str for k in KINDS)
    for value in (
        dispatcher.STATUS_OK,
        dispatcher.STATUS_FAILED,
        dispatcher.RUN_OK,
        dispatcher.RUN_FAILED,
        dispatcher.RUN_WILL_RETRY,
    ):
        assert type(value) is int
