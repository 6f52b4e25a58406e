"""The native model's wire forms agree with msgspec's and hashlib's, character for character."""

from __future__ import annotations

import hashlib

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from costtrace.contract.records import Record
from costtrace.model.allocation import Status, apply_event, event_key
from costtrace.model.state import MemoryStore
from tests.model.helpers import consumed, issued

# ids as producers may send them: any character but U+0000 (an invalid_event), control characters and
# quotes included
ids = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(ids, ids, ids)
def test_records_are_the_json_msgspec_writes(account: str, batch: str, merchant: str) -> None:
    store = MemoryStore()
    assert apply_event(store, issued(batch, 5, budget=batch, account=account)).status is Status.APPLIED
    out = apply_event(store, consumed("o", 7, account=account, merchant_id=merchant))
    assert out.status is Status.APPLIED and len(out.record_lines) == 2
    for line in out.record_lines:
        assert line == msgspec.json.encode(msgspec.json.decode(line, type=Record))
    assert [(r.batch_id, r.merchant_id) for r in out.records] == [(batch, merchant), ("SUSPENSE", merchant)]


@settings(max_examples=300)
@given(ids, ids)
def test_event_keys_are_blake2b_of_the_length_in_characters(account: str, event: str) -> None:
    data = f"{len(account)}:{account}{event}".encode()
    assert event_key(account, event) == hashlib.blake2b(data, digest_size=12).hexdigest()


def test_each_outcome_names_the_kinds_of_its_records_in_order() -> None:
    """What the fleet's metrics count, without decoding the records."""
    from costtrace.ops.sample import encode_event, generate_events

    store, kinds = MemoryStore(), set[str]()
    for event in generate_events(3000, 60, seed=5):
        out = apply_event(store, encode_event(event))
        assert list(out.record_kinds) == [r.kind for r in out.records]
        kinds.update(out.record_kinds)
    assert kinds >= {"issue", "consume", "refund", "transfer_out"}
