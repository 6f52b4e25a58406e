"""Dead letters keep a message's key and value as bytes; rows PostgreSQL refused are kept aside.

A producer can send any bytes, a NUL among them, which no `text` column
holds: one such message used to stop the sink for good. Key and payload are
`bytea` now (exactly what was sent); a payload too long to travel in its
letter is left out (`payload` null, `payload_size` set) and read from its input
position by the tools. `sink_rejects` keeps any message whose row PostgreSQL
refuses for its data, with the reason, so that the sink goes on.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"

_AS_BYTES = """
    ALTER COLUMN payload DROP NOT NULL,
    ALTER COLUMN payload TYPE bytea USING (
        CASE payload_encoding WHEN 'base64' THEN decode(payload, 'base64')
                              ELSE convert_to(payload, 'UTF8') END),
    ALTER COLUMN message_key TYPE bytea USING convert_to(message_key, 'UTF8'),
    ADD COLUMN payload_size bigint
"""


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE dead_letters {_AS_BYTES};
        ALTER TABLE dead_letters DROP COLUMN payload_encoding;
        ALTER TABLE parked_letters {_AS_BYTES};
        ALTER TABLE parked_letters DROP COLUMN payload_encoding;
        COMMENT ON COLUMN dead_letters.payload IS
            'the message value as sent; null when too long to carry (payload_size bytes, at its position)';

        -- messages whose rows PostgreSQL refused for their data (not for a connection): kept, counted
        CREATE TABLE sink_rejects (
            topic        text NOT NULL,
            partition    integer NOT NULL,
            "offset"     bigint NOT NULL,
            destination  text NOT NULL,          -- the table its row was for
            reason       text NOT NULL,
            message_key  bytea,
            value        bytea NOT NULL,
            headers      bytea,                  -- msgpack of [[name, value], ...]
            rejected_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, partition, "offset")
        );
        """
    )


def downgrade() -> None:
    for table in ("dead_letters", "parked_letters"):
        op.execute(
            f"""
            ALTER TABLE {table} ADD COLUMN payload_encoding text NOT NULL DEFAULT 'base64';
            ALTER TABLE {table}
                ALTER COLUMN payload TYPE text USING coalesce(encode(payload, 'base64'), ''),
                ALTER COLUMN payload SET NOT NULL,
                ALTER COLUMN message_key TYPE text USING encode(message_key, 'base64'),
                DROP COLUMN payload_size;
            """
        )
    op.execute("DROP TABLE sink_rejects;")
