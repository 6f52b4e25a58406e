"""The five input events of the contract, as the Python types the code uses.

`costtrace/contract/v1/*.schema.json` are the machine-readable form that producers use;
`tests/contract/test_agreement.py` keeps the two in agreement.

Decisions where the contract is silent (see docs/semantics.md):
- an optional field sent as `null` counts as absent;
- a key repeated inside one JSON object: the last one wins (as in most JSON
  parsers);
- `occurred_at` is ordered as an instant (nanoseconds since the epoch);
- a repeat is *exact* when every contract field is equal as sent (the
  event's Struct equality), unknown extra fields aside.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

import msgspec

from costtrace._native import duplicate_key
from costtrace.contract.timestamps import TimestampError, parse_instant

MAX_AMOUNT: Final = 10**15
MAX_TEXT: Final = 128

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
Amount = Annotated[int, msgspec.Meta(ge=1, le=MAX_AMOUNT)]

LEGACY_BUDGET: Final = "LEGACY"

# The instant is kept on the event under a name no JSON producer can collide
# with in practice; it is filled in by __post_init__, never read from input.
_INSTANT_FIELD: Final = "__costtrace_occurred_ns__"


class _Event(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    event_id: Text
    account_id: Text
    occurred_at: Text
    occurred_ns: int = msgspec.field(default=0, name=_INSTANT_FIELD)

    kind: ClassVar[str]

    def __post_init__(self) -> None:
        try:
            self.occurred_ns = parse_instant(self.occurred_at)
        except TimestampError as exc:
            raise ValueError(f"{exc} - at `$.occurred_at`") from None


class Issued(_Event, tag="issued", kw_only=True):
    batch_id: Text
    budget_id: Text
    amount: Amount
    kind: ClassVar[str] = "issued"


class Opened(_Event, tag="opened", kw_only=True):
    batch_id: Text
    amount: Amount
    budget_id: Text | None = None
    kind: ClassVar[str] = "opened"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget_id is None:
            self.budget_id = LEGACY_BUDGET


class Consumed(_Event, tag="consumed", kw_only=True):
    order_id: Text
    amount: Amount
    merchant_id: Text | None = None
    kind: ClassVar[str] = "consumed"


class Refunded(_Event, tag="refunded", kw_only=True):
    refund_id: Text
    order_id: Text
    amount: Amount
    kind: ClassVar[str] = "refunded"


class Transferred(_Event, tag="transferred", kw_only=True):
    transfer_id: Text
    to_account_id: Text
    amount: Amount
    kind: ClassVar[str] = "transferred"


Event = Issued | Opened | Consumed | Refunded | Transferred
EVENT_TYPES: Final[tuple[type[_Event], ...]] = (Issued, Opened, Consumed, Refunded, Transferred)


class Invalid(msgspec.Struct, frozen=True, gc=False):
    """An input that is not a valid event: the `invalid_event` rejection.

    `event_id` and `account_id` are kept where the input has valid ones, so
    the rejection can still name them.
    """

    event_id: str | None
    account_id: str | None
    detail: str


_decoder: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)
_loose: Final = msgspec.json.Decoder()


# JSON can spell U+0000 only as an escape; a raw NUL byte is not JSON at all
_NUL_ESCAPE: Final = b"\\u0000"
NUL_DETAIL: Final = "a string holds U+0000 (NUL), which no PostgreSQL text column can store"
DUPLICATE_DETAIL: Final = "a field is named twice, and JSON parsers differ on which value counts"


def _valid_text(value: object) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= MAX_TEXT and "\x00" not in value:
        return value
    return None


def _holds_nul(ev: Event) -> str | None:
    """The first contract field whose string holds U+0000 (docs/semantics.md, "Input")."""
    for name in ev.__struct_fields__:
        value = getattr(ev, name)
        if isinstance(value, str) and "\x00" in value:
            return name
    return None


def parse_event(raw: bytes | str) -> Event | Invalid:
    """Decode and validate one event; never raises on bad input."""
    try:
        ev = _decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        detail = str(exc)
    except RecursionError:  # nested deeper than the decoder goes: not an event either
        return Invalid(None, None, "JSON is nested too deeply to be an event")
    else:
        data = raw if isinstance(raw, bytes) else raw.encode()
        twice = duplicate_key(data)
        if twice is not None:  # parsers differ on which value counts: the event has no single meaning
            detail = f"{DUPLICATE_DETAIL} - at `$.{twice}`"
        else:
            if _NUL_ESCAPE not in data:
                return ev
            field = _holds_nul(ev)
            if field is None:
                return ev
            detail = f"{NUL_DETAIL} - at `$.{field}`"
    try:
        loose = _loose.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return Invalid(None, None, detail)
    if not isinstance(loose, dict):
        return Invalid(None, None, detail)
    return Invalid(_valid_text(loose.get("event_id")), _valid_text(loose.get("account_id")), detail)
