"""PostgreSQL down or cut off mid-stream: the sink waits, retries, and loses or doubles nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from costtrace.ops.sample import encode_event, generate_events
from tests.integration.fleet import Fleet, phases


class FlakyProxy:
    """A TCP proxy to PostgreSQL that can cut every connection and refuse new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.down = False
        self.pairs: set[tuple[Any, Any]] = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.listen_port: int = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result()

    async def _serve(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        pair = (writer, up_writer)
        self.pairs.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.pairs.discard(pair)

    def set_down(self, down: bool) -> None:
        def apply() -> None:
            self.down = down
            if down:
                for a, b in list(self.pairs):
                    a.transport.abort()
                    b.transport.abort()

        self.loop.call_soon_threadsafe(apply)


def test_sink_rides_out_postgres_going_away(fleet: Fleet) -> None:
    url = urlsplit(fleet.dsn)
    proxy = FlakyProxy(url.hostname or "127.0.0.1", url.port or 5432)
    lines = [encode_event(e) for e in generate_events(600, 150, seed=21, skew=1.0)]
    fleet.start("allocator", "allocator", fleet.tmp / "state")
    sink_dsn = f"postgresql://{url.username}@127.0.0.1:{proxy.listen_port}{url.path}"
    fleet.env = {**fleet.env, "COSTTRACE_POSTGRES_DSN": sink_dsn}
    fleet.start("sink", "sink")
    fleet.env = {**fleet.env, "COSTTRACE_POSTGRES_DSN": fleet.dsn}
    for i, phase in enumerate(phases(lines)):
        fleet.publish(phase)
        if i == 3:
            proxy.set_down(True)
            time.sleep(4)  # the sink's writes fail meanwhile; nothing may be acked
            fleet.assert_running()
            proxy.set_down(False)
        fleet.drain()
    fleet.assert_replays(lines, order="file")
    log = (fleet.tmp / "sink.log").read_text(errors="replace")
    assert "retrying in" in log  # the outage was felt, and ridden out
