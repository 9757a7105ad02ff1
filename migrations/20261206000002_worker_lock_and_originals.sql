-- #18: the worker's numbering lock and its idempotency lookup in one round trip
-- (backend/src/messaging/store.rs, steps 3 and 4). Two statements in a VOLATILE function: under
-- READ COMMITTED each takes a snapshot of its own, so the lookup, run after the lock was
-- granted, sees what a concurrent worker committed while this one waited for it, exactly as
-- when the two were separate round trips. A new object only: safe on a live database, and a
-- worker of the previous release does not call it.
CREATE FUNCTION worker_lock_and_originals(conversation_ids uuid[], senders uuid[], client_ids uuid[])
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
BEGIN
    -- Step 3: the numbering lock, in id order (the order every worker follows).
    RETURN QUERY
        SELECT 'conversation', c.id, c.kind, c.last_seq, NULL::timestamptz,
               NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::timestamptz
        FROM conversations c
        WHERE c.id = ANY(conversation_ids)
        ORDER BY c.id
        FOR UPDATE;
    -- Step 4, a new snapshot: the clock, read after the lock (timestamps never go backwards
    -- along a conversation's seqs), and the messages already stored under these keys.
    RETURN QUERY
        SELECT 'clock', NULL::uuid, NULL::text, NULL::bigint,
               date_trunc('milliseconds', clock_timestamp()),
               NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::timestamptz;
    RETURN QUERY
        SELECT 'original', m.conversation_id, NULL::text, NULL::bigint, NULL::timestamptz,
               m.sender_id, m.client_msg_id, m.seq, m.id, m.created_at
        FROM message_originals m
        JOIN unnest(senders, client_ids) AS t(sender, client_msg_id)
          ON m.sender_id = t.sender AND m.client_msg_id = t.client_msg_id;
END
$$;
