use std::collections::HashMap;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;

/// Where a [`Fallback`](super::Fallback) gets its answer when the primary outcome matches
/// the predicate: a closure ([`FromFn`]), a secondary service ([`Secondary`]) or the last
/// good response ([`LastGood`]).
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::fallback::FallbackLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// // The built-in answers: a closure, a secondary service, or the last good response.
/// let prices = service_fn(|sku: u32| async move {
///     if sku == 1 { Ok::<_, std::io::Error>(990) } else { Err(std::io::Error::other("down")) }
/// });
/// let svc = FallbackLayer::last_good(1_000, |sku: &u32| *sku).layer(prices);
/// assert_eq!(svc.clone().oneshot(1).await?, 990);
/// assert!(svc.oneshot(2).await.is_err()); // nothing cached for sku 2
/// # Ok(()) }
/// ```
pub trait Answer<Req, Res> {
    /// What must be kept from the request before it is sent (the request itself for a
    /// secondary service, a cache key, or nothing).
    type Kept;
    /// The fallback's future.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Called before the primary call.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{Answer, LastGood};
    ///
    /// let cache = LastGood::new(10, |sku: &u32| *sku);
    /// let kept = Answer::<u32, u64>::keep(&cache, &42);
    /// assert_eq!(kept, 42); // the cache key
    /// ```
    fn keep(&self, req: &Req) -> Self::Kept;

    /// Called with every primary response that is returned as is (to cache it).
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{Answer, LastGood};
    ///
    /// let cache = LastGood::new(10, |sku: &u32| *sku);
    /// Answer::<u32, u64>::observe(&cache, &42, &990); // a good response, remembered
    /// assert_eq!(cache.len(), 1);
    /// ```
    fn observe(&self, kept: &Self::Kept, res: &Res) {
        let _ = (kept, res);
    }

    /// Answers instead of the primary, given what was kept and the primary outcome.
    ///
    /// ```rust
    /// use palisade_resilience::BoxError;
    /// use palisade_resilience::fallback::{Answer, LastGood};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let cache = LastGood::new(10, |sku: &u32| *sku);
    /// Answer::<u32, u64>::observe(&cache, &42, &990);
    /// let down: Result<u64, BoxError> = Err("timeout".into());
    /// assert_eq!(Answer::<u32, u64>::answer(&cache, 42, &down).await?, 990);
    /// assert!(Answer::<u32, u64>::answer(&cache, 7, &down).await.is_err()); // nothing cached
    /// # Ok(()) }
    /// ```
    fn answer(&self, kept: Self::Kept, primary: &Result<Res, BoxError>) -> Self::Future;
}

/// Answers from a closure `Fn(&Result<Res, BoxError>) -> Result<Res, BoxError>` given the
/// primary outcome: a default, a degraded answer, or a clearer error.
///
/// ```rust
/// use palisade_resilience::BoxError;
/// use palisade_resilience::fallback::FallbackLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let down = service_fn(|_: ()| async { Err::<Vec<u32>, _>(std::io::Error::other("down")) });
/// // Degrade to an empty list, logging the primary failure.
/// let svc = FallbackLayer::from_fn(|primary: &Result<Vec<u32>, BoxError>| {
///     if let Err(e) = primary { eprintln!("recommendations down: {e}"); }
///     Ok(Vec::new())
/// })
/// .layer(down);
/// assert!(svc.oneshot(()).await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FromFn<F>(pub F);

impl<Req, Res, F> Answer<Req, Res> for FromFn<F>
where
    F: Fn(&Result<Res, BoxError>) -> Result<Res, BoxError>,
{
    type Kept = ();
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn keep(&self, _: &Req) {}

    fn answer(&self, _: (), primary: &Result<Res, BoxError>) -> Self::Future {
        ready((self.0)(primary))
    }
}

/// Answers by sending a clone of the request to a secondary service (a replica, a
/// cache tier, a simpler implementation). The request must be `Clone`.
///
/// ```rust
/// use palisade_resilience::fallback::FallbackLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let primary = service_fn(|_: u32| async { Err::<&str, _>(std::io::Error::other("down")) });
/// let replica = service_fn(|_: u32| async { Ok::<_, std::io::Error>("from the replica") });
/// let svc = FallbackLayer::secondary(replica).layer(primary);
/// assert_eq!(svc.oneshot(1).await?, "from the replica");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Secondary<S>(pub S);

impl<Req, Res, S> Answer<Req, Res> for Secondary<S>
where
    Req: Clone,
    S: Service<Req, Response = Res> + Clone,
    S::Error: Into<BoxError>,
{
    type Kept = Req;
    type Future = Oneshot<S, Req>;

    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn answer(&self, kept: Req, _: &Result<Res, BoxError>) -> Self::Future {
        Oneshot::new(self.0.clone(), kept)
    }
}

pin_project! {
    /// Drives a secondary service to readiness, then calls it once.
    pub struct Oneshot<S, Req>
    where
        S: Service<Req>,
    {
        service: S,
        request: Option<Req>,
        #[pin]
        future: Option<S::Future>,
    }
}

impl<S: Service<Req>, Req> fmt::Debug for Oneshot<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oneshot")
            .field("called", &self.future.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Service<Req>, Req> Oneshot<S, Req> {
    fn new(service: S, request: Req) -> Self {
        Self {
            service,
            request: Some(request),
            future: None,
        }
    }
}

impl<S, Req> Future for Oneshot<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(future) = this.future.as_mut().as_pin_mut() {
            return future.poll(cx).map_err(Into::into);
        }
        if let Err(e) = std::task::ready!(this.service.poll_ready(cx)) {
            return Poll::Ready(Err(e.into()));
        }
        let Some(req) = this.request.take() else {
            return Poll::Ready(Err("secondary polled after completion".into()));
        };
        this.future.set(Some(this.service.call(req)));
        match this.future.as_pin_mut() {
            Some(future) => future.poll(cx).map_err(Into::into),
            None => Poll::Pending,
        }
    }
}

/// Answers with the last good response seen for the same key (a small built-in cache of
/// at most `capacity` keys, shared by all clones).
///
/// Stale beats nothing for non-critical reads (a product's recommendations, a profile
/// picture URL); never use it where a stale answer is wrong (balances, stock).
///
/// ```rust
/// use palisade_resilience::fallback::LastGood;
///
/// // One entry per user id.
/// let cache = LastGood::new(1_000, |user: &u64| *user);
/// # let _: LastGood<u64, String, _> = cache;
/// ```
pub struct LastGood<K, Res, F> {
    key: F,
    cache: Arc<Cache<K, Res>>,
}

struct Cache<K, Res> {
    capacity: usize,
    entries: Mutex<HashMap<K, Res>>,
}

impl<K, Res, F: Clone> Clone for LastGood<K, Res, F> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<K, Res, F> fmt::Debug for LastGood<K, Res, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastGood")
            .field("capacity", &self.cache.capacity)
            .finish_non_exhaustive()
    }
}

impl<K, Res, F> LastGood<K, Res, F> {
    /// A cache of at most `capacity` keys (at least 1), keyed by `key(&request)`.
    ///
    /// ```rust
    /// use palisade_resilience::fallback::{FallbackLayer, LastGood};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let cache = LastGood::new(100, |user: &u64| *user);
    /// let up = service_fn(|user: u64| async move { Ok::<_, std::io::Error>(user * 10) });
    /// let svc = FallbackLayer::new(palisade_resilience::fallback::IsErr, cache.clone()).layer(up);
    /// assert_eq!(svc.oneshot(7).await?, 70); // a good answer, remembered for user 7
    /// assert_eq!(cache.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn new(capacity: usize, key: F) -> Self {
        Self {
            key,
            cache: Arc::new(Cache {
                capacity: capacity.max(1),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Keys cached now.
    ///
    /// ```rust
    /// use palisade_resilience::fallback::{FallbackLayer, LastGood};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let cache = LastGood::new(100, |user: &u64| *user);
    /// let _: &LastGood<u64, String, _> = &cache;
    /// assert_eq!(cache.len(), 0);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.cache
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is cached yet.
    ///
    /// ```rust
    /// use palisade_resilience::fallback::{FallbackLayer, LastGood};
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let cache = LastGood::new(100, |user: &u64| *user);
    /// let _: &LastGood<u64, String, _> = &cache;
    /// assert!(cache.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`LastGood`] had no response cached for the key.
///
/// ```rust
/// use palisade_resilience::fallback::{FallbackFailed, FallbackLayer, NoCachedResponse};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let down = service_fn(|_: u32| async { Err::<String, _>(std::io::Error::other("down")) });
/// // Nothing good was ever seen for user 7: there is nothing to fall back to.
/// let svc = FallbackLayer::last_good(100, |user: &u32| *user).layer(down);
/// let err = svc.oneshot(7).await.unwrap_err();
/// let failed = err.downcast_ref::<FallbackFailed>().expect("fallback failed");
/// assert!(failed.fallback().is::<NoCachedResponse>());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no earlier good response to fall back to")]
pub struct NoCachedResponse;

impl<Req, Res, K, F> Answer<Req, Res> for LastGood<K, Res, F>
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone,
    Res: Clone,
{
    type Kept = K;
    type Future = Ready<Result<Res, BoxError>>;

    fn keep(&self, req: &Req) -> K {
        (self.key)(req)
    }

    fn observe(&self, key: &K, res: &Res) {
        let mut entries = self
            .cache
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.cache.capacity
            && !entries.contains_key(key)
            && let Some(evict) = entries.keys().next().cloned()
        {
            entries.remove(&evict);
        }
        entries.insert(key.clone(), res.clone());
    }

    fn answer(&self, key: K, _: &Result<Res, BoxError>) -> Self::Future {
        let entries = self
            .cache
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ready(match entries.get(&key) {
            Some(res) => Ok(res.clone()),
            None => Err(Box::new(NoCachedResponse)),
        })
    }
}
