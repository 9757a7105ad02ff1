-- no-transaction
-- A group's creator is set to NULL when that account is deleted (ON DELETE SET NULL): without an
-- index, a scan of every conversation per deleted user (20261207000002 says why).
CREATE INDEX CONCURRENTLY conversations_created_by_idx ON conversations (created_by) WHERE created_by IS NOT NULL;
