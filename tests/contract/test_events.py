"""Validation of input events: the contract's `invalid_event` cases, never an exception."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costtrace.contract.events import Consumed, Invalid, Opened, parse_event
from costtrace.contract.timestamps import (
    FIRST_YEAR,
    LAST_YEAR,
    YEAR_PATTERN,
    TimestampError,
    parse_instant,
    parse_rfc3339,
)

GOOD = (
    b'{"event_id":"e1","type":"consumed","account_id":"a","occurred_at":"2026-03-01T10:00:00Z",'
    b'"order_id":"o","amount":5}'
)


def test_a_valid_event_parses_with_its_instant() -> None:
    ev = parse_event(GOOD)
    assert isinstance(ev, Consumed)
    assert (ev.order_id, ev.amount, ev.merchant_id) == ("o", 5, None)
    assert ev.occurred_ns == parse_instant("2026-03-01T10:00:00Z")


@pytest.mark.parametrize(
    ("raw", "ids"),
    [
        (b"not json", (None, None)),
        (b"\xff\xfe", (None, None)),
        (b"[1, 2]", (None, None)),
        (
            b'{"event_id":"e1","type":"gift","account_id":"a","occurred_at":"2026-03-01T10:00:00Z"}',
            ("e1", "a"),
        ),
        (GOOD.replace(b'"amount":5', b'"amount":0'), ("e1", "a")),
        (GOOD.replace(b'"amount":5', b'"amount":1000000000000001'), ("e1", "a")),
        (GOOD.replace(b'"amount":5', b'"amount":5.0'), ("e1", "a")),
        (GOOD.replace(b'"amount":5', b'"amount":"5"'), ("e1", "a")),
        (GOOD.replace(b'"order_id":"o",', b""), ("e1", "a")),
        (GOOD.replace(b'"order_id":"o"', b'"order_id":""'), ("e1", "a")),
        (GOOD.replace(b'"order_id":"o"', b'"order_id":"' + b"x" * 129 + b'"'), ("e1", "a")),
        (GOOD.replace(b"10:00:00Z", b"10:00:00"), ("e1", "a")),
        (GOOD.replace(b'"event_id":"e1"', b'"event_id":7'), (None, "a")),
        (GOOD.replace(b'"account_id":"a"', b'"account_id":""'), ("e1", None)),
        # U+0000, which only a JSON escape can carry: no PostgreSQL text column stores it
        (GOOD.replace(b'"order_id":"o"', b'"order_id":"o\\u0000"'), ("e1", "a")),
        (GOOD.replace(b'"event_id":"e1"', b'"event_id":"\\u0000"'), (None, "a")),
        (GOOD.replace(b'"account_id":"a"', b'"account_id":"a\\u0000"'), ("e1", None)),
        (b"acct-g8\t\x00\x01\x02binary\xff", (None, None)),
        (b"[" * 50_000, (None, None)),
        (b'{"a":' * 50_000, (None, None)),
        (b'{"event_id":"e1","account_id":"a","x":' + b"[" * 50_000, (None, None)),
    ],
)
def test_invalid_inputs_are_invalid_with_what_ids_they_have(
    raw: bytes, ids: tuple[str | None, str | None]
) -> None:
    got = parse_event(raw)
    assert isinstance(got, Invalid)
    assert (got.event_id, got.account_id) == ids
    assert got.detail  # a clear error for the dead letter


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    ok = GOOD.replace(b'"order_id":"o"', b'"order_id":"o\\\\u0000"')
    ev = parse_event(ok)
    assert isinstance(ev, Consumed) and ev.order_id == "o\\u0000"


def test_strings_count_characters_not_bytes() -> None:
    ok = GOOD.replace(b'"order_id":"o"', b'"order_id":"' + "é".encode() * 128 + b'"')
    assert isinstance(parse_event(ok), Consumed)


def test_null_optional_fields_count_as_absent_and_unknown_fields_are_ignored() -> None:
    raw = (
        b'{"event_id":"e","type":"opened","account_id":"a","occurred_at":"2026-03-01T10:00:00Z",'
        b'"batch_id":"b","amount":3,"budget_id":null,"note":{"x":[1]}}'
    )
    ev = parse_event(raw)
    assert isinstance(ev, Opened) and ev.budget_id == "LEGACY"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T19:00:00.000000001-05:00", 1),
        ("1970-01-01t00:00:01.5z", 1_500_000_000),
        ("1970-01-01T00:00:00.1234567899Z", 123_456_789),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000_000),
        # the first and last instants of the years taken: both fit 64 signed bits
        ("1678-01-01T00:00:00+23:59", -9_214_560_000_000_000_000 - 86_340_000_000_000),
        ("2261-12-31T23:59:59.999999999-23:59", 9_214_646_399_999_999_999 + 86_340_000_000_000),
    ],
)
def test_instants(text: str, expected: int) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29T00:00:00Z",
        "2026-03-01T10:00:00",
        "2026-03-01 10:00:00Z",
        "2026-03-01T24:00:00Z",
        "2026-03-01T10:00:60Z",
        "2026-03-01T10:00:00+24:00",
        "20260301T100000Z",
        "0000-01-01T00:00:00Z",
        "1677-12-31T23:59:59Z",
        "2262-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "２026-03-01T10:00:00Z",
    ],
)
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_instant(text)


# (valid, just out of range) per field; the zone's hours and minutes are the last two
_FIELDS: list[tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = [
    (
        st.integers(FIRST_YEAR, LAST_YEAR).map("{:04d}".format),
        st.sampled_from(["0000", "0001", f"{FIRST_YEAR - 1}", f"{LAST_YEAR + 1}", "9999"]),
    ),
    (st.integers(1, 12).map("{:02d}".format), st.sampled_from(["00", "13", "19"])),
    (st.integers(1, 28).map("{:02d}".format), st.sampled_from(["00", "29", "30", "31", "32", "39"])),
    (st.just("T"), st.sampled_from(["t", " ", "_"])),
    (st.integers(0, 23).map("{:02d}".format), st.integers(24, 29).map(str)),
    (st.integers(0, 59).map("{:02d}".format), st.integers(60, 69).map(str)),
    (st.integers(0, 59).map("{:02d}".format), st.integers(60, 69).map(str)),
    (
        st.text("0123456789", max_size=12).map(lambda f: f and "." + f),
        st.sampled_from([".", ".1234567", ".0000000000"]),
    ),
    (st.sampled_from(["Z", "+", "-"]), st.sampled_from(["z", "", "+", "-"])),
    (st.integers(0, 23).map("{:02d}".format), st.integers(24, 29).map(str)),
    (st.integers(0, 59).map("{:02d}".format), st.integers(60, 79).map(str)),
]


@st.composite
def _near_timestamps(draw: st.DrawFn) -> str:
    """An RFC 3339 date-time, or one with a single field just out of range."""
    off = draw(st.integers(-1, len(_FIELDS) - 1))
    f = [draw(bad if i == off else good) for i, (good, bad) in enumerate(_FIELDS)]
    zone = f[8] if f[8] in ("Z", "z", "") else f"{f[8]}{f[9]}:{f[10]}"
    return f"{f[0]}-{f[1]}-{f[2]}{f[3]}{f[4]}:{f[5]}:{f[6]}{f[7]}{zone}"


def _outcome(parse: object, text: str) -> int | str:
    try:
        return parse(text)  # type: ignore[operator,no-any-return]
    except TimestampError:
        return "refused"


@settings(max_examples=500)
@given(_near_timestamps())
def test_the_fast_path_agrees_with_the_full_parser(text: str) -> None:
    assert _outcome(parse_instant, text) == _outcome(parse_rfc3339, text)


def test_the_fast_path_knows_every_month_length() -> None:
    """Days 28 to 32 of every month, in common, leap and century years (the property draws days 1 to 28)."""
    for year in (1700, 1900, 2000, 2023, 2024, 2100, 2261):
        for month in range(1, 13):
            for day in range(28, 33):
                text = f"{year:04d}-{month:02d}-{day:02d}T12:00:00Z"
                assert _outcome(parse_instant, text) == _outcome(parse_rfc3339, text), text


def test_the_published_pattern_takes_exactly_the_years_the_parser_takes() -> None:
    pattern = re.compile(YEAR_PATTERN)
    for year in range(10_000):
        text = f"{year:04d}-01-01T00:00:00Z"
        assert bool(pattern.match(text)) is (FIRST_YEAR <= year <= LAST_YEAR), year
