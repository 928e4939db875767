//! The hedging response future: the original attempt, the hedges, the timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::layer::Shared;
use crate::BoxError;

pin_project! {
    /// One hedge: wait for a clone of the service to be ready, then call it.
    struct Attempt<S, Req, F> {
        service: S,
        request: Option<Req>,
        #[pin]
        future: Option<F>,
    }
}

impl<S, Req> Future for Attempt<S, Req, S::Future>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(future) = this.future.as_mut().as_pin_mut() {
                return future.poll(cx).map_err(Into::into);
            }
            ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
            let Some(request) = this.request.take() else {
                return Poll::Ready(Err("hedge attempt polled after completion".into()));
            };
            this.future.set(Some(this.service.call(request)));
        }
    }
}

type BoxedAttempt<S, Req> = Pin<Box<Attempt<S, Req, <S as Service<Req>>::Future>>>;

pin_project! {
    /// The response future of a [`Hedge`](super::Hedge) service.
    ///
    /// Resolves with the first successful answer among the original attempt and its
    /// hedges, dropping (cancelling) the others at once. A failed attempt does not end the
    /// call while another is still running; when none is, the last error is returned.
    /// Dropping this future cancels every attempt.
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use palisade_resilience::hedge::HedgeLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let hedging = HedgeLayer::fixed(Duration::from_millis(50)).build()?;
    /// let mut svc = hedging.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // sends a hedge only if this one is slow
    /// assert_eq!(future.await?, 7);
    /// assert_eq!(hedging.hedges_won(), 0);
    /// # Ok(()) }
    /// ```
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        started: Instant,
        hedges: Vec<(BoxedAttempt<S, Req>, Instant)>,
        spare: S,
        request: Req,
        #[pin]
        timer: Sleep,
        armed: bool,
        sent: u32,
        last_error: Option<BoxError>,
        shared: Arc<Shared>,
    }
}

impl<S, Req> std::fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedges_sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(primary: S::Future, spare: S, request: Req, shared: Arc<Shared>) -> Self {
        let started = Instant::now();
        Self {
            primary: Some(primary),
            started,
            hedges: Vec::new(),
            spare,
            request,
            timer: tokio::time::sleep_until(started + shared.current_delay()),
            armed: true,
            sent: 0,
            last_error: None,
            shared,
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(primary) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(result) = primary.poll(cx)
            {
                this.primary.set(None);
                match result {
                    Ok(response) => {
                        this.shared.record_latency(this.started.elapsed());
                        this.hedges.clear();
                        return Poll::Ready(Ok(response));
                    }
                    Err(e) => *this.last_error = Some(e.into()),
                }
            }
            let mut i = 0;
            while i < this.hedges.len() {
                let (attempt, started) = &mut this.hedges[i];
                match attempt.as_mut().poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(Ok(response)) => {
                        this.shared.record_latency(started.elapsed());
                        this.shared.note_hedge_won();
                        this.hedges.clear();
                        this.primary.set(None);
                        return Poll::Ready(Ok(response));
                    }
                    Poll::Ready(Err(e)) => {
                        this.hedges.swap_remove(i);
                        *this.last_error = Some(e);
                    }
                }
            }
            if this.primary.is_none() && this.hedges.is_empty() {
                let error = this
                    .last_error
                    .take()
                    .unwrap_or_else(|| "hedged call polled after completion".into());
                return Poll::Ready(Err(error));
            }
            if !*this.armed || this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The delay passed with no answer: send a hedge, if the budget allows.
            *this.armed = false;
            if !this.shared.may_hedge() {
                return Poll::Pending;
            }
            let attempt = Attempt {
                service: this.spare.clone(),
                request: Some(this.request.clone()),
                future: None,
            };
            let now = Instant::now();
            this.hedges.push((Box::pin(attempt), now));
            *this.sent += 1;
            this.shared.note_hedge_sent();
            tracing::debug!(
                target: "palisade_resilience::hedge",
                hedge = *this.sent,
                "hedged request sent"
            );
            #[cfg(feature = "metrics")]
            metrics::counter!("palisade_hedges_total").increment(1);
            if *this.sent < this.shared.max_hedges {
                *this.armed = true;
                this.timer.as_mut().reset(now + this.shared.current_delay());
            }
            // Loop to poll the new attempt (and the timer, now re-armed).
        }
    }
}
