"""Operator commands with a service down or a bad setting: one line and exit 1, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nothing_up(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "COSTTRACE_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",
        "COSTTRACE_POSTGRES_DSN": f"postgresql://postgres@127.0.0.1:{closed_port()}/costtrace",
        "COSTTRACE_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "COSTTRACE_STATE_DIR": str(tmp_path / "state"),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costtrace.cli", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dlq", "list"], "a service is unreachable"),
        (["db", "migrate"], "PostgreSQL unavailable"),
        (["topics", "check"], "Kafka unavailable"),
        (["topics", "create"], "Kafka unavailable"),
        (["audit"], "Kafka unavailable"),
        (["archive", "--before", "2026-01-01"], "a service is unreachable"),
        (["switch", "status"], "Redis unavailable"),
        (["statement", "--from", "2026-03-01", "--to", "2026-04-01"], "a service is unreachable"),
        (["trace", "order", "a", "o"], "a service is unreachable"),
    ],
)
def test_a_service_down_gives_one_line_and_exit_1(
    nothing_up: dict[str, str], args: list[str], says: str
) -> None:
    done = cli(nothing_up, *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: {says} (") and len(done.stderr.strip().splitlines()) == 1, (
        done.stderr
    )


def test_export_leaves_no_file_when_it_fails(nothing_up: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    done = cli(nothing_up, "export", "-o", str(out))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.glob("records.jsonl*")) == []


def test_a_bad_setting_is_named() -> None:
    done = cli({**os.environ, "COSTTRACE_PARTITIONS": "abc"}, "topics", "list")
    assert done.returncode == 1
    assert (
        done.stderr.startswith("Error: invalid setting: COSTTRACE_PARTITIONS='abc': ")
        and len(done.stderr.strip().splitlines()) == 1
    ), done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["repartition", "--to-prefix", "n", "--to-app-id", "n", "--partitions", "0"],
        ["archive", "--before", "2026-01-01", "--chunk", "0"],
    ],
)
def test_counts_below_one_are_refused(args: list[str]) -> None:
    done = cli(dict(os.environ), *args)
    assert done.returncode == 2 and "is not in the range x>=1" in done.stderr


def test_a_bug_keeps_its_traceback() -> None:
    from costtrace.cli import unavailable

    assert unavailable(ValueError("a bug")) is None and unavailable(FileNotFoundError("x")) is None
    assert unavailable(ConnectionRefusedError(111, "refused")) is not None
