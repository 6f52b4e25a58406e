"""A faust agent that only iterates the allocator's input topics: the ceiling for the allocator.

Prints `seen <t> <n>` once a second while events arrive (t: wall time of the
latest event, n: events so far); settings from COSTTRACE_* like the real worker.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import faust

from costtrace.fleet.app import _base_config
from costtrace.fleet.internals import RAW, run_worker
from costtrace.fleet.settings import Settings, fleet_catalogue


def main() -> None:
    settings = Settings()
    cat = fleet_catalogue(settings)
    app = faust.App(**_base_config(settings, f"{settings.app_id}-iterate"), store="memory://")
    seen = 0
    latest = 0.0  # when the latest event was seen (not when it was reported)

    @app.agent(app.topic(*cat.inputs, **RAW), name="iterate")
    async def iterate(stream: Any) -> None:
        nonlocal seen, latest
        async for _event in stream.events():
            seen += 1
            latest = time.time()
            if seen == 1:
                print(f"seen {latest} {seen}", flush=True)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        print(f"seen {latest} {seen}", flush=True)

    run_worker(app, "warning", redirect_stdouts=False)
    sys.exit(0)


if __name__ == "__main__":
    main()
