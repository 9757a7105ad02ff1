-- How many members each conversation has, kept by statement-level triggers on `members`, so
-- that the worker tells a large group from a small one (backend/src/messaging/store.rs,
-- STATUS_BROADCAST_MAX_MEMBERS) from the row it already reads instead of a query per batch:
-- that query was half of Postgres's time in a 10,000-member fan-out (docs/BENCHMARKS.md).
ALTER TABLE conversations
    ADD COLUMN member_count integer NOT NULL DEFAULT 0 CHECK (member_count >= 0);

UPDATE conversations c
SET member_count = m.n
FROM (SELECT conversation_id, count(*)::integer AS n FROM members GROUP BY conversation_id) m
WHERE c.id = m.conversation_id;

-- One UPDATE per conversation a statement touched, not one per member row: adding 10,000
-- members in one INSERT moves the count once.
CREATE FUNCTION members_counted_in() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations c
    SET member_count = c.member_count + added.n
    FROM (SELECT conversation_id, count(*)::integer AS n FROM new_members GROUP BY conversation_id) added
    WHERE c.id = added.conversation_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION members_counted_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A conversation deleted with its members (ON DELETE CASCADE) is gone already: no row.
    UPDATE conversations c
    SET member_count = c.member_count - removed.n
    FROM (SELECT conversation_id, count(*)::integer AS n FROM old_members GROUP BY conversation_id) removed
    WHERE c.id = removed.conversation_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER members_count_in AFTER INSERT ON members
    REFERENCING NEW TABLE AS new_members
    FOR EACH STATEMENT EXECUTE FUNCTION members_counted_in();

CREATE TRIGGER members_count_out AFTER DELETE ON members
    REFERENCING OLD TABLE AS old_members
    FOR EACH STATEMENT EXECUTE FUNCTION members_counted_out();

-- Members never move between conversations; a trigger would have to count them twice.
CREATE FUNCTION members_stay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a member row cannot change its conversation';
END
$$;

CREATE TRIGGER members_stay BEFORE UPDATE OF conversation_id ON members
    FOR EACH ROW WHEN (OLD.conversation_id IS DISTINCT FROM NEW.conversation_id)
    EXECUTE FUNCTION members_stay();
