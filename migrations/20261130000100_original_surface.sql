-- The original logger's surface on every database: a fresh one, one made by the original's
-- db/init.sql, and ours from before this migration. Queries written for the original run
-- unchanged. An object whose shape differs from what is expected stops the migration with a
-- message naming it and the difference; the start-up migration is one transaction, so a stop
-- leaves the database as it was.

DO $$
DECLARE
    def text;
    typ text;
BEGIN
    -- chat_messages (channel, sent_at) under the original's index name.
    def := pg_get_indexdef(to_regclass('idx_chat_messages_channel_time'));
    IF def IS NULL THEN
        IF to_regclass('idx_chat_messages_channel_sent_at') IS NOT NULL THEN
            ALTER INDEX idx_chat_messages_channel_sent_at RENAME TO idx_chat_messages_channel_time;
        ELSE
            CREATE INDEX idx_chat_messages_channel_time ON chat_messages (channel, sent_at);
        END IF;
    ELSIF def NOT LIKE '% ON %chat_messages USING btree (channel, sent_at)' THEN
        RAISE EXCEPTION 'index idx_chat_messages_channel_time is "%", expected an index on chat_messages (channel, sent_at); drop or rename it, then start again', def;
    END IF;

    -- On a fresh database of ours (no rows yet: migrations run before any write, no grants)
    -- channel_notices is made again in the original's column order, so `SELECT *` matches it
    -- too. One that holds rows, has grants, or that something depends on keeps its order and
    -- gains the columns at the end.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'channel_notices'::regclass AND attname = 'tags')
       AND NOT EXISTS (SELECT 1 FROM channel_notices) AND NOT EXISTS (SELECT 1 FROM chat_messages)
       AND (SELECT relacl FROM pg_class WHERE oid = 'channel_notices'::regclass) IS NULL THEN
        BEGIN
            DROP TABLE channel_notices;
            CREATE TABLE channel_notices (
                id          BIGSERIAL PRIMARY KEY,
                channel     TEXT NOT NULL,
                msg_id      TEXT,
                message     TEXT NOT NULL,
                tags        JSONB NOT NULL DEFAULT '{}',
                notice_at   TIMESTAMPTZ,
                received_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
            );
            CREATE INDEX idx_channel_notices_channel_received_at ON channel_notices (channel, received_at);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL;
        END;
    END IF;

    -- channel_notices.tags: the notice's IRC tags.
    SELECT format_type(atttypid, atttypmod) INTO typ FROM pg_attribute
     WHERE attrelid = 'channel_notices'::regclass AND attname = 'tags' AND NOT attisdropped;
    IF typ IS NULL THEN
        ALTER TABLE channel_notices ADD COLUMN tags jsonb NOT NULL DEFAULT '{}';
    ELSIF typ <> 'jsonb' THEN
        RAISE EXCEPTION 'column channel_notices.tags is %, expected jsonb (the notice''s IRC tags); convert it (ALTER TABLE channel_notices ALTER COLUMN tags TYPE jsonb USING …) or rename it, then start again', typ;
    END IF;

    -- channel_notices.notice_at: the notice's time. Rows we stored before it existed get their
    -- receive time, which is what we would have written.
    SELECT format_type(atttypid, atttypmod) INTO typ FROM pg_attribute
     WHERE attrelid = 'channel_notices'::regclass AND attname = 'notice_at' AND NOT attisdropped;
    IF typ IS NULL THEN
        ALTER TABLE channel_notices ADD COLUMN notice_at timestamptz;
        UPDATE channel_notices SET notice_at = received_at;
    ELSIF typ <> 'timestamp with time zone' THEN
        RAISE EXCEPTION 'column channel_notices.notice_at is %, expected timestamp with time zone; convert or rename it, then start again', typ;
    END IF;

    def := pg_get_indexdef(to_regclass('idx_channel_notices_channel_time'));
    IF def IS NULL THEN
        CREATE INDEX idx_channel_notices_channel_time ON channel_notices (channel, notice_at DESC NULLS LAST, id DESC);
    ELSIF def NOT LIKE '% ON %channel_notices USING btree (channel, notice_at DESC NULLS LAST, id DESC)' THEN
        RAISE EXCEPTION 'index idx_channel_notices_channel_time is "%", expected an index on channel_notices (channel, notice_at DESC NULLS LAST, id DESC); drop or rename it, then start again', def;
    END IF;

    -- The view, as the original defines it: every column, newest first, no LIMIT.
    IF to_regclass('v_last_messages') IS NOT NULL
       AND (SELECT relkind FROM pg_class WHERE oid = to_regclass('v_last_messages')) <> 'v' THEN
        RAISE EXCEPTION 'v_last_messages is a table or another non-view relation, expected a view; rename it (ALTER TABLE v_last_messages RENAME TO v_last_messages_old), then start again';
    END IF;
    BEGIN
        DROP VIEW IF EXISTS v_last_messages;
    EXCEPTION WHEN dependent_objects_still_exist THEN
        RAISE EXCEPTION 'view v_last_messages cannot be replaced with the original''s definition: other objects depend on it (%); drop them, run `twitch-chat-logger migrate`, then recreate them', SQLERRM;
    END;
END
$$;

-- Expands to every column of chat_messages: the original's, in its order, then ours.
CREATE VIEW v_last_messages AS
SELECT * FROM chat_messages ORDER BY sent_at DESC NULLS LAST, id DESC;

-- Notices get a deterministic key (computed when the line is read, carried through retries and
-- the spool) so a retried batch or a replay stores each notice once. Rows from before have none.
ALTER TABLE channel_notices ADD COLUMN IF NOT EXISTS notice_key uuid;
CREATE UNIQUE INDEX IF NOT EXISTS channel_notices_notice_key_key ON channel_notices (notice_key);
