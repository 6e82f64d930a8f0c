"""The crontab line syntax shared by the CLI and HTTP's application/crontab."""

from __future__ import annotations

import re
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsun_box import errors
from forsun_box.api.formats import crontab
from forsun_box.api.formats.crontab import (
    BARE_PARAM,
    PlanLine,
    parse_body,
    parse_line,
    parse_params,
    parse_tokens,
    shell_words,
    split_params,
    split_top_level,
)


def test_delay_line() -> None:
    p = parse_line("t1 */5/1 * * * * * shell 'cmd=ls'")
    assert p.key == "t1" and p.is_time_out and p.count == 1
    assert p.fields == {"second": 5, "minute": 0, "hour": 0, "day": 0, "month": 0, "week": 0}
    assert p.action == "shell" and p.params == {"cmd": "ls"}


def test_delay_default_count_is_one_and_units_follow_the_field() -> None:
    p = parse_line("t 0 */2 * * * * shell ls")
    assert p.is_time_out and p.count == 1 and p.fields["minute"] == 2 and p.fields["second"] == 0


def test_calendar_line_with_quoted_url() -> None:
    p = parse_line("""t2 0 32 16 * * * http "url='http://127.0.0.1:9000/a?x=1&y=2;z'" """)
    assert not p.is_time_out
    assert p.fields == {"second": 0, "minute": 32, "hour": 16, "day": -1, "month": -1, "week": -1}
    assert p.params == {"url": "http://127.0.0.1:9000/a?x=1&y=2;z"}


def test_several_params_and_quotes() -> None:
    params = parse_params("method=post;url='http://h/?a=b&c=d';body=\"x;y\"", "http")
    assert params == {"method": "post", "url": "http://h/?a=b&c=d", "body": "x;y"}


def test_bare_string_is_cmd_or_url() -> None:
    assert parse_params("echo a && date", "shell") == {"cmd": "echo a && date"}
    assert parse_params("http://h/x?a=1", "http") == {"url": "http://h/x?a=1"}
    with pytest.raises(errors.InvalidValue):
        parse_params("just words", "redis")


def test_aliases() -> None:
    assert parse_line("k * * * * * * bash ls").action == "shell"
    assert parse_line("k * * * * * * sh ls").action == "shell"


def test_unquoted_params_spanning_tokens() -> None:
    assert parse_line("k 1 * * * * * shell echo hello world").params == {"cmd": "echo hello world"}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("k 1 2", errors.MISSING_ARGUMENT),
        ("k x * * * * * shell ls", errors.INVALID_VALUE),
        ("k */x * * * * * shell ls", errors.INVALID_VALUE),
        ("k */5/1/2 * * * * * shell ls", errors.INVALID_VALUE),
        ("k 1 * * * * * shell 'unterminated", errors.INVALID_VALUE),
    ],
)
def test_bad_lines(line: str, code: int) -> None:
    with pytest.raises(errors.ForsunBoxError) as e:
        parse_line(line)
    assert e.value.code == code


def test_body_skips_comments_and_names_bad_line() -> None:
    assert len(parse_body("# x\n\nk 1 * * * * * shell ls\n")) == 1
    with pytest.raises(errors.ForsunBoxError) as e:
        parse_body("k 1 * * * * * shell ls\nk2 nope")
    assert "line 2" in e.value.message


_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="'\x00"), max_size=30
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), _value, min_size=1, max_size=5
    )
)
def test_single_quoted_values_round_trip(params: dict[str, str]) -> None:
    text = ";".join(f"{k}='{v}'" for k, v in params.items())
    assert parse_params(text, "redis") == params


_PLAIN_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="'\"\\", blacklist_categories=("Cs",)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(key=st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True), params=_PLAIN_TEXT)
def test_unquoted_fast_path_parses_as_shell_splitting_does(key: str, params: str) -> None:
    """Lines without quotes or backslashes skip shlex; the result must not change."""
    line = f"{key} */30 * * * * * http {params}"
    try:
        expected = parse_tokens(shlex.split(line, posix=True))
    except errors.ForsunBoxError as e:
        with pytest.raises(errors.ForsunBoxError) as got:
            parse_line(line)
        assert got.value.code == e.code  # noqa: PT017 (the two parsers must agree)
        return
    assert parse_line(line) == expected


# --- the fast paths against the general ones -------------------------------------------
# parse_line splits common lines with one regex, splits quoted params with its own shell
# word splitter and answers simple params without the general loop. The references below
# are the general path as it stood: shlex for the words, the segment loop for the params.

_SHELLISH = st.lists(
    st.sampled_from(
        [
            "a",
            "b9",
            "=",
            ";",
            "&",
            "'",
            '"',
            "\\",
            " ",
            "  ",
            "\t",
            "\n",
            "\r",
            "\x0b",
            "\xa0",
            "é",
            "#",
            "*",
            "/",
            "5",
            "url=",
            "cmd=",
            "x.y-z=",
            "http://h/?a=1&b=2",
        ]
    ),
    max_size=25,
).map("".join)
_ANY_TEXT = st.one_of(_SHELLISH, st.text(max_size=40))
_GOOD_FIELDS = st.sampled_from(
    ["*", "0", "5", "59", "007", "99999", "*/5", "*/5/3", "*/0", "*/5/0", "*/10/2"]
)
_ODD_FIELDS = st.sampled_from(
    [
        "*/",
        "*/5/",
        "*/5/3/1",
        "+5",
        "-1",
        "\u0663",
        "1_0",
        "*/\u0663",
        "'5'",
        "\\*",
        "*/+5",
        "**",
        "5'",
        "",
    ]
)
_SEPS = st.sampled_from([" ", " ", " ", "  ", "\t", " \n", "\r"])  # what shlex splits on
_ODD_SEPS = st.sampled_from(["", "\xa0", "\x0b", "\u3000"])  # what it doesn't
_ONE_IN_20 = st.sampled_from([False] * 19 + [True])  # (integers() favour their bounds)
_ACTIONS = st.sampled_from(["shell", "sh", "bash", "http", "redis", "x'y'", "h\\ttp"])


@st.composite
def _lines(draw: st.DrawFn) -> str:
    """Mostly well-formed lines (the fast path's), with odd separators, fields and quotes."""

    def odd() -> bool:
        return draw(_ONE_IN_20)

    def sep() -> str:
        return draw(_ODD_SEPS if odd() else _SEPS)

    plain_key = st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True)
    parts = [draw(_SEPS) if draw(st.booleans()) else "", draw(_SHELLISH if odd() else plain_key)]
    for _ in range(draw(st.sampled_from([6, 6, 6, 6, 6, 6, 6, 0, 5, 7]))):
        parts += [sep(), draw(_ODD_FIELDS if odd() else _GOOD_FIELDS)]
    if not draw(_ONE_IN_20):
        parts += [sep(), draw(_ACTIONS)]
        if not draw(_ONE_IN_20):
            parts += [sep(), draw(_ANY_TEXT)]
    return "".join(parts) + draw(st.sampled_from(["", "", "", " ", "\t", "\xa0"]))


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return "ok", fn(*args)
    except errors.ForsunBoxError as e:
        return "error", e.code, e.message


def _reference_line(line: str) -> PlanLine:
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError as e:
        raise errors.InvalidValue(f"cannot parse line: {e}") from None
    return parse_tokens(tokens)


@settings(max_examples=300, deadline=None)
@given(_ANY_TEXT)
def test_shell_words_splits_as_shlex_does(text: str) -> None:
    try:
        expected: object = shlex.split(text, posix=True)
    except ValueError as e:
        expected = ("ValueError", str(e))
    try:
        got: object = shell_words(text)
    except ValueError as e:
        got = ("ValueError", str(e))
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(_lines())
def test_parse_line_matches_the_general_path(line: str) -> None:
    expected = _outcome(_reference_line, line)
    assert _outcome(parse_line, line) == expected
    assert _outcome(parse_line, line) == expected  # again: now from the field-block cache


@pytest.mark.parametrize(
    "line",
    [
        "key */5/3 * * * * * shell 'echo hi'",
        "order-123 0 30 16 * * * http url='http://127.0.0.1:8080/cb?a=1&b=2';method=POST",
        'j */10/2 * * * * * http "url=http://127.0.0.1:8080/cb?x=1&y=2;method=POST"',
        "c 15 */5 * * * * shell \"echo 'nested'\"",
        "k 1 2 3 4 5 6 shell echo \\; date",
        "k\t*/5\r* * * * *\nshell   a  b\t",
        "k * * * * * * redis 'unterminated",
        'k * * * * * * redis "ends in a backslash\\',
        "k * * * * * * shell ''",
        "  k 0 0 3 * * * shell cmd=ls;timeout=30  ",
    ],
)
def test_parse_line_examples_match_the_general_path(line: str) -> None:
    assert _outcome(parse_line, line) == _outcome(_reference_line, line)


_REF_NAME_EQ = re.compile(r"\s*[A-Za-z_][\w.\-]*\s*=")


def _reference_unquote(value: str) -> str:
    if "'" not in value and '"' not in value:
        return value
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if value[0] not in inner:
            return inner
    return ";".join(split_params(value))


def _reference_params(text: str, action: str) -> dict[str, str]:
    text = text.strip()
    if not text:
        return {}
    quoted = "'" in text or '"' in text
    parts = split_top_level(text) if quoted else text.split(";")
    segments = [s for s in parts if s.strip()]
    if not all(_REF_NAME_EQ.match(s) for s in segments):
        bare = BARE_PARAM.get(action)
        if bare is None:
            raise errors.InvalidValue(
                f"params must be name=value pairs separated by ';' for action {action}"
            )
        return {bare: _reference_unquote(text)}
    params: dict[str, str] = {}
    for seg in segments:
        name, _, value = seg.partition("=")
        params[name.strip()] = _reference_unquote(value.strip())
    return params


_PAD = st.sampled_from(["", "", "", " ", "\t", "\xa0"])
_PAIRS = st.lists(
    st.tuples(_PAD, st.from_regex(r"[A-Za-z_][\w.\-]{0,4}", fullmatch=True), _PAD, _SHELLISH),
    max_size=4,
).map(lambda pairs: ";".join(f"{a}{n}{b}={v}" for a, n, b, v in pairs))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_PAIRS, _ANY_TEXT), st.sampled_from(["shell", "http", "redis"]))
def test_parse_params_matches_the_general_path(text: str, action: str) -> None:
    assert _outcome(parse_params, text, action) == _outcome(_reference_params, text, action)


@pytest.mark.parametrize(
    "text",
    [
        ";",
        " ; ;",
        "a=1;",
        ";a=1",
        "=",
        "a=;b",
        "a= 1 ;b=2",
        "a=1;;b=2",
        'a=\'x;y\';b="p\\"q"',
        "echo 'a;b' c",
        "'echo hi'",
        "url=http://h/?a=1&b=2",
        "http://h/?a=1",
        "a=1; b = 2 ",
        "a=\xa0",
        "\u00e9=1",
        "a.b-c=1;_d=",
    ],
)
@pytest.mark.parametrize("action", ["shell", "redis"])
def test_parse_params_examples_match_the_general_path(text: str, action: str) -> None:
    assert _outcome(parse_params, text, action) == _outcome(_reference_params, text, action)


def test_cached_field_blocks_are_not_shared_between_lines() -> None:
    first = parse_line("a */5/2 * * * * * shell ls")
    first.fields["second"] = 99
    second = parse_line("b */5/2 * * * * * shell ls")
    assert second.fields["second"] == 5 and second.count == 2 and second.is_time_out


def test_field_block_cache_stays_bounded() -> None:
    for i in range(crontab._BLOCKS_MAX + 10):
        assert parse_line(f"k {i} * * * * * shell ls").fields["second"] == i
    assert len(crontab._BLOCKS) <= crontab._BLOCKS_MAX


def test_long_field_blocks_parse_without_being_cached() -> None:
    block = "*/5" + " " * 100 + "* * * * *"
    line = parse_line(f"k {block} shell ls")
    assert line.is_time_out and line.fields["second"] == 5 and line.fields["minute"] == 0
    assert block not in crontab._BLOCKS
