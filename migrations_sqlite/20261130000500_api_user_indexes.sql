-- The PostgreSQL store's migration 20261130000500: the log API reads one user's lines in one
-- channel by login, in time order, as an index range scan (by user id it uses the
-- (channel, user_id, sent_at) indexes of 20261130000300). Partial, as in PostgreSQL: a query on
-- `username = ?` implies the condition, a query on a channel alone does not, so channel reads
-- keep the narrower (channel, sent_at) index.
CREATE INDEX IF NOT EXISTS idx_chat_messages_channel_username_time ON chat_messages (channel, username, sent_at)
    WHERE username IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_chat_events_channel_login_time ON chat_events (channel, login, sent_at) WHERE login IS NOT NULL;
