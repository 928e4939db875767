use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::{BulkheadFull, Permit};
use crate::BoxError;

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F, permit: Option<Permit> },
        Rejected { error: Option<BulkheadFull> },
    }
}

pin_project! {
    /// The response future of [`BulkheadService`](super::BulkheadService): the inner call
    /// holding its permit, or an immediate [`BulkheadFull`].
    ///
    /// The permit is returned as soon as the inner future completes, or when this future
    /// is dropped.
    ///
    /// ```rust
    /// use palisade_resilience::bulkhead::{Bulkhead, BulkheadLayer};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let pool = Bulkhead::builder("db").max_concurrent(1).build()?;
    /// let mut svc = BulkheadLayer::new(pool.clone())
    ///     .layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
    /// let future = svc.ready().await?.call(21); // holds the permit until it completes
    /// assert_eq!(pool.available(), 0);
    /// assert_eq!(future.await?, 42);
    /// assert_eq!(pool.available(), 1);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(error: BulkheadFull) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, permit } => match future.poll(cx) {
                Poll::Ready(out) => {
                    permit.take();
                    Poll::Ready(out.map_err(Into::into))
                }
                Poll::Pending => Poll::Pending,
            },
            KindProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(e) => Box::new(e),
                None => "bulkhead response future polled after completion".into(),
            })),
        }
    }
}
