"""Finance's commands: replay, the audit, the records out, the statement, cost traces, the read API."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from datetime import date
from typing import Any, BinaryIO

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


# -- what finance reads: the statement, the cost traces, the read API ------------------------------


def _day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=f"'{name}'") from None


def _ask(work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run one question against PostgreSQL (COSTTRACE_POSTGRES_DSN); an unknown name is a one-line error."""
    import asyncio

    import asyncpg

    from costtrace.finance.queries import NotFound

    async def run() -> Any:
        conn = await asyncpg.connect(_settings().postgres_dsn.get_secret_value(), timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except NotFound as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc


def _write(text: str, output: str) -> None:
    """To standard output, or to a file written whole or not at all."""
    if output == "-":
        click.echo(text, nl=False)
        return
    partial = f"{output}.partial"
    try:
        with open(partial, "w", encoding="utf-8", newline="") as dst:
            dst.write(text)
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


_FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
                       show_default=True)  # fmt: skip
_OUTPUT = click.option("-o", "--output", default="-", show_default=True,
                       type=click.Path(allow_dash=True, dir_okay=False), help="file to write")  # fmt: skip


@main.command()
@click.option("--from", "start", required=True, metavar="YYYY-MM-DD", help="first posting day (UTC)")
@click.option("--to", "end", required=True, metavar="YYYY-MM-DD", help="day after the last (excluded)")
@click.option("--by", type=click.Choice(["budget", "budget,merchant"]), default="budget", show_default=True)
@_FORMAT
@_OUTPUT
def statement(start: str, end: str, by: str, fmt: str, output: str) -> None:
    """The settlement statement of a period: per budget, what was issued, spent, refunded, moved, left.

    Records belong to the UTC day the sink posted them (docs/finance.md):
    a closed period never changes, and late events show in the period they
    arrived in, as adjustments. The SUSPENSE line is debt no budget has paid.
    """
    from costtrace.finance import formats, queries
    from costtrace.finance.statement import Period

    try:
        period = Period(_day(start, "--from"), _day(end, "--to")).check()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--to'") from None
    result = _ask(lambda conn: queries.statement(conn, period, by_merchant=by == "budget,merchant"))
    if fmt == "json":
        _write(formats.to_json(result.as_dict()), output)
    elif fmt == "csv":
        _write(formats.statement_csv(result), output)
    else:
        _write(formats.statement_table(result), output)


def _emit(
    fmt: str,
    output: str,
    whole: dict[str, Any],
    rows: list[dict[str, Any]],
    csv_columns: tuple[str, ...],
    text: Callable[[], str],
) -> None:
    """A trace as JSON (all of it), CSV (its rows) or text for a person."""
    from costtrace.finance import formats

    if fmt == "json":
        _write(formats.to_json(whole), output)
    elif fmt == "csv":
        _write(formats.to_csv(rows, csv_columns), output)
    else:
        _write(text(), output)


@main.group()
def trace() -> None:
    """Cost traces: an order's budgets, an account's stock record, a batch's coins."""


@trace.command("order")
@click.argument("account_id")
@click.argument("order_id")
@_FORMAT
@_OUTPUT
def trace_order(account_id: str, order_id: str, fmt: str, output: str) -> None:
    """Which batches and budgets paid for an order; its refunds and trueups; what is still on SUSPENSE."""
    from costtrace.finance import formats, queries

    t = _ask(lambda conn: queries.order_trace(conn, account_id, order_id))
    movements = [m.as_dict() for m in t.movements]

    def text() -> str:
        head = (
            f"order {t.order_id} of account {t.account_id}"
            + (f" at merchant {t.merchant_id}" if t.merchant_id else "")
            + f": took {t.amount:,}, refunded {t.refunded:,}, "
            + f"still on SUSPENSE (unpaid) {t.on_suspense:,}\n\n"
        )
        budgets = formats.table([b.as_dict() for b in t.budgets], formats.BUDGET_SHARE_COLUMNS)
        columns = ("kind", "batch_id", "budget_id", "amount", "refund_id", "event_id", "posted_at")
        return head + budgets + "\n" + formats.table(movements, columns)

    _emit(fmt, output, t.as_dict(), movements, formats.MOVEMENT_COLUMNS, text)


@trace.command("account")
@click.argument("account_id")
@click.option("--at", metavar="TIME", help="as posted at this time (ISO 8601; default now)")
@_FORMAT
@_OUTPUT
def trace_account(account_id: str, at: str | None, fmt: str, output: str) -> None:
    """An account's stock record: open batches in FIFO order with remaining, budget and age; and debt."""
    from datetime import UTC, datetime

    from costtrace.finance import formats, queries

    when = None
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise click.BadParameter(f"{at!r} is not an ISO 8601 time", param_hint="'--at'") from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    t = _ask(lambda conn: queries.account_trace(conn, account_id, when))
    batches = [b.as_dict(t.at) for b in t.batches]

    def text() -> str:
        head = (
            f"account {t.account_id} as posted at {t.at.isoformat()}: {len(batches)} open batch(es), "
            f"{sum(b.remaining for b in t.batches):,} in stock, debt {t.debt:,}\n\n"
        )
        return head + formats.table(batches, formats.BATCH_COLUMNS)

    _emit(fmt, output, t.as_dict(), batches, formats.BATCH_COLUMNS, text)


@trace.command("batch")
@click.argument("account_id")
@click.argument("batch_id")
@_FORMAT
@_OUTPUT
def trace_batch(account_id: str, batch_id: str, fmt: str, output: str) -> None:
    """Where a batch's coins went: orders, refunds, trueups and transfers (with the receiving account)."""
    from costtrace.finance import formats, queries

    async def every_page(conn: Any) -> Any:
        first = await queries.batch_trace(conn, account_id, batch_id)
        movements, cursor = list(first.movements), first.next_cursor
        while cursor is not None:
            page = await queries.batch_trace(conn, account_id, batch_id, cursor=cursor)
            movements += page.movements
            cursor = page.next_cursor
        return first._replace(movements=movements, next_cursor=None)

    t = _ask(every_page)
    movements = [m.as_dict() for m in t.movements]

    def text() -> str:
        head = (
            f"batch {t.batch_id} of account {t.account_id}, budget {t.budget_id}: {t.amount:,} in, "
            f"{t.remaining:,} left\n\n"
        )
        columns = ("kind", "amount", "order_id", "refund_id", "transfer_id", "counterparty", "merchant_id",
                   "posted_at")  # fmt: skip
        return head + formats.table(movements, columns)

    _emit(fmt, output, t.as_dict(), movements, formats.MOVEMENT_COLUMNS, text)


@main.command()
@click.option("--host", help="address to listen on (default: COSTTRACE_HTTP_HOST)")
@click.option("--port", type=click.IntRange(0, 65535), help="port (default: COSTTRACE_API_PORT, 8410)")
def api(host: str | None, port: int | None) -> None:
    """Serve the read API (JSON and CSV; OpenAPI at /docs) and finance's web page (/) over PostgreSQL."""
    import uvicorn

    from costtrace.api.app import create_app

    settings = _settings()
    app = create_app(settings.postgres_dsn.get_secret_value())
    uvicorn.run(app, host=host or settings.http_host, port=settings.api_port if port is None else port,
                log_level=settings.log_level.lower(), access_log=False)  # fmt: skip
