//! Partitioned breakers: one breaker per key of the request (per host, per tenant, …).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::config::CircuitBreakerConfig;
use super::handle::StateTransition;
use super::state::Permit;
use super::{CircuitBreakerHandle, CircuitOpen, Classify, ResponseFuture};
use crate::BoxError;

type Listener = Arc<dyn Fn(&StateTransition) + Send + Sync>;

struct Partitions<K> {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    map: RwLock<HashMap<K, CircuitBreakerHandle>>,
    listeners: RwLock<Vec<Listener>>,
}

/// The handle on a partitioned breaker: the breaker of each key seen so far.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// // One breaker per host: a dead host does not cut the healthy ones off.
/// let layer = CircuitBreakerLayer::builder("upstreams")
///     .consecutive_failures(1)
///     .build_keyed(|(host, _): &(&'static str, u32)| *host)?;
/// let svc = layer.layer(service_fn(|(host, x): (&'static str, u32)| async move {
///     if host == "dead" { Err(std::io::Error::other("down")) } else { Ok(x) }
/// }));
/// assert!(svc.clone().oneshot(("dead", 1)).await.is_err());
/// assert_eq!(svc.clone().oneshot(("alive", 2)).await?, 2);
/// let handle = layer.handle();
/// assert_eq!(handle.get(&"dead").map(|h| h.state()), Some(CircuitState::Open));
/// assert_eq!(handle.get(&"alive").map(|h| h.state()), Some(CircuitState::Closed));
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreakerHandle<K> {
    inner: Arc<Partitions<K>>,
}

impl<K> Clone for KeyedCircuitBreakerHandle<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreakerHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> KeyedCircuitBreakerHandle<K> {
    fn acquire(&self, key: K) -> Result<Permit, Box<CircuitOpen>> {
        let partitions = &self.inner;
        if let Some(breaker) = partitions
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return breaker.acquire();
        }
        let mut map = partitions
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let breaker = map.entry(key).or_insert_with_key(|key| {
            let name: Arc<str> = format!("{}[{key:?}]", partitions.name).into();
            let breaker = CircuitBreakerHandle::new_unchecked(name, partitions.config.clone());
            for listener in partitions
                .listeners
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                breaker.core.on_transition(listener.clone());
            }
            breaker
        });
        breaker.acquire()
    }

    /// The breaker of `key`, if a request with that key was seen (and not removed).
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("tenants").build_keyed(|tenant: &u32| *tenant)?;
    /// let svc = layer.layer(service_fn(|t: u32| async move { Ok::<_, std::io::Error>(t) }));
    /// svc.clone().oneshot(7).await?;
    /// let seven = layer.handle().get(&7).expect("seen");
    /// assert_eq!(seven.name(), "tenants[7]");
    /// assert!(layer.handle().get(&8).is_none());
    /// # Ok(()) }
    /// ```
    pub fn get(&self, key: &K) -> Option<CircuitBreakerHandle> {
        self.inner
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The keys that have a breaker.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("tenants").build_keyed(|tenant: &u32| *tenant)?;
    /// let svc = layer.layer(service_fn(|t: u32| async move { Ok::<_, std::io::Error>(t) }));
    /// svc.clone().oneshot(7).await?;
    /// svc.oneshot(9).await?;
    /// let mut keys = layer.handle().keys();
    /// keys.sort();
    /// assert_eq!(keys, [7, 9]);
    /// # Ok(()) }
    /// ```
    pub fn keys(&self) -> Vec<K> {
        self.inner
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets the breaker of `key` (the next request with it starts a fresh one). Partitions
    /// are never evicted on their own: remove the keys that will not come back.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("tenants").build_keyed(|tenant: &u32| *tenant)?;
    /// let svc = layer.layer(service_fn(|t: u32| async move { Ok::<_, std::io::Error>(t) }));
    /// svc.clone().oneshot(7).await?;
    /// assert!(layer.handle().remove(&7).is_some()); // e.g. the tenant was deleted
    /// assert!(layer.handle().keys().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn remove(&self, key: &K) -> Option<CircuitBreakerHandle> {
        self.inner
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
    }

    /// Calls `listener` on every state change of every partition, present and future.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("tenants").build_keyed(|tenant: &u32| *tenant)?;
    /// let svc = layer.layer(service_fn(|t: u32| async move { Ok::<_, std::io::Error>(t) }));
    /// svc.clone().oneshot(7).await?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// layer.handle().on_transition(move |t| { let _ = tx.send(t.to); });
    /// layer.handle().get(&7).expect("seen").force_open();
    /// assert!(rx.try_recv().is_ok()); // also for breakers created before the listener
    /// # Ok(()) }
    /// ```
    pub fn on_transition(&self, listener: impl Fn(&StateTransition) + Send + Sync + 'static) {
        let listener: Listener = Arc::new(listener);
        self.inner
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener.clone());
        for breaker in self
            .inner
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            breaker.core.on_transition(listener.clone());
        }
    }
}

/// Applies a partitioned breaker: requests are grouped by a key computed from them, and
/// each key gets its own breaker (created on first sight, with the same settings, named
/// `name[key]`). Built by
/// [`CircuitBreakerBuilder::build_keyed`](super::CircuitBreakerBuilder::build_keyed).
///
/// The key is only known in `call`, so unlike [`CircuitBreaker`](super::CircuitBreaker)
/// this service asks the breaker there, and `poll_ready` reflects the inner service only.
/// Finding the key's breaker takes a read lock on the partition map (a write lock the
/// first time a key is seen).
///
/// ```rust
/// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
///
/// // One breaker per tenant, keyed by the request's tenant id.
/// struct Request { tenant: u32, body: String }
/// let layer = CircuitBreakerLayer::builder("tenants")
///     .count_window(20)
///     .build_keyed(|r: &Request| r.tenant)?;
/// assert!(layer.handle().keys().is_empty());
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
///
/// See [`KeyedCircuitBreakerHandle`] for a breaker tripping in one partition only.
pub struct KeyedCircuitBreakerLayer<K, F, C> {
    partitions: KeyedCircuitBreakerHandle<K>,
    key: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            partitions: self.partitions.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.partitions.fmt(f)
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    pub(crate) fn new(name: Arc<str>, config: CircuitBreakerConfig, key: F, classifier: C) -> Self {
        Self {
            partitions: KeyedCircuitBreakerHandle {
                inner: Arc::new(Partitions {
                    name,
                    config,
                    map: RwLock::new(HashMap::new()),
                    listeners: RwLock::new(Vec::new()),
                }),
            },
            key,
            classifier,
        }
    }

    /// The handle on the partitions.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("tenants").build_keyed(|tenant: &u32| *tenant)?;
    /// let svc = layer.layer(service_fn(|t: u32| async move { Ok::<_, std::io::Error>(t) }));
    /// svc.clone().oneshot(7).await?;
    /// assert_eq!(layer.handle().keys(), [7]);
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &KeyedCircuitBreakerHandle<K> {
        &self.partitions
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            partitions: self.partitions.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service guarded by one breaker per request key; see [`KeyedCircuitBreakerLayer`].
///
/// ```rust
/// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let layer = CircuitBreakerLayer::builder("hosts").build_keyed(|host: &&str| host.to_string())?;
/// let svc = layer.layer(service_fn(|host: &'static str| async move {
///     Ok::<_, std::io::Error>(host.len())
/// }));
/// assert_eq!(svc.clone().oneshot("a.example").await?, 9);
/// assert_eq!(svc.handle().keys(), ["a.example".to_string()]);
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreaker<S, K, F, C> {
    inner: S,
    partitions: KeyedCircuitBreakerHandle<K>,
    key: F,
    classifier: C,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            partitions: self.partitions.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C> KeyedCircuitBreaker<S, K, F, C> {
    /// The handle on the partitions.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_resilience::BoxError> {
    /// let layer = CircuitBreakerLayer::builder("tenants").build_keyed(|tenant: &u32| *tenant)?;
    /// let svc = layer.layer(service_fn(|t: u32| async move { Ok::<_, std::io::Error>(t) }));
    /// svc.clone().oneshot(7).await?;
    /// assert_eq!(svc.handle().keys(), [7]); // the service shares the layer's partitions
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &KeyedCircuitBreakerHandle<K> {
        &self.partitions
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + fmt::Debug,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.partitions.acquire((self.key)(&req)) {
            Ok(permit) => {
                let start = permit.start();
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone(), start)
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}
