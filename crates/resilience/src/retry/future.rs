use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::RetriesExhausted;
use super::layer::Policy;
use super::policy::{Classify, GiveUpReason, Replay, RetryDecision, RetryEvent};
use crate::BoxError;
use crate::backoff::BackoffIter;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // Boxed: only a retry that waits pays for it, and the happy-path future stays small.
        Waiting { sleep: Pin<Box<Sleep>> },
        Readying,
    }
}

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    ///
    /// Cancellation: dropping it drops the attempt in flight (or the wait) and the kept
    /// request; nothing is retried after the drop.
    ///
    /// ```rust
    /// use palisade_resilience::retry::RetryLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let retry = RetryLayer::builder().max_attempts(3).build()?;
    /// let mut svc = retry.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
    /// let future = svc.ready().await?.call(7); // retries inside, if the outcome asks for it
    /// assert_eq!(future.await?, 7);
    /// # Ok(()) }
    /// ```
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: Option<Req>,
        policy: Arc<Policy<C, P>>,
        attempt: u32,
        // Set when the first retry is decided: the success path reads no clock.
        started: Option<Instant>,
        // Boxed on the first retry: the happy-path future stays small to move.
        backoff: Option<Box<BackoffIter>>,
    }
}

impl<S, Req, C, P> ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        future: S::Future,
        service: S,
        request: Option<Req>,
        policy: Arc<Policy<C, P>>,
    ) -> Self {
        // With a max_elapsed the clock must start now, at the first call.
        let started = policy.max_elapsed.map(|_| Instant::now());
        Self {
            state: State::Calling { future },
            service,
            request,
            policy,
            attempt: 1,
            started,
            backoff: None,
        }
    }
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<Req, S::Response, S::Error>,
    P: Replay<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let mut outcome = ready!(future.poll(cx));
                    let policy = &**this.policy;
                    let next = match this.request.take() {
                        Some(req) => Some(req),
                        None => policy.replay.restore(&mut outcome),
                    };
                    let Some(next) = next else {
                        // Nothing to send again: the classifier is not even asked.
                        return Poll::Ready(outcome.map_err(Into::into));
                    };
                    let delay = match policy.classify.classify(&next, &outcome) {
                        RetryDecision::DoNotRetry => {
                            return Poll::Ready(outcome.map_err(Into::into));
                        }
                        RetryDecision::RetryAfter(d) => d,
                        RetryDecision::Retry => this
                            .backoff
                            .get_or_insert_with(|| Box::new(policy.backoff.iter()))
                            .next()
                            .unwrap_or(Duration::ZERO),
                    };
                    if let Some(reason) = give_up(policy, *this.attempt, delay, *this.started) {
                        policy.emit(RetryEvent::GaveUp {
                            name: &policy.name,
                            attempts: *this.attempt,
                            reason,
                        });
                        return Poll::Ready(outcome.map_err(|e| {
                            Box::new(RetriesExhausted::new(*this.attempt, reason, e.into()))
                                as BoxError
                        }));
                    }
                    policy.emit(RetryEvent::Retrying {
                        name: &policy.name,
                        attempt: *this.attempt,
                        delay,
                    });
                    *this.request = Some(next);
                    if delay.is_zero() {
                        this.state.set(State::Readying);
                    } else {
                        this.state.set(State::Waiting {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        });
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(req) = this.request.take() else {
                        // Unreachable by construction: a retry is scheduled only with a request.
                        return Poll::Ready(Err(Box::new(RetriesExhausted::new(
                            *this.attempt,
                            GiveUpReason::NotReplayable,
                            "request lost".into(),
                        ))));
                    };
                    *this.request = this.policy.replay.keep(&req);
                    *this.attempt += 1;
                    let future = this.service.call(req);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

fn give_up<C, P>(
    policy: &Policy<C, P>,
    attempt: u32,
    delay: Duration,
    started: Option<Instant>,
) -> Option<GiveUpReason> {
    if attempt >= policy.max_attempts {
        return Some(GiveUpReason::MaxAttempts);
    }
    if let (Some(max), Some(started)) = (policy.max_elapsed, started)
        && started.elapsed().saturating_add(delay) > max
    {
        return Some(GiveUpReason::MaxElapsed);
    }
    if let Some(budget) = &policy.budget
        && !budget.try_withdraw()
    {
        return Some(GiveUpReason::BudgetExhausted);
    }
    None
}
