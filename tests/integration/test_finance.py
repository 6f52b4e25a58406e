"""Finance's side on a real PostgreSQL: the statement against replay's records, the traces against the
model's own state, the read API over HTTP (PostgreSQL going away and coming back), and the web page in a
real headless Chromium.

The records are replay's of a sample day, posted through the sink's own statement
(`Database.write_records`, which keeps the day summaries) on chosen days.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import uvicorn

from costtrace.api.app import create_app
from costtrace.contract.records import SUSPENSE
from costtrace.finance import queries
from costtrace.finance.statement import Period, Posted, build, flows_of_records
from costtrace.model.replay import replay
from costtrace.model.state import MemoryStore
from costtrace.ops.sample import encode_event, generate_events
from costtrace.storage.db import Database, migrate
from dev.demo import stack_env
from dev.harness import create_database, drop_database
from tests.conftest import REPO

DAYS = [datetime(2026, 2, 27, 10, tzinfo=UTC), datetime(2026, 3, 10, 23, 59, tzinfo=UTC),
        datetime(2026, 4, 2, 0, 1, tzinfo=UTC)]  # fmt: skip
PERIODS = [
    Period(date(2026, 2, 1), date(2026, 3, 1)), Period(date(2026, 3, 1), date(2026, 4, 1)),
    Period(date(2026, 4, 1), date(2026, 5, 1)), Period(date(2026, 2, 15), date(2026, 3, 11)),
]  # fmt: skip


@pytest.fixture(scope="module")
def db(stack: None) -> Iterator[str]:
    """A database of its own, migrated."""
    admin = stack_env()["COSTTRACE_POSTGRES_DSN"]
    name = f"tfin{uuid.uuid4().hex[:10]}"
    dsn = asyncio.run(create_database(admin, name))
    migrate(dsn)
    yield dsn
    asyncio.run(drop_database(admin, name))


class Day:
    """Replay's records of a sample log, as the sink's rows, and the model's state after it."""

    def __init__(self) -> None:
        events = list(generate_events(3000, 120, seed=11, skew=1.2))
        # and orders larger than their accounts' stock at the end, so that some debt stays on SUSPENSE
        events += [
            {"event_id": f"big-{i}", "type": "consumed", "account_id": f"acct-{i:06d}",
             "order_id": f"big-{i}", "amount": 10**9, "merchant_id": "m-big",
             "occurred_at": "2026-12-31T00:00:00Z"}
            for i in range(5)
        ]  # fmt: skip
        lines = [encode_event(e) for e in events]
        self.occurred = {
            e["event_id"]: e["occurred_at"] for e in events if isinstance(e, dict) and "_raw" not in e
        }
        self.store = MemoryStore()
        out = io.BytesIO()
        replay(lines, out, self.store)
        self.records = [
            r for r in map(msgspec.json.decode, out.getvalue().splitlines()) if r["kind"] != "rejected"
        ]
        self.rows: list[tuple[Any, ...]] = []
        steps: dict[str, tuple[str, int]] = {}
        for r in self.records:
            event, step = steps.get(r["account_id"], ("", -1))
            if event != r["event_id"]:
                event, step = r["event_id"], step + 1
            steps[r["account_id"]] = (event, step)
            occurred = self.occurred.get(r["event_id"])
            self.rows.append((
                r["record_id"], r["event_id"], r["kind"], r["account_id"], r["batch_id"], r["budget_id"],
                r["amount"], r.get("order_id"), r.get("refund_id"), r.get("transfer_id"),
                r.get("merchant_id"),
                step, int(r["record_id"].rsplit("-", 1)[1]), "sample", None,
                None if occurred is None else datetime.fromisoformat(occurred.replace("Z", "+00:00")),
            ))  # fmt: skip
        third = len(self.rows) // 3
        self.chunks = [self.rows[:third], self.rows[third : 2 * third], self.rows[2 * third :]]

    def posted(self) -> list[Posted]:
        out = []
        for chunk, day in zip(self.chunks, DAYS, strict=True):
            for row in chunk:
                occurred = (row[15] or day).astimezone(UTC).date()
                out.append(Posted(row[5], row[10], row[2], row[6], day.date(), occurred))
        return out


@pytest.fixture(scope="module")
def day(db: str) -> Day:
    sample = Day()

    async def post() -> None:
        database = Database(db)
        try:
            for chunk, when in zip(sample.chunks, DAYS, strict=True):
                for i in range(0, len(chunk), 500):  # as the sink does: many batches
                    await database.write_records(chunk[i : i + 500], posted_at=when)
        finally:
            await database.close()

    asyncio.run(post())
    return sample


def ask(dsn: str, work: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


# -- the statement ------------------------------------------------------------------------------------


def test_the_statement_reconciles_exactly_with_replay_s_records(db: str, day: Day) -> None:
    late = datetime(2026, 6, 1, tzinfo=UTC)
    for period in PERIODS:
        for by_merchant in (False, True):
            got = ask(db, lambda conn, p=period, m=by_merchant: queries.statement(conn, p, m, now=late))
            budgets, merchants = flows_of_records(day.posted(), period)
            expected = build(period, budgets, merchants if by_merchant else None)
            assert got.as_dict() == expected.as_dict(), (period, by_merchant)
            assert got.closed
        # without the summaries: each budget's closing is the sum of its records posted before the end
        closing: dict[str, int] = {}
        for p in day.posted():
            if p.posted_on < period.end:
                closing[p.budget_id] = closing.get(p.budget_id, 0) + p.amount
        lines = {line.budget_id: line.closing for line in got.lines}
        assert lines == closing
    # and the debt line is the model's debt: what replay's store says is owed on SUSPENSE
    whole = ask(db, lambda conn: queries.statement(conn, Period(date(2026, 1, 1), date(2026, 5, 1))))
    debt = {line.budget_id: line.closing for line in whole.lines}.get(SUSPENSE, 0)
    assert -debt == day.store.totals()[1] > 0


def test_posting_a_batch_again_changes_no_statement(db: str, day: Day) -> None:
    period = Period(date(2026, 3, 1), date(2026, 4, 1))
    before = ask(db, lambda conn: queries.statement(conn, period, True))

    async def again() -> None:
        database = Database(db)
        try:  # a redelivered batch, posted on a later day: its rows are held already
            await database.write_records(day.chunks[1][:700], posted_at=DAYS[2])
        finally:
            await database.close()

    asyncio.run(again())
    assert ask(db, lambda conn: queries.statement(conn, period, True)).as_dict() == before.as_dict()


def test_a_period_not_over_is_said_to_be_open(db: str, day: Day) -> None:
    today = datetime.now(UTC).date()
    period = Period(today, today + timedelta(days=1))
    assert not ask(db, lambda conn: queries.statement(conn, period)).closed


# -- traces -------------------------------------------------------------------------------------------


def test_every_account_s_stock_record_is_the_model_s_fifo_and_debt(db: str, day: Day) -> None:
    accounts = sorted({r["account_id"] for r in day.records})
    received = 0
    for account in accounts:
        trace = ask(db, lambda conn, a=account: queries.account_trace(conn, a))
        state = day.store.account(account).head
        assert [(b.batch_id, b.budget_id, b.remaining) for b in trace.batches] == [
            (b.batch_id, b.budget_id, b.remaining) for b in state.open
        ], account
        assert [
            None if b.issued_at is None else round(b.issued_at.timestamp() * 1000) for b in trace.batches
        ] == [b.issued_ns // 1_000_000 for b in state.open], (
            account
        )  # a received batch keeps its source's issuance time
        assert trace.debt == state.debt()
        received += sum("/" in b.batch_id for b in trace.batches)
    assert received > 0  # transfers were traced back to their source batches


def test_an_order_s_trace_sums_its_records_budget_by_budget(db: str, day: Day) -> None:
    orders: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in day.records:
        if r.get("order_id"):
            orders.setdefault((r["account_id"], r["order_id"]), []).append(r)
    kinds_seen: set[str] = set()
    for (account, order), records in list(orders.items())[:300]:
        trace = ask(db, lambda conn, a=account, o=order: queries.order_trace(conn, a, o))
        assert [m.record_id for m in trace.movements] == [r["record_id"] for r in records]
        for share in trace.budgets:
            mine = [r for r in records if r["budget_id"] == share.budget_id]
            assert share.net == -sum(r["amount"] for r in mine if r["kind"] != "refund") - sum(
                r["amount"] for r in mine if r["kind"] == "refund"
            )
        assert trace.on_suspense == -sum(r["amount"] for r in records if r["budget_id"] == SUSPENSE)
        assert trace.amount == -sum(r["amount"] for r in records if r["kind"] == "consume")
        kinds_seen |= {r["kind"] for r in records}
    assert {"consume", "refund", "trueup"} <= kinds_seen


def test_archived_records_stay_in_every_trace_and_statement(db: str, day: Day) -> None:
    r = next(r for r in day.records if r["kind"] == "refund")
    account, order = r["account_id"], r["order_id"]
    period = Period(date(2026, 2, 1), date(2026, 5, 1))
    before = (ask(db, lambda conn: queries.order_trace(conn, account, order)),
              ask(db, lambda conn: queries.statement(conn, period, True)).as_dict())  # fmt: skip

    async def archive(conn: asyncpg.Connection) -> None:
        from costtrace.storage.db import RECORD_COLUMNS

        cols = ", ".join(n for n, _ in RECORD_COLUMNS) + ", persisted_at"
        where = "account_id = $1 AND order_id = $2"
        async with conn.transaction():
            copy = f"INSERT INTO records_archive ({cols}) SELECT {cols} FROM records WHERE {where}"
            await conn.execute(copy, account, order)
            await conn.execute(f"DELETE FROM records WHERE {where}", account, order)

    ask(db, archive)
    after = (ask(db, lambda conn: queries.order_trace(conn, account, order)),
             ask(db, lambda conn: queries.statement(conn, period, True)).as_dict())  # fmt: skip
    assert after == before


def test_a_batch_s_coins_are_followed_to_orders_and_receiving_accounts(db: str, day: Day) -> None:
    sent = next(r for r in day.records if r["kind"] == "transfer_out")
    account, batch = sent["account_id"], sent["batch_id"]
    trace = ask(db, lambda conn: queries.batch_trace(conn, account, batch, limit=2))
    pages = [trace]
    while pages[-1].next_cursor is not None:
        cursor = pages[-1].next_cursor
        pages.append(
            ask(db, lambda conn, c=cursor: queries.batch_trace(conn, account, batch, limit=2, cursor=c))
        )
    movements = [m for page in pages for m in page.movements]
    mine = [r for r in day.records if r["account_id"] == account and r["batch_id"] == batch]
    assert [m.record_id for m in movements] == [r["record_id"] for r in mine]
    assert trace.remaining == sum(r["amount"] for r in mine)
    out = next(m for m in movements if m.record_id == sent["record_id"])
    received = f"{account}/{sent['transfer_id']}/{batch}"
    receiver = next(r for r in day.records if r["kind"] == "transfer_in" and r["batch_id"] == received)
    assert out.counterparty == receiver["account_id"]


def test_unknown_names_are_not_found(db: str, day: Day) -> None:
    for work in (lambda conn: queries.order_trace(conn, "nobody", "o1"),
                 lambda conn: queries.account_trace(conn, "nobody"),
                 lambda conn: queries.batch_trace(conn, "nobody", "b1")):  # fmt: skip
        with pytest.raises(queries.NotFound, match="nobody"):
            ask(db, work)


# -- the read API, over HTTP ----------------------------------------------------------------------------


class Proxy:
    """A TCP relay to PostgreSQL that a test can cut and restore: the database going away and coming back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def up(self) -> None:
        async def start() -> None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.server = await asyncio.start_server(self._relay, sock=sock)

        self.sock.close()
        self._call(start())

    def down(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for link in self.links:
                link.transport.abort()
            self.links.clear()

        self._call(stop())


class Api:
    """`costtrace.api` served by uvicorn in this process, on a port of its own."""

    def __init__(self, dsn: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(dsn), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)

    def get(self, path: str) -> tuple[int, str, dict[str, str]]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def proxy(db: str) -> Iterator[Proxy]:
    host_port = db.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    relay = Proxy((host, int(port)))
    relay.up()
    yield relay
    relay.down()


@pytest.fixture(scope="module")
def api(db: str, day: Day, proxy: Proxy) -> Iterator[Api]:
    # through the relay: the test can take PostgreSQL away from the API alone
    server = Api(db.replace(db.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{proxy.port}"))
    yield server
    server.stop()


def test_the_api_answers_the_statement_and_the_traces_in_json_and_csv(api: Api, db: str, day: Day) -> None:
    status, body, _ = api.get("/v1/statement?from=2026-03-01&to=2026-04-01&by=budget,merchant")
    assert status == 200
    direct = ask(db, lambda conn: queries.statement(conn, Period(date(2026, 3, 1), date(2026, 4, 1)), True))
    assert json.loads(body) == json.loads(json.dumps(direct.as_dict()))
    status, body, headers = api.get("/v1/statement?from=2026-03-01&to=2026-04-01&format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert {r["budget_id"]: int(r["closing"]) for r in rows} == {
        line.budget_id: line.closing for line in direct.lines
    }

    r = next(r for r in day.records if r["kind"] == "trueup" and r["budget_id"] != SUSPENSE)
    query = urllib.parse.urlencode({"account_id": r["account_id"], "order_id": r["order_id"]})
    status, body, _ = api.get(f"/v1/trace/order?{query}")
    trace = json.loads(body)
    assert status == 200 and r["record_id"] in [m["record_id"] for m in trace["movements"]]
    assert any(b["budget_id"] == r["budget_id"] and b["trueups"] > 0 for b in trace["budgets"])

    account = max({x["account_id"] for x in day.records}, key=lambda a: len(day.store.account(a).head.open))
    status, body, _ = api.get(f"/v1/trace/account?account_id={account}&limit=1")
    page = json.loads(body)
    assert status == 200 and len(page["batches"]) == 1 and page["total_batches"] > 1
    assert page["next_offset"] == 1
    status, body, _ = api.get(f"/v1/trace/account?account_id={account}&format=csv")
    assert status == 200 and len(body.strip().splitlines()) == 1 + page["total_batches"]

    paths = json.loads(api.get("/openapi.json")[1])["paths"]
    assert {"/v1/statement", "/v1/trace/order", "/v1/trace/account", "/v1/trace/batch"} <= set(paths)
    assert 'costtrace_api_requests_total{route="/v1/statement",status="200"}' in api.get("/metrics")[1]


def test_bad_requests_name_their_parameter_and_unknown_names_are_404(api: Api) -> None:
    cases = {
        "/v1/statement?from=2026-13-01&to=2026-04-01": (400, "'from'"),
        "/v1/statement?from=2026-03-01": (400, "'to'"),
        "/v1/statement?from=2026-04-01&to=2026-03-01": (400, "ends"),
        "/v1/statement?from=2026-03-01&to=2026-04-01&by=merchant": (400, "'by'"),
        "/v1/trace/account?account_id=a&at=yesterday": (400, "'at'"),
        "/v1/trace/account?account_id=a&limit=0": (400, "'limit'"),
        "/v1/trace/batch?account_id=a&batch_id=b&cursor=x": (400, "cursor"),
        "/v1/trace/order?account_id=nobody&order_id=o1": (404, "nobody"),
        "/v1/trace/account?account_id=nobody": (404, "nobody"),
        "/v1/trace/batch?account_id=nobody&batch_id=b": (404, "nobody"),
    }
    for path, (status, said) in cases.items():
        got, body, _ = api.get(path)
        assert (got, said in json.loads(body)["detail"]) == (status, True), (path, body)
        assert "Traceback" not in body


def test_postgres_gone_gives_503_and_the_api_comes_back_by_itself(api: Api, proxy: Proxy) -> None:
    path = "/v1/statement?from=2026-03-01&to=2026-04-01"
    assert api.get(path)[0] == 200
    proxy.down()
    try:
        status, body, headers = api.get(path)
        assert (
            status == 503 and "database" in json.loads(body)["detail"] and headers.get("retry-after") == "5"
        )
        assert api.get("/readyz")[0] == 503 and api.get("/livez")[0] == 200
    finally:
        proxy.up()
    deadline = time.monotonic() + 30
    while api.get(path)[0] != 200:
        assert time.monotonic() < deadline, "the API did not recover"
        time.sleep(0.5)
    assert api.get("/readyz")[0] == 200


# -- the web page, in a real browser ----------------------------------------------------------------------


def test_the_page_shows_the_statement_and_looks_an_order_up_in_chromium(api: Api, day: Day) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "headless Chromium is missing: deploy/stack up installs it"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(browser, 30)
    try:
        browser.get(api.url + "/")
        for field, value in (("from", "2026-03-01"), ("to", "2026-04-01")):  # date inputs take ISO values
            browser.execute_script(
                "arguments[0].value = arguments[1]", browser.find_element(By.ID, field), value
            )
        browser.find_element(By.ID, "show-statement").click()
        wait.until(
            expected_conditions.text_to_be_present_in_element((By.ID, "statement-status"), "2026-03-01")
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "#statement tbody tr")
        budgets = [row.find_elements(By.TAG_NAME, "td")[0].text for row in rows]
        assert "SUSPENSE" in budgets and budgets[-1] == "TOTAL"
        href = browser.find_element(By.ID, "download").get_attribute("href")
        assert href is not None and href.endswith("from=2026-03-01&to=2026-04-01&by=budget&format=csv")
        # sorting: a click on 'closing' orders the budgets by it
        browser.find_element(By.CSS_SELECTOR, "#statement th[data-column='closing']").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#statement tbody tr:not(.total)")
        closings = [int(row.find_elements(By.TAG_NAME, "td")[9].text.replace(",", "")) for row in rows]
        assert closings == sorted(closings)

        r = next(r for r in day.records if r["kind"] == "trueup" and r["budget_id"] != SUSPENSE)
        browser.find_element(By.ID, "account").send_keys(r["account_id"])
        browser.find_element(By.ID, "order").send_keys(r["order_id"])
        browser.find_element(By.ID, "lookup").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "lookup-status"), r["order_id"]))
        shares = browser.find_elements(By.CSS_SELECTOR, "#order-budgets tbody tr")
        assert r["budget_id"] in [row.find_elements(By.TAG_NAME, "td")[0].text for row in shares]
        kinds = [row.find_elements(By.TAG_NAME, "td")[0].text
                 for row in browser.find_elements(By.CSS_SELECTOR, "#lookup-table tbody tr")]  # fmt: skip
        assert "trueup" in kinds and "consume" in kinds

        browser.find_element(By.ID, "order").clear()
        browser.find_element(By.ID, "account").clear()
        browser.find_element(By.ID, "account").send_keys("nobody")
        browser.find_element(By.ID, "lookup").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "lookup-status"), "nobody"))
        assert browser.find_element(By.ID, "lookup-status").get_attribute("class") == "error"
    finally:
        browser.quit()


# -- the commands ---------------------------------------------------------------------------------------


def costtrace(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COSTTRACE_POSTGRES_DSN": db}
    return subprocess.run([sys.executable, "-m", "costtrace.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)  # fmt: skip


def test_the_commands_print_the_statement_and_traces_and_say_what_is_unknown(
    db: str, day: Day, tmp_path: Path
) -> None:
    out = tmp_path / "march.csv"
    done = costtrace(db, "statement", "--from", "2026-03-01", "--to", "2026-04-01", "--format", "csv", "-o",
                     str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    direct = ask(db, lambda conn: queries.statement(conn, Period(date(2026, 3, 1), date(2026, 4, 1))))
    rows = list(csv.DictReader(out.open()))
    assert {r["budget_id"]: int(r["net_consumed"]) for r in rows} == {
        line.budget_id: line.net_consumed for line in direct.lines
    }
    march = ("--from", "2026-03-01", "--to", "2026-04-01")
    table = costtrace(db, "statement", *march, "--by", "budget,merchant")
    assert table.returncode == 0 and "SUSPENSE (debt)" in table.stdout and "TOTAL" in table.stdout
    r = next(r for r in day.records if r["kind"] == "refund")
    order = costtrace(db, "trace", "order", r["account_id"], r["order_id"], "--format", "json")
    assert r["record_id"] in [m["record_id"] for m in json.loads(order.stdout)["movements"]]
    account = costtrace(db, "trace", "account", r["account_id"])
    assert account.returncode == 0 and f"account {r['account_id']}" in account.stdout
    batch = costtrace(db, "trace", "batch", r["account_id"], r["batch_id"], "--format", "csv")
    assert batch.returncode == 0 and r["event_id"] in batch.stdout  # the refund, on the batch it went back to
    missing = costtrace(db, "trace", "order", "nobody", "o1")
    assert missing.returncode == 1 and missing.stderr == "Error: no order 'o1' on account 'nobody'\n"
