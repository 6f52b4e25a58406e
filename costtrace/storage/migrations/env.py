"""Alembic environment: runs the SQL migrations online against COSTTRACE_POSTGRES_DSN.

One migration at a time per database: every sink's init container runs
`costtrace db migrate`, and two at once on a new database collided (one
failed on a duplicate type). A session-level advisory lock, taken before
Alembic reads the schema's version, makes the second wait and then find
nothing to do.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

MIGRATION_LOCK = 0x636F7374  # pg_advisory_lock key: "cost"

url = context.config.get_main_option("sqlalchemy.url")
assert url, "set sqlalchemy.url (costtrace db migrate does)"
engine = create_engine(url)
with engine.connect() as connection:
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
    connection.commit()  # the lock is the session's: it outlives this transaction
    try:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.rollback()
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        connection.commit()
engine.dispose()
