"""Integration tests run on the real stack; `deploy/stack up` is idempotent."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import REPO, Fleet


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def fleet(stack: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    f.setup()
    try:
        yield f
    finally:
        f.stop_all()
        failed = request.node.stash.get(_FAILED, None)  # None: the test body never ran
        if failed is False:
            # passed: its topics go (a broker that accumulates thousands of partitions slows down)
            try:
                f.remove()
            except Exception as exc:  # what is left only costs the broker
                print(f"\nfleet {f.name}: topics and database not removed: {exc!r}")
        elif failed:
            # keep the workers' logs; the test's database stays too, named after the fleet
            keep = REPO / ".stack" / "failed-tests" / f"{f.name}-{request.node.name}"[:120]
            shutil.copytree(tmp_path, keep, ignore=shutil.ignore_patterns("state-*"), dirs_exist_ok=True)
            print(f"\nfleet {f.name}: logs kept in {keep}, database {f.name}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
