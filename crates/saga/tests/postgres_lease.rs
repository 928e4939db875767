//! Two orchestrator processes on one PostgreSQL: one is killed (SIGKILL, by pid) in the
//! middle of its sagas; the other takes them over once the lease expired and finishes
//! them, re-running the interrupted step with the same idempotency key.
//!
//! The dying instance is this same test binary, re-invoked with `--ignored --exact
//! child_orchestrator_process` and the database URL in an environment variable.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_saga::{
    HistoryEvent, Orchestrator, PostgresStore, SagaDefinition, SagaId, SagaState, Step, StepError,
    StepPolicy,
};
use serde::{Deserialize, Serialize};

const CHILD_ENV: &str = "PALISADE_SAGA_CHILD_URL";
const SAGAS: usize = 8;
const LEASE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ctx {
    steps: Vec<String>,
}

/// The definition both processes register; `hang` makes the second step never return
/// (in the child, so that it dies in the middle of it).
fn definition(hang: bool, keys: Arc<Mutex<HashMap<SagaId, String>>>) -> SagaDefinition<Ctx> {
    let policy = StepPolicy::default().no_timeout();
    SagaDefinition::builder("lease-test", 1)
        .step(
            Step::new("first", |mut c: Ctx, _| async move {
                c.steps.push("first".into());
                Ok::<_, StepError>(c)
            })
            .compensate(|_: Ctx, _| async move { Ok(()) }),
        )
        .step(
            Step::new("second", move |mut c: Ctx, step| {
                let keys = Arc::clone(&keys);
                async move {
                    keys.lock()
                        .unwrap()
                        .insert(step.saga_id, step.key.to_string());
                    if hang {
                        println!("IN_SECOND {} {}", step.saga_id, step.key);
                        std::future::pending::<()>().await;
                    }
                    c.steps.push("second".into());
                    Ok::<_, StepError>(c)
                }
            })
            .policy(policy),
        )
        .step(Step::new("third", |mut c: Ctx, _| async move {
            c.steps.push("third".into());
            Ok::<_, StepError>(c)
        }))
        .build()
        .unwrap()
}

#[tokio::test]
#[ignore = "the child process of killed_orchestrator_sagas_finish_on_the_other_after_the_lease"]
async fn child_orchestrator_process() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = PostgresStore::connect(&url).await.unwrap();
    let def = definition(true, Arc::default());
    let orch = Orchestrator::builder(store)
        .owner("child")
        .lease(LEASE)
        .register(&def)
        .build()
        .unwrap();
    for _ in 0..SAGAS {
        orch.start(&def, &Ctx::default()).await.unwrap();
    }
    // Hang (renewing leases) until killed.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_orchestrator_sagas_finish_on_the_other_after_the_lease() {
    let Some(db) = palisade_testkit::postgres::fresh_database().await else {
        return;
    };
    let store = PostgresStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_orchestrator_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Wait until every saga is inside its second step in the child. A plain thread, so
    // that a failing test does not wait for it.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut keys = HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print its own text before ours on the same line.
            if let Some(at) = line.find("IN_SECOND ") {
                let rest = &line[at + "IN_SECOND ".len()..];
                let (id, key) = rest.split_once(' ').unwrap();
                keys.insert(id.parse::<SagaId>().unwrap(), key.to_owned());
                if keys.len() == SAGAS {
                    break;
                }
            }
        }
        let _ = tx.send(keys);
    });
    let child_keys = match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(keys)) => keys,
        _ => {
            let _ = child.kill();
            panic!("the child never reached its second steps");
        }
    };
    assert_eq!(child_keys.len(), SAGAS);
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL to that pid: no cleanup, no last write
    child.wait().unwrap();

    // The child's sagas are still leased to it.
    let keys = Arc::new(Mutex::new(HashMap::new()));
    let def = definition(false, Arc::clone(&keys));
    let orch = Orchestrator::builder(store)
        .owner("survivor")
        .lease(LEASE)
        .register(&def)
        .build()
        .unwrap();
    for id in child_keys.keys() {
        let r = orch.status(*id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.cursor, r.owner.as_deref()),
            (SagaState::Running, 1, Some("child")),
            "child pid {pid}"
        );
    }
    let recovery = orch.spawn_recovery(Duration::from_millis(100));
    for (id, child_key) in &child_keys {
        let done = tokio::time::timeout(Duration::from_secs(30), orch.outcome(*id))
            .await
            .expect("the survivor did not finish the saga")
            .unwrap();
        assert_eq!(done.state, SagaState::Completed);
        let ctx: Ctx = serde_json::from_value(done.context).unwrap();
        // "first" ran once (its success was recorded); "second" re-ran after the takeover.
        assert_eq!(ctx.steps, ["first", "second", "third"]);
        assert_eq!(
            keys.lock().unwrap().get(id),
            Some(child_key),
            "same idempotency key on the re-run"
        );
        let history = orch.history(*id).await.unwrap();
        assert!(history.iter().any(|h| h.event == HistoryEvent::Resumed));
        let firsts = history
            .iter()
            .filter(|h| {
                h.event == HistoryEvent::ActionSucceeded && h.step.as_deref() == Some("first")
            })
            .count();
        assert_eq!(firsts, 1);
    }
    orch.shutdown();
    recovery.await.unwrap();
}
