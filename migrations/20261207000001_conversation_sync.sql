-- #18: the sync query (resume, gaps, backlogs; backend/src/conversations/store.rs) as a
-- function that runs its one statement with a generic plan.
--
-- Why: called as a prepared statement, Postgres planned it afresh on every call (custom plans
-- are chosen because the generic plan's *estimate* is higher: it cannot see that the unnested
-- arrays hold a few elements). Each plan costs ≈ 1.0 ms, four times the execution itself
-- (≈ 0.25 ms for 10 messages, 0.4 ms for 100), because the LATERAL read of `messages` has a
-- subplan for each of its 16 partitions; the partition is chosen at run time either way. The
-- generic plan is the same shape (docs/BENCHMARKS.md, "Query plans: history and sync"), so it
-- is planned once per connection and reused. A function is the only place a plan mode can be
-- set for one statement without a round trip of its own (`SET plan_cache_mode` would apply to
-- every query of the API's pooled connections).
--
-- The statement, unchanged from the application's SYNC_SQL: for each position
-- (conversation, after) in the order given, the user's membership and up to `limit_each`
-- messages with seq > max(after, joined_seq), ascending; the other members' lowest watermarks
-- only for conversations where the user's own messages are returned. A new object only: safe
-- on a live database, and an API of the previous release does not call it.
CREATE FUNCTION conversation_sync(
    viewer uuid, conversation_ids uuid[], afters bigint[], limit_each bigint
)
RETURNS TABLE (
    "position"         uuid,
    member             boolean,
    user_low           uuid,
    user_high          uuid,
    read_seq           bigint,
    seq                bigint,
    id                 uuid,
    sender_id          uuid,
    type               text,
    content            text,
    created_at         timestamptz,
    media_id           uuid,
    media_content_type text,
    media_size         bigint,
    media_width        integer,
    media_height       integer,
    media_duration_ms  bigint,
    media_blurhash     text,
    media_filename     text,
    others_delivered   bigint,
    others_read        bigint
)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH rows AS MATERIALIZED (
        SELECT p.conversation_id AS position, p.ord, mem.user_id IS NOT NULL AS member,
               c.user_low, c.user_high, mem.read_seq,
               msg.seq, msg.id, msg.sender_id, msg.type, msg.content, msg.created_at,
               msg.media_id, msg.media_content_type, msg.media_size, msg.media_width,
               msg.media_height, msg.media_duration_ms, msg.media_blurhash, msg.media_filename
        FROM unnest(conversation_ids, afters) WITH ORDINALITY AS p(conversation_id, after, ord)
        LEFT JOIN members mem ON mem.conversation_id = p.conversation_id AND mem.user_id = viewer
        LEFT JOIN conversations c ON c.id = mem.conversation_id
        LEFT JOIN LATERAL (
            SELECT m.seq, m.id, m.sender_id, m.type, m.content, m.created_at,
                   m.media_id, m.media_content_type, m.media_size, md.width AS media_width,
                   md.height AS media_height, md.duration_ms AS media_duration_ms,
                   md.blurhash AS media_blurhash, md.filename AS media_filename
            FROM messages m LEFT JOIN media md ON md.id = m.media_id
            WHERE mem.user_id IS NOT NULL AND m.conversation_id = p.conversation_id
              AND m.seq > GREATEST(p.after, mem.joined_seq)
            ORDER BY m.seq
            LIMIT limit_each
        ) msg ON true
    ), others AS (
        SELECT w.conversation_id, min(w.delivered_seq) AS delivered, min(w.read_seq) AS read
        FROM members w
        WHERE w.conversation_id IN (SELECT r.position FROM rows r WHERE r.sender_id = viewer)
          AND w.user_id <> viewer
        GROUP BY w.conversation_id
    )
    SELECT r.position, r.member, r.user_low, r.user_high, r.read_seq,
           r.seq, r.id, r.sender_id, r.type, r.content, r.created_at,
           r.media_id, r.media_content_type, r.media_size, r.media_width, r.media_height,
           r.media_duration_ms, r.media_blurhash, r.media_filename,
           COALESCE(o.delivered, 0)::bigint, COALESCE(o.read, 0)::bigint
    FROM rows r LEFT JOIN others o ON o.conversation_id = r.position
    ORDER BY r.ord, r.seq;
END
$$;
