-- no-transaction
-- The other side of a direct pair (20261207000002 says why).
CREATE INDEX CONCURRENTLY conversations_user_high_idx ON conversations (user_high) WHERE user_high IS NOT NULL;
