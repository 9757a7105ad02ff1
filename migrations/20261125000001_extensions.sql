-- Case-insensitive text for usernames and emails (uniqueness enforced by Postgres, #5).
-- citext is a trusted extension since PostgreSQL 13: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS citext;
