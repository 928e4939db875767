//! The orchestrator's promises on the SQLite store (a file per test, no server).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use palisade_saga::PostgresStore;
use proptest::prelude::*;

async fn store() -> Option<PostgresStore> {
    let db = palisade_testkit::postgres::fresh_database().await?;
    Some(open(db.url()).await)
}

async fn open(url: &str) -> PostgresStore {
    let store = PostgresStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    // Migrating twice is harmless.
    store.migrate().await.unwrap();
    store
}

macro_rules! store {
    () => {
        match store().await {
            Some(s) => s,
            None => return,
        }
    };
}

#[tokio::test]
async fn four_steps_complete_in_five_writes_on_postgres() {
    common::four_steps_complete_in_five_writes(store!()).await;
}

#[tokio::test]
async fn permanent_failure_compensates_in_reverse_on_postgres() {
    common::permanent_failure_compensates_in_reverse(store!()).await;
}

#[tokio::test]
async fn pivot_forbids_compensation_after_it_succeeded_on_postgres() {
    common::pivot_forbids_compensation_after_it_succeeded(store!()).await;
}

// Real time: a paused clock would auto-advance past sqlx's own timeouts while the
// database answers. The deadline is short and the slow step sleeps an hour.
#[tokio::test]
async fn deadline_triggers_compensation_on_postgres() {
    common::deadline_triggers_compensation(store!(), Duration::from_millis(300)).await;
}

#[tokio::test]
async fn starting_twice_with_one_id_runs_once_on_postgres() {
    common::starting_twice_with_one_id_runs_once(store!()).await;
}

#[tokio::test]
async fn bad_context_parks_the_saga_and_unknown_type_is_an_error_on_postgres() {
    common::bad_context_parks_the_saga_and_unknown_type_is_an_error(store!()).await;
}

#[tokio::test]
async fn failing_compensation_parks_then_operator_retries_and_resolves_on_postgres() {
    common::failing_compensation_parks_then_operator_retries_and_resolves(store!()).await;
}

#[tokio::test]
async fn stale_writer_is_rejected_on_postgres() {
    common::stale_writer_is_rejected(store!()).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The crash-recovery property on SQLite: see the memory test.
    #[test]
    fn crash_anywhere_then_resume_ends_every_saga_on_postgres(
        specs in proptest::collection::vec(saga_spec(), 1..4),
        point in crash_point(),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let Some(db) = rt.block_on(palisade_testkit::postgres::fresh_database()) else { return Ok(()) };
        drop(rt);
        crash_recovery_case(|rt| rt.block_on(open(db.url())), specs, point, false)?;
    }
}
