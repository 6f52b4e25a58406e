"""The JSON Schemas under costtrace/contract/v1 and the Python types agree."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from costtrace.contract.events import EVENT_TYPES, Invalid, parse_event
from costtrace.contract.jsonschema import DIRECTORY, all_schemas, render

SCHEMAS = all_schemas()
REGISTRY = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values())
EVENT_VALIDATOR = Draft202012Validator(
    SCHEMAS["event.schema.json"], registry=REGISTRY, format_checker=FormatChecker()
)
RECORD_VALIDATOR = Draft202012Validator(SCHEMAS["record.schema.json"], registry=REGISTRY)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_files_are_generated_from_the_types(name: str) -> None:
    committed = (DIRECTORY / name).read_text()
    assert committed == render(SCHEMAS[name]), f"run `costtrace schemas write` ({name} drifted)"


def test_every_event_type_has_a_schema() -> None:
    tags = {t.kind for t in EVENT_TYPES}
    assert tags == {"issued", "opened", "consumed", "refunded", "transferred"}
    assert {f"{t}.schema.json" for t in tags} <= set(SCHEMAS)


VALID: dict[str, dict[str, Any]] = {
    "issued": {"batch_id": "b", "budget_id": "B", "amount": 5},
    "opened": {"batch_id": "b", "amount": 5},
    "consumed": {"order_id": "o", "amount": 5, "merchant_id": "m"},
    "refunded": {"refund_id": "r", "order_id": "o", "amount": 5},
    "transferred": {"transfer_id": "t", "to_account_id": "bob", "amount": 5},
}
TIMES = [
    "2026-03-01T10:00:00Z",
    "2026-03-01t10:00:00z",
    "2026-03-01T10:00:00.123456789+05:30",
    "2026-03-01T10:00:00.1234567891-00:00",
    "2026-03-01T10:00:00",
    "2026-03-01 10:00:00Z",
    "2026-02-29T10:00:00Z",
    "2024-02-29T10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-03-01T24:00:00Z",
    "2026-03-01T10:60:00Z",
    "2026-03-01T10:00:00+24:00",
    "20260301T100000Z",
    "2026-03-01T10:00Z",
    "2026-03-01T10:00:00.Z",
    "",
    "yesterday",
    "2026-03-01T10:00:00+0100",
    "2026-06-30T23:59:60Z",
    "1677-12-31T23:59:59Z",
    "1678-01-01T00:00:00Z",
    "2261-12-31T23:59:59Z",
    "2262-01-01T00:00:00Z",
]
BAD_VALUES: list[Any] = [
    None, "", "x" * 129, "x" * 128, 0, -1, 1, 10**15, 10**15 + 1, 2.0, True, [], {}, "5", "a\x00b", "\x00",
    "\x01\x1f\u2400",
]  # fmt: skip


@st.composite
def near_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([*VALID, "gift"]))
    ev: dict[str, Any] = {
        "event_id": "e1",
        "type": kind,
        "account_id": "alice",
        "occurred_at": draw(st.sampled_from(TIMES)),
        **VALID.get(kind, {}),
    }
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(ev)))
        action = draw(st.sampled_from(["drop", "set"]))
        if action == "drop":
            ev.pop(field, None)
        else:
            ev[field] = draw(st.sampled_from(BAD_VALUES))
    if draw(st.booleans()):
        ev["extra"] = draw(st.sampled_from(BAD_VALUES))
    return ev


@settings(max_examples=600, deadline=None)
@given(near_events())
def test_json_schema_and_parse_event_give_the_same_verdict(ev: dict[str, Any]) -> None:
    by_schema = EVENT_VALIDATOR.is_valid(ev)
    by_model = not isinstance(parse_event(json.dumps(ev)), Invalid)
    if any(isinstance(v, float) for k, v in ev.items() if k != "extra"):
        # JSON Schema's "integer" cannot tell 2 from 2.0; the contract says "never
        # floats", so the model refuses any number written with a fraction or exponent
        assert not by_model
        return
    assert by_schema == by_model, (ev, parse_event(json.dumps(ev)))


def test_records_and_rejections_match_the_record_schema() -> None:
    from tests.model.helpers import Ledger, consumed, issued, refunded, transferred

    led = Ledger()
    for raw in (
        issued("b1", 5),
        consumed("o1", 7, merchant_id="m"),
        issued("b2", 9),
        refunded("r1", "o1", 3),
        transferred("t1", "bob", 2),
        b"nope",
        issued("b1", 1),
    ):
        led.apply(raw)
    kinds = set()
    for rec in led.records:
        obj = msgspec.json.decode(msgspec.json.encode(rec))
        RECORD_VALIDATOR.validate(obj)
        kinds.add(obj["kind"])
    assert kinds == {"issue", "consume", "trueup", "refund", "transfer_out", "transfer_in", "rejected"}
