//! Saga orchestrator figures, side by side with Oxide's `steno` 0.5 in the same run.
//!
//! ```text
//! cargo bench -p palisade-benches --bench saga
//! SAGA_BENCH_SAGAS=100000 SAGA_BENCH_SQL_SAGAS=5000 cargo bench -p palisade-benches --bench saga
//! ```
//!
//! A bench binary (no criterion): each figure is one timed run of many sagas with 64 in
//! flight, which is what a throughput and a memory figure need. It prints:
//!
//! 1. in-memory stores, 4 no-op steps: palisade vs steno, sagas/s, store writes per
//!    saga, and the resident memory each leaves behind (steno keeps every finished saga;
//!    palisade keeps none with `with_finished_capacity(0)`);
//! 2. the same with a failing 3rd step (two undos);
//! 3. SQLite and PostgreSQL: sagas/s of a 4-step no-op saga next to the same number of
//!    single-row write transactions from a plain sqlx loop at the same concurrency;
//! 4. recovery: 10 000 in-flight sagas (leases expired) resumed and finished by a fresh
//!    orchestrator, on SQLite and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_saga::{
    MemoryStore, Orchestrator, PostgresStore, SagaDefinition, SagaId, SagaRecord, SagaState,
    SagaStore, SqliteStore, Step, StepError, StepPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

const IN_FLIGHT: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// palisade
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ctx {
    n: u64,
}

fn palisade_definition(fail_third: bool) -> SagaDefinition<Ctx> {
    let policy = StepPolicy::default().max_attempts(1);
    let noop = |name: &str| {
        Step::new(name, |c: Ctx, _| async move { Ok::<_, StepError>(c) })
            .compensate(|_: Ctx, _| async move { Ok(()) })
            .policy(policy)
    };
    let mut b = SagaDefinition::builder(if fail_third { "bench-undo" } else { "bench" }, 1)
        .step(noop("a"))
        .step(noop("b"));
    b = if fail_third {
        b.step(
            Step::new("c", |_: Ctx, _| async move {
                Err::<Ctx, _>(StepError::permanent("no"))
            })
            .policy(policy),
        )
    } else {
        b.step(noop("c"))
    };
    b.step(noop("d")).build().expect("valid definition")
}

/// Runs `n` sagas with `IN_FLIGHT` in flight; returns (seconds, store writes).
async fn run_palisade<S: SagaStore>(store: S, n: usize, fail_third: bool) -> (f64, u64) {
    let def = palisade_definition(fail_third);
    let orch = Orchestrator::builder(store)
        .register(&def)
        .concurrency(IN_FLIGHT)
        .build()
        .expect("valid orchestrator");
    let expected = if fail_third {
        SagaState::Compensated
    } else {
        SagaState::Completed
    };
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("open");
        let (orch, def) = (orch.clone(), def.clone());
        tasks.spawn(async move {
            let id = orch.start(&def, &Ctx::default()).await.expect("start");
            let done = orch.outcome(id).await.expect("outcome");
            assert_eq!(done.state, expected);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (started.elapsed().as_secs_f64(), orch.store_writes())
}

// ---------------------------------------------------------------------------
// steno
// ---------------------------------------------------------------------------

mod steno_side {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use steno::{
        ActionContext, ActionError, ActionFunc, ActionRegistry, DagBuilder, Node, SagaDag, SagaId,
        SagaName, SagaType, SecClient,
    };

    #[derive(Debug)]
    pub(crate) struct Bench;
    impl SagaType for Bench {
        type ExecContextType = ();
    }

    /// Counts the writes steno makes to its store.
    #[derive(Debug)]
    pub(crate) struct CountingStore {
        inner: steno::InMemorySecStore,
        pub(crate) writes: Arc<AtomicU64>,
    }

    #[async_trait::async_trait]
    impl steno::SecStore for CountingStore {
        async fn saga_create(&self, p: steno::SagaCreateParams) -> Result<(), anyhow::Error> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.inner.saga_create(p).await
        }
        async fn record_event(&self, event: steno::SagaNodeEvent) {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.inner.record_event(event).await
        }
        async fn saga_update(&self, id: SagaId, update: steno::SagaCachedState) {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.inner.saga_update(id, update).await
        }
    }

    async fn ok(_: ActionContext<Bench>) -> Result<(), ActionError> {
        Ok(())
    }
    async fn fail(_: ActionContext<Bench>) -> Result<(), ActionError> {
        Err(ActionError::action_failed("no".to_owned()))
    }
    async fn undo(_: ActionContext<Bench>) -> Result<(), anyhow::Error> {
        Ok(())
    }

    pub(crate) struct Steno {
        pub(crate) sec: SecClient,
        pub(crate) registry: Arc<ActionRegistry<Bench>>,
        pub(crate) dag: Arc<SagaDag>,
        pub(crate) writes: Arc<AtomicU64>,
    }

    pub(crate) fn setup(fail_third: bool) -> Steno {
        let writes = Arc::new(AtomicU64::new(0));
        let store = Arc::new(CountingStore {
            inner: steno::InMemorySecStore::new(),
            writes: Arc::clone(&writes),
        });
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let sec = steno::sec(log, store);
        let ok_action = ActionFunc::new_action("ok", ok, undo);
        let fail_action = ActionFunc::new_action("fail", fail, undo);
        let mut registry = ActionRegistry::new();
        registry.register(Arc::clone(&ok_action));
        registry.register(Arc::clone(&fail_action));
        let mut b = DagBuilder::new(SagaName::new("bench"));
        b.append(Node::action("a", "A", ok_action.as_ref()));
        b.append(Node::action("b", "B", ok_action.as_ref()));
        if fail_third {
            b.append(Node::action("c", "C", fail_action.as_ref()));
        } else {
            b.append(Node::action("c", "C", ok_action.as_ref()));
        }
        b.append(Node::action("d", "D", ok_action.as_ref()));
        let dag = Arc::new(SagaDag::new(
            b.build().expect("valid dag"),
            serde_json::json!({}),
        ));
        Steno {
            sec,
            registry: Arc::new(registry),
            dag,
            writes,
        }
    }

    pub(crate) async fn one(s: &Steno) -> bool {
        let id = SagaId::new_v4();
        let fut = s
            .sec
            .saga_create(
                id,
                Arc::new(()),
                Arc::clone(&s.dag),
                Arc::clone(&s.registry),
            )
            .await
            .expect("create");
        s.sec.saga_start(id).await.expect("start");
        fut.await.kind.is_ok()
    }
}

async fn run_steno(n: usize, fail_third: bool) -> (f64, u64) {
    let s = Arc::new(steno_side::setup(fail_third));
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("open");
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            let ok = steno_side::one(&s).await;
            assert_eq!(ok, !fail_third);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    let writes = s.writes.load(Ordering::Relaxed);
    // Keep the SEC (and every saga it holds) alive until RSS is read.
    std::mem::forget(s);
    (secs, writes)
}

// ---------------------------------------------------------------------------
// Raw sqlx baselines and recovery
// ---------------------------------------------------------------------------

/// `n` single-row write transactions (an UPDATE of one row each, autocommit) from 64
/// concurrent tasks on the pool.
async fn raw_sqlite(pool: &sqlx::SqlitePool, n: usize) -> f64 {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS raw_bench (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("table");
    for i in 0..IN_FLIGHT as i64 {
        sqlx::query("INSERT OR IGNORE INTO raw_bench (id, v) VALUES (?, 0)")
            .bind(i)
            .execute(pool)
            .await
            .expect("row");
    }
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..IN_FLIGHT as i64 {
        let (pool, counter) = (pool.clone(), Arc::clone(&counter));
        tasks.spawn(async move {
            while (counter.fetch_add(1, Ordering::Relaxed) as usize) < n {
                sqlx::query("UPDATE raw_bench SET v = v + 1 WHERE id = ?")
                    .bind(t)
                    .execute(&pool)
                    .await
                    .expect("update");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed().as_secs_f64()
}

async fn raw_postgres(pool: &sqlx::PgPool, n: usize) -> f64 {
    sqlx::query("CREATE TABLE IF NOT EXISTS raw_bench (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
        .execute(pool)
        .await
        .expect("table");
    for i in 0..IN_FLIGHT as i64 {
        sqlx::query("INSERT INTO raw_bench (id, v) VALUES ($1, 0) ON CONFLICT DO NOTHING")
            .bind(i)
            .execute(pool)
            .await
            .expect("row");
    }
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..IN_FLIGHT as i64 {
        let (pool, counter) = (pool.clone(), Arc::clone(&counter));
        tasks.spawn(async move {
            while (counter.fetch_add(1, Ordering::Relaxed) as usize) < n {
                sqlx::query("UPDATE raw_bench SET v = v + 1 WHERE id = $1")
                    .bind(t)
                    .execute(&pool)
                    .await
                    .expect("update");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed().as_secs_f64()
}

/// Inserts `n` sagas as a dead instance left them (running, after step 1, lease expired),
/// then times a fresh orchestrator resuming and finishing all of them.
async fn recovery<S: SagaStore + Clone>(store: S, n: usize) -> f64 {
    let def = palisade_definition(false);
    let past = chrono::Utc::now() - chrono::Duration::seconds(60);
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("open");
        let store = store.clone();
        tasks.spawn(async move {
            let record = SagaRecord {
                id: SagaId::new(),
                saga_type: "bench".into(),
                definition_version: 1,
                state: SagaState::Running,
                cursor: 1,
                backward: false,
                context: serde_json::json!({ "n": 0 }),
                error: None,
                version: 1,
                owner: Some("dead".into()),
                lease_until: Some(past),
                deadline: None,
                created_at: past,
                updated_at: past,
            };
            store.create(&record, &[]).await.expect("insert");
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let orch = Orchestrator::builder(store.clone())
        .register(&def)
        .concurrency(IN_FLIGHT)
        .build()
        .expect("valid orchestrator");
    let started = Instant::now();
    let resumed = orch.recover().await.expect("recover");
    orch.idle().await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(resumed, n);
    let left = store
        .list(
            &palisade_saga::ListFilter::default()
                .state(SagaState::Running)
                .limit(10),
        )
        .await
        .expect("list");
    assert!(left.is_empty(), "sagas left running after recovery");
    secs
}

fn line(label: &str, n: usize, secs: f64, writes: Option<u64>) {
    let w = writes
        .map(|w| format!("{:>6.2} writes/saga", w as f64 / n as f64))
        .unwrap_or_default();
    println!(
        "  {label:<44} {n:>7} sagas {secs:>7.2} s {:>9.0} sagas/s  {w}",
        n as f64 / secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we ignore.
    let n = env_usize("SAGA_BENCH_SAGAS", 100_000);
    let steno_n = env_usize("SAGA_BENCH_STENO_SAGAS", 20_000);
    let sql_n = env_usize("SAGA_BENCH_SQL_SAGAS", 5_000);
    let recovery_n = env_usize("SAGA_BENCH_RECOVERY_SAGAS", 10_000);

    println!("saga bench: 4 no-op steps, {IN_FLIGHT} sagas in flight, 2 tokio workers");
    println!("\n[in memory] palisade MemoryStore (finished capacity 0) vs steno InMemorySecStore");
    let rss0 = rss_kib("VmRSS:");
    let (secs, writes) = run_palisade(MemoryStore::new().with_finished_capacity(0), n, false).await;
    line("palisade, 4 steps succeed", n, secs, Some(writes));
    let (secs_u, writes_u) =
        run_palisade(MemoryStore::new().with_finished_capacity(0), n / 2, true).await;
    line(
        "palisade, 3rd step fails (two undos)",
        n / 2,
        secs_u,
        Some(writes_u),
    );
    let rss1 = rss_kib("VmRSS:");
    let hwm1 = rss_kib("VmHWM:");
    println!(
        "  palisade memory: RSS {rss0} KiB before, {rss1} KiB after {} sagas (peak {hwm1} KiB)",
        n + n / 2
    );
    let (ssecs, swrites) = run_steno(steno_n, false).await;
    line("steno, 4 steps succeed", steno_n, ssecs, Some(swrites));
    let rss2 = rss_kib("VmRSS:");
    let (ssecs_u, swrites_u) = run_steno(steno_n / 2, true).await;
    line(
        "steno, 3rd step fails (two undos)",
        steno_n / 2,
        ssecs_u,
        Some(swrites_u),
    );
    println!(
        "  steno memory: RSS grew {} KiB over {steno_n} sagas ({:.1} KiB per finished saga, all kept)",
        rss2.saturating_sub(rss1),
        rss2.saturating_sub(rss1) as f64 / steno_n as f64
    );
    println!(
        "  ratio palisade/steno: {:.2}x (success), {:.2}x (two undos)",
        (n as f64 / secs) / (steno_n as f64 / ssecs),
        ((n / 2) as f64 / secs_u) / ((steno_n / 2) as f64 / ssecs_u)
    );

    println!("\n[SQLite] file in a temp dir, one connection (WAL, synchronous=NORMAL)");
    let dir = std::env::temp_dir().join(format!("palisade-saga-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = SqliteStore::connect(&format!("sqlite://{}", dir.join("bench.db").display()))
        .await
        .expect("sqlite");
    store.migrate().await.expect("migrate");
    let (secs, writes) = run_palisade(store.clone(), sql_n, false).await;
    line("palisade on SQLite", sql_n, secs, Some(writes));
    let raw = raw_sqlite(store.pool(), writes as usize).await;
    println!(
        "  raw sqlx loop: {writes} single-row UPDATEs in {raw:.2} s ({:.0}/s): the same writes as the sagas above",
        writes as f64 / raw
    );
    let rsecs = recovery(store, recovery_n).await;
    println!("  recovery: {recovery_n} in-flight sagas resumed and finished in {rsecs:.2} s");
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "\n[PostgreSQL] 127.0.0.1:5432, pool of 16; concurrent transitions share statements (group commit)"
    );
    match palisade_testkit::postgres::fresh_database().await {
        None => println!("  skipped: PostgreSQL unreachable"),
        Some(db) => {
            let store = PostgresStore::connect(db.url()).await.expect("postgres");
            store.migrate().await.expect("migrate");
            let commits_before = commits(store.pool()).await;
            let (secs, writes) = run_palisade(store.clone(), sql_n, false).await;
            line("palisade on PostgreSQL", sql_n, secs, Some(writes));
            let commits = commits(store.pool()).await - commits_before;
            println!(
                "  {commits} commits (round trips that wrote) for {writes} store writes: {:.2} per write",
                commits as f64 / writes as f64
            );
            let raw = raw_postgres(store.pool(), writes as usize).await;
            println!(
                "  raw sqlx loop: {writes} single-row UPDATEs in {raw:.2} s ({:.0}/s): the same writes as the sagas above",
                writes as f64 / raw
            );
            let rsecs = recovery(store.clone(), recovery_n).await;
            println!(
                "  recovery: {recovery_n} in-flight sagas resumed and finished in {rsecs:.2} s"
            );
            store.pool().close().await;
            let _ = db.drop_database().await;
        }
    }
    let _ = Duration::ZERO;
}

/// Transactions committed in the current database so far (each write statement here
/// is its own transaction). The server publishes its counters with a short delay.
async fn commits(pool: &sqlx::PgPool) -> i64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_database")
}
