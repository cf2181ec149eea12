//! Quota windows: counts of upstream attempts per hour, day, month or fixed window, shared by
//! the clients by their allocations, persisted before they are spent.

pub mod alloc;
pub mod window;
