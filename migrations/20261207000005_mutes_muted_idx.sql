-- no-transaction
-- Deleting an account removes the mutes of it; the primary key (muter_id, muted_id) does not serve
-- a lookup by muted_id (20261207000002 says why).
CREATE INDEX CONCURRENTLY mutes_muted_idx ON mutes (muted_id);
