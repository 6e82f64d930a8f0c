"""The engine's records as the IDL's structs (``ForsunPlan``, ``ForsunRun``).

Integers the IDL declares narrower than the record's are clamped, so an
answer never fails to encode for a value it cannot carry.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from forsun_box.plan import Plan, to_forsun
from forsun_box.runs import Run
from forsun_box.thrift.forsun.ttypes import ForsunPlan, ForsunRun

I16_MAX = 32767
I32_MAX = 2**31 - 1


_PLAN_FIELDS = (
    "is_time_out",
    "key",
    "second",
    "minute",
    "hour",
    "day",
    "month",
    "week",
    "next_time",
    "status",
    "count",
    "current_count",
    "last_timeout",
    "action",
    "params",
)


def clamp(value: int, top: int) -> int:
    return top if value > top else (-top - 1 if value < -top - 1 else value)


def plan_struct(plan: Plan, tz: ZoneInfo | None = None) -> ForsunPlan:
    """The plan as the IDL's ``ForsunPlan`` (times in unix seconds, i16/i32 clamped).

    ``tz``: the server's zone, for a single-instant plan without its own.
    """
    d = to_forsun(plan, tz)
    second, minute, hour = d["second"], d["minute"], d["hour"]
    day, month, week = d["day"], d["month"], d["week"]
    status, count, current = d["status"], d["count"], d["current_count"]
    next_time, last = d["next_time"], d["last_timeout"]
    # Built without ForsunPlan.__init__ (keyword arguments cost more than the
    # encoding, once per reply); the values are those of the IDL struct.
    struct = _new(ForsunPlan)
    struct.__dict__ = {
        "is_time_out": d["is_time_out"],
        "key": d["key"],
        "second": second if -32768 <= second <= I16_MAX else clamp(second, I16_MAX),
        "minute": minute if -32768 <= minute <= I16_MAX else clamp(minute, I16_MAX),
        "hour": hour if -32768 <= hour <= I16_MAX else clamp(hour, I16_MAX),
        "day": day if -32768 <= day <= I16_MAX else clamp(day, I16_MAX),
        "month": month if -32768 <= month <= I16_MAX else clamp(month, I16_MAX),
        "week": week if -32768 <= week <= I16_MAX else clamp(week, I16_MAX),
        "next_time": next_time if 0 <= next_time <= I32_MAX else clamp(next_time, I32_MAX),
        "status": status if -32768 <= status <= I16_MAX else clamp(status, I16_MAX),
        "count": count if -32768 <= count <= I16_MAX else clamp(count, I16_MAX),
        # a plan firing every second for ever passes i16 within hours: saturate
        "current_count": current if 0 <= current <= I16_MAX else clamp(current, I16_MAX),
        "last_timeout": last if 0 <= last <= I32_MAX else clamp(last, I32_MAX),
        "action": d["action"],
        "params": dict(d["params"]),
    }
    return struct


_new = object.__new__


def run_struct(run: Run) -> ForsunRun:
    """One run record (``store.base.Run``) as the IDL's ``ForsunRun``."""
    return ForsunRun(
        due_ms=run.due_ms,
        started_ms=run.started_ms,
        duration_ms=clamp(run.duration_ms, I32_MAX),
        attempt=clamp(run.attempt, I16_MAX),
        result=clamp(run.result, I16_MAX),
        error=run.error or "",
    )
