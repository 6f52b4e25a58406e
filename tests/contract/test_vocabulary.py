"""The vocabulary is written once, in native/src/vocabulary.rs; Python's enums take it from there."""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

import pytest

from costtrace import _native
from costtrace.contract.records import SUSPENSE, Kind, Reason, Record, rejection
from costtrace.contract.vocabulary import KINDS, REASONS, matching
from costtrace.model.allocation import Status, apply_event
from costtrace.model.state import HEADER_PREFIX, MemoryStore, Namespace

PACKAGE = Path(__file__).resolve().parents[2] / "costtrace"


def test_the_enums_hold_exactly_the_native_words() -> None:
    assert {k.name: k.value for k in Kind} == _native.KINDS
    assert {r.name: r.value for r in Reason} == _native.REASONS
    assert {s.name: s.value for s in Status} == _native.STATUSES
    assert {n.name: bytes([n.value]) for n in Namespace} | {"HEADER": HEADER_PREFIX} == _native.KEY_PREFIXES
    assert SUSPENSE == _native.SUSPENSE == "SUSPENSE"


def test_an_enum_that_differs_from_the_native_words_does_not_import() -> None:
    words = {name: value for name, value in REASONS.items() if name != "WRONG_PARTITION"} | {"LOST": "lost"}
    short = StrEnum("Short", words)  # type: ignore[misc]
    with pytest.raises(ImportError, match=r"missing \['WRONG_PARTITION'\], not native \['LOST'\]"):
        matching(REASONS)(short)

    with pytest.raises(ImportError, match="Kinds differs"):

        @matching(KINDS)
        class Kinds(StrEnum):
            ISSUE = "issued"  # a value the native model does not write


def test_records_and_keys_the_native_model_writes_use_those_words() -> None:
    store = MemoryStore()
    event = (b'{"event_id": "e1", "type": "consumed", "account_id": "a", "amount": 3, "order_id": "o1",'
             b' "occurred_at": "2026-01-01T00:00:00Z"}')  # fmt: skip
    outcome = apply_event(store, event)
    assert outcome.status is Status.APPLIED
    (record,) = outcome.records
    assert (record.kind, record.batch_id, record.budget_id) == (Kind.CONSUME, SUSPENSE, SUSPENSE)
    keys = {key[:1] for key, _ in store.native.items("a")}
    assert HEADER_PREFIX in keys and bytes([Namespace.ORDER]) in keys and bytes([Namespace.EVENT]) in keys
    refused = apply_event(store, event.replace(b'"amount": 3', b'"amount": 4'))
    assert refused.rejection == rejection("e1", "a", Reason.CONFLICTING_DUPLICATE)
    assert isinstance(outcome.records[0], Record)


def test_no_other_module_spells_a_reason_a_kind_or_suspense() -> None:
    words = set(REASONS.values()) | set(KINDS.values()) | {SUSPENSE}
    spelled = sorted(
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "vocabulary.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in words
    )
    assert not spelled
