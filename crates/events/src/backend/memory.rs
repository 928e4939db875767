//! The in-memory bus.
