//! Which loads wait for which, so that a wait that would close a cycle is not made.
//!
//! A load's task runs its loader; the loader may call `get_or_set` of other keys and wait for
//! their loads (leading one and awaiting its task, or joining another caller's flight). When
//! the chain of waits leads back to the load itself (a loader calling its own key; a → b → a;
//! two callers entering a → b and b → a at once; a loader waiting for the background reload it
//! started, whose loader calls it back), every load in the cycle waits for ever, and holds its
//! key's flight for every caller of the process. So each load's task knows its own load
//! ([`LOADING`]), each wait of a load is recorded as an edge while it lasts ([`Edge`]), and a
//! wait whose target leads back to the waiting load along the recorded edges is refused
//! ([`wait_for`]): that call runs its loader without the single flight instead, as the code
//! would run without a cache (found by probes, 2026-12-07). Waits end when they are answered
//! (a soft timeout, a caller's own timeout), and their edges with them, so a load that goes on
//! after its caller stopped waiting is waited for as any other.
//!
//! A load is known by its flight's id, not by its key: a write of a key during its load starts
//! another flight of the key for later callers, and a wait for that one is no wait for the first
//! (with keys for loads, a wait leading to the first load of a key was taken for a cycle by its
//! second, whose call then ran its loader a second time).
//!
//! Only the load's own task is known: a task the loader spawns and awaits is no part of its
//! load (tokio's task-locals do not reach it), and a cycle through it is not seen.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

/// One load: a flight's (by the flight's id, [`Waiter::flight`](crate::flight::Waiter::flight)),
/// or one made without the flight (by an id of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Load {
    Flight(u64),
    Alone(u64),
}

impl Load {
    /// A new load made without the flight.
    pub(super) fn alone() -> Load {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Load::Alone(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

tokio::task_local! {
    /// The load this task runs (a leader's load, a background reload, or a load made without
    /// the flight).
    static LOADING: Load;
}

/// The waits of the loads in this process: by waiting load, the loads it waits for now (a
/// loader may wait for several at once).
static WAITS: LazyLock<Mutex<HashMap<Load, Vec<Load>>>> = LazyLock::new(Default::default);

/// `task`, running `load`.
pub(super) fn loading<T: Future>(load: Load, task: T) -> impl Future<Output = T::Output> {
    LOADING.scope(load, task)
}

/// A wait of one load for another, recorded until dropped.
pub(super) struct Edge {
    from: Load,
    to: Load,
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

/// A wait of this task for `load`: `Ok(None)` outside a load (no load waits for it: it is no
/// part of any cycle), `Ok(Some(edge))` while the wait lasts, `Err(Cycle)` when `load` leads
/// back to this task's load along the recorded waits. Checked and recorded under one lock, so
/// that of two loads starting to wait for each other at once, the second sees the cycle.
pub(super) fn wait_for(load: Load) -> Result<Option<Edge>, Cycle> {
    let Ok(own) = LOADING.try_with(|own| *own) else {
        return Ok(None);
    };
    let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut next = vec![load];
    let mut seen = Vec::new();
    while let Some(at) = next.pop() {
        if at == own {
            return Err(Cycle);
        }
        if seen.contains(&at) {
            continue;
        }
        seen.push(at);
        next.extend(waits.get(&at).into_iter().flatten());
    }
    Ok(Some(record(&mut waits, own, load)))
}

/// A wait of this task for `load`, which it starts itself (a task of its own, which it leads
/// or runs without the flight), recorded before that task starts (its loader may wait for this
/// task's load) and whatever else waits: this wait is made in any case. `None` outside a load.
pub(super) fn waiting_for_own(load: Load) -> Option<Edge> {
    let own = LOADING.try_with(|own| *own).ok()?;
    let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    Some(record(&mut waits, own, load))
}

fn record(waits: &mut HashMap<Load, Vec<Load>>, own: Load, to: Load) -> Edge {
    waits.entry(own).or_default().push(to);
    Edge { from: own, to }
}
