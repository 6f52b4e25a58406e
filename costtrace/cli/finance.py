"""Finance's commands: replay (a file or the topics), the audit of PostgreSQL, the records out."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import BinaryIO

import click

from costtrace.cli.main import _exit_without_freeing, _kafka, _open_in, _open_out, _settings, main


@main.command()
@click.argument("events", type=click.Path(exists=True, allow_dash=True, dir_okay=False), required=False)
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
        records = asyncio.run(
            read_inputs(settings.kafka_bootstrap, cat, settings.partitions, **_kafka(settings))
        )
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
                settings.partitions, _node(node), **_kafka(settings),
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
