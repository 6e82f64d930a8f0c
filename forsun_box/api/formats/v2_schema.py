"""The v2 JSON shapes: instants, plan definitions and answers.

A v2 plan definition::

    {"key": "k", "action": "shell", "params": {"cmd": "date"},
     "schedule": {"kind": "cron", "expr": "*/5 * * * *"},
     "timezone": "Europe/Paris", "start": "2026-01-01T00:00:00Z", "end": 1767225600000}

Schedule kinds:

* ``delay``: ``interval_ms`` (> 0) and ``count`` (0 = unbounded). Without
  ``start`` the first firing is one interval after the plan is stored
  (forsun's delay mode); with ``start`` the firings are ``start``,
  ``start + interval``, ...
* ``calendar``: forsun's fields ``second minute hour day month week``
  (-1 or missing = any) and ``count``.
* ``cron``: ``expr`` with 5 fields, or 6 with the second first, and ``count``.
* ``at``: ``at``, one instant.

Instants are accepted as ISO-8601 strings (an instant without an offset is
read in the plan's time zone, or the server's) or as integers of unix
milliseconds; answers give both, ``x`` as ISO-8601 UTC with milliseconds and
``x_ms`` as an integer. ``start`` bounds the first firing (none before it);
``end`` is exclusive (no firing at or after it).

``jitter_ms`` delays each occurrence by an amount in ``[0, jitter_ms]``,
stable per key and occurrence (a delay plan's jitter must be shorter than
its interval). ``misfire`` (``skip``, ``fire_once``, ``fire_all``) decides
what happens to a firing that starts more than ``grace_ms`` (default 1000)
after it was due, whatever the cause (downtime or overload): skip it and
wait for the next occurrence, fire once and skip the rest, or fire every
missed occurrence. Without it the server's catch-up policy applies after
downtime.

Validation goes through :func:`forsun_box.plan.build_plan`, so a field
means what it means on every other interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from forsun_box import errors
from forsun_box.enums import PlanStatus, RunResult
from forsun_box.plan import (
    AT,
    CALENDAR,
    CRON,
    DELAY,
    FIELDS,
    I16_MAX,
    KINDS,
    MAX_JITTER_MS,
    Plan,
    build_plan,
)
from forsun_box.runs import Run

PLAN_FIELDS = frozenset(
    {
        "key",
        "action",
        "params",
        "schedule",
        "timezone",
        "start",
        "end",
        "jitter_ms",
        "misfire",
        "grace_ms",
    }
)
#: grace window when a misfire policy is given without one
DEFAULT_GRACE_MS = 1000
SCHEDULE_FIELDS = {
    DELAY: frozenset({"kind", "interval_ms", "count"}),
    CALENDAR: frozenset({"kind", "count", *FIELDS}),
    CRON: frozenset({"kind", "expr", "count"}),
    AT: frozenset({"kind", "at"}),
}
# Largest instant accepted (year 9999): keeps datetime conversions in range.
MAX_MS = 253_402_300_799_999


def parse_instant(value: Any, name: str, tz: ZoneInfo) -> int:
    """An instant in ms from unix ms (int or digit string) or ISO-8601.

    An ISO-8601 value without an offset is wall time in ``tz``. Raises
    InvalidValue.
    """
    if isinstance(value, bool) or value is None:
        raise errors.InvalidValue(f"{name} must be an ISO-8601 instant or unix milliseconds")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise errors.InvalidValue(f"{name} is not an ISO-8601 instant: {value!r}") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=tz)
            # timestamp() is a float: whole seconds from it, ms from the microseconds
            value = int(dt.replace(microsecond=0).timestamp()) * 1000 + dt.microsecond // 1000
    if not isinstance(value, int):
        raise errors.InvalidValue(f"{name} must be an ISO-8601 instant or unix milliseconds")
    if not 0 <= value <= MAX_MS:
        raise errors.InvalidValue(f"{name} out of range: {value}")
    return value


def format_instant(ms: int | None) -> str | None:
    """``ms`` as ISO-8601 UTC with milliseconds (``2026-01-01T00:00:00.000Z``)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _zone(name: Any) -> str:
    if name is None or name == "":
        return ""
    if not isinstance(name, str):
        raise errors.InvalidValue("timezone must be an IANA time zone name")
    try:
        ZoneInfo(name)
    except Exception:
        raise errors.InvalidValue(f"unknown time zone: {name}") from None
    return name


def _int(obj: Mapping[str, Any], name: str, default: int) -> int:
    v = obj.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise errors.InvalidValue(f"schedule.{name} must be an integer")
    return v


def build_v2_plan(
    obj: Any,
    *,
    key: str | None,
    now_ms: int,
    default_tz: ZoneInfo,
    known_actions: frozenset[str],
    limits: Any,
) -> Plan:
    """Validate a v2 plan definition; ``key`` (from the URL) overrides the body's.

    Raises ForsunBoxError subclasses (1002 never fires, 1006 unknown action,
    1007 missing, 1008 invalid, 1009 too large).
    """
    if not isinstance(obj, dict):
        raise errors.InvalidValue("a plan must be a JSON object")
    unknown = set(obj) - PLAN_FIELDS
    if unknown:
        raise errors.InvalidValue(f"unknown plan fields: {', '.join(sorted(unknown))}")
    body_key = obj.get("key")
    if key is not None:
        if body_key not in (None, key):
            raise errors.InvalidValue("the key in the body differs from the key in the URL")
        body_key = key
    if not isinstance(body_key, str) or not body_key:
        raise errors.MissingArgument("key")
    sched = obj.get("schedule")
    if not isinstance(sched, dict):
        raise errors.MissingArgument("schedule")
    kind = sched.get("kind")
    if kind not in KINDS:
        raise errors.InvalidValue(f"schedule.kind must be one of {', '.join(KINDS)}")
    extra = set(sched) - SCHEDULE_FIELDS[kind]
    if extra:
        raise errors.InvalidValue(
            f"unknown fields for a {kind} schedule: {', '.join(sorted(extra))}"
        )
    timezone = _zone(obj.get("timezone"))
    tz = ZoneInfo(timezone) if timezone else default_tz
    start = obj.get("start")
    start_ms = parse_instant(start, "start", tz) if start is not None else None
    end = obj.get("end")
    end_ms = parse_instant(end, "end", tz) if end is not None else 0
    jitter = obj.get("jitter_ms", 0)
    misfire = obj.get("misfire") or ""
    if not isinstance(misfire, str):
        raise errors.InvalidValue("misfire must be skip, fire_once or fire_all")
    grace_ms = obj.get("grace_ms")
    if grace_ms is None:
        grace_ms = DEFAULT_GRACE_MS if misfire else 0
    action = obj.get("action", "shell")
    if action is None or action == "":
        action = "shell"
    common: dict[str, Any] = {
        "key": body_key,
        "kind": kind,
        "now_ms": now_ms,
        "default_tz": default_tz,
        "action": action,
        "params": obj.get("params"),
        "timezone": timezone,
        "end_ms": end_ms,
        "misfire": misfire,
        "grace_ms": grace_ms,
        "jitter_ms": 0 if kind == DELAY else jitter,
        "known_actions": known_actions,
        "limits": limits,
    }
    if kind == DELAY:
        interval = _int(sched, "interval_ms", 0)
        if interval <= 0:
            raise errors.InvalidValue("schedule.interval_ms must be a positive integer")
        count = _int(sched, "count", 0)
        # Built as a one-second delay, then given its real interval: build_plan
        # validates everything else the same way as forsun's delay mode.
        seconds = interval // 1000
        plan = build_plan(
            **common,
            second=min(seconds, I16_MAX) or 1,
            minute=0,
            hour=0,
            day=0,
            month=0,
            week=0,
            count=count,
        )
        if seconds > I16_MAX or seconds * 1000 != interval:
            plan.second = -1  # not expressible in forsun's fields; interval_ms says it
        plan.interval_ms = interval
        if (
            isinstance(jitter, bool)
            or not isinstance(jitter, int)
            or not (0 <= jitter <= MAX_JITTER_MS)
        ):
            raise errors.InvalidValue(f"jitter_ms must be an integer from 0 to {MAX_JITTER_MS}")
        if jitter >= interval:
            raise errors.InvalidValue("jitter_ms must be shorter than the interval")
        plan.jitter_ms = jitter
        plan.anchor_ms = (start_ms - interval) if start_ms is not None else now_ms
    elif kind == CALENDAR:
        fields: dict[str, Any] = {f: _int(sched, f, -1) for f in FIELDS}
        plan = build_plan(**common, count=_int(sched, "count", 0), **fields)
    elif kind == CRON:
        expr = sched.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            raise errors.MissingArgument("schedule.expr")
        plan = build_plan(**common, cron=expr.strip(), count=_int(sched, "count", 0))
    else:
        if sched.get("at") is None:
            raise errors.MissingArgument("schedule.at")
        at_ms = parse_instant(sched["at"], "schedule.at", tz)
        if start_ms is not None and at_ms < start_ms:
            raise errors.TimeNeverArrives("schedule.at is before start")
        plan = build_plan(**common, at_ms=at_ms)
    after = now_ms if start_ms is None else max(now_ms, start_ms - 1)
    plan.next_time = plan.next_after(after, default_tz)
    if plan.next_time is None:
        raise errors.TimeNeverArrives()
    return plan


def schedule_to_v2(plan: Plan) -> dict[str, Any]:
    """The plan's schedule object, as a v2 client writes it."""
    if plan.kind == DELAY:
        return {"kind": DELAY, "interval_ms": plan.interval_ms, "count": plan.count}
    if plan.kind == CALENDAR:
        out: dict[str, Any] = {"kind": CALENDAR}
        for f in FIELDS:
            out[f] = getattr(plan, f)
        out["count"] = plan.count
        return out
    if plan.kind == CRON:
        return {"kind": CRON, "expr": plan.cron, "count": plan.count}
    return {"kind": AT, "at": format_instant(plan.anchor_ms), "at_ms": plan.anchor_ms}


def plan_to_v2(plan: Plan) -> dict[str, Any]:
    """A stored plan as the v2 API answers it."""
    return {
        "key": plan.key,
        "action": plan.action,
        "params": plan.params,
        "schedule": schedule_to_v2(plan),
        "timezone": plan.timezone or None,
        "end": format_instant(plan.end_ms) if plan.end_ms else None,
        "end_ms": plan.end_ms or None,
        "next_time": format_instant(plan.next_time),
        "next_time_ms": plan.next_time,
        "current_count": plan.current_count,
        "last_fired": format_instant(plan.last_timeout) if plan.last_timeout else None,
        "last_fired_ms": plan.last_timeout or None,
        "status": PlanStatus.label_of(plan.status),
        "paused": plan.paused,
        "jitter_ms": plan.jitter_ms,
        "misfire": plan.misfire or None,
        "grace_ms": plan.grace_ms if plan.misfire else None,
        "created": format_instant(plan.created_time),
        "created_ms": plan.created_time,
        "version": plan.version,
    }


def run_to_v2(run: Run) -> dict[str, Any]:
    """One run record (``store.base.Run``) as the v2 API answers it."""
    return {
        "due": format_instant(run.due_ms),
        "due_ms": run.due_ms,
        "started": format_instant(run.started_ms),
        "started_ms": run.started_ms,
        "lateness_ms": max(0, run.started_ms - run.due_ms),
        "duration_ms": run.duration_ms,
        "attempt": run.attempt,
        "result": RunResult.label_of(run.result),
        "error": run.error or None,
        "action": run.action or None,
        "manual": bool(run.manual),
        "node_id": run.node_id or None,
    }
