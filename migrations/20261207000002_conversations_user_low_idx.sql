-- no-transaction
-- Deleting an account cascades to its direct conversations through conversations.user_low and
-- user_high; without an index each of those foreign keys scanned the whole table once per
-- deleted user (14 ms for the three at 35,000 conversations, linear in the table;
-- docs/BENCHMARKS.md, "Account deletion"). One statement per migration: several statements in
-- one run form an implicit transaction, which CONCURRENTLY refuses. A run that failed leaves an
-- INVALID index: drop it, then migrate again (docs/OPERATIONS.md).
CREATE INDEX CONCURRENTLY conversations_user_low_idx ON conversations (user_low) WHERE user_low IS NOT NULL;
