//! Broker backends, each behind its cargo feature; the in-memory bus needs none.
//!
//! | backend | feature | module |
//! |---|---|---|
//! | in-memory | — | [`memory`] |
//! | RabbitMQ | `rabbitmq` | `rabbitmq` |
//! | Kafka | `kafka` | `kafka` |
//! | Redis Streams | `redis` | `redis` |
//! | NATS JetStream | `nats` | `nats` |

#[cfg(any(feature = "redis", feature = "rabbitmq"))]
mod acks;
#[allow(dead_code)] // used by the broker backends, which are behind features
pub mod headers;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
pub mod memory;
// Used by the consumer (its name in each handler's context) and by `headers::decode`;
// `name_of_bytes` only by the broker backends.
#[allow(dead_code)]
pub(crate) mod names;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub(crate) use crate::lock::lock;

/// A message as a broker backend's acker keeps it: the decoded envelope (a retry or a
/// dead letter is written back from it: the header mapping is lossless), or, when the
/// message did not decode, the message as read (`raw`, whatever the backend needs to
/// write it back unchanged) and why it did not.
#[cfg(feature = "redis")]
pub(crate) enum Original<R> {
    Envelope(std::sync::Arc<crate::Envelope>),
    Malformed { raw: R, error: String },
}

#[cfg(feature = "redis")]
impl<R> Original<R> {
    /// Keeps `decoded`, or `raw()` with the error when it failed.
    pub(crate) fn new(
        decoded: Result<crate::Envelope, crate::Error>,
        raw: impl FnOnce() -> R,
    ) -> Self {
        match decoded {
            Ok(envelope) => Self::Envelope(std::sync::Arc::new(envelope)),
            Err(error) => Self::Malformed {
                raw: raw(),
                error: error.to_string(),
            },
        }
    }

    /// What a delivery of the message shows: the envelope, or why there is none.
    pub(crate) fn message(&self) -> Result<std::sync::Arc<crate::Envelope>, crate::Error> {
        match self {
            Self::Envelope(envelope) => Ok(std::sync::Arc::clone(envelope)),
            Self::Malformed { error, .. } => Err(headers::malformed(error.clone())),
        }
    }
}

/// A settlement that is already done, boxed without allocating (the future is
/// zero-sized): what an acker returns when settling needed no I/O.
pub(crate) fn settled() -> crate::publisher::BoxFuture<'static, Result<(), crate::Error>> {
    struct Settled;
    impl std::future::Future for Settled {
        type Output = Result<(), crate::Error>;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            std::task::Poll::Ready(Ok(()))
        }
    }
    Box::pin(Settled)
}
