-- The outbox table. `{{table}}` is the configured (possibly schema-qualified) table name,
-- `{{name}}` its unqualified last part (index names may not carry a schema).
--
-- `seq` orders rows: per key, rows are published in `seq` order. PostgreSQL needs no
-- lease columns: a relay's claim is its open transaction holding advisory locks on key
-- buckets, bounded by idle_in_transaction_session_timeout, so a relay that dies
-- releases its rows at once.
CREATE TABLE IF NOT EXISTS {{table}} (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID        NOT NULL,
    topic           TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    source          TEXT        NOT NULL,
    event_key       TEXT,
    event_time      TIMESTAMPTZ NOT NULL,
    content_type    TEXT        NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    headers         TEXT        NOT NULL DEFAULT '{}',
    payload         BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    dead            BOOLEAN     NOT NULL DEFAULT false
);

-- Rows that failed at least once block later rows of their key; this index is empty
-- while everything publishes, so the per-row "is an earlier row of my key failing?"
-- probe in the claim costs one empty index lookup.
CREATE INDEX IF NOT EXISTS {{name}}_failing ON {{table}} (event_key, seq) WHERE attempts > 0 OR dead;
