//! courier
