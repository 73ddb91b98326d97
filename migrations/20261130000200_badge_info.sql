-- `badge-info`: the real subscription tenure in months ({"subscriber":14}); the number on the
-- `subscriber` badge is a badge tier such as 3012, not months. NULL for older rows.
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS badge_info JSONB;

-- v_last_messages is `SELECT *` as of its creation: recreate it so the new column shows too
-- (adding columns at the end keeps views that depend on it valid).
CREATE OR REPLACE VIEW v_last_messages AS
SELECT * FROM chat_messages ORDER BY sent_at DESC NULLS LAST, id DESC;
