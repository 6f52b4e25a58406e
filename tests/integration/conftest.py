"""Integration tests run on the real stack; `deploy/stack up` is idempotent."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import REPO, Fleet


@pytest.fixture(scope="session")
def stack() -> None:
    subprocess.run([str(REPO / "deploy" / "stack"), "up"], check=True, timeout=600, stdout=subprocess.DEVNULL)


@pytest.fixture
def fleet(stack: None, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    f.setup()
    try:
        yield f
    finally:
        f.stop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
