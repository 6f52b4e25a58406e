"""`costtrace db migrate` run by several sinks at once on a new database: one migrates, the others wait."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg

from dev.demo import stack_env
from dev.harness import create_database
from tests.conftest import REPO


def test_migrations_started_together_run_one_at_a_time(stack: None) -> None:
    admin = stack_env()["COSTTRACE_POSTGRES_DSN"]
    name = f"m{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(admin, name))
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "COSTTRACE_POSTGRES_DSN": dsn}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "costtrace.cli", "db", "migrate"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs]
    assert all(code == 0 for code, _ in outcomes), outcomes  # without the lock: duplicate type, one fails

    async def version() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
        finally:
            await conn.close()

    heads = sorted((REPO / "costtrace" / "storage" / "migrations" / "versions").glob("0*.py"))
    assert heads, "no migrations found"
    assert asyncio.run(version()) == heads[-1].name.split("_")[0]
