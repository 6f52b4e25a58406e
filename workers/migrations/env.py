"""Alembic environment: runs the SQL migrations online against COSTTRACE_POSTGRES_DSN."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

url = context.config.get_main_option("sqlalchemy.url")
assert url, "set sqlalchemy.url (costtrace db migrate does)"
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
