use std::sync::Arc;
use std::time::Duration;

/// What to do after an attempt, decided by a [`Classify`] over the whole outcome.
///
/// ```rust
/// use std::time::Duration;
/// use palisade_resilience::retry::{RetryDecision, RetryLayer};
///
/// // Retry 503s and connection errors, honour a 429's Retry-After, never retry a 400.
/// let retry = RetryLayer::builder()
///     .classify(|_: &&str, outcome: &Result<(u16, u64), std::io::Error>| match outcome {
///         Ok((503, _)) | Err(_) => RetryDecision::Retry,
///         Ok((429, retry_after)) => RetryDecision::RetryAfter(Duration::from_secs(*retry_after)),
///         Ok(_) => RetryDecision::DoNotRetry,
///     })
///     .build()?;
/// # let _ = retry;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retry after the backoff's next delay.
    Retry,
    /// Retry after exactly this delay (a server's `Retry-After`), instead of the backoff's.
    RetryAfter(Duration),
    /// Return this outcome to the caller.
    DoNotRetry,
}

/// Decides, from the request and the whole outcome of an attempt, whether to retry.
///
/// Seeing the whole outcome is what lets a policy retry a `503` *response* and a
/// connection error while never retrying a `400`, and read a `Retry-After` header.
/// Implemented for every `Fn(&Req, &Result<Res, E>) -> RetryDecision`.
///
/// ```rust
/// use palisade_resilience::retry::{Classify, RetryDecision};
///
/// let only_errors = |_: &u32, outcome: &Result<u16, std::io::Error>| match outcome {
///     Ok(503) => RetryDecision::Retry,
///     Ok(_) => RetryDecision::DoNotRetry,
///     Err(_) => RetryDecision::Retry,
/// };
/// assert_eq!(only_errors.classify(&1, &Ok(400)), RetryDecision::DoNotRetry);
/// ```
pub trait Classify<Req, Res, E> {
    /// The decision for `outcome`, the result of sending `req`.
    ///
    /// ```rust
    /// use palisade_resilience::retry::{Classify, RetryDecision};
    ///
    /// // Retry only idempotent requests.
    /// let idempotent = |req: &&str, res: &Result<(), ()>| match (res, req.starts_with("GET")) {
    ///     (Err(_), true) => RetryDecision::Retry,
    ///     _ => RetryDecision::DoNotRetry,
    /// };
    /// assert_eq!(idempotent.classify(&"GET /a", &Err(())), RetryDecision::Retry);
    /// assert_eq!(idempotent.classify(&"POST /a", &Err(())), RetryDecision::DoNotRetry);
    /// ```
    fn classify(&self, req: &Req, outcome: &Result<Res, E>) -> RetryDecision;
}

impl<Req, Res, E, F> Classify<Req, Res, E> for F
where
    F: Fn(&Req, &Result<Res, E>) -> RetryDecision,
{
    #[inline]
    fn classify(&self, req: &Req, outcome: &Result<Res, E>) -> RetryDecision {
        self(req, outcome)
    }
}

/// The default classification: retry every error, never a response.
///
/// ```rust
/// use palisade_resilience::retry::{Classify, RetryDecision, RetryOnError};
///
/// let outcome: Result<u16, std::io::Error> = Ok(503);
/// // A response, even a 503, is not retried by the default: classify it yourself.
/// assert_eq!(RetryOnError.classify(&(), &outcome), RetryDecision::DoNotRetry);
/// let failed: Result<u16, std::io::Error> = Err(std::io::Error::other("reset"));
/// assert_eq!(RetryOnError.classify(&(), &failed), RetryDecision::Retry);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryOnError;

impl<Req, Res, E> Classify<Req, Res, E> for RetryOnError {
    #[inline]
    fn classify(&self, _: &Req, outcome: &Result<Res, E>) -> RetryDecision {
        match outcome {
            Ok(_) => RetryDecision::DoNotRetry,
            Err(_) => RetryDecision::Retry,
        }
    }
}

/// How the retry layer gets a request to send again, since sending consumes it.
///
/// - [`CloneRequest`] (the default): keep a clone, for `Req: Clone`.
/// - [`RebuildRequest`]: keep a copy built by a closure (e.g. from a buffered body).
/// - [`RestoreRequest`]: keep nothing and take the request back out of the failed
///   outcome, for clients that hand the unsent request back in their error (hyper's
///   `TrySendError::into_message`) — the way to retry tonic's `http::Request`.
///
/// ```rust
/// use palisade_resilience::retry::{Replay, RetryLayer};
///
/// /// Requests carry a one-shot token: a copy drops it, so a replay never reuses it.
/// #[derive(Debug)]
/// struct Req { path: String, token: Option<u64> }
/// struct WithoutToken;
/// impl<Res, E> Replay<Req, Res, E> for WithoutToken {
///     fn keep(&self, req: &Req) -> Option<Req> {
///         Some(Req { path: req.path.clone(), token: None })
///     }
/// }
/// let request = Req { path: "/pay".into(), token: Some(7) };
/// let kept = Replay::<Req, (), ()>::keep(&WithoutToken, &request);
/// assert_eq!(kept.map(|r| (r.path, r.token)), Some(("/pay".to_string(), None)));
/// let retry = RetryLayer::builder().replay(WithoutToken).build()?;
/// # let _ = retry;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
pub trait Replay<Req, Res, E> {
    /// A copy of `req` to keep for the next attempt, or `None`.
    ///
    /// ```rust
    /// use palisade_resilience::retry::{CloneRequest, Replay};
    ///
    /// let kept = Replay::<String, (), ()>::keep(&CloneRequest, &"GET /".to_string());
    /// assert_eq!(kept.as_deref(), Some("GET /"));
    /// ```
    fn keep(&self, req: &Req) -> Option<Req>;

    /// Called when nothing was kept: take the request back out of the outcome.
    ///
    /// ```rust
    /// use palisade_resilience::retry::{Replay, RestoreRequest};
    ///
    /// // The failed call handed the request back in its error.
    /// let restore = RestoreRequest(|outcome: &mut Result<(), Vec<u8>>| {
    ///     outcome.as_mut().err().map(std::mem::take)
    /// });
    /// let mut failed: Result<(), Vec<u8>> = Err(b"body".to_vec());
    /// let restored = Replay::<Vec<u8>, (), Vec<u8>>::restore(&restore, &mut failed);
    /// assert_eq!(restored, Some(b"body".to_vec()));
    /// ```
    fn restore(&self, outcome: &mut Result<Res, E>) -> Option<Req> {
        let _ = outcome;
        None
    }
}

/// Replays requests by cloning them.
///
/// ```rust
/// use palisade_resilience::retry::{CloneRequest, Replay};
///
/// let kept = Replay::<String, (), ()>::keep(&CloneRequest, &"GET /".to_string());
/// assert_eq!(kept.as_deref(), Some("GET /"));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneRequest;

impl<Req: Clone, Res, E> Replay<Req, Res, E> for CloneRequest {
    #[inline]
    fn keep(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Replays requests by rebuilding them with `Fn(&Req) -> Option<Req>` (`None`: cannot be
/// replayed, the first outcome is returned).
///
/// ```rust
/// use palisade_resilience::retry::RetryLayer;
///
/// struct Request { body: Vec<u8> } // not Clone
/// // Keep a copy built from the buffered body; `None` would mean "cannot be replayed".
/// let retry = RetryLayer::builder()
///     .rebuild_with(|r: &Request| Some(Request { body: r.body.clone() }))
///     .build()?;
/// # let _ = retry;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RebuildRequest<F>(pub F);

impl<Req, Res, E, F: Fn(&Req) -> Option<Req>> Replay<Req, Res, E> for RebuildRequest<F> {
    #[inline]
    fn keep(&self, req: &Req) -> Option<Req> {
        (self.0)(req)
    }
}

/// Replays requests by restoring them from the failed outcome with
/// `Fn(&mut Result<Res, E>) -> Option<Req>`.
///
/// ```rust
/// use palisade_resilience::retry::RetryLayer;
///
/// /// A client error that hands back the request it could not send (as hyper's does).
/// #[derive(Debug)]
/// struct NotSent { request: Option<String> }
/// // Keep nothing; on failure take the request back out of the error.
/// let retry = RetryLayer::builder()
///     .restore_with(|outcome: &mut Result<u16, NotSent>| {
///         outcome.as_mut().err().and_then(|e| e.request.take())
///     })
///     .build()?;
/// # let _ = retry;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RestoreRequest<F>(pub F);

impl<Req, Res, E, F: Fn(&mut Result<Res, E>) -> Option<Req>> Replay<Req, Res, E>
    for RestoreRequest<F>
{
    #[inline]
    fn keep(&self, _: &Req) -> Option<Req> {
        None
    }

    #[inline]
    fn restore(&self, outcome: &mut Result<Res, E>) -> Option<Req> {
        (self.0)(outcome)
    }
}

/// Why the retry layer stopped retrying although the classifier asked for a retry.
///
/// ```rust
/// use palisade_resilience::retry::GiveUpReason;
///
/// // The reason travels in `RetriesExhausted::reason` and in `RetryEvent::GaveUp`.
/// assert_ne!(GiveUpReason::MaxAttempts, GiveUpReason::BudgetExhausted);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// `max_attempts` attempts were made.
    MaxAttempts,
    /// The next retry would start after `max_elapsed`.
    MaxElapsed,
    /// The shared [`RetryBudget`](super::RetryBudget) had no token left.
    BudgetExhausted,
    /// The request could not be kept or restored for another attempt.
    NotReplayable,
}

impl GiveUpReason {
    /// A short snake_case label, as used in telemetry.
    ///
    /// ```rust
    /// use palisade_resilience::retry::GiveUpReason;
    ///
    /// assert_eq!(GiveUpReason::BudgetExhausted.as_str(), "budget_exhausted");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::MaxAttempts => "max_attempts",
            GiveUpReason::MaxElapsed => "max_elapsed",
            GiveUpReason::BudgetExhausted => "budget_exhausted",
            GiveUpReason::NotReplayable => "not_replayable",
        }
    }
}

/// What a retry listener is told.
///
/// ```rust
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use palisade_resilience::backoff::Backoff;
/// use palisade_resilience::retry::{RetryEvent, RetryLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_resilience::BoxError> {
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let retry = RetryLayer::builder()
///     .max_attempts(2)
///     .backoff(Backoff::constant(Duration::from_millis(5)))
///     .on_event(move |event: &RetryEvent<'_>| {
///         if let RetryEvent::Retrying { attempt, delay, .. } = event {
///             log.lock().unwrap().push((*attempt, *delay));
///         }
///     })
///     .build()?;
/// let down = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) });
/// assert!(retry.layer(down).oneshot(()).await.is_err());
/// assert_eq!(*seen.lock().unwrap(), [(1, Duration::from_millis(5))]);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent<'a> {
    /// Attempt `attempt` failed and another one starts after `delay`.
    Retrying {
        /// The policy's name.
        name: &'a str,
        /// The attempt that failed (1 is the first call).
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The classifier asked for a retry but the layer gave up.
    GaveUp {
        /// The policy's name.
        name: &'a str,
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: GiveUpReason,
    },
}

/// A user callback receiving [`RetryEvent`]s.
pub(crate) type Listener = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;
