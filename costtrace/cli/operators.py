"""Operators' commands: the workers, topics, schema, dead letters, ledger, switch, migration, archive."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from costtrace.cli.main import _kafka, _settings, down, main


@main.group()
def topics() -> None:
    """The topic catalogue (costtrace/contract/topics.py) and its state on the broker."""


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def topics_list(as_json: bool) -> None:
    """Each topic, its partitions, key, and the event types producers publish to it."""
    import dataclasses
    import json

    from costtrace.fleet.settings import fleet_catalogue

    cat = fleet_catalogue(_settings())
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(t) for t in cat.topics], indent=2, default=dict))
        return
    click.echo(f"{'topic':34s}{'parts':>6s}  {'key':14s}{'role':10s}events / contents")
    for t in cat.topics:
        what = ", ".join(t.event_types) if t.event_types else t.description
        click.echo(f"{t.name:34s}{t.partitions:6d}  {t.key:14s}{t.role:10s}{what}")


@topics.command("create")
def topics_create() -> None:
    """Create missing topics (idempotent), then check them all."""
    import asyncio

    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.topics import create

    settings = _settings()
    created = asyncio.run(
        create(settings.kafka_bootstrap, fleet_catalogue(settings), settings.replication, **_kafka(settings))
    )
    click.echo(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))


@topics.command("check")
def topics_check() -> None:
    """Exit non-zero if a topic is missing or co-partitioned topics disagree."""
    import asyncio

    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.topics import check

    settings = _settings()
    try:
        asyncio.run(check(settings.kafka_bootstrap, fleet_catalogue(settings), **_kafka(settings)))
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("topics ok")


@main.group()
def db() -> None:
    """The PostgreSQL schema."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply the schema migrations (Alembic), idempotently."""
    from costtrace.storage.db import migrate

    migrate(_settings().postgres_dsn.get_secret_value())
    click.echo("schema up to date")


@main.command()
@click.option(
    "--role",
    type=click.Choice(["allocator", "sink", "compensator"]),
    required=True,
    help="allocator: events to records (RocksDB state); sink: records to PostgreSQL; "
    "compensator: dead letters retried or parked.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="RocksDB folder of this allocator process (one per process).",
)
@click.option("--loglevel", default=None, help="log level (default: COSTTRACE_LOG_LEVEL).")
def worker(role: str, state_dir: str | None, loglevel: str | None) -> None:
    """Run one fleet worker process. Scale by running more; each takes a share of the partitions.

    Partitions are shared out by Kafka's group protocol: with P partitions
    (COSTTRACE_PARTITIONS) and N processes of a role, each takes about P/N.
    """
    import asyncio
    from pathlib import Path

    from costtrace.fleet.app import allocator_app
    from costtrace.fleet.codecs import MissingCodecs, require_codecs
    from costtrace.fleet.internals import run_worker
    from costtrace.fleet.lifecycle import mark_clean_exit, prepare_state_dir
    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.topics import check

    settings = _settings(state_dir=Path(state_dir) if state_dir else None)
    try:
        require_codecs()
        asyncio.run(check(settings.kafka_bootstrap, fleet_catalogue(settings), **_kafka(settings)))
    except (LookupError, ValueError, MissingCodecs) as exc:
        raise click.ClickException(f"refusing to start: {exc}") from exc
    if role == "sink":  # a plain Kafka consumer, no faust (costtrace/fleet/sink.py)
        from costtrace.fleet import sink

        sys.exit(sink.main(settings, loglevel or settings.log_level))
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # faust's data dir
    if role == "allocator":
        prepare_state_dir(settings.state_dir)
        app = allocator_app(settings)
    else:
        from costtrace.fleet.compensator import compensator_app

        app = compensator_app(settings)
    code = 1
    try:
        run_worker(app, loglevel or settings.log_level)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if role == "allocator" and code == 0:
            mark_clean_exit(settings.state_dir)
    sys.exit(code)


@main.group()
def dlq() -> None:
    """Parked dead letters: list, show, replay, discard (filters: reason, account, age)."""


def _letters(changes: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """ORIGINS and the filters of a dlq command, handed to it as one `letters` selection.

    A command that changes letters (`changes`) refuses to act on every letter at once.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def with_selection(
            origins: tuple[str, ...], reason: str | None, account: str | None, older: str | None,
            newer: str | None, status: str, **rest: Any,
        ) -> None:  # fmt: skip
            if changes and not (origins or reason or account or older or newer):
                raise click.UsageError("name the letters: ORIGINS, or at least one filter")
            from costtrace.ops.dlq import Filter, parse_age

            ages: dict[str, Any] = {}
            for hint, age in (("--older-than", older), ("--newer-than", newer)):
                try:
                    ages[hint] = parse_age(age) if age else None
                except ValueError as exc:
                    raise click.BadParameter(str(exc), param_hint=hint) from exc
            older_than, newer_than = ages["--older-than"], ages["--newer-than"]
            selected = Filter(
                origins, reason, account, older_than, newer_than, None if status == "any" else status
            )
            command(letters=selected, **rest)

        options = [
            click.argument("origins", nargs=-1),
            click.option("--reason", help="only this rejection reason"),
            click.option("--account", help="only this account_id"),
            click.option("--older-than", "older", metavar="AGE", help="parked before AGE ago (90s, 2h, 7d)"),
            click.option("--newer-than", "newer", metavar="AGE", help="parked within AGE"),
            click.option(
                "--status", default="parked", show_default=True,
                type=click.Choice(["parked", "replayed", "discarded", "any"]),
            ),
        ]  # fmt: skip
        for option in reversed(options):
            with_selection = option(with_selection)
        return with_selection

    return decorate


@dlq.command("list")
@_letters(changes=False)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def dlq_list(letters: Any, as_json: bool) -> None:
    """Parked letters, oldest first; ORIGINS (topic:partition@offset) narrow it down."""
    import asyncio
    import json

    from costtrace.ops.dlq import parked

    rows = asyncio.run(parked(_settings().postgres_dsn.get_secret_value(), letters))
    for r in rows:
        if as_json:
            click.echo(
                json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()})
            )
        else:
            click.echo(
                f"{r['origin']}  {r['status']:<9} {r['reason']:<20} account={r['account_id']} "
                f"event={r['event_id']} attempts={r['attempts']} parked={r['parked_at']:%Y-%m-%d %H:%M:%S}"
            )
    click.echo(f"{len(rows)} letter(s)", err=True)


@dlq.command("show")
@click.argument("origin")
@click.option(
    "--payload",
    "payload_to",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="write the message's original value, byte for byte, to this file ('-': standard output)",
)
def dlq_show(origin: str, payload_to: str | None) -> None:
    """One parked letter: key and payload (exact bytes with --payload), and the history of its attempts."""
    import asyncio
    import hashlib

    from costtrace.ops.dlq import read_original, show

    settings = _settings()
    letter, history, trail = asyncio.run(show(settings.postgres_dsn.get_secret_value(), origin))
    if letter is None:
        raise click.ClickException(f"no parked letter {origin!r}")
    payload = letter["payload"]
    if payload is None:  # too long to travel in its letter: still in its input topic
        payload = asyncio.run(read_original(settings.kafka_bootstrap, origin, **_kafka(settings)))
    payload = bytes(payload)
    if payload_to is not None:
        with click.open_file(payload_to, "wb") as out:
            out.write(payload)
        if payload_to == "-":
            return
    for key, value in letter.items():
        if key == "payload":
            digest = hashlib.sha256(payload).hexdigest()
            more = " ..." if len(payload) > 200 else ""
            value = f"{len(payload):,} bytes, sha256 {digest}: {payload[:200]!r}{more}"
        click.echo(f"{key:>16}: {value}")
    click.echo("history:")
    for h in history:
        click.echo(
            f"  attempt {h['attempt']}: {h['reason']} at {h['source_topic']}:{h['source_partition']}"
            f"@{h['source_offset']} ({h['dead_lettered_at']:%Y-%m-%d %H:%M:%S}) {h['detail'] or ''}"
        )
    click.echo("what was done with it (letter_history, appended only):")
    for t in trail:
        what = {
            "parked": f"parked: {t['reason']}, {t['why']} after {t['attempts']} attempt(s)",
            "replayed": f"replayed by {t['by']}",
            "discarded": f"discarded by {t['by']}: {t['note']}",
        }.get(t["action"], t["action"])
        click.echo(f"  {t['at']:%Y-%m-%d %H:%M:%S} {what}")


@dlq.command("replay")
@_letters(changes=True)
@click.option("--again", is_flag=True, help="also send letters already replayed (the model applies once)")
@click.option(
    "--discarded",
    is_flag=True,
    help="also send letters an operator discarded (their discard stays in the history)",
)
def dlq_replay(letters: Any, again: bool, discarded: bool) -> None:
    """Send the selected parked letters back to their topics, and mark them replayed.

    --again and --discarded widen the selection beyond --status.
    """
    import asyncio

    from costtrace.ops.dlq import replay

    settings = _settings()
    dsn = settings.postgres_dsn.get_secret_value()
    done = asyncio.run(replay(dsn, settings.kafka_bootstrap, letters, again, discarded, **_kafka(settings)))
    said = f"replayed {done.sent} letter(s)"
    if done.not_parked:
        said += f"; {done.not_parked} not parked, left alone"
    if done.discarded:
        said += f"; {done.discarded} discarded, left alone (--discarded sends them)"
    click.echo(said)


@dlq.command("discard")
@_letters(changes=True)
@click.option("--note", required=True, help="why (kept with the letter)")
def dlq_discard(letters: Any, note: str) -> None:
    """Mark the selected parked letters discarded; they stay in PostgreSQL with the note."""
    import asyncio

    from costtrace.ops.dlq import discard

    n = asyncio.run(discard(_settings().postgres_dsn.get_secret_value(), letters, note))
    click.echo(f"discarded {n} letter(s)")


@main.group()
def ledger() -> None:
    """The accounting service's balances, which the reconciler compares traced balances with."""


@ledger.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--replace", is_flag=True,
    help="FILE is the whole ledger: accounts not in it are removed (default: they keep their balances)",
)  # fmt: skip
def ledger_load(file: str, replace: bool) -> None:
    """Load balances from CSV (account_id,balance[,as_of]) or JSON; integers only.

    Each account in FILE gets its balance from FILE. By default the ledger's
    other accounts keep theirs; with --replace they are removed. One
    transaction either way.
    """
    import asyncio
    from pathlib import Path

    from costtrace.ops.reconcile import load_ledger, parse_ledger

    try:
        rows = parse_ledger(file, Path(file).read_text())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    n, other = asyncio.run(load_ledger(_settings().postgres_dsn.get_secret_value(), rows, replace))
    if replace:
        click.echo(f"replaced the ledger: {n:,} balance(s) loaded, {other:,} other account(s) removed")
    else:
        kept = (
            f"; {other:,} other account(s) keep their earlier balances (--replace removes them)"
            if other
            else ""
        )
        click.echo(f"loaded {n:,} ledger balance(s){kept}")


@main.command()
@click.option("--wait", is_flag=True, help="wait for a running reconciler instead of skipping")
@click.option(
    "--every", type=float, default=None, help="run every SECONDS, serving metrics (the scheduled job)"
)
@click.option("--debt-age", default="30d", show_default=True, help="debt older than this is reported")
@click.option(
    "--lock-ttl", type=float, default=30.0, show_default=True, help="lock expiry, renewed while running"
)
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="findings shown per kind (all are stored)")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="the run as JSON, for tools")
def reconcile(
    wait: bool, every: float | None, debt_age: str, lock_ttl: float, limit: int, as_json: bool
) -> None:
    """Check the contract's invariants, and traced balances against the ledger; store the run's findings.

    Prints each kind of finding with up to --limit of them (a balance mismatch
    as its account, traced and ledger amounts), whether a ledger was compared
    at all, and the parked letters it re-drove to Kafka. Exit 0: no finding
    but old debt; 1: findings; 3: skipped (another reconciler, or no Redis).
    """
    import asyncio

    from costtrace.ops.dlq import parse_age
    from costtrace.ops.reconcile import LockLost, reconcile_with, run_on_schedule

    try:
        age = parse_age(debt_age)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--debt-age") from exc
    settings = _settings()
    if every is not None:
        asyncio.run(run_on_schedule(settings, every, wait, age, lock_ttl))
        return
    try:
        result = asyncio.run(reconcile_with(settings, wait=wait, lock_ttl=lock_ttl, debt_age=age))
    except LockLost as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        import json

        click.echo(json.dumps(result.as_json(limit), indent=2))
    else:
        for line in result.describe(limit):
            click.echo(line)
    if result.status == "skipped":
        sys.exit(3)
    sys.exit(0 if result.status == "ok" else 1)


@main.group()
def switch() -> None:
    """The fleet-wide tracing switch in Redis, which running allocators follow without restart."""


def _switch_store() -> tuple[Any, str]:
    """Where the fleet's switch is: a Redis client, and the key under the fleet's topic prefix."""
    import redis

    from costtrace.fleet.switch import switch_key

    settings = _settings()
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    return client, switch_key(settings.topic_prefix)


@contextlib.contextmanager
def _redis_or_say(what: str) -> Iterator[None]:
    """Redis unreachable: one line saying what was not done, exit 1; no traceback."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        raise click.ClickException(f"{down('Redis', exc)}: {what}") from exc


@switch.command("on")
@click.option("--node", metavar="T", help="the historical node: events at or before T are skipped (RFC 3339)")
@click.option(
    "--no-node", is_flag=True, help="drop the historical node: trace every event, whenever it occurred"
)
def switch_on(node: str | None, no_node: bool) -> None:
    """Trace every event after the historical node: the one given, or the one set now (kept as it is)."""
    from costtrace.fleet.switch import Switch, decode_switch, encode_switch

    if node is not None and no_node:
        raise click.UsageError("give --node T or --no-node, not both")
    client, key = _switch_store()
    kept = ""
    if node is None and not no_node:  # keep the node set now, and say so
        with _redis_or_say("the switch could not be read, and was not changed"):
            raw = client.get(key)
        node = None if raw is None else decode_switch(raw).node
        kept = " (kept; --node T sets another, --no-node drops it)" if node else " (none was set)"
    try:
        sw = Switch.of(True, node)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--node") from exc
    with _redis_or_say("the switch was not changed; allocators keep the last switch they read"):
        client.set(key, encode_switch(sw))
    click.echo(f"tracing {sw.describe()}{kept}")


@switch.command("off")
def switch_off() -> None:
    """Hold every event but `opened` (opening balances) until switched on; the node is kept for `on`."""
    from costtrace.fleet.switch import Switch, decode_switch, encode_switch

    client, key = _switch_store()
    with _redis_or_say("the switch was not changed; allocators keep the last switch they read"):
        raw = client.get(key)
        sw = Switch.of(False, None if raw is None else decode_switch(raw).node)
        client.set(key, encode_switch(sw))
    click.echo(f"tracing {sw.describe()}")


@switch.command("status")
def switch_status() -> None:
    """What the switch says now (allocators pick it up within COSTTRACE_SWITCH_POLL seconds)."""
    from costtrace.fleet.switch import Switch, decode_switch

    client, key = _switch_store()
    with _redis_or_say("the switch could not be read; allocators keep the last switch they read"):
        raw = client.get(key)
    sw = Switch() if raw is None else decode_switch(raw)
    click.echo(f"tracing {sw.describe()}" + (" (not set)" if raw is None else ""))


@main.command("migrate")
@click.option("--as-of", "as_of", required=True, metavar="T", help="the historical node (RFC 3339 instant)")
@click.option(
    "--balances", required=True, type=click.Path(exists=True, dir_okay=False),
    help="account balances at T: CSV (account_id,balance) or JSON, integers",
)  # fmt: skip
@click.option("--budget", default="LEGACY", show_default=True, help="budget of the opening batches")
@click.option(
    "--rate", type=float, default=None, help="events per second at most (default: as fast as possible)"
)
def migrate_cmd(as_of: str, balances: str, budget: str, rate: float | None) -> None:
    """Publish one `opened` event per account from the balances at T; re-running or resuming adds nothing."""
    import asyncio
    from pathlib import Path

    from tqdm import tqdm

    from costtrace.ops.migrate import canonical_instant, conflicting_openings, migrate, opening_events
    from costtrace.ops.reconcile import parse_ledger

    try:
        node = canonical_instant(as_of)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--as-of") from exc
    try:
        rows = parse_ledger(balances, Path(balances).read_text())
        plain = [(account, amount) for account, amount, _ in rows]
        events = opening_events(node, plain, budget)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = _settings()
    conflicts = asyncio.run(conflicting_openings(settings.postgres_dsn.get_secret_value(), node, plain))
    if conflicts:
        shown = ", ".join(f"{a}: {traced:,} traced, {new:,} in the file" for a, traced, new in conflicts[:10])
        raise click.ClickException(
            f"{len(conflicts):,} account(s) already have an opening at {node} with another balance ({shown}"
            f"{', ...' if len(conflicts) > 10 else ''}). The node's balances are fixed once traced: correct "
            "a difference with an ordinary event after the node (issued for more, consumed for less). "
            "Nothing was published."
        )
    zero = [account for account, amount in plain if amount == 0]
    if zero:
        listed = ", ".join(zero[:10]) + (", ..." if len(zero) > 10 else "")
        click.echo(f"{len(zero):,} account(s) with balance 0 at {node} get no opening: {listed}")
    topic = f"{settings.topic_prefix}.opened"
    with (
        _redis_or_say("the migration stopped; run it again when Redis is back: it resumes at its checkpoint"),
        tqdm(total=len(events), unit="account", disable=None) as bar,
    ):
        redis_url = settings.redis_url.get_secret_value()
        start, sent = asyncio.run(
            migrate(
                settings.kafka_bootstrap,
                topic,
                redis_url,
                node,
                events,
                rate,
                bar.update,
                settings.topic_prefix,
                **_kafka(settings),
            )
        )
    resumed = f"resumed after {start:,}; " if start else ""
    click.echo(f"{resumed}published {sent:,} opening balance(s) at {node} to {topic}; {len(events):,} in all")


@main.command()
@click.option("--to-prefix", required=True, help="topic prefix of the new generation")
@click.option(
    "--to-app-id", required=True, help="allocator app id (consumer group, changelog) of the new generation"
)
@click.option(
    "--partitions", type=click.IntRange(min=1), required=True, help="partition count of the new generation"
)
def repartition(to_prefix: str, to_app_id: str, partitions: int) -> None:
    """Create a new generation of topics with another partition count, and carry the allocators' state over.

    Run it with the old generation's settings, after pausing producers and
    draining the old fleet (docs/operations.md, "Adding partitions").
    """
    import asyncio

    from costtrace.contract.topics import catalogue
    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.repartition import copy_state
    from costtrace.ops.topics import create

    settings = _settings()
    if to_prefix == settings.topic_prefix or to_app_id == settings.app_id:
        raise click.UsageError("the new generation needs its own prefix and app id")
    new = catalogue(to_prefix, partitions, to_app_id, len(settings.retry_delays))
    created = asyncio.run(create(settings.kafka_bootstrap, new, settings.replication, **_kafka(settings)))
    click.echo(f"{len(created)} topic(s) created for {to_prefix} with {partitions} partitions")
    old, changelog = fleet_catalogue(settings).state_changelog, new.state_changelog
    copied = asyncio.run(copy_state(settings.kafka_bootstrap, old, changelog, partitions, **_kafka(settings)))
    click.echo(f"carried {copied:,} state record(s) over to {changelog}")


@main.command("archive")
@click.option(
    "--before", metavar="DATE",
    help="archive orders placed before DATE (ISO 8601): their consumed event's time in the log",
)  # fmt: skip
@click.option(
    "--refund-window", metavar="AGE",
    help="or: orders placed more than AGE ago (e.g. 90d), for scheduled runs",
)  # fmt: skip
@click.option(
    "--chunk", type=click.IntRange(min=1), default=1000, show_default=True, help="orders per checked chunk"
)
def archive_cmd(before: str | None, refund_window: str | None, chunk: int) -> None:
    """Move settled orders past their refund window to the archive tables, and out of the accounts' state."""
    import asyncio
    from datetime import UTC, datetime

    from tqdm import tqdm

    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.archive import ArchiveMismatch, archive
    from costtrace.ops.dlq import parse_age

    if (before is None) == (refund_window is None):
        raise click.UsageError("give one of --before DATE and --refund-window AGE")
    try:
        when = (
            datetime.fromisoformat(before) if before else datetime.now(UTC) - parse_age(refund_window or "")
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--before/--refund-window") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    settings = _settings()
    topic = fleet_catalogue(settings).archive
    with tqdm(unit="order", disable=None) as bar:
        try:
            dsn = settings.postgres_dsn.get_secret_value()
            orders, moved, told = asyncio.run(
                archive(dsn, settings.kafka_bootstrap, topic, when, chunk, bar.update, **_kafka(settings))
            )
        except ArchiveMismatch as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"archived {orders:,} order(s), {moved:,} record(s); told {told:,} account(s)' state")
