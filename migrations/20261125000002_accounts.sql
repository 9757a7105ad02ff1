-- Accounts and auth (#5): users, their password credentials, sessions and refresh tokens.
--
-- Invariant: usernames and emails are unique case-insensitively (citext), enforced here and not
-- only by the application. The API maps a violation of users_username_key / users_email_key to
-- 409 with the field named.

CREATE TABLE users (
    id           uuid        PRIMARY KEY,              -- UUIDv7, made by the backend
    username     citext      NOT NULL,                 -- stored normalized (lowercase ASCII)
    email        citext      NOT NULL,                 -- stored normalized (domain lowercased)
    display_name text        NOT NULL,
    bio          text        NOT NULL DEFAULT '',
    avatar_ref   text,                                 -- a media reference (#media), opaque here
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_username_shape CHECK (length(username) BETWEEN 3 AND 32),
    CONSTRAINT users_email_shape CHECK (length(email) BETWEEN 3 AND 254),
    CONSTRAINT users_display_name_shape CHECK (char_length(display_name) BETWEEN 1 AND 64),
    CONSTRAINT users_bio_shape CHECK (char_length(bio) <= 500),
    CONSTRAINT users_avatar_ref_shape CHECK (avatar_ref IS NULL OR char_length(avatar_ref) BETWEEN 1 AND 256)
);

-- One password per user, as an argon2id PHC string (parameters travel inside it, so they can be
-- raised later and old hashes still verify).
CREATE TABLE credentials (
    user_id       uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A session is one login on one device. Its refresh tokens form one family: rotating a token
-- keeps the family; reusing a spent token revokes the family, i.e. the session.
CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,            -- UUIDv7; the `sid` claim of access tokens
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id      uuid        NOT NULL UNIQUE,
    user_agent     text        CHECK (char_length(user_agent) <= 256),
    ip             inet,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text        CHECK (revoked_reason IN ('logout', 'revoked', 'logout_all', 'refresh_reuse'))
);

CREATE INDEX sessions_user_active ON sessions (user_id, created_at) WHERE revoked_at IS NULL;

-- Refresh tokens are stored only as SHA-256 of the 256-bit random token.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    family_id  uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz                              -- set when rotated; a second use is theft
);

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
