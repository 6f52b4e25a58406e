"""Lines no producer should send, each of which must become one `invalid_event`, never a crash.

Shared by the decoder's and replay's fuzz tests (tests/contract/test_fuzz.py) and the fleet's
(tests/integration/test_producers.py), which publishes them to every input topic.
"""

from __future__ import annotations

import json
from typing import Any, Final


def event(kind: str = "issued", **fields: Any) -> dict[str, Any]:
    """A valid event of `kind`, its fields overridden by `fields`."""
    base: dict[str, Any] = {
        "event_id": "hostile-1", "type": kind, "account_id": "hostile", "occurred_at": "2026-03-01T00:00:00Z",
    }  # fmt: skip
    extra = {
        "issued": {"batch_id": "b1", "budget_id": "acme", "amount": 5},
        "opened": {"batch_id": "b0", "amount": 5},
        "consumed": {"order_id": "o1", "amount": 5},
        "refunded": {"refund_id": "r1", "order_id": "o1", "amount": 5},
        "transferred": {"transfer_id": "t1", "to_account_id": "other", "amount": 5},
    }[kind]
    return {**base, **extra, **fields}


def line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def corpus(kind: str = "issued") -> dict[str, bytes]:
    """Name -> line, for an event of `kind`: each one invalid."""
    ok = line(event(kind))
    return {
        "array nested 50,000 deep": b"[" * 50_000 + b"]" * 50_000,
        "object nested 50,000 deep": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "an unknown field nested 10,000 deep": ok[:-1] + b', "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        "amount 1e400": ok.replace(b'"amount": 5', b'"amount": 1e400'),
        "amount of 5,000 digits": ok.replace(b'"amount": 5', b'"amount": ' + b"9" * 5_000),
        "amount 10^15 + 1": line(event(kind, amount=10**15 + 1)),
        "amount 2^64": line(event(kind, amount=2**64)),
        "amount -5": line(event(kind, amount=-5)),
        "amount 5.0": ok.replace(b'"amount": 5', b'"amount": 5.0'),
        "amount as a string": line(event(kind, amount="5")),
        "invalid UTF-8": ok.replace(b'"hostile-1"', b'"hostile-\xff\xfe"'),
        "a lone surrogate escape": ok.replace(b'"hostile-1"', b'"hostile-\\ud800"'),
        "a raw NUL byte": ok.replace(b'"hostile-1"', b'"hostile\x00-1"'),
        "a NUL escape": ok.replace(b'"hostile-1"', b'"hostile\\u0000-1"'),
        "a 2 MB string": line(event(kind, event_id="x" * 2_000_000)),
        "a 129-character id": line(event(kind, account_id="a" * 129)),
        "the amount named twice": ok[:-1] + b', "amount": 7}',
        "the type named twice": ok[:-1] + b', "type": "' + kind.encode() + b'"}',
        "the account named twice, once escaped": ok[:-1] + b', "\\u0061ccount_id": "someone-else"}',
        "a byte-order mark": b"\xef\xbb\xbf" + ok,
        "a timestamp without offset": line(event(kind, occurred_at="2026-03-01T00:00:00")),
        "year 10000": line(event(kind, occurred_at="10000-03-01T00:00:00Z")),
        "an unknown type": line(event(kind, type="minted")),
        "null": b"null",
        "a bare string": b'"issued"',
        "an empty object": b"{}",
        "binary": bytes(range(1, 256)),
        "truncated": ok[: len(ok) // 2],
        "two events on one line": ok + ok,
    }


KINDS: Final = ("issued", "opened", "consumed", "refunded", "transferred")
