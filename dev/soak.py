"""`python -m dev.soak`: the fleet under steady traffic while a nemesis breaks things, then the verdict.

A Jepsen-style soak on the local stack (deploy/stack). Two allocators, a sink
and a compensator run as processes, supervised as Kubernetes would: one that
exits is started again a second later. Traffic is a generated day published
in chunks at a steady rate, each record stamped when it is sent (as a
producer publishing events as they happen); a chunk whose publishing fails
(the broker is down) is published again, so the topics may hold producer
repeats, as they would.

Meanwhile the nemesis, at random moments (seeded), does one of:
- SIGKILL an allocator, the sink or the compensator (the supervisor restarts it);
- SIGSTOP an allocator or the sink for some seconds, then SIGCONT;
- restart the broker;
- stop PostgreSQL or Redis for tens of seconds.
Every kind happens at least once; the first ones in a shuffled order.

At the end the traffic stops, everything is healed, the fleet drains, and:
- **lost**: events published that left no record and no dead letter;
- **doubled / wrong**: records that differ from replay of the topics (the audit),
  on accounts without late events;
- **late**: events applied after later ones (dead letters `late_event`): their
  accounts may differ from replay by design (docs/semantics.md).
The goal is 0 lost, 0 doubled. Exit status 0 when met.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import click

from costtrace.fleet.publish import publish
from costtrace.fleet.settings import fleet_catalogue
from costtrace.ops.audit import audit
from costtrace.ops.sample import encode_event, generate_events
from dev.demo import REPO, stack_env
from dev.harness import prepare_run, stop_processes, wait_drained

KINDS: Final = (
    "kill allocator", "kill sink", "kill compensator", "stop allocator", "stop sink",
    "restart broker", "stop postgres", "stop redis",
)  # fmt: skip


@dataclass
class Fault:
    at: float  # seconds since the traffic started
    kind: str
    target: str
    seconds: float  # how long it lasted (0 for a kill: the supervisor restarts it)

    def line(self) -> str:
        lasting = f" for {self.seconds:.0f} s" if self.seconds else ""
        return f"{self.at:6.1f} s  {self.kind} ({self.target}){lasting}"


@dataclass
class Verdict:
    faults: list[Fault]
    published: int
    restarts: int
    lost: list[str]
    missing: int  # records replay of the topics has and PostgreSQL does not, on accounts without late events
    extra: int  # records PostgreSQL has and replay does not, idem
    differing: list[str]  # accounts whose records differ, without late events
    late_accounts: set[str]
    late_differing: int  # accounts with late events whose records differ (expected)
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.lost and not self.differing

    def lines(self) -> list[str]:
        out = [f"soak: {self.seconds:.0f} s, {self.published:,} events published, {len(self.faults)} faults, "
               f"{self.restarts} worker restarts"]  # fmt: skip
        out += [f"  {f.line()}" for f in self.faults]
        lost = f" (e.g. {', '.join(self.lost[:5])})" if self.lost else ""
        differing = f" (e.g. {', '.join(self.differing[:5])})" if self.differing else ""
        out += [
            f"lost: {len(self.lost)}{lost}",
            f"doubled or wrong: {self.extra} record(s) extra, {self.missing} missing, on "
            f"{len(self.differing)} account(s){differing}",
            f"late: {len(self.late_accounts)} account(s) with late events, {self.late_differing} of them "
            "differing from replay (by design)",
            "goal met: 0 lost, 0 doubled" if self.ok else "GOAL NOT MET",
        ]  # fmt: skip
        return out


class Supervisor:
    """The fleet's processes, restarted when they exit (as Kubernetes does), unless stopped on purpose."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, list[str]] = {}
        self.paused: set[str] = set()
        self.restarts = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def add(self, name: str, args: list[str]) -> None:
        self.args[name] = args
        self._start(name)

    def _start(self, name: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        cmd = [sys.executable, "-m", "costtrace.cli", *self.args[name]]
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(1.0):
            with self._lock:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None and name not in self.paused:
                        self.restarts += 1
                        self._start(name)

    def signal(self, name: str, sig: signal.Signals) -> None:
        with self._lock:
            if sig == signal.SIGSTOP:
                self.paused.add(name)
            elif sig == signal.SIGCONT:
                self.paused.discard(name)
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(sig)

    def names(self, role: str) -> list[str]:
        return sorted(n for n in self.args if n.startswith(role))

    def running(self) -> None:
        """Every worker resumed and alive (a stopped one is continued)."""
        for name in list(self.paused):
            self.signal(name, signal.SIGCONT)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        stop_processes(self.procs.values())


def stack(command: str, services: str) -> None:
    subprocess.run(
        [str(REPO / "deploy" / "stack"), command], env={**os.environ, "STACK_SERVICES": services},
        check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


class Nemesis:
    def __init__(self, fleet: Supervisor, rng: random.Random, stop: threading.Event, started: float) -> None:
        self.fleet, self.rng, self.stop, self.started = fleet, rng, stop, started
        self.faults: list[Fault] = []

    def run(
        self, every: tuple[float, float], outage: tuple[float, float], freeze: tuple[float, float]
    ) -> None:
        first = list(KINDS)
        self.rng.shuffle(first)
        while True:
            pause = self.rng.uniform(*every)
            stopped = self.stop.is_set() or self.stop.wait(pause)
            if stopped and not first:
                return
            kind = first.pop() if first else self.rng.choice(KINDS)  # every kind once, even past the traffic
            lasting = (
                freeze if kind.startswith("stop ") and kind.split()[1] in ("allocator", "sink") else outage
            )
            self.faults.append(self.act(kind, self.rng.uniform(*lasting)))

    def act(self, kind: str, seconds: float) -> Fault:
        at = time.monotonic() - self.started
        verb, _, what = kind.partition(" ")
        if verb in ("kill", "stop") and what in ("allocator", "sink", "compensator"):
            target = self.rng.choice(self.fleet.names(what))
            if verb == "kill":
                self.fleet.signal(target, signal.SIGKILL)
                return Fault(at, kind, target, 0)
            self.fleet.signal(target, signal.SIGSTOP)
            time.sleep(seconds)
            self.fleet.signal(target, signal.SIGCONT)
            return Fault(at, kind, target, seconds)
        service = {"broker": "kafka", "postgres": "postgres", "redis": "redis"}[what]
        began = time.monotonic()
        stack("down", service)
        time.sleep(0 if verb == "restart" else seconds)
        stack("up", service)
        return Fault(at, kind, service, time.monotonic() - began)


def traffic(
    bootstrap: str, cat: Any, lines: list[bytes], rate: float, stop: threading.Event, sent: list[int]
) -> None:
    """Publish `lines` in chunks at `rate` events a second; a chunk that fails goes again until it passes."""
    chunk = max(1, int(rate / 2))
    for i in range(0, len(lines), chunk):
        part = lines[i : i + chunk]
        started = time.monotonic()
        while True:
            try:
                # stamped when sent, as a producer publishing events as they happen: the generated
                # day runs faster than the clock, and its own times would make every wait of the
                # allocators (COSTTRACE_MAX_IDLE) cover minutes of it
                asyncio.run(asyncio.wait_for(publish(bootstrap, cat, part, stamp=False), timeout=30))
                break
            except Exception:  # the broker down or restarting: the same chunk again (producer repeats)
                time.sleep(1.0)
        sent[0] += len(part)
        if stop.is_set():
            return
        time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))


_KEPT: Final = """
    SELECT event_id FROM records UNION SELECT event_id FROM dead_letters WHERE event_id IS NOT NULL
"""
_LATE: Final = "SELECT DISTINCT account_id FROM dead_letters WHERE reason = 'late_event' AND account_id > ''"


async def _events_kept(dsn: str) -> tuple[set[str], set[str]]:
    """(event ids with a record or a dead letter, accounts with a late event)."""
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0] for r in await conn.fetch(_KEPT)}, {r[0] for r in await conn.fetch(_LATE)}
    finally:
        await conn.close()


def soak(
    seconds: float, seed: int = 1, rate: float = 200.0, every: tuple[float, float] = (6.0, 14.0),
    outage: tuple[float, float] = (8.0, 20.0), freeze: tuple[float, float] = (8.0, 20.0),
    workdir: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Verdict:  # fmt: skip
    """Run the soak for `seconds` of traffic; the verdict once the fleet has drained."""
    rng = random.Random(seed)
    name = f"soak{seed}x{time.strftime('%H%M%S')}"
    workdir = workdir or REPO / "out" / name
    workdir.mkdir(parents=True, exist_ok=True)
    base = stack_env()
    run = prepare_run(base, name, partitions=4)
    st, cat = run.settings, fleet_catalogue(run.settings)
    env = {
        **os.environ, **run.env, "COSTTRACE_COMPENSATOR_APP_ID": f"{name}-compensator",
        "COSTTRACE_COMMIT_INTERVAL": "0.5", "COSTTRACE_SESSION_TIMEOUT": "6",
        "COSTTRACE_LOG_LEVEL": "info",
    }  # fmt: skip
    events = list(generate_events(int(seconds * rate), max(100, int(seconds * rate / 10)), seed))
    lines = [encode_event(e) for e in events]
    ids = {e["event_id"] for e in events if "event_id" in e and "_raw" not in e}
    fleet = Supervisor(env, workdir)
    for i in (1, 2):
        fleet.add(
            f"allocator-{i}", ["worker", "--role", "allocator", "--state-dir", str(workdir / f"state-{i}")]
        )
    fleet.add("sink", ["worker", "--role", "sink"])
    fleet.add("compensator", ["worker", "--role", "compensator"])
    fleet.start()
    say(f"soak {name}: {len(lines):,} events at {rate:.0f}/s, logs in {workdir}")
    stop, sent = threading.Event(), [0]
    started = time.monotonic()
    nemesis = Nemesis(fleet, rng, stop, started)
    chaos = threading.Thread(target=nemesis.run, args=(every, outage, freeze), daemon=True)
    chaos.start()
    traffic(st.kafka_bootstrap, cat, lines, rate, threading.Event(), sent)
    stop.set()
    chaos.join()
    for fault in nemesis.faults:
        say(f"  {fault.line()}")
    stack("up", "postgres redis kafka")  # healed, whatever the nemesis did last
    fleet.running()
    say("traffic done; waiting for the fleet to drain")
    asyncio.run(wait_drained(st.kafka_bootstrap, cat, st.app_id, st.sink_app_id, 4, timeout=600))
    fleet.stop()
    kept, late = asyncio.run(_events_kept(run.dsn))
    result = asyncio.run(audit(st.kafka_bootstrap, run.dsn, cat, 4))
    on_time = [f for f in result.findings if f.account not in late]
    return Verdict(
        faults=nemesis.faults, published=sent[0], restarts=fleet.restarts, lost=sorted(ids - kept),
        missing=sum(len(f.missing) for f in on_time), extra=sum(len(f.extra) for f in on_time),
        differing=[str(f.account) for f in on_time], late_accounts=late,
        late_differing=len(result.findings) - len(on_time), seconds=time.monotonic() - started,
    )  # fmt: skip


@click.command()
@click.option("--minutes", type=float, default=10.0, show_default=True, help="minutes of traffic")
@click.option("--seed", type=int, default=1, show_default=True, help="the nemesis' and the traffic's")
@click.option("--rate", type=float, default=200.0, show_default=True, help="events per second")
@click.option(
    "--freeze", type=float, nargs=2, default=(8.0, 20.0), show_default=True, metavar="MIN MAX",
    help="seconds a SIGSTOP lasts (past the session timeout, 6 s here: the member loses its partitions)",
)  # fmt: skip
def main(minutes: float, seed: int, rate: float, freeze: tuple[float, float]) -> None:
    """Soak the fleet on the local stack under faults, then say what was lost, doubled or late."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the traffic's retries while the broker is down
    verdict = soak(minutes * 60, seed, rate, freeze=freeze, say=click.echo)
    for line in verdict.lines():
        click.echo(line)
    sys.exit(0 if verdict.ok else 1)


if __name__ == "__main__":
    main()
