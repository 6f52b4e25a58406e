"""What SREs read: Prometheus metrics and the health endpoints every worker serves.

Every worker process serves `/metrics`, `/livez` and `/readyz` on
`COSTTRACE_HTTP_HOST:COSTTRACE_HTTP_PORT`. Names follow Prometheus
conventions: a `costtrace_` prefix, `_total` counters, base units in the
name. The dashboard and alert rules under `deploy/` use only names defined
here; a test scrapes a running worker and checks that each one is served.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from costtrace.contract.records import Reason
from costtrace.fleet.allocator import Handled
from costtrace.model.allocation import Status

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)


# rejections an alert watches: their series exist from a worker's start
ALERTED_REASONS: Final = ("processing_error", Reason.WRONG_PARTITION.value)


@dataclass
class Metrics:
    """One process's metrics, in a registry of its own (tests build as many as they like)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # the allocator's per-event counts, added to their counters at each scrape
        self._counted: defaultdict[tuple[Counter, tuple[str, ...]], int] = defaultdict(int)
        self.info = Gauge(
            "costtrace_worker_info",
            "This worker's role and consumer group (always 1).",
            ["role", "group"],
            registry=r,
        )
        self.ready = Gauge(
            "costtrace_worker_ready",
            "1 once the worker serves: joined, tables recovered, not rebalancing.",
            registry=r,
        )
        self.events = Counter(
            "costtrace_events",
            "Input events read by the allocator, by type and outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.records = Counter(
            "costtrace_records", "Allocation records the allocator produced, by kind.", ["kind"], registry=r
        )
        self.rejections = Counter(
            "costtrace_rejections",
            "Rejected events, by reason (each one is dead-lettered).",
            ["reason"],
            registry=r,
        )
        for reason in ALERTED_REASONS:
            self.rejections.labels(reason)  # at 0 from the start: the first one is an increase
        self.late_events = Counter(
            "costtrace_late_events",
            "Events (and credits) applied late: after events later in the log order, by type.",
            ["type"],
            registry=r,
        )
        for event_type in ("issued", "opened", "consumed", "refunded", "transferred", "credit"):
            self.late_events.labels(event_type)  # at 0 from the start: the first one is an increase
        self.held_events = Gauge(
            "costtrace_order_held_events",
            "Events read and held until their turn in the log order (costtrace/fleet/merge.py).",
            registry=r,
        )
        self.forced_releases = Counter(
            "costtrace_order_forced_releases",
            "Times a partition let its events go without a topic partition whose data was due "
            "(COSTTRACE_MAX_IDLE): what that partition brings later may be late.",
            registry=r,
        )
        self.stale_changelog = Counter(
            "costtrace_changelog_stale_records",
            "Changelog records a restore skipped: written by an allocator after it had lost the partition "
            "(frozen past its session; costtrace/fleet/fence.py).",
            registry=r,
        )
        self.dead_letters = Counter(
            "costtrace_dead_letters",
            "Dead letters the sink stored in PostgreSQL, by reason.",
            ["reason"],
            registry=r,
        )
        self.sink_rows = Counter(
            "costtrace_sink_rows", "Rows the sink committed to PostgreSQL, by table.", ["table"], registry=r
        )
        self.sink_batch_rows = Histogram(
            "costtrace_sink_batch_rows", "Rows per sink batch.", ["table"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.sink_batch_seconds = Histogram(
            "costtrace_sink_batch_duration_seconds",
            "Time to persist one sink batch, retries included.",
            ["table"],
            registry=r,
        )
        self.sink_rejects = Counter(
            "costtrace_sink_rejects",
            "Messages whose row PostgreSQL refused for its data (or that no row could be made of), kept in "
            "the sink_rejects table instead, by the table the row was for.",
            ["table"],
            registry=r,
        )
        for table in ("records", "dead_letters"):
            self.sink_rejects.labels(
                table
            )  # present at 0 from the start, so the first one shows as an increase
        self.sink_retries = Counter(
            "costtrace_sink_retries", "Sink writes retried (PostgreSQL down or slow).", registry=r
        )
        self.sink_last_commit = Gauge(
            "costtrace_sink_last_commit_timestamp_seconds",
            "When the sink last committed a batch (Unix time).",
            registry=r,
        )
        self.end_to_end = Histogram(
            "costtrace_end_to_end_latency_seconds",
            "From an event's time (clock=event) or its broker timestamp (clock=broker) "
            "to its record's committed row.",
            ["clock"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "costtrace_consumer_lag_messages",
            "Messages after this worker's committed offset, per assigned topic partition.",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "costtrace_rebalances",
            "Consumer group rebalances this worker went through.",
            ["group"],
            registry=r,
        )
        self.compensations = Counter(
            "costtrace_compensations",
            "Dead letters the compensator handled: retried, parked, and retries that the allocator applied.",
            ["outcome"],
            registry=r,
        )
        self.parked = Gauge(
            "costtrace_parked_letters",
            "Dead letters parked in PostgreSQL and not yet replayed or discarded.",
            registry=r,
        )
        self.reconcile_runs = Counter(
            "costtrace_reconcile_runs",
            "Reconcile runs by how they ended: ok, mismatches, skipped, lost_lock, failed.",
            ["status"],
            registry=r,
        )
        self.reconcile_mismatches = Gauge(
            "costtrace_reconcile_mismatches",
            "Findings of the last completed reconcile run: ledger mismatches and broken invariants.",
            registry=r,
        )
        self.reconcile_old_debts = Gauge(
            "costtrace_reconcile_old_debts",
            "Orders whose debt is older than the threshold, at the last completed reconcile run.",
            registry=r,
        )
        self.reconcile_last_success = Gauge(
            "costtrace_reconcile_last_completed_timestamp_seconds",
            "When a reconcile run last completed (Unix time).",
            registry=r,
        )
        self.tracing_on = Gauge(
            "costtrace_tracing_on", "The tracing switch this worker goes by: 1 on, 0 off.", registry=r
        )
        self.tracing_node = Gauge(
            "costtrace_tracing_node_timestamp_seconds",
            "The historical node this worker goes by (Unix time; 0: none). Earlier events are skipped.",
            registry=r,
        )
        self.switch_read_failures = Counter(
            "costtrace_switch_read_failures",
            "Failed reads of the tracing switch (Redis down): the worker keeps the last switch it read.",
            registry=r,
        )
        self.accounts = Gauge(
            "costtrace_accounts_held", "Accounts whose state this worker holds.", registry=r
        )
        self.debt = Gauge(
            "costtrace_debt_outstanding_coins",
            "Coins consumed without stock, not yet paid back (PostgreSQL, every account).",
            registry=r,
        )

    def count(self, handled: Handled, attempt: int = 1) -> None:
        """One allocator message: its outcome, and the records or rejection it gave the first time.

        Kept in a plain dict and added to the counters at the next scrape: a
        counter's `inc` takes a lock, and the allocator counts several per event.
        """
        outcome = handled.outcome
        counted = self._counted
        counted[self.events, (handled.event_type, outcome.status.value)] += 1
        if outcome.status is Status.APPLIED:
            if attempt > 1:  # a retry the compensator sent, applied
                counted[self.compensations, (Status.APPLIED.value,)] += 1
            for kind in outcome.record_kinds:
                counted[self.records, (kind,)] += 1
        elif outcome.status is Status.REJECTED and outcome.rejection is not None:
            counted[self.rejections, (outcome.rejection.reason,)] += 1
        if handled.late:
            counted[self.late_events, (handled.event_type,)] += 1

    def _add_counted(self) -> None:
        counted, self._counted = self._counted, defaultdict(int)
        for (metric, labels), n in counted.items():
            metric.labels(*labels).inc(n)

    def set_lag(self, group: str, lags: Iterable[tuple[str, int, int]]) -> None:
        """Replace the lag gauges: partitions this worker no longer holds must not linger."""
        self.lag.clear()
        for topic, partition, lag in lags:
            self.lag.labels(group, topic, str(partition)).set(lag)

    def scrape(self) -> bytes:
        self._add_counted()
        return generate_latest(self.registry)


def lag_of(
    highwaters: Mapping[tuple[str, int], int | None], committed: Mapping[tuple[str, int], int | None]
) -> list[tuple[str, int, int]]:
    """Per partition: the broker's high watermark minus the committed offset (none: all of it)."""
    out = []
    for (topic, partition), high in sorted(highwaters.items()):
        if high is None:
            continue
        done = committed.get((topic, partition)) or 0
        out.append((topic, partition, max(0, high - done)))
    return out


@dataclass(frozen=True)
class Health:
    """What `/livez` and `/readyz` answer; each is a check that returns why it fails, or None."""

    alive: Callable[[], str | None]
    ready: Callable[[], str | None]


async def serve(metrics: Metrics, health: Health, host: str, port: int) -> web.AppRunner:
    """Serve `/metrics`, `/livez` and `/readyz`; the caller cleans the runner up on stop."""

    async def metrics_view(_: web.Request) -> web.Response:
        metrics.ready.set(0 if health.ready() else 1)
        return web.Response(body=metrics.scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def check(probe: Callable[[], str | None]) -> Callable[[web.Request], object]:
        async def view(_: web.Request) -> web.Response:
            why = probe()
            return web.Response(status=503 if why else 200, text=(why or "ok") + "\n")

        return view

    http = web.Application()
    http.router.add_get("/metrics", metrics_view)
    http.router.add_get("/livez", check(health.alive))  # type: ignore[arg-type]
    http.router.add_get("/readyz", check(health.ready))  # type: ignore[arg-type]
    runner = web.AppRunner(http, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("serving /metrics, /livez and /readyz on %s:%d", host, port)
    return runner
