//! Allocator tuning for the binary (mimalloc).
//!
//! Under load, mimalloc by default hands freed memory back to the kernel a second after it is
//! freed, then takes it again a moment later: every round trip is a page fault and, with
//! transparent huge pages, the kernel zeroing a whole huge page again (the page faults before
//! and after are in bench/README.md). Memory a burst needed stays with the process instead;
//! the cache and the job store have their own bounds.
//!
//! mimalloc also asks for transparent huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), so
//! the first byte touched in a 2 MiB range makes all of it resident. courier's heap is many
//! small objects (cache entries, status entries, connection buffers) in a working set far
//! smaller than what 4 KiB pages already map without a TLB miss, so huge pages only inflate
//! RSS, at start and more so with a filled cache (bench/README.md has the figures).
//! [`small_pages`] turns them off for the process, unless
//! `MIMALLOC_ALLOW_THP` is set (mimalloc's own switch: `1` keeps them).

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e` (mimalloc 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Stops mimalloc from purging freed memory. Call first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide option of the allocator; mimalloc allows it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), unless
/// `MIMALLOC_ALLOW_THP` is set. Call first thing in `main`: memory touched before stays as it is.
pub fn small_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: a process-wide flag for the kernel's page faults; no memory is touched.
    // A kernel without it returns an error, and huge pages stay as they were.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
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
