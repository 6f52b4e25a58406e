"""Producers' commands: the JSON Schemas, a generated log, traffic onto the topics."""

from __future__ import annotations

import time
from contextlib import ExitStack

import click

from costtrace.cli.main import _kafka, _open_out, _settings, main


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
    sent = asyncio.run(
        publish(settings.kafka_bootstrap, fleet_catalogue(settings), lines, rate, **_kafka(settings))
    )
    elapsed = time.perf_counter() - started
    click.echo(f"published {sent:,} events in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f}/s)")


@main.group()
def schemas() -> None:
    """The machine-readable event and record schemas under costtrace/contract/v1."""


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate costtrace/contract/v1/*.schema.json from the Python types."""
    from costtrace.contract.jsonschema import write_all

    for path in write_all():
        click.echo(path)
