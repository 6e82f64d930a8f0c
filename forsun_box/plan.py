"""The Plan record, its validation and its forsun wire shape.

A plan is what a client registers: a key, an action with its params, and a
schedule. Every wire format (HTTP v1 JSON and crontab, Thrift, console, CLI)
builds plans through :func:`build_plan`, so a field means the same thing
everywhere.

Instants are milliseconds since the epoch (UTC); forsun's wire fields
(``next_time``, ``last_timeout``, ``created_time``) are whole seconds and
are converted only at the edges (:func:`to_forsun`).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from forsun_box import errors, schedule
from forsun_box.enums import Kind, Misfire, PlanStatus

# The kinds by their short names (defined in forsun_box.enums.Kind). A Plan's
# fields hold plain values (``.value``), as they did before the enums: the
# create worker pickles plans by the thousand, and an enum member costs a
# class lookup to unpickle and a slower path in orjson and sqlite3.
DELAY: str = Kind.DELAY.value
CALENDAR: str = Kind.CALENDAR.value
CRON: str = Kind.CRON.value
AT: str = Kind.AT.value
KINDS: tuple[str, ...] = tuple(k.value for k in Kind)
_PENDING: int = PlanStatus.PENDING.value

MAX_JITTER_MS = 3_600_000
_MISFIRES = tuple(m.value for m in Misfire)

# forsun's field order and the legal range of each in calendar mode.
FIELDS = ("second", "minute", "hour", "day", "month", "week")
CALENDAR_RANGES = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day": (1, 31),
    "month": (1, 12),
    "week": (0, 7),
}
I16_MAX = 32767


@dataclass(slots=True)
class Limits:
    """Bounds on what one plan may carry; exceeding one is error 1009."""

    max_key_length: int = 256
    max_action_length: int = 64
    max_params_bytes: int = 64 * 1024
    max_params_count: int = 256


@dataclass(slots=True)
class Plan:
    """One registered timer.

    ``version`` changes whenever a client creates or replaces the plan and
    never when it fires, so stale in-memory copies and late results of an
    older definition can be recognised and ignored.
    """

    key: str
    kind: str
    action: str = "shell"
    params: dict[str, str] = field(default_factory=dict)
    second: int = -1
    minute: int = -1
    hour: int = -1
    day: int = -1
    month: int = -1
    week: int = -1
    count: int = 0
    cron: str = ""
    interval_ms: int = 0  # DELAY: period
    anchor_ms: int = 0  # DELAY: firings fall on anchor + k * interval; AT: the instant
    timezone: str = ""  # empty: the server's zone
    end_ms: int = 0  # 0: unbounded; otherwise no firing at or after this instant
    next_time: int | None = None  # ms of the next firing, None when finished
    current_count: int = 0
    last_timeout: int = 0  # ms of the last firing, 0 if never
    status: int = _PENDING
    created_time: int = 0
    paused: bool = False
    version: int = 0
    jitter_ms: int = 0  # each firing is delayed by a per-occurrence amount in [0, jitter_ms]
    misfire: str = ""  # "" (server's catch-up policy), "skip", "fire_once" or "fire_all"
    grace_ms: int = 0  # with misfire set: a firing later than this is a misfire

    @property
    def is_time_out(self) -> bool:
        return self.kind == DELAY

    def copy(self, **changes: Any) -> Plan:
        """A shallow copy with ``changes`` applied (params are shared: never mutated)."""
        # Spelled out: dataclasses.replace costs several times more, per firing.
        new = Plan(
            self.key,
            self.kind,
            self.action,
            self.params,
            self.second,
            self.minute,
            self.hour,
            self.day,
            self.month,
            self.week,
            self.count,
            self.cron,
            self.interval_ms,
            self.anchor_ms,
            self.timezone,
            self.end_ms,
            self.next_time,
            self.current_count,
            self.last_timeout,
            self.status,
            self.created_time,
            self.paused,
            self.version,
            self.jitter_ms,
            self.misfire,
            self.grace_ms,
        )
        for name, value in changes.items():
            setattr(new, name, value)
        return new

    def next_after(self, after_ms: int, default_tz: ZoneInfo) -> int | None:
        """The next firing strictly after ``after_ms``, honouring count, end bound and jitter.

        With jitter, the next occurrence ``n`` after ``after_ms`` fires at
        ``n + jitter_of(n)``; count and end apply to the occurrence itself.
        Searching from the last firing's (jittered) instant finds the next
        occurrence as long as occurrences are further apart than the jitter;
        occurrences closer than that to the previous firing are skipped.
        """
        n = self._nominal_after(after_ms, default_tz)
        if n is None or not self.jitter_ms:
            return n
        return n + self.jitter_of(n)

    def jitter_of(self, occurrence_ms: int) -> int:
        """The delay of one occurrence: stable per key and occurrence, in [0, jitter_ms].

        Stable, so a firing recomputed after a restart lands on the same instant.
        """
        if not self.jitter_ms:
            return 0
        digest = hashlib.blake2b(f"{self.key}\0{occurrence_ms}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % (self.jitter_ms + 1)

    def trigger(self) -> schedule.Trigger:
        """The plan's schedule as a trigger (count, end and jitter are the plan's).

        Raises ValueError for an unknown kind, an invalid cron expression or
        calendar field."""
        kind = self.kind
        if kind == CALENDAR:
            return schedule.compile_calendar(
                self.second, self.minute, self.hour, self.day, self.month, self.week
            )
        if kind == CRON:
            return schedule.compile_cron(self.cron)
        if kind == DELAY:
            return schedule.DelayTrigger(self.interval_ms, self.anchor_ms)
        if kind == AT:
            return schedule.AtTrigger(self.anchor_ms)
        raise ValueError(f"unknown schedule kind: {kind}")

    def upcoming(self, n: int, default_tz: ZoneInfo) -> list[int]:
        """The next ``n`` firings from the stored next one, honouring count, end and
        jitter (fewer when the schedule ends; none when finished)."""
        out: list[int] = []
        nxt = self.next_time
        probe = self.copy()
        while nxt is not None and len(out) < n:
            out.append(nxt)
            probe.current_count += 1
            nxt = probe.next_after(nxt, default_tz)
        return out

    def _nominal_after(self, after_ms: int, default_tz: ZoneInfo) -> int | None:
        if self.count and self.current_count >= self.count:
            return None
        tz = ZoneInfo(self.timezone) if self.timezone else default_tz
        nxt = self.trigger().next_after(after_ms, tz)
        if nxt is None:
            return None
        if self.end_ms and nxt >= self.end_ms:
            return None
        if (
            self.kind == DELAY
            and self.count
            and (nxt - self.anchor_ms) > (self.count * self.interval_ms)
        ):
            # A delay plan's occurrences are anchor + k * interval, k = 1..count:
            # occurrences skipped by a catch-up policy are used up, not postponed.
            return None
        return nxt


def new_key() -> str:
    """A key for a plan created without one."""
    return uuid.uuid4().hex


#: a forsun field a cron expression restricts in a way forsun can't say (a list, a
#: range, a step): outside forsun's values, so no client reads it as "any" (-1)
NOT_A_FORSUN_VALUE = -2
_UTC = ZoneInfo("UTC")


def forsun_view(plan: Plan, tz: ZoneInfo | None = None) -> tuple[int, int, int, int, int, int, int]:
    """``(second, minute, hour, day, month, week, count)`` as forsun's fields show the plan.

    Delay and calendar plans: their own fields. A cron plan: each field is
    the cron field's value when that is one number, -1 when it is any, and
    :data:`NOT_A_FORSUN_VALUE` otherwise (day and week both, when cron's
    "day of month or day of week" rule applies); a 5-field expression fires
    at second 0. A single-instant plan: forsun's own form of one instant,
    the instant's second, minute, hour, day and month in the plan's zone
    (else ``tz``, the server's; UTC when not given), week -1, count 1.
    See docs/COMPAT.md.
    """
    if plan.kind == CRON:
        spec = schedule.compile_cron(plan.cron)
        values = [
            -1 if len(vals) == size else (min(vals) if len(vals) == 1 else NOT_A_FORSUN_VALUE)
            for vals, size in (
                (spec.seconds, 60),
                (spec.minutes, 60),
                (spec.hours, 24),
                (spec.doms, 31),
                (spec.months, 12),
                (spec.dows, 7),
            )
        ]
        if spec.day_or:
            values[3] = values[5] = NOT_A_FORSUN_VALUE
        s, mi, h, d, mo, w = values
        return s, mi, h, d, mo, w, plan.count
    if plan.kind == AT:
        zone = ZoneInfo(plan.timezone) if plan.timezone else (tz or _UTC)
        at = datetime.fromtimestamp(plan.anchor_ms / 1000, zone)
        return at.second, at.minute, at.hour, at.day, at.month, -1, 1
    return plan.second, plan.minute, plan.hour, plan.day, plan.month, plan.week, plan.count


def to_forsun(plan: Plan, tz: ZoneInfo | None = None) -> dict[str, Any]:
    """The plan as forsun's v1/Thrift object (times in whole seconds).

    ``tz`` is the server's zone, for a single-instant plan without its own
    (:func:`forsun_view`).
    """
    if plan.kind == DELAY or plan.kind == CALENDAR:
        second, minute, hour = plan.second, plan.minute, plan.hour
        day, month, week, count = plan.day, plan.month, plan.week, plan.count
    else:
        second, minute, hour, day, month, week, count = forsun_view(plan, tz)
    return {
        "key": plan.key,
        "second": second,
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month,
        "week": week,
        "status": plan.status,
        "count": count,
        "is_time_out": plan.kind == DELAY,
        "next_time": (plan.next_time or 0) // 1000,
        "current_count": plan.current_count,
        "last_timeout": plan.last_timeout // 1000,
        "created_time": float(plan.created_time // 1000),  # forsun's is a float
        "action": plan.action,
        "params": plan.params,
    }


def build_forsun_plan(
    key: Any,
    is_time_out: bool,
    second: Any,
    minute: Any,
    hour: Any,
    day: Any,
    month: Any,
    week: Any,
    count: Any,
    action: Any,
    params: Any,
    now_ms: int,
    default_tz: ZoneInfo,
    known_actions: frozenset[str] | set[str] | None,
    limits: Limits | None,
) -> Plan:
    """:func:`build_plan` for a plan as forsun's interfaces (HTTP v1, crontab lines,
    Thrift) give it: a delay plan if ``is_time_out``, else a calendar one; a missing
    (None) time field is -1, a missing count 0, a missing or empty action ``shell``,
    a missing or empty key a new one (:func:`new_key`)."""
    if key is None or key == "":
        key = new_key()
    elif not isinstance(key, str):
        raise errors.InvalidValue("key must be a string")
    return build_plan(
        key,
        DELAY if is_time_out else CALENDAR,
        now_ms,
        default_tz,
        "shell" if action is None or action == "" else action,
        params,
        -1 if second is None else second,
        -1 if minute is None else minute,
        -1 if hour is None else hour,
        -1 if day is None else day,
        -1 if month is None else month,
        -1 if week is None else week,
        0 if count is None else count,
        known_actions,
        limits,
    )


def _int_field(name: str, value: Any) -> int:
    if type(value) is int:  # the common case, first and cheapest
        return value
    if isinstance(value, bool) or value is None:
        raise errors.InvalidValue(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise errors.InvalidValue(f"{name} must be an integer, got {value!r}")


def _check_params(params: Any, limits: Limits) -> dict[str, str]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise errors.InvalidValue("params must be an object of string values")
    if len(params) > limits.max_params_count:
        raise errors.TooLarge(f"params has more than {limits.max_params_count} entries")
    if not params:
        return {}
    out: dict[str, str] = {}
    size = 0
    for k, v in params.items():
        if not isinstance(k, str):
            raise errors.InvalidValue("params names must be strings")
        if type(v) is not str:
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, (int, float)):
                v = str(v)
            elif v is None:
                v = ""
            elif not isinstance(v, str):
                raise errors.InvalidValue(f"params value of {k!r} must be a string")
        # UTF-8 size; isascii() is a flag check, cheaper than encoding
        size += (len(k) if k.isascii() else len(k.encode())) + (
            len(v) if v.isascii() else len(v.encode())
        )
        out[k] = v
    if size > limits.max_params_bytes:
        raise errors.TooLarge(f"params exceed {limits.max_params_bytes} bytes")
    return out


def build_plan(
    key: str,
    kind: str,
    now_ms: int,
    default_tz: ZoneInfo,
    action: str = "shell",
    params: Any = None,
    second: Any = -1,
    minute: Any = -1,
    hour: Any = -1,
    day: Any = -1,
    month: Any = -1,
    week: Any = -1,
    count: Any = 0,
    known_actions: frozenset[str] | set[str] | None = None,
    limits: Limits | None = None,
    cron: str = "",
    at_ms: int | None = None,
    timezone: str = "",
    end_ms: int = 0,
    jitter_ms: Any = 0,
    misfire: str = "",
    grace_ms: Any = 0,
) -> Plan:
    """Validate a plan definition and compute its first firing.

    ``key`` must already be non-empty (the engine generates one for an
    empty key). Raises :class:`~forsun_box.errors.ForsunBoxError`
    subclasses: 1002 when it would never fire, 1006 for an unknown action,
    1008 for an invalid value, 1009 when over a limit.

    Bulk creates call it once per plan with the forsun fields as positional
    arguments: binding them as keywords costs a measurable share of the
    validation (bench/RESULTS.md).
    """
    limits = limits or Limits()
    if not isinstance(key, str) or not key:
        raise errors.MissingArgument("key")
    if len(key) > limits.max_key_length:
        raise errors.TooLarge(f"key longer than {limits.max_key_length} characters")
    if not isinstance(action, str) or not action:
        raise errors.MissingArgument("action")
    if len(action) > limits.max_action_length:
        raise errors.TooLarge("action name too long")
    if known_actions is not None and action not in known_actions:
        raise errors.UnknownAction(f"unknown action: {action}")
    if kind not in KINDS:
        raise errors.InvalidValue(f"unknown schedule kind: {kind}")
    clean_params = _check_params(params, limits)
    # `type(x) is int` first: the common case costs no call (bulk creates
    # spend most of their time here).
    f_second = second if type(second) is int else _int_field("second", second)
    f_minute = minute if type(minute) is int else _int_field("minute", minute)
    f_hour = hour if type(hour) is int else _int_field("hour", hour)
    f_day = day if type(day) is int else _int_field("day", day)
    f_month = month if type(month) is int else _int_field("month", month)
    f_week = week if type(week) is int else _int_field("week", week)
    count_v = count if type(count) is int else _int_field("count", count)
    if count_v < 0 or count_v > I16_MAX:
        raise errors.InvalidValue(f"count must be between 0 and {I16_MAX}")
    values = (f_second, f_minute, f_hour, f_day, f_month, f_week)
    if min(values) < -1 or max(values) > I16_MAX:
        for name, v in zip(FIELDS, values, strict=True):
            if v < -1 or v > I16_MAX:
                raise errors.InvalidValue(f"{name} out of range: {v}")
    jitter_v = jitter_ms if type(jitter_ms) is int else _int_field("jitter_ms", jitter_ms)
    if not 0 <= jitter_v <= MAX_JITTER_MS:
        raise errors.InvalidValue(f"jitter_ms must be between 0 and {MAX_JITTER_MS}")
    if misfire not in _MISFIRES:
        raise errors.InvalidValue(f"misfire must be one of {', '.join(m for m in Misfire if m)}")
    grace_v = grace_ms if type(grace_ms) is int else _int_field("grace_ms", grace_ms)
    if grace_v < 0:
        raise errors.InvalidValue("grace_ms must not be negative")
    zone = default_tz
    if timezone:
        try:
            zone = ZoneInfo(timezone)
        except Exception:
            raise errors.InvalidValue(f"unknown time zone: {timezone}") from None
    plan = Plan(
        key,
        kind,
        action,
        clean_params,
        f_second,
        f_minute,
        f_hour,
        f_day,
        f_month,
        f_week,
        count_v,
        "",
        0,
        0,
        timezone,
        end_ms,
        None,
        0,
        0,
        _PENDING,
        now_ms,
        False,
        0,
        jitter_v,
        misfire,
        grace_v,
    )
    if kind == DELAY:
        interval = plan.interval_ms = schedule.delay_interval_ms(*values)
        if interval <= 0:
            raise errors.TimeNeverArrives("the interval is zero: the time will never arrive")
        if jitter_v >= interval:
            raise errors.InvalidValue("jitter_ms must be shorter than the interval")
        plan.anchor_ms = now_ms
        if not jitter_v and not end_ms:
            # the first of now + k * interval (what next_after gives, without its steps)
            plan.next_time = now_ms + interval
            return plan
    elif kind == CALENDAR:
        for (name, (lo, hi)), v in zip(CALENDAR_RANGES.items(), values, strict=True):
            if v != -1 and not lo <= v <= hi:
                raise errors.InvalidValue(f"{name} must be -1 or {lo}-{hi}, got {v}")
        if -1 not in values[:5]:
            # forsun: all of second..month fixed names one instant of the
            # current year, fired once.
            plan.end_ms = schedule.start_of_next_year_ms(now_ms, zone)
            if end_ms:
                plan.end_ms = min(plan.end_ms, end_ms)
    elif kind == CRON:
        if not cron:
            raise errors.MissingArgument("cron")
        try:
            schedule.compile_cron(cron)
        except ValueError as e:
            raise errors.InvalidValue(f"invalid cron expression: {e}") from None
        plan.cron = cron
    elif kind == AT:
        if at_ms is None:
            raise errors.MissingArgument("at")
        plan.anchor_ms = int(at_ms)
    try:
        plan.next_time = plan.next_after(now_ms, zone)
    except ValueError as e:
        raise errors.InvalidValue(str(e)) from None
    if plan.next_time is None:
        raise errors.TimeNeverArrives()
    return plan
