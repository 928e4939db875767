use std::sync::atomic::{AtomicU64, Ordering};

/// A name no other test (in this process or another) uses: `<prefix>_<pid>_<n>_<random>`,
/// lower-case ASCII, digits and underscores only, so it is valid as a PostgreSQL
/// identifier, a RabbitMQ queue, a Kafka topic, a Redis key and a NATS stream.
///
/// ```
/// let a = palisade_testkit::unique_name("orders");
/// let b = palisade_testkit::unique_name("orders");
/// assert_ne!(a, b);
/// assert!(a.starts_with("orders_"));
/// ```
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The tail of a UUID v7 is random: it separates processes that reuse a pid.
    let random = uuid::Uuid::now_v7().simple().to_string();
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}_{}_{n}_{}", std::process::id(), &random[24..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_safe_identifiers() {
        let names: std::collections::HashSet<_> = (0..1000).map(|_| unique_name("A-b.c")).collect();
        assert_eq!(names.len(), 1000);
        for name in &names {
            assert!(name.starts_with("a_b_c_"));
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
            assert!(
                name.len() < 63,
                "too long for a PostgreSQL identifier: {name}"
            );
        }
    }
}
