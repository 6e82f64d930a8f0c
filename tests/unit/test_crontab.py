"""The crontab line syntax shared by the CLI and HTTP's application/crontab."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsun_box import errors
from forsun_box.api.crontab import parse_body, parse_line, parse_params


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
    assert p.fields == {"second": 0, "minute": 32, "hour": 16, "day": -1, "month": -1,
                        "week": -1}
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
    assert parse_line("k 1 * * * * * shell echo hello world").params == {
        "cmd": "echo hello world"}


@pytest.mark.parametrize("line,code", [
    ("k 1 2", errors.MISSING_ARGUMENT),
    ("k x * * * * * shell ls", errors.INVALID_VALUE),
    ("k */x * * * * * shell ls", errors.INVALID_VALUE),
    ("k */5/1/2 * * * * * shell ls", errors.INVALID_VALUE),
    ("k 1 * * * * * shell 'unterminated", errors.INVALID_VALUE),
])
def test_bad_lines(line: str, code: int) -> None:
    with pytest.raises(errors.ForsunBoxError) as e:
        parse_line(line)
    assert e.value.code == code


def test_body_skips_comments_and_names_bad_line() -> None:
    assert len(parse_body("# x\n\nk 1 * * * * * shell ls\n")) == 1
    with pytest.raises(errors.ForsunBoxError) as e:
        parse_body("k 1 * * * * * shell ls\nk2 nope")
    assert "line 2" in e.value.message


_value = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                        blacklist_characters="'\x00"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), _value,
                       min_size=1, max_size=5))
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
    import shlex

    from forsun_box.api.crontab import parse_tokens

    line = f"{key} */30 * * * * * http {params}"
    try:
        expected = parse_tokens(shlex.split(line, posix=True))
    except errors.ForsunBoxError as e:
        with pytest.raises(errors.ForsunBoxError) as got:
            parse_line(line)
        assert got.value.code == e.code
        return
    assert parse_line(line) == expected
