"""A faust agent that only iterates the allocator's input topics: the ceiling for the allocator.

Prints `seen <t> <n>` once a second while events arrive (t: wall time, n: events
so far); settings from COSTTRACE_* like the real worker.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import faust

from workers.app import RAW, _base_config, fleet_catalogue, run_worker
from workers.settings import Settings


def main() -> None:
    settings = Settings()
    cat = fleet_catalogue(settings)
    app = faust.App(**_base_config(settings, f"{settings.app_id}-iterate"), store="memory://")
    seen = 0
    reported = 0.0

    @app.agent(app.topic(*cat.inputs, **RAW), name="iterate")
    async def iterate(stream: Any) -> None:
        nonlocal seen, reported
        async for _event in stream.events():
            seen += 1
            now = time.time()
            if seen == 1 or now - reported >= 1.0:
                reported = now
                print(f"seen {now} {seen}", flush=True)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        print(f"seen {reported} {seen}", flush=True)

    run_worker(app, "warning", redirect_stdouts=False)
    sys.exit(0)


if __name__ == "__main__":
    main()
