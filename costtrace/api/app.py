"""The read API over PostgreSQL: statements and cost traces, JSON or CSV, with its web page.

FastAPI, because it is what a Python team reaches for to serve JSON: the
OpenAPI description (`/openapi.json`, browsable at `/docs`) comes from the
same typed signatures that validate requests, it runs on asyncio with the
asyncpg pool the workers already use, and it brings no server of its own
(uvicorn runs it). Every answer is read-only; nothing here writes.

Errors a caller can act on, never a stack trace: 400 naming the parameter,
404 for an account, order or batch no record names, 503 (with Retry-After)
while PostgreSQL is down; the pool is made again on the next request, so the
API recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from importlib.resources import files
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from costtrace.finance import formats, queries
from costtrace.finance.statement import Period

log = logging.getLogger(__name__)

Format = Literal["json", "csv"]
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                asyncpg.PostgresConnectionError, asyncpg.ConnectionDoesNotExistError)  # fmt: skip


class Database:
    """A pool made on first use, and again after PostgreSQL went away."""

    def __init__(self, dsn: str, connect_timeout: float = 2.0) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn, min_size=0, max_size=8, timeout=self.connect_timeout, command_timeout=30
                )
            return self._pool

    async def forget(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class Unavailable(Exception):
    """PostgreSQL did not answer."""


def _csv(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"parameter '{name}': {value!r} is not an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def create_app(dsn: str) -> FastAPI:
    db = Database(dsn)
    registry = CollectorRegistry()
    requests = Counter("costtrace_api_requests", "API requests, by route and status.", ["route", "status"],
                       registry=registry)  # fmt: skip
    seconds = Histogram("costtrace_api_request_duration_seconds", "API answer time, by route.", ["route"],
                        registry=registry)  # fmt: skip
    for route in ("/v1/statement", "/v1/trace/order", "/v1/trace/account", "/v1/trace/batch"):
        for status in ("200", "400", "404", "500", "503"):
            requests.labels(route, status)  # at 0 from the start: the first error is an increase

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await db.close()

    app = FastAPI(
        title="costtrace read API",
        version="1",
        summary="Which budgets paid for every coin spent: settlement statements and cost traces.",
        lifespan=lifespan,
    )

    async def ask(work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        try:
            pool = await db.pool()
            async with pool.acquire() as conn:
                return await work(conn)
        except _UNAVAILABLE as exc:
            await db.forget()
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path.startswith("/v1/") else None
        if route is not None:
            requests.labels(route, str(response.status_code)).inc()
            seconds.labels(route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body")]
            problems.append(f"parameter '{'.'.join(where) or '?'}': {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=400)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(queries.NotFound)
    async def not_found(request: Request, exc: queries.NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc.args[0] if exc.args else exc)}, status_code=404)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        log.warning("PostgreSQL unavailable: %s", exc)
        return JSONResponse({"detail": "the database is not reachable; try again shortly"}, status_code=503,
                            headers={"Retry-After": "5"})  # fmt: skip

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error answering %s", request.url.path)
        return JSONResponse({"detail": "internal error (logged)"}, status_code=500)

    @app.get("/v1/statement", summary="Settlement statement of a period, per budget (and merchant)")
    async def statement(
        start: Annotated[date, Query(alias="from", description="first posting day (UTC), YYYY-MM-DD")],
        end: Annotated[date, Query(alias="to", description="day after the last (UTC, excluded)")],
        by: Annotated[Literal["budget", "budget,merchant"], Query()] = "budget",
        format: Format = "json",
    ) -> Any:
        period = Period(start, end).check()
        result = await ask(lambda conn: queries.statement(conn, period, by_merchant=by == "budget,merchant"))
        if format == "csv":
            return _csv(formats.statement_csv(result), f"statement-{start}-{end}.csv")
        return result.as_dict()

    @app.get("/v1/trace/order", summary="Which batches and budgets paid for an order, with its refunds")
    async def trace_order(
        account_id: Annotated[str, Query(min_length=1, max_length=128)],
        order_id: Annotated[str, Query(min_length=1, max_length=128)],
        format: Format = "json",
    ) -> Any:
        trace = await ask(lambda conn: queries.order_trace(conn, account_id, order_id))
        if format == "csv":
            rows = [m.as_dict() for m in trace.movements]
            return _csv(formats.to_csv(rows, formats.MOVEMENT_COLUMNS), f"order-{order_id}.csv")
        return trace.as_dict()

    @app.get("/v1/trace/account", summary="An account's stock record: open batches in FIFO order, and debt")
    async def trace_account(
        account_id: Annotated[str, Query(min_length=1, max_length=128)],
        at: Annotated[str | None, Query(description="as posted at this time (ISO 8601); default now")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        offset: Annotated[int, Query(ge=0)] = 0,
        format: Format = "json",
    ) -> Any:
        when = _instant(at, "at")
        trace = await ask(lambda conn: queries.account_trace(conn, account_id, when))
        page = [b.as_dict(trace.at) for b in trace.batches[offset : offset + limit]]
        if format == "csv":
            return _csv(formats.to_csv(page, formats.BATCH_COLUMNS), f"account-{account_id}.csv")
        out = trace.as_dict()
        out["batches"] = page
        out["total_batches"] = len(trace.batches)
        out["next_offset"] = offset + limit if offset + limit < len(trace.batches) else None
        return out

    @app.get("/v1/trace/batch", summary="Where a batch's coins went")
    async def trace_batch(
        account_id: Annotated[str, Query(min_length=1, max_length=128)],
        batch_id: Annotated[str, Query(min_length=1, max_length=400)],
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        cursor: Annotated[str | None, Query(description="next_cursor of the page before")] = None,
        format: Format = "json",
    ) -> Any:
        trace = await ask(lambda conn: queries.batch_trace(conn, account_id, batch_id, limit, cursor))
        if format == "csv":
            rows = [m.as_dict() for m in trace.movements]
            return _csv(formats.to_csv(rows, formats.MOVEMENT_COLUMNS), f"batch-{batch_id}.csv")
        return trace.as_dict()

    @app.get("/livez", include_in_schema=False)
    async def livez() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> PlainTextResponse:
        try:
            await ask(lambda conn: conn.fetchval("SELECT 1"))
        except Unavailable as exc:
            return PlainTextResponse(f"database not reachable: {exc}\n", status_code=503)
        return PlainTextResponse("ok\n")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    page = files("costtrace.api").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
