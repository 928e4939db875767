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

/// A store whose writes fail now and then: some before applying, some after applying
/// (the reply is lost). The orchestrator retries, recognises its own landed write, and
/// every saga still ends as it should.
#[derive(Clone)]
struct FlakyStore {
    inner: MemoryStore,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl palisade_saga::SagaStore for FlakyStore {
    async fn create(
        &self,
        r: &palisade_saga::SagaRecord,
        h: &[palisade_saga::HistoryEntry],
    ) -> Result<Option<palisade_saga::SagaRecord>, palisade_saga::StoreError> {
        self.inner.create(r, h).await
    }
    async fn update(
        &self,
        r: &palisade_saga::SagaRecord,
        v: i64,
        h: &[palisade_saga::HistoryEntry],
    ) -> Result<(), palisade_saga::StoreError> {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match n % 3 {
            0 => Err(palisade_saga::StoreError::Unavailable(
                "connection reset before the write".into(),
            )),
            1 => {
                self.inner.update(r, v, h).await?;
                Err(palisade_saga::StoreError::Unavailable(
                    "connection reset after the commit".into(),
                ))
            }
            _ => self.inner.update(r, v, h).await,
        }
    }
    async fn renew_lease(
        &self,
        id: palisade_saga::SagaId,
        o: &str,
        v: i64,
        u: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), palisade_saga::StoreError> {
        self.inner.renew_lease(id, o, v, u).await
    }
    async fn claim(
        &self,
        o: &str,
        n: chrono::DateTime<chrono::Utc>,
        u: chrono::DateTime<chrono::Utc>,
        d: &[String],
        l: u32,
    ) -> Result<Vec<palisade_saga::SagaRecord>, palisade_saga::StoreError> {
        self.inner.claim(o, n, u, d, l).await
    }
    async fn get(
        &self,
        id: palisade_saga::SagaId,
    ) -> Result<Option<palisade_saga::SagaRecord>, palisade_saga::StoreError> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        f: &palisade_saga::ListFilter,
    ) -> Result<Vec<palisade_saga::SagaRecord>, palisade_saga::StoreError> {
        self.inner.list(f).await
    }
    async fn history(
        &self,
        id: palisade_saga::SagaId,
    ) -> Result<Vec<palisade_saga::HistoryEntry>, palisade_saga::StoreError> {
        self.inner.history(id).await
    }
}

#[tokio::test(start_paused = true)]
async fn failed_store_writes_are_retried_and_never_lose_progress() {
    let store = FlakyStore {
        inner: MemoryStore::new(),
        writes: Default::default(),
    };
    common::four_steps_complete_despite_write_failures(store.clone()).await;
    common::permanent_failure_compensates_in_reverse(store).await;
}
