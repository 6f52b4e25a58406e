"""The `costtrace` command line: thin entry points that parse, call, and print."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, BinaryIO

import click


def down(service: str, exc: BaseException) -> str:
    """One line: which service did not answer, and the first line of what its client said."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{service} unavailable ({type(exc).__name__}: {first})"


def unavailable(exc: BaseException) -> str | None:
    """What an operator needs of an error that is no bug: a service down, a bad setting, no schema.

    One line, naming the service or the setting; None for anything else (a
    bug keeps its traceback).
    """
    first = (str(exc).strip().splitlines() or [""])[0]
    name = type(exc).__name__
    module = type(exc).__module__
    if name == "ValidationError" and module.startswith("pydantic"):
        wrong = "; ".join(
            f"COSTTRACE_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
        return f"invalid setting: {wrong}"
    if module.startswith("aiokafka"):
        return down("Kafka", exc)
    if module.startswith("redis"):
        return down("Redis", exc)
    if name in ("UndefinedTableError", "UndefinedFunctionError") and module.startswith("asyncpg"):
        return f"PostgreSQL has no costtrace schema here ({first}): run `costtrace db migrate`"
    if module.startswith(("asyncpg", "psycopg", "sqlalchemy")) and (
        "connect" in name.lower() or name in ("OperationalError", "InvalidCatalogNameError")
    ):
        return down("PostgreSQL", exc)
    local = FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError
    if isinstance(exc, OSError) and not isinstance(exc, local):
        return f"a service is unreachable ({name}: {first})"
    return None


class _Main(click.Group):
    """Operator commands: a service down or a bad setting gives one line and exit 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, click.ClickException | click.exceptions.Exit | click.exceptions.Abort):
                raise
            message = unavailable(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


@click.group(cls=_Main)
@click.pass_context
def main(ctx: click.Context) -> None:
    """costtrace: trace every coin spent back to the budgets that paid for it."""
    if ctx.invoked_subcommand not in ("worker", "demo"):
        # aiokafka logs each failed connection too; the command's one line says it (a worker keeps them)
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _open_in(stack: ExitStack, path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return stack.enter_context(open(path, "rb"))


def _open_out(stack: ExitStack, path: str) -> BinaryIO:
    if path == "-":
        return sys.stdout.buffer
    return stack.enter_context(open(path, "wb", buffering=1 << 20))


@main.command()
@click.argument("events", type=click.Path(allow_dash=True, dir_okay=False), required=False)
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    type=click.Path(allow_dash=True, dir_okay=False),
    help="Where to write the records, one JSON object per line.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: when stderr is a terminal and EVENTS is a file).",
)
@click.option(
    "--from-topics",
    is_flag=True,
    help="Replay the fleet's retained input topics (COSTTRACE_* settings) in the fleet's log order "
    "instead of a file: the records the fleet must have written.",
)
@click.option(
    "--node",
    metavar="T",
    help="With --from-topics: the fleet's historical node (`switch on --node T`): events at or before "
    "T are skipped, as the fleet skips them.",
)
def replay(
    events: str | None, output: str, progress: bool | None, from_topics: bool, node: str | None
) -> None:
    """Apply an event log (JSON lines) in order and write every allocation record.

    Use '-' for standard input or output. A summary goes to standard error.
    With --from-topics, the log is the fleet's input topics, merged in the
    fleet's log order (docs/semantics.md, "Log order").
    """
    if from_topics:
        if events is not None:
            raise click.UsageError("give EVENTS or --from-topics, not both")
        _replay_topics(output, _node(node))
        return
    if node is not None:
        raise click.UsageError("--node goes with --from-topics")
    if events is None:
        raise click.UsageError("missing EVENTS (a file, or '-' for standard input), or --from-topics")
    from costtrace.model.replay import replay as run_replay
    from costtrace.model.state import MemoryStore

    with ExitStack() as stack:
        src = _open_in(stack, events)
        dst = _open_out(stack, output)
        if progress is None:
            progress = events != "-" and sys.stderr.isatty()
        lines: Iterator[bytes] | BinaryIO = src
        on_line = None
        if progress and events != "-":
            from tqdm import tqdm

            bar = stack.enter_context(
                tqdm(total=os.path.getsize(events), unit="B", unit_scale=True, file=sys.stderr, desc="replay")
            )
            on_line = bar.update
        started = time.perf_counter()
        store = MemoryStore()  # held to the end: see _exit_without_freeing
        summary = run_replay(lines, dst, store, on_line=on_line)
        dst.flush()
        elapsed = time.perf_counter() - started
    for line in summary.lines():
        click.echo(line, err=True)
    rate = summary.events / elapsed if elapsed > 0 else 0.0
    click.echo(f"elapsed: {elapsed:.2f} s ({rate:,.0f} events/s)", err=True)
    _exit_without_freeing()


def _node(node: str | None) -> str | None:
    """A node as the switch keeps it (any RFC 3339 spelling of the instant), or a usage error."""
    if node is None:
        return None
    from costtrace.ops.migrate import canonical_instant

    try:
        return canonical_instant(node)
    except ValueError as exc:
        raise click.BadParameter(f"not an RFC 3339 instant: {node!r}", param_hint="--node") from exc


def _replay_topics(output: str, node: str | None) -> None:
    import asyncio

    import msgspec

    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.audit import TruncatedLog, read_inputs, rejection_in, replay_records

    settings = _settings()
    cat = fleet_catalogue(settings)
    try:
        records = asyncio.run(read_inputs(settings.kafka_bootstrap, cat, settings.partitions))
    except TruncatedLog as exc:
        raise click.ClickException(f"cannot replay the topics: {exc}") from exc
    counts: dict[str, int] = {}
    with ExitStack() as stack:
        dst = _open_out(stack, output)
        for topic, value in replay_records(cat, settings.partitions, records, node):
            if topic == cat.allocations:
                dst.write(value + b"\n")
                counts["records"] = counts.get("records", 0) + 1
            elif topic == cat.dead_letters and (letter := rejection_in(value)) is not None:
                rejection = {k: getattr(letter, k) for k in ("event_id", "kind", "account_id", "reason")}
                dst.write(msgspec.json.encode(rejection) + b"\n")
                counts["rejections"] = counts.get("rejections", 0) + 1
        dst.flush()
    click.echo(f"events: {len(records)}", err=True)
    for name, n in counts.items():
        click.echo(f"{name}: {n}", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="every finding as JSON, for tools")
@click.option("--limit", default=10, show_default=True, help="accounts shown in the summary")
@click.option(
    "--node",
    metavar="T",
    help="The fleet's historical node (`switch on --node T`): events at or before T are skipped, as "
    "the fleet skips them.",
)
def audit(as_json: bool, limit: int, node: str | None) -> None:
    """Compare PostgreSQL with replay of the topics, account by account; exit 1 on any difference.

    Replays the fleet's retained input topics in its log order and checks
    that PostgreSQL holds exactly those records (hot and archived) and
    rejections. Needs input topics still whole (retention has deleted none).
    A fleet switched on at a historical node is audited with --node T.
    """
    import asyncio
    import dataclasses
    import json

    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.audit import TruncatedLog
    from costtrace.ops.audit import audit as run_audit

    settings = _settings()
    try:
        result = asyncio.run(
            run_audit(
                settings.kafka_bootstrap, settings.postgres_dsn.get_secret_value(), fleet_catalogue(settings),
                settings.partitions, _node(node),
            )
        )  # fmt: skip
    except TruncatedLog as exc:
        raise click.ClickException(f"cannot audit: {exc}") from exc
    if as_json:
        click.echo(json.dumps({"ok": result.ok, **dataclasses.asdict(result)}, default=str))
    else:
        for line in result.summary(limit):
            click.echo(line)
    sys.exit(0 if result.ok else 1)


def _exit_without_freeing() -> None:
    """End the process now that everything is written, leaving the replay's state to the OS.

    Freeing the state (millions of small strings and maps, in the native
    model) one by one takes about 2% of a replay's instructions (it was a
    twelfth when the state was Python objects; mypy ends the same way, for
    the same reason). Only for a command's last step: nothing after it runs,
    atexit handlers included.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@click.option("-n", "--events", "n_events", default=200_000, show_default=True)
@click.option("--accounts", default=20_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option(
    "-o", "--output", default="-", show_default=True, type=click.Path(allow_dash=True, dir_okay=False)
)
def sample(n_events: int, accounts: int, seed: int, output: str) -> None:
    """Write a generated, realistic event log (deterministic for a seed)."""
    from costtrace.ops.sample import encode_event, generate_events

    with ExitStack() as stack:
        dst = _open_out(stack, output)
        for ev in generate_events(n_events, accounts, seed):
            dst.write(encode_event(ev) + b"\n")


@main.command()
@click.option(
    "-n", "--events", "n_events", default=50_000, show_default=True, help="Events in the simulated day."
)
@click.option("--accounts", default=5_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--allocators", default=2, show_default=True, help="Allocator processes in the fleet.")
@click.option("--offline", is_flag=True, help="Replay the simulated day instead of running the fleet.")
@click.option("--workdir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
def demo(n_events: int, accounts: int, seed: int, allocators: int, offline: bool, workdir: str) -> None:
    """The main job: a simulated day of traffic through the fleet, and finance's report.

    Starts the local stack (deploy/stack up), creates the topics and the
    schema, runs the allocators and a sink, publishes the day (each record
    stamped with its event's time, as an outbox relay does), waits until
    every record is in PostgreSQL, and reports per budget from there, beside
    the offline replay of the same day in the fleet's log order; they must
    match (exit 1 if not). --offline replays the same day without the fleet.
    """
    from pathlib import Path

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    if not offline:
        from dev.demo import run

        run(n_events, accounts, seed, allocators, root, click.echo)
        return

    from costtrace.contract.records import decode_record
    from costtrace.model.order import fleet_order
    from costtrace.model.replay import replay as run_replay
    from costtrace.model.report import report
    from costtrace.ops.sample import write_log

    events, records = root / "events.jsonl", root / "records.jsonl"
    click.echo(f"generating {n_events:,} events over {accounts:,} accounts -> {events}")
    write_log(str(events), n_events, accounts, seed)
    partitions = _settings().partitions
    click.echo(f"replaying them in the order the fleet applies them once published ({partitions} partitions)")
    started = time.perf_counter()
    with events.open("rb") as src, records.open("wb") as dst:
        summary = run_replay(fleet_order(src.read().splitlines(), partitions), dst)
    elapsed = time.perf_counter() - started
    click.echo(f"replayed into {records} in {elapsed:.1f} s ({summary.events / elapsed:,.0f} events/s)")
    for line in summary.lines():
        click.echo(f"  {line}")
    with records.open("rb") as f:
        rep = report(decode_record(line) for line in f)
    click.echo("")
    for line in rep.lines():
        click.echo(line)


# -- the fleet --------------------------------------------------------------------


def _settings(**overrides: Any) -> Any:
    from costtrace.fleet.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


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
    created = asyncio.run(create(settings.kafka_bootstrap, fleet_catalogue(settings), settings.replication))
    click.echo(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))


@topics.command("check")
def topics_check() -> None:
    """Exit non-zero if a topic is missing or co-partitioned topics disagree."""
    import asyncio

    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.topics import check

    settings = _settings()
    try:
        asyncio.run(check(settings.kafka_bootstrap, fleet_catalogue(settings)))
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
        asyncio.run(check(settings.kafka_bootstrap, fleet_catalogue(settings)))
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


@main.command()
@click.option("-n", "--events", "n_events", default=200_000, show_default=True)
@click.option("--accounts", default=20_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Publish this event log instead of generating one.",
)
def simulate(n_events: int, accounts: int, seed: int, rate: float | None, from_file: str | None) -> None:
    """Publish realistic traffic to the input topics, as producers would."""
    import asyncio

    from costtrace.fleet.publish import publish
    from costtrace.fleet.settings import fleet_catalogue
    from costtrace.ops.sample import encode_event, generate_events

    settings = _settings()
    if from_file:
        with open(from_file, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f if line.strip()]
    else:
        lines = [encode_event(e) for e in generate_events(n_events, accounts, seed)]
    started = time.perf_counter()
    sent = asyncio.run(publish(settings.kafka_bootstrap, fleet_catalogue(settings), lines, rate))
    elapsed = time.perf_counter() - started
    click.echo(f"published {sent:,} events in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f}/s)")


@main.command()
@click.option(
    "-o", "--output", default="-", show_default=True, type=click.Path(allow_dash=True, dir_okay=False)
)
def export(output: str) -> None:
    """Write the records persisted in PostgreSQL, each account's in replay's order."""
    import asyncio

    import msgspec

    from costtrace.contract.records import Record
    from costtrace.storage.db import iter_records

    dsn = _settings().postgres_dsn.get_secret_value()
    encoder = msgspec.json.Encoder()

    async def run(dst: BinaryIO) -> int:
        n = 0
        async for row in iter_records(dsn):
            dst.write(encoder.encode(Record(*row)) + b"\n")
            n += 1
        return n

    if output == "-":
        n = asyncio.run(run(sys.stdout.buffer))
    else:  # written whole or not at all: a file is in place only once every record is in it
        partial = f"{output}.partial"
        try:
            with open(partial, "wb") as dst:
                n = asyncio.run(run(dst))
            os.replace(partial, output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
    click.echo(f"exported {n:,} records", err=True)


@main.group()
def schemas() -> None:
    """The machine-readable event and record schemas under costtrace/contract/v1."""


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate costtrace/contract/v1/*.schema.json from the Python types."""
    from costtrace.contract.jsonschema import write_all

    for path in write_all():
        click.echo(path)


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

            try:
                older_than = parse_age(older) if older else None
                newer_than = parse_age(newer) if newer else None
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from exc
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
        payload = asyncio.run(read_original(settings.kafka_bootstrap, origin))
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
    done = asyncio.run(replay(dsn, settings.kafka_bootstrap, letters, again, discarded))
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
        rows = parse_ledger(balances, Path(balances).read_text())
        plain = [(account, amount) for account, amount, _ in rows]
        events = opening_events(node, plain, budget)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    negative = sum(1 for _, amount, _ in rows if amount < 0)
    if negative:
        raise click.ClickException(
            f"{negative} account(s) have a negative balance at T: an opening balance cannot carry debt"
        )
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
    from costtrace.ops.repartition import copy_state
    from costtrace.ops.topics import create

    settings = _settings()
    if to_prefix == settings.topic_prefix or to_app_id == settings.app_id:
        raise click.UsageError("the new generation needs its own prefix and app id")
    new = catalogue(to_prefix, partitions, to_app_id, len(settings.retry_delays))
    created = asyncio.run(create(settings.kafka_bootstrap, new, settings.replication))
    click.echo(f"{len(created)} topic(s) created for {to_prefix} with {partitions} partitions")
    old, changelog = f"{settings.app_id}-state-changelog", f"{to_app_id}-state-changelog"
    copied = asyncio.run(copy_state(settings.kafka_bootstrap, old, changelog, partitions))
    click.echo(f"carried {copied:,} state record(s) over to {to_app_id}-state-changelog")


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
                archive(dsn, settings.kafka_bootstrap, topic, when, chunk, bar.update)
            )
        except ArchiveMismatch as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"archived {orders:,} order(s), {moved:,} record(s); told {told:,} account(s)' state")


if __name__ == "__main__":  # pragma: no cover
    main()
