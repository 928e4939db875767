//! The facade re-exports the four crates, and the README's pipeline config is valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use palisade::resilience::pipeline::{PipelineConfig, PipelineLayer};

/// The configuration shown in the README's tour, verbatim.
const README_PIPELINE: &str = r#"{
    "timeout": "300ms",
    "retry": { "max_attempts": 3, "backoff": { "kind": "exponential", "base": "20ms" } },
    "circuit_breaker": { "failure_rate_threshold": 50.0 },
    "bulkhead": { "max_concurrent": 32 }
}"#;

#[test]
fn the_readme_pipeline_config_builds() {
    let readme = include_str!("../README.md");
    assert!(readme.contains(README_PIPELINE), "README and test disagree");
    let config: PipelineConfig = serde_json::from_str(README_PIPELINE).unwrap();
    let layer = PipelineLayer::builder("inventory")
        .config(config)
        .build()
        .unwrap();
    assert_eq!(layer.bulkhead().map(|b| b.available()), Some(32));
}

#[test]
fn an_out_of_range_threshold_is_a_config_error_not_a_panic() {
    let config: PipelineConfig =
        serde_json::from_str(r#"{ "circuit_breaker": { "failure_rate_threshold": 140.0 } }"#)
            .unwrap();
    assert!(PipelineLayer::builder("x").config(config).build().is_err());
}

#[test]
fn every_crate_is_reachable_through_the_facade() {
    let envelope = palisade::events::Envelope::new("t", "s", Vec::new());
    assert_eq!(envelope.id.get_version_num(), 7);
    assert_eq!(
        palisade::outbox::DEFAULT_TABLE,
        palisade::outbox::Outbox::new().table()
    );
    let _store = palisade::saga::MemoryStore::new();
}
