"""Per-account state: the decoded form of what the native model stores.

The rules and the code that reads and writes state are native
(native/src/: model.rs, store.rs, state.rs); the Structs here are the same
values as msgspec decodes them, for tests, tools and the credits topic. A
test in tests/model/test_properties.py holds the two forms to each other
byte for byte (everything the model stores decodes here and encodes back the
same); tests/model/test_native.py does so for records and record ids.

One account's state is a header plus entries under (namespace, key), all in
one key-value table (a map for replay, the partition's RocksDB in the fleet):

| where | key | value | written by |
|---|---|---|---|
| header | | `Header`: `Account` (open batches FIFO, debt slices, source marks), redo log | every event |
| `BATCH` | batch_id | `BatchInfo` (immutable) | issued, opened, credit |
| `ORDER` | order_id | `Order`: its slices, debt and refunds | consumed, refunded, trueup |
| `EVENT` | event_id | the applied event itself (its exact-repeat fingerprint) | every applied event |
| `REFUND` | refund_id | order_id | refunded |
| `TRANSFER` | transfer_id | event_id | transferred (sender) |
| `CREDIT` | origin event key | transfer_id | credit (receiver) |
| `OUTPUTS` | slot | `Outputs` of a position not yet settled | every positioned event (fleet only) |

Keys are `h{len}:{account}` for the header and `{ns}{len}:{account}{key}` for
an entry (`len` in bytes). The header grows with open batches and open debts,
never with history: an account with 100,000 past orders still writes one
small header and one order per event. What it keeps for redelivery is let go
once the position is settled (its offset committed): `Account.kept` says
which slot holds which position's outputs, and a settled slot is written over
by the next event, so the fleet's outputs take as many entries as an account
has events in flight. Values are compact msgpack (`array_like`) and
round-trip exactly.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final, Protocol

import msgspec

from costtrace._native import NativeStore
from costtrace.contract.events import Event
from costtrace.contract.records import Record, Rejection
from costtrace.contract.vocabulary import KEY_PREFIXES, matching


@matching({name: prefix[0] for name, prefix in KEY_PREFIXES.items() if name != "HEADER"})
class Namespace(IntEnum):
    """The first byte of an account's state keys, by what they hold (the header's is `HEADER_PREFIX`)."""

    BATCH = KEY_PREFIXES["BATCH"][0]
    ORDER = KEY_PREFIXES["ORDER"][0]
    EVENT = KEY_PREFIXES["EVENT"][0]
    REFUND = KEY_PREFIXES["REFUND"][0]
    TRANSFER = KEY_PREFIXES["TRANSFER"][0]
    CREDIT = KEY_PREFIXES["CREDIT"][0]
    OUTPUTS = KEY_PREFIXES["OUTPUTS"][0]


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
    # the largest place in the log order of an event applied to it (fleet only: costtrace/model/order.py)
    last: tuple[int, int, int, int, int] | None = None

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

    @classmethod
    def parse(cls, key: str) -> Position:
        """The position a `key` (`topic:partition@offset`) names."""
        source, sep, offset = key.rpartition("@")
        if not sep or ":" not in source or not offset.isdigit():
            raise ValueError(f"not a position (topic:partition@offset): {key!r}")
        return cls(source, int(offset))


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


class Header(msgspec.Struct, array_like=True, gc=False):
    """The header entry: the account, and the (table key, value) writes of its last event (redo log)."""

    account: Account
    redo: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)


HEADER_PREFIX: Final = KEY_PREFIXES["HEADER"]


def account_prefix(account_id: str) -> bytes:
    """`{len}:{account}`: what every key of the account starts with after its namespace byte."""
    encoded = account_id.encode()
    return b"%d:%s" % (len(encoded), encoded)


class Store(Protocol):
    """Where per-account state lives: in memory for replay, a RocksDB table in the fleet.

    Either way the native model (native/src/store.rs) reads and writes it.
    """

    native: NativeStore


class AccountView:
    """One account's state, decoded: what tests and tools read (the model never does)."""

    def __init__(self, head: Account, entries: dict[Namespace, dict[str, Any]]) -> None:
        self.head = head
        self._entries = entries

    def entries(self) -> dict[Namespace, dict[str, Any]]:
        return self._entries

    @property
    def batches(self) -> dict[str, BatchInfo]:
        return self._entries[Namespace.BATCH]

    @property
    def orders(self) -> dict[str, Order]:
        return self._entries[Namespace.ORDER]

    @property
    def outputs(self) -> dict[str, Outputs]:
        return self._entries[Namespace.OUTPUTS]


class MemoryStore:
    """The in-memory store of offline replay and the tests (the table is a map inside the native model)."""

    def __init__(self) -> None:
        self.native = NativeStore.memory()

    def items(self, account_id: str | None = None) -> list[tuple[bytes, bytes]]:
        """Every (table key, value), or one account's, as the fleet's table would hold them."""
        return self.native.items(account_id)

    def accounts(self) -> dict[str, Account]:
        """Headers of every account with any state (an account seen only in rejections has none)."""
        return {account_id: decode_header(value).account for account_id, value in self.native.heads()}

    def totals(self) -> tuple[int, int]:
        """(accounts with any state, debt outstanding on them), as `accounts()` would sum them."""
        return self.native.totals()

    def account(self, account_id: str) -> AccountView:
        """The account's state, decoded (empty if it has none)."""
        skip = 1 + len(account_prefix(account_id))  # the namespace byte and `{len}:{account}`
        head = Account()
        entries: dict[Namespace, dict[str, Any]] = {ns: {} for ns in Namespace}
        for key, value in self.native.items(account_id):
            if key.startswith(HEADER_PREFIX):
                head = decode_header(value).account
            else:
                ns = Namespace(key[0])
                entries[ns][key[skip:].decode()] = decode_value(ns, value)
        return AccountView(head, entries)


_encoder: Final = msgspec.msgpack.Encoder()
_decoders: Final = {ns: msgspec.msgpack.Decoder(t) for ns, t in VALUE_TYPES.items()}
_header_decoder: Final = msgspec.msgpack.Decoder(Header)


def encode_value(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_value(ns: Namespace, data: bytes) -> Any:
    return _decoders[ns].decode(data)


def decode_header(data: bytes) -> Header:
    return _header_decoder.decode(data)
