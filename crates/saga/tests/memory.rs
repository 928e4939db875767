//! The orchestrator's promises on the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use palisade_saga::MemoryStore;
use proptest::prelude::*;

#[tokio::test(start_paused = true)]
async fn four_steps_complete_in_five_writes_on_memory() {
    common::four_steps_complete_in_five_writes(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_compensates_in_reverse_on_memory() {
    common::permanent_failure_compensates_in_reverse(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn pivot_forbids_compensation_after_it_succeeded_on_memory() {
    common::pivot_forbids_compensation_after_it_succeeded(MemoryStore::new()).await;
}

#[test]
fn compensation_after_pivot_is_a_definition_error() {
    common::compensation_after_pivot_is_a_definition_error();
}

#[tokio::test(start_paused = true)]
async fn deadline_triggers_compensation_on_memory() {
    common::deadline_triggers_compensation(MemoryStore::new(), std::time::Duration::from_secs(5))
        .await;
}

#[tokio::test(start_paused = true)]
async fn starting_twice_with_one_id_runs_once_on_memory() {
    common::starting_twice_with_one_id_runs_once(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn bad_context_parks_the_saga_and_unknown_type_is_an_error_on_memory() {
    common::bad_context_parks_the_saga_and_unknown_type_is_an_error(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn failing_compensation_parks_then_operator_retries_and_resolves_on_memory() {
    common::failing_compensation_parks_then_operator_retries_and_resolves(MemoryStore::new()).await;
}

#[tokio::test]
async fn stale_writer_is_rejected_on_memory() {
    common::stale_writer_is_rejected(MemoryStore::new()).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random definitions, a crash anywhere, a fresh orchestrator: every saga ends
    /// completed or compensated (parked only for a failing compensation), compensations
    /// run in reverse only for steps that ran, no step overlaps itself, one key per step.
    #[test]
    fn crash_anywhere_then_resume_ends_every_saga_on_memory(
        specs in proptest::collection::vec(saga_spec(), 1..4),
        point in crash_point(),
    ) {
        let store = MemoryStore::new();
        crash_recovery_case(|_| store.clone(), specs, point, true)?;
    }
}
