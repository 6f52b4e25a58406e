"""The archive: records of settled orders moved out of the hot table; views over both.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE records_archive (LIKE records INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
        ALTER TABLE records_archive ADD PRIMARY KEY (record_id);
        ALTER TABLE records_archive ADD COLUMN archived_at timestamptz NOT NULL DEFAULT now();
        CREATE INDEX records_archive_by_account ON records_archive (account_id, step, seq);

        -- every record, hot or archived: what exports, reports and the reconciler read
        CREATE VIEW all_records AS
            SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
                   transfer_id, merchant_id, step, seq, source, received_at, persisted_at
            FROM records
            UNION ALL
            SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
                   transfer_id, merchant_id, step, seq, source, received_at, persisted_at
            FROM records_archive;

        CREATE OR REPLACE VIEW stock AS
            SELECT account_id, batch_id, budget_id,
                   sum(amount) FILTER (WHERE kind IN ('issue', 'open', 'transfer_in')) AS amount,
                   sum(amount) AS remaining
            FROM all_records
            WHERE batch_id <> 'SUSPENSE'
            GROUP BY account_id, batch_id, budget_id;

        CREATE OR REPLACE VIEW debt AS
            SELECT account_id, -sum(amount) AS debt
            FROM all_records
            WHERE batch_id = 'SUSPENSE'
            GROUP BY account_id
            HAVING sum(amount) <> 0;

        -- orders archived, and whether their account's state has been told (the archive topic)
        CREATE TABLE archived_orders (
            account_id  text NOT NULL,
            order_id    text NOT NULL,
            records     integer NOT NULL,
            amount      bigint NOT NULL,
            archived_at timestamptz NOT NULL DEFAULT now(),
            state_told  boolean NOT NULL DEFAULT false,
            PRIMARY KEY (account_id, order_id)
        );
        CREATE INDEX archived_orders_untold ON archived_orders (account_id) WHERE NOT state_told;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE VIEW stock AS
            SELECT account_id, batch_id, budget_id,
                   sum(amount) FILTER (WHERE kind IN ('issue', 'open', 'transfer_in')) AS amount,
                   sum(amount) AS remaining
            FROM records WHERE batch_id <> 'SUSPENSE' GROUP BY account_id, batch_id, budget_id;
        CREATE OR REPLACE VIEW debt AS
            SELECT account_id, -sum(amount) AS debt FROM records WHERE batch_id = 'SUSPENSE'
            GROUP BY account_id HAVING sum(amount) <> 0;
        DROP VIEW all_records; DROP TABLE archived_orders; DROP TABLE records_archive;
        """
    )
