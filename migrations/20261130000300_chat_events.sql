-- Every chat event Twitch sends a channel besides messages and notices: USERNOTICE (subs, raids,
-- announcements … and any future msg-id), CLEARCHAT (timeouts, bans, clears), CLEARMSG (a deleted
-- message) and ROOMSTATE (room modes). One table, not one per kind: "all moderation actions in
-- channel X" and "everything about user Y" stay one indexed query, and a new msg-id needs no
-- migration. What only some kinds carry is in `params` (typed JSON); what queries need often is
-- a column too. The README's "What is stored" gives each column's Twitch source.

CREATE TABLE IF NOT EXISTS chat_events (
    id                BIGSERIAL PRIMARY KEY,
    -- Twitch's `id` tag, else a UUID v5 of room, kind, target and tmi-sent-ts: the dedupe key.
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
    -- ROOMSTATE: the room's full state after this change (`params` holds the modes as sent).
    room_state        JSONB,
    sent_at           TIMESTAMPTZ NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    raw               TEXT
);

CREATE UNIQUE INDEX IF NOT EXISTS chat_events_event_key_key ON chat_events (event_key);
-- A channel's events, newest first.
CREATE INDEX IF NOT EXISTS idx_chat_events_channel_time ON chat_events (channel, sent_at DESC);
-- A user's history, across channels and in one.
CREATE INDEX IF NOT EXISTS idx_chat_events_user_time ON chat_events (user_id, sent_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_chat_events_channel_user_time ON chat_events (channel, user_id, sent_at DESC) WHERE user_id IS NOT NULL;
-- Moderation actions of a channel in a time range (v_moderation).
CREATE INDEX IF NOT EXISTS idx_chat_events_moderation ON chat_events (channel, sent_at DESC) WHERE kind IN ('clearchat', 'clearmsg');
-- The last stored state of a room (ROOMSTATE changes are stored only when they change it).
CREATE INDEX IF NOT EXISTS idx_chat_events_roomstate ON chat_events (channel, id DESC) WHERE kind = 'roomstate';
-- CLEARMSG → the deleted message (v_deleted_messages).
CREATE INDEX IF NOT EXISTS idx_chat_events_target_msg ON chat_events (target_msg_id) WHERE target_msg_id IS NOT NULL;

-- A user's messages, across channels and in one, newest first.
CREATE INDEX IF NOT EXISTS idx_chat_messages_user_time ON chat_messages (user_id, sent_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_chat_messages_channel_user_time ON chat_messages (channel, user_id, sent_at DESC) WHERE user_id IS NOT NULL;

-- Deleted messages: the stored original (never altered) joined to its CLEARMSG. A deletion of a
-- message we did not store still shows, with the login and text CLEARMSG carries.
CREATE OR REPLACE VIEW v_deleted_messages AS
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

-- Timeouts, bans, chat clears and deletions, with who was targeted.
CREATE OR REPLACE VIEW v_moderation AS
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

-- Every kind of sub (including gifts, gift upgrades and mystery gifts), with months and plan.
CREATE OR REPLACE VIEW v_subscriptions AS
SELECT e.channel,
       e.room_id,
       e.msg_id              AS sub_kind,
       e.user_id,
       e.login,
       e.display_name,
       e.cumulative_months,
       e.streak_months,
       e.sub_plan,
       e.params ->> 'msg-param-sub-plan-name' AS sub_plan_name,
       e.recipient_id,
       e.recipient_login,
       CASE WHEN jsonb_typeof(e.params -> 'msg-param-gift-months') = 'number'
            THEN (e.params ->> 'msg-param-gift-months')::bigint END AS gift_months,
       CASE WHEN jsonb_typeof(e.params -> 'msg-param-mass-gift-count') = 'number'
            THEN (e.params ->> 'msg-param-mass-gift-count')::bigint END AS mass_gift_count,
       e.text,
       e.system_msg,
       e.sent_at,
       e.id                  AS event_row
FROM chat_events e
WHERE e.kind = 'usernotice'
  AND e.msg_id IN ('sub', 'resub', 'subgift', 'anonsubgift', 'submysterygift', 'anonsubmysterygift',
                   'giftpaidupgrade', 'anongiftpaidupgrade', 'primepaidupgrade', 'extendsub',
                   'standardpayforward', 'communitypayforward');

-- PRIVMSG tags not stored before. In a shared chat session each channel's copy has its own `id`
-- (so one row per channel it appeared in) and the same `source-id`; `source-room-id` is the room
-- it was sent in.
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS returning_chatter BOOLEAN;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS vip BOOLEAN;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS source_room_id TEXT;
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS source_id TEXT;
-- The exact line as received, when `[storage] raw_lines` is on.
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS raw TEXT;
ALTER TABLE channel_notices ADD COLUMN IF NOT EXISTS raw TEXT;

-- v_last_messages is `SELECT *` as of its creation: recreate it so the new columns show too.
CREATE OR REPLACE VIEW v_last_messages AS
SELECT * FROM chat_messages ORDER BY sent_at DESC NULLS LAST, id DESC;
