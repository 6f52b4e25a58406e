"""A faust agent that only iterates the allocator's input topics: the ceiling for the allocator.

Prints `first <t>` at the first event and `done <t> <n>` when it has seen N events
(N from BENCH_EVENTS); settings from COSTTRACE_* like the real worker.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import faust

from workers.app import RAW, _base_config, fleet_catalogue
from workers.settings import Settings


def main() -> None:
    settings = Settings()
    target = int(os.environ["BENCH_EVENTS"])
    cat = fleet_catalogue(settings)
    app = faust.App(**_base_config(settings, f"{settings.app_id}-iterate"), store="memory://")
    seen = 0

    @app.agent(app.topic(*cat.inputs, **RAW), name="iterate")
    async def iterate(stream: Any) -> None:
        nonlocal seen
        async for _event in stream.events():
            seen += 1
            if seen == 1:
                print(f"first {time.time()}", flush=True)
            if seen == target:
                print(f"done {time.time()} {seen}", flush=True)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    sys.exit(0)


if __name__ == "__main__":
    main()
