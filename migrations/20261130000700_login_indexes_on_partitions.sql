-- The log API's login indexes (20261130000500) again: 20261130000600 rebuilds an empty
-- chat_messages / chat_events as partitioned tables with a fixed list of indexes that missed
-- them, so a new database served "a user's month" by scanning the whole channel. No-ops where
-- they exist (databases created before, or partitioned by `migrate --partition`, which copies
-- every index).
CREATE INDEX IF NOT EXISTS idx_chat_messages_channel_username_time ON chat_messages (channel, username, sent_at)
    WHERE username IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_chat_events_channel_login_time ON chat_events (channel, login, sent_at) WHERE login IS NOT NULL;
