"""Records, dead letters, and the stock and debt views.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE records (
            record_id    text PRIMARY KEY,
            event_id     text NOT NULL,
            kind         text NOT NULL,
            account_id   text NOT NULL,
            batch_id     text NOT NULL,
            budget_id    text NOT NULL,
            amount       bigint NOT NULL,
            order_id     text,
            refund_id    text,
            transfer_id  text,
            merchant_id  text,
            step         bigint NOT NULL,  -- the account's step: (step, seq) is replay's order
            seq          integer NOT NULL,
            source       text NOT NULL,    -- topic:partition@offset the event was read at
            received_at  timestamptz,      -- the input message's Kafka timestamp
            persisted_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX records_by_account ON records (account_id, step, seq);
        CREATE INDEX records_by_budget ON records (budget_id, kind);
        CREATE INDEX records_by_order ON records (account_id, order_id) WHERE order_id IS NOT NULL;

        CREATE TABLE dead_letters (
            source_topic      text NOT NULL,
            source_partition  integer NOT NULL,
            source_offset     bigint NOT NULL,
            event_id          text,
            account_id        text,
            reason            text NOT NULL,
            detail            text,
            message_key       text,
            payload           text NOT NULL,
            payload_encoding  text NOT NULL,
            message_timestamp timestamptz,
            attempt           integer NOT NULL,
            dead_lettered_at  timestamptz NOT NULL,
            persisted_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_topic, source_partition, source_offset)
        );
        CREATE INDEX dead_letters_by_reason ON dead_letters (reason, dead_lettered_at);
        CREATE INDEX dead_letters_by_account ON dead_letters (account_id);

        -- the stock record: every batch with what it has left
        CREATE VIEW stock AS
            SELECT account_id, batch_id, budget_id,
                   sum(amount) FILTER (WHERE kind IN ('issue', 'open', 'transfer_in')) AS amount,
                   sum(amount) AS remaining
            FROM records
            WHERE batch_id <> 'SUSPENSE'
            GROUP BY account_id, batch_id, budget_id;

        -- what each account owes on SUSPENSE
        CREATE VIEW debt AS
            SELECT account_id, -sum(amount) AS debt
            FROM records
            WHERE batch_id = 'SUSPENSE'
            GROUP BY account_id
            HAVING sum(amount) <> 0;
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW debt; DROP VIEW stock; DROP TABLE dead_letters; DROP TABLE records;")
