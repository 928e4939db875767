use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::answer::{FromFn, LastGood, Secondary};
use super::{Fallback, IsErr};

pub(crate) struct Shared<P, A> {
    pub(crate) name: Arc<str>,
    pub(crate) predicate: P,
    pub(crate) answer: A,
}

/// Applies a [`Fallback`] to a service.
///
/// ```rust
/// use palisade_resilience::fallback::FallbackLayer;
/// use palisade_resilience::BoxError;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// type Response = (u16, &'static str);
/// let overloaded = service_fn(|_: ()| async { Ok::<Response, std::io::Error>((503, "")) });
/// // Fall back on errors and on 5xx responses, answering 200 with a default body.
/// let svc = FallbackLayer::from_fn(|_: &Result<Response, BoxError>| Ok((200, "[]")))
///     .when(|outcome: &Result<Response, BoxError>| {
///         !matches!(outcome, Ok((status, _)) if *status < 500)
///     })
///     .named("recommendations")
///     .layer(overloaded);
/// assert_eq!(svc.oneshot(()).await?, (200, "[]"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FallbackLayer<P, A> {
    name: Arc<str>,
    predicate: P,
    answer: A,
}

impl<P, A> fmt::Debug for FallbackLayer<P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<F> FallbackLayer<IsErr, FromFn<F>> {
    /// On any error, answers with `f(primary_outcome)`.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down =
    ///     service_fn(|_: u64| async { Err::<&'static str, _>(std::io::Error::other("down")) });
    /// let svc = FallbackLayer::from_fn(|_: &Result<&'static str, BoxError>| Ok("[]")).layer(down);
    /// assert_eq!(svc.oneshot(7).await?, "[]"); // degraded, not failed
    /// # Ok(()) }
    /// ```
    pub fn from_fn(f: F) -> Self {
        Self::new(IsErr, FromFn(f))
    }
}

impl<S> FallbackLayer<IsErr, Secondary<S>> {
    /// On any error, sends a clone of the request to `secondary`.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down =
    ///     service_fn(|_: u64| async { Err::<&'static str, _>(std::io::Error::other("down")) });
    /// let replica = service_fn(|_: u64| async { Ok::<_, std::io::Error>("from the replica") });
    /// let svc = FallbackLayer::secondary(replica).layer(down);
    /// assert_eq!(svc.oneshot(7).await?, "from the replica");
    /// # Ok(()) }
    /// ```
    pub fn secondary(secondary: S) -> Self {
        Self::new(IsErr, Secondary(secondary))
    }
}

impl<K, Res, F> FallbackLayer<IsErr, LastGood<K, Res, F>> {
    /// On any error, answers with the last good response for the same `key(&request)`,
    /// keeping at most `capacity` keys (shared by every service built from this layer).
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackLayer, FallbackFailed};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down =
    ///     service_fn(|_: u64| async { Err::<&'static str, _>(std::io::Error::other("down")) });
    /// let layer = FallbackLayer::last_good(100, |user: &u64| *user);
    /// // Nothing cached for user 7 yet: the fallback has no answer either.
    /// let error = layer.layer(down).oneshot(7).await.expect_err("no cached answer");
    /// assert!(error.downcast_ref::<FallbackFailed>().is_some());
    /// # Ok(()) }
    /// ```
    pub fn last_good(capacity: usize, key: F) -> Self {
        Self::new(IsErr, LastGood::new(capacity, key))
    }
}

impl<P, A> FallbackLayer<P, A> {
    /// A fallback answering from `answer` whenever `predicate(&outcome)` is true.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackLayer, FromFn, IsErr};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down =
    ///     service_fn(|_: u64| async { Err::<&'static str, _>(std::io::Error::other("down")) });
    /// let cached = FromFn(|_: &Result<&'static str, BoxError>| Ok("cached"));
    /// let layer = FallbackLayer::new(IsErr, cached);
    /// assert_eq!(layer.layer(down).oneshot(7).await?, "cached");
    /// # Ok(()) }
    /// ```
    pub fn new(predicate: P, answer: A) -> Self {
        Self {
            name: Arc::from("fallback"),
            predicate,
            answer,
        }
    }

    /// Replaces the predicate: `Fn(&Result<Res, BoxError>) -> bool` (true: fall back).
    /// A predicate can fall back on responses too (a `503`). Default: [`IsErr`].
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down =
    ///     service_fn(|_: u64| async { Err::<&'static str, _>(std::io::Error::other("down")) });
    /// // Only timeouts fall back; other errors go through.
    /// let svc = FallbackLayer::from_fn(|_: &Result<&'static str, BoxError>| Ok("[]"))
    ///     .when(|outcome: &Result<&'static str, BoxError>| {
    ///         matches!(outcome, Err(e) if e.is::<palisade_resilience::timeout::Elapsed>())
    ///     })
    ///     .layer(down);
    /// assert!(svc.oneshot(7).await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn when<P2>(self, predicate: P2) -> FallbackLayer<P2, A> {
        FallbackLayer {
            name: self.name,
            predicate,
            answer: self.answer,
        }
    }

    /// Names the fallback in events and metrics (default `"fallback"`).
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let down =
    ///     service_fn(|_: u64| async { Err::<&'static str, _>(std::io::Error::other("down")) });
    /// let layer = FallbackLayer::from_fn(|_: &Result<&'static str, BoxError>| Ok("[]"))
    ///     .named("recommendations");
    /// assert!(format!("{layer:?}").contains("recommendations"));
    /// assert_eq!(layer.layer(down).oneshot(7).await?, "[]");
    /// # Ok(()) }
    /// ```
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }
}

impl<S, P: Clone, A: Clone> Layer<S> for FallbackLayer<P, A> {
    type Service = Fallback<S, P, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::from_shared(
            inner,
            Arc::new(Shared {
                name: self.name.clone(),
                predicate: self.predicate.clone(),
                answer: self.answer.clone(),
            }),
        )
    }
}
