"""Validation of input events: the contract's `invalid_event` cases, never an exception."""

from __future__ import annotations

import pytest

from schemas.events import Consumed, Invalid, Opened, parse_event
from schemas.timestamps import TimestampError, parse_instant

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
    ],
)
def test_invalid_inputs_are_invalid_with_what_ids_they_have(
    raw: bytes, ids: tuple[str | None, str | None]
) -> None:
    got = parse_event(raw)
    assert isinstance(got, Invalid)
    assert (got.event_id, got.account_id) == ids
    assert got.detail  # a clear error for the dead letter


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
        "２026-03-01T10:00:00Z",
    ],
)
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_instant(text)
