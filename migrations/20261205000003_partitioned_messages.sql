-- `messages` becomes a table partitioned by hash of conversation_id (#21), in two steps so a
-- live database with millions of rows keeps taking sends (docs/OPERATIONS.md, "Partitioned
-- messages"):
--
-- 1. This migration (quick, any table size) creates the partitioned table under the name
--    `messages_partitioned`, the idempotency table `message_keys`, a trigger that copies every
--    new row of today's `messages` into the partitioned one, and the view the worker reads
--    originals through. On an empty `messages` (a new install) it swaps the tables at once.
-- 2. Otherwise `haberci-backend partition-messages` copies the existing rows in batches, checks
--    that none is missing, and swaps the tables in one short transaction
--    (`messages_partitioning_swap`); the old table stays as `messages_legacy` until dropped.
--
-- Why hash of conversation_id (plans in docs/ARCHITECTURE.md): every hot query names one
-- conversation (history pages, resume, sync, the list's last message, the unread count), so
-- each one reads a single partition. A range by time would make each of them probe every
-- partition, and could not keep (conversation_id, seq) or the idempotency key unique across
-- partitions.
--
-- Invariant: a partitioned table's unique constraints must include the partition key, so the
-- idempotency key (sender_id, client_msg_id), unique across conversations (PROTOCOL: reusing a
-- client_msg_id for another conversation is refused), moves to `message_keys`. The worker
-- inserts a message's key in the statement that inserts the message; a concurrent duplicate
-- fails there (23505) and the batch is retried. Neither table is updated, only inserted into and
-- deleted from by cascades, so the keys and the messages stay one to one.

CREATE TABLE message_keys (
    sender_id       uuid   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_msg_id   uuid   NOT NULL,
    conversation_id uuid   NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
);
-- A deleted conversation's keys go with it (the cascade finds them here).
CREATE INDEX message_keys_conversation_idx ON message_keys (conversation_id);

-- The same columns, checks and foreign keys as `messages`; ids are UUIDv7 made by the worker
-- and are not looked up alone, so they are not constrained unique across partitions.
CREATE TABLE messages_partitioned (
    conversation_id    uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq                bigint      NOT NULL CHECK (seq >= 1),
    id                 uuid        NOT NULL,
    sender_id          uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_msg_id      uuid        NOT NULL,
    type               text        NOT NULL CHECK (type IN ('text', 'image', 'video', 'audio', 'file')),
    content            text        NOT NULL,
    media_id           uuid,
    media_content_type text,
    media_size         bigint      CHECK (media_size IS NULL OR media_size >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq)
) PARTITION BY HASH (conversation_id);

-- 16 partitions: at 10M rows each holds ~625K. One splits in two later by detaching it
-- (modulus 16, remainder r) and attaching modulus 32 remainders r and r + 16.
DO $$
BEGIN
    FOR r IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE messages_p%s PARTITION OF messages_partitioned
             FOR VALUES WITH (MODULUS 16, REMAINDER %s)', lpad(r::text, 2, '0'), r);
    END LOOP;
END
$$;

CREATE INDEX messages_partitioned_media_idx ON messages_partitioned (media_id)
    WHERE media_id IS NOT NULL;
-- A deleted user's messages go with them (the cascade finds them here; the old table's unique
-- (sender_id, client_msg_id) served it).
CREATE INDEX messages_partitioned_sender_idx ON messages_partitioned (sender_id);

-- Where the worker looks up a send's original by its idempotency key. Before the swap: today's
-- `messages`, whose unique key answers it. After: `message_keys`, then the one partition that
-- holds the message. (A view names tables by oid, so the swap redefines it.)
CREATE VIEW message_originals AS
    SELECT sender_id, client_msg_id, conversation_id, seq, id, created_at FROM messages;

-- Every row stored in today's `messages` while the copy runs also lands in the partitioned
-- table, with its key. This release's worker inserts the key itself in the same statement
-- (store.rs; the trigger, firing after it, then finds it there); a worker of the release
-- before, still running during a rolling upgrade, does not.
CREATE FUNCTION messages_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_partitioned (conversation_id, seq, id, sender_id, client_msg_id, type,
                                      content, media_id, media_content_type, media_size,
                                      created_at)
    VALUES (NEW.conversation_id, NEW.seq, NEW.id, NEW.sender_id, NEW.client_msg_id, NEW.type,
            NEW.content, NEW.media_id, NEW.media_content_type, NEW.media_size, NEW.created_at)
    ON CONFLICT DO NOTHING;
    INSERT INTO message_keys (sender_id, client_msg_id, conversation_id, seq)
    VALUES (NEW.sender_id, NEW.client_msg_id, NEW.conversation_id, NEW.seq)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_mirror AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_mirror();

-- Where `partition-messages` has copied up to, so that it resumes after a crash.
CREATE TABLE messages_partitioning (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    conversation_id uuid    NOT NULL,
    seq             bigint  NOT NULL
);

-- The swap: today's `messages` becomes `messages_legacy` (dropped when `drop_legacy`), the
-- partitioned table becomes `messages`, and the view reads `message_keys`. Renames take an
-- ACCESS EXCLUSIVE lock on both tables for the few milliseconds the catalog changes take; the
-- caller sets lock_timeout, and drops this function in the same transaction. Prepared statements of running processes are re-planned against
-- the new table by name (the column types are the same).
CREATE FUNCTION messages_partitioning_swap(drop_legacy boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE messages RENAME TO messages_legacy;
    DROP TRIGGER messages_mirror ON messages_legacy;
    ALTER INDEX messages_pkey RENAME TO messages_legacy_pkey;
    ALTER INDEX messages_media_idx RENAME TO messages_legacy_media_idx;
    ALTER TABLE messages_partitioned RENAME TO messages;
    ALTER INDEX messages_partitioned_pkey RENAME TO messages_pkey;
    ALTER INDEX messages_partitioned_media_idx RENAME TO messages_media_idx;
    ALTER INDEX messages_partitioned_sender_idx RENAME TO messages_sender_idx;
    CREATE OR REPLACE VIEW message_originals AS
        SELECT k.sender_id, k.client_msg_id, m.conversation_id, m.seq, m.id, m.created_at
        FROM message_keys k
        JOIN messages m ON m.conversation_id = k.conversation_id AND m.seq = k.seq;
    DROP TABLE messages_partitioning;
    DROP FUNCTION messages_mirror();
    IF drop_legacy THEN
        IF EXISTS (SELECT 1 FROM messages_legacy) THEN
            RAISE EXCEPTION 'messages_legacy is not empty; it is kept';
        END IF;
        DROP TABLE messages_legacy;
    END IF;
END
$$;

-- A new install (or one that never stored a message) swaps now. The trigger's lock (SHARE ROW
-- EXCLUSIVE, held to commit) keeps inserts out between this check and the swap.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM messages) THEN
        PERFORM messages_partitioning_swap(true);
        DROP FUNCTION messages_partitioning_swap(boolean);
    END IF;
END
$$;
