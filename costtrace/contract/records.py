"""The output of the model: allocation records and rejections.

`Record` is one movement of coins on one batch; `Rejection` is the one record
a rejected event yields. Both encode to exactly the JSON the contract
describes (fields that do not apply are left out of a `Record`; a
`Rejection` always has its four fields, with `null` for a missing id).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

from costtrace.contract.vocabulary import KINDS, REASONS, matching
from costtrace.contract.vocabulary import SUSPENSE as SUSPENSE


@matching(KINDS)
class Kind(StrEnum):
    ISSUE = KINDS["ISSUE"]
    OPEN = KINDS["OPEN"]
    CONSUME = KINDS["CONSUME"]
    TRUEUP = KINDS["TRUEUP"]
    REFUND = KINDS["REFUND"]
    TRANSFER_OUT = KINDS["TRANSFER_OUT"]
    TRANSFER_IN = KINDS["TRANSFER_IN"]
    REJECTED = KINDS["REJECTED"]


@matching(REASONS)
class Reason(StrEnum):
    INVALID_EVENT = REASONS["INVALID_EVENT"]
    DUPLICATE_BATCH = REASONS["DUPLICATE_BATCH"]
    DUPLICATE_ORDER = REASONS["DUPLICATE_ORDER"]
    DUPLICATE_REFUND = REASONS["DUPLICATE_REFUND"]
    DUPLICATE_TRANSFER = REASONS["DUPLICATE_TRANSFER"]
    CONFLICTING_DUPLICATE = REASONS["CONFLICTING_DUPLICATE"]
    UNKNOWN_ORDER = REASONS["UNKNOWN_ORDER"]
    REFUND_EXCEEDS_ORDER = REASONS["REFUND_EXCEEDS_ORDER"]
    SELF_TRANSFER = REASONS["SELF_TRANSFER"]
    INSUFFICIENT_STOCK = REASONS["INSUFFICIENT_STOCK"]
    ORDER_ARCHIVED = REASONS[
        "ORDER_ARCHIVED"
    ]  # the fleet only: a refund of an order `costtrace archive` moved
    WRONG_PARTITION = REASONS["WRONG_PARTITION"]  # the fleet only: not on its account's (murmur2) partition


class Record(msgspec.Struct, omit_defaults=True, gc=False):
    """One movement of coins on one batch, caused by one event."""

    record_id: str
    event_id: str
    kind: str
    account_id: str
    batch_id: str
    budget_id: str
    amount: int
    order_id: str | None = None
    refund_id: str | None = None
    transfer_id: str | None = None
    merchant_id: str | None = None


class Rejection(msgspec.Struct, gc=False):
    """The single record of a rejected event."""

    event_id: str | None
    kind: str
    account_id: str | None
    reason: str


def rejection(event_id: str | None, account_id: str | None, reason: Reason) -> Rejection:
    return Rejection(event_id, Kind.REJECTED.value, account_id, reason.value)


_any: Final = msgspec.json.Decoder()


def decode_record(line: bytes) -> Record | Rejection:
    """Read back one output line (a `Record` or a `Rejection`, told apart by `kind`)."""
    obj = _any.decode(line)
    if obj.get("kind") == Kind.REJECTED.value:
        return msgspec.convert(obj, Rejection)
    return msgspec.convert(obj, Record)
