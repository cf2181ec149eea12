//! A value that is replaced when it goes stale (a connection after a failover or a credential
//! rotation), opened once per change however many callers notice it at the same time: readers
//! take the current value without a lock; the first caller to find it stale opens the
//! replacement while the others wait for it, bounded by the opener's own timeout.

use std::future::Future;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

pub(super) struct Reopened<T> {
    current: ArcSwap<T>,
    /// Held while a replacement is opened, so one is opened per change.
    switching: tokio::sync::Mutex<()>,
}

impl<T> Reopened<T> {
    pub(super) fn new(value: T) -> Reopened<T> {
        Reopened { current: ArcSwap::from_pointee(value), switching: tokio::sync::Mutex::new(()) }
    }

    /// The current value, stale or not.
    pub(super) fn load(&self) -> Guard<Arc<T>> {
        self.current.load()
    }

    /// The current value when `fresh` says so; else the one `open` makes (once for all the
    /// callers that found it stale together), which replaces it.
    pub(super) async fn get<E, F>(&self, fresh: impl Fn(&T) -> bool, open: impl FnOnce() -> F) -> Result<Arc<T>, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let current = self.current.load_full();
        if fresh(&current) {
            return Ok(current);
        }
        let _switching = self.switching.lock().await;
        let current = self.current.load_full();
        if fresh(&current) {
            return Ok(current);
        }
        let value = Arc::new(open().await?);
        self.current.store(value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[actix_rt::test]
    async fn callers_that_find_it_stale_together_open_one_replacement() {
        let cell = Reopened::new(0u32);
        let wanted = AtomicU32::new(1);
        let opened = AtomicU32::new(0);
        let get = || {
            cell.get(
                |v| *v == wanted.load(Ordering::SeqCst),
                || async {
                    opened.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(wanted.load(Ordering::SeqCst))
                },
            )
        };
        let (a, b, c) = futures_util::join!(get(), get(), get());
        assert_eq!((*a.unwrap(), *b.unwrap(), *c.unwrap()), (1, 1, 1));
        assert_eq!(opened.load(Ordering::SeqCst), 1, "one replacement for three callers");
        assert_eq!(*get().await.unwrap(), 1);
        assert_eq!(opened.load(Ordering::SeqCst), 1, "a fresh value is not opened again");
        assert_eq!(**cell.load(), 1);
    }

    #[actix_rt::test]
    async fn a_failed_open_keeps_the_stale_value_and_the_next_call_tries_again() {
        let cell = Reopened::new(0u32);
        assert_eq!(cell.get(|v| *v == 1, || async { Err::<u32, _>("down") }).await.err(), Some("down"));
        assert_eq!(**cell.load(), 0);
        assert_eq!(*cell.get(|v| *v == 1, || async { Ok::<_, &str>(1) }).await.unwrap(), 1);
    }
}
