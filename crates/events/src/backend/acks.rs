//! Acks in batches, group-commit style: the acks queued while one batch is being sent
//! go out together in the next, so the busier a subscription, the larger the batches.
//! Each ack still waits for the outcome of the batch that carried it. Used by the
//! brokers that ack many deliveries with one command (Redis `XACK`, RabbitMQ
//! `basic.ack multiple`).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// An id to ack, with who waits for the outcome of its batch.
type Request<T> = (T, oneshot::Sender<Result<(), Error>>);

/// Where a subscription's deliveries queue their acks. Cheap to clone; the batching
/// task ends once every clone is gone.
pub(crate) struct Acks<T> {
    queue: mpsc::UnboundedSender<Request<T>>,
    backend: &'static str,
}

impl<T> Clone for Acks<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            backend: self.backend,
        }
    }
}

impl<T: Send + 'static> Acks<T> {
    /// Spawns the task that sends the batches with `send`, which gets the ids of one
    /// batch in the order they were queued and returns why it failed, if it did;
    /// `failed` turns that reason into each waiting ack's error.
    pub(crate) fn spawn<F, Fut>(backend: &'static str, failed: fn(String) -> Error, send: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(pending, failed, send));
        Self { queue, backend }
    }

    /// Acks `id`; returns once the batch carrying it was sent, with its outcome.
    pub(crate) async fn ack(&self, id: T) -> Result<(), Error> {
        let (answer, outcome) = oneshot::channel();
        self.queue
            .send((id, answer))
            .map_err(|_| Error::connection(self.backend, "the subscription's ack task is gone"))?;
        outcome.await.unwrap_or_else(|_| {
            Err(Error::NotConfirmed {
                reason: "the ack task ended before the ack was sent".to_owned(),
            })
        })
    }
}

async fn send_batches<T, F, Fut>(
    mut pending: mpsc::UnboundedReceiver<Request<T>>,
    failed: fn(String) -> Error,
    mut send: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = pending.try_recv() {
            batch.push(more);
        }
        let (ids, answers): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
        let outcome = send(ids).await;
        for answer in answers {
            let _ = answer.send(match &outcome {
                Ok(()) => Ok(()),
                Err(reason) => Err(failed(reason.clone())),
            });
        }
    }
}
