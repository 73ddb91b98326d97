-- The original logger's schema, plus columns for more of Twitch's data.
-- Written to be safe on an empty database and on one made by the original's db/init.sql
-- (already holding rows): everything is "create if missing", nothing is dropped or rewritten.

CREATE TABLE IF NOT EXISTS chat_messages (
    id            BIGSERIAL PRIMARY KEY,
    message_id    TEXT NOT NULL,
    channel       TEXT NOT NULL,
    user_id       TEXT,
    username      TEXT NOT NULL,
    display_name  TEXT,
    text          TEXT NOT NULL,
    badges        JSONB,
    color         TEXT,
    is_mod        BOOLEAN NOT NULL DEFAULT FALSE,
    is_subscriber BOOLEAN NOT NULL DEFAULT FALSE,
    bits          INTEGER NOT NULL DEFAULT 0,
    sent_at       TIMESTAMPTZ NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Columns the original did not have (NULL / default for rows it wrote).
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS room_id TEXT;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS is_action BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS emotes TEXT;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS first_msg BOOLEAN;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS reply_parent_msg_id TEXT;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS reply_parent_user_login TEXT;

-- The dedupe key and the query index, unless an equivalent one already exists under another name.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'chat_messages'::regclass AND i.indisunique
          AND i.indnatts = 1 AND a.attname = 'message_id'
    ) THEN
        CREATE UNIQUE INDEX chat_messages_message_id_key ON chat_messages (message_id);
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
        JOIN pg_attribute a0 ON a0.attrelid = i.indrelid AND a0.attnum = i.indkey[0]
        JOIN pg_attribute a1 ON a1.attrelid = i.indrelid AND a1.attnum = i.indkey[1]
        WHERE i.indrelid = 'chat_messages'::regclass AND i.indnatts = 2
          AND a0.attname = 'channel' AND a1.attname = 'sent_at'
    ) THEN
        CREATE INDEX idx_chat_messages_channel_sent_at ON chat_messages (channel, sent_at);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS channel_notices (
    id          BIGSERIAL PRIMARY KEY,
    channel     TEXT NOT NULL,
    msg_id      TEXT,
    message     TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_channel_notices_channel_received_at ON channel_notices (channel, received_at);

CREATE OR REPLACE VIEW v_last_messages AS
SELECT channel, username, display_name, text, sent_at
FROM chat_messages
ORDER BY sent_at DESC
LIMIT 100;
