"""The OpenAPI 3.1 document is valid and its schemas describe what the API answers."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from forsun_box.api.formats import openapi, v2_schema
from forsun_box.plan import Limits

NOW = 1_767_225_600_000


def schema_validator(name: str) -> Draft202012Validator:
    doc = openapi.document()
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def test_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_kind_round_trips_through_the_plan_schemas() -> None:
    inputs = [
        {"key": "d", "schedule": {"kind": "delay", "interval_ms": 250, "count": 4}},
        {"key": "c", "schedule": {"kind": "calendar", "second": 0, "minute": 5}},
        {"key": "r", "timezone": "Europe/Paris", "schedule": {"kind": "cron", "expr": "0 9 * * 1"}},
        {"key": "a", "end": NOW + 10_000, "schedule": {"kind": "at", "at": NOW + 5000}},
    ]
    plan_input, plan_out = schema_validator("PlanInput"), schema_validator("Plan")
    for obj in inputs:
        plan_input.validate(obj)
        plan = v2_schema.build_v2_plan(
            obj,
            key=None,
            now_ms=NOW,
            default_tz=ZoneInfo("UTC"),
            known_actions=frozenset({"shell"}),
            limits=Limits(),
        )
        plan_out.validate(v2_schema.plan_to_v2(plan))


def test_schema_refuses_unknown_schedule_kind() -> None:
    errs = list(
        schema_validator("PlanInput").iter_errors({"key": "x", "schedule": {"kind": "weekly"}})
    )
    assert errs


def test_document_bytes_match_the_document() -> None:
    import orjson

    assert orjson.loads(openapi.document_bytes()) == openapi.document()
