"""`make demo` (`python -m dev.demo`): the stack, a fleet, a simulated day, finance's report and statement.

A developer's harness, run from a checkout (it starts deploy/stack): not in the wheel.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import click

from costtrace.contract.records import decode_record
from costtrace.finance import formats, queries
from costtrace.finance.statement import Period, Statement
from costtrace.fleet.publish import publish
from costtrace.fleet.settings import Settings, fleet_catalogue
from costtrace.model.order import fleet_order
from costtrace.model.replay import replay
from costtrace.model.report import Report, differences
from costtrace.model.report import report as report_of
from costtrace.ops.sample import encode_event, generate_events, write_log
from dev.harness import prepare_run, report, wait_drained

REPO = Path(__file__).resolve().parents[1]


def stack_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The COSTTRACE_* connection settings of the local stack (`deploy/stack env`).

    `environ`: deploy/stack's own settings (STACK_DIR, KAFKA_NODES, ...) for another stack.
    """
    out = subprocess.run(
        [str(REPO / "deploy" / "stack"), "env"], env=environ, capture_output=True, text=True, check=True
    )
    return dict(line.split("=", 1) for line in out.stdout.split())


def stack_up() -> dict[str, str]:
    subprocess.run([str(REPO / "deploy" / "stack"), "up"], check=True, stdout=subprocess.DEVNULL)
    return stack_env()


def run(
    n_events: int, accounts: int, seed: int, allocators: int, workdir: Path, say: Callable[[str], None]
) -> None:
    say("starting the stack (Kafka, PostgreSQL, Redis) on 127.0.0.1 ...")
    env = stack_up()
    name = f"demo{time.strftime('%Y%m%d%H%M%S')}"
    run_ = prepare_run(env, name)
    settings, dsn, cat = run_.settings, run_.dsn, fleet_catalogue(run_.settings)
    say(f"run {name}: {len(cat.topics)} topics and database {name}; {allocators} allocator(s) and a sink")
    worker_env = {**os.environ, **run_.env}
    logs = workdir / name
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    roles = [("allocator", i) for i in range(allocators)] + [("sink", 0)]
    for n, (role, i) in enumerate(roles):
        args = [sys.executable, "-m", "costtrace.cli", "worker", "--role", role]
        if role == "allocator":
            args += ["--state-dir", str(logs / f"state-{i}")]
        out = (logs / f"{role}-{i}.log").open("ab")
        port = str(settings.http_port + n)
        env_n = {**worker_env, "COSTTRACE_HTTP_PORT": port}
        procs.append(subprocess.Popen(args, env=env_n, stdout=out, stderr=subprocess.STDOUT))
        say(f"  {role}-{i}: metrics on http://{settings.http_host}:{port}/metrics")
    try:
        lines = [encode_event(e) for e in generate_events(n_events, accounts, seed)]
        say(f"publishing a simulated day: {len(lines):,} events over {accounts:,} accounts")
        started = time.monotonic()
        asyncio.run(publish(settings.kafka_bootstrap, cat, lines))

        def alive() -> None:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited ({p.args!r}); logs in {logs}")

        asyncio.run(
            wait_drained(
                settings.kafka_bootstrap, cat, settings.app_id, settings.sink_app_id, settings.partitions,
                timeout=1800, check=alive,
            )
        )  # fmt: skip
        elapsed = time.monotonic() - started
        rep, _ = asyncio.run(report(dsn))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    offline = offline_report(lines, settings.partitions)
    say("")
    say("the fleet (from PostgreSQL):")
    for line in rep.lines():
        say(f"  {line}")
    say("")
    say("offline replay of the same day, in the fleet's log order (no Kafka, no fleet):")
    for line in offline.lines():
        say(f"  {line}")
    say("")
    differ = differences(rep, offline)
    if differ:
        say("the fleet and the offline replay DIFFER:")
        for line in differ:
            say(f"  {line} (fleet against offline)")
    else:
        say("the fleet's report and the offline replay's match, budget by budget, debt and rejections")
    say("")
    rate = len(lines) / elapsed
    say(f"throughput: {len(lines):,} events in {elapsed:.1f} s from first send to last committed row")
    say(f"  = {rate:,.0f} events/s, including the workers' start-up and first rebalance")
    say("the day is published as a relaying producer does, each record stamped with its event's time,")
    say("so its latency is not measured here: `python -m bench.fleet_bench` measures it on live traffic")
    say(f"records: {rep.records:,} rows in PostgreSQL database {name} ({dsn})")
    say(f"worker logs: {logs}")
    say("")
    show_statement(dsn, say)
    page = start_api(dsn, settings.http_host, settings.api_port, logs, say)
    if page:
        say(f"finance's page (statement, order and account lookup): {page}/  (API description: {page}/docs)")
    say("stop the stack with: deploy/stack down")
    if differ:
        raise SystemExit(1)


def show_statement(dsn: str, say: Callable[[str], None]) -> None:
    """The settlement statement of the day the sink posted the simulated day on (`costtrace statement`)."""
    today = datetime.now(UTC).date()
    period = Period(today, today + timedelta(days=1))

    async def ask() -> Statement:
        conn = await asyncpg.connect(dsn)
        try:
            return await queries.statement(conn, period)
        finally:
            await conn.close()

    for line in formats.statement_table(asyncio.run(ask())).splitlines():
        say(line)
    say(f"(the same: costtrace statement --from {period.start} --to {period.end}; database: {dsn})")
    say("")


def start_api(dsn: str, host: str, port: int, logs: Path, say: Callable[[str], None]) -> str | None:
    """`costtrace api` on the demo's database, left running in the background; its URL once it answers."""
    out = (logs / "api.log").open("ab")
    env = {**os.environ, "COSTTRACE_POSTGRES_DSN": dsn}
    proc = subprocess.Popen(
        [sys.executable, "-m", "costtrace.cli", "api", "--host", host, "--port", str(port)],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/livez", timeout=1):
                say(f"the read API runs in the background (pid {proc.pid}; stop it with: kill {proc.pid})")
                return url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    say(f"the read API did not start on {url} (port taken? see {logs / 'api.log'}); "
        "run it with: costtrace api --port N")  # fmt: skip
    return None


def offline_report(lines: list[bytes], partitions: int) -> Report:
    """Replay of `lines` as the fleet orders them once published (`costtrace.model.order.fleet_order`)."""
    out = io.BytesIO()
    replay(fleet_order(lines, partitions), out)
    return report_of(decode_record(line) for line in out.getvalue().splitlines())


@click.command()
@click.option(
    "-n", "--events", "n_events", default=50_000, show_default=True, help="Events in the simulated day."
)
@click.option("--accounts", default=5_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--allocators", default=2, show_default=True, help="Allocator processes in the fleet.")
@click.option("--offline", is_flag=True, help="Replay the simulated day instead of running the fleet.")
@click.option("--workdir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
def main(n_events: int, accounts: int, seed: int, allocators: int, offline: bool, workdir: str) -> None:
    """The main job: a simulated day of traffic through the fleet, and finance's report.

    Starts the local stack (deploy/stack up), creates the topics and the
    schema, runs the allocators and a sink, publishes the day (each record
    stamped with its event's time, as an outbox relay does), waits until
    every record is in PostgreSQL, and reports per budget from there, beside
    the offline replay of the same day in the fleet's log order; they must
    match (exit 1 if not). --offline replays the same day without the fleet.
    """
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    if not offline:
        run(n_events, accounts, seed, allocators, root, click.echo)
        return

    events, records = root / "events.jsonl", root / "records.jsonl"
    click.echo(f"generating {n_events:,} events over {accounts:,} accounts -> {events}")
    write_log(str(events), n_events, accounts, seed)
    partitions = Settings().partitions
    click.echo(f"replaying them in the order the fleet applies them once published ({partitions} partitions)")
    started = time.perf_counter()
    with events.open("rb") as src, records.open("wb") as dst:
        summary = replay(fleet_order(src.read().splitlines(), partitions), dst)
    elapsed = time.perf_counter() - started
    click.echo(f"replayed into {records} in {elapsed:.1f} s ({summary.events / elapsed:,.0f} events/s)")
    for line in summary.lines():
        click.echo(f"  {line}")
    with records.open("rb") as f:
        rep = report_of(decode_record(line) for line in f)
    click.echo("")
    for line in rep.lines():
        click.echo(line)


if __name__ == "__main__":
    main()
