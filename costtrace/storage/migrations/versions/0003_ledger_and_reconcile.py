"""The ledger's balances (from the accounting service) and the reconciler's runs and findings.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ledger_balances (
            account_id text PRIMARY KEY,
            balance    bigint NOT NULL,
            as_of      timestamptz,
            loaded_at  timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE reconcile_runs (
            run_id      bigserial PRIMARY KEY,
            started_at  timestamptz NOT NULL,
            finished_at timestamptz,
            status      text NOT NULL,  -- running | ok | mismatches | lost_lock | failed
            holder      text NOT NULL,  -- who held the lock
            accounts    integer,        -- accounts compared with the ledger
            mismatches  integer,
            old_debts   integer,
            actions     jsonb NOT NULL DEFAULT '{}'
        );

        CREATE TABLE reconcile_findings (
            run_id     bigint NOT NULL REFERENCES reconcile_runs (run_id),
            kind       text NOT NULL,
            account_id text,
            detail     jsonb NOT NULL
        );
        CREATE INDEX reconcile_findings_by_run ON reconcile_findings (run_id, kind);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE reconcile_findings; DROP TABLE reconcile_runs; DROP TABLE ledger_balances;")
