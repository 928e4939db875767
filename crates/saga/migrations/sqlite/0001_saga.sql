-- palisade-saga, SQLite: one row per saga, an append-only history.
-- Instants are milliseconds since the Unix epoch (INTEGER), so they compare correctly.
CREATE TABLE IF NOT EXISTS palisade_saga (
    id                 TEXT    PRIMARY KEY NOT NULL,
    saga_type          TEXT    NOT NULL,
    definition_version INTEGER NOT NULL,
    definition         TEXT    NOT NULL, -- "type@version", matched by recovery claims
    state              TEXT    NOT NULL,
    cursor             INTEGER NOT NULL,
    backward           INTEGER NOT NULL,
    context            TEXT    NOT NULL,
    error              TEXT,
    version            INTEGER NOT NULL,
    owner              TEXT,
    lease_until        INTEGER,
    deadline           INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

-- Recovery claims scan only the active sagas.
CREATE INDEX IF NOT EXISTS palisade_saga_active
    ON palisade_saga (lease_until)
    WHERE state IN ('running', 'compensating');

-- Operators list by state and age.
CREATE INDEX IF NOT EXISTS palisade_saga_state_updated
    ON palisade_saga (state, updated_at);

CREATE TABLE IF NOT EXISTS palisade_saga_history (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id    TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    step       TEXT,
    attempt    INTEGER NOT NULL,
    error      TEXT,
    started_at INTEGER NOT NULL,
    at         INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS palisade_saga_history_saga
    ON palisade_saga_history (saga_id, seq);
