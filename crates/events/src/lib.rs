//! # palisade-events
//!
//! A broker-agnostic event bus: one [`Envelope`], typed [`Event`]s, a [`Publisher`]
//! that returns only once the broker confirmed, a [`Subscriber`] whose [`Delivery`]s
//! are acknowledged, retried or dead-lettered.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod codec;
pub mod conformance;
pub mod consumer;
pub mod envelope;
pub mod error;
pub mod event;
pub mod inbox;
pub mod publisher;
pub mod subscriber;

pub use backend::memory::MemoryBus;
pub use codec::{Codec, JsonCodec};
pub use consumer::{Consumer, Context, Handler, HandlerError};
pub use envelope::Envelope;
pub use error::{BoxError, Error};
pub use event::Event;
pub use publisher::{BoxFuture, DynPublisher, Publisher};
pub use subscriber::{Acknowledge, Delivery, DeliveryStream, Subscriber, Subscription};
