"""Per-account state, split so that an event reads and writes only what it touches.

One account's state (`AccountState`) is a header plus entries under (namespace, key):

| where | key | value | written by |
|---|---|---|---|
| header | | `Account`: open batches (FIFO), debt slices, source markers | every event |
| `BATCH` | batch_id | `BatchInfo` (immutable) | issued, opened, credit |
| `ORDER` | order_id | `Order`: its slices, debt and refunds | consumed, refunded, trueup |
| `EVENT` | event_id | the applied event itself (its exact-repeat fingerprint) | every applied event |
| `REFUND` | refund_id | order_id | refunded |
| `TRANSFER` | transfer_id | event_id | transferred (sender) |
| `CREDIT` | origin event key | transfer_id | credit (receiver) |
| `OUTPUTS` | slot | `Outputs` of a position not yet settled | every positioned event (fleet only) |

The header grows with open batches and open debts, never with history: an
account with 100,000 past orders still writes one small header and one order
per event. What it keeps for redelivery is let go once the position is
settled (its offset committed): `Account.kept` says which slot holds which
position's outputs, and a settled slot is written over by the next event, so
the fleet's outputs take as many entries as an account has events in flight.
Everything is a msgspec Struct, so it serialises compactly
(`array_like` msgpack) and round-trips exactly. State never forms reference
cycles, so the Structs opt out of the garbage collector (`gc=False`), which
matters with millions of them in memory.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final, Protocol, TypeVar

import msgspec

from schemas.events import Event
from schemas.records import Record, Rejection

V = TypeVar("V")


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


class Kept(msgspec.Struct, array_like=True, gc=False):
    """The outputs of the event read at (source, offset) are in the `OUTPUTS` entry `slot`."""

    source: str
    offset: int
    slot: int


class Account(msgspec.Struct, array_like=True, gc=False):
    open: list[OpenBatch] = msgspec.field(default_factory=list)
    debts: list[Debt] = msgspec.field(default_factory=list)
    # source ("topic:partition") -> last offset applied; only the fleet sets it
    marks: dict[str, int] = msgspec.field(default_factory=dict)
    # applied events and credits so far: orders the account's records as replay does
    steps: int = 0
    # positions whose outputs may still be asked for again (fleet only)
    kept: list[Kept] = msgspec.field(default_factory=list)

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
    # archived (`costtrace archive`): its slices are gone, a late refund is `order_archived`
    archived: bool = False


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


class Archive(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Orders of one account whose records went to the archive: the fleet drops their slices."""

    account_id: str
    order_ids: list[str]


class Outputs(msgspec.Struct, array_like=True, gc=False):
    """Everything an event produced, kept to give back on redelivery."""

    records: list[Record] = msgspec.field(default_factory=list)
    credits: list[Credit] = msgspec.field(default_factory=list)
    rejection: Rejection | None = None
    step: int = 0


class Position(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where the fleet read an event: its source ("topic:partition") and offset."""

    source: str
    offset: int

    @property
    def key(self) -> str:
        return f"{self.source}@{self.offset}"


class Settled(Protocol):
    """Per source, the offset below which the fleet never reads again (its committed offset)."""

    def get(self, source: str, /) -> int | None: ...


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
class Entries(Protocol[V]):
    """Keyed entries of one kind on one account: all the model needs of a map."""

    def get(self, key: str) -> V | None: ...

    def __setitem__(self, key: str, value: V) -> None: ...


class AccountState:
    """One account's state as the model sees it: the header and its keyed entries.

    In replay every map is a plain dict; in the fleet they read through to the
    RocksDB table and remember what changed. The model changes nothing until
    it has accepted an event, and assigns every entry it changed back to its
    map (never only mutating it in place), so a store sees every write.
    """

    __slots__ = ("batches", "credits", "events", "head", "orders", "outputs", "refunds", "transfers")

    def __init__(
        self,
        head: Account,
        batches: Entries[BatchInfo],
        orders: Entries[Order],
        events: Entries[Event],
        refunds: Entries[str],
        transfers: Entries[str],
        credits: Entries[str],
        outputs: Entries[Outputs],
    ) -> None:
        self.head = head
        self.batches = batches
        self.orders = orders
        self.events = events
        self.refunds = refunds
        self.transfers = transfers
        self.credits = credits
        self.outputs = outputs

    @classmethod
    def in_memory(cls) -> AccountState:
        return cls(Account(), {}, {}, {}, {}, {}, {}, {})

    def entries(self) -> dict[Namespace, Entries[Any]]:
        return {
            Namespace.BATCH: self.batches,
            Namespace.ORDER: self.orders,
            Namespace.EVENT: self.events,
            Namespace.REFUND: self.refunds,
            Namespace.TRANSFER: self.transfers,
            Namespace.CREDIT: self.credits,
            Namespace.OUTPUTS: self.outputs,
        }

    def is_empty(self) -> bool:
        return not (self.head.open or self.head.debts or self.head.marks) and not any(
            isinstance(m, dict) and m for m in self.entries().values()
        )


class Store(Protocol):
    """Where per-account state lives: dicts for replay, a RocksDB table in the fleet."""

    def account(self, account_id: str) -> AccountState:
        """The account's state, empty if it has none yet."""
        ...

    def commit(self, account_id: str, state: AccountState) -> None:
        """Keep what one event changed (the model calls it once per event that changed anything)."""
        ...


class MemoryStore:
    """The in-memory store of offline replay and the tests: one `AccountState` per account."""

    def __init__(self) -> None:
        self.states: dict[str, AccountState] = {}

    def account(self, account_id: str) -> AccountState:
        state = self.states.get(account_id)
        if state is None:
            state = self.states[account_id] = AccountState.in_memory()
        return state

    def commit(self, account_id: str, state: AccountState) -> None:
        """Nothing to do: the maps are the store."""

    def accounts(self) -> dict[str, Account]:
        """Headers of every account with any state (an account seen only in rejections has none)."""
        return {a: s.head for a, s in self.states.items() if not s.is_empty()}


_encoder: Final = msgspec.msgpack.Encoder()
_decoders: Final = {ns: msgspec.msgpack.Decoder(t) for ns, t in VALUE_TYPES.items()}
_account_decoder: Final = msgspec.msgpack.Decoder(Account)


def encode_value(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_value(ns: Namespace, data: bytes) -> Any:
    return _decoders[ns].decode(data)


def decode_account(data: bytes) -> Account:
    return _account_decoder.decode(data)
