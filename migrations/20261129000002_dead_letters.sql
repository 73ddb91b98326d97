-- Rows the database refused (a poison row must not take its batch down). `payload` is the row
-- as JSON text (text, not jsonb: jsonb cannot hold some of what made the row fail, e.g. \u0000).
CREATE TABLE IF NOT EXISTS dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    error       TEXT NOT NULL,
    received_at TIMESTAMPTZ,
    failed_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
