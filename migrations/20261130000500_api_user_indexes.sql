-- The log API (issue #17) reads one user's lines in one channel by login, in time order: an
-- index range scan, never a scan of the channel. By user id it uses the (channel, user_id,
-- sent_at) indexes of 20261130000300.
-- Partial on a condition every row meets (username is NOT NULL): a query on `username = …`
-- implies it, a query on a channel alone does not, so the original's queries keep using
-- idx_chat_messages_channel_time instead of this wider index.
CREATE INDEX IF NOT EXISTS idx_chat_messages_channel_username_time ON chat_messages (channel, username, sent_at)
    WHERE username IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_chat_events_channel_login_time ON chat_events (channel, login, sent_at) WHERE login IS NOT NULL;
