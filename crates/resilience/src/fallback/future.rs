use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::answer::Answer;
use super::layer::Shared;
use super::{FallbackFailed, Predicate};
use crate::BoxError;

pin_project! {
    #[project = StateProj]
    enum State<F, G> {
        Primary { #[pin] future: F },
        Fallback { #[pin] future: G, primary: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`Fallback`](super::Fallback): the primary call, then the
    /// fallback's answer if the outcome matched.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::FallbackLayer;
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down = service_fn(|_: u32| async { Err::<u32, _>(std::io::Error::other("down")) });
    /// let mut svc = FallbackLayer::from_fn(|_: &Result<u32, BoxError>| Ok(0)).layer(down);
    /// let future = svc.ready().await?.call(7); // answers from the fallback on failure
    /// assert_eq!(future.await?, 0);
    /// # Ok(()) }
    /// ```
    pub struct ResponseFuture<F, P, A, Req, Res>
    where
        A: Answer<Req, Res>,
    {
        #[pin]
        state: State<F, A::Future>,
        kept: Option<A::Kept>,
        shared: Arc<Shared<P, A>>,
    }
}

impl<F, P, A: Answer<Req, Res>, Req, Res> fmt::Debug for ResponseFuture<F, P, A, Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("fallback", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<F, P, A: Answer<Req, Res>, Req, Res> ResponseFuture<F, P, A, Req, Res> {
    pub(crate) fn new(future: F, kept: A::Kept, shared: Arc<Shared<P, A>>) -> Self {
        Self {
            state: State::Primary { future },
            kept: Some(kept),
            shared,
        }
    }
}

impl<F, E, P, A, Req, Res> Future for ResponseFuture<F, P, A, Req, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    P: Predicate<Res>,
    A: Answer<Req, Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { future } => {
                    let outcome = ready!(future.poll(cx)).map_err(Into::into);
                    let shared = &**this.shared;
                    let Some(kept) = this.kept.take() else {
                        return Poll::Ready(outcome);
                    };
                    if !shared.predicate.matches(&outcome) {
                        if let Ok(res) = &outcome {
                            shared.answer.observe(&kept, res);
                        }
                        return Poll::Ready(outcome);
                    }
                    crate::telemetry::fallback_used(&shared.name);
                    let future = shared.answer.answer(kept, &outcome);
                    // The primary error is kept, typed, for a FallbackFailed.
                    let primary = outcome.err();
                    this.state.set(State::Fallback { future, primary });
                }
                StateProj::Fallback { future, primary } => {
                    return Poll::Ready(ready!(future.poll(cx)).map_err(|fallback| {
                        crate::telemetry::fallback_failed(&this.shared.name);
                        Box::new(FallbackFailed::new(primary.take(), fallback)) as BoxError
                    }));
                }
            }
        }
    }
}
