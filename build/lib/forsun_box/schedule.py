"""Schedule time math: the next firing of a plan strictly after an instant.

Pure functions: no I/O, and the clock is never read; callers pass "after".
Instants are int milliseconds since the epoch (UTC). Calendar and cron plans
fire on whole seconds, so their firings are multiples of 1000 ms.

Kinds
-----
* delay: firings fall on ``anchor + k * interval`` for k >= 1.
* at: one instant.
* calendar: forsun's six fields ``second minute hour day month week``; -1 is
  "any", ``week`` is the day of the week (0-6, 0 = Sunday, 7 = Sunday too).
  A second fires when all its fields match, ``day`` and ``week`` included.
* cron: 5 fields (``minute hour day-of-month month day-of-week``) or 6 fields
  with the *second first* (``second minute hour dom month dow``). Names
  (``jan``, ``mon``), lists, ranges (a reversed range such as ``fri-mon``
  wraps around), steps and the shortcuts ``@yearly @annually @monthly
  @weekly @daily @midnight @hourly`` are supported; ``L``, ``W``, ``#``,
  ``?``, ``H`` and ``@reboot`` are refused. As in Vixie cron, when both
  day-of-month and day-of-week are restricted a day matches if *either*
  matches; a field written starting with ``*`` (``*`` or ``*/2``) counts as
  unrestricted, and then both fields must match.

Calendar and cron plans are evaluated in the plan's time zone (local wall
time), then converted to UTC. Across daylight-saving changes:

* A matching wall time that does not exist (the clock jumps forward over it)
  fires once, at the first instant after the jump. Several matching times in
  the skipped span collapse into that one firing, which is not repeated when
  the first wall time after the jump matches too.
* A wall time that happens twice (the clock is set back) fires only at its
  first occurrence, except when the plan's hour is "any" (-1, or every hour
  in cron): then the clock simply runs and it fires at each occurrence, so an
  every-minute plan keeps firing every minute through the repeated hour.

A calendar or cron plan that can never match (``day=31 month=2``) has no
next firing (None). Searches look at most 40 years past "after": the longest
gap between two occurrences of any possible spec is 40 years (February 29
on one given weekday, across 2100 which is not a leap year).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from croniter import croniter

if TYPE_CHECKING:
    from forsun_box.plan import Plan

# The values of forsun_box.plan's kind constants; plan.py imports this
# module, so they are compared as strings instead of imported.
_DELAY = "delay"
_CALENDAR = "calendar"
_CRON = "cron"
_AT = "at"

HORIZON_YEARS = 40
_MAX_YEAR = 9999
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MAX_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

Wall = tuple[int, int, int, int, int, int]  # year, month, day, hour, minute, second


def delay_interval_ms(second: int, minute: int, hour: int, day: int, month: int, week: int) -> int:
    """forsun's delay-mode interval in ms; a negative field (-1) counts 0.

    ``second + 60*minute + 3600*hour + 86400*day + 30*86400*month +
    7*86400*week`` seconds.
    """
    # conditional expressions, not a loop: bulk creates call this once per plan
    return (
        (second if second > 0 else 0)
        + (minute * 60 if minute > 0 else 0)
        + (hour * 3600 if hour > 0 else 0)
        + (day * 86400 if day > 0 else 0)
        + (month * 30 * 86400 if month > 0 else 0)
        + (week * 7 * 86400 if week > 0 else 0)
    ) * 1000


def _next_table(allowed: frozenset[int], size: int) -> tuple[int | None, ...]:
    """``table[i]`` is the smallest allowed value >= i, or None (size + 1 entries)."""
    out: list[int | None] = [None] * (size + 1)
    nxt: int | None = None
    for i in range(size - 1, -1, -1):
        if i in allowed:
            nxt = i
        out[i] = nxt
    return tuple(out)


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


class CalendarSpec:
    """Compiled calendar/cron fields: sets of allowed values and lookup tables.

    ``dows`` uses 0 = Sunday. ``day_or``: a day matches when its day of month
    *or* its day of week is allowed (cron's rule); otherwise both must be.
    """

    __slots__ = (
        "seconds",
        "minutes",
        "hours",
        "doms",
        "months",
        "dows",
        "day_or",
        "hour_any",
        "possible",
        "_nsec",
        "_nmin",
        "_nhour",
        "_ndom",
        "_nmonth",
        "_dow_delta",
        "_dom_ok",
        "_first_time",
    )

    def __init__(
        self,
        seconds: Iterable[int],
        minutes: Iterable[int],
        hours: Iterable[int],
        doms: Iterable[int],
        months: Iterable[int],
        dows: Iterable[int],
        day_or: bool = False,
    ) -> None:
        self.seconds = frozenset(seconds)
        self.minutes = frozenset(minutes)
        self.hours = frozenset(hours)
        self.doms = frozenset(doms)
        self.months = frozenset(months)
        self.dows = frozenset(d % 7 for d in dows)
        for name, vals, lo, hi in (
            ("second", self.seconds, 0, 59),
            ("minute", self.minutes, 0, 59),
            ("hour", self.hours, 0, 23),
            ("day", self.doms, 1, 31),
            ("month", self.months, 1, 12),
            ("week", self.dows, 0, 6),
        ):
            if not vals:
                raise ValueError(f"no {name} allowed")
            if min(vals) < lo or max(vals) > hi:
                raise ValueError(f"{name} must be within {lo}-{hi}")
        self.day_or = day_or
        self.hour_any = len(self.hours) == 24
        self._nsec = _next_table(self.seconds, 60)
        self._nmin = _next_table(self.minutes, 60)
        self._nhour = _next_table(self.hours, 24)
        self._ndom = _next_table(self.doms, 32)
        self._nmonth = _next_table(self.months, 13)
        self._dow_delta = tuple(
            min(k for k in range(7) if (d + k) % 7 in self.dows) for d in range(7)
        )
        self._dom_ok = tuple(i in self.doms for i in range(33))
        self._first_time = (min(self.hours), min(self.minutes), min(self.seconds))
        # Only a day-of-month that no allowed month has makes a spec
        # impossible: every date falls on each weekday some year.
        self.possible = day_or or any(
            d <= _MAX_DAYS_IN_MONTH[m] for m in self.months for d in self.doms
        )

    def __repr__(self) -> str:
        return (
            f"CalendarSpec(seconds={sorted(self.seconds)}, minutes={sorted(self.minutes)}, "
            f"hours={sorted(self.hours)}, doms={sorted(self.doms)}, "
            f"months={sorted(self.months)}, dows={sorted(self.dows)}, day_or={self.day_or})"
        )

    # -- wall-clock search (naive local time, no zone) --------------------

    def _time_at_or_after(self, h0: int, m0: int, s0: int) -> tuple[int, int, int] | None:
        """The first allowed time of day at or after h0:m0:s0 (s0 may be 60)."""
        h = self._nhour[h0]
        if h is None:
            return None
        if h == h0:
            m = self._nmin[m0]
            if m == m0:
                s = self._nsec[s0]
                if s is not None:
                    return (h0, m0, s)
                m = self._nmin[m0 + 1]
            if m is not None:
                return (h0, m, self._first_time[2])
            h = self._nhour[h0 + 1]
            if h is None:
                return None
        return (h, self._first_time[1], self._first_time[2])

    def _day_in_month(self, y: int, mo: int, d: int, dim: int) -> int:
        """The first matching day >= d of a month, or 0."""
        ndom = self._ndom
        delta = self._dow_delta
        base = date(y, mo, 1).toordinal()  # ordinal % 7 is the weekday, 0 = Sunday
        if self.day_or:
            nd = ndom[d]
            by_dow = d + delta[(base + d - 1) % 7]
            best = by_dow if nd is None else min(nd, by_dow)
            return best if best <= dim else 0
        while d <= dim:
            nd = ndom[d]
            if nd is None or nd > dim:
                return 0
            k = delta[(base + nd - 1) % 7]
            if k == 0:
                return nd
            d = nd + k
        return 0

    def _day_matches(self, y: int, mo: int, d: int) -> bool:
        if self._nmonth[mo] != mo:
            return False
        dom_ok = self._dom_ok[d]
        if dom_ok and not self.day_or and len(self.dows) == 7:
            return True
        dow_ok = self._dow_delta[date(y, mo, d).toordinal() % 7] == 0
        return (dom_ok or dow_ok) if self.day_or else (dom_ok and dow_ok)

    def _next_day(self, y: int, mo: int, d: int) -> tuple[int, int, int] | None:
        """The first matching date >= (y, mo, d); d may run past the month's end."""
        limit = min(y + HORIZON_YEARS, _MAX_YEAR)
        nmonth = self._nmonth
        while True:
            m2 = nmonth[mo]
            if m2 is None:
                y += 1
                if y > limit:
                    return None
                mo = nmonth[1]  # type: ignore[assignment]
                d = 1
                continue
            if m2 != mo:
                mo, d = m2, 1
            dim = 29 if mo == 2 and _is_leap(y) else _DAYS_IN_MONTH[mo]
            if d <= dim:
                found = self._day_in_month(y, mo, d, dim)
                if found:
                    return (y, mo, found)
            mo += 1
            d = 1

    def next_wall(self, y: int, mo: int, d: int, h: int, mi: int, s: int) -> Wall | None:
        """The first matching wall time at or after the given one, or None.

        ``s`` may be 60 (meaning the next minute), so callers can pass "one
        second after" without normalising.
        """
        if not self.possible:
            return None
        if self._day_matches(y, mo, d):
            t = self._time_at_or_after(h, mi, s)
            if t is not None:
                return (y, mo, d, *t)
        day = self._next_day(y, mo, d + 1)
        if day is None:
            return None
        return (*day, *self._first_time)


# -- compiling --------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def compile_calendar(
    second: int, minute: int, hour: int, day: int, month: int, week: int
) -> CalendarSpec:
    """forsun's six calendar fields (-1 = any) as a :class:`CalendarSpec`.

    Raises ValueError for a field out of range.
    """

    def field(name: str, v: int, lo: int, hi: int) -> range:
        if v == -1:
            return range(lo, hi + 1)
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be -1 or {lo}-{hi}, got {v}")
        return range(v, v + 1)

    return CalendarSpec(
        field("second", second, 0, 59),
        field("minute", minute, 0, 59),
        field("hour", hour, 0, 23),
        field("day", day, 1, 31),
        field("month", month, 1, 12),
        range(0, 7) if week == -1 else [v % 7 for v in field("week", week, 0, 7)],
    )


_CRON_SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# name, low, high, names allowed in the field
_CRON_FIELDS = {
    "second": (0, 59, ()),
    "minute": (0, 59, ()),
    "hour": (0, 23, ()),
    "day-of-month": (1, 31, ()),
    "month": (1, 12, _MONTH_NAMES),
    "day-of-week": (0, 7, _DOW_NAMES),
}
_TOKEN = re.compile(r"^(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?$")


def _cron_value(field: str, text: str) -> int:
    lo, hi, names = _CRON_FIELDS[field]
    if text.isdigit():
        v = int(text)
    elif text in names:
        v = names.index(text) + (1 if field == "month" else 0)
    else:
        raise ValueError(f"{text!r} is not a value of the {field} field")
    if not lo <= v <= hi:
        raise ValueError(f"{field} value {v} is outside {lo}-{hi}")
    return v


def _check_cron_field(field: str, text: str) -> str:
    """Validate one field and return it in the form handed to croniter."""
    out = []
    for token in text.split(","):
        m = _TOKEN.match(token)
        if not m:
            raise ValueError(
                f"unsupported {field} item {token!r} (L, W, #, ? and H are not supported)"
            )
        star, low, high, step = m.groups()
        if step is not None and int(step) == 0:
            raise ValueError(f"step 0 in {field} item {token!r}")
        if star:
            out.append(token)
            continue
        lo_v = _cron_value(field, low)
        if high is None:
            out.append(token)
            continue
        hi_v = _cron_value(field, high)
        if lo_v == hi_v:
            # croniter reads an equal range ("5-5") as the whole field;
            # cron means the one value.
            out.append(str(lo_v))
        else:
            out.append(token)
    return ",".join(out)


@functools.lru_cache(maxsize=4096)
def compile_cron(expr: str) -> CalendarSpec:
    """Parse a 5- or 6-field (second first) cron expression.

    Raises ValueError with a message saying what is wrong.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("empty cron expression")
    text = expr.strip().lower()
    if text.startswith("@"):
        if text not in _CRON_SHORTCUTS:
            raise ValueError(f"unsupported cron shortcut {expr.strip()!r}")
        text = _CRON_SHORTCUTS[text]
    parts = text.split()
    names: tuple[str, ...] = ("minute", "hour", "day-of-month", "month", "day-of-week")
    if len(parts) == 6:
        names = ("second", *names)
    elif len(parts) != 5:
        raise ValueError(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week)"
            f" or 6 with the second first, got {len(parts)}"
        )
    fields = [_check_cron_field(name, part) for name, part in zip(names, parts, strict=True)]
    try:
        expanded, _nth = croniter.expand(" ".join(fields), second_at_beginning=len(parts) == 6)
    except ValueError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise ValueError(lines[-1] if lines else "invalid cron expression") from None
    # croniter's order: minute hour dom month dow [second]
    seconds: Iterable[int] = expanded[5] if len(expanded) > 5 else [0]

    def values(vals: list[Any], lo: int, hi: int) -> Iterable[int]:
        if "*" in vals:
            return range(lo, hi + 1)
        if not all(isinstance(v, int) for v in vals):
            raise ValueError(f"unsupported cron expression {expr!r}")
        return vals

    dom_star = parts[-3].startswith("*")
    dow_star = parts[-1].startswith("*")
    return CalendarSpec(
        values(list(seconds), 0, 59),
        values(expanded[0], 0, 59),
        values(expanded[1], 0, 23),
        values(expanded[2], 1, 31),
        values(expanded[3], 1, 12),
        values(expanded[4], 0, 6),
        day_or=not dom_star and not dow_star,
    )


# -- zone conversion ----------------------------------------------------------


def _wall_seconds(w: Wall) -> int:
    y, mo, d, h, mi, s = w
    return (date(y, mo, d).toordinal() - _EPOCH_ORDINAL) * 86400 + h * 3600 + mi * 60 + s


def _wall_from_seconds(ws: int) -> Wall:
    days, rem = divmod(ws, 86400)
    d = date.fromordinal(days + _EPOCH_ORDINAL)
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    return (d.year, d.month, d.day, h, mi, s)


def _secs(td: timedelta | None) -> int:
    if td is None:
        return 0
    return td.days * 86400 + td.seconds


def _offset_at(tz: ZoneInfo, x: int) -> int:
    """UTC offset (s) in force at instant x (s)."""
    return _secs(datetime.fromtimestamp(x, tz).utcoffset())


def _transition(tz: ZoneInfo, lo: int, hi: int) -> int:
    """The first instant in (lo, hi] whose offset differs from lo's (one change assumed)."""
    before = _offset_at(tz, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_at(tz, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


def _first_instant(w: Wall, tz: ZoneInfo) -> int:
    """The instant (s) a matching wall time fires at first.

    Its only instant when it is unambiguous, the first of two when the clock
    was set back, the end of the jump when it was skipped.
    """
    dt = datetime(*w)
    o0 = _secs(tz.utcoffset(dt))
    o1 = _secs(tz.utcoffset(dt.replace(fold=1)))
    ws = _wall_seconds(w)
    if o0 >= o1:
        return ws - o0
    # Skipped: the wall span [T + o0, T + o1) does not exist, so T lies in
    # (ws - o1, ws - o0].
    return _transition(tz, ws - o1, ws - o0)


def _next_calendar(spec: CalendarSpec, a: int, tz: ZoneInfo) -> int | None:
    """The first firing (s) strictly after instant a (s)."""
    if not spec.possible:
        return None
    here = datetime.fromtimestamp(a, tz)
    o_here = _secs(here.utcoffset())
    wall: Wall = (here.year, here.month, here.day, here.hour, here.minute, here.second)
    if here.fold:
        # a is in the second pass of a repeated span. Its walls' first
        # occurrences are past; they fire again only when the hour is "any".
        o_first = _secs(here.replace(fold=0).utcoffset())
        t = _transition(tz, a - (o_first - o_here), a)
        end = _wall_from_seconds(t + o_first)  # first wall after the repeated span
        if spec.hour_any:
            w = spec.next_wall(*wall[:5], wall[5] + 1)
            if w is not None and w < end:
                return _wall_seconds(w) - o_here
        w = spec.next_wall(*end)
        return None if w is None else _first_instant(w, tz)
    w = spec.next_wall(*wall[:5], wall[5] + 1)
    best = None if w is None else _first_instant(w, tz)
    if spec.hour_any:
        o_later = _secs(here.replace(fold=1).utcoffset())
        if o_later < o_here:
            # a is in the first pass of a span about to repeat: the second
            # pass (from the transition on) fires too.
            t = _transition(tz, a, a + (o_here - o_later))
            end = _wall_from_seconds(t + o_here)
            w2 = spec.next_wall(*_wall_from_seconds(t + o_later))
            if w2 is not None and w2 < end:
                x2 = _wall_seconds(w2) - o_later
                if best is None or x2 < best:
                    best = x2
    return best


def _calendar_ms(spec: CalendarSpec, after_ms: int, tz: ZoneInfo) -> int | None:
    try:
        x = _next_calendar(spec, after_ms // 1000, tz)
    except (OverflowError, OSError, ValueError):
        # Past the years datetime can represent (9999): nothing to fire.
        return None
    return None if x is None else x * 1000


def next_fire(plan: Plan, after_ms: int, tz: ZoneInfo) -> int | None:
    """The plan's next firing strictly after ``after_ms``, or None.

    Ignores ``count`` and ``end_ms`` (:meth:`Plan.next_after` applies them).
    Raises ValueError for an invalid cron expression or calendar field.
    """
    kind = plan.kind
    if kind == _CALENDAR:
        spec = compile_calendar(
            plan.second, plan.minute, plan.hour, plan.day, plan.month, plan.week
        )
        return _calendar_ms(spec, after_ms, tz)
    if kind == _CRON:
        return _calendar_ms(compile_cron(plan.cron), after_ms, tz)
    if kind == _DELAY:
        interval = plan.interval_ms
        if interval <= 0:
            return None
        k = max(1, (after_ms - plan.anchor_ms) // interval + 1)
        return plan.anchor_ms + k * interval
    if kind == _AT:
        return plan.anchor_ms if plan.anchor_ms > after_ms else None
    raise ValueError(f"unknown schedule kind: {kind}")


def preview(plan: Plan, after_ms: int, tz: ZoneInfo, n: int) -> list[int]:
    """The next ``n`` firings after ``after_ms`` (fewer if the schedule ends)."""
    out: list[int] = []
    t = after_ms
    for _ in range(n):
        nxt = next_fire(plan, t, tz)
        if nxt is None:
            break
        out.append(nxt)
        t = nxt
    return out


def start_of_next_year_ms(now_ms: int, tz: ZoneInfo) -> int:
    """The instant of Jan 1 00:00:00, in ``tz``, of the year after now's year."""
    year = datetime.fromtimestamp(now_ms // 1000, tz).year
    return _first_instant((year + 1, 1, 1, 0, 0, 0), tz) * 1000
