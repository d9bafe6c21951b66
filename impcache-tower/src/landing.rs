//! This process's handler calls and stores in progress, so that a purge removes what they write
//! and no response made before it is stored or handed out after it.
//!
//! A handler call whose response may be stored is recorded before it starts ([`Landing::call`])
//! until its store has landed, or until it ends without one. Every purge that removes records or
//! sweeps keys (`purge_url`, `purge_prefix`, by sweep or by a declared prefix's tag, `purge_all`,
//! an unsafe method's invalidation) first does, for what it removes ([`Landing::purging`]; a
//! purge on any host, by the path on every host, whatever the namespace's list of hosts names,
//! and before that list is read):
//!
//! - **Calls still running** are marked: their responses are not stored
//!   ([`InProgress::store`] refuses), as the data they read may predate the purge. They still
//!   answer their own requests, and those that joined their flights before the purge.
//! - **Their flights leave the flight table** ([`impcache::flight::Flights::detach`]): a request
//!   that arrives after the purge starts a new flight (its own handler call), rather than wait
//!   for a response made before it.
//! - **Stores in progress** are waited for, at most [`LANDING_WAIT`]. A response goes out before
//!   its store has landed (`store.rs` writes it in the background; the URL's flight answers the
//!   requests in between, `flight.rs`): a purge issued once the client has the response would
//!   otherwise find no record to remove, and the store would write it just after, the purged
//!   response served until it expires.
//!
//! One lock orders the three: a call moves from running to storing under it, so either the purge
//! marks it first (it stores nothing) or waits for its store.
//!
//! Not covered: the handler calls and stores of other processes (and of other layers than this
//! one and its clones), which may store a response made before the purge after it, as in nginx
//! and Varnish. A tag purge covers those: a tagged response is stamped with the start of its
//! handler call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::flight::Flights;

/// The longest a purge waits for the stores in progress: the repository's default deadline (a
/// store is a few commands, each bounded by the deadline, so a store that takes longer is one
/// the cache is failing anyway). The purge then goes on.
pub(crate) const LANDING_WAIT: Duration = Duration::from_millis(500);

/// The handler calls and stores in progress, by id.
#[derive(Debug, Default)]
pub(crate) struct Landing {
    calls: Mutex<HashMap<u64, Call>>,
    next_id: AtomicU64,
}

/// One handler call in progress: the URL key whose response it may store, and where it stands.
#[derive(Debug)]
struct Call {
    url_key: String,
    state: State,
}

#[derive(Debug)]
enum State {
    /// The handler is called (or its body is arriving); `purged` once a purge of its URL began.
    Running { purged: bool },
    /// Its store is under way: the channel closes when it has landed (or failed).
    Storing(watch::Receiver<()>),
}

/// A handler call in progress, from before it starts until its store has landed: dropped, it
/// leaves the list and wakes the purges waiting for its store.
#[derive(Debug)]
pub(crate) struct InProgress {
    landing: Arc<Landing>,
    id: u64,
    /// Once storing: dropped after [`Drop::drop`] has removed the call, which closes the
    /// waiters' channels.
    _landed: Option<watch::Sender<()>>,
}

impl Landing {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Call>> {
        // Held for single inserts, updates, removals and a scan, never across an await or user
        // code: a panic while holding it leaves the map consistent.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a handler call whose response may be stored under `url_key`, before it starts.
    pub(crate) fn call(self: &Arc<Self>, url_key: &str) -> InProgress {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let call = Call {
            url_key: url_key.to_owned(),
            state: State::Running { purged: false },
        };
        self.lock().insert(id, call);
        InProgress {
            landing: Arc::clone(self),
            id,
            _landed: None,
        }
    }

    /// What a purge does first, for the URL keys `reaches` accepts (see the module docs): marks
    /// their calls still running (their responses are not stored), detaches their `flights`
    /// (`reaches` sees the flight keys too: a URL key, or one of its variant keys), and waits
    /// until their stores in progress have landed ([`wait_landed`]).
    pub(crate) async fn purging(&self, flights: &Flights, reaches: impl Fn(&str) -> bool) {
        let pending: Vec<watch::Receiver<()>> = {
            let mut calls = self.lock();
            let reached = calls.values_mut().filter(|call| reaches(&call.url_key));
            reached
                .filter_map(|call| match &mut call.state {
                    State::Running { purged } => {
                        *purged = true;
                        None
                    }
                    State::Storing(landed) => Some(landed.clone()),
                })
                .collect()
        };
        flights.detach(|flight| reaches(flight));
        wait_landed(pending).await;
    }

    /// What a soft purge by tag does first: waits until every store in progress has landed, at
    /// most [`LANDING_WAIT`], so that a response already sent is marked stale with the rest of
    /// its tag (served stale while it refreshes), rather than be a miss for the requests between
    /// the purge and its store landing (a request right after a `soft_purge_tag` called the
    /// handler: 2 of 23 runs with the cross-process lock, found by a probe). Running calls need
    /// nothing: a tagged response is stamped with the start of its handler call.
    pub(crate) async fn stores_landed(&self) {
        let pending = self
            .lock()
            .values()
            .filter_map(|call| match &call.state {
                State::Running { .. } => None,
                State::Storing(landed) => Some(landed.clone()),
            })
            .collect();
        wait_landed(pending).await;
    }
}

/// Waits until the stores of `pending` have landed, at most [`LANDING_WAIT`] (outside a tokio
/// runtime, which runs no background store, not at all).
async fn wait_landed(pending: Vec<watch::Receiver<()>>) {
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

impl InProgress {
    /// The call's response is about to be stored (before it goes out): `false` when a purge of
    /// its URL began during the call (nothing is stored then); else the call is a store in
    /// progress from now on, which purges wait for.
    pub(crate) fn store(&mut self) -> bool {
        let mut calls = self.landing.lock();
        let Some(call) = calls.get_mut(&self.id) else {
            return false;
        };
        match call.state {
            State::Running { purged: true } => false,
            State::Running { purged: false } => {
                let (landed, receiver) = watch::channel(());
                call.state = State::Storing(receiver);
                self._landed = Some(landed);
                true
            }
            State::Storing(_) => true,
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

    /// A call of `url_key` whose store is in progress.
    fn storing(landing: &Arc<Landing>, url_key: &str) -> Result<InProgress, String> {
        let mut call = landing.call(url_key);
        if call.store() {
            Ok(call)
        } else {
            Err(format!("{url_key}: the store was refused"))
        }
    }

    #[tokio::test]
    async fn a_purge_waits_for_the_stores_of_its_urls_only() -> Result<(), String> {
        let landing = Arc::new(Landing::default());
        let flights = Flights::default();
        let a = storing(&landing, "ns:a")?;
        let b = storing(&landing, "ns:b")?;
        // Nothing of `c` in progress: at once.
        landing.purging(&flights, |url| url == "ns:c").await;
        let waiting = {
            let landing = Arc::clone(&landing);
            tokio::spawn(async move {
                let flights = Flights::default();
                landing.purging(&flights, |url| url == "ns:a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "returned before `a` landed");
        drop(a);
        assert!(waiting.await.is_ok());
        assert_eq!(landing.lock().len(), 1, "`b` still in progress");
        drop(b);
        assert!(landing.lock().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_call_running_when_its_url_is_purged_stores_nothing() -> Result<(), String> {
        let landing = Arc::new(Landing::default());
        let flights = Arc::new(Flights::default());
        let mut purged = landing.call("ns:a");
        let mut other = landing.call("ns:b");
        let flight = flights.join("ns:a:v:1234", flights.ticket());
        // Not waited for: no store of `a` is in progress.
        landing
            .purging(&flights, |key| key.starts_with("ns:a"))
            .await;
        assert!(
            !purged.store(),
            "a response made before the purge was stored"
        );
        assert!(other.store(), "another URL's call is not affected");
        assert_eq!(flights.in_flight(), 0, "the purged URL's flight was kept");
        drop(flight);
        // A call that starts after the purge stores.
        assert!(storing(&landing, "ns:a").is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn a_soft_purge_waits_for_every_store_in_progress() -> Result<(), String> {
        let landing = Arc::new(Landing::default());
        let stored = storing(&landing, "ns:a")?;
        let _running = landing.call("ns:b");
        let waiting = {
            let landing = Arc::clone(&landing);
            tokio::spawn(async move { landing.stores_landed().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "returned before `a` landed");
        drop(stored);
        assert!(waiting.await.is_ok(), "a running call is not waited for");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_never_lands_holds_a_purge_for_the_wait_at_most() -> Result<(), String> {
        let landing = Arc::new(Landing::default());
        let _stuck = storing(&landing, "ns:a")?;
        let started = tokio::time::Instant::now();
        landing.purging(&Flights::default(), |_| true).await;
        assert_eq!(started.elapsed(), LANDING_WAIT);
        Ok(())
    }
}
