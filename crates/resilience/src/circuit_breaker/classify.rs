//! Which outcomes count against the dependency.

/// How one completed call counts in the breaker's window.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::Outcome;
///
/// // A 404 is the caller's problem, not the dependency's: don't count it.
/// let classify = |status: u16| match status {
///     500.. => Outcome::Failure,
///     404 => Outcome::Ignored,
///     _ => Outcome::Success,
/// };
/// assert_eq!(classify(503), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency did its job.
    Success,
    /// The dependency failed; counts towards opening.
    Failure,
    /// Says nothing about the dependency's health (a validation error, a 404): not
    /// recorded. A cancelled call (its future dropped) is treated the same way.
    Ignored,
}

/// Decides the [`Outcome`] of a call from its result, before the error is boxed.
///
/// Implemented by [`AllErrorsAreFailures`] (the default) and by every
/// `Fn(&Result<Response, Error>) -> Outcome`, so a closure is all it takes:
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{CircuitBreakerLayer, Outcome};
///
/// // Count 5xx *responses* as failures, not only transport errors.
/// let layer = CircuitBreakerLayer::builder("inventory")
///     .classify(|r: &Result<http::Response<()>, std::io::Error>| match r {
///         Ok(resp) if resp.status().is_server_error() => Outcome::Failure,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Failure,
///     })
///     .build()?;
/// # Ok::<(), palisade_resilience::ConfigError>(())
/// ```
pub trait Classify<Response, Error> {
    /// The outcome of `result`.
    ///
    /// ```rust
    /// use palisade_resilience::circuit_breaker::{Classify, Outcome};
    ///
    /// // HTTP-style: 5xx is a failure, 4xx says nothing about the dependency's health.
    /// let by_status = |r: &Result<u16, ()>| match r {
    ///     Ok(s) if *s >= 500 => Outcome::Failure,
    ///     Ok(s) if *s >= 400 => Outcome::Ignored,
    ///     Ok(_) => Outcome::Success,
    ///     Err(()) => Outcome::Failure,
    /// };
    /// assert_eq!(by_status.classify(&Ok(503)), Outcome::Failure);
    /// assert_eq!(by_status.classify(&Ok(404)), Outcome::Ignored);
    /// ```
    fn classify(&self, result: &Result<Response, Error>) -> Outcome;
}

impl<Response, Error, F> Classify<Response, Error> for F
where
    F: Fn(&Result<Response, Error>) -> Outcome,
{
    fn classify(&self, result: &Result<Response, Error>) -> Outcome {
        self(result)
    }
}

/// The default classification: `Ok` is a success, `Err` a failure.
///
/// ```rust
/// use palisade_resilience::circuit_breaker::{AllErrorsAreFailures, Classify, Outcome};
///
/// assert_eq!(AllErrorsAreFailures.classify(&Err::<(), _>("boom")), Outcome::Failure);
/// assert_eq!(AllErrorsAreFailures.classify(&Ok::<_, ()>(1)), Outcome::Success);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AllErrorsAreFailures;

impl<Response, Error> Classify<Response, Error> for AllErrorsAreFailures {
    fn classify(&self, result: &Result<Response, Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}
