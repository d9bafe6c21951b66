//! Single-flight: one computation per key at a time, its result handed to everyone who asked
//! meanwhile. Used by the `#[cached]` runtime (`memoize/call.rs`) and by `impcache-tower`'s
//! request coalescing; generic over the key `K` and the published value `V` (cheap to clone:
//! `Bytes`, an `Arc`).
//!
//! /!\ Not a stable API: public only for `impcache-tower`, may change in any release. /!\
//!
//! # The protocol
//! - [`Flights::join`] makes the first caller for a key its [`Leader`] and every later one a
//!   [`Waiter`] of that leader.
//! - The leader [`publish`](FlightGuard::publish)es a value (waiters get [`Wait::Published`]) or
//!   says there is none to share ([`not_shared`](FlightGuard::not_shared): [`Wait::NotShared`],
//!   each waiter computes its own). The flight stays open until its [`FlightGuard`] is dropped,
//!   so a leader that still stores its value in the background keeps answering callers that
//!   join in that window.
//! - **One cancellation rule.** A guard dropped before it answered (its task was cancelled or
//!   panicked) ends the flight as *abandoned*: its waiters get [`Wait::Abandoned`] and join
//!   again; the first of them to join leads the next flight, the others wait for it, and that
//!   new leader is told to look again ([`Leader::recheck`]) before computing, since the value may
//!   have been stored meanwhile.
//! - **Tickets** (read your own writes). A caller that looks in a store before joining takes a
//!   [`Ticket`] (the count of flights ended so far) *before* its lookup. A flight of the key's
//!   group that ended after the ticket (its store done, so the lookup may have overtaken the
//!   write) makes the caller's lead a [`recheck`](Leader::recheck). A flight that ended before
//!   the ticket was taken had finished before the lookup was sent. An abandoned flight ends
//!   after the ticket of each of its waiters: joining again with the same ticket is how the new
//!   leader is told to look again (`#[cached]`); a caller that looks again itself joins with a
//!   fresh ticket instead (`impcache-tower`). Taking a ticket is one atomic load.
//! - Waiting can be bounded ([`Waiter::wait`]: [`Wait::TimedOut`]) or not
//!   ([`Waiter::wait_unbounded`]).
//! - **Detaching** ([`Flights::detach`], for a purge; [`Flights::detach_keys`], for a write of
//!   some keys). The flights of the keys a purge or a write reaches leave the table at once: a
//!   caller that joins from then on starts a new flight (its own computation, begun after the
//!   purge), while the detached flights' waiters, who joined before it, still get their
//!   leader's answer. A detached flight's end counts as any flight's. Its leader can tell
//!   ([`FlightGuard::is_detached`]): the load protocols then store nothing, their value having
//!   been computed before the write (it still answers their caller and waiters).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// How many groups of keys remember when a flight of theirs last ended: keys share one by hash,
/// so a flight ending rarely makes an unrelated caller look again. 4 KiB per table. With 64, a
/// burst of 1,000 concurrent misses of distinct `#[cached]` keys (a caller takes its ticket
/// before its `GET`) read up to 1.7 times per call, from flights of other keys of the group
/// that ended meanwhile (found by a probe).
const SHARDS: usize = 1024;

/// What a flight's channel holds.
#[derive(Debug, Clone)]
enum Slot<V> {
    /// The leader has not answered yet.
    Pending,
    /// The leader's answer: its value, or `None` when it has none to share.
    Done(Option<V>),
}

/// The flights in progress, keyed by `K`, publishing `V`. Shared through an `Arc`: each leader's
/// guard holds one to end its flight.
pub struct Flights<K, V> {
    table: Mutex<Table<K, V>>,
    next_id: AtomicU64,
    /// Flights ended so far (wrapping); incremented with the table locked.
    ended: AtomicU32,
    hasher: RandomState,
}

struct Table<K, V> {
    flights: HashMap<K, (u64, watch::Receiver<Slot<V>>)>,
    /// Per group of keys, the `ended` count of its last flight to end.
    last_end: [u32; SHARDS],
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            table: Mutex::new(Table {
                flights: HashMap::new(),
                last_end: [0; SHARDS],
            }),
            next_id: AtomicU64::new(0),
            ended: AtomicU32::new(0),
            hasher: RandomState::new(),
        }
    }
}

impl<K, V> fmt::Debug for Flights<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.lock().flights.len())
            .field("ended", &self.ended.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The count of ended flights, taken before a lookup. 32 bits, compared in wrapping order: a
/// caller's future holds it across its lookup, and 4 bytes fit where 8 grew it (`hit_cost
/// memory` in `impcache-tower`: a hit cost 222 instructions more than without tickets with 8
/// bytes, 78 with 4).
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u32);

impl Ticket {
    /// Whether `end` (a group's last flight end) is after this ticket. In wrapping order: an end
    /// less than 2^31 ends after the ticket is after it (a lookup that took longer than 2^31
    /// flights is not a case to serve).
    fn is_before(self, end: u32) -> bool {
        let since_ticket = end.wrapping_sub(self.0);
        since_ticket != 0 && since_ticket < 1 << 31
    }
}

/// A caller's place in a flight.
#[derive(Debug)]
pub enum Join<K: Hash + Eq, V> {
    /// The caller computes for everyone.
    Leader(Leader<K, V>),
    /// Another caller computes: wait for its answer.
    Waiter(Waiter<V>),
}

/// A new leader.
#[derive(Debug)]
pub struct Leader<K: Hash + Eq, V> {
    /// Answers the waiters; ends the flight when dropped.
    pub guard: FlightGuard<K, V>,
    /// A flight of the key's group ended after the caller's ticket was taken (an abandoned one,
    /// or one whose store the caller's lookup may have overtaken): look again before computing.
    pub recheck: bool,
}

/// The leader's handle. Publishing answers the waiters; dropping it ends the flight (after the
/// leader's store, or unanswered when the leader was cancelled or panicked, which leaves the
/// waiters [`Wait::Abandoned`]).
pub struct FlightGuard<K: Hash + Eq, V> {
    flights: Arc<Flights<K, V>>,
    key: K,
    id: u64,
    tx: watch::Sender<Slot<V>>,
}

impl<K: Hash + Eq + fmt::Debug, V> fmt::Debug for FlightGuard<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlightGuard")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A caller waiting for a leader's answer.
pub struct Waiter<V> {
    flight: u64,
    rx: watch::Receiver<Slot<V>>,
}

impl<V> fmt::Debug for Waiter<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waiter")
    }
}

/// Another handle on the same flight (its value need not be `Clone`).
impl<V> Clone for Waiter<V> {
    fn clone(&self) -> Self {
        Waiter {
            flight: self.flight,
            rx: self.rx.clone(),
        }
    }
}

/// What a waiter learned.
#[derive(Debug)]
pub enum Wait<V> {
    /// The leader's value.
    Published(V),
    /// The leader has no value to share (not cacheable, failed): compute your own.
    NotShared,
    /// The leader went away without an answer (cancelled, panicked): join again; the first to
    /// join leads, told to look again ([`Leader::recheck`]).
    Abandoned,
    /// The leader took longer than the wait's bound: compute your own.
    TimedOut,
}

impl<K, V> Flights<K, V> {
    fn lock(&self) -> MutexGuard<'_, Table<K, V>> {
        // The lock is never held across user code or an await, and a panic while holding it
        // leaves the table consistent (single inserts and removes): recover from poisoning.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a ticket, before a lookup.
    pub fn ticket(&self) -> Ticket {
        // Acquire pairs with the release of `FlightGuard::drop`: the flights counted here have
        // finished (their stores included) before the caller's lookup starts.
        Ticket(self.ended.load(Ordering::Acquire))
    }

    /// Number of flights in progress.
    pub fn in_flight(&self) -> usize {
        self.lock().flights.len()
    }
}

impl<K: Hash + Eq, V> Flights<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }

    /// Joins the flight for `key`, starting it when there is none. `ticket` was taken before the
    /// caller's lookup (see [`Ticket`]).
    pub fn join<Q>(self: &Arc<Self>, key: &Q, ticket: Ticket) -> Join<K, V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut table = self.lock();
        if let Some((id, rx)) = table.flights.get(key) {
            return Join::Waiter(Waiter {
                flight: *id,
                rx: rx.clone(),
            });
        }
        // Under the lock, which every flight's end takes: none ends unseen between the two.
        let recheck = ticket.is_before(table.last_end[self.shard(key)]);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Slot::Pending);
        table.flights.insert(key.to_owned(), (id, rx));
        Join::Leader(Leader {
            guard: FlightGuard {
                flights: Arc::clone(self),
                key: key.to_owned(),
                id,
                tx,
            },
            recheck,
        })
    }
}

impl<K: Hash + Eq, V> Flights<K, V> {
    /// The flight of `key` in progress, as a [`Waiter`], without starting one when there is
    /// none: for a caller that may take a leader's answer but never computes for others (the
    /// HTTP layer's `HEAD` requests).
    pub fn current<Q>(&self, key: &Q) -> Option<Waiter<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let table = self.lock();
        table.flights.get(key).map(|(id, rx)| Waiter {
            flight: *id,
            rx: rx.clone(),
        })
    }

    /// Whether a flight of `key`'s group ended after `ticket` was taken: the caller's lookup
    /// may have overtaken its store (see [`Ticket`]), as [`Leader::recheck`] says to a leader.
    pub fn ended_since<Q>(&self, key: &Q, ticket: Ticket) -> bool
    where
        Q: Hash + ?Sized,
    {
        ticket.is_before(self.lock().last_end[self.shard(key)])
    }
}

impl<K: Hash + Eq, V> Flights<K, V> {
    /// Takes the flights whose key `reaches` accepts out of the table (see the protocol: a purge
    /// of those keys): a caller joining from now on leads a new flight, while their waiters still
    /// get their leaders' answers. Returns how many were detached.
    pub fn detach(&self, reaches: impl Fn(&K) -> bool) -> usize {
        let mut table = self.lock();
        let before = table.flights.len();
        table.flights.retain(|key, _| !reaches(key));
        before - table.flights.len()
    }

    /// Takes the flights of `keys` out of the table, as [`detach`](Flights::detach) does, each
    /// found by its key (no scan of the table): for a write of those keys. `keys` is not
    /// iterated when no flight is in progress. Returns how many were detached.
    pub fn detach_keys(&self, keys: impl IntoIterator<Item = K>) -> usize {
        let mut table = self.lock();
        if table.flights.is_empty() {
            return 0;
        }
        keys.into_iter()
            .filter(|key| table.flights.remove(key).is_some())
            .count()
    }
}

impl<K: Hash + Eq, V> FlightGuard<K, V> {
    /// Which flight this is (see [`Waiter::flight`]).
    pub fn flight(&self) -> u64 {
        self.id
    }

    /// Hands `value` to the waiters (and to callers joining until the guard is dropped).
    pub fn publish(&self, value: V) {
        self.tx.send_replace(Slot::Done(Some(value)));
    }

    /// Tells the waiters there is no value to share, and ends the flight.
    pub fn not_shared(self) {
        self.tx.send_replace(Slot::Done(None));
    }

    /// Whether this flight was detached ([`Flights::detach`], [`Flights::detach_keys`]): a
    /// purge or a write of its key came after it began, so that what it computed may be older
    /// than that write. Checked with the table locked, as detaching is done.
    pub fn is_detached(&self) -> bool {
        !self.attached(&self.flights.lock())
    }

    /// Runs `send` unless this flight was detached ([`is_detached`](Self::is_detached)), with
    /// the table locked while it runs, so that a detach comes wholly before it (`None`: not
    /// run) or after it. The load protocols send their store so: a write of the key detaches
    /// before it is sent, so either it stores nothing or its command is queued behind the
    /// store's; a check, then the send, let a write on another thread come in between (a stress
    /// probe: a few rounds in 300). `send` must not join, detach or end a flight of this table:
    /// its lock is not reentrant.
    pub fn unless_detached<R>(&self, send: impl FnOnce() -> R) -> Option<R> {
        let table = self.flights.lock();
        let sent = self.attached(&table).then(send);
        drop(table);
        sent
    }

    /// Whether the table still holds this flight under its key.
    fn attached(&self, table: &Table<K, V>) -> bool {
        table
            .flights
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
    }
}

impl<K: Hash + Eq, V> Drop for FlightGuard<K, V> {
    fn drop(&mut self) {
        let flights = &*self.flights;
        let mut table = flights.lock();
        // Still in the table unless detached (then a later flight of the key may be there).
        if table
            .flights
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            table.flights.remove(&self.key);
        }
        // A detached flight's end counts too: its store may have landed just now. Release: what
        // the leader did before dropping its guard (its store) happens before the lookup of a
        // caller whose ticket counts this end.
        let ended = flights
            .ended
            .fetch_add(1, Ordering::Release)
            .wrapping_add(1);
        table.last_end[flights.shard(&self.key)] = ended;
        // Waiters still pending see the channel close: `Wait::Abandoned`.
    }
}

impl<V> Waiter<V> {
    /// Which flight this is: each flight of a table has an id of its own (a write of a key
    /// during its flight starts another flight of that key, with another id).
    pub fn flight(&self) -> u64 {
        self.flight
    }
}

impl<V: Clone> Waiter<V> {
    /// The leader's answer, waiting at most `timeout` (unbounded outside a tokio runtime, which
    /// has no timer to bound it with: the leader's guard still ends it).
    pub async fn wait(self, timeout: Duration) -> Wait<V> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.wait_unbounded().await;
        }
        tokio::time::timeout(timeout, self.wait_unbounded())
            .await
            .unwrap_or(Wait::TimedOut)
    }

    /// Waits until the flight has ended (its leader's guard dropped: a store in the background
    /// done), at most `timeout`; at once when it has already.
    pub async fn ended(mut self, timeout: Duration) {
        // Nothing is sent after the answer: `changed` fails once the guard's sender is dropped.
        let closed = async { while self.rx.changed().await.is_ok() {} };
        // Unbounded outside a tokio runtime, which has no timer (the guard still ends it).
        if tokio::runtime::Handle::try_current().is_err() {
            return closed.await;
        }
        drop(tokio::time::timeout(timeout, closed).await);
    }

    /// The leader's answer, however long it takes (the leader's guard ends it).
    pub async fn wait_unbounded(mut self) -> Wait<V> {
        match self.rx.wait_for(|slot| matches!(slot, Slot::Done(_))).await {
            Ok(slot) => match &*slot {
                Slot::Done(Some(value)) => Wait::Published(value.clone()),
                Slot::Done(None) | Slot::Pending => Wait::NotShared,
            },
            // Closed while pending: the leader was dropped without an answer.
            Err(_) => Wait::Abandoned,
        }
    }
}

/// A flight's key in the load protocols' tables (`get_or_set`'s and `#[cached]`'s): the
/// repository's address and the full key.
pub(crate) type RepositoryKey = (usize, String);

/// The load protocols' tables, which a write through a `Cache` detaches its keys from
/// ([`detach_written`]). Each registers itself when first used ([`keyed_by_repository`]), so
/// that the cache reaches them without importing the protocols, which import it.
static WRITTEN: Mutex<Vec<Arc<dyn DetachWritten>>> = Mutex::new(Vec::new());

/// A table that own writes detach keys from, whatever it publishes.
trait DetachWritten: Send + Sync {
    fn detach_keys(&self, keys: &mut dyn Iterator<Item = RepositoryKey>);
    fn detach_reached(&self, reaches: &dyn Fn(&RepositoryKey) -> bool);
}

impl<V: Send + Sync> DetachWritten for Flights<RepositoryKey, V> {
    fn detach_keys(&self, keys: &mut dyn Iterator<Item = RepositoryKey>) {
        Flights::detach_keys(self, keys);
    }

    fn detach_reached(&self, reaches: &dyn Fn(&RepositoryKey) -> bool) {
        self.detach(reaches);
    }
}

/// A new table of flights keyed by repository and full key, registered for
/// [`detach_written`].
pub(crate) fn keyed_by_repository<V: Send + Sync + 'static>() -> Arc<Flights<RepositoryKey, V>> {
    let table = Arc::new(Flights::default());
    let registered: Arc<dyn DetachWritten> = table.clone();
    WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(registered);
    table
}

/// Detaches the flights of `keys` (written by a caller) from every load protocol's table: a
/// call from then on loads anew (see the protocol: detaching). `keys` is iterated only for a
/// table with flights in progress.
pub(crate) fn detach_written(keys: impl Iterator<Item = RepositoryKey> + Clone) {
    for table in WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        table.detach_keys(&mut keys.clone());
    }
}

/// Detaches the flights whose key `reaches` accepts (a `delete_pattern`'s glob) from every
/// load protocol's table, scanning only the flights in progress.
pub(crate) fn detach_written_where(reaches: impl Fn(&RepositoryKey) -> bool) {
    for table in WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        table.detach_reached(&reaches);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    type Table = Arc<Flights<String, u32>>;

    fn flights() -> Table {
        Arc::new(Flights::default())
    }

    /// A test's result: `Err` names what went wrong.
    type Checked<T = ()> = Result<T, String>;

    fn leader(join: Join<String, u32>, role: &str) -> Checked<Leader<String, u32>> {
        match join {
            Join::Leader(leader) => Ok(leader),
            Join::Waiter(_) => Err(format!("{role}: expected to lead, got to wait")),
        }
    }

    fn waiter(join: Join<String, u32>, role: &str) -> Checked<Waiter<u32>> {
        match join {
            Join::Waiter(waiter) => Ok(waiter),
            Join::Leader(_) => Err(format!("{role}: expected to wait, got to lead")),
        }
    }

    /// A spawned task's output, or the reason it has none.
    async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Checked<T> {
        task.await.map_err(|error| error.to_string())
    }

    /// What a caller got: the value, whether it led (its guard, kept open as for a background
    /// store) and whether it was told to look again.
    type Got = (u32, Option<FlightGuard<String, u32>>, bool);

    /// A caller that follows the protocol: leads (counted in `leaders`, publishing `value` once
    /// `go` says so) or waits, joining again when its leader is abandoned.
    async fn caller(
        flights: Table,
        leaders: Arc<AtomicUsize>,
        mut go: watch::Receiver<bool>,
        value: u32,
    ) -> Checked<Got> {
        let ticket = flights.ticket();
        loop {
            match flights.join("k", ticket) {
                Join::Leader(Leader { guard, recheck }) => {
                    leaders.fetch_add(1, Ordering::SeqCst);
                    let _ = go.wait_for(|go| *go).await;
                    guard.publish(value);
                    return Ok((value, Some(guard), recheck));
                }
                Join::Waiter(waiter) => match waiter.wait_unbounded().await {
                    Wait::Published(value) => return Ok((value, None, false)),
                    Wait::Abandoned => continue,
                    other => return Err(format!("unexpected {other:?}")),
                },
            }
        }
    }

    #[tokio::test]
    async fn waiters_get_the_published_value_and_the_flight_ends_when_the_guard_drops() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let first = leader(flights.join("k", ticket), "first")?;
        assert!(!first.recheck);
        let second = waiter(flights.join("k", ticket), "second")?;
        let task = tokio::spawn(second.wait_unbounded());
        first.guard.publish(7);
        assert!(matches!(joined(task).await?, Wait::Published(7)));
        // Still open until the guard is dropped (a background store): a late caller is answered
        // from memory.
        let late = waiter(flights.join("k", ticket), "late")?;
        assert!(matches!(
            late.wait(Duration::from_secs(5)).await,
            Wait::Published(7)
        ));
        drop(first.guard);
        assert_eq!(flights.in_flight(), 0);
        // Another key is another flight.
        let _other = leader(flights.join("other", flights.ticket()), "other")?;
        Ok(())
    }

    #[tokio::test]
    async fn not_shared_sends_each_waiter_to_compute_and_ends_the_flight() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let first = leader(flights.join("k", ticket), "first")?;
        let second = waiter(flights.join("k", ticket), "second")?;
        first.guard.not_shared();
        assert!(matches!(second.wait_unbounded().await, Wait::NotShared));
        assert_eq!(flights.in_flight(), 0);
        Ok(())
    }

    /// Starts a leader that exits as `exit` says, and five callers waiting for it; checks that
    /// exactly one of them leads the next flight (told to look again) and the others get its
    /// value.
    async fn hand_over(exit: impl FnOnce(FlightGuard<String, u32>) + Send + 'static) -> Checked {
        let flights = flights();
        let first = leader(flights.join("k", flights.ticket()), "first")?;
        let leaders = Arc::new(AtomicUsize::new(0));
        let (go, go_rx) = watch::channel(false);
        let callers: Vec<_> = (0..5)
            .map(|i| {
                tokio::spawn(caller(
                    Arc::clone(&flights),
                    Arc::clone(&leaders),
                    go_rx.clone(),
                    100 + i,
                ))
            })
            .collect();
        // Let every caller join the first flight (the table holds one receiver, each waiter one).
        while first.guard.tx.receiver_count() < 6 {
            tokio::task::yield_now().await;
        }
        let _ = tokio::spawn(async move { exit(first.guard) }).await;
        while leaders.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        go.send_replace(true);
        let mut results = Vec::new();
        for caller in callers {
            results.push(joined(caller).await??);
        }
        assert_eq!(leaders.load(Ordering::SeqCst), 1, "exactly one new leader");
        let rechecks: Vec<bool> = results
            .iter()
            .map(|(_, guard, recheck)| guard.is_some() && *recheck)
            .collect();
        assert_eq!(
            rechecks.iter().filter(|r| **r).count(),
            1,
            "the new leader looks again"
        );
        let value = results[0].0;
        assert!(results.iter().all(|(v, _, _)| *v == value));
        drop(results);
        assert_eq!(flights.in_flight(), 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_leader_hands_over_to_exactly_one_new_leader() -> Checked {
        hand_over(drop).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_leader_hands_over_to_exactly_one_new_leader() -> Checked {
        hand_over(|guard| {
            let _guard = guard;
            // The case under test: the leader unwinds, as a panicking loader does (without the
            // panic hook's message in the test output).
            std::panic::resume_unwind(Box::new("the leader fails (on purpose)"))
        })
        .await
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move {
                let Ok(first) = leader(flights.join("k", ticket), "first") else {
                    return; // `started` then fails the test
                };
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                drop(first);
            }
        });
        started.await.map_err(|_| "the first caller did not lead")?;
        let second = waiter(flights.join("k", ticket), "second")?;
        task.abort();
        assert!(matches!(second.wait_unbounded().await, Wait::Abandoned));
        assert!(leader(flights.join("k", ticket), "again")?.recheck);
        Ok(())
    }

    #[tokio::test]
    async fn waits_can_be_bounded() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let _first = leader(flights.join("k", ticket), "first")?;
        let second = waiter(flights.join("k", ticket), "second")?;
        assert!(matches!(
            second.wait(Duration::from_millis(50)).await,
            Wait::TimedOut
        ));
        Ok(())
    }

    #[test]
    fn without_a_runtime_a_bounded_wait_waits_for_the_leader() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let first = leader(flights.join("k", ticket), "first")?;
        let second = waiter(flights.join("k", ticket), "second")?;
        first.guard.publish(1);
        let wait = second.wait(Duration::from_millis(1));
        let answer = ready_now(wait).ok_or("the answer was published: ready at once")?;
        assert!(matches!(answer, Wait::Published(1)));
        Ok(())
    }

    /// Polls a future that is ready without being woken (no runtime needed).
    fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_flight_that_ended_after_the_ticket_makes_the_next_leader_look_again() -> Checked {
        let flights = flights();
        let before = flights.ticket();
        let first = leader(flights.join("k", before), "first")?;
        first.guard.publish(1);
        drop(first.guard);
        // A caller that took its ticket before that flight ended: its lookup may have missed.
        assert!(leader(flights.join("k", before), "late")?.recheck);
        // One that took it after: its lookup came after the store.
        let after = flights.ticket();
        assert!(!leader(flights.join("k", after), "later")?.recheck);
        Ok(())
    }

    #[tokio::test]
    async fn a_detached_flight_answers_its_waiters_while_a_new_caller_leads_another() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let old = leader(flights.join("k:a", ticket), "old leader")?;
        let _other = leader(flights.join("other", ticket), "other key")?;
        let before = waiter(flights.join("k:a", ticket), "joined before")?;
        assert!(!old.guard.is_detached());
        assert_eq!(flights.detach(|key| key.starts_with("k:")), 1);
        assert_eq!(flights.in_flight(), 1, "the other key's flight stays");
        assert!(old.guard.is_detached());
        // Joining after the detach: a new flight, not the old one's answer.
        let new = leader(flights.join("k:a", ticket), "after the detach")?;
        assert!(!new.guard.is_detached() && old.guard.is_detached());
        let after = waiter(flights.join("k:a", ticket), "joined after")?;
        old.guard.publish(1);
        new.guard.publish(2);
        assert!(matches!(before.wait_unbounded().await, Wait::Published(1)));
        assert!(matches!(after.wait_unbounded().await, Wait::Published(2)));
        // The old guard's end leaves the new flight in the table, and counts.
        let ended = flights.ended.load(Ordering::Relaxed);
        drop(old.guard);
        assert_eq!(flights.in_flight(), 2);
        assert_eq!(flights.ended.load(Ordering::Relaxed), ended.wrapping_add(1));
        Ok(())
    }

    #[tokio::test]
    async fn detaching_keys_takes_out_only_their_flights() -> Checked {
        let flights = flights();
        let ticket = flights.ticket();
        let old = leader(flights.join("a", ticket), "old leader")?;
        let _other = leader(flights.join("b", ticket), "other key")?;
        let keys = ["a", "missing"].map(String::from);
        assert_eq!(flights.detach_keys(keys), 1);
        assert_eq!(flights.in_flight(), 1, "the other key's flight stays");
        let _new = leader(flights.join("a", ticket), "after the detach")?;
        drop(old);
        assert_eq!(flights.in_flight(), 2);
        // Nothing in flight: the keys are not even looked at.
        let empty = self::flights();
        let mut looked = false;
        let keys = std::iter::once_with(|| {
            looked = true;
            String::from("a")
        });
        assert_eq!(empty.detach_keys(keys), 0);
        assert!(!looked);
        Ok(())
    }

    #[tokio::test]
    async fn tickets_compare_across_the_counter_wrapping() -> Checked {
        let flights = flights();
        flights.ended.store(u32::MAX, Ordering::Relaxed);
        let before = flights.ticket();
        drop(leader(flights.join("k", before), "first")?);
        assert_eq!(flights.ended.load(Ordering::Relaxed), 0, "wrapped");
        assert!(leader(flights.join("k", before), "late")?.recheck);
        assert!(!leader(flights.join("k", flights.ticket()), "later")?.recheck);
        Ok(())
    }
}
