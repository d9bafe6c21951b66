//! This process's stores in progress, so that a purge removes what they write.
//!
//! A response goes out before its store has landed (`store.rs` writes it in the background; the
//! URL's flight answers the requests in between, `flight.rs`). A purge issued once the client
//! has the response would otherwise find no record to remove, and the store would write it just
//! after: the purged response served until it expires. So every purge that removes records or
//! sweeps keys (`purge_url`, `purge_prefix`, `purge_all`, an unsafe method's invalidation) first
//! waits for the stores in progress of the URLs it removes (of every URL, for a sweep), at most
//! [`LANDING_WAIT`]; a store begun after the purge began is not waited for.
//!
//! Not covered, as in nginx and Varnish: a response whose handler call was still running when
//! the purge began (its store begins after the purge), and the stores of other processes. A tag
//! purge covers both: a tagged response is stamped with the start of its handler call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// The longest a purge waits for the stores in progress: the repository's default deadline (a
/// store is a few commands, each bounded by the deadline, so a store that takes longer is one
/// the cache is failing anyway). The purge then goes on.
pub(crate) const LANDING_WAIT: Duration = Duration::from_millis(500);

/// The stores in progress, by id: the URL key each writes, and a channel that closes when it
/// has landed (or failed).
#[derive(Debug, Default)]
pub(crate) struct Landing {
    stores: Mutex<HashMap<u64, (String, watch::Receiver<()>)>>,
    next_id: AtomicU64,
}

/// A store in progress, from before its response goes out until it has landed: dropped, it
/// leaves the list and wakes the purges waiting for it.
#[derive(Debug)]
pub(crate) struct InProgress {
    landing: Arc<Landing>,
    id: u64,
    /// Dropped after [`Drop::drop`] has removed the store: closes the waiters' channels.
    _landed: watch::Sender<()>,
}

impl Landing {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (String, watch::Receiver<()>)>> {
        // Held for single inserts, removals and a scan, never across an await or user code: a
        // panic while holding it leaves the map consistent.
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a store of `url_key`'s response, before the response goes out.
    pub(crate) fn begin(self: &Arc<Self>, url_key: &str) -> InProgress {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (landed, receiver) = watch::channel(());
        self.lock().insert(id, (url_key.to_owned(), receiver));
        InProgress {
            landing: Arc::clone(self),
            id,
            _landed: landed,
        }
    }

    /// Waits until the stores in progress now whose URL key `of` accepts have landed, at most
    /// [`LANDING_WAIT`] (outside a tokio runtime, which runs no background store, not at all).
    pub(crate) async fn landed(&self, of: impl Fn(&str) -> bool) {
        let pending: Vec<watch::Receiver<()>> = self
            .lock()
            .values()
            .filter(|(url_key, _)| of(url_key))
            .map(|(_, receiver)| receiver.clone())
            .collect();
        if pending.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let all = async {
            for mut receiver in pending {
                // Nothing is ever sent: `changed` fails once the store's sender is dropped.
                while receiver.changed().await.is_ok() {}
            }
        };
        if tokio::time::timeout(LANDING_WAIT, all).await.is_err() {
            tracing::debug!("impcache-tower: a purge went on before a store in progress landed");
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.landing.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_purge_waits_for_the_stores_of_its_urls_only() {
        let landing = Arc::new(Landing::default());
        let a = landing.begin("ns:a");
        let b = landing.begin("ns:b");
        // Nothing of `c` in progress: at once.
        landing.landed(|url| url == "ns:c").await;
        let waiting = {
            let landing = Arc::clone(&landing);
            tokio::spawn(async move { landing.landed(|url| url == "ns:a").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "returned before `a` landed");
        drop(a);
        assert!(waiting.await.is_ok());
        assert_eq!(landing.lock().len(), 1, "`b` still in progress");
        drop(b);
        assert!(landing.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_never_lands_holds_a_purge_for_the_wait_at_most() {
        let landing = Arc::new(Landing::default());
        let _stuck = landing.begin("ns:a");
        let started = tokio::time::Instant::now();
        landing.landed(|_| true).await;
        assert_eq!(started.elapsed(), LANDING_WAIT);
    }
}
