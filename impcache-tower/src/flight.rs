//! Request coalescing: one handler call per key per process, across the store boundary.
//!
//! The first request to miss a key becomes the *leader* and calls the handler; later ones wait
//! (bounded) for what the leader publishes: the entry when the response is stored, "not
//! shareable" otherwise (they then call the handler themselves). The leader keeps the flight open
//! until its background store has finished, so requests joining in that window are answered from
//! memory.
//!
//! **Read your own writes.** A request takes a [`Ticket`] (the count of flights ended so far)
//! *before* its lookup, and joins the flight only after the lookup missed. A flight of the key
//! that ended in between (its store finished, so the lookup may have overtaken the write) shows
//! against the ticket: the new leader then looks again ([`Leader::recheck`]) before calling the
//! handler. A flight that ended before the ticket was taken had finished its store before the
//! lookup was sent, so the lookup sees it (when the store succeeded). Taking a ticket is one
//! atomic load: hits pay next to nothing for it.
//!
//! **A leader that goes away** (its client disconnected, it panicked, the body was dropped
//! mid-way) publishes nothing: its waiters look in the cache again and the first of them to
//! join leads the next flight, the others wait for it (as `#[cached]` does).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderName;
use tokio::sync::watch;

use crate::entry::Entry;

/// What a leader hands to its waiters.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) entry: Entry,
    /// The Vary header names of the stored response.
    pub(crate) vary: Vec<HeaderName>,
    /// The variant key the entry was stored under.
    pub(crate) variant_key: String,
}

#[derive(Debug, Clone)]
enum Slot {
    Pending,
    Done(Option<Arc<Published>>),
}

/// How many groups of keys remember when a flight of theirs last ended: keys share one by hash,
/// so a flight ending rarely makes an unrelated miss look again.
const SHARDS: usize = 64;

/// The flights in progress, shared by every service a layer makes.
#[derive(Debug)]
pub(crate) struct Flights {
    table: Mutex<Table>,
    next_id: AtomicU64,
    /// Flights ended so far (wrapping); incremented with the table locked.
    ended: AtomicU32,
    hasher: RandomState,
}

#[derive(Debug)]
struct Table {
    flights: HashMap<String, (u64, watch::Receiver<Slot>)>,
    /// Per shard of keys, the `ended` count of its last flight to end.
    last_end: [u32; SHARDS],
}

impl Default for Flights {
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

/// The count of ended flights, taken before a lookup. 32 bits, compared in wrapping order: the
/// request's future holds it across the lookup, and 4 bytes fit where 8 grew it (`hit_cost
/// memory`: a hit cost 222 instructions more than without tickets with 8 bytes, 78 with 4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u32);

/// A request's place in a flight.
#[derive(Debug)]
pub(crate) enum Join {
    Leader(Leader),
    Waiter(Waiter),
}

/// A new leader: `recheck` when a flight of the key ended after the request's ticket was taken
/// (its lookup may have overtaken that flight's store: look again before calling the handler).
#[derive(Debug)]
pub(crate) struct Leader {
    pub(crate) guard: FlightGuard,
    pub(crate) recheck: bool,
}

/// A waiting request.
#[derive(Debug)]
pub(crate) struct Waiter(watch::Receiver<Slot>);

/// What a waiter learned.
#[derive(Debug)]
pub(crate) enum Wait {
    /// The leader's stored (or being stored) response.
    Published(Arc<Published>),
    /// The leader's response is not shareable (uncacheable, too large, failed): call the handler.
    NotShared,
    /// The leader went away without an answer (cancelled, panicked, its body dropped mid-way):
    /// look again, and elect a new leader.
    Abandoned,
    /// The leader took longer than the lock timeout: call the handler.
    TimedOut,
}

/// The leader's handle. Publishing answers the waiters; dropping it ends the flight (after the
/// store, or when the request was cancelled, which leaves the waiters [`Wait::Abandoned`]).
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    id: u64,
    tx: watch::Sender<Slot>,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock leaves the table consistent (single inserts/removes).
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn shard(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }

    /// Takes a ticket, before a lookup.
    pub(crate) fn ticket(&self) -> Ticket {
        // Acquire pairs with the release of `FlightGuard::drop`: the flights counted here have
        // finished their stores before this request's lookup starts.
        Ticket(self.ended.load(Ordering::Acquire))
    }

    /// Joins the flight for `key`, starting it when there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str, ticket: Ticket) -> Join {
        let mut table = self.lock();
        if let Some((_, rx)) = table.flights.get(key) {
            return Join::Waiter(Waiter(rx.clone()));
        }
        // Under the lock, which every flight's end takes: none ends unseen between the two.
        // In wrapping order: an end less than 2^31 ends after the ticket is after it (a lookup
        // that took longer than 2^31 flights is not a case to serve).
        let since_ticket = table.last_end[self.shard(key)].wrapping_sub(ticket.0);
        let recheck = since_ticket != 0 && since_ticket < 1 << 31;
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

    /// Number of flights in progress (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().flights.len()
    }
}

impl FlightGuard {
    /// Hands the stored response to the waiters (and to requests joining until the guard is
    /// dropped, after the store).
    pub(crate) fn publish(&self, published: Arc<Published>) {
        self.tx.send_replace(Slot::Done(Some(published)));
    }

    /// Tells the waiters the response is not shareable, and ends the flight.
    pub(crate) fn not_shared(self) {
        self.tx.send_replace(Slot::Done(None));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut table = self.flights.lock();
        if table
            .flights
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            table.flights.remove(&self.key);
            // Release: the store this guard waited for happens before the lookup of a request
            // whose ticket counts this end.
            let ended = self
                .flights
                .ended
                .fetch_add(1, Ordering::Release)
                .wrapping_add(1);
            let shard = self.flights.shard(&self.key);
            table.last_end[shard] = ended;
        }
        // Waiters still pending see the channel close: `Wait::Abandoned`.
    }
}

impl Waiter {
    /// The leader's answer, waiting at most `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Wait {
        let wait = async {
            match self.0.wait_for(|slot| matches!(slot, Slot::Done(_))).await {
                Ok(slot) => match &*slot {
                    Slot::Done(Some(published)) => Wait::Published(Arc::clone(published)),
                    Slot::Done(None) | Slot::Pending => Wait::NotShared,
                },
                // Closed while pending: the leader was dropped without an answer.
                Err(_) => Wait::Abandoned,
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // No tokio timer to bound the wait with; the leader's guard still ends it.
            return wait.await;
        }
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Wait::TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    /// A test's failure, as a message (the tests return it instead of panicking).
    type Outcome = Result<(), String>;

    fn published() -> Arc<Published> {
        Arc::new(Published {
            entry: Entry {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"x"),
                stored_at_ms: 0,
                ttl: None,
            },
            vary: Vec::new(),
            variant_key: "k:v".to_owned(),
        })
    }

    fn leader(join: Join, role: &str) -> Result<Leader, String> {
        match join {
            Join::Leader(leader) => Ok(leader),
            Join::Waiter(_) => Err(format!("{role}: expected to lead, got to wait")),
        }
    }

    fn waiter(join: Join, role: &str) -> Result<Waiter, String> {
        match join {
            Join::Waiter(waiter) => Ok(waiter),
            Join::Leader(_) => Err(format!("{role}: expected to wait, got to lead")),
        }
    }

    #[tokio::test]
    async fn waiters_get_the_published_entry_and_the_flight_ends_on_drop() -> Outcome {
        let flights = Arc::new(Flights::default());
        let ticket = flights.ticket();
        let first = leader(flights.join("k", ticket), "first")?;
        assert!(!first.recheck);
        let second = waiter(flights.join("k", ticket), "second")?;
        let task = tokio::spawn(second.wait(Duration::from_secs(5)));
        first.guard.publish(published());
        match task.await.map_err(|e| e.to_string())? {
            Wait::Published(p) => assert_eq!(p.entry.body, Bytes::from("x")),
            other => return Err(format!("second: {other:?}")),
        }
        // Still open until the guard is dropped: a late request is answered from memory.
        let late = waiter(flights.join("k", ticket), "late")?;
        assert!(matches!(
            late.wait(Duration::from_secs(5)).await,
            Wait::Published(_)
        ));
        drop(first.guard);
        assert_eq!(flights.len(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_flight_that_ended_after_the_ticket_makes_the_next_leader_look_again() -> Outcome {
        let flights = Arc::new(Flights::default());
        let before = flights.ticket();
        let first = leader(flights.join("k", before), "first")?;
        first.guard.publish(published());
        drop(first.guard);
        // A request that took its ticket before that flight ended: its lookup may have missed.
        assert!(leader(flights.join("k", before), "late")?.recheck);
        // One that took it after: its lookup came after the store.
        let after = flights.ticket();
        assert!(!leader(flights.join("k", after), "later")?.recheck);
        Ok(())
    }

    #[tokio::test]
    async fn tickets_compare_across_the_counter_wrapping() -> Outcome {
        let flights = Arc::new(Flights::default());
        flights.ended.store(u32::MAX, Ordering::Relaxed);
        let before = flights.ticket();
        drop(leader(flights.join("k", before), "first")?);
        assert_eq!(flights.ended.load(Ordering::Relaxed), 0, "wrapped");
        assert!(leader(flights.join("k", before), "late")?.recheck);
        assert!(!leader(flights.join("k", flights.ticket()), "later")?.recheck);
        Ok(())
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_and_not_shared_releases() -> Outcome {
        let flights = Arc::new(Flights::default());
        let ticket = flights.ticket();
        let first = leader(flights.join("k", ticket), "first")?;
        let second = waiter(flights.join("k", ticket), "second")?;
        let task = tokio::spawn(second.wait(Duration::from_secs(5)));
        drop(first);
        assert!(matches!(
            task.await.map_err(|e| e.to_string())?,
            Wait::Abandoned
        ));
        let again = leader(flights.join("k", flights.ticket()), "again")?;
        let third = waiter(flights.join("k", ticket), "third")?;
        again.guard.not_shared();
        assert!(matches!(
            third.wait(Duration::from_secs(5)).await,
            Wait::NotShared
        ));
        assert_eq!(flights.len(), 0);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded() -> Outcome {
        let flights = Arc::new(Flights::default());
        let ticket = flights.ticket();
        let _first = leader(flights.join("k", ticket), "first")?;
        let second = waiter(flights.join("k", ticket), "second")?;
        assert!(matches!(
            second.wait(Duration::from_millis(50)).await,
            Wait::TimedOut
        ));
        Ok(())
    }
}
