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
from dataclasses import dataclass, field

from forsun_box import errors

TIME_FIELDS = ("second", "minute", "hour", "day", "month", "week")
ACTION_ALIASES = {"sh": "shell", "bash": "shell"}
BARE_PARAM = {"shell": "cmd", "http": "url"}
_SHELL_SPACE = re.compile("[ \t\r\n]+")  # what shlex splits on, and only that
_NAME_EQ = re.compile(r"\s*[A-Za-z_][\w.\-]*\s*=")
# Params needing none of parse_params' general work: name=value pairs with no
# quotes, no empty segments and no whitespace around names or values.
_PAIR = re.compile(r"([A-Za-z_][\w.\-]*)=([^;]*)")
_VALUE = r"""(?:[^;'"\s](?:[^;'"]*[^;'"\s])?)?"""
_SIMPLE_PARAMS = re.compile(
    r"[A-Za-z_][\w.\-]*=" + _VALUE + r"(?:;[A-Za-z_][\w.\-]*=" + _VALUE + ")*"
)

# One piece of a shell word, as posix shlex reads it (whitespace is only " \t\r\n"):
# plain run | 'single quoted' | "double quoted" | backslash-escaped char | separator.
_WORD_PART = re.compile(
    r"""([^ \t\r\n'"\\]+)|'([^']*)'|"([^"\\]*(?:\\.[^"\\]*)*)"|\\(.)|([ \t\r\n]+)""", re.S
)
_DQ_ESCAPE = re.compile(r'\\(["\\])')  # inside "...": only \\ and \" drop the backslash
# A piece of a params value as split_params reads it: in "..." a backslash
# protects any next character, in '...' nothing.
_QUOTED_PART = re.compile(r"([^'\"]+)|'([^']*)'|\"([^\"\\]*(?:\\.[^\"\\]*)*)\"", re.S)
_ANY_ESCAPE = re.compile(r"\\(.)", re.S)
_DQ_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.S)

# The common line: key, six time fields and action all plain (no quotes or
# backslashes) and the fields in their everyday ASCII forms. Such a line is
# split here in one match; anything else takes the general path.
_WORD = r"""[^ \t\r\n'"\\]+"""
_FIELD = r"(?:\*/[0-9]+(?:/[0-9]+)?|\*|[0-9]+)"
_GAP = r"[ \t\r\n]+"
_FAST_LINE = re.compile(
    rf"[ \t\r\n]*({_WORD}){_GAP}({_FIELD}(?:{_GAP}{_FIELD}){{5}}){_GAP}({_WORD})"
    # The params, in the forms that need no shell-style work: plain words split
    # by single spaces; one '...' string; one "..." string without backslashes.
    # Anything else is taken whole, to be split into words.
    rf"""(?:{_GAP}(?:({_WORD}(?: {_WORD})*)|'([^']*)'|"([^"\\]*)"|(.*)))?""",
    re.S,
)
# Parsed time-field blocks ("*/5/3 * * * * *" -> delay, count, fields): bulk
# bodies repeat a few schedules, so most lines skip the per-field work. Bounded.
_BLOCKS: dict[str, tuple[bool, int, dict[str, int]]] = {}
_BLOCKS_MAX = 1024
_BLOCK_KEY_MAX = 64


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
    if _SIMPLE_PARAMS.fullmatch(text) is not None:
        # name=value;... with nothing to strip, unquote or skip: the pairs as written
        return dict(_PAIR.findall(text))
    if text[0] != ";" and ("=" not in text or _NAME_EQ.match(text) is None):
        # The first segment holds text[0], so it is not blank, and it is not
        # name=value (a match can't cross ';' or a quote): the text is one bare value.
        return _bare_param(text, action)
    quoted = "'" in text or '"' in text
    parts = split_top_level(text) if quoted else text.split(";")
    segments = [s for s in parts if s.strip()]
    if not all(_NAME_EQ.match(s) for s in segments):
        return _bare_param(text, action)
    params: dict[str, str] = {}
    for seg in segments:
        name, _, value = seg.partition("=")
        params[name.strip()] = _unquote(value.strip())
    return params


def _bare_param(text: str, action: str) -> dict[str, str]:
    """``text`` as the one bare parameter of ``action`` (shell's cmd, http's url)."""
    bare = BARE_PARAM.get(action)
    if bare is None:
        raise errors.InvalidValue(
            f"params must be name=value pairs separated by ';' for action {action}"
        )
    return {bare: _unquote(text)}


def _unquote(value: str) -> str:
    if "'" not in value and '"' not in value:
        return value  # nothing to remove (the common case, and the cheap one)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if value[0] not in inner:
            return inner
    # Remove the quotes, as ";".join(split_params(value)) would, in one regex pass.
    out: list[str] = []
    pos = 0
    end = len(value)
    match = _QUOTED_PART.match
    while pos < end:
        m = match(value, pos)
        if m is None:
            raise errors.InvalidValue("params: unterminated quote")
        pos = m.end()
        plain, single, double = m.groups()
        if plain is not None:
            out.append(plain)
        elif single is not None:
            out.append(single)
        else:
            out.append(_ANY_ESCAPE.sub(r"\1", double) if "\\" in double else double)
    return "".join(out)


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
        missing = ("key", *TIME_FIELDS, "action")
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


def shell_words(text: str) -> list[str]:
    """Split ``text`` into words exactly as ``shlex.split(text, posix=True)`` does.

    The same words and the same ``ValueError`` messages, without shlex's
    character-at-a-time reading: a regex takes whole runs of plain text and
    whole quoted strings at once.
    """
    words: list[str] = []
    parts: list[str] = []
    started = False  # a word is open (it may still be empty: ``''``)
    pos = 0
    end = len(text)
    match = _WORD_PART.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise ValueError(_shell_error(text, pos))
        pos = m.end()
        plain, single, double, escaped, _space = m.groups()
        if plain is not None:
            parts.append(plain)
        elif single is not None:
            parts.append(single)
        elif double is not None:
            parts.append(_DQ_ESCAPE.sub(r"\1", double) if "\\" in double else double)
        elif escaped is not None:
            parts.append(escaped)
        else:  # whitespace ends the open word, if any
            if started:
                words.append(parts[0] if len(parts) == 1 else "".join(parts))
                parts = []
                started = False
            continue
        started = True
    if started:
        words.append(parts[0] if len(parts) == 1 else "".join(parts))
    return words


def _shell_error(text: str, pos: int) -> str:
    """shlex's message for the unreadable piece at ``pos`` (a quote or a backslash)."""
    if text[pos] == "\\":
        return "No escaped character"  # a backslash ending the text
    if text[pos] == '"':
        body_end = _DQ_BODY.match(text, pos + 1).end()  # type: ignore[union-attr]
        if body_end < len(text):
            return "No escaped character"  # stopped at a lone final backslash
    return "No closing quotation"


def parse_line(line: str) -> PlanLine:
    """Parse one ``KEY S M H D MON W ACTION PARAMS`` line."""
    m = _FAST_LINE.fullmatch(line)
    if m is None:
        try:
            tokens = shell_words(line)
        except ValueError as e:
            raise errors.InvalidValue(f"cannot parse line: {e}") from None
        return parse_tokens(tokens)
    key, block, action, text, single, double, rest = m.groups()
    # The params are the remaining words joined by single spaces.
    if text is not None:
        pass  # already so
    elif single is not None:
        text = single
    elif double is not None:
        text = double
    elif not rest:
        text = ""
    elif "'" in rest or '"' in rest or "\\" in rest:
        try:
            words = shell_words(rest)
        except ValueError as e:
            raise errors.InvalidValue(f"cannot parse line: {e}") from None
        text = words[0] if len(words) == 1 else " ".join(words)
    elif "  " in rest or "\t" in rest or "\n" in rest or "\r" in rest or rest[-1] == " ":
        text = _SHELL_SPACE.sub(" ", rest).rstrip(" ")
    else:
        text = rest
    parsed = _BLOCKS.get(block)
    if parsed is None:
        parsed = _field_block(block)
        if len(block) <= _BLOCK_KEY_MAX:  # an odd long block is not worth keeping
            if len(_BLOCKS) >= _BLOCKS_MAX:
                _BLOCKS.clear()
            _BLOCKS[block] = parsed
    delay, count, fields = parsed
    action = ACTION_ALIASES.get(action, action)
    return PlanLine(
        key, delay, fields.copy(), count, action, parse_params(text, action) if text else {}
    )


def _field_block(block: str) -> tuple[bool, int, dict[str, int]]:
    """The six time fields of a fast-path line (well formed: the regex checked them)."""
    delay = False
    count = 0
    values: list[int] = []
    for raw in block.split():  # separated by " \t\r\n" only, holding no whitespace
        if raw == "*":
            values.append(-1)
        elif raw[0] != "*":
            values.append(int(raw))
        else:  # */N or */N/C
            interval, _, c = raw[2:].partition("/")
            values.append(int(interval))
            delay = True
            c_value = int(c) if c else 1
            if c_value > count:
                count = c_value
    if delay:
        # In delay mode the fields are summed: '*' counts as nothing.
        values = [0 if v == -1 else v for v in values]
    return delay, count, dict(zip(TIME_FIELDS, values, strict=True))


def parse_body(text: str) -> list[PlanLine]:
    """Parse an application/crontab body: one plan per line; blank and ``#`` lines skipped."""
    out: list[PlanLine] = []
    append = out.append
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] == "#":
            continue
        try:
            append(parse_line(stripped))
        except errors.ForsunBoxError as e:
            raise errors.ForsunBoxError(f"line {n}: {e.message}", e.code) from None
    return out
