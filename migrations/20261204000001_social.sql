-- The social half (#15): profile flags and counts, follows and follow requests, blocks and
-- mutes, posts (with reposts, edits, mentions, hashtags), comments, likes, notifications, and
-- the fan-out outbox. docs/SOCIAL.md describes the model.
--
-- Invariant: every count column is moved in the same transaction as the row it counts, by a
-- single `UPDATE … SET n = n ± 1` after an INSERT that inserted or a DELETE that deleted, so
-- counts stay exact under concurrency (the row lock orders concurrent movers).

ALTER TABLE users
    ADD COLUMN is_private      boolean     NOT NULL DEFAULT false,
    ADD COLUMN is_admin        boolean     NOT NULL DEFAULT false,
    ADD COLUMN suspended_at    timestamptz,
    ADD COLUMN followers_count bigint      NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    ADD COLUMN following_count bigint      NOT NULL DEFAULT 0 CHECK (following_count >= 0),
    ADD COLUMN posts_count     bigint      NOT NULL DEFAULT 0 CHECK (posts_count >= 0);

-- follower follows followee. The primary key answers "do I follow X" and "whom do I follow";
-- follows_by_followee answers "who follows X" (fan-out, followers list) newest first.
CREATE TABLE follows (
    follower_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);
CREATE INDEX follows_by_followee ON follows (followee_id, created_at DESC, follower_id);
CREATE INDEX follows_by_follower_time ON follows (follower_id, created_at DESC, followee_id);

-- A follow of a private account waits here until its owner approves or denies it.
CREATE TABLE follow_requests (
    requester_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    target_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (requester_id, target_id),
    CHECK (requester_id <> target_id)
);
CREATE INDEX follow_requests_by_target ON follow_requests (target_id, created_at DESC, requester_id);

CREATE TABLE blocks (
    blocker_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked_id, blocker_id);

CREATE TABLE mutes (
    muter_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    muted_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (muter_id, muted_id),
    CHECK (muter_id <> muted_id)
);

-- A post, or a repost (repost_of set, content empty): a repost is a post of the reposter's, so
-- it travels through follows and timelines exactly like one. id is UUIDv7: ordering by id is
-- ordering by creation time, which is what every timeline and cursor uses.
CREATE TABLE posts (
    id            uuid        PRIMARY KEY,
    author_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content       text        NOT NULL DEFAULT '',
    visibility    text        NOT NULL CHECK (visibility IN ('public', 'followers', 'mentioned')),
    repost_of     uuid        REFERENCES posts (id) ON DELETE CASCADE,
    media_ids     uuid[]      NOT NULL DEFAULT '{}' CHECK (cardinality(media_ids) <= 4),
    created_at    timestamptz NOT NULL DEFAULT now(),
    edited_at     timestamptz,
    deleted_at    timestamptz,
    removed_by    uuid        REFERENCES users (id) ON DELETE SET NULL,  -- an admin's removal
    likes_count   bigint      NOT NULL DEFAULT 0 CHECK (likes_count >= 0),
    comments_count bigint     NOT NULL DEFAULT 0 CHECK (comments_count >= 0),
    reposts_count bigint      NOT NULL DEFAULT 0 CHECK (reposts_count >= 0),
    search        tsvector    GENERATED ALWAYS AS (
                      to_tsvector('turkish', content) || to_tsvector('simple', content)) STORED,
    CHECK (char_length(content) <= 1000),
    CHECK (repost_of IS NULL OR content = '')
);
-- Profile timelines, timeline rebuilds and the merge of large authors: newest first per author.
CREATE INDEX posts_by_author ON posts (author_id, id DESC) WHERE deleted_at IS NULL;
-- One live repost per user and post: reposting twice is one repost.
CREATE UNIQUE INDEX posts_one_repost ON posts (author_id, repost_of)
    WHERE repost_of IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX posts_reposts_of ON posts (repost_of) WHERE repost_of IS NOT NULL;
CREATE INDEX posts_search ON posts USING gin (search) WHERE deleted_at IS NULL;

-- Every earlier text of an edited post, oldest first.
CREATE TABLE post_edits (
    post_id    uuid        NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    version    int         NOT NULL CHECK (version >= 1),
    content    text        NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, version)
);

CREATE TABLE post_mentions (
    post_id uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX post_mentions_by_user ON post_mentions (user_id, post_id DESC);

-- tag: folded with Turkish rules (haberci_backend::social::text::fold_tag), without '#'.
CREATE TABLE post_hashtags (
    tag     text NOT NULL CHECK (char_length(tag) BETWEEN 1 AND 100),
    post_id uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, post_id)
);
CREATE INDEX post_hashtags_by_post ON post_hashtags (post_id);

CREATE TABLE likes (
    post_id    uuid        NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX likes_by_post_time ON likes (post_id, created_at DESC, user_id);
CREATE INDEX likes_by_user ON likes (user_id, post_id);

-- A comment on a post, or a reply to another comment of the same post (parent_id). A thread
-- reads a post's comments in id order (UUIDv7: creation order), which never changes.
CREATE TABLE comments (
    id         uuid        PRIMARY KEY,
    post_id    uuid        NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    parent_id  uuid        REFERENCES comments (id) ON DELETE CASCADE,
    author_id  uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content    text        NOT NULL CHECK (char_length(content) BETWEEN 1 AND 1000),
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE INDEX comments_by_post ON comments (post_id, id);

-- One row per event; the list groups likes and reposts of one post (group_key).
CREATE TABLE notifications (
    id         uuid        PRIMARY KEY,                 -- UUIDv7
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text        NOT NULL CHECK (kind IN ('follow', 'follow_request', 'like', 'comment', 'mention', 'repost')),
    actor_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id    uuid        REFERENCES posts (id) ON DELETE CASCADE,
    comment_id uuid        REFERENCES comments (id) ON DELETE CASCADE,
    group_key  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz
);
CREATE INDEX notifications_by_user ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;

-- The fan-out outbox: written in the transaction that creates or deletes a post, consumed by
-- the worker (SELECT … FOR UPDATE SKIP LOCKED), so a committed post is never left unfanned
-- even when Redis or the worker is down at that moment.
CREATE TABLE feed_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    post_id    uuid        NOT NULL,
    author_id  uuid        NOT NULL,
    action     text        NOT NULL CHECK (action IN ('add', 'remove')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Reports for moderators.
CREATE TABLE reports (
    id          uuid        PRIMARY KEY,
    reporter_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id     uuid        REFERENCES posts (id) ON DELETE CASCADE,
    user_id     uuid        REFERENCES users (id) ON DELETE CASCADE,
    reason      text        NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((post_id IS NULL) <> (user_id IS NULL))
);

-- Whether `viewer` may see a post of `author` with `visibility` (post id `post`): the one
-- definition every read uses. Own posts always; never across a block (either way) or from a
-- suspended account; `public` unless the author is private and the viewer no follower;
-- `followers` to followers; `mentioned` to the mentioned. Deleted posts are filtered by the
-- callers (they also need the row for "gone" answers).
CREATE FUNCTION blocked_between(a uuid, b uuid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker_id = a AND blocked_id = b)
        OR EXISTS (SELECT 1 FROM blocks WHERE blocker_id = b AND blocked_id = a)
$$;

CREATE FUNCTION follows_user(follower uuid, followee uuid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT 1 FROM follows WHERE follower_id = follower AND followee_id = followee)
$$;

CREATE FUNCTION can_see_post(viewer uuid, author uuid, author_private boolean,
                             author_suspended timestamptz, visibility text, post uuid)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT viewer = author OR (
        author_suspended IS NULL
        AND NOT blocked_between(viewer, author)
        AND CASE visibility
            WHEN 'public'    THEN NOT author_private OR follows_user(viewer, author)
            WHEN 'followers' THEN follows_user(viewer, author)
            ELSE EXISTS (SELECT 1 FROM post_mentions m WHERE m.post_id = post AND m.user_id = viewer)
        END)
$$;

-- People search: trigram similarity over a folding that forgives a keyboard without Turkish
-- letters (İ/I/ı → i, ş → s, ğ → g, ç → c, ö → o, ü → u) and case. pg_trgm is a trusted
-- extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE FUNCTION search_fold(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT lower(translate(t, 'İIıŞşĞğÇçÖöÜü', 'iiissggccoouu'))
$$;

CREATE INDEX users_search_username ON users USING gin (search_fold(username::text) gin_trgm_ops);
CREATE INDEX users_search_display_name ON users USING gin (search_fold(display_name) gin_trgm_ops);
