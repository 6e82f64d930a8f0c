"""Words for the web console: schedules, durations, instants and masked params.

Pure functions (no I/O, no clock): every "now" is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from forsun_box.clock import local_text
from forsun_box.enums import PlanStatus, RunResult
from forsun_box.logs import MASK
from forsun_box.plan import AT, CALENDAR, CRON, DELAY, Plan

#: a param whose name contains one of these has its value masked
SECRET_WORDS = ("password", "passwd", "token", "secret", "auth")

MODE_NAMES = {DELAY: "delay", CALENDAR: "calendar", CRON: "cron", AT: "single instant"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_UNITS = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s"), (1, "ms"))


def is_secret(name: str) -> bool:
    """Whether a param's value should not be shown (its name looks like a credential)."""
    lowered = name.lower()
    return any(w in lowered for w in SECRET_WORDS)


def mask_params(params: Mapping[str, str]) -> dict[str, str]:
    """``params`` with the values of secret-looking names replaced by :data:`MASK`."""
    return {k: (MASK if is_secret(k) else v) for k, v in params.items()}


def duration(ms: int, parts: int = 2) -> str:
    """``5400000`` -> ``"1 h 30 min"``; at most ``parts`` units, ``"0 s"`` for 0."""
    if ms <= 0:
        return "0 s"
    out: list[str] = []
    for size, unit in _UNITS:
        if ms >= size:
            n, ms = divmod(ms, size)
            out.append(f"{n} {unit}")
            if len(out) == parts:
                break
        elif out:
            break  # "1 h 5 s" reads worse than "1 h"
    return " ".join(out)


def relative(ms: int, now_ms: int) -> str:
    """``"in 3 min"``, ``"12 s ago"`` or ``"now"``: coarse, for a glance."""
    diff = ms - now_ms
    if abs(diff) < 1000:
        return "now"
    text = duration(abs(diff), parts=1 if abs(diff) < 3_600_000 else 2)
    return f"in {text}" if diff > 0 else f"{text} ago"


def local_time(ms: int | None, tz: ZoneInfo, with_ms: bool = False) -> str:
    """``ms`` as ``YYYY-MM-DD HH:MM:SS`` in ``tz`` (empty for None/0)."""
    if not ms:
        return ""
    text = local_text(ms, tz, with_zone=False)
    return text if with_ms else text[:-4]


def _hms(h: int, m: int, s: int) -> str:
    return f"{h:02d}:{m:02d}:{s:02d}"


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def describe_calendar(s: int, m: int, h: int, d: int, mo: int, w: int) -> str:
    """forsun's six calendar fields (-1 = any) in words, e.g. ``"daily at 16:32:00"``."""
    any_date = d == -1 and mo == -1 and w == -1
    if s != -1 and m != -1 and h != -1:
        at = f"at {_hms(h, m, s)}"
        if any_date:
            return f"daily {at}"
        if d == -1 and mo == -1:
            return f"every {_WEEKDAYS[w % 7]} {at}"
        if mo == -1 and w == -1:
            return f"monthly on day {d} {at}"
        if d != -1 and mo != -1 and w == -1:
            return f"once, on {_MONTHS[mo - 1]} {d} {at}"
        if d == -1 and w == -1:
            return f"daily in {_MONTHS[mo - 1]} {at}"
    elif any_date and h == -1:
        if s != -1 and m != -1:
            return f"hourly at {m:02d}:{s:02d} past the hour"
        if s != -1:
            return f"every minute at second {s}"
        if m == -1:
            return "every second"
    names = ("second", "minute", "hour", "day", "month", "weekday")
    values = (s, m, h, d, mo, w)
    fixed = [f"{n} {v}" for n, v in zip(names, values, strict=True) if v != -1]
    return "every second matching " + ", ".join(fixed)


def describe(plan: Plan, tz: ZoneInfo | None = None) -> str:
    """A plan's schedule in words: ``"every 5 s, 3 times"``, ``"daily at 16:32:00"``.

    ``tz`` is the server's zone, used for a single instant without a zone of its own.
    """
    if plan.kind == DELAY:
        every = duration(plan.interval_ms, parts=3)
        if plan.count == 1:
            text = f"once, {every} after creation"
        elif plan.count:
            text = f"every {every}, {_times(plan.count)}"
        else:
            text = f"every {every}, no end"
    elif plan.kind == CALENDAR:
        text = describe_calendar(
            plan.second, plan.minute, plan.hour, plan.day, plan.month, plan.week
        )
        if plan.count and not text.startswith("once"):
            text += f", {_times(plan.count)}"
    elif plan.kind == CRON:
        text = f"cron {plan.cron}"
        if plan.count:
            text += f", {_times(plan.count)}"
    elif plan.kind == AT:
        tz = ZoneInfo(plan.timezone) if plan.timezone else tz
        when = datetime.fromtimestamp(plan.anchor_ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")
        text = f"once at {when}"
    else:
        text = plan.kind
    if plan.timezone:
        text += f" ({plan.timezone})"
    return text


def zone_of(plan: Plan, server_tz: ZoneInfo) -> ZoneInfo:
    """The zone a plan's times are shown in: its own, else the server's."""
    return ZoneInfo(plan.timezone) if plan.timezone else server_tz


def zone_label(plan: Plan, server_tz: ZoneInfo) -> str:
    """The plan's zone name when its times are not in the server's zone, else ""."""
    if plan.timezone and plan.timezone != getattr(server_tz, "key", None):
        return plan.timezone
    return ""


def trigger_name(manual: bool) -> str:
    """What started a run: its schedule, or "fire now"."""
    return "fire now" if manual else "schedule"


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns first


_RESULT_WORDS: dict[int, str] = {
    RunResult.OK: "ok",
    RunResult.FAILED: "failed",
    RunResult.RETRYING: "failed, will retry",
}
_STATUS_WORDS: dict[int, str] = {s: s.label for s in PlanStatus}


def result_name(result: int) -> str:
    """A run record's result code in words."""
    return _RESULT_WORDS.get(result, str(result))


def status_name(status: int) -> str:
    """A plan's last status in words."""
    return _STATUS_WORDS.get(status, str(status))
