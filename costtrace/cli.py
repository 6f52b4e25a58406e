"""The `costtrace` command line: thin entry points that parse, call, and print."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import BinaryIO

import click


@click.group()
def main() -> None:
    """costtrace: trace every coin spent back to the budgets that paid for it."""


def _open_in(stack: ExitStack, path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return stack.enter_context(open(path, "rb"))


def _open_out(stack: ExitStack, path: str) -> BinaryIO:
    if path == "-":
        return sys.stdout.buffer
    return stack.enter_context(open(path, "wb", buffering=1 << 20))


@main.command()
@click.argument("events", type=click.Path(allow_dash=True, dir_okay=False))
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
def replay(events: str, output: str, progress: bool | None) -> None:
    """Apply an event log (JSON lines) in order and write every allocation record.

    Use '-' for standard input or output. A summary goes to standard error.
    """
    from costtrace.replay import replay as run_replay

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
        summary = run_replay(lines, dst, on_line=on_line)
        dst.flush()
        elapsed = time.perf_counter() - started
    for line in summary.lines():
        click.echo(line, err=True)
    rate = summary.events / elapsed if elapsed > 0 else 0.0
    click.echo(f"elapsed: {elapsed:.2f} s ({rate:,.0f} events/s)", err=True)


@main.command()
@click.option("-n", "--events", "n_events", default=200_000, show_default=True)
@click.option("--accounts", default=20_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option(
    "-o", "--output", default="-", show_default=True, type=click.Path(allow_dash=True, dir_okay=False)
)
def sample(n_events: int, accounts: int, seed: int, output: str) -> None:
    """Write a generated, realistic event log (deterministic for a seed)."""
    from costtrace.sample import encode_event, generate_events

    with ExitStack() as stack:
        dst = _open_out(stack, output)
        for ev in generate_events(n_events, accounts, seed):
            dst.write(encode_event(ev) + b"\n")


@main.command()
@click.option(
    "-n", "--events", "n_events", default=200_000, show_default=True, help="Events in the simulated day."
)
@click.option("--accounts", default=20_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--workdir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
def demo(n_events: int, accounts: int, seed: int, workdir: str) -> None:
    """The main job: a simulated day of traffic, traced, and finance's report.

    Today this runs offline: it writes a generated event log, replays it and
    reports per budget from the records.
    """
    from pathlib import Path

    from costtrace.replay import replay as run_replay
    from costtrace.report import report
    from costtrace.sample import write_log
    from schemas.records import decode_record

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    events, records = root / "events.jsonl", root / "records.jsonl"
    click.echo(f"generating {n_events:,} events over {accounts:,} accounts -> {events}")
    write_log(str(events), n_events, accounts, seed)
    started = time.perf_counter()
    with events.open("rb") as src, records.open("wb") as dst:
        summary = run_replay(src, dst)
    elapsed = time.perf_counter() - started
    click.echo(f"replayed into {records} in {elapsed:.1f} s ({summary.events / elapsed:,.0f} events/s)")
    for line in summary.lines():
        click.echo(f"  {line}")
    with records.open("rb") as f:
        rep = report(decode_record(line) for line in f)
    click.echo("")
    for line in rep.lines():
        click.echo(line)


@main.group()
def schemas() -> None:
    """The machine-readable event and record schemas under schemas/v1."""


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate schemas/v1/*.schema.json from the Python types."""
    from schemas.jsonschema import write_all

    for path in write_all():
        click.echo(path)


if __name__ == "__main__":  # pragma: no cover
    main()
