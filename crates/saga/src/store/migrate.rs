//! The migrations shipped with the crate and the tiny runner that applies them.
//!
//! The runner keeps its own table, `palisade_saga_migrations`, instead of sqlx's shared
//! `_sqlx_migrations`: sqlx's migrator refuses a database that holds migrations it does
//! not know, so two crates (saga, outbox) could not migrate one database independently.

/// One migration: version, description, SQL.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: &[Migration] = &[Migration {
    version: 1,
    description: "saga and history tables",
    sql: include_str!("../../migrations/sqlite/0001_saga.sql"),
}];

#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    description: "saga and history tables",
    sql: include_str!("../../migrations/postgres/0001_saga.sql"),
}];

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS palisade_saga_migrations (\
     version BIGINT PRIMARY KEY NOT NULL, description TEXT NOT NULL)";
