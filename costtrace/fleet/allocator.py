"""The allocator: input events in, the model applied, records, credits and dead letters out.

Effectively once, end to end, on at-least-once delivery:
- every event is applied with its source position, so a redelivered one gives
  back exactly its first outputs (the model keeps them), and a sink that drops
  record ids it holds sees each record once;
- an event's state is written to the table before its outputs are queued,
  and the outbox (costtrace/fleet/outbox.py) sends outputs only once Kafka has the
  changelog that explains them;
- nothing escapes the per-event handler: an unexpected error becomes a dead
  letter (`processing_error`) and the account's state is left untouched;
- a failed send stops the process before faust can commit past it
  (`StopOnSendError`).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec

from costtrace._native import partition_for
from costtrace.contract.events import EVENT_TYPES, Event, Invalid, parse_event
from costtrace.contract.letters import (
    ATTEMPT_HEADER,
    INLINE_PAYLOAD_MAX,
    OMITTED,
    ORIGIN_HEADER,
    UTF8,
    DeadLetter,
    carried,
    printable,
)
from costtrace.contract.records import Kind, Reason, Rejection, rejection
from costtrace.fleet.merge import ORDER_HEADER
from costtrace.model.allocation import Outcome, Status, apply_archive, apply_credit, apply_event
from costtrace.model.order import OrderKey
from costtrace.model.state import Archive, Credit, Position, Settled, Store

log = logging.getLogger(__name__)

PROCESSING_ERROR: Final = "processing_error"
LATE_EVENT: Final = "late_event"  # not a rejection: the letter that reports an event applied late
LATE_KIND: Final = "late"
_json = msgspec.json.Encoder()
_credit_decoder = msgspec.msgpack.Decoder(Credit)
_archive_decoder = msgspec.json.Decoder(Archive)
_TYPE_NAMES: Final = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}


# NamedTuples, not frozen dataclasses: a few are made per event, and a frozen
# dataclass's __init__ sets each field through object.__setattr__


class Output(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class Handled(NamedTuple):
    """What one message gave: the model's outcome, what to send, and what metrics count."""

    outcome: Outcome
    outputs: list[Output]
    event_type: str  # the contract's type, "credit", or "invalid"
    occurred_ms: int | None  # the event's own time, when it has a valid one
    late: bool = False  # applied after events later in the log order (costtrace/fleet/merge.py)


class Message(NamedTuple):
    """The parts of a Kafka message the allocator uses."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None
    attempt: int = 1
    origin: str | None = None  # the first attempt's position, on an event the compensator sent again

    @classmethod
    def of(cls, m: Any) -> Message:
        """A faust message; the compensator's headers say which attempt it is."""
        timestamp_ms = int(m.timestamp * 1000)
        if not m.headers:  # a producer's event: a first attempt
            return cls(m.topic, m.partition, m.offset, m.key, m.value, timestamp_ms)
        headers = dict(m.headers)
        return cls(
            m.topic, m.partition, m.offset, m.key, m.value, timestamp_ms,
            _attempt(headers.get(ATTEMPT_HEADER)), _origin(headers.get(ORIGIN_HEADER)),
        )  # fmt: skip

    @property
    def position(self) -> Position:
        return Position(f"{self.topic}:{self.partition}", self.offset)


def _attempt(raw: bytes | None) -> int:
    """The compensator's attempt header; anything else a producer put there counts as a first attempt."""
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        return 1


def _origin(raw: bytes | None) -> str | None:
    """The compensator's origin header (`topic:partition@offset`); anything else there counts as none."""
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def credit_position(msg: Message, order: OrderKey) -> Position:
    """Where the model keeps a credit's place: its sender's own partition of the credits partition.

    Credits from every sender share a credits partition, and a receiver
    applies them by their transfers' order, not by their offsets there; the
    model's markers need a source whose positions each account applies in
    increasing order. One sender's credits are: by its transfer's offset.
    """
    return Position(f"{msg.topic}:{msg.partition}/{order.partition}", order.offset)


def decode_credit(value: bytes) -> Credit:
    return _credit_decoder.decode(value)


class Allocator:
    """Turns one message into its outputs; pure but for the store and the clock of dead letters."""

    def __init__(
        self,
        store: Store,
        credits_topic: str,
        allocations_topic: str,
        dead_letters_topic: str,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        skips: Callable[[str, int], bool] = lambda event_type, occurred_ns: False,
        archive_topic: str | None = None,
        partitions: int | None = None,
    ) -> None:
        """`partitions`: the input topics' partition count; each event must be on its account's."""
        self.store = store
        self.partitions = partitions
        self.skips = skips
        self.archive_topic = archive_topic
        self.credits_topic = credits_topic
        self.allocations_topic = allocations_topic
        self.dead_letters_topic = dead_letters_topic
        self.clock_ms = clock_ms

    def handle(
        self, msg: Message, settled: Settled | None = None, order: OrderKey | None = None, late: bool = False
    ) -> Handled:
        """`settled`: the group's committed offsets, by source (outputs below them are let go).

        `order`: the message's place in the log order, which its credits carry
        to their receivers; `late`: the hold read it after messages later in
        that order were applied on its partition (costtrace/fleet/merge.py). It is
        late too when its account already applied an event later in the order,
        whichever worker did (the model keeps each account's largest place: a
        worker that took the partition over starts its hold afresh). A late
        message that changes its account is applied, counted and reported
        with a `late_event` letter, from which the compensator re-drives the
        account's parked rejections.
        """
        position = msg.position
        if order is not None and msg.topic == self.credits_topic:
            position = credit_position(msg, order)
        event_type, occurred_ms, event_id = "invalid", None, None
        try:
            if msg.topic == self.credits_topic:
                event_type = "credit"
                credit = decode_credit(msg.value)
                event_id = credit.event_id
                outcome = apply_credit(self.store, credit, position, settled, order)
            elif msg.topic == self.archive_topic:
                event_type = "archive"
                outcome = apply_archive(
                    self.store, _archive_decoder.decode(msg.value), position, settled, order
                )
            else:
                ev = parse_event(msg.value)
                event_id = ev.event_id
                if not isinstance(ev, Invalid):
                    event_type, occurred_ms = _TYPE_NAMES[type(ev)], ev.occurred_ns // 1_000_000
                    if msg.attempt <= 1 and self.skips(event_type, ev.occurred_ns):
                        # before the historical node: the opening balances hold it (a retry of an
                        # event the fleet took in before is never skipped)
                        skipped = Outcome(Status.SKIPPED, ev.account_id, [], [])
                        return Handled(skipped, [], event_type, occurred_ms)
                outcome = self._apply(msg, ev, position, settled, order)
        except Exception as exc:  # a bug, never bad input: keep the event as a dead letter
            log.exception("processing error at %s", position.key)
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            rej = Rejection(None, Kind.REJECTED.value, None, PROCESSING_ERROR)
            outcome = Outcome(Status.REJECTED, None, [], [], rej, detail)
        outputs = self._outputs(outcome, msg, position, occurred_ms, order)
        late = (late or outcome.late) and outcome.status is Status.APPLIED
        if late:
            log.warning(
                "late %s event %r of account %r at %s: applied after events later in the log order (%s)",
                event_type, event_id, outcome.account_id, position.key, order,
            )  # fmt: skip
            rej = Rejection(event_id, LATE_KIND, outcome.account_id, LATE_EVENT)
            detail = (
                f"applied late: its place in the log order ({order}) is before events its partition had "
                "already applied; the compensator re-drives the account's parked rejections"
            )
            outputs.append(Output(self.dead_letters_topic, *self._letter(rej, detail, msg), []))
        return Handled(outcome, outputs, event_type, occurred_ms, late)

    def _apply(
        self,
        msg: Message,
        ev: Event | Invalid,
        position: Position,
        settled: Settled | None,
        order: OrderKey | None,
    ) -> Outcome:
        if not isinstance(ev, Invalid) and msg.key != ev.account_id.encode():
            # state is kept on the partition of the message key: an event keyed
            # by another account would land on the wrong worker's state
            key = None if msg.key is None else msg.key.decode("utf-8", "backslashreplace")
            ev = Invalid(
                ev.event_id,
                ev.account_id,
                f"message key {key!r} is not the event's account_id {ev.account_id!r}: "
                "producers key every event by account_id",
            )
        elif not isinstance(ev, Invalid) and self.partitions and msg.key is not None:
            expected = partition_for(msg.key, self.partitions)
            if msg.partition != expected:
                # its account's other events are on the murmur2 partition, and so are its credits
                rej = rejection(ev.event_id, ev.account_id, Reason.WRONG_PARTITION)
                detail = (
                    f"on partition {msg.partition}, but Kafka's default (murmur2) partitioner puts key "
                    f"{ev.account_id!r} on {expected} of {self.partitions}: set the producer's partitioner "
                    "to murmur2 (docs/producers.md)"
                )
                return Outcome(Status.REJECTED, ev.account_id, [], [], rej, detail)
        return apply_event(self.store, ev, position, settled, order)

    def _outputs(
        self,
        outcome: Outcome,
        msg: Message,
        position: Position,
        occurred_ms: int | None,
        order: OrderKey | None,
    ) -> list[Output]:
        out: list[Output] = []
        source = position.key.encode()
        headers = [
            ("costtrace-step", str(outcome.step).encode()),
            ("costtrace-source", source),
            ("costtrace-received-ms", str(msg.timestamp_ms or "").encode()),
            ("costtrace-occurred-ms", str("" if occurred_ms is None else occurred_ms).encode()),
        ]
        if outcome.record_lines:
            # an outcome's records are all on its account (a credit's on the receiver's)
            assert outcome.account_id is not None
            account_key = outcome.account_id.encode()
            for line in outcome.record_lines:
                out.append(Output(self.allocations_topic, account_key, line, headers))
        # a credit takes its transfer's place in its receiver's log order (costtrace/model/order.py)
        credit_headers = [] if order is None else [(ORDER_HEADER, order.text().encode())]
        for credit, blob in zip(outcome.credits, outcome.credit_blobs, strict=True):
            out.append(Output(self.credits_topic, credit.to_account_id.encode(), blob, credit_headers))
        rej = outcome.rejection
        if rej is not None:
            out.append(Output(self.dead_letters_topic, *self._letter(rej, outcome.detail, msg), []))
        return out

    def _letter(self, rej: Rejection, detail: str | None, msg: Message) -> tuple[bytes, bytes]:
        """The dead letter's key (the account, else the message key) and value: the bytes kept exactly."""
        key_text, key_encoding = (None, UTF8) if msg.key is None else carried(msg.key)
        if len(msg.value) <= INLINE_PAYLOAD_MAX:
            payload, encoding, size = (*carried(msg.value), None)
        else:  # stays in its input topic, at the position the letter names
            payload, encoding, size = "", OMITTED, len(msg.value)
        letter = DeadLetter(
            rej.event_id, rej.kind, rej.account_id, rej.reason, None if detail is None else printable(detail),
            msg.topic, msg.partition, msg.offset, key_text, payload, encoding, msg.timestamp_ms, msg.attempt,
            self.clock_ms(), msg.origin, key_encoding, size,
        )  # fmt: skip
        key = rej.account_id.encode() if rej.account_id is not None else (msg.key or b"")
        return key, _json.encode(letter)


class FreezeGuard:
    """Stops a process that was frozen longer than its group allows, before it sends anything more.

    A process stopped (SIGSTOP, a VM pause, a very long GC) for about the
    session timeout has lost its partitions: another allocator restored them
    from the changelog and went on. Resumed, it would hand over what it held
    and apply what it had fetched, writing older states to the changelog after
    the new owner's newer ones, which the next restore would then take (seen in
    the fleet's soak, dev/soak.py). So every hand-over first asks `check`, and
    a timer asks it every `tick`: a gap in the process's own time of more
    than `limit` stops it, like a failed send
    (exit 70, nothing committed since; the unclean exit empties its state
    folder). The guard arms with the first `check`, once the app runs.
    """

    def __init__(
        self,
        limit: float,
        exit_: Callable[[int], Any] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self._exit, self._clock = limit, exit_, clock
        self._last: float | None = None

    def check(self) -> None:
        now = self._clock()
        last, self._last = self._last, now
        if last is not None and now - last > self.limit:
            log.critical(
                "this process did not run for %.1f s (more than %.1f s: its partitions have likely moved); "
                "stopping before it sends what it held", now - last, self.limit,
            )  # fmt: skip
            logging.shutdown()
            self._exit(70)


class StopOnSendError:
    """A failed send stops the process at once.

    faust logs a failed produce and commits anyway (docs/faust.md §3); an offset
    committed past a lost record would lose it. Exiting from the outbox's
    hand-over callback runs before the commit's flush returns, so the input
    is read again after the restart and the model gives the outputs back.
    """

    def __init__(self, exit_: Callable[[int], Any] = os._exit) -> None:
        self._exit = exit_

    def __call__(self, exc: BaseException) -> None:
        log.critical("send failed, stopping before any commit: %r", exc)
        logging.shutdown()
        self._exit(70)
