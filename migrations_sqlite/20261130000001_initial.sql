-- The PostgreSQL store's tables and view, same names and columns (in the same order as on a fresh
-- PostgreSQL database), in SQLite's types:
--   BIGSERIAL        -> INTEGER PRIMARY KEY AUTOINCREMENT (ids never reused, even after
--                       retention empties a table: `copy` resumes by id)
--   TEXT             -> TEXT
--   JSONB            -> TEXT holding JSON (query it with ->> / json_extract)
--   BOOLEAN          -> BOOLEAN (stored as 0 / 1)
--   TIMESTAMPTZ      -> TEXT, ISO 8601 in UTC with microseconds: 2026-11-30T08:15:00.123456Z
--                       (sorts as text, and SQLite's date functions read it)
--   UUID             -> TEXT

CREATE TABLE chat_messages (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id              TEXT NOT NULL,
    channel                 TEXT NOT NULL,
    user_id                 TEXT,
    username                TEXT NOT NULL,
    display_name            TEXT,
    text                    TEXT NOT NULL,
    badges                  JSONB,
    color                   TEXT,
    is_mod                  BOOLEAN NOT NULL DEFAULT FALSE,
    is_subscriber           BOOLEAN NOT NULL DEFAULT FALSE,
    bits                    INTEGER NOT NULL DEFAULT 0,
    sent_at                 TIMESTAMPTZ NOT NULL,
    received_at             TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    room_id                 TEXT,
    is_action               BOOLEAN NOT NULL DEFAULT FALSE,
    emotes                  TEXT,
    first_msg               BOOLEAN,
    reply_parent_msg_id     TEXT,
    reply_parent_user_login TEXT,
    badge_info              JSONB
);
CREATE UNIQUE INDEX chat_messages_message_id_key ON chat_messages (message_id);
CREATE INDEX idx_chat_messages_channel_time ON chat_messages (channel, sent_at);
-- Not in PostgreSQL: serves v_last_messages (newest first without sorting the table) and
-- retention's chunked deletes.
CREATE INDEX idx_chat_messages_sent_at ON chat_messages (sent_at);

CREATE TABLE channel_notices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT NOT NULL,
    msg_id      TEXT,
    message     TEXT NOT NULL,
    tags        JSONB NOT NULL DEFAULT '{}',
    notice_at   TIMESTAMPTZ,
    received_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    notice_key  UUID
);
CREATE INDEX idx_channel_notices_channel_received_at ON channel_notices (channel, received_at);
CREATE INDEX idx_channel_notices_channel_time ON channel_notices (channel, notice_at DESC, id DESC);
CREATE UNIQUE INDEX channel_notices_notice_key_key ON channel_notices (notice_key);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    error       TEXT NOT NULL,
    received_at TIMESTAMPTZ,
    failed_at   TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- As PostgreSQL's: every column, newest first (sent_at is never NULL, so NULLS LAST is moot).
CREATE VIEW v_last_messages AS
SELECT * FROM chat_messages ORDER BY sent_at DESC, id DESC;

-- This file's identity, so that `copy` can keep its checkpoints per source file even if the
-- file is moved or renamed.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
