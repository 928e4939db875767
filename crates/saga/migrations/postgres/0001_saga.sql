-- palisade-saga, PostgreSQL: one row per saga, an append-only history.
CREATE TABLE IF NOT EXISTS palisade_saga (
    id                 UUID        PRIMARY KEY,
    saga_type          TEXT        NOT NULL,
    definition_version INTEGER     NOT NULL,
    definition         TEXT        NOT NULL, -- "type@version", matched by recovery claims
    state              TEXT        NOT NULL,
    cursor             INTEGER     NOT NULL,
    backward           BOOLEAN     NOT NULL,
    context            JSONB       NOT NULL,
    error              TEXT,
    version            BIGINT      NOT NULL,
    owner              TEXT,
    lease_until        TIMESTAMPTZ,
    deadline           TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

-- Recovery claims scan only the active sagas.
CREATE INDEX IF NOT EXISTS palisade_saga_active
    ON palisade_saga (lease_until)
    WHERE state IN ('running', 'compensating');

-- Operators list by state and age.
CREATE INDEX IF NOT EXISTS palisade_saga_state_updated
    ON palisade_saga (state, updated_at);

CREATE TABLE IF NOT EXISTS palisade_saga_history (
    seq        BIGSERIAL   PRIMARY KEY,
    saga_id    UUID        NOT NULL,
    event      TEXT        NOT NULL,
    step       TEXT,
    attempt    INTEGER     NOT NULL,
    error      TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    at         TIMESTAMPTZ NOT NULL
);

CREATE INDEX IF NOT EXISTS palisade_saga_history_saga
    ON palisade_saga_history (saga_id, seq);
