"""Every parked letter's history, appended and never rewritten.

`parked_letters` holds a letter's current state: a letter parked again after
a replay is `parked` once more, with no resolution and no note. What happened
to it before (each park with its reason and attempts, each replay, each
discard with its note, and who did it) is appended to `letter_history`, which
a trigger keeps append-only. Letters parked before this revision get their
park and their resolution, as far as the row still shows them.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE letter_history (
            origin    text NOT NULL,          -- the letter (parked_letters.origin)
            at        timestamptz NOT NULL,
            action    text NOT NULL,          -- parked | replayed | discarded
            reason    text,                   -- parked: the last attempt's reason
            attempts  integer,                -- parked: attempts so far
            why       text,                   -- parked: 'final reason' | 'out of attempts'
            note      text,                   -- discarded: the operator's note
            by        text                    -- replayed, discarded: who (command, user@host, reconcile run)
        );
        -- a compensator that parks a letter again after a restart writes its park once
        CREATE UNIQUE INDEX letter_history_once ON letter_history (origin, action, at);

        CREATE FUNCTION letter_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'letter_history is append-only: % refused', TG_OP;
        END $$;
        CREATE TRIGGER letter_history_append_only BEFORE UPDATE OR DELETE ON letter_history
            FOR EACH ROW EXECUTE FUNCTION letter_history_append_only();

        INSERT INTO letter_history (origin, at, action, reason, attempts, why)
            SELECT origin, parked_at, 'parked', reason, attempts, why FROM parked_letters;
        INSERT INTO letter_history (origin, at, action, note)
            SELECT origin, resolved_at, status, note FROM parked_letters
            WHERE status <> 'parked' AND resolved_at IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE letter_history;
        DROP FUNCTION letter_history_append_only();
        """
    )
