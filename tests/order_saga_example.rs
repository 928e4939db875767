//! `cargo run --example order_saga` is the front door: it must run on a fresh machine,
//! end with exit code 0 and a summary, and finish a saga that a crashed run left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The example binary next to this test's binary (cargo builds examples for `cargo
/// test`); built on demand when it is missing.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("order_saga{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "order_saga"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the example failed");
    }
    bin
}

fn database() -> String {
    let dir = std::env::temp_dir().join(palisade_testkit::unique_name("order_saga_example"));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join("orders.db").display())
}

fn run(args: &[&str]) -> (Output, String) {
    let out = Command::new(example())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

#[test]
fn example_runs_every_scenario_and_prints_the_summary() {
    let db = database();
    let (out, stdout) = run(&["--database-url", &db]);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("store: SQLite file"), "{stdout}");
    // Happy path, declined payment, out of stock, flaky inventory with its breaker, the
    // pivot that hangs once.
    assert!(stdout.contains("order #1001 completed"), "{stdout}");
    assert!(
        stdout.contains("order #1002 compensated") && stdout.contains("card declined"),
        "{stdout}"
    );
    assert!(
        stdout.contains("order #1003 compensated") && stdout.contains("refunded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("breaker `inventory`: closed → open"),
        "{stdout}"
    );
    assert!(
        stdout.contains("breaker `inventory`: half-open → closed"),
        "{stdout}"
    );
    assert!(stdout.contains("order #1004 completed"), "{stdout}");
    assert!(stdout.contains("order #1005 completed"), "{stdout}");
    assert!(
        stdout.contains("summary: completed 3, compensated 2, failed 0"),
        "{stdout}"
    );
}

#[test]
fn example_crashes_mid_saga_and_the_next_run_finishes_it() {
    let db = database();
    let (out, stdout) = run(&["--database-url", &db, "--crash-after", "charge_payment"]);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("simulated crash"), "{stdout}");
    assert!(!stdout.contains("summary:"), "{stdout}");
    // The charge was recorded before the crash; the reservation never started.
    assert!(stdout.contains("charge_payment/action → pay-1"), "{stdout}");
    assert!(!stdout.contains("reserve_inventory/action"), "{stdout}");

    let (out, stdout) = run(&["--database-url", &db]);
    assert!(out.status.success(), "exit {:?}\n{stdout}", out.status);
    assert!(
        stdout.contains("1 unfinished saga(s) from an earlier run"),
        "{stdout}"
    );
    assert!(stdout.contains("resumed 1 saga(s)"), "{stdout}");
    // The resumed saga continues at the step after the recorded one: no second charge.
    let resumed = stdout.split("▶ order #1001").next().unwrap();
    assert!(resumed.contains("reserve_inventory/action"), "{resumed}");
    assert!(!resumed.contains("Charge {"), "{resumed}");
    assert!(
        stdout.contains("summary: completed 4, compensated 2, failed 0"),
        "{stdout}"
    );
}

#[test]
fn example_help_explains_the_flags() {
    let (out, stdout) = run(&["--help"]);
    assert!(out.status.success());
    for flag in ["--crash-after", "--database-url", "--help"] {
        assert!(stdout.contains(flag), "{stdout}");
    }
    let (out, _) = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}
