-- no-transaction
-- Deleting an account deletes its sessions (ON DELETE CASCADE). The only index on
-- sessions.user_id is partial (sessions_user_active, WHERE revoked_at IS NULL), which the
-- cascade's lookup by user_id alone cannot use: a scan of sessions per deleted user
-- (20261207000002 says why; 7.5-10.9 ms per user on the dev database).
CREATE INDEX CONCURRENTLY sessions_user_idx ON sessions (user_id);
