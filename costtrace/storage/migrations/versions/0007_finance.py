"""Finance's side: each record's event time, summaries the statement reads, indexes the traces need.

Revision ID: 0007
Revises: 0006

`budget_days` and `merchant_days` hold the sums of record amounts by the UTC
day the sink posted them (and, for budgets, the day of their event): the
sink adds to them in the same statement that inserts the records, so they
never count a record twice or miss one (costtrace/storage/db.py,
`POST_RECORDS`). Filled here from the records already held.
"""

from alembic import op

revision = "0007"
down_revision = "0006"

_DAYS = """
    (persisted_at AT TIME ZONE 'UTC')::date AS posted_on,
    (coalesce(occurred_at, received_at, persisted_at) AT TIME ZONE 'UTC')::date AS occurred_on
"""


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE records ADD COLUMN occurred_at timestamptz;  -- the event's own time
        ALTER TABLE records_archive ADD COLUMN occurred_at timestamptz;
        CREATE OR REPLACE VIEW all_records AS
            SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
                   transfer_id, merchant_id, step, seq, source, received_at, persisted_at, occurred_at
            FROM records
            UNION ALL
            SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
                   transfer_id, merchant_id, step, seq, source, received_at, persisted_at, occurred_at
            FROM records_archive;

        -- an order's trace in the archive too; a transferred batch's source
        CREATE INDEX records_archive_by_order ON records_archive (account_id, order_id)
            WHERE order_id IS NOT NULL;
        CREATE INDEX records_by_transfer ON records (transfer_id) WHERE transfer_id IS NOT NULL;
        CREATE INDEX records_archive_by_transfer ON records_archive (transfer_id)
            WHERE transfer_id IS NOT NULL;

        CREATE TABLE budget_days (
            posted_on   date NOT NULL,   -- the UTC day the sink posted the records
            budget_id   text NOT NULL,
            kind        text NOT NULL,
            occurred_on date NOT NULL,   -- the UTC day of their events
            amount      numeric NOT NULL,
            records     bigint NOT NULL,
            PRIMARY KEY (posted_on, budget_id, kind, occurred_on)
        );
        CREATE TABLE merchant_days (
            posted_on   date NOT NULL,
            budget_id   text NOT NULL,
            merchant_id text NOT NULL,   -- '' for orders without one
            kind        text NOT NULL,   -- consume, trueup, refund
            occurred_on date NOT NULL,
            amount      numeric NOT NULL,
            records     bigint NOT NULL,
            PRIMARY KEY (posted_on, budget_id, merchant_id, kind, occurred_on)
        );
        INSERT INTO budget_days
            SELECT posted_on, budget_id, kind, occurred_on, sum(amount), count(*)
            FROM (SELECT budget_id, kind, amount, {_DAYS} FROM all_records) r
            GROUP BY posted_on, budget_id, kind, occurred_on;
        INSERT INTO merchant_days
            SELECT posted_on, budget_id, merchant_id, kind, occurred_on, sum(amount), count(*)
            FROM (SELECT budget_id, coalesce(merchant_id, '') AS merchant_id, kind, amount, {_DAYS}
                  FROM all_records WHERE kind IN ('consume', 'trueup', 'refund')) r
            GROUP BY posted_on, budget_id, merchant_id, kind, occurred_on;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE merchant_days; DROP TABLE budget_days;
        DROP INDEX records_archive_by_transfer; DROP INDEX records_by_transfer;
        DROP INDEX records_archive_by_order;
        DROP VIEW debt; DROP VIEW stock; DROP VIEW all_records;
        ALTER TABLE records_archive DROP COLUMN occurred_at;
        ALTER TABLE records DROP COLUMN occurred_at;
        CREATE VIEW all_records AS
            SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
                   transfer_id, merchant_id, step, seq, source, received_at, persisted_at
            FROM records
            UNION ALL
            SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
                   transfer_id, merchant_id, step, seq, source, received_at, persisted_at
            FROM records_archive;
        CREATE VIEW stock AS
            SELECT account_id, batch_id, budget_id,
                   sum(amount) FILTER (WHERE kind IN ('issue', 'open', 'transfer_in')) AS amount,
                   sum(amount) AS remaining
            FROM all_records WHERE batch_id <> 'SUSPENSE' GROUP BY account_id, batch_id, budget_id;
        CREATE VIEW debt AS
            SELECT account_id, -sum(amount) AS debt FROM all_records WHERE batch_id = 'SUSPENSE'
            GROUP BY account_id HAVING sum(amount) <> 0;
        """
    )
