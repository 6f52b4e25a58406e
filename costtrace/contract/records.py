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

SUSPENSE: Final = "SUSPENSE"


class Kind(StrEnum):
    ISSUE = "issue"
    OPEN = "open"
    CONSUME = "consume"
    TRUEUP = "trueup"
    REFUND = "refund"
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"
    REJECTED = "rejected"


class Reason(StrEnum):
    INVALID_EVENT = "invalid_event"
    DUPLICATE_BATCH = "duplicate_batch"
    DUPLICATE_ORDER = "duplicate_order"
    DUPLICATE_REFUND = "duplicate_refund"
    DUPLICATE_TRANSFER = "duplicate_transfer"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    UNKNOWN_ORDER = "unknown_order"
    REFUND_EXCEEDS_ORDER = "refund_exceeds_order"
    SELF_TRANSFER = "self_transfer"
    INSUFFICIENT_STOCK = "insufficient_stock"
    ORDER_ARCHIVED = "order_archived"  # the fleet only: a refund of an order `costtrace archive` moved
    WRONG_PARTITION = "wrong_partition"  # the fleet only: not on its account's (murmur2) partition


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
