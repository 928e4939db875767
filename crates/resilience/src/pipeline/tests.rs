use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::ConfigError;
use crate::backoff::Backoff;
use crate::circuit_breaker::CircuitBreakerLayer;

fn counting<F, Fut>(
    f: F,
) -> (
    impl Service<u32, Response = u32, Error = std::io::Error, Future = Fut> + Clone,
    Arc<AtomicU32>,
)
where
    F: Fn(u32) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<u32, std::io::Error>>,
{
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let svc = service_fn(move |x: u32| {
        counter.fetch_add(1, Ordering::SeqCst);
        f(x)
    });
    (svc, calls)
}

fn quick_retry(attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts: attempts,
        backoff: Backoff::constant(Duration::from_millis(10)),
        ..RetryConfig::default()
    }
}

#[test]
fn every_bad_section_is_a_config_error_naming_it() {
    let zero_bulkhead: PipelineConfig =
        serde_json::from_str(r#"{"bulkhead":{"max_concurrent":0}}"#).unwrap();
    assert!(matches!(
        PipelineLayer::builder("p").config(zero_bulkhead).build(),
        Err(ConfigError::InSection {
            section: "bulkhead",
            ..
        })
    ));
    let bad_breaker: PipelineConfig =
        serde_json::from_str(r#"{"circuit_breaker":{"failure_rate_threshold":140.0}}"#).unwrap();
    assert!(matches!(
        PipelineLayer::builder("p").config(bad_breaker).build(),
        Err(ConfigError::InSection {
            section: "circuit_breaker",
            ..
        })
    ));
    let cap_below_base: PipelineConfig = serde_json::from_str(
        r#"{"retry":{"backoff":{"kind":"exponential","base":"1s","max_delay":"10ms"}}}"#,
    )
    .unwrap();
    assert!(matches!(
        PipelineLayer::builder("p").config(cap_below_base).build(),
        Err(ConfigError::InSection {
            section: "retry",
            ..
        })
    ));
    let zero_rate: PipelineConfig = serde_json::from_str(r#"{"rate_limit":{"rate":0}}"#).unwrap();
    assert!(
        PipelineLayer::builder("p")
            .config(zero_rate)
            .build()
            .is_err()
    );
    let total_below_attempt: PipelineConfig =
        serde_json::from_str(r#"{"timeout":"2s","total_timeout":"1s"}"#).unwrap();
    assert!(matches!(
        PipelineLayer::builder("p")
            .config(total_below_attempt)
            .build(),
        Err(ConfigError::BelowMinimum {
            field: "total_timeout",
            ..
        })
    ));
    assert!(serde_json::from_str::<PipelineConfig>(r#"{"retyr":{}}"#).is_err());
}

#[test]
fn the_config_round_trips_through_serde() {
    let config = PipelineConfig {
        total_timeout: Some(Duration::from_secs(10)),
        retry: Some(quick_retry(4)),
        rate_limit: Some(RateLimitConfig {
            rate: 5,
            period: Duration::from_secs(1),
            burst: Some(2),
            max_wait: Duration::from_millis(5),
        }),
        bulkhead: Some(BulkheadConfig {
            max_concurrent: 3,
            max_wait: Duration::ZERO,
        }),
        timeout: Some(Duration::from_millis(1500)),
        ..PipelineConfig::default()
    };
    let text = serde_json::to_string(&config).unwrap();
    assert_eq!(
        serde_json::from_str::<PipelineConfig>(&text).unwrap(),
        config
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_pipeline_passes_calls_and_errors_through() {
    let (svc, calls) = counting(|x| async move {
        if x == 0 {
            Err(std::io::Error::other("zero"))
        } else {
            Ok(x)
        }
    });
    let svc = PipelineLayer::builder("p").build().unwrap().layer(svc);
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), 5);
    let err = svc.oneshot(0).await.unwrap_err();
    assert!(matches!(err, PipelineError::Inner(ref e) if e.is::<std::io::Error>()));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_not_retried_and_the_inner_service_is_not_called() {
    let breaker = CircuitBreakerLayer::builder("p").build().unwrap();
    breaker.handle().force_open();
    let (svc, calls) = counting(|x| async move { Ok(x) });
    let pipeline = PipelineLayer::builder("p")
        .retry(quick_retry(5))
        .circuit_breaker(breaker)
        .build_with_breaker()
        .unwrap();
    let err = pipeline.layer(svc).oneshot(1).await.unwrap_err();
    assert!(matches!(err, PipelineError::CircuitOpen(_)));
    assert!(err.is_rejection());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_attempt_is_retried_after_its_retry_after() {
    let (svc, calls) = counting(|x| async move { Ok(x) });
    let pipeline = PipelineLayer::builder("p")
        .config(serde_json::from_str(r#"{"rate_limit":{"rate":1,"period":"1s"}}"#).unwrap())
        .retry(quick_retry(2))
        .build()
        .unwrap();
    let svc = pipeline.layer(svc);
    svc.clone().oneshot(1).await.unwrap();
    let start = Instant::now();
    svc.oneshot(2).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_maps_to_its_variant() {
    let (svc, _) = counting(|x| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(x)
    });
    let pipeline = PipelineLayer::builder("p")
        .config(serde_json::from_str(r#"{"bulkhead":{"max_concurrent":1}}"#).unwrap())
        .build()
        .unwrap();
    let svc = pipeline.layer(svc);
    let mut first = svc.clone();
    first.ready().await.unwrap();
    let err = svc.oneshot(2).await.unwrap_err();
    assert!(matches!(err, PipelineError::BulkheadFull(_)));
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_cuts_retries_short() {
    let (svc, calls) = counting(|_| std::future::pending());
    let pipeline = PipelineLayer::builder("p")
        .timeout(Duration::from_millis(100))
        .total_timeout(Duration::from_millis(250))
        .retry(quick_retry(10))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = pipeline.layer(svc).oneshot(1).await.unwrap_err();
    assert!(matches!(err, PipelineError::Timeout(e) if e.duration() == Duration::from_millis(250)));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    // 0–100 ms, 110–210 ms, 220 ms–cut.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_counted_by_the_breaker_which_then_opens() {
    let (svc, calls) = counting(|_| std::future::pending());
    let breaker = CircuitBreakerLayer::builder("p")
        .consecutive_failures(2)
        .build()
        .unwrap();
    let handle = breaker.handle().clone();
    let pipeline = PipelineLayer::builder("p")
        .timeout(Duration::from_millis(100))
        .retry(quick_retry(5))
        .circuit_breaker(breaker)
        .build_with_breaker()
        .unwrap();
    let err = pipeline.layer(svc).oneshot(1).await.unwrap_err();
    // Two timed-out attempts open the circuit; the third attempt is refused, not retried.
    assert!(matches!(err, PipelineError::CircuitOpen(_)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(handle.state(), crate::circuit_breaker::CircuitState::Open);
}
