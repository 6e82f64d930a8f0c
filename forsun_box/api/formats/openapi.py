"""The OpenAPI 3.1 description of the v2 API, served at ``/v2/openapi.json``."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from forsun_box import __version__
from forsun_box.enums import Misfire, PlanStatus, RunResult


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(t: str, **kw: Any) -> dict[str, Any]:
    return {"type": [t, "null"], **kw}


_INSTANT_OUT = _nullable("string", format="date-time", description="ISO-8601 UTC with milliseconds")
_MS_OUT = _nullable("integer", description="unix milliseconds")
_CALENDAR_FIELD = {"type": "integer", "minimum": -1, "description": "-1 or missing: any"}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 7807 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "code": {"type": "integer", "description": "forsun error code"},
        },
    },
    "Instant": {
        "description": "ISO-8601 (no offset: the plan's time zone) or unix milliseconds",
        "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
    },
    "DelaySchedule": {
        "type": "object",
        "required": ["kind", "interval_ms"],
        "additionalProperties": False,
        "properties": {
            "kind": {"const": "delay"},
            "interval_ms": {"type": "integer", "minimum": 1},
            "count": {"type": "integer", "minimum": 0, "description": "0: unbounded"},
        },
    },
    "CalendarSchedule": {
        "type": "object",
        "required": ["kind"],
        "additionalProperties": False,
        "properties": {
            "kind": {"const": "calendar"},
            **{f: _CALENDAR_FIELD for f in ("second", "minute", "hour", "day", "month", "week")},
            "count": {"type": "integer", "minimum": 0},
        },
    },
    "CronSchedule": {
        "type": "object",
        "required": ["kind", "expr"],
        "additionalProperties": False,
        "properties": {
            "kind": {"const": "cron"},
            "expr": {"type": "string", "description": "5 fields, or 6 with the second first"},
            "count": {"type": "integer", "minimum": 0},
        },
    },
    "AtSchedule": {
        "type": "object",
        "required": ["kind", "at"],
        "properties": {
            "kind": {"const": "at"},
            "at": _ref("Instant"),
            "at_ms": {"type": "integer", "description": "in answers"},
        },
    },
    "Schedule": {
        "oneOf": [
            _ref("DelaySchedule"),
            _ref("CalendarSchedule"),
            _ref("CronSchedule"),
            _ref("AtSchedule"),
        ],
        "discriminator": {
            "propertyName": "kind",
            "mapping": {
                "delay": "#/components/schemas/DelaySchedule",
                "calendar": "#/components/schemas/CalendarSchedule",
                "cron": "#/components/schemas/CronSchedule",
                "at": "#/components/schemas/AtSchedule",
            },
        },
    },
    "PlanInput": {
        "type": "object",
        "required": ["schedule"],
        "additionalProperties": False,
        "properties": {
            "key": {"type": "string", "description": "required on POST and in batches"},
            "action": {"type": "string", "default": "shell"},
            "params": {"type": "object", "additionalProperties": {"type": "string"}},
            "schedule": _ref("Schedule"),
            "timezone": {"type": "string", "description": "IANA name; default the server's"},
            "start": _ref("Instant"),
            "end": _ref("Instant"),
            "jitter_ms": {
                "type": "integer",
                "minimum": 0,
                "maximum": 3600000,
                "description": "delay each occurrence by up to this (stable)",
            },
            "misfire": {
                "enum": [m.value for m in Misfire if m],
                "description": "for firings later than grace_ms; default: the "
                "server's catch-up policy after downtime",
            },
            "grace_ms": {"type": "integer", "minimum": 0, "default": 1000},
        },
    },
    "Plan": {
        "type": "object",
        "required": [
            "key",
            "action",
            "params",
            "schedule",
            "next_time",
            "next_time_ms",
            "status",
            "paused",
            "current_count",
            "created",
            "version",
        ],
        "properties": {
            "key": {"type": "string"},
            "action": {"type": "string"},
            "params": {"type": "object", "additionalProperties": {"type": "string"}},
            "schedule": _ref("Schedule"),
            "timezone": _nullable("string"),
            "end": _INSTANT_OUT,
            "end_ms": _MS_OUT,
            "next_time": _INSTANT_OUT,
            "next_time_ms": _MS_OUT,
            "current_count": {"type": "integer"},
            "last_fired": _INSTANT_OUT,
            "last_fired_ms": _MS_OUT,
            "status": {"enum": [s.label for s in PlanStatus]},
            "paused": {"type": "boolean"},
            "jitter_ms": {"type": "integer"},
            "misfire": {"enum": [*(m.value for m in Misfire if m), None]},
            "grace_ms": _nullable("integer"),
            "created": {"type": "string", "format": "date-time"},
            "created_ms": {"type": "integer"},
            "version": {"type": "integer"},
        },
    },
    "PlanList": {
        "type": "object",
        "required": ["plans", "next_after"],
        "properties": {
            "plans": {"type": "array", "items": _ref("Plan")},
            "next_after": _nullable("string", description="pass as after= for the next page"),
        },
    },
    "Removed": {
        "type": "object",
        "required": ["removed", "prefix"],
        "properties": {"removed": {"type": "integer"}, "prefix": {"type": "string"}},
    },
    "FireResult": {
        "type": "object",
        "required": ["key", "result", "started", "started_ms"],
        "properties": {
            "key": {"type": "string"},
            "result": {"enum": ["ok", "failed"]},
            "started": {"type": "string", "format": "date-time"},
            "started_ms": {"type": "integer"},
        },
    },
    "Run": {
        "type": "object",
        "required": ["due", "started", "lateness_ms", "duration_ms", "attempt", "result"],
        "properties": {
            "due": {"type": "string", "format": "date-time"},
            "due_ms": {"type": "integer"},
            "started": {"type": "string", "format": "date-time"},
            "started_ms": {"type": "integer"},
            "lateness_ms": {"type": "integer", "minimum": 0},
            "duration_ms": {"type": "integer", "minimum": 0},
            "attempt": {"type": "integer", "minimum": 1},
            "result": {"enum": [r.label for r in RunResult]},
            "error": _nullable("string"),
            "action": _nullable("string"),
            "manual": {"type": "boolean", "description": "run by fire now, outside the schedule"},
            "node_id": _nullable(
                "string", description="the cluster node that fired it; null on a single node"
            ),
        },
    },
    "Runs": {
        "type": "object",
        "required": ["key", "runs"],
        "properties": {"key": {"type": "string"}, "runs": {"type": "array", "items": _ref("Run")}},
    },
    "Preview": {
        "type": "object",
        "required": ["key", "fires", "fires_ms", "paused"],
        "properties": {
            "key": {"type": "string"},
            "paused": {"type": "boolean"},
            "fires": {"type": "array", "items": {"type": "string", "format": "date-time"}},
            "fires_ms": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Upcoming": {
        "type": "object",
        "required": ["from", "to", "step_ms", "buckets", "capped"],
        "properties": {
            "from": {"type": "string", "format": "date-time"},
            "from_ms": {"type": "integer"},
            "to": {"type": "string", "format": "date-time"},
            "to_ms": {"type": "integer"},
            "step_ms": {"type": "integer"},
            "capped": {"type": "boolean"},
            "buckets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["start", "start_ms", "count"],
                    "properties": {
                        "start": {"type": "string", "format": "date-time"},
                        "start_ms": {"type": "integer"},
                        "count": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
    },
    "BatchLineResult": {
        "type": "object",
        "description": "one line of the NDJSON answer of a batch",
        "required": ["line", "key", "status"],
        "properties": {
            "line": {"type": "integer", "minimum": 1},
            "key": _nullable("string"),
            "status": {"type": "integer"},
            "problem": _ref("Problem"),
        },
    },
}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _ok(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": _json(name)}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
_BODY = {"required": True, "content": _json("PlanInput")}
_404 = _problem("no plan with this key")
_422 = _problem("invalid definition, or it would never fire")


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PATHS: dict[str, Any] = {
    "/v2/plans": {
        "get": {
            "operationId": "listPlans",
            "summary": "List plans by key (keyset paging)",
            "parameters": [
                _q("prefix", {"type": "string"}),
                _q("after", {"type": "string"}, "keys greater than this"),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            ],
            "responses": {"200": _ok("PlanList"), "400": _problem("bad query")},
        },
        "post": {
            "operationId": "createPlan",
            "summary": "Create a plan; 409 if the key exists",
            "requestBody": _BODY,
            "responses": {
                "201": _ok("Plan", "created"),
                "400": _problem("unreadable body"),
                "409": _problem("the key exists"),
                "422": _422,
            },
        },
        "delete": {
            "operationId": "deletePlansByPrefix",
            "summary": "Remove every plan under a prefix",
            "parameters": [
                {
                    "name": "prefix",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                }
            ],
            "responses": {"200": _ok("Removed"), "400": _problem("prefix missing")},
        },
    },
    "/v2/plans/{key}": {
        "parameters": [_KEY],
        "get": {
            "operationId": "getPlan",
            "summary": "Read a plan",
            "responses": {"200": _ok("Plan"), "404": _404},
        },
        "put": {
            "operationId": "putPlan",
            "summary": "Create or replace a plan",
            "requestBody": _BODY,
            "responses": {
                "200": _ok("Plan", "replaced"),
                "201": _ok("Plan", "created"),
                "400": _problem("unreadable body"),
                "422": _422,
            },
        },
        "delete": {
            "operationId": "deletePlan",
            "summary": "Remove a plan",
            "responses": {"200": _ok("Plan", "the removed plan"), "404": _404},
        },
    },
    "/v2/plans/{key}/pause": {
        "parameters": [_KEY],
        "post": {
            "operationId": "pausePlan",
            "summary": "Stop a plan firing until resumed",
            "responses": {"200": _ok("Plan"), "404": _404},
        },
    },
    "/v2/plans/{key}/resume": {
        "parameters": [_KEY],
        "post": {
            "operationId": "resumePlan",
            "summary": "Fire again from the next occurrence after now",
            "responses": {"200": _ok("Plan"), "404": _404, "422": _problem("no occurrence left")},
        },
    },
    "/v2/plans/{key}/fire": {
        "parameters": [_KEY],
        "post": {
            "operationId": "firePlan",
            "summary": "Run the action once now, outside the schedule",
            "responses": {"200": _ok("FireResult"), "404": _404},
        },
    },
    "/v2/plans/{key}/runs": {
        "parameters": [_KEY],
        "get": {
            "operationId": "listRuns",
            "summary": "Run history, newest first",
            "parameters": [
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50})
            ],
            "responses": {"200": _ok("Runs")},
        },
    },
    "/v2/plans/{key}/preview": {
        "parameters": [_KEY],
        "get": {
            "operationId": "previewPlan",
            "summary": "The next n firings",
            "parameters": [
                _q("n", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5})
            ],
            "responses": {"200": _ok("Preview"), "404": _404},
        },
    },
    "/v2/plans:batch": {
        "post": {
            "operationId": "batchPlans",
            "summary": "Upsert plans from NDJSON, one PlanInput (with key) per line",
            "requestBody": {
                "required": True,
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            "responses": {
                "200": {
                    "description": "one BatchLineResult per non-blank line",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                },
                "413": _problem("body too large"),
            },
        },
    },
    "/v2/upcoming": {
        "get": {
            "operationId": "upcoming",
            "summary": "How many plans next fire in each step of a window",
            "parameters": [
                _q("from", {"type": "string"}, "instant; default now"),
                _q("to", {"type": "string"}, "instant; default from + 1 h"),
                _q("step", {"type": "integer", "minimum": 1000, "default": 60000}, "ms"),
            ],
            "responses": {"200": _ok("Upcoming"), "400": _problem("bad window")},
        },
    },
    "/v2/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "forsun-box v2 API",
            "version": __version__,
            "description": "Durable timers: plans keyed by the client's key. "
            "Errors are RFC 7807 problem details.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "only when the service has an api_token",
                },
            },
        },
        "security": [{}, {"bearer": []}],
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as JSON, built once."""
    return orjson.dumps(document())
