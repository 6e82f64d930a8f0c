"""forsun's crontab line syntax, shared by the CLI ``set`` and HTTP's application/crontab.

A line is ``KEY S M H D MON W ACTION PARAMS``:

- each time field is a number, ``*`` (any), ``*/N`` or ``*/N/C``. A field
  written ``*/N`` makes the whole line a delay-mode plan: interval N in that
  field's unit, C firings (default 1); the other fields then count 0.
- ``PARAMS`` is ``name=value;name='quoted value'``; for ``shell`` a bare
  string is the ``cmd``, for ``http`` the ``url``. Quoting follows the
  shell: a quoted value keeps ``;``, ``=`` and ``&`` intact.
- ``sh`` and ``bash`` mean ``shell``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from forsun_box import errors

TIME_FIELDS = ("second", "minute", "hour", "day", "month", "week")
ACTION_ALIASES = {"sh": "shell", "bash": "shell"}
BARE_PARAM = {"shell": "cmd", "http": "url"}
_SHELL_SPACE = re.compile("[ \t\r\n]+")  # what shlex splits on, and only that
_NAME_EQ = re.compile(r"\s*[A-Za-z_][\w.\-]*\s*=")


@dataclass(slots=True)
class PlanLine:
    """One parsed line: what :func:`forsun_box.plan.build_plan` needs."""

    key: str
    is_time_out: bool
    fields: dict[str, int]
    count: int
    action: str
    params: dict[str, str] = field(default_factory=dict)


def split_params(text: str) -> list[str]:
    """Split ``a=1;b='x;y'`` on top-level ``;`` (quotes protect separators)."""
    parts: list[str] = []
    buf: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 2
                continue
            if c == quote:
                quote = ""
            else:
                buf.append(c)
        elif c in "'\"":
            quote = c
        elif c == ";":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    if quote:
        raise errors.InvalidValue("params: unterminated quote")
    parts.append("".join(buf))
    return parts


def split_top_level(text: str, escapes: bool = False) -> list[str]:
    """Split ``text`` on ``;`` outside quotes, leaving quotes in place.

    With ``escapes`` a backslash (outside single quotes) protects the next
    character, as in a shell command line.
    """
    segs: list[str] = []
    start = 0
    quote = ""
    escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif escapes and c == "\\" and quote != "'":
            escaped = True
        elif quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == ";":
            segs.append(text[start:i])
            start = i + 1
    segs.append(text[start:])
    return segs


def parse_params(text: str, action: str) -> dict[str, str]:
    """Parse forsun's params string for ``action``."""
    text = text.strip()
    if not text:
        return {}
    quoted = "'" in text or '"' in text
    parts = split_top_level(text) if quoted else text.split(";")
    segments = [s for s in parts if s.strip()]
    if not all(_NAME_EQ.match(s) for s in segments):
        bare = BARE_PARAM.get(action)
        if bare is None:
            raise errors.InvalidValue(
                f"params must be name=value pairs separated by ';' for action {action}"
            )
        return {bare: _unquote(text)}
    params: dict[str, str] = {}
    for seg in segments:
        name, _, value = seg.partition("=")
        params[name.strip()] = _unquote(value.strip())
    return params


def _unquote(value: str) -> str:
    if "'" not in value and '"' not in value:
        return value  # nothing to remove (the common case, and the cheap one)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if value[0] not in inner:
            return inner
    joined = split_params(value)
    return ";".join(joined)


def _time_field(name: str, raw: str) -> tuple[int, int | None, int]:
    """Returns (value, interval or None, count) for one field."""
    if raw == "*":
        return -1, None, 0
    if raw.startswith("*/"):
        parts = raw[2:].split("/")
        try:
            interval = int(parts[0])
            count = int(parts[1]) if len(parts) > 1 else 1
        except (ValueError, IndexError):
            raise errors.InvalidValue(f"{name}: bad interval {raw!r}") from None
        if len(parts) > 2 or interval < 0 or count < 0:
            raise errors.InvalidValue(f"{name}: bad interval {raw!r}")
        return interval, interval, count
    try:
        return int(raw), None, 0
    except ValueError:
        raise errors.InvalidValue(
            f"{name}: expected a number, '*' or '*/N[/C]', got {raw!r}"
        ) from None


def parse_tokens(tokens: list[str]) -> PlanLine:
    """Parse the tokens of one line (after shell-style splitting)."""
    if len(tokens) < 8:
        missing = ("key",) + TIME_FIELDS + ("action",)
        raise errors.MissingArgument(missing[len(tokens)])
    values: dict[str, int] = {}
    delay = False
    count = 0
    for name, raw in zip(TIME_FIELDS, tokens[1:7]):  # noqa: B905 - tokens[1:7] has 6
        if raw == "*":  # the common field, without a call
            values[name] = -1
            continue
        value, interval, c = _time_field(name, raw)
        values[name] = value
        if interval is not None:
            delay = True
            if c > count:
                count = c
    if delay:
        # In delay mode the fields are summed: '*' counts as nothing.
        for name, v in values.items():
            if v == -1:
                values[name] = 0
    action = ACTION_ALIASES.get(tokens[7], tokens[7])
    rest = tokens[8:]
    params = parse_params(rest[0] if len(rest) == 1 else " ".join(rest), action)
    return PlanLine(tokens[0], delay, values, count, action, params)


def parse_line(line: str) -> PlanLine:
    """Parse one ``KEY S M H D MON W ACTION PARAMS`` line."""
    if "'" not in line and '"' not in line and "\\" not in line:
        # Without quotes or backslashes shell-style splitting is splitting on
        # whitespace, at a fraction of shlex's cost (bulk bodies have many lines).
        return parse_tokens([t for t in _SHELL_SPACE.split(line) if t])
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError as e:
        raise errors.InvalidValue(f"cannot parse line: {e}") from None
    return parse_tokens(tokens)


def parse_body(text: str) -> list[PlanLine]:
    """Parse an application/crontab body: one plan per line; blank and ``#`` lines skipped."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            out.append(parse_line(stripped))
        except errors.ForsunBoxError as e:
            raise errors.ForsunBoxError(f"line {n}: {e.message}", e.code) from None
    return out
