"""The `costtrace` command group and what its commands share: one-line errors, files, settings."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack
from typing import Any, BinaryIO

import click


def down(service: str, exc: BaseException) -> str:
    """One line: which service did not answer, and the first line of what its client said."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{service} unavailable ({type(exc).__name__}: {first})"


_SECRET = ("password", "dsn", "url", "secret", "token")


def _setting_error(error: dict[str, Any]) -> str:
    """One setting's error, its value shown unless it may hold a secret (a password, a DSN, a URL)."""
    where = "_".join(map(str, error["loc"]))
    if not where:  # a check across settings: the message names them
        return str(error["msg"]).removeprefix("Value error, ")
    shown = "***" if any(word in where.lower() for word in _SECRET) else repr(error.get("input"))
    return f"COSTTRACE_{where.upper()}={shown}: {error['msg']}"


def unavailable(exc: BaseException) -> str | None:
    """What an operator needs of an error that is no bug: a service down, a bad setting, no schema.

    One line, naming the service or the setting; None for anything else (a
    bug keeps its traceback).
    """
    first = (str(exc).strip().splitlines() or [""])[0]
    name = type(exc).__name__
    module = type(exc).__module__
    if name == "ValidationError" and module.startswith("pydantic"):
        return f"invalid setting: {'; '.join(map(_setting_error, exc.errors()))}"  # type: ignore[attr-defined]
    if module.startswith("aiokafka"):
        return down("Kafka", exc)
    if module.startswith("redis"):
        return down("Redis", exc)
    if name in ("UndefinedTableError", "UndefinedFunctionError") and module.startswith("asyncpg"):
        return f"PostgreSQL has no costtrace schema here ({first}): run `costtrace db migrate`"
    if module.startswith(("asyncpg", "psycopg", "sqlalchemy")) and (
        "connect" in name.lower() or name in ("OperationalError", "InvalidCatalogNameError")
    ):
        return down("PostgreSQL", exc)
    if name == "UntestedVersions":  # costtrace.fleet.internals: faust, mode or aiokafka not as tested
        return first
    local = FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError
    if isinstance(exc, OSError) and not isinstance(exc, local):
        return f"a service is unreachable ({name}: {first})"
    return None


class _Main(click.Group):
    """Operator commands: a service down or a bad setting gives one line and exit 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, click.ClickException | click.exceptions.Exit | click.exceptions.Abort):
                raise
            message = unavailable(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


@click.group(cls=_Main)
@click.pass_context
def main(ctx: click.Context) -> None:
    """costtrace: trace every coin spent back to the budgets that paid for it."""
    if ctx.invoked_subcommand not in ("worker", "demo"):
        # aiokafka logs each failed connection too; the command's one line says it (a worker keeps them)
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _open_in(stack: ExitStack, path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return stack.enter_context(open(path, "rb"))


def _open_out(stack: ExitStack, path: str) -> BinaryIO:
    if path == "-":
        return sys.stdout.buffer
    return stack.enter_context(open(path, "wb", buffering=1 << 20))


def _exit_without_freeing() -> None:
    """End the process now that everything is written, leaving the replay's state to the OS.

    Freeing the state (millions of small strings and maps, in the native
    model) one by one is work nobody needs (docs/performance.md, "Replay";
    mypy ends the same way, for the same reason). Only for a command's last step: nothing after it runs,
    atexit handlers included. Not when another program runs the command in
    its own process (click's CliRunner swaps the streams): it goes on.
    """
    real = sys.__stdout__
    if real is None or sys.stdout is not real:
        return
    real.flush()
    sys.stderr.flush()
    os._exit(0)


def _kafka(settings: Any) -> dict[str, Any]:
    """The Kafka security options (TLS, SASL) every client of a command is built with."""
    from costtrace.fleet.settings import kafka_client_options

    return kafka_client_options(settings)


def _settings(**overrides: Any) -> Any:
    from costtrace.fleet.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})
