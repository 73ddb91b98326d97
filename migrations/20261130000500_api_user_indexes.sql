-- The log API (issue #17) reads one user's lines in one channel by login or by user id, in
-- time order: an index range scan each, never a scan of the channel.
CREATE INDEX IF NOT EXISTS idx_chat_messages_channel_username_time ON chat_messages (channel, username, sent_at);
CREATE INDEX IF NOT EXISTS idx_chat_messages_channel_user_id_time ON chat_messages (channel, user_id, sent_at);
