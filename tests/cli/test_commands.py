"""Every command's arguments and usage errors, in process with click's CliRunner.

Usage errors exit 2 and name the parameter; nothing here reaches a service
(tests/cli/test_cli.py runs the commands with the services down).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from costtrace.cli import main

CLOSED = "127.0.0.1:1"  # nothing listens: a command that reached a service would fail, not hang
ENV = {
    "COSTTRACE_KAFKA_BOOTSTRAP": CLOSED,
    "COSTTRACE_POSTGRES_DSN": f"postgresql://postgres@{CLOSED}/costtrace",
    "COSTTRACE_REDIS_URL": f"redis://{CLOSED}/0",
}


def run(*args: str, stdin: bytes | None = None) -> click.testing.Result:
    return CliRunner(env=ENV).invoke(main, list(args), input=stdin)


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = list(commands())


def test_the_tree_has_every_audiences_commands() -> None:
    top = {path[0] for path in ALL}
    finance = {"replay", "audit", "export", "statement", "trace", "api"}
    producers = {"schemas", "sample", "simulate"}
    operators = {"worker", "topics", "db", "dlq", "ledger", "reconcile", "switch", "migrate", "archive"}
    assert finance | producers | operators | {"repartition"} == top
    assert "demo" not in top  # a checkout's harness (python -m dev.demo), not in the wheel


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_explains_itself(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: main {' '.join(path)}")
    command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]  # type: ignore[assignment]
    assert command.help, f"{' '.join(path)} has no help text"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (
            ["replay", "/nonexistent/events.jsonl"],
            "'[EVENTS]': File '/nonexistent/events.jsonl' does not exist",
        ),
        (["replay", __file__, "--from-topics"], "give EVENTS or --from-topics, not both"),
        (["replay", "--from-topics", "--node", "yesterday"], "--node"),
        (["audit", "--node", "noon"], "--node"),
        (["audit", "--limit", "many"], "'--limit'"),
        (["sample", "-n", "abc"], "'-n' / '--events'"),
        (["simulate", "--rate", "fast"], "'--rate'"),
        (["worker", "--role", "painter"], "'--role'"),
        (["topics", "nothing"], "No such command 'nothing'"),
        (["dlq", "list", "--older-than", "3x"], "--older-than"),
        (["dlq", "list", "--newer-than", "soon"], "--newer-than"),
        (["dlq", "list", "--status", "lost"], "'--status'"),
        (["dlq", "show"], "Missing argument 'ORIGIN'"),
        (["dlq", "replay"], "name the letters"),
        (["dlq", "discard", "--reason", "unknown_order"], "Missing option '--note'"),
        (["ledger", "load", "/nonexistent.csv"], "'FILE': File '/nonexistent.csv' does not exist"),
        (["reconcile", "--limit", "-1"], "'--limit': -1 is not in the range x>=0"),
        (["reconcile", "--debt-age", "3q"], "--debt-age"),
        (["switch", "on", "--node", "notatime"], "--node"),
        (["switch", "on", "--node", "2026-01-01T00:00:00Z", "--no-node"], "not both"),
        (["migrate", "--balances", "/dev/null"], "Missing option '--as-of'"),
        (["migrate", "--as-of", "yesterday", "--balances", __file__], "--as-of"),
        (["repartition", "--to-prefix", "n", "--to-app-id", "n", "--partitions", "0"], "x>=1"),
        (["repartition", "--partitions", "4"], "Missing option '--to-prefix'"),
        (["archive"], "give one of --before DATE and --refund-window AGE"),
        (["archive", "--before", "2026-13-01"], "--before/--refund-window"),
        (["archive", "--refund-window", "9x"], "--before/--refund-window"),
        (["archive", "--before", "2026-01-01", "--chunk", "0"], "x>=1"),
        (["statement", "--to", "2026-04-01"], "Missing option '--from'"),
        (["statement", "--from", "2026-03-32", "--to", "2026-04-01"], "'--from'"),
        (["statement", "--from", "2026-04-01", "--to", "2026-03-01"], "'--to'"),
        (["statement", "--from", "2026-03-01", "--to", "2026-04-01", "--by", "merchant"], "'--by'"),
        (["statement", "--from", "2026-03-01", "--to", "2026-04-01", "--format", "xls"], "'--format'"),
        (["trace", "order", "a"], "Missing argument 'ORDER_ID'"),
        (["trace", "account", "a", "--at", "noon"], "'--at'"),
        (["trace", "batch"], "Missing argument 'ACCOUNT_ID'"),
        (["api", "--port", "70000"], "'--port'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_usage_error_exits_2_naming_what_is_wrong(args: list[str], names: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert names in result.output and "Traceback" not in result.output


def test_replay_reads_stdin_and_writes_stdout() -> None:
    event = {"event_id": "e1", "type": "issued", "account_id": "a", "occurred_at": "2026-01-01T00:00:00Z",
             "batch_id": "b1", "budget_id": "acme", "amount": 5}  # fmt: skip
    result = run("replay", "-", "-o", "-", stdin=(json.dumps(event) + "\nnot json\n").encode())
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["kind"], r.get("amount"), r.get("reason")) for r in records] == [
        ("issue", 5, None),
        ("rejected", None, "invalid_event"),
    ]


def test_sample_writes_a_log_that_replay_reads(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    assert run("sample", "-n", "300", "--accounts", "30", "-o", str(log)).exit_code == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 300 and all(json.loads(line)["account_id"] for line in lines)
    out = tmp_path / "records.jsonl"
    result = run("replay", str(log), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["event_id"] for line in out.read_text().splitlines()} <= {
        json.loads(line)["event_id"] for line in lines
    }


def test_topics_list_names_the_catalogue() -> None:
    result = run("topics", "list", "--json")
    assert result.exit_code == 0, result.output
    names = {topic["name"] for topic in json.loads(result.stdout)}
    assert {"costtrace.issued", "costtrace.consumed", "costtrace.allocations"} <= names
