-- #20: presence is shown only to people with a relationship, and a user can hide it.
-- A constant default: no table rewrite (PostgreSQL 11+), so this is safe on a live database.
ALTER TABLE users ADD COLUMN show_presence boolean NOT NULL DEFAULT true;
