-- Time partitions (issue #15): on a database where chat_messages / chat_events are still empty
-- (a fresh one), each is made again as a table partitioned by range on sent_at, with a DEFAULT
-- partition for rows outside every range (a bogus tmi-sent-ts from 1970 or 2099). The logger
-- creates the interval partitions ahead of time itself ([storage] partition). A table holding
-- rows, with grants, or with objects of someone else depending on it is left as it is: it is
-- partitioned only by `twitch-chat-logger migrate --partition`, never by surprise.
--
-- Unique keys gain sent_at (PostgreSQL requires the partition key in them): (message_id,
-- sent_at) and (event_key, sent_at). Two copies of one message carry the same tmi-sent-ts, so
-- "stored once" holds. The columns keep their order (LIKE), so `SELECT *` is unchanged.

DO $$
DECLARE
    tbl  text;
    sql  text;
    seq  text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['chat_messages', 'chat_events'] LOOP
        CONTINUE WHEN (SELECT relkind FROM pg_class WHERE oid = to_regclass(tbl)) IS DISTINCT FROM 'r';
        CONTINUE WHEN (SELECT relacl FROM pg_class WHERE oid = to_regclass(tbl)) IS NOT NULL;
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I)', tbl) INTO STRICT sql;
        CONTINUE WHEN sql::boolean IS NOT TRUE;
        BEGIN
            -- Our views on the table; made again below with the same text.
            DROP VIEW IF EXISTS v_last_messages, v_deleted_messages, v_moderation, v_subscriptions;
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (sent_at)', tbl || '_part', tbl);
            -- The id sequence goes on with the new table (it would be dropped with the old one).
            seq := pg_get_serial_sequence(tbl, 'id');
            IF seq IS NOT NULL THEN
                EXECUTE format('ALTER SEQUENCE %s OWNED BY %I.id', seq, tbl || '_part');
            END IF;
            EXECUTE format('DROP TABLE %I', tbl);
            EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl || '_part', tbl);
            EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', tbl || '_default', tbl);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE '% is not partitioned: other objects depend on it (run twitch-chat-logger migrate --partition after removing them)', tbl;
        END;
    END LOOP;

    IF (SELECT relkind FROM pg_class WHERE oid = 'chat_messages'::regclass) = 'p'
       AND to_regclass('chat_messages_message_id_key') IS NULL THEN
        -- The original's sent_at may be NULL (its rows go to the default partition): a unique
        -- index then, since a primary key would forbid NULL.
        IF (SELECT attnotnull FROM pg_attribute WHERE attrelid = 'chat_messages'::regclass AND attname = 'sent_at') THEN
            ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_pkey PRIMARY KEY (id, sent_at);
        ELSE
            CREATE UNIQUE INDEX chat_messages_pkey ON chat_messages (id, sent_at);
        END IF;
        CREATE UNIQUE INDEX chat_messages_message_id_key ON chat_messages (message_id, sent_at);
        CREATE INDEX idx_chat_messages_channel_time ON chat_messages (channel, sent_at);
        CREATE INDEX idx_chat_messages_user_time ON chat_messages (user_id, sent_at DESC) WHERE user_id IS NOT NULL;
        CREATE INDEX idx_chat_messages_channel_user_time ON chat_messages (channel, user_id, sent_at DESC) WHERE user_id IS NOT NULL;
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = 'chat_events'::regclass) = 'p'
       AND to_regclass('chat_events_event_key_key') IS NULL THEN
        -- The original's sent_at may be NULL (its rows go to the default partition): a unique
        -- index then, since a primary key would forbid NULL.
        IF (SELECT attnotnull FROM pg_attribute WHERE attrelid = 'chat_events'::regclass AND attname = 'sent_at') THEN
            ALTER TABLE chat_events ADD CONSTRAINT chat_events_pkey PRIMARY KEY (id, sent_at);
        ELSE
            CREATE UNIQUE INDEX chat_events_pkey ON chat_events (id, sent_at);
        END IF;
        CREATE UNIQUE INDEX chat_events_event_key_key ON chat_events (event_key, sent_at);
        CREATE INDEX idx_chat_events_channel_time ON chat_events (channel, sent_at DESC);
        CREATE INDEX idx_chat_events_user_time ON chat_events (user_id, sent_at DESC) WHERE user_id IS NOT NULL;
        CREATE INDEX idx_chat_events_channel_user_time ON chat_events (channel, user_id, sent_at DESC) WHERE user_id IS NOT NULL;
        CREATE INDEX idx_chat_events_moderation ON chat_events (channel, sent_at DESC) WHERE kind IN ('clearchat', 'clearmsg');
        CREATE INDEX idx_chat_events_roomstate ON chat_events (channel, id DESC) WHERE kind = 'roomstate';
        CREATE INDEX idx_chat_events_target_msg ON chat_events (target_msg_id) WHERE target_msg_id IS NOT NULL;
    END IF;
END
$$;

-- The views, as before (a no-op where the tables were left as they were).
CREATE OR REPLACE VIEW v_last_messages AS
SELECT * FROM chat_messages ORDER BY sent_at DESC NULLS LAST, id DESC;

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
