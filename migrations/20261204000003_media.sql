-- Media (#16): uploads stored content-addressed in object storage, and where they are used.
--
-- An object (`media_objects`) is bytes in the store under their SHA-256; the same bytes are
-- stored once however many uploads carry them. A `media` row is one upload by one owner: its
-- kind, the stored original (EXIF stripped, orientation applied) and its derivatives. A media
-- row is referenced by a message (`messages.media_id`), a post (`posts.media_ids`) or an
-- avatar (`users.avatar_media_id`); unreferenced rows older than the grace period are collected,
-- then objects no row points at (media::gc).

CREATE TABLE media_objects (
    sha256     bytea       PRIMARY KEY CHECK (length(sha256) = 32),
    size       bigint      NOT NULL CHECK (size >= 0),
    -- Touched by every upload that reuses the object, so the collector (which only takes
    -- objects unused for the grace period) never deletes bytes an upload just counted on.
    used_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE media (
    id             uuid        PRIMARY KEY,
    owner_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           text        NOT NULL CHECK (kind IN ('image', 'video', 'audio', 'file')),
    content_type   text        NOT NULL,
    size           bigint      NOT NULL CHECK (size >= 0),
    sha256         bytea       NOT NULL REFERENCES media_objects (sha256),
    thumb_sha256   bytea       REFERENCES media_objects (sha256),
    preview_sha256 bytea       REFERENCES media_objects (sha256),
    width          integer     CHECK (width > 0),
    height         integer     CHECK (height > 0),
    duration_ms    bigint      CHECK (duration_ms >= 0),
    blurhash       text,
    filename       text        CHECK (length(filename) <= 255),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_owner_idx ON media (owner_id);
CREATE INDEX media_created_idx ON media (created_at);
CREATE INDEX media_sha256_idx ON media (sha256);
CREATE INDEX media_thumb_idx ON media (thumb_sha256) WHERE thumb_sha256 IS NOT NULL;
CREATE INDEX media_preview_idx ON media (preview_sha256) WHERE preview_sha256 IS NOT NULL;

-- Resumable uploads (tus 1.0): the bytes so far live in the API's staging directory.
CREATE TABLE media_uploads (
    id           uuid        PRIMARY KEY,
    owner_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         text        NOT NULL CHECK (kind IN ('image', 'video', 'audio', 'file')),
    length       bigint      NOT NULL CHECK (length >= 0),
    received     bigint      NOT NULL DEFAULT 0 CHECK (received >= 0 AND received <= length),
    filename     text        CHECK (length(filename) <= 255),
    -- Set when the last byte arrived and the media row exists.
    media_id     uuid        REFERENCES media (id) ON DELETE SET NULL,
    -- One PATCH at a time: a request holds the lease while it writes.
    leased_until timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX media_uploads_owner_idx ON media_uploads (owner_id);
CREATE INDEX media_uploads_expires_idx ON media_uploads (expires_at);

-- Where media is used, for access checks and the collector.
CREATE INDEX messages_media_idx ON messages (media_id) WHERE media_id IS NOT NULL;
CREATE INDEX posts_media_idx ON posts USING gin (media_ids) WHERE cardinality(media_ids) > 0;

-- An avatar is an image its user uploaded; it is public (a profile shows it to anyone).
ALTER TABLE users ADD COLUMN avatar_media_id uuid REFERENCES media (id) ON DELETE SET NULL;
CREATE INDEX users_avatar_media_idx ON users (avatar_media_id) WHERE avatar_media_id IS NOT NULL;
