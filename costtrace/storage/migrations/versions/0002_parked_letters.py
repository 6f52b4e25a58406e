"""Parked letters (the compensator's final stop) and each dead letter's first-attempt origin.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute(
        """
        -- topic:partition@offset of the first attempt; null on a first attempt itself
        ALTER TABLE dead_letters ADD COLUMN origin text;
        CREATE INDEX dead_letters_by_origin ON dead_letters
            ((coalesce(origin, source_topic || ':' || source_partition || '@' || source_offset)));

        -- what the compensator gave up on: final reasons, or out of attempts
        CREATE TABLE parked_letters (
            origin           text PRIMARY KEY,   -- first attempt's topic:partition@offset
            event_id         text,
            account_id       text,
            reason           text NOT NULL,      -- of the last attempt
            detail           text,
            attempts         integer NOT NULL,
            why              text NOT NULL,      -- 'final reason' | 'out of attempts'
            topic            text NOT NULL,      -- where `costtrace dlq replay` sends it
            message_key      text,
            payload          text NOT NULL,
            payload_encoding text NOT NULL,
            parked_at        timestamptz NOT NULL,
            status           text NOT NULL DEFAULT 'parked',  -- parked | replayed | discarded
            resolved_at      timestamptz,
            note             text
        );
        CREATE INDEX parked_by_status ON parked_letters (status, reason, parked_at);
        CREATE INDEX parked_by_account ON parked_letters (account_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE parked_letters; DROP INDEX dead_letters_by_origin;")
    op.execute("ALTER TABLE dead_letters DROP COLUMN origin;")
