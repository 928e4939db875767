//! Every retry, give-up, rejection and timeout reaches `tracing` with the policy's name
//! and the numbers a reader needs as fields.

#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_resilience::backoff::Backoff;
use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
use palisade_resilience::rate_limit::{RateLimitLayer, RateLimiter};
use palisade_resilience::retry::RetryLayer;
use palisade_resilience::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records each event as `target level field=value …`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}", meta.target(), meta.level()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn captured(body: impl std::future::Future<Output = ()>) -> Vec<String> {
    let capture = Capture::default();
    let log = capture.0.clone();
    tracing::subscriber::with_default(capture, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(body)
    });
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

#[test]
fn retries_and_the_give_up_are_traced_with_name_attempt_and_delay() {
    let events = captured(async {
        let failing = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) });
        let retry = RetryLayer::builder()
            .name("orders")
            .max_attempts(2)
            .backoff(Backoff::constant(Duration::from_millis(40)))
            .build()
            .unwrap();
        assert!(retry.layer(failing).oneshot(()).await.is_err());
    });
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("palisade_resilience::retry DEBUG")
                && e.contains("name=orders")
                && e.contains("attempt=1")
                && e.contains("delay_ms=40")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("palisade_resilience::retry WARN")
                && e.contains("attempts=2")
                && e.contains("reason=max_attempts")),
        "{events:#?}"
    );
}

#[test]
fn rejections_and_timeouts_are_traced() {
    let events = captured(async {
        let hang = service_fn(|_: ()| std::future::pending::<Result<(), std::io::Error>>());
        let _ = TimeoutLayer::new(Duration::from_millis(10))
            .layer(hang)
            .oneshot(())
            .await;

        let pool = Bulkhead::builder("inventory")
            .max_concurrent(1)
            .build()
            .unwrap();
        let ok = service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
        let mut a = BulkheadLayer::new(pool).layer(ok);
        let mut b = a.clone();
        a.ready().await.unwrap();
        let _ = b.ready().await.unwrap().call(()).await;

        let limiter = RateLimiter::builder("partner")
            .rate(1, Duration::from_secs(1))
            .build()
            .unwrap();
        let svc = RateLimitLayer::new(limiter).layer(ok);
        let _ = svc.clone().oneshot(()).await;
        let _ = svc.oneshot(()).await;
    });
    assert!(
        events
            .iter()
            .any(|e| e.contains("timeout DEBUG") && e.contains("after_ms=10")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.contains("bulkhead WARN")
            && e.contains("name=inventory")
            && e.contains("max_concurrent=1")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.contains("rate_limit DEBUG")
            && e.contains("name=partner")
            && e.contains("retry_after_ms=1000")),
        "{events:#?}"
    );
}
