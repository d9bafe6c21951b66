//! Waiting for a key to change: a process waiting for another process's value (issue 16's
//! cross-process lock) is woken by the value key's invalidation, which the near cache receives
//! from Redis when the other process stores it, instead of at its next poll (rueidisaside's
//! waiters are woken the same way).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// The keys waited on, each with its waiters' `Notify` and their number.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    by_key: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// How many watches exist: an invalidation looks at the map only when one does.
    count: AtomicUsize,
}

impl Watches {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Arc<Notify>, usize)>> {
        // A map of counts and `Notify`s: a panic while it was held leaves it usable.
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch of `key` (a full key) until it is dropped.
    pub(crate) fn watch(self: &Arc<Self>, key: &str) -> Watch {
        let mut by_key = self.lock();
        let (notify, watchers) = by_key
            .entry(key.to_owned())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        *watchers += 1;
        self.count.fetch_add(1, Ordering::SeqCst);
        Watch {
            watches: Arc::clone(self),
            key: key.to_owned(),
            notify: Arc::clone(notify),
        }
    }

    /// `key` changed: its watchers wake (one that is not waiting yet keeps the news for its
    /// next wait).
    pub(crate) fn changed(&self, key: &str) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        if let Some((notify, _)) = self.lock().get(key) {
            wake(notify);
        }
    }

    /// Anything may have changed (a flush): every watcher wakes.
    pub(crate) fn all_changed(&self) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        for (notify, _) in self.lock().values() {
            wake(notify);
        }
    }
}

fn wake(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

/// One waiter's watch of a key (see [`Watches::watch`]).
#[derive(Debug)]
pub(crate) struct Watch {
    watches: Arc<Watches>,
    key: String,
    notify: Arc<Notify>,
}

impl Watch {
    /// Waits at most `pause` for the key to change; whether it did.
    pub(crate) async fn changed_within(&self, pause: Duration) -> bool {
        tokio::time::timeout(pause, self.notify.notified())
            .await
            .is_ok()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut by_key = self.watches.lock();
        if let Some((_, watchers)) = by_key.get_mut(&self.key) {
            *watchers -= 1;
            if *watchers == 0 {
                by_key.remove(&self.key);
            }
        }
        self.watches.count.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_watchers_of_its_key_only() {
        let watches = Arc::new(Watches::default());
        let a = watches.watch("p:1:a");
        let b = watches.watch("p:1:b");
        // A change before the wait is kept for it.
        watches.changed("p:1:a");
        assert!(a.changed_within(Duration::from_secs(5)).await);
        assert!(!b.changed_within(Duration::from_millis(20)).await);
        watches.all_changed();
        assert!(b.changed_within(Duration::from_secs(5)).await);
        drop((a, b));
        assert!(watches.lock().is_empty());
        assert_eq!(watches.count.load(Ordering::SeqCst), 0);
    }
}
