"""Producers that are not costtrace's own: hostile bytes, every codec, another partitioner.

Published with kcat (librdkafka) and the Java client to the real broker. No
message a producer can send stops a worker; each bad one ends as one
`invalid_event` dead letter holding its exact bytes; a misplaced event is
dead-lettered, never applied to half an account.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from costtrace._native import partition_for
from tests.contract.hostile import corpus
from tests.integration.fleet import REPO, Fleet, by_account, differences, replay
from tests.integration.producers import java_producer, kcat, kcat_keyed

TYPES = ("issued", "opened", "consumed", "refunded", "transferred")
T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)


def event(kind: str, account: str, n: int, **fields: Any) -> bytes:
    """Event `n` of `account`, `n` seconds into the day."""
    at = (T0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
    ev = {"event_id": f"{account}-e{n}", "type": kind, "account_id": account, "occurred_at": at}
    return msgspec.json.encode({**ev, **fields})


def fields(kind: str, n: int, text: str = "") -> dict[str, Any]:
    """What a valid event of `kind` needs besides the common fields; `text` ends each id."""
    return {
        "issued": {"batch_id": f"b{n}{text}", "budget_id": "B", "amount": 10 * n},
        "opened": {"batch_id": f"b{n}{text}", "amount": 10 * n},
        "consumed": {"order_id": f"o{n}{text}", "amount": 7},
        "refunded": {"refund_id": f"r{n}{text}", "order_id": "nowhere", "amount": 3},
        "transferred": {"transfer_id": f"t{n}{text}", "to_account_id": "good-issued", "amount": 3},
    }[kind]


def good_events(kind: str, account: str = "", count: int = 3) -> list[bytes]:
    """Events of one topic for one account: no other topic's timing can change their records.

    Refunds of an unknown order and transfers without stock are rejected
    whatever the order; the others give records.
    """
    acct = account or f"good-{kind}"
    return [event(kind, acct, n, **fields(kind, n)) for n in range(1, count + 1)]


def hostile_values(kind: str) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of messages no producer should send, and some will."""
    acct = f"hostile-{kind}"
    return [
        (acct.encode(), b"\x00\x01\x02binary\xff"),  # the kcat line: NUL and invalid UTF-8
        (acct.encode(), b'{"event_id": "\xff\xfe", "type": "' + kind.encode() + b'"}'),  # invalid UTF-8
        (acct.encode(), event(kind, acct, 8, **fields(kind, 8, "\x00"))),  # valid but for a JSON-escaped NUL
        (acct.encode(), bytes(range(256)) * 3906 + b"\x00" * 64),  # a megabyte (1,000,000 bytes) of binary
        (None, event(kind, acct, 9, **fields(kind, 9))),  # valid, but no key
        (acct.encode(), b"[" * 50_000),  # nested deeper than any decoder recurses
        # the decoders' hostile corpus (tests/contract/hostile.py), all but what the broker refuses itself
        *[(acct.encode(), value) for value in corpus(kind).values() if len(value) < 1_000_000],
    ]


async def rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def wait_for(what: str, check: Any, fleet: Fleet, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.assert_running()
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_hostile_values_become_byte_exact_invalid_event_letters_and_nothing_stops(fleet: Fleet) -> None:
    fleet.start("allocator", "allocator", fleet.tmp / "state-1")
    fleet.start("sink", "sink")
    fleet.start("compensator", "compensator")
    bootstrap, cat = fleet.settings.kafka_bootstrap, fleet.catalogue
    sent: list[tuple[str, bytes | None, bytes]] = []
    good: list[bytes] = []
    for kind in TYPES:
        topic = cat.input_for(kind)
        before, after = good_events(kind)[:1], good_events(kind)[1:]
        kcat(bootstrap, topic, before, f"good-{kind}".encode())
        for key, value in hostile_values(kind):
            kcat(bootstrap, topic, [value], key)
            sent.append((topic, key, value))
        if after:
            kcat(bootstrap, topic, after, f"good-{kind}".encode())
        good += before + after
    fleet.drain(timeout=180)
    fleet.assert_running()

    # the good events around them: exactly replay's records and rejections
    expected, rejections = replay(good)
    got = by_account(fleet.export())
    assert got == expected, differences(got, expected)
    letters = asyncio.run(
        rows(
            fleet.dsn,
            "SELECT source_topic, message_key, payload, payload_size, reason, event_id, account_id"
            " FROM dead_letters",
        )
    )
    invalid = [r for r in letters if r["reason"] == "invalid_event"]
    others = [r for r in letters if r["reason"] != "invalid_event"]
    assert sorted((r["event_id"], r["account_id"], r["reason"]) for r in others) == sorted(
        rejections.elements()
    )
    # every hostile message: one invalid_event letter with its exact key and value
    held = sorted(((r["source_topic"], r["message_key"], r["payload"]) for r in invalid), key=repr)
    assert held == sorted(sent, key=repr), f"{len(held)} invalid_event letters for {len(sent)} messages"
    assert all(r["payload_size"] is None for r in invalid)  # a megabyte still travels inside its letter

    # `dlq show --payload -` gives back the very bytes (the compensator parks final reasons)
    nul_topic, _, nul_value = sent[0]
    big_topic, _, big_value = sent[3]
    parked = wait_for(
        "parked letters",
        lambda: asyncio.run(rows(fleet.dsn, "SELECT origin, topic, payload FROM parked_letters")),
        fleet,
    )
    for topic, value in ((nul_topic, nul_value), (big_topic, big_value)):
        [origin] = [p["origin"] for p in parked if p["topic"] == topic and p["payload"] == value]
        shown = subprocess.run(
            [sys.executable, "-m", "costtrace.cli", "dlq", "show", origin, "--payload", "-"],
            env=fleet.env, capture_output=True, check=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert shown.stdout == value


def test_every_codec_and_client_gives_replays_records(fleet: Fleet) -> None:
    """gzip, snappy, lz4 and zstd, from librdkafka (kcat) and the Java client, on one fleet."""
    fleet.start("allocator", "allocator", fleet.tmp / "state-1")
    fleet.start("sink", "sink")
    bootstrap, cat = fleet.settings.kafka_bootstrap, fleet.catalogue
    clients = {
        "issued": ("kcat", "gzip"),
        "opened": ("java", "snappy"),
        "consumed": ("kcat", "lz4"),
        "refunded": ("java", "zstd"),
        "transferred": ("kcat", "snappy"),
    }
    lines: list[bytes] = []
    for kind, (client, codec) in clients.items():
        events = [e for i in range(20) for e in good_events(kind, f"{kind}-{client}-{codec}-{i}", 2)]
        messages = [(msgspec.json.decode(e)["account_id"].encode(), e) for e in events]
        if client == "kcat":
            kcat_keyed(bootstrap, cat.input_for(kind), messages, codec=codec)
        else:
            java_producer(bootstrap, cat.input_for(kind), messages, codec)
        lines += events
    fleet.drain(timeout=180)
    fleet.assert_replays(lines)


def test_an_account_published_with_crc32_is_dead_lettered_never_split(fleet: Fleet) -> None:
    """kcat's default partitioner (CRC32) puts some accounts elsewhere than murmur2: never silently wrong.

    An account whose events arrive on a partition other than its murmur2 one
    gets none of them applied (`wrong_partition`), while the credits that a
    transfer routes to it (murmur2) land where its state is.
    """
    n = fleet.partitions
    accounts = [f"crc-{i}" for i in range(40)]
    misplaced = {a for a in accounts if zlib.crc32(a.encode()) % n != partition_for(a.encode(), n)}
    assert 5 < len(misplaced) < len(accounts)
    fleet.start("allocator", "allocator", fleet.tmp / "state-1")
    fleet.start("sink", "sink")
    bootstrap, cat = fleet.settings.kafka_bootstrap, fleet.catalogue
    issued = [event("issued", a, 1, batch_id="b1", budget_id="B", amount=50) for a in accounts]
    consumed = [event("consumed", a, 2, order_id="o1", amount=80) for a in accounts]  # debt: 30
    for kind, events in (("issued", issued), ("consumed", consumed)):
        keyed = [(a.encode(), e) for a, e in zip(accounts, events, strict=True)]
        kcat_keyed(bootstrap, cat.input_for(kind), keyed, partitioner=None)  # librdkafka's default: CRC32
        fleet.drain(timeout=180)
    # then a correct producer (aiokafka: murmur2) transfers to every account: its credits go to murmur2
    fleet.publish([event("issued", "payer", 3, batch_id="pb", budget_id="P", amount=10_000)])
    fleet.drain(timeout=120)
    transfers = [event("transferred", "payer", 10 + i, transfer_id=f"t-{a}", to_account_id=a, amount=40)
                 for i, a in enumerate(accounts)]  # fmt: skip
    fleet.publish(transfers)
    fleet.drain(timeout=180)
    fleet.assert_running()

    placed = [e for e in issued + consumed if msgspec.json.decode(e)["account_id"] not in misplaced]
    expected, rejections = replay([*placed, event("issued", "payer", 3, batch_id="pb", budget_id="P",
                                                  amount=10_000), *transfers])  # fmt: skip
    got = by_account(fleet.export())
    assert got == expected, differences(got, expected)
    letters = asyncio.run(rows(fleet.dsn, "SELECT account_id, reason, source_partition FROM dead_letters"))
    wrong = [r for r in letters if r["reason"] == "wrong_partition"]
    assert sorted(r["account_id"] for r in wrong) == sorted([*misplaced, *misplaced])  # issued and consumed
    assert all(r["source_partition"] == zlib.crc32(r["account_id"].encode()) % n for r in wrong)
    assert not rejections
    # the misplaced accounts hold exactly their credits: nothing of the events that went elsewhere
    for a in misplaced:
        assert [(r["kind"], r["amount"]) for r in got[a]] == [("transfer_in", 40)]


def test_rows_postgresql_refuses_are_kept_aside_and_the_sink_goes_on(fleet: Fleet) -> None:
    """A record no allocator writes (a NUL in an id) on the allocations topic: kept, counted, passed."""
    fleet.start("sink", "sink")
    bootstrap, cat = fleet.settings.kafka_bootstrap, fleet.catalogue
    record = {"record_id": "r-1", "event_id": "e\x00", "kind": "issue", "account_id": "a", "batch_id": "b",
              "budget_id": "B", "amount": 5}  # fmt: skip
    headers = [("costtrace-step", b"1"), ("costtrace-source", b"x:0"), ("costtrace-received-ms", b"")]
    good = {**record, "record_id": "r-2", "event_id": "e2"}

    async def publish() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                cat.allocations, msgspec.json.encode(record), key=b"a", headers=headers
            )
            await producer.send_and_wait(cat.allocations, b"{not a record", key=b"a", headers=headers)
            await producer.send_and_wait(
                cat.allocations, msgspec.json.encode(good), key=b"a", headers=headers
            )
        finally:
            await producer.stop()

    asyncio.run(publish())
    stored = wait_for(
        "the good record",
        lambda: asyncio.run(rows(fleet.dsn, "SELECT record_id FROM records")),
        fleet,
    )
    assert [r["record_id"] for r in stored] == ["r-2"]
    rejects = asyncio.run(
        rows(fleet.dsn, 'SELECT destination, reason, value FROM sink_rejects ORDER BY "offset"')
    )
    assert [r["value"] for r in rejects] == [msgspec.json.encode(record), b"{not a record"]
    assert "CharacterNotInRepertoire" in rejects[0]["reason"] or "0x00" in rejects[0]["reason"]
    assert rejects[1]["reason"].startswith("unreadable")
    fleet.assert_running()
