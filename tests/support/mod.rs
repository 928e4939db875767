//! Helpers shared by the root end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary of example `name`, next to this test's binary (cargo builds examples
/// for `cargo test`); built on demand when it is missing.
pub(crate) fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building example {name} failed");
    }
    bin
}

/// Runs example `name` with `args`; returns its output and its stdout as text.
pub(crate) fn run_example(name: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(example(name))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// The `key=value` pairs of the line starting with `summary:`.
pub(crate) fn summary(stdout: &str, key: &str) -> usize {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
