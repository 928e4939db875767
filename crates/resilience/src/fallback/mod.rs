//! Fallback: when a call fails, answer anyway — from a default, a secondary service or
//! the last good response.
//!
//! # What it protects against
//!
//! A failure of a *non-critical* dependency reaching the user. A product page without
//! recommendations is better than an error page; yesterday's exchange rate may be better
//! than none. The fallback turns matching outcomes (errors, and responses such as a `503`
//! if the predicate says so) into a degraded answer.
//!
//! # When not to use it
//!
//! For *critical* dependencies: when a payment cannot be taken, answering "ok" from a
//! default is a lie. Fail fast with a clear error instead (a
//! [`bulkhead`](crate::bulkhead) or circuit breaker error says exactly what is wrong).
//! And never serve [`LastGood`] where stale data is wrong.
//!
//! # Composition
//!
//! Outermost: the fallback should see the final outcome, after retries are exhausted, the
//! circuit is open or the bulkhead is full. Its predicate receives the outcome with the
//! error as a [`BoxError`], so it can pick by type (`err.is::<CircuitOpen>()`).
//!
//! # Outcomes
//!
//! - The predicate does not match: the primary outcome is returned unchanged (and a
//!   success is offered to the answer, which is how [`LastGood`] fills its cache).
//! - It matches and the fallback answers: its answer is returned.
//! - It matches and the fallback fails too: a [`FallbackFailed`] carrying both errors,
//!   the fallback's as `source()` and the primary's via [`FallbackFailed::primary`].
//!
//! # Example
//!
//! ```rust
//! use palisade_resilience::fallback::FallbackLayer;
//! use palisade_resilience::BoxError;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let recommendations = service_fn(|_user: u64| async {
//!     Err::<Vec<&str>, _>(std::io::Error::other("recommender down"))
//! });
//! let svc = FallbackLayer::from_fn(|_: &Result<Vec<&str>, BoxError>| Ok(vec!["bestsellers"]))
//!     .layer(recommendations);
//! assert_eq!(svc.oneshot(7).await?, ["bestsellers"]);
//! # Ok(())
//! # }
//! ```

mod answer;
mod future;
mod layer;
mod service;

pub use answer::{Answer, FromFn, LastGood, NoCachedResponse, Oneshot, Secondary};
pub use future::ResponseFuture;
pub use layer::FallbackLayer;
pub use service::Fallback;

use crate::BoxError;

/// Decides whether a primary outcome is answered by the fallback.
/// Implemented for every `Fn(&Result<Res, BoxError>) -> bool`.
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::fallback::FallbackLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let unavailable = service_fn(|_: ()| async { Ok::<u16, std::io::Error>(503) });
/// // Fall back on errors and on 5xx responses alike.
/// let svc = FallbackLayer::from_fn(|_: &Result<u16, BoxError>| Ok(200))
///     .when(|outcome: &Result<u16, BoxError>| !matches!(outcome, Ok(status) if *status < 500))
///     .layer(unavailable);
/// assert_eq!(svc.oneshot(()).await?, 200);
/// # Ok(()) }
/// ```
pub trait Predicate<Res> {
    /// `true`: answer from the fallback.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::Predicate;
    ///
    /// let server_error = |r: &Result<u16, BoxError>| !matches!(r, Ok(s) if *s < 500);
    /// assert!(server_error.matches(&Ok(503)));
    /// assert!(!server_error.matches(&Ok(200)));
    /// ```
    fn matches(&self, outcome: &Result<Res, BoxError>) -> bool;
}

impl<Res, F: Fn(&Result<Res, BoxError>) -> bool> Predicate<Res> for F {
    #[inline]
    fn matches(&self, outcome: &Result<Res, BoxError>) -> bool {
        self(outcome)
    }
}

/// The default predicate: fall back on every error, never on a response.
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::fallback::{IsErr, Predicate};
///
/// let failed: Result<u32, BoxError> = Err("down".into());
/// assert!(IsErr.matches(&failed));
/// assert!(!IsErr.matches(&Ok::<u32, BoxError>(1)));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct IsErr;

impl<Res> Predicate<Res> for IsErr {
    #[inline]
    fn matches(&self, outcome: &Result<Res, BoxError>) -> bool {
        outcome.is_err()
    }
}

/// The fallback failed as well; `source()` is the fallback's error.
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::fallback::{FallbackFailed, FallbackLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let down = service_fn(|_: ()| async { Err::<u32, _>(std::io::Error::other("primary down")) });
/// let cold = FallbackLayer::from_fn(|_: &Result<u32, BoxError>| Err("cache cold".into()));
/// let svc = cold.layer(down);
/// let err = svc.oneshot(()).await.unwrap_err();
/// let failed = err.downcast_ref::<FallbackFailed>().expect("both failed");
/// assert_eq!(failed.fallback().to_string(), "cache cold");
/// assert_eq!(failed.primary().map(ToString::to_string).as_deref(), Some("primary down"));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("fallback failed: {fallback}")]
pub struct FallbackFailed {
    primary: Option<BoxError>,
    #[source]
    fallback: BoxError,
}

impl FallbackFailed {
    pub(crate) fn new(primary: Option<BoxError>, fallback: BoxError) -> Self {
        Self { primary, fallback }
    }

    /// The primary call's error (`None` when the primary returned a response that the
    /// predicate rejected, e.g. a `503`).
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackFailed, FallbackLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let down =
    ///     service_fn(|_: ()| async { Err::<u32, _>(std::io::Error::other("primary down")) });
    /// let cold = FallbackLayer::from_fn(|_: &Result<u32, BoxError>| Err("cache cold".into()));
    /// let svc = cold.layer(down);
    /// let error = svc.oneshot(()).await.expect_err("both failed");
    /// let failed = error.downcast_ref::<FallbackFailed>().expect("a FallbackFailed");
    /// assert_eq!(failed.primary().map(ToString::to_string).as_deref(), Some("primary down"));
    /// # }
    /// ```
    pub fn primary(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.primary.as_deref()
    }

    /// The fallback's error.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{FallbackFailed, FallbackLayer};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let down =
    ///     service_fn(|_: ()| async { Err::<u32, _>(std::io::Error::other("primary down")) });
    /// let cold = FallbackLayer::from_fn(|_: &Result<u32, BoxError>| Err("cache cold".into()));
    /// let svc = cold.layer(down);
    /// let error = svc.oneshot(()).await.expect_err("both failed");
    /// let failed = error.downcast_ref::<FallbackFailed>().expect("a FallbackFailed");
    /// assert_eq!(failed.fallback().to_string(), "cache cold");
    /// # }
    /// ```
    pub fn fallback(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.fallback
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::{Layer, ServiceExt, service_fn};

    #[tokio::test]
    async fn a_matching_response_is_answered_by_a_secondary_service() {
        let primary = service_fn(|_: u32| async { Ok::<u16, std::io::Error>(503) });
        let secondary =
            service_fn(|n: u32| async move { Ok::<u16, std::io::Error>(200 + n as u16) });
        let svc = FallbackLayer::secondary(secondary)
            .when(|o: &Result<u16, BoxError>| !matches!(o, Ok(s) if *s < 500))
            .layer(primary);
        assert_eq!(svc.oneshot(1).await.unwrap(), 201);
    }

    #[tokio::test]
    async fn a_non_matching_outcome_passes_through_unchanged() {
        let primary = service_fn(|_: u32| async { Ok::<u16, std::io::Error>(404) });
        let svc = FallbackLayer::from_fn(|_: &Result<u16, BoxError>| Ok(200)).layer(primary);
        assert_eq!(svc.oneshot(1).await.unwrap(), 404);
    }

    #[tokio::test]
    async fn the_last_good_response_answers_when_the_primary_fails() {
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        let primary = service_fn(move |user: u32| {
            let down = flag.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(format!("profile {user}"))
                }
            }
        });
        let svc = FallbackLayer::last_good(16, |user: &u32| *user).layer(primary);
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "profile 1");
        down.store(true, Ordering::SeqCst);
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "profile 1");
        let err = svc.oneshot(2).await.unwrap_err();
        let failed = err.downcast_ref::<FallbackFailed>().unwrap();
        assert!(failed.fallback().is::<NoCachedResponse>());
        assert!(failed.primary().unwrap().is::<std::io::Error>());
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_capacity() {
        let primary = service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
        let layer = FallbackLayer::last_good(2, |n: &u32| *n);
        let cache_view = LastGood::<u32, u32, fn(&u32) -> u32>::new(1, |n| *n);
        assert!(cache_view.is_empty());
        let svc = layer.layer(primary);
        for n in 0..10 {
            svc.clone().oneshot(n).await.unwrap();
        }
        // Inspect through a fallback that must hit the cache: only 2 keys survive.
        let mut hits = 0;
        for n in 0..10 {
            let failing = service_fn(|_: u32| async { Err::<u32, _>(std::io::Error::other("x")) });
            let probe = Fallback::from_shared(failing, svc_shared(&svc));
            if probe.oneshot(n).await.is_ok() {
                hits += 1;
            }
        }
        assert_eq!(hits, 2);
    }

    fn svc_shared<S, P, A>(svc: &Fallback<S, P, A>) -> Arc<layer::Shared<P, A>> {
        svc.shared_for_tests()
    }

    #[tokio::test]
    async fn a_failing_fallback_surfaces_typed_with_both_errors() {
        let primary =
            service_fn(|_: u32| async { Err::<u16, _>(std::io::Error::other("primary")) });
        let svc = FallbackLayer::from_fn(|_: &Result<u16, BoxError>| {
            Err(Box::new(std::fmt::Error) as BoxError)
        })
        .layer(primary);
        let err = svc.oneshot(1).await.unwrap_err();
        let failed = err.downcast_ref::<FallbackFailed>().unwrap();
        assert!(failed.fallback().is::<std::fmt::Error>());
        assert_eq!(failed.primary().unwrap().to_string(), "primary");
    }
}
