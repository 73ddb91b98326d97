-- The PostgreSQL store's migration 20261130000300 (chat events), in SQLite's types (see the
-- first migration for the mapping). Same table, columns, unique key, indexes and views.

CREATE TABLE chat_events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    event_key         TEXT NOT NULL,
    kind              TEXT NOT NULL,
    msg_id            TEXT,
    channel           TEXT NOT NULL,
    room_id           TEXT,
    user_id           TEXT,
    login             TEXT,
    display_name      TEXT,
    badges            JSONB,
    badge_info        JSONB,
    color             TEXT,
    emotes            TEXT,
    text              TEXT,
    system_msg        TEXT,
    params            JSONB NOT NULL DEFAULT '{}',
    cumulative_months INTEGER,
    streak_months     INTEGER,
    sub_plan          TEXT,
    recipient_id      TEXT,
    recipient_login   TEXT,
    viewer_count      INTEGER,
    ban_duration      INTEGER,
    target_user_id    TEXT,
    target_login      TEXT,
    target_msg_id     TEXT,
    sent_at           TIMESTAMPTZ NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    raw               TEXT
);

CREATE UNIQUE INDEX chat_events_event_key_key ON chat_events (event_key);
CREATE INDEX idx_chat_events_channel_time ON chat_events (channel, sent_at DESC);
CREATE INDEX idx_chat_events_user_time ON chat_events (user_id, sent_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX idx_chat_events_channel_user_time ON chat_events (channel, user_id, sent_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX idx_chat_events_moderation ON chat_events (channel, sent_at DESC) WHERE kind IN ('clearchat', 'clearmsg');
CREATE INDEX idx_chat_events_roomstate ON chat_events (channel, id DESC) WHERE kind = 'roomstate';
CREATE INDEX idx_chat_events_target_msg ON chat_events (target_msg_id) WHERE target_msg_id IS NOT NULL;
-- Not in PostgreSQL: retention's chunked deletes.
CREATE INDEX idx_chat_events_sent_at ON chat_events (sent_at);

CREATE INDEX idx_chat_messages_user_time ON chat_messages (user_id, sent_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX idx_chat_messages_channel_user_time ON chat_messages (channel, user_id, sent_at DESC) WHERE user_id IS NOT NULL;

CREATE VIEW v_deleted_messages AS
SELECT e.channel,
       e.target_msg_id       AS message_id,
       COALESCE(m.username, e.target_login) AS username,
       m.user_id,
       COALESCE(m.text, e.text) AS text,
       m.sent_at,
       e.sent_at             AS deleted_at,
       m.id IS NOT NULL      AS stored,
       m.id                  AS chat_message_row,
       e.id                  AS event_row
FROM chat_events e
LEFT JOIN chat_messages m ON m.message_id = e.target_msg_id
WHERE e.kind = 'clearmsg';

CREATE VIEW v_moderation AS
SELECT e.channel,
       e.room_id,
       CASE
           WHEN e.kind = 'clearmsg' THEN 'delete'
           WHEN e.target_user_id IS NULL AND e.target_login IS NULL THEN 'clear'
           WHEN e.ban_duration IS NULL THEN 'ban'
           ELSE 'timeout'
       END                   AS action,
       e.target_user_id,
       e.target_login,
       e.ban_duration,
       e.target_msg_id,
       e.text,
       e.sent_at,
       e.id                  AS event_row
FROM chat_events e
WHERE e.kind IN ('clearchat', 'clearmsg');

CREATE VIEW v_subscriptions AS
SELECT e.channel,
       e.room_id,
       e.msg_id              AS sub_kind,
       e.user_id,
       e.login,
       e.display_name,
       e.cumulative_months,
       e.streak_months,
       e.sub_plan,
       json_extract(e.params, '$."msg-param-sub-plan-name"') AS sub_plan_name,
       e.recipient_id,
       e.recipient_login,
       CASE WHEN json_type(e.params, '$."msg-param-gift-months"') = 'integer'
            THEN json_extract(e.params, '$."msg-param-gift-months"') END AS gift_months,
       CASE WHEN json_type(e.params, '$."msg-param-mass-gift-count"') = 'integer'
            THEN json_extract(e.params, '$."msg-param-mass-gift-count"') END AS mass_gift_count,
       e.text,
       e.system_msg,
       e.sent_at,
       e.id                  AS event_row
FROM chat_events e
WHERE e.kind = 'usernotice'
  AND e.msg_id IN ('sub', 'resub', 'subgift', 'anonsubgift', 'submysterygift', 'anonsubmysterygift',
                   'giftpaidupgrade', 'anongiftpaidupgrade', 'primepaidupgrade', 'extendsub',
                   'standardpayforward', 'communitypayforward');

-- PRIVMSG tags not stored before, and the raw line (`[storage] raw_lines`). Added at the end,
-- as in PostgreSQL. v_last_messages (`SELECT *`) shows them: SQLite expands `*` when it is read.
ALTER TABLE chat_messages ADD COLUMN returning_chatter BOOLEAN;
ALTER TABLE chat_messages ADD COLUMN vip BOOLEAN;
ALTER TABLE chat_messages ADD COLUMN source_room_id TEXT;
ALTER TABLE chat_messages ADD COLUMN source_id TEXT;
ALTER TABLE chat_messages ADD COLUMN raw TEXT;
ALTER TABLE channel_notices ADD COLUMN raw TEXT;
