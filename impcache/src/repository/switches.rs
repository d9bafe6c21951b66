//! Near caches told of a repository's switch to other servers as the repository makes it: a
//! Sentinel failover (another primary), a new Cluster slot map (a replica promoted, a slot moved).
//! A near cache's tracking connections are on the servers it subscribed to; the old ones send no
//! invalidation for writes made on the new ones (a forced-out Sentinel primary stays writable a
//! while, a frozen Cluster primary says nothing at all), so the near cache must stop serving
//! locally then, not at its next heartbeat.

use std::sync::{Mutex, MutexGuard, PoisonError, Weak};

/// Told when a repository switches to other servers (Sentinel: another primary; Cluster: a slot
/// map that says something else, or a `MOVED` that shows the map in use is stale).
///
/// Called as the switch is made, before any operation uses the new servers, possibly with the
/// repository's state locked: it must not call the repository, and should return quickly.
pub(crate) trait SwitchListener: Send + Sync {
    /// The repository switched to other servers.
    fn switched(&self);
}

/// A repository's [`SwitchListener`]s (its near caches), each held weakly: one that is gone is
/// forgotten.
#[derive(Default)]
pub(crate) struct SwitchListeners(Mutex<Vec<Weak<dyn SwitchListener>>>);

impl SwitchListeners {
    /// Tells `listener` of every switch from now on, while it lives.
    pub(crate) fn add(&self, listener: Weak<dyn SwitchListener>) {
        let mut listeners = self.lock();
        listeners.retain(|listener| listener.strong_count() > 0);
        listeners.push(listener);
    }

    /// Tells the listeners that the repository switched to other servers.
    pub(crate) fn switched(&self) {
        self.lock().retain(|listener| match listener.upgrade() {
            Some(listener) => {
                listener.switched();
                true
            }
            None => false,
        });
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Weak<dyn SwitchListener>>> {
        // A list of weak pointers: a panic while it was held leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
