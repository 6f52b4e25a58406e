"""Fleet speed: events/s from a backlog to committed rows, and latency at a steady rate.

The backlog is a simulated day published whole before any worker starts,
each record stamped with its event's time (as an outbox relay does), so the
allocator has to put every account's events in the log order across all
topics. Measured side by side in one run, on that same backlog:
- `bare aiokafka consumer`: reading the input topics, nothing else;
- `faust agent, iterate only`: the same topics through a faust agent;
- `allocator + sink`: one allocator process (the log order, effectively
  once: RocksDB state, changelog, outputs) and the sink, from the
  allocator's readiness (/readyz: joined, tables recovered) to the last
  committed row in PostgreSQL;
- `lock-based PostgreSQL allocator`: the same FIFO work as rows under row
  locks, one transaction per event (bench/pg_allocator.py).
Then live traffic at a steady rate (half the allocator's), records stamped as
they are sent, for end-to-end latency: Kafka timestamp to committed row, p50
and p99, and what each event cost in CPU meanwhile (paced, every version of
the allocator does the same work: `docs/performance.md` compares them so).
Ratios are what to quote.

`--workers-from CHECKOUT` runs the allocator and the sink from another
checkout (its native module built), on what this one prepares: two versions
compared on the same backlog, harness and clock (docs/performance.md).

    python -m bench.fleet_bench [--events N] [--accounts N] [--partitions P] [--workers-from TREE] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench import pg_allocator
from costtrace.fleet.publish import publish
from costtrace.fleet.settings import fleet_catalogue
from costtrace.ops.sample import encode_event, generate_events
from dev.demo import stack_up
from dev.harness import prepare_run, remove_run, wait_drained


async def bare_consumer(bootstrap: str, topics: list[str], n: int, group: str) -> float:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
    )  # fmt: skip
    await consumer.start()
    seen, first = 0, 0.0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                if records and not first:
                    first = time.perf_counter()
                seen += len(records)
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - first)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pid() -> int:
    out = subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


async def one_row(dsn: str, query: str, *args: Any) -> Any:
    """The first row a query gives, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(query, *args)
    finally:
        await conn.close()


async def latency_since(dsn: str, since: float) -> tuple[float, float, int]:
    """p50 and p99 (ms, Kafka timestamp to committed row) of the records received since `since`; how many."""
    row = await one_row(
        dsn,
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, count(*) AS n FROM"
        " (SELECT extract(epoch FROM persisted_at - received_at) * 1000 AS ms FROM records"
        "  WHERE received_at >= to_timestamp($1)) t",
        since,
    )
    return float(row["p50"]), float(row["p99"]), int(row["n"])


def start_workers(
    tree: Path, env: dict[str, str], folder: Path, roles: dict[str, dict[str, str]]
) -> tuple[list[subprocess.Popen[bytes]], Callable[[], None]]:
    """Start `costtrace worker` of each role (with its own extra environment) from checkout `tree`.

    Returns the processes, in the order of `roles`, and a check that stops
    the bench, with the end of the worker's log, once one of them has exited:
    a stopped worker would otherwise leave the bench waiting for an hour.
    """
    logs = {role: folder / f"{role}.log" for role in roles}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "costtrace.cli", "worker", "--role", role,
             "--state-dir", str(folder / role)],
            cwd=tree, env={**env, **extra, "PYTHONPATH": str(tree)},
            stdout=subprocess.DEVNULL, stderr=logs[role].open("w"),
        )
        for role, extra in roles.items()
    ]  # fmt: skip

    def alive() -> None:
        for (role, log), p in zip(logs.items(), procs, strict=True):
            if p.poll() is not None:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
                raise SystemExit(f"the {role} stopped (exit {p.returncode}); its log ends:\n{tail}")

    return procs, alive


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int, timeout: float = 300.0) -> float:
    """Until the worker answers /readyz: it has joined its group and recovered its tables."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return time.time()
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the worker on port {port} was not ready in {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description="fleet throughput and latency")
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--accounts", type=int, default=6_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    # events/s of the live traffic; by default half the allocator's backlog rate
    ap.add_argument("--latency-rate", type=float, default=None)
    ap.add_argument("--workers-from", type=Path, default=None, help="a checkout whose workers to run")
    ap.add_argument("--keep", action="store_true", help="keep the run's topics and database")
    args = ap.parse_args()
    tree = (args.workers_from or Path.cwd()).resolve()

    env = stack_up()
    name = f"bench{time.strftime('%Y%m%d%H%M%S')}"
    run = prepare_run(env, name, partitions=args.partitions)
    settings, dsn, cat = run.settings, run.dsn, fleet_catalogue(run.settings)
    lines = [encode_event(e) for e in generate_events(args.events, args.accounts, seed=2, skew=1.0)]
    t = time.perf_counter()
    asyncio.run(publish(settings.kafka_bootstrap, cat, lines))
    produce_rate = len(lines) / (time.perf_counter() - t)

    worker_env = {**os.environ, **run.env}

    bare = asyncio.run(bare_consumer(settings.kafka_bootstrap, cat.inputs, len(lines), f"{name}-bare"))

    it_args = [sys.executable, "-m", "bench.iterate_app"]
    it = subprocess.Popen(it_args, env=worker_env, stdout=subprocess.PIPE, text=True)
    assert it.stdout is not None
    first_t, last_t, last_n, changed = 0.0, 0.0, 0, time.monotonic()
    for line in it.stdout:  # "seen <wall time of last event> <count>", about once a second
        _, t_s, n_s = line.split()
        t_, n_ = float(t_s), int(n_s)
        if n_ == 1 and not first_t:
            first_t = t_
        if n_ > last_n:
            last_t, last_n, changed = t_, n_, time.monotonic()
        if last_n >= len(lines) or time.monotonic() - changed > 15:
            break
    it.send_signal(signal.SIGTERM)
    it.wait(timeout=60)
    iterate = (last_n - 1) / (last_t - first_t) if last_t > first_t else 0.0
    if last_n < len(lines):
        print(f"note: the iterating agent saw {last_n:,} of {len(lines):,} events before going quiet")

    with tempfile.TemporaryDirectory() as tmp:
        ports = {"allocator": _free_port(), "sink": _free_port()}  # the order of cpu_us below
        procs, alive = start_workers(
            tree,
            worker_env,
            Path(tmp),
            {role: {"COSTTRACE_HTTP_PORT": str(port)} for role, port in ports.items()},
        )

        def cpu_now() -> list[float]:
            """CPU seconds so far of the allocator, the sink and the broker."""
            return [_cpu_seconds(p.pid) for p in procs] + [_cpu_seconds(broker)]

        try:
            broker = _broker_pid()
            ready_at = _ready(ports["allocator"])
            cpu_start = cpu_now()
            asyncio.run(wait_drained(settings.kafka_bootstrap, cat, settings.app_id, settings.sink_app_id,
                                     args.partitions, timeout=3600, check=alive))  # fmt: skip
            cpu = cpu_now()
            cpu_us = [(b - a) / len(lines) * 1e6 for a, b in zip(cpu_start, cpu, strict=True)]

            row = asyncio.run(one_row(
                dsn,
                "SELECT extract(epoch FROM min(persisted_at)) - $1 AS first,"
                " extract(epoch FROM max(persisted_at)) - $1 AS s, count(*) AS n FROM records",
                ready_at,
            ))  # fmt: skip
            first_row, seconds, n_records = float(row["first"]), float(row["s"]), int(row["n"])
            allocator = len(lines) / seconds

            # steady rate, half of what the allocator sustained (or as asked), for latency
            rate = args.latency_rate or allocator / 2
            extra = [
                encode_event(e) for e in generate_events(int(rate * args.latency_seconds), args.accounts, 9)
            ]
            extra = [
                line.replace(b'"acct-', b'"lat-') for line in extra
            ]  # new ids: no repeats of the backlog
            since = time.time()
            live_start = cpu_now()
            asyncio.run(publish(settings.kafka_bootstrap, cat, extra, rate, stamp=False))
            live_cpu = cpu_now()
            live_us = [(b - a) / len(extra) * 1e6 for a, b in zip(live_start, live_cpu, strict=True)]
            asyncio.run(wait_drained(settings.kafka_bootstrap, cat, settings.app_id, settings.sink_app_id,
                                     args.partitions, timeout=600, check=alive))  # fmt: skip

            p50, p99, n_lat = asyncio.run(latency_since(dsn, since))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=60)
    locked = asyncio.run(pg_allocator.run(dsn, lines))
    if not args.keep:
        asyncio.run(remove_run(env, name))

    print(f"workers from {tree}")
    print(f"backlog: a day of {len(lines):,} events over {args.accounts:,} accounts, {args.partitions}"
          f" partitions, published whole, stamped with event times (at {produce_rate:,.0f}/s);"
          f" {n_records:,} records")  # fmt: skip
    print(f"{'':36s}{'events/s':>10s}{'x allocator':>13s}")
    for label, r in (("bare aiokafka consumer", bare), ("faust agent, iterate only", iterate),
                     ("allocator + sink, to committed rows", allocator),
                     ("lock-based PostgreSQL allocator", locked)):  # fmt: skip
        print(f"{label:36s}{r:10,.0f}{r / allocator:13.2f}")
    print(f"first committed row {first_row:.2f} s after the allocator's readiness, the last {seconds:.2f} s")
    print(f"latency at {rate:,.0f} events/s ({n_lat:,} records): p50 {p50:,.0f} ms, p99 {p99:,.0f} ms")
    print("CPU per event during the backlog (from the allocator's readiness): allocator {:,.0f} µs,"
          " sink {:,.0f} µs, Kafka broker {:,.0f} µs".format(*cpu_us))  # fmt: skip
    print("CPU per event during the live traffic (while it was sent): allocator {:,.0f} µs, sink {:,.0f} µs,"
          " Kafka broker {:,.0f} µs".format(*live_us))  # fmt: skip
    print("goal: at least half the iterating agent's rate, 3x the lock-based allocator, p99 under 1 s")


if __name__ == "__main__":
    main()
