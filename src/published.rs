//! A value that a reload replaces while requests read it, without a lock. (A leaf module:
//! the reloader above publishes, the request path below reads.)
//!
//! The writer (the reloader) stores a new `Arc` and then bumps a version counter. A reader on
//! the hot path keeps its own copy and compares versions: one atomic load per request (a
//! plain load on x86), and a fresh copy only after a reload. This is the pattern the token
//! uses ([`crate::actors::TokenCell`]), for the API key and the client list.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The current value, replaced whole by [`Published::publish`].
pub struct Published<T> {
    current: ArcSwap<T>,
    version: AtomicU64,
}

impl<T> Published<T> {
    /// A cell holding `value` at version 0.
    pub fn new(value: T) -> Self {
        Published { current: ArcSwap::from_pointee(value), version: AtomicU64::new(0) }
    }

    /// Replaces the value; readers see the new one from their next version check.
    pub fn publish(&self, value: T) {
        self.current.store(Arc::new(value));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The version of what is published; it changes whenever the value does. Load this
    /// before [`Published::load`]: the value loaded is then at least as new as the version.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }
}

impl<T: Default> Default for Published<T> {
    fn default() -> Self {
        Published::new(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_a_new_version_and_the_new_value() {
        let cell = Published::new(String::from("old"));
        let seen = cell.version();
        assert_eq!(*cell.load(), "old");
        cell.publish(String::from("new"));
        assert_ne!(cell.version(), seen);
        assert_eq!(*cell.load(), "new");
    }

    #[test]
    fn a_reader_holding_the_old_value_keeps_it() {
        let cell = Published::new(1u32);
        let held = cell.load();
        cell.publish(2);
        assert_eq!((*held, *cell.load()), (1, 2));
    }
}
