"""Fixtures shared across the test tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack() -> None:
    """The local stack, up (idempotent): Kafka, PostgreSQL, Redis, and Prometheus' tools."""
    subprocess.run([str(REPO / "deploy" / "stack"), "up"], check=True, timeout=600, stdout=subprocess.DEVNULL)
