"""The allocator's app, built without a broker: what it answers before any of its services start."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from costtrace.fleet.app import allocator_app
from costtrace.fleet.compensator import compensator_app
from costtrace.fleet.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("build", [allocator_app, compensator_app], ids=["allocator", "compensator"])
async def test_health_answers_before_the_consumer_and_the_tables_recovery_start(
    build: object, tmp_path: Path
) -> None:
    port = free_port()
    settings = Settings(
        kafka_bootstrap="127.0.0.1:1", state_dir=tmp_path / "state", http_host="127.0.0.1", http_port=port
    )
    app = build(settings)  # type: ignore[operator]
    await app.on_first_start()  # what mode awaits before it starts any of the app's services
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/livez") as live:
            assert (live.status, await live.text()) == (200, "ok\n")
        async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
            assert (ready.status, await ready.text()) == (503, "not yet joined its consumer group\n")
        async with http.get(f"http://127.0.0.1:{port}/metrics") as metrics:
            assert metrics.status == 200 and "costtrace_worker_ready 0.0" in await metrics.text()
