"""Hypothesis fuzz of the text parsers: crontab lines/bodies, params, plan fields.

The only exceptions allowed are :class:`ForsunBoxError` (answered with an
error code); anything else would be a 1000 "unknown error" to a client.
``FORSUN_BOX_FUZZ_EXAMPLES`` raises the number of cases (CI: 300 per test).
"""

from __future__ import annotations

import os
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forsun_box import errors
from forsun_box.api.formats import crontab
from forsun_box.plan import Limits, build_plan
from tests.helpers import whole_module_selected

EXAMPLES = int(os.environ.get("FORSUN_BOX_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
RAN: Counter[str] = Counter()

# text built from the parsers' own alphabet, so cases get past the first check
_TOKENS = st.sampled_from(
    [
        "*",
        "-1",
        "0",
        "1",
        "59",
        "*/5",
        "1-3",
        "1,2",
        "#",
        "key",
        "shell",
        "http",
        "'",
        '"',
        "\\",
        "url=http://x",
        "cmd=true",
        "a=b",
        ";",
        "&",
        "=",
        " ",
        "\t",
        "\n",
        "{",
        "}",
        "9999999999999999999999",
        "-",
        "\x00",
        "é",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(_TOKENS, max_size=30).map("".join),
    st.lists(_TOKENS, max_size=12).map(" ".join),
)


def _only_forsun_errors(fn, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except errors.ForsunBoxError as e:
        assert isinstance(e.code, int) and e.code >= 1000  # noqa: PT017 (any other exception escapes: the check)


@FUZZ
@given(_TEXT)
def test_crontab_line_raises_only_forsun_errors(line: str) -> None:
    RAN["crontab_line"] += 1
    _only_forsun_errors(crontab.parse_line, line)


@FUZZ
@given(st.lists(_TEXT, max_size=5).map("\n".join))
def test_crontab_body_raises_only_forsun_errors(body: str) -> None:
    RAN["crontab_body"] += 1
    _only_forsun_errors(crontab.parse_body, body)


@FUZZ
@given(_TEXT, st.sampled_from(["shell", "http", "redis", "mysql", "thrift", "beanstalk", "x"]))
def test_params_parser_raises_only_forsun_errors(text: str, action: str) -> None:
    RAN["params"] += 1
    _only_forsun_errors(crontab.parse_params, text, action)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@FUZZ
@given(
    key=st.one_of(st.text(max_size=30), _JSONISH),
    kind=st.sampled_from(["delay", "calendar", "cron", "at"]),
    fields=st.lists(_JSONISH | st.integers(-3, 100), min_size=7, max_size=7),
    params=_JSONISH,
    cron=st.one_of(_TEXT, st.just("*/5 * * * *")),
    tz=st.sampled_from(["", "UTC", "Europe/Paris", "Nowhere/City", "../etc"]),
    jitter=_JSONISH,
)
def test_plan_fields_raise_only_forsun_errors(
    key,
    kind,
    fields,
    params,
    cron,
    tz,  # type: ignore[no-untyped-def]
    jitter,
) -> None:
    RAN["plan_fields"] += 1
    second, minute, hour, day, month, week, count = fields

    def build() -> None:
        build_plan(
            key=key,
            kind=kind,
            now_ms=1_700_000_000_000,
            default_tz=ZoneInfo("UTC"),
            action="shell",
            params=params,
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            week=week,
            count=count,
            cron=cron,
            at_ms=1_700_000_100_000,
            timezone=tz,
            jitter_ms=jitter,
            known_actions={"shell"},
            limits=Limits(),
        )

    _only_forsun_errors(build)


def test_zz_every_fuzz_test_ran_its_cases(request: pytest.FixtureRequest) -> None:
    # runs last in this module (pytest keeps file order): the counts are the record
    if not whole_module_selected(request):
        pytest.skip("checks the counts of the fuzz tests above: select the whole module")
    print("parser fuzz cases:", dict(RAN))
    assert set(RAN) == {"crontab_line", "crontab_body", "params", "plan_fields"}
    assert all(n >= min(EXAMPLES, 50) for n in RAN.values()), RAN
