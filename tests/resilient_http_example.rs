//! `examples/resilient_http.rs` over real HTTP on 127.0.0.1: the critical dependency
//! fails fast with 503, the non-critical one degrades to its fallback, and the breakers
//! open and close as the dependencies fail and recover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{run_example, summary};

fn assert_success(out: &std::process::Output, stdout: &str) {
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_scripted_story_degrades_fails_fast_and_recovers() {
    let (out, stdout) = run_example("resilient_http", &[]);
    assert_success(&out, &stdout);
    // Healthy: live answers. Recommender failing: degraded answers, its breaker opens,
    // then closes after one probe. Auth hanging: 503, then fast 503 while open.
    assert!(summary(&stdout, "ok") >= 8, "{stdout}");
    assert!(summary(&stdout, "degraded") >= 1, "{stdout}");
    assert!(summary(&stdout, "failed") >= 1, "{stdout}");
    assert!(
        stdout.contains("breaker recommendations  closed -> open"),
        "{stdout}"
    );
    assert!(
        stdout.contains("breaker recommendations  half-open -> closed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("breaker auth             closed -> open"),
        "{stdout}"
    );
    assert!(stdout.contains("auth circuit open"), "{stdout}");
    assert!(
        stdout.contains("breakers now: auth=open, recommendations=closed"),
        "{stdout}"
    );
}

#[test]
fn a_failing_non_critical_dependency_only_degrades_answers() {
    let (out, stdout) = run_example("resilient_http", &["--recs", "fail", "--requests", "10"]);
    assert_success(&out, &stdout);
    assert_eq!(summary(&stdout, "degraded"), 10, "{stdout}");
    assert_eq!(summary(&stdout, "failed"), 0, "{stdout}");
    assert!(
        stdout.contains("recommendations  closed -> open"),
        "{stdout}"
    );
}

#[test]
fn a_down_critical_dependency_fails_every_request_fast_with_503() {
    let (out, stdout) = run_example("resilient_http", &["--auth", "down", "--requests", "8"]);
    assert_success(&out, &stdout);
    assert_eq!(summary(&stdout, "failed"), 8, "{stdout}");
    assert_eq!(
        summary(&stdout, "ok") + summary(&stdout, "degraded"),
        0,
        "{stdout}"
    );
    assert!(stdout.contains("503 Service Unavailable"), "{stdout}");
    assert!(stdout.contains("auth circuit open"), "{stdout}");
}

#[test]
fn bad_flags_exit_with_a_usage_error_not_a_panic() {
    let (out, _) = run_example("resilient_http", &["--auth", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode"));
    let (help, stdout) = run_example("resilient_http", &["--help"]);
    assert!(help.status.success() && stdout.contains("USAGE"));
}
