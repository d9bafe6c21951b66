//! The echoes of this cache's own writes.
//!
//! In BCAST mode Redis sends the tracking connection an invalidation for every write under the
//! prefix, this cache's own included (`NOLOOP` only leaves out writes made on the tracking
//! connection itself). An own write already drops the key locally when it returns
//! (`Store::written`); its echo lands a little later, on the other connection. A read that took
//! its ticket in between would be dropped by the echo, although it was sent after the write
//! returned and so read the write's value or a later one: the first read after an own write
//! would not be kept (measured on loopback: 32 of 200).
//!
//! So a write is registered before it is sent, and when it returns having changed the key,
//! with no invalidation of that key seen since it was sent, the next invalidation of the key
//! is taken for its echo and does not drop reads in flight ([`Echoes::arrived`]). Why that is
//! safe: invalidations of one key reach one tracking connection in the order Redis sent them.
//! If the one taken for the echo is really another client's, that write was made before the
//! echo was sent, so before the own write (the same event-loop cycle at the latest, where
//! Redis merges them): everything read before the own write returned was dropped by it, and
//! every read since was sent after it. An invalidation seen while the write is in flight, a
//! second writer of the key in this cache, a write that changed nothing (`SET NX` refused, a
//! `DEL` of nothing) or failed, and every flush leave nothing expected: the next invalidation
//! drops as any does.
//!
//! **A read of a key while an own write of it is in flight** (`Store::after_own_write`):
//! `get_or_set` and `#[cached]` answer once their store is sent, so the caller's next read of
//! the key is usually sent while that store is in flight. Such a read is not protected above (it
//! may run in the write's event-loop turn), and the write's return drops it: the first read after
//! a load was kept 0 of 30 times against 30 of 30 after a `set`, and with
//! [`NearCache::fail_safe`](crate::NearCache::fail_safe) no copy was made. So a read of a key
//! with an own write of it in flight waits for that write to return (at most 5 ms, or a tenth
//! of the repository's deadline when that is shorter) before it takes its ticket and is sent:
//! it is then a read sent after the write returned, and the argument above holds for it
//! unchanged. The wait is time only; it drops nothing, expects nothing and keeps nothing (past
//! its bound the read is sent and, as before, not kept).
//!
//! *Why the stored value itself is not kept locally* (which would save that read): Redis merges
//! the invalidations of one key within one event-loop turn (BCAST collects the keys changed in
//! the turn and sends each once, before the turn's replies). Another client's write of the key
//! run in the same turn *after* the own write is then announced by the one invalidation taken
//! for the echo: a read sent after the write returned runs in a later turn and reads that other
//! value, but the bytes the own write stored would be kept, and served until `max_ttl`, while
//! Redis holds the other client's value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Keys expected at most at once; past it nothing more is expected (reads are then only
/// dropped more often, never kept wrongly).
const MOST_PENDING: usize = 4096;

/// An own write of one key, from its sending to its echo.
#[derive(Debug, Default)]
struct Pending {
    /// Own writes of the key in flight.
    writers: u32,
    /// An invalidation of the key was seen while a write was in flight, or two writes overlapped.
    spoiled: bool,
    /// The writes returned having changed the key: its next invalidation is their echo.
    expected: bool,
    /// An invalidation of the key arrived while a write was in flight (maybe its echo, early):
    /// already counted.
    arrived: bool,
}

/// The own writes whose echo may still come, by full key.
#[derive(Debug, Default)]
pub(super) struct Echoes {
    pending: Mutex<HashMap<Box<[u8]>, Pending>>,
    /// `pending.len()`, read without the lock by every invalidation.
    pub(super) len: AtomicUsize,
}

impl Echoes {
    fn with<T>(&self, change: impl FnOnce(&mut HashMap<Box<[u8]>, Pending>) -> T) -> T {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = change(&mut pending);
        self.len.store(pending.len(), Ordering::Release);
        result
    }

    /// An own write of `key` is about to be sent.
    pub(super) fn sending(&self, key: &[u8]) {
        self.with(|pending| {
            if let Some(write) = pending.get_mut(key) {
                write.writers += 1;
                write.spoiled = true;
            } else if pending.len() < MOST_PENDING {
                pending.insert(
                    key.into(),
                    Pending {
                        writers: 1,
                        ..Pending::default()
                    },
                );
            }
        });
    }

    /// Whether an own write of `key` is in flight (sent, not returned).
    pub(super) fn in_flight(&self, key: &[u8]) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.with(|pending| pending.get(key).is_some_and(|write| write.writers > 0))
    }

    /// The own write of `key` returned; `changed`: it succeeded and changed the key (so Redis
    /// sends an invalidation of it). Whether an invalidation of the key arrived while it was in
    /// flight (counted then: the write's own drop is not counted again).
    pub(super) fn returned(&self, key: &[u8], changed: bool) -> bool {
        self.with(|pending| {
            let Some(write) = pending.get_mut(key) else {
                return false;
            };
            // Taken: one invalidation that arrived stands for one write's drop.
            let arrived = std::mem::take(&mut write.arrived);
            write.writers = write.writers.saturating_sub(1);
            if !changed {
                write.spoiled = true;
            }
            if write.writers == 0 {
                if write.spoiled {
                    pending.remove(key);
                } else {
                    write.expected = true;
                }
            }
            arrived
        })
    }

    /// An invalidation of `key` from Redis: whether it is the echo of an own write that
    /// returned (then it drops nothing).
    pub(super) fn arrived(&self, key: &[u8]) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.with(|pending| match pending.get_mut(key) {
            Some(write) if write.expected => {
                pending.remove(key);
                true
            }
            Some(write) => {
                write.spoiled = true;
                write.arrived = true;
                false
            }
            None => false,
        })
    }

    /// Everything was dropped (a flush, a lost connection): no echo is expected any more, and
    /// the writes in flight expect none.
    pub(super) fn clear(&self) {
        self.with(|pending| {
            pending.retain(|_, write| write.writers > 0);
            for write in pending.values_mut() {
                write.spoiled = true;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_echo_of_a_returned_write_that_changed_the_key_is_taken() {
        let echoes = Echoes::default();
        assert!(!echoes.arrived(b"k"), "nothing written");
        echoes.sending(b"k");
        echoes.returned(b"k", true);
        assert!(echoes.arrived(b"k"), "the echo");
        assert!(!echoes.arrived(b"k"), "once");
        // Seen while the write was in flight: maybe the echo already (counted as it arrived).
        echoes.sending(b"k");
        assert!(!echoes.arrived(b"k"));
        assert!(echoes.returned(b"k", true), "arrived in flight");
        assert!(!echoes.arrived(b"k"));
        echoes.sending(b"k");
        assert!(!echoes.returned(b"k", true), "nothing arrived in flight");
        assert!(echoes.arrived(b"k"));
        // Nothing changed (a refused `SET NX`), or failed.
        echoes.sending(b"k");
        echoes.returned(b"k", false);
        assert!(!echoes.arrived(b"k"));
        // Two writes of the key at once.
        echoes.sending(b"k");
        echoes.sending(b"k");
        echoes.returned(b"k", true);
        echoes.returned(b"k", true);
        assert!(!echoes.arrived(b"k"));
        // A flush.
        echoes.sending(b"k");
        echoes.returned(b"k", true);
        echoes.clear();
        assert!(!echoes.arrived(b"k"));
        echoes.sending(b"k");
        echoes.clear();
        echoes.returned(b"k", true);
        assert!(!echoes.arrived(b"k"));
        assert_eq!(echoes.len.load(Ordering::Acquire), 0);
    }
}
