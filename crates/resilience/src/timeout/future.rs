use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::Elapsed;
use crate::BoxError;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout): the inner future raced against a
    /// timer.
    ///
    /// The timer is armed only if the inner future is not ready on its first poll, with
    /// its deadline counted from that first poll: a call that answers at once reads no
    /// clock and registers no timer, which is most of the cost of a timeout.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::timeout::TimeoutLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let mut svc = TimeoutLayer::new(Duration::from_secs(1))
    ///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) }));
    /// let future = svc.ready().await?.call(41); // this future
    /// assert_eq!(future.await?, 42);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, after: Duration) -> Self {
        Self {
            inner,
            sleep: None,
            after,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The inner future first: a response that is ready wins over a timer that fired.
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out.map_err(Into::into));
        }
        if this.sleep.is_none() {
            let deadline = Instant::now()
                .checked_add(*this.after)
                .unwrap_or_else(far_future);
            this.sleep.set(Some(sleep_until(deadline)));
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => {
                crate::telemetry::timeout_elapsed(*this.after);
                Poll::Ready(Err(Box::new(Elapsed::new(*this.after))))
            }
            _ => Poll::Pending,
        }
    }
}

/// Roughly 30 years from now, as tokio does for durations too long to add.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}
