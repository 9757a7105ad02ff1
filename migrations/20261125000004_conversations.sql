-- Conversations, their members and their messages (#6).
--
-- Invariant: a conversation's id is known without a lookup, so a gateway can pick the stream
-- shard of a Send by itself (haberci_wire::relay):
--   - a group's conversation id IS the group id (kind = 'group');
--   - a direct conversation's id is UUIDv5 of its two user ids, smaller first
--     (ConversationId::direct), and user_low < user_high names them.
-- Invariant: messages of a conversation are numbered 1, 2, 3, … with no gap; last_seq is the
-- highest one given. The worker takes the conversation row FOR UPDATE while it numbers a batch.

CREATE TABLE conversations (
    id         uuid        PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('direct', 'group')),
    name       text,                                   -- groups only
    created_by uuid        REFERENCES users (id) ON DELETE SET NULL,
    user_low   uuid        REFERENCES users (id) ON DELETE CASCADE,   -- direct only
    user_high  uuid        REFERENCES users (id) ON DELETE CASCADE,   -- direct only
    last_seq   bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_direct_pair CHECK (
        (kind = 'direct') = (user_low IS NOT NULL AND user_high IS NOT NULL)
        AND (kind <> 'direct' OR user_low < user_high)),
    CONSTRAINT conversations_group_name CHECK (
        (kind = 'group') = (name IS NOT NULL)
        AND (name IS NULL OR char_length(name) BETWEEN 1 AND 64))
);

-- Receipts are watermarks, not a row per message and recipient: the status of message n for
-- member m is read if n <= m.read_seq, delivered if n <= m.delivered_seq, else sent.
-- joined_seq: the last seq before the member joined; history and resume start after it.
CREATE TABLE members (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    joined_seq      bigint      NOT NULL DEFAULT 0 CHECK (joined_seq >= 0),
    delivered_seq   bigint      NOT NULL DEFAULT 0,
    read_seq        bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id),
    CONSTRAINT members_watermarks CHECK (read_seq <= delivered_seq AND delivered_seq >= 0 AND read_seq >= 0)
);

-- "My conversations" and "which groups must a gateway subscribe for this user".
CREATE INDEX members_by_user ON members (user_id, conversation_id);

-- Primary access path: (conversation_id, seq), for history pages (seq < before, descending)
-- and resume (seq > after, ascending); both are one index range scan.
CREATE TABLE messages (
    conversation_id    uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq                bigint      NOT NULL CHECK (seq >= 1),
    id                 uuid        NOT NULL,           -- UUIDv7, made by the worker
    sender_id          uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_msg_id      uuid        NOT NULL,
    type               text        NOT NULL CHECK (type IN ('text', 'image', 'video', 'audio', 'file')),
    content            text        NOT NULL,
    media_id           uuid,
    media_content_type text,
    media_size         bigint      CHECK (media_size IS NULL OR media_size >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq),
    CONSTRAINT messages_id_key UNIQUE (id),
    -- Idempotency: a retried Send (same sender, same client_msg_id) is never stored twice.
    CONSTRAINT messages_client_msg_key UNIQUE (sender_id, client_msg_id)
);
