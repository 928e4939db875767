//! The orchestrator's promises on the SQLite store (a file per test, no server).
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use palisade_saga::SqliteStore;
use proptest::prelude::*;

fn fresh_url() -> String {
    let dir = std::env::temp_dir().join(palisade_testkit::unique_name("palisade_saga"));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join("saga.db").display())
}

async fn store() -> SqliteStore {
    open(&fresh_url()).await
}

async fn open(url: &str) -> SqliteStore {
    let store = SqliteStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    // Migrating twice is harmless.
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn four_steps_complete_in_five_writes_on_sqlite() {
    common::four_steps_complete_in_five_writes(store().await).await;
}

#[tokio::test]
async fn permanent_failure_compensates_in_reverse_on_sqlite() {
    common::permanent_failure_compensates_in_reverse(store().await).await;
}

#[tokio::test]
async fn pivot_forbids_compensation_after_it_succeeded_on_sqlite() {
    common::pivot_forbids_compensation_after_it_succeeded(store().await).await;
}

// Real time: a paused clock would auto-advance past sqlx's own timeouts while SQLite's worker
// thread runs. The deadline is short and the slow step sleeps an hour.
#[tokio::test]
async fn deadline_triggers_compensation_on_sqlite() {
    common::deadline_triggers_compensation(store().await, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn starting_twice_with_one_id_runs_once_on_sqlite() {
    common::starting_twice_with_one_id_runs_once(store().await).await;
}

#[tokio::test]
async fn bad_context_parks_the_saga_and_unknown_type_is_an_error_on_sqlite() {
    common::bad_context_parks_the_saga_and_unknown_type_is_an_error(store().await).await;
}

#[tokio::test]
async fn failing_compensation_parks_then_operator_retries_and_resolves_on_sqlite() {
    common::failing_compensation_parks_then_operator_retries_and_resolves(store().await).await;
}

#[tokio::test]
async fn stale_writer_is_rejected_on_sqlite() {
    common::stale_writer_is_rejected(store().await).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// The crash-recovery property on SQLite: see the memory test.
    #[test]
    fn crash_anywhere_then_resume_ends_every_saga_on_sqlite(
        specs in proptest::collection::vec(saga_spec(), 1..4),
        point in crash_point(),
    ) {
        let url = fresh_url();
        crash_recovery_case(|rt| rt.block_on(open(&url)), specs, point, false)?;
    }
}
