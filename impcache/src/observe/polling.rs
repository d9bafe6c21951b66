//! The reads of the cross-process lock's protocol ([`Lock`](crate::Lock)): a process waiting
//! for another process's value polls the value key (every 5 to 50 ms), and one that takes the
//! lock reads it once more. They are `get` operations as any other (`impcache_operations_total`,
//! their duration, their errors, their spans), but not lookups of the caller's: a wait of half
//! a second would otherwise add ten misses to `impcache_lookups_total` and [`Cache::stats`],
//! whose hit ratio measures the callers' lookups. The lock's own outcome
//! (`impcache_lock_outcomes_total`) says how each wait ended.
//!
//! The same for a flight leader's second look at its key (`#[cached]`'s and `get_or_set`'s, when
//! a flight of the key ended since its first read, such as a cancelled leader's whose waiter
//! now leads): the caller's lookup was its first read, and a caller counts one lookup.
//!
//! The protocol's reads are the caller's (`get_or_set`'s read of the value key, the HTTP layer's
//! lookup of a URL's response), made through the cache's public operations: they are marked
//! by running inside [`polled`], which sets a thread-local flag while it polls them, as
//! `tracing`'s `Instrument` enters a span. An operation that ends inside reads the flag
//! ([`active`]) when it counts a lookup: one thread-local load, off every other path.
//!
//! [`Cache::stats`]: crate::Cache::stats

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;

thread_local! {
    /// Whether the future being polled on this thread is a read of the lock's protocol.
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the operation ending now is a read of the lock's protocol, or a second look (no
/// lookup).
#[inline]
pub(crate) fn active() -> bool {
    POLLING.with(Cell::get)
}

/// `read`, whose operations are the lock protocol's reads or a second look (not counted as
/// lookups).
pub(crate) async fn polled<F: Future>(read: F) -> F::Output {
    let mut read = pin!(read);
    std::future::poll_fn(|cx| {
        let before = POLLING.replace(true);
        // Restored however the poll ends (a panic unwinds through here too).
        let _restore = Restore(before);
        read.as_mut().poll(cx)
    })
    .await
}

/// Sets the flag back to what it was when dropped.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        POLLING.set(self.0);
    }
}
