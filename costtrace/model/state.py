"""Per-account state, split so that an event reads and writes only what it touches.

One account's state is a header plus entries under (namespace, key):

| where | key | value | written by |
|---|---|---|---|
| header | | `Account`: open batches (FIFO), debt slices, source markers | every event |
| `BATCH` | batch_id | `BatchInfo` (immutable) | issued, opened, credit |
| `ORDER` | order_id | `Order`: its slices, debt and refunds | consumed, refunded, trueup |
| `EVENT` | event_id | the applied event itself (its exact-repeat fingerprint) | every applied event |
| `REFUND` | refund_id | order_id | refunded |
| `TRANSFER` | transfer_id | event_id | transferred (sender) |
| `CREDIT` | origin event key | transfer_id | credit (receiver) |
| `OUTPUTS` | source@offset | `Outputs` | every positioned event (fleet only) |

The header grows with open batches and open debts, never with history: an
account with 100,000 past orders still writes one small header and one order
per event. Everything is a msgspec Struct, so it serialises compactly
(`array_like` msgpack) and round-trips exactly. State never forms reference
cycles, so the Structs opt out of the garbage collector (`gc=False`), which
matters with millions of them in memory.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final, Protocol

import msgspec

from schemas.events import Event
from schemas.records import Record, Rejection


class Namespace(IntEnum):
    BATCH = 0
    ORDER = 1
    EVENT = 2
    REFUND = 3
    TRANSFER = 4
    CREDIT = 5
    OUTPUTS = 6


class OpenBatch(msgspec.Struct, array_like=True, order=True, gc=False):
    """A batch with coins left; ordered by (issued instant, batch_id)."""

    issued_ns: int
    batch_id: str
    budget_id: str
    remaining: int


class Debt(msgspec.Struct, array_like=True, gc=False):
    """What an order still owes on SUSPENSE, oldest first in `Account.debts`."""

    order_id: str
    amount: int


class Account(msgspec.Struct, array_like=True, gc=False):
    open: list[OpenBatch] = msgspec.field(default_factory=list)
    debts: list[Debt] = msgspec.field(default_factory=list)
    # source ("topic:partition") -> last offset applied; only the fleet sets it
    marks: dict[str, int] = msgspec.field(default_factory=dict)

    def stock(self) -> int:
        return sum(b.remaining for b in self.open)

    def debt(self) -> int:
        return sum(d.amount for d in self.debts)


class BatchInfo(msgspec.Struct, array_like=True, frozen=True, gc=False):
    budget_id: str
    issued_ns: int
    amount: int


class Slice(msgspec.Struct, array_like=True, gc=False):
    """Part of a batch used by an order or a transfer."""

    batch_id: str
    budget_id: str
    amount: int


class Order(msgspec.Struct, array_like=True, gc=False):
    amount: int
    merchant_id: str | None
    refunded: int = 0
    suspense: int = 0  # still owed on SUSPENSE
    consumes: list[Slice] = msgspec.field(default_factory=list)
    trueups: list[Slice] = msgspec.field(default_factory=list)


class CreditSlice(msgspec.Struct, array_like=True, gc=False):
    source_batch_id: str
    budget_id: str
    issued_ns: int
    amount: int


class Credit(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The receiving half of a transfer, applied on the receiver's account.

    Replay applies it right after the transfer; the fleet sends it to the
    receiver's partition. `seq` continues the transfer event's record ids.
    """

    origin_account_id: str
    event_id: str
    transfer_id: str
    to_account_id: str
    seq: int
    slices: list[CreditSlice]


class Outputs(msgspec.Struct, array_like=True, gc=False):
    """Everything an event produced, kept to give back on redelivery."""

    records: list[Record] = msgspec.field(default_factory=list)
    credits: list[Credit] = msgspec.field(default_factory=list)
    rejection: Rejection | None = None


class Position(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where the fleet read an event: its source ("topic:partition") and offset."""

    source: str
    offset: int

    @property
    def key(self) -> str:
        return f"{self.source}@{self.offset}"


VALUE_TYPES: Final[dict[Namespace, Any]] = {
    Namespace.BATCH: BatchInfo,
    Namespace.ORDER: Order,
    Namespace.EVENT: Event,
    Namespace.REFUND: str,
    Namespace.TRANSFER: str,
    Namespace.CREDIT: str,
    Namespace.OUTPUTS: Outputs,
}

# (namespace, key) -> new value, for one event on one account
Writes = dict[tuple[Namespace, str], Any]


class AccountView(Protocol):
    """One account's state as the model reads it during one event."""

    @property
    def head(self) -> Account | None: ...

    def get(self, ns: Namespace, key: str) -> Any: ...


class Store(Protocol):
    """Where per-account state lives: a dict for replay, a RocksDB table in the fleet.

    A view may hand out the stored objects themselves: the model changes
    nothing it read until it has accepted the event, and then hands every
    changed object back in one `commit`, so a store can make each event
    atomic.
    """

    def view(self, account_id: str) -> AccountView: ...

    def commit(self, account_id: str, head: Account, writes: Writes) -> None: ...


class _Slot:
    __slots__ = ("head", "maps")

    def __init__(self) -> None:
        self.head: Account | None = None
        self.maps: tuple[dict[str, Any], ...] = tuple({} for _ in Namespace)

    def get(self, ns: Namespace, key: str) -> Any:
        return self.maps[ns].get(key)


_NO_ACCOUNT: Final = _Slot()


class MemoryStore:
    """The in-memory store of offline replay and the tests: one slot per account."""

    def __init__(self) -> None:
        self.slots: dict[str, _Slot] = {}

    def view(self, account_id: str) -> _Slot:
        return self.slots.get(account_id, _NO_ACCOUNT)

    def commit(self, account_id: str, head: Account, writes: Writes) -> None:
        slot = self.slots.get(account_id)
        if slot is None:
            slot = self.slots[account_id] = _Slot()
        slot.head = head
        maps = slot.maps
        for (ns, key), value in writes.items():
            maps[ns][key] = value

    def accounts(self) -> dict[str, Account]:
        return {a: slot.head for a, slot in self.slots.items() if slot.head is not None}


_encoder: Final = msgspec.msgpack.Encoder()
_decoders: Final = {ns: msgspec.msgpack.Decoder(t) for ns, t in VALUE_TYPES.items()}
_account_decoder: Final = msgspec.msgpack.Decoder(Account)


def encode_value(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_value(ns: Namespace, data: bytes) -> Any:
    return _decoders[ns].decode(data)


def decode_account(data: bytes) -> Account:
    return _account_decoder.decode(data)
