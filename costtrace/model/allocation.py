"""The cost-tracing rules of the contract (docs/contract.md), applied one event at a time.

The rules themselves are native (native/src/model.rs, built into
`costtrace._native`): one implementation, which offline replay and the fleet's
agents both call through `apply_event`, `apply_credit` and `apply_archive`
here. It is pure: no Kafka, no database, no clock; state comes from a `Store`
and goes back to it. Validation stays in `costtrace.contract.events`; the model gets
each event as msgpack of its validated Struct (also its exact-repeat
fingerprint) and gives records back as the contract's JSON.

Redelivery (the fleet reads at least once): an event read at a `Position`
whose offset the account has already passed is a redelivery, and gets back
the outputs stored for that position, so a crash between applying an event
and publishing its records loses nothing. A producer's repeat (same event,
new position) is an exact repeat and yields nothing, as the contract says.
Stored outputs are let go once the fleet says their position is `settled`
(committed: never read again), so they do not pile up.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

from costtrace._native import NativeOutcome, NativeRejection, event_key
from costtrace.contract.events import Event, Invalid, parse_event
from costtrace.contract.records import Reason, Record, Rejection, rejection
from costtrace.contract.vocabulary import STATUSES, matching
from costtrace.model.state import Archive, Credit, MemoryStore, Position, Settled, Store

__all__ = ["Outcome", "Status", "apply_archive", "apply_credit", "apply_event", "event_key"]


@matching(STATUSES)
class Status(StrEnum):
    APPLIED = STATUSES["APPLIED"]
    REPEAT = STATUSES["REPEAT"]  # exact repeat of an applied event: ignored
    REJECTED = STATUSES["REJECTED"]
    REDELIVERED = STATUSES["REDELIVERED"]  # read again at a position already applied
    SKIPPED = STATUSES["SKIPPED"]  # left out by the fleet's tracing switch (fleet/switch.py); never in replay


_STATUS: Final = {status.value: status for status in Status}  # by the native model's value
_record_decoder: Final = msgspec.json.Decoder(Record)
_credit_decoder: Final = msgspec.msgpack.Decoder(Credit)
_msgpack: Final = msgspec.msgpack.Encoder()  # events and credits, as the native model reads them


class Outcome:
    """What applying one event (or credit) gave: records, credits or a rejection.

    Records come as the contract's JSON (`record_lines`, what the allocations
    topic and replay's output carry) and credits as the credits topic's
    msgpack (`credit_blobs`); `records` and `credits` decode them.
    """

    __slots__ = (
        "account_id", "credit_blobs", "detail", "late", "record_kinds", "record_lines", "rejection", "status",
        "step",
    )  # fmt: skip

    def __init__(
        self,
        status: Status,
        account_id: str | None,
        record_lines: list[bytes],
        credit_blobs: list[bytes],
        rejection: Rejection | None = None,
        detail: str | None = None,
        step: int = 0,
        record_kinds: tuple[str, ...] = (),
        late: bool = False,
    ) -> None:
        self.status = status
        self.account_id = account_id
        self.record_lines = record_lines
        self.credit_blobs = credit_blobs
        self.rejection = rejection
        self.detail = detail  # why, for a rejection
        self.step = step  # the account's step that made the records: (step, seq) is replay's order
        self.record_kinds = record_kinds  # each record's kind, in order (what metrics count)
        # applied after an event of its account that comes later in the log order (the fleet's `order`)
        self.late = late

    @property
    def records(self) -> list[Record]:
        return [_record_decoder.decode(line) for line in self.record_lines]

    @property
    def credits(self) -> list[Credit]:
        return [_credit_decoder.decode(blob) for blob in self.credit_blobs]

    def __repr__(self) -> str:
        return (
            f"Outcome({self.status!r}, {self.account_id!r}, records={len(self.record_lines)}, "
            f"credits={len(self.credit_blobs)}, rejection={self.rejection!r}, detail={self.detail!r})"
        )


def _rejection(native: NativeRejection | None) -> Rejection | None:
    return None if native is None else rejection(native.event_id, native.account_id, Reason(native.reason))


def _outcome(n: NativeOutcome) -> Outcome:
    return Outcome(
        _STATUS[n.status], n.account_id, n.record_lines, n.credit_blobs, _rejection(n.rejection), n.detail,
        n.step, n.record_kinds, n.late,
    )  # fmt: skip


def _where(position: Position | None) -> tuple[str, int] | None:
    return None if position is None else (position.source, position.offset)


def apply_event(
    store: Store,
    event: Event | Invalid | bytes | str,
    position: Position | None = None,
    settled: Settled | None = None,
    order: tuple[int, int, int, int, int] | None = None,
) -> Outcome:
    """Apply one input event (raw JSON or parsed) to its account.

    The fleet passes where it read the event (`position`), what it has
    committed (`settled`) and the event's place in the log order (`order`,
    an `OrderKey`: the account keeps the largest, and an event before it
    comes out `late`); replay passes none of them.
    """
    ev = parse_event(event) if isinstance(event, (bytes, str)) else event
    if isinstance(ev, Invalid):
        # depends on the payload alone, so a redelivery gives the same answer
        rej = rejection(ev.event_id, ev.account_id, Reason.INVALID_EVENT)
        return Outcome(Status.REJECTED, ev.account_id, [], [], rej, ev.detail)
    native = store.native.apply_event(_msgpack.encode(ev), _where(position), settled, order)
    return _outcome(native)


def replay_event(store: MemoryStore, raw: bytes | str) -> tuple[Status, bytes, int, Rejection | None]:
    """Replay's step: apply one raw event and at once its credits (`apply_event`, then `apply_credit`).

    Returns the status, the records as JSON lines (each ending in a newline),
    how many there are, and the rejection if any.
    """
    ev = parse_event(raw)
    if isinstance(ev, Invalid):
        return Status.REJECTED, b"", 0, rejection(ev.event_id, ev.account_id, Reason.INVALID_EVENT)
    step = store.native.replay_event(_msgpack.encode(ev))
    return _STATUS[step.status], step.lines, step.count, _rejection(step.rejection)


def apply_credit(
    store: Store,
    credit: Credit | bytes,
    position: Position | None = None,
    settled: Settled | None = None,
    order: tuple[int, int, int, int, int] | None = None,
) -> Outcome:
    """Apply the receiving half of a transfer (a `Credit`, or its msgpack) to its receiver (rule 6).

    Each slice becomes a batch `{sender}/{transfer_id}/{source batch_id}` with
    the source's budget and issue time. Should the receiver already hold a
    batch of that id (only possible if a producer issued one of that form),
    the first free `#2`, `#3`, ... suffix is used, so the coins are never lost.
    """
    blob = credit if isinstance(credit, bytes) else _msgpack.encode(credit)
    return _outcome(store.native.apply_credit(blob, _where(position), settled, order))


def apply_archive(
    store: Store,
    archive: Archive,
    position: Position | None = None,
    settled: Settled | None = None,
    order: tuple[int, int, int, int, int] | None = None,
) -> Outcome:
    """Drop the slices of archived orders (the fleet's `costtrace archive`); records nothing.

    An order with debt still on SUSPENSE is kept whole: its trueups are yet to
    come. Archiving an order twice changes nothing.
    """
    native = store.native.apply_archive(
        archive.account_id, archive.order_ids, _where(position), settled, order
    )
    return _outcome(native)
