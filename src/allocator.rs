//! Allocator tuning for the binary (mimalloc).
//!
//! Under load, mimalloc by default hands freed memory back to the kernel a second after it is
//! freed, then takes it again a moment later: every round trip is a page fault and, with
//! transparent huge pages, the kernel zeroing 2 MiB again. Measured on the pass-through
//! benchmark: ~1900 page faults per 20k requests before, ~20 after (bench/README.md).
//! Memory a burst needed stays with the process instead; the cache and the job store have
//! their own bounds.

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e` (mimalloc 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Stops mimalloc from purging freed memory. Call first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide option of the allocator; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_index_is_the_purge_delay() {
        // mimalloc 3 sets the purge delay to 1000 ms by default; a wrong index would read
        // some other option's value.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
    }
}
