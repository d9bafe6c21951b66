//! Request coalescing: one handler call per key per process on concurrent misses.
//!
//! The first request to miss a key becomes the *leader* and calls the handler; later ones wait
//! (bounded) for what the leader publishes: the entry when the response was stored, `None`
//! otherwise, and then call the handler themselves. The leader keeps the flight open until its
//! background store has finished, so requests arriving in that window are answered from memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The flights in progress, shared by every service a layer makes.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, (u64, watch::Receiver<Slot>)>>,
    next_id: AtomicU64,
}

/// A request's place in a flight.
#[derive(Debug)]
pub(crate) enum Join {
    Leader(FlightGuard),
    Waiter(Waiter),
}

/// A waiting request.
#[derive(Debug)]
pub(crate) struct Waiter(watch::Receiver<Slot>);

/// The leader's handle. Dropping it (the request was cancelled, the handler failed, the store
/// finished) ends the flight; waiters that have not been answered call the handler themselves.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    id: u64,
    tx: watch::Sender<Slot>,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, watch::Receiver<Slot>)>> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the flight for `key`, starting it when there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = self.lock();
        if let Some((_, rx)) = map.get(key) {
            return Join::Waiter(Waiter(rx.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Slot::Pending);
        map.insert(key.to_owned(), (id, rx));
        Join::Leader(FlightGuard {
            flights: Arc::clone(self),
            key: key.to_owned(),
            id,
            tx,
        })
    }

    /// Number of flights in progress (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl FlightGuard {
    /// Hands the outcome to the waiters (and to requests joining until the guard is dropped).
    pub(crate) fn publish(&self, outcome: Option<Arc<Published>>) {
        self.tx.send_replace(Slot::Done(outcome));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
        drop(map);
        if matches!(*self.tx.borrow(), Slot::Pending) {
            self.tx.send_replace(Slot::Done(None));
        }
    }
}

impl Waiter {
    /// The leader's outcome, or `None` when it published none, was dropped, or took longer than
    /// `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Option<Arc<Published>> {
        let wait = async {
            match self.0.wait_for(|slot| matches!(slot, Slot::Done(_))).await {
                Ok(slot) => match &*slot {
                    Slot::Done(outcome) => outcome.clone(),
                    Slot::Pending => None,
                },
                Err(_) => None,
            }
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // No tokio timer to bound the wait with; the leader's guard still ends it.
            return wait.await;
        }
        tokio::time::timeout(timeout, wait).await.ok().flatten()
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

    fn leader(join: Join, role: &str) -> Result<FlightGuard, String> {
        match join {
            Join::Leader(guard) => Ok(guard),
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
        let guard = leader(flights.join("k"), "first")?;
        let second = waiter(flights.join("k"), "second")?;
        let task = tokio::spawn(second.wait(Duration::from_secs(5)));
        guard.publish(Some(published()));
        let got = task.await.map_err(|e| e.to_string())?;
        assert_eq!(got.map(|p| p.entry.body.clone()), Some(Bytes::from("x")));
        // Still open until the guard is dropped: a late request is answered from memory.
        let late = waiter(flights.join("k"), "late")?;
        assert!(late.wait(Duration::from_secs(5)).await.is_some());
        drop(guard);
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join("k"), Join::Leader(_)));
        Ok(())
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_waiters_with_nothing() -> Outcome {
        let flights = Arc::new(Flights::default());
        let guard = leader(flights.join("k"), "first")?;
        let second = waiter(flights.join("k"), "second")?;
        let task = tokio::spawn(second.wait(Duration::from_secs(5)));
        drop(guard);
        assert!(task.await.map_err(|e| e.to_string())?.is_none());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded() -> Outcome {
        let flights = Arc::new(Flights::default());
        let _guard = leader(flights.join("k"), "first")?;
        let second = waiter(flights.join("k"), "second")?;
        assert!(second.wait(Duration::from_millis(50)).await.is_none());
        Ok(())
    }
}
