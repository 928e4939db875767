//! The crate's one way to take a mutex.

/// Locks `mutex`, going on with the data if a panic poisoned it. Every mutex in this
/// crate guards state that stays consistent between statements that could panic (a
/// backend's subscription, the consumer's per-key queues, the in-memory inbox), and
/// losing the bus, the subscription or the consumer would be worse than the
/// half-finished update of one entry.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
