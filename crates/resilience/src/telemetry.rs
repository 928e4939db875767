//! Where every layer reports what it did: `tracing` events always, and counters and
//! histograms through the [`metrics`](https://docs.rs/metrics) facade with the `metrics`
//! feature.
//!
//! Events carry the policy's name and what a reader needs (attempt, delay, reason) as
//! fields, never interpolated into the message, under the target
//! `palisade_resilience::<layer>`:
//!
//! | event | level | fields |
//! |---|---|---|
//! | timeout fired | `debug` | `after_ms` |
//! | retry scheduled | `debug` | `name`, `attempt`, `delay_ms` |
//! | retries given up | `warn` | `name`, `attempts`, `reason` |
//! | bulkhead rejected | `warn` | `name`, `max_concurrent` |
//! | rate limited | `debug` | `name`, `retry_after_ms` |
//! | fallback answered / failed | `debug` / `warn` | `name` |
//!
//! Metric names (all labelled `name`):
//! `palisade_timeouts_total`, `palisade_retries_total`, `palisade_retry_delay_seconds`
//! (histogram), `palisade_retries_exhausted_total` (label `reason`),
//! `palisade_bulkhead_rejections_total`, `palisade_bulkhead_wait_seconds` (histogram),
//! `palisade_rate_limited_total`, `palisade_fallbacks_total`,
//! `palisade_fallback_failures_total`.
//!
//! Nothing here runs on the success path of a call: only rejections, retries and
//! failures are reported, so telemetry adds no cost to a healthy call.

use std::time::Duration;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn timeout_elapsed(after: Duration) {
    tracing::debug!(target: "palisade_resilience::timeout", after_ms = ms(after), "call timed out");
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_timeouts_total").increment(1);
}

pub(crate) fn retry_scheduled(name: &str, attempt: u32, delay: Duration) {
    tracing::debug!(
        target: "palisade_resilience::retry",
        name,
        attempt,
        delay_ms = ms(delay),
        "retrying after failed attempt"
    );
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("palisade_retries_total", "name" => name.to_owned()).increment(1);
        metrics::histogram!("palisade_retry_delay_seconds", "name" => name.to_owned())
            .record(delay.as_secs_f64());
    }
}

pub(crate) fn retries_exhausted(name: &str, attempts: u32, reason: &'static str) {
    tracing::warn!(
        target: "palisade_resilience::retry",
        name,
        attempts,
        reason,
        "giving up retrying"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_retries_exhausted_total", "name" => name.to_owned(), "reason" => reason)
        .increment(1);
}

pub(crate) fn bulkhead_rejected(name: &str, max_concurrent: usize) {
    tracing::warn!(
        target: "palisade_resilience::bulkhead",
        name,
        max_concurrent,
        "bulkhead full, call rejected"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_bulkhead_rejections_total", "name" => name.to_owned()).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn bulkhead_waited(name: &str, waited: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("palisade_bulkhead_wait_seconds", "name" => name.to_owned())
        .record(waited.as_secs_f64());
}

pub(crate) fn rate_limited(name: &str, retry_after: Duration) {
    tracing::debug!(
        target: "palisade_resilience::rate_limit",
        name,
        retry_after_ms = ms(retry_after),
        "rate limit reached, call rejected"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_rate_limited_total", "name" => name.to_owned()).increment(1);
}

pub(crate) fn fallback_used(name: &str) {
    tracing::debug!(target: "palisade_resilience::fallback", name, "answering from fallback");
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_fallbacks_total", "name" => name.to_owned()).increment(1);
}

pub(crate) fn fallback_failed(name: &str) {
    tracing::warn!(target: "palisade_resilience::fallback", name, "fallback failed too");
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_fallback_failures_total", "name" => name.to_owned()).increment(1);
}
