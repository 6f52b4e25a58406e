"""Bad input never crashes the decoder or replay: a hostile corpus and Hypothesis (issue: bad input).

Every line that is not an event becomes exactly one `invalid_event` rejection; replay goes on.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costtrace.contract.events import Event, Invalid, parse_event
from costtrace.model.replay import replay
from tests.contract.hostile import KINDS, corpus, event, line

CORPUS = [(kind, name, value) for kind in KINDS for name, value in corpus(kind).items()]


@pytest.mark.parametrize(("kind", "name", "value"), CORPUS, ids=[f"{k}: {n}" for k, n, _ in CORPUS])
def test_every_hostile_line_is_invalid(kind: str, name: str, value: bytes) -> None:
    got = parse_event(value)
    assert isinstance(got, Invalid), got
    assert got.detail
    assert isinstance(parse_event(line(event(kind))), Event)  # the same event, well formed, is one


def test_replay_of_the_corpus_gives_one_invalid_event_each_and_goes_on() -> None:
    lines = [value for _, _, value in CORPUS]
    good = line(event("issued", event_id="good", batch_id="good"))
    out = io.BytesIO()
    summary = replay([good, *lines, good], out)
    records = [json.loads(r) for r in out.getvalue().splitlines()]
    assert [r["kind"] for r in records] == ["issue", *["rejected"] * len(lines)]  # the repeat: nothing
    assert summary.rejections == {"invalid_event": len(lines)} and summary.repeats == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=400))
def test_any_bytes_decode_to_an_event_or_invalid(data: bytes) -> None:
    assert isinstance(parse_event(data), Event | Invalid)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KINDS), st.dictionaries(st.sampled_from(
    ["event_id", "type", "account_id", "occurred_at", "amount", "batch_id", "budget_id", "order_id",
     "refund_id", "transfer_id", "to_account_id", "merchant_id", "other"]), JSON, max_size=4))  # fmt: skip
def test_an_event_with_any_field_replaced_is_valid_only_within_the_contract(
    kind: str, replaced: dict[str, Any]
) -> None:
    got = parse_event(line(event(kind, **replaced)))
    if isinstance(got, Invalid):
        return
    amount = got.amount
    assert type(amount) is int and 1 <= amount <= 10**15
    for name in ("event_id", "account_id"):
        text = getattr(got, name)
        assert isinstance(text, str) and 1 <= len(text) <= 128 and "\x00" not in text


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(
    st.one_of(
        st.sampled_from([value for _, _, value in CORPUS if len(value) < 10_000]),
        st.binary(max_size=200).filter(lambda b: b"\n" not in b and b.strip()),
        st.builds(lambda k, n: line(event(k, event_id=f"e{n}", amount=n % 9 + 1)), st.sampled_from(KINDS),
                  st.integers(0, 50)),
    ),
    max_size=40,
))  # fmt: skip
def test_replay_of_any_mix_never_stops_and_rejects_each_invalid_line_once(lines: list[bytes]) -> None:
    out = io.BytesIO()
    summary = replay(lines, out)
    assert summary.events == len(lines)
    records = [json.loads(r) for r in out.getvalue().splitlines()]
    invalid = sum(1 for value in lines if isinstance(parse_event(value), Invalid))
    assert sum(1 for r in records if r.get("reason") == "invalid_event") == invalid
