-- The inbox: one row per (consumer, event) handled. `{{table}}` is the configured
-- (possibly schema-qualified) table name, `{{name}}` its unqualified last part.
--
-- The primary key is the deduplication: a handler inserts its row with
-- ON CONFLICT DO NOTHING in its own transaction; a concurrent duplicate blocks on the
-- key until the first transaction ends, then inserts nothing (or, if the first rolled
-- back, inserts and runs).
CREATE TABLE IF NOT EXISTS {{table}} (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Retention cleanup deletes by age.
CREATE INDEX IF NOT EXISTS {{name}}_processed_at ON {{table}} (processed_at);
