"""How the ``forsun`` client prints what the server answers.

Three views of the same answers:

- ``forsun`` (the default): forsun 0.1.4's own layout, so scripts written
  against forsun's client parse it unchanged. A plan is one line,
  ``NEXT_TIME_LOCAL KEY S M H D MON W ACTION "PARAMS"`` (the local time of
  ``next_time`` as ``str(datetime)`` with its UTC offset, the six time fields
  as forsun writes them, the params as ``name='value'`` joined by ``;`` in
  double quotes); ``info`` is forsun's keys in forsun's order and formats.
- ``long``: every field of a plan on its own ``name:<TAB>value`` line, every
  ``info`` key, times with both unix seconds and local time.
- ``json``: one JSON document per command, for scripts.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from forsun_box.enums import RunResult

FORSUN = "forsun"
LONG = "long"
JSON = "json"
VIEWS = (FORSUN, LONG, JSON)

#: forsun's ``info`` lines, in its order; "" is the blank line between groups
FORSUN_INFO_KEYS: tuple[str, ...] = (
    "python_version",
    "forsun_version",
    "start_time",
    "cpu_user",
    "cpu_system",
    "mem_rss",
    "mem_vms",
    "current_time",
    "",
    "stores",
    "current_store",
    "actions",
    "bind_port",
    "http_bind_port",
    "extensions",
    "",
    "connecting_count",
    "connected_count",
    "requesting_count",
    "requested_count",
    "requested_error_count",
    "",
    "http_connecting_count",
    "http_connected_count",
    "http_requesting_count",
    "http_requested_count",
    "http_requested_error_count",
    "",
    "created_count",
    "create_timeouted_count",
    "removed_count",
    "plan_count",
    "timeout_handling_count",
    "timeout_handled_count",
    "",
    "action_executing_count",
    "action_executed_count",
    "action_executed_error_count",
    "action_retried_count",
    "",
    "timer_loop_count",
    "timer_loop_ready_error_count",
    "",
)

PLAN_FIELDS = (
    "key",
    "is_time_out",
    "second",
    "minute",
    "hour",
    "day",
    "month",
    "week",
    "count",
    "current_count",
    "status",
    "next_time",
    "last_timeout",
    "action",
    "params",
)


# ---------------------------------------------------------------- forsun's layout


def local_time(ts: int) -> str:
    """Unix seconds as ``str(datetime)`` in the local zone with its offset (forsun's form)."""
    try:
        return str(datetime.fromtimestamp(ts).astimezone())
    except (OverflowError, OSError, ValueError):
        return str(ts)


def time_fields(plan: Any) -> str:
    """The six time fields as forsun's client writes them.

    A delay plan: ``*`` for a field of 0 (week: -1), else ``*/VALUE/COUNT``;
    a calendar plan: ``*`` for -1, else the number.
    """
    names = ("second", "minute", "hour", "day", "month", "week")
    out = []
    for name in names:
        value = getattr(plan, name)
        if plan.is_time_out:
            idle = -1 if name == "week" else 0
            out.append("*" if value == idle else f"*/{value}/{plan.count}")
        else:
            out.append("*" if value == -1 else str(value))
    return " ".join(out)


def plan_line(plan: Any) -> str:
    """One plan on one line, forsun's layout (see the module docstring)."""
    params = ";".join(f"{k}='{v}'" for k, v in (plan.params or {}).items())
    return (
        f'{local_time(plan.next_time or 0)} {plan.key} {time_fields(plan)} {plan.action} "{params}"'
    )


def _size(raw: str) -> str:
    """Bytes in forsun's form: two decimals and a unit, B, K, M or G.

    As forsun's client does, the value is divided by 1024 once per unit passed,
    also at G (so 2 TiB reads 2.00G): the lines stay the same as its.
    """
    value: float = int(raw or "0", 0)
    unit = "B"
    for step in ("B", "K", "M", "G"):
        unit = step
        if value < 1024:
            break
        value /= 1024.0
    return f"{value:.2f}{unit}"


def forsun_info(info: dict[str, str]) -> list[str]:
    """forsun's ``info`` lines: its keys in its order, sizes with a unit, the time local."""
    lines = []
    for key in FORSUN_INFO_KEYS:
        if not key:
            lines.append("")
        elif key in ("mem_rss", "mem_vms"):
            lines.append(f"{key}:\t{_size(info.get(key, '0'))}")
        elif key == "current_time":
            lines.append(f"{key}:\t{local_time(int(info.get(key) or 0))}")
        else:
            lines.append(f"{key}:\t{info.get(key, '')}")
    return lines


# ---------------------------------------------------------------- the long view


def _when(ts: int) -> str:
    if not ts:
        return "0"
    try:
        local = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return f"{ts} ({local})"


def _quote(value: str) -> str:
    if value and not any(c in value for c in " \t;'\"\\"):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_params(params: dict[str, str] | None) -> str:
    """Params in the ``set`` syntax: ``name=value;name='quoted value'`` (quoted only if needed)."""
    return ";".join(f"{k}={_quote(v)}" for k, v in (params or {}).items())


def when_ms(ms: int) -> str:
    """Unix milliseconds followed by the local time with milliseconds in parentheses."""
    try:
        local = datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return f"{ms} ({local})"


def format_plan(plan: Any) -> str:
    """A plan as ``name:<TAB>value`` lines, one per field in the IDL's order."""
    lines = []
    for name in PLAN_FIELDS:
        value = getattr(plan, name)
        if name in ("next_time", "last_timeout"):
            text = _when(value or 0)
        elif name == "params":
            text = format_params(value)
        elif name == "is_time_out":
            text = "true" if value else "false"
        else:
            text = str(value)
        lines.append(f"{name}:\t{text}")
    return "\n".join(lines)


def format_run(run: Any) -> str:
    """One run (``ForsunRun``) as one tab-separated line: due, late, took, attempt, result, error."""
    parts = [
        when_ms(run.due_ms),
        f"late={max(0, run.started_ms - run.due_ms)}",
        f"took={run.duration_ms}",
        f"attempt={run.attempt}",
        RunResult.label_of(run.result),
    ]
    if run.error:
        parts.append(" ".join(run.error.split()))  # one line per run
    return "\t".join(parts)


# ---------------------------------------------------------------- JSON


def plan_dict(plan: Any) -> dict[str, Any]:
    """A plan struct as a JSON object (the IDL's field names)."""
    out = {name: getattr(plan, name) for name in PLAN_FIELDS}
    out["params"] = dict(out["params"] or {})
    return out


def run_dict(run: Any) -> dict[str, Any]:
    """A run struct as a JSON object."""
    names = ("due_ms", "started_ms", "duration_ms", "attempt", "result", "error")
    return {name: getattr(run, name) for name in names}


def to_json(value: Any) -> str:
    """One compact JSON document, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, sort_keys=False)
