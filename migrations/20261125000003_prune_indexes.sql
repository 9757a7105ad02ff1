-- Keep the worker's pruning passes (backend/src/auth/sessions.rs `prune`) to index scans as the
-- tables grow: they look for rows that ended before a cutoff.
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
