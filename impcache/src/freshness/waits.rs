//! Which loads wait for which, so that a wait that would close a cycle is not made.
//!
//! A load's task runs its loader; the loader may call `get_or_set` of other keys and wait for
//! their loads (leading one and awaiting its task, or joining another caller's flight). When
//! the chain of waits leads back to the load itself (a loader calling its own key; a → b → a;
//! two callers entering a → b and b → a at once; a loader waiting for the background reload it
//! started, whose loader calls it back), every load in the cycle waits for ever, and holds its
//! key's flight for every caller of the process. So each load's task knows its own flight
//! ([`LOADING`]), each wait of a load is recorded as an edge while it lasts ([`Edge`]), and a
//! wait whose target leads back to the waiting load along the recorded edges is refused
//! ([`wait_for`]): that call runs its loader without the single flight instead, as the code
//! would run without a cache (found by probes, 2026-12-07). Waits end when they are answered
//! (a soft timeout, a caller's own timeout), and their edges with them, so a load that goes on
//! after its caller stopped waiting is waited for as any other.
//!
//! Only the load's own task is known: a task the loader spawns and awaits is no part of its
//! load (tokio's task-locals do not reach it), and a cycle through it is not seen.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex, PoisonError};

use super::job::FlightKey;

tokio::task_local! {
    /// The flight whose load this task runs (a leader's load, a background reload, or a load
    /// made without the flight, by its key's flight).
    static LOADING: FlightKey;
}

/// The waits of the loads in this process: by the flight of the waiting load, the flights it
/// waits for now (a loader may wait for several at once).
static WAITS: LazyLock<Mutex<HashMap<FlightKey, Vec<FlightKey>>>> = LazyLock::new(Default::default);

/// `task`, the load of `flight`.
pub(super) fn loading<T: Future>(flight: FlightKey, task: T) -> impl Future<Output = T::Output> {
    LOADING.scope(flight, task)
}

/// A wait of one load for another, recorded until dropped.
pub(super) struct Edge {
    from: FlightKey,
    to: FlightKey,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(targets) = waits.get_mut(&self.from) {
            if let Some(at) = targets.iter().position(|target| *target == self.to) {
                targets.swap_remove(at);
            }
            if targets.is_empty() {
                waits.remove(&self.from);
            }
        }
    }
}

/// The wait that would close a cycle of loads (see the module's docs).
#[derive(Debug)]
pub(super) struct Cycle;

/// A wait of this task for `flight`: `Ok(None)` outside a load (no load waits for it: it is no
/// part of any cycle), `Ok(Some(edge))` while the wait lasts, `Err(Cycle)` when `flight` leads
/// back to this task's load along the recorded waits. Checked and recorded under one lock, so
/// that of two loads starting to wait for each other at once, the second sees the cycle.
pub(super) fn wait_for(flight: &FlightKey) -> Result<Option<Edge>, Cycle> {
    let Ok(own) = LOADING.try_with(Clone::clone) else {
        return Ok(None);
    };
    let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut next = vec![flight];
    let mut seen = Vec::new();
    while let Some(at) = next.pop() {
        if *at == own {
            return Err(Cycle);
        }
        if seen.contains(&at) {
            continue;
        }
        seen.push(at);
        next.extend(waits.get(at).into_iter().flatten());
    }
    Ok(Some(record(&mut waits, own, flight)))
}

/// A wait of this task for the load of `flight` that it starts itself (a task of its own, which
/// it leads or runs without the flight), recorded before that task starts (its loader may wait
/// for this task's load) and whatever else waits: this wait is made in any case. `None`
/// outside a load.
pub(super) fn waiting_for_own(flight: &FlightKey) -> Option<Edge> {
    let own = LOADING.try_with(Clone::clone).ok()?;
    let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    Some(record(&mut waits, own, flight))
}

fn record(waits: &mut HashMap<FlightKey, Vec<FlightKey>>, own: FlightKey, to: &FlightKey) -> Edge {
    waits.entry(own.clone()).or_default().push(to.clone());
    Edge {
        from: own,
        to: to.clone(),
    }
}
