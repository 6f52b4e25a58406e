"""Offline replay through the real `costtrace` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from costtrace.ops.sample import write_log
from tests.model.helpers import consumed, issued, transferred

CLI = [sys.executable, "-m", "costtrace.cli"]


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, check=True, timeout=120)


def test_replay_stdin_to_stdout_with_summary_on_stderr() -> None:
    log = (
        b"\n".join([issued("b1", 5), consumed("o1", 7), b"{broken", b"", transferred("t1", "bob", 1)]) + b"\n"
    )
    done = run("replay", "-", "-o", "-", stdin=log)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["kind"] for r in records] == ["issue", "consume", "consume", "rejected", "rejected"]
    assert records[3] == {"event_id": None, "kind": "rejected", "account_id": None, "reason": "invalid_event"}
    assert records[4]["reason"] == "insufficient_stock"
    err = done.stderr.decode()
    assert "events: 4" in err and "blank lines skipped: 1" in err
    assert "invalid_event: 1" in err and "insufficient_stock: 1" in err
    assert "debt outstanding: 2" in err and "accounts: 1" in err


def test_replay_of_a_sample_file_is_deterministic(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_log(str(events), 3000, 200, seed=7)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run("replay", str(events), "-o", str(a))
    run("replay", str(events), "-o", str(b), "--progress")
    assert a.read_bytes() == b.read_bytes()
    kinds = {json.loads(line)["kind"] for line in a.read_text().splitlines()}
    assert kinds == {
        "issue",
        "open",
        "consume",
        "trueup",
        "refund",
        "transfer_out",
        "transfer_in",
        "rejected",
    }


def test_sample_command_is_deterministic() -> None:
    assert (
        run("sample", "-n", "500", "--accounts", "50", "--seed", "3").stdout
        == run("sample", "-n", "500", "--accounts", "50", "--seed", "3").stdout
    )


def test_replay_goes_on_past_hostile_lines() -> None:
    """Deep nesting, a JSON-escaped NUL, invalid UTF-8, a 2 MB string: each one invalid_event, then on."""
    hostile = [
        b"[" * 50_000,
        b'{"a":' * 50_000,
        issued("b\x00", 5),  # a NUL, which JSON writes as an escape
        b"\xff\xfe" + issued("b9", 5),
        b'{"event_id":"' + b"x" * 2_000_000 + b'"}',
    ]
    log = b"\n".join([issued("b1", 5), *hostile, consumed("o1", 3)]) + b"\n"
    done = run("replay", "-", "-o", "-", stdin=log)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["kind"] for r in records] == ["issue", *["rejected"] * len(hostile), "consume"]
    assert {r["reason"] for r in records if r["kind"] == "rejected"} == {"invalid_event"}
    assert "invalid_event: 5" in done.stderr.decode()
