//! `examples/choreography.rs`: the order saga driven only by events, outbox and inbox,
//! ends every order completed or cancelled, with the compensating refund where
//! inventory failed after payment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{run_example, summary};

#[test]
fn every_order_ends_completed_or_compensated() {
    let (out, stdout) = run_example("choreography", &[]);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&stdout, "completed"), 2, "{stdout}");
    assert_eq!(summary(&stdout, "cancelled"), 2, "{stdout}");
    assert_eq!(summary(&stdout, "refunded"), 1, "{stdout}");
    // The out-of-stock order was charged, failed in inventory, refunded, then cancelled,
    // in that order.
    let trail = stdout
        .split("order #1003")
        .nth(1)
        .and_then(|rest| rest.split("=>").next())
        .unwrap();
    let events: Vec<&str> = trail
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        events,
        [
            "order.placed",
            "payment.charged",
            "inventory.failed",
            "payment.refunded"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("stock left: 0 monitor(s)"), "{stdout}");
}
