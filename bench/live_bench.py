"""What live traffic costs the fleet, event by event: CPU per event of each process, latency.

Paced traffic (a steady rate, records stamped as they are sent) reaches the
allocator in the log order whatever version it runs, so every version gives
the same records and does the same work; its CPU per event is then the price
of the version's machinery, which a backlog cannot show (a version that
applies in arrival order gives another answer there, and cheaper rejections).
`--workers-from` runs the allocator and the sink from another checkout (its
native module built: `make setup` there), on topics and a database this
checkout prepares; alternate runs of two versions on one broker and quote
the ratio (docs/performance.md, "The log order's cost on the same work").

    python -m bench.live_bench [--rate R] [--seconds S] [--workers-from CHECKOUT] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.fleet_bench import _broker_pid, _cpu_seconds, latency_since, one_row, start_workers
from costtrace.fleet.publish import publish
from costtrace.fleet.settings import fleet_catalogue
from costtrace.ops.sample import encode_event, generate_events
from dev.demo import stack_up
from dev.harness import prepare_run, remove_run, stop_processes, wait_drained

ROLES = ("allocator", "sink")


async def _rows(dsn: str) -> int:
    return int((await one_row(dsn, "SELECT count(*) AS n FROM records"))["n"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=3000.0, help="events per second")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--accounts", type=int, default=6_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--workers-from", type=Path, default=None, help="a checkout whose workers to run")
    ap.add_argument("--keep", action="store_true", help="keep the run's topics and database")
    args = ap.parse_args()

    env = stack_up()
    name = f"live{time.strftime('%Y%m%d%H%M%S')}"
    run = prepare_run(env, name, partitions=args.partitions)
    settings, dsn, cat = run.settings, run.dsn, fleet_catalogue(run.settings)
    tree = (args.workers_from or Path.cwd()).resolve()
    worker_env = {**os.environ, **run.env}
    # a first few events: once their rows are in, both workers have joined and run
    warm = [encode_event(e) for e in generate_events(200, 50, 3)]
    warm = [line.replace(b'"acct-', b'"warm-') for line in warm]
    traffic = [encode_event(e) for e in generate_events(int(args.rate * args.seconds), args.accounts, 9)]

    with tempfile.TemporaryDirectory() as tmp:
        procs, alive = start_workers(tree, worker_env, Path(tmp), {role: {} for role in ROLES})

        try:
            asyncio.run(publish(settings.kafka_bootstrap, cat, warm, stamp=False))
            deadline = time.monotonic() + 300
            while asyncio.run(_rows(dsn)) == 0:
                alive()
                if time.monotonic() > deadline:
                    raise SystemExit("no rows 300 s after the warm-up events")
                time.sleep(0.2)
            asyncio.run(wait_drained(settings.kafka_bootstrap, cat, settings.app_id, settings.sink_app_id,
                                     args.partitions, timeout=300, check=alive))  # fmt: skip
            before = asyncio.run(_rows(dsn))
            pids = [p.pid for p in procs] + [_broker_pid(), os.getpid()]
            cpu_start, since = [_cpu_seconds(pid) for pid in pids], time.time()
            asyncio.run(publish(settings.kafka_bootstrap, cat, traffic, args.rate, stamp=False))
            cpu, took = [_cpu_seconds(pid) for pid in pids], time.time() - since
            asyncio.run(wait_drained(settings.kafka_bootstrap, cat, settings.app_id, settings.sink_app_id,
                                     args.partitions, timeout=600, check=alive))  # fmt: skip
            p50, p99, n_lat = asyncio.run(latency_since(dsn, since))
            records = asyncio.run(_rows(dsn)) - before
        finally:
            stop_processes(procs)
            if not args.keep:
                asyncio.run(remove_run(env, name))

    n = len(traffic)
    used = [(b - a) for a, b in zip(cpu_start, cpu, strict=True)]
    print(f"workers from {tree}: {n:,} events at {n / took:,.0f}/s over {args.accounts:,} accounts,"
          f" {args.partitions} partitions; {records:,} records")  # fmt: skip
    print(f"latency ({n_lat:,} records): p50 {p50:,.0f} ms, p99 {p99:,.0f} ms")
    labels = ("allocator", "sink", "Kafka broker", "publisher")
    shares = [
        f"{label} {u / n * 1e6:,.0f} µs ({u / took:.0%} of a core)"
        for label, u in zip(labels, used, strict=True)
    ]
    print("CPU per event while sent: " + ", ".join(shares))


if __name__ == "__main__":
    main()
