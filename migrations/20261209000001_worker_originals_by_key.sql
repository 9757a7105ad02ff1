-- #18: the worker's idempotency lookup reads `message_keys` first and touches `messages` only
-- for a key it found (a retried send: rare). Through the view `message_originals` the lookup
-- joined the keys to the 16 partitions of `messages`: Postgres planned that join on every
-- call (custom plans), or, with a generic plan, set up an index scan on each partition on
-- every call. Per call, with one conversation and one key, in a loop inside Postgres: 0.585 ms
-- (custom), 0.142 ms (generic), 0.044 ms this way (generic), #18 ninth round.
--
-- While the table is being partitioned (docs/OPERATIONS.md, "Partitioned messages") the keys
-- of rows not copied yet are missing from `message_keys`, and only the view answers; the
-- progress table `messages_partitioning` exists exactly then (the swap drops it). Same name,
-- arguments and rows as before: safe on a live database, each session picks the new body at
-- its next call.
CREATE OR REPLACE FUNCTION worker_lock_and_originals(conversation_ids uuid[], senders uuid[], client_ids uuid[])
RETURNS TABLE (
    row_kind        text,         -- 'conversation', 'clock' or 'original'
    conversation_id uuid,         -- conversation; original
    kind            text,         -- conversation
    last_seq        bigint,       -- conversation
    at              timestamptz,  -- clock (the database's time to the millisecond)
    sender_id       uuid,         -- original
    client_msg_id   uuid,         -- original
    seq             bigint,       -- original
    message_id      uuid,         -- original
    created_at      timestamptz   -- original
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found_key record;
BEGIN
    -- Step 3: the numbering lock, in id order (the order every worker follows).
    RETURN QUERY
        SELECT 'conversation', c.id, c.kind, c.last_seq, NULL::timestamptz,
               NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::timestamptz
        FROM conversations c
        WHERE c.id = ANY(conversation_ids)
        ORDER BY c.id
        FOR UPDATE;
    -- Step 4, new snapshots: the clock, read after the lock (timestamps never go backwards
    -- along a conversation's seqs), and the messages already stored under these keys.
    RETURN QUERY
        SELECT 'clock', NULL::uuid, NULL::text, NULL::bigint,
               date_trunc('milliseconds', clock_timestamp()),
               NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::timestamptz;
    IF to_regclass('messages_partitioning') IS NOT NULL THEN
        RETURN QUERY
            SELECT 'original', m.conversation_id, NULL::text, NULL::bigint, NULL::timestamptz,
                   m.sender_id, m.client_msg_id, m.seq, m.id, m.created_at
            FROM message_originals m
            JOIN unnest(senders, client_ids) AS t(sender, client_msg_id)
              ON m.sender_id = t.sender AND m.client_msg_id = t.client_msg_id;
        RETURN;
    END IF;
    -- A key and its message are inserted in one statement and deleted by the same cascades:
    -- a key found names a stored message, read from the one partition that holds it.
    FOR found_key IN
        SELECT k.client_msg_id, k.conversation_id, k.seq
        FROM message_keys k
        JOIN unnest(senders, client_ids) AS t(sender, client_msg_id)
          ON k.sender_id = t.sender AND k.client_msg_id = t.client_msg_id
    LOOP
        RETURN QUERY
            SELECT 'original', m.conversation_id, NULL::text, NULL::bigint, NULL::timestamptz,
                   m.sender_id, found_key.client_msg_id, m.seq, m.id, m.created_at
            FROM messages m
            WHERE m.conversation_id = found_key.conversation_id AND m.seq = found_key.seq;
    END LOOP;
END
$$;
