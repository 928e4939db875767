//! Group commit in the PostgreSQL store: many concurrent transitions share statements,
//! yet each is written (or refused by its version check) on its own, with its history
//! in order, and every `update` has committed when it returns.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use palisade_saga::{
    HistoryEntry, HistoryEvent, PostgresStore, SagaId, SagaRecord, SagaState, SagaStore, StoreError,
};

async fn store() -> Option<(PostgresStore, palisade_testkit::postgres::FreshDatabase)> {
    let db = palisade_testkit::postgres::fresh_database().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(db.url())
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool);
    store.migrate().await.unwrap();
    Some((store, db))
}

fn record(n: usize) -> SagaRecord {
    let now = Utc::now();
    SagaRecord {
        id: SagaId::new(),
        saga_type: "batch-test".into(),
        definition_version: 1,
        state: SagaState::Running,
        cursor: 0,
        backward: false,
        context: serde_json::json!({ "n": n }),
        error: None,
        version: 1,
        owner: Some("test".into()),
        lease_until: Some(now),
        deadline: None,
        created_at: now,
        updated_at: now,
    }
}

fn entry(event: HistoryEvent, step: &str) -> HistoryEntry {
    let now = Utc::now();
    HistoryEntry {
        event,
        step: Some(step.into()),
        attempt: 1,
        error: None,
        started_at: now,
        at: now,
    }
}

/// The next transition of `r`: one step further, version bumped.
fn advance(r: &SagaRecord, step: u32) -> SagaRecord {
    let mut next = r.clone();
    next.cursor = step;
    next.version = r.version + 1;
    next.context = serde_json::json!({ "n": r.context["n"], "step": step });
    next.updated_at = Utc::now();
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_transitions_are_each_written_with_their_history_in_order() {
    let Some((store, _db)) = store().await else {
        return;
    };
    const SAGAS: usize = 300;
    const STEPS: u32 = 4;
    let mut records = Vec::new();
    for n in 0..SAGAS {
        let r = record(n);
        assert!(store.create(&r, &[]).await.unwrap().is_none());
        records.push(r);
    }
    // Every saga advances four times, all sagas at once, each one transition at a time
    // (as the orchestrator drives them): far more transitions in flight than writers.
    let tasks: Vec<_> = records
        .into_iter()
        .map(|mut r| {
            let store = store.clone();
            tokio::spawn(async move {
                for step in 1..=STEPS {
                    let next = advance(&r, step);
                    let history = [
                        entry(HistoryEvent::ActionSucceeded, &format!("s{step}")),
                        entry(HistoryEvent::ActionRetry, &format!("s{step}-note")),
                    ];
                    store.update(&next, r.version, &history).await.unwrap();
                    r = next;
                }
                r
            })
        })
        .collect();
    for task in tasks {
        let expected = task.await.unwrap();
        let stored = store.get(expected.id).await.unwrap().unwrap();
        assert_eq!(stored.version, 1 + i64::from(STEPS));
        assert_eq!(stored.cursor, STEPS);
        assert_eq!(stored.context, expected.context);
        let steps: Vec<String> = store
            .history(expected.id)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|h| h.step)
            .collect();
        let want: Vec<String> = (1..=STEPS)
            .flat_map(|s| [format!("s{s}"), format!("s{s}-note")])
            .collect();
        assert_eq!(steps, want, "history of {:?} out of order", expected.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_among_concurrent_ones_alone_gets_a_conflict_and_writes_nothing() {
    let Some((store, _db)) = store().await else {
        return;
    };
    let mut records = Vec::new();
    for n in 0..64 {
        let r = record(n);
        store.create(&r, &[]).await.unwrap();
        records.push(r);
    }
    let stale = records[17].id;
    let tasks: Vec<_> = records
        .iter()
        .map(|r| {
            let store = store.clone();
            let next = advance(r, 1);
            // Saga 17's writer read version 1 but claims it read version 0.
            let expected = if r.id == stale { 0 } else { r.version };
            tokio::spawn(async move {
                let history = [entry(HistoryEvent::ActionSucceeded, "s1")];
                (next.id, store.update(&next, expected, &history).await)
            })
        })
        .collect();
    for task in tasks {
        let (id, result) = task.await.unwrap();
        let stored = store.get(id).await.unwrap().unwrap();
        let history = store.history(id).await.unwrap();
        if id == stale {
            assert!(
                matches!(result, Err(StoreError::Conflict { expected: 0, .. })),
                "{result:?}"
            );
            assert_eq!(stored.version, 1, "the stale write changed nothing");
            assert!(history.is_empty(), "and added no history");
        } else {
            result.unwrap();
            assert_eq!(stored.version, 2);
            assert_eq!(history.len(), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_leaves_each_transition_to_be_written_alone() {
    let Some((store, _db)) = store().await else {
        return;
    };
    let good = record(1);
    store.create(&good, &[]).await.unwrap();
    // A transition the database refuses (a NUL byte in a text column fails the whole
    // statement): every transition that shared its batch is written alone instead, and
    // the bad one gets its own error.
    let bad = record(2);
    store.create(&bad, &[]).await.unwrap();
    let mut bad_next = advance(&bad, 1);
    bad_next.error = Some("nul \u{0} byte".into());
    let others: Vec<_> = (3..40)
        .map(|n| {
            let r = record(n);
            (r.clone(), advance(&r, 1))
        })
        .collect();
    for (r, _) in &others {
        store.create(r, &[]).await.unwrap();
    }
    let history = [entry(HistoryEvent::ActionSucceeded, "s1")];
    let good_next = advance(&good, 1);
    let (good_result, bad_result, other_results) = tokio::join!(
        store.update(&good_next, 1, &history),
        store.update(&bad_next, 1, &history),
        update_all(&store, &others, &history),
    );
    good_result.unwrap();
    assert!(
        matches!(bad_result, Err(StoreError::Database(_))),
        "{bad_result:?}"
    );
    for result in other_results {
        result.unwrap();
    }
    assert_eq!(store.get(good.id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.get(bad.id).await.unwrap().unwrap().version, 1);
    for (r, _) in &others {
        assert_eq!(store.get(r.id).await.unwrap().unwrap().version, 2);
    }
}

async fn update_all(
    store: &PostgresStore,
    pairs: &[(SagaRecord, SagaRecord)],
    history: &[HistoryEntry],
) -> Vec<Result<(), StoreError>> {
    let tasks: Vec<_> = pairs
        .iter()
        .map(|(r, next)| {
            let store = store.clone();
            let next = next.clone();
            let expected = r.version;
            let history = history.to_vec();
            tokio::spawn(async move { store.update(&next, expected, &history).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}
