-- #18: the worker's fan-out sleeps until told instead of polling an empty outbox every 50 ms
-- (backend/src/social/fanout.rs). One notification per inserting statement, delivered at
-- commit; the payload is empty (the outbox itself is the queue). New objects only: safe on a
-- live database, and an older worker that still polls is unaffected.
CREATE FUNCTION feed_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('feed_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER feed_outbox_notify
    AFTER INSERT ON feed_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION feed_outbox_notify();
