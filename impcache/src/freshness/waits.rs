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
//! A load waiting for the lock across processes ([`Lock`](crate::Lock)) that a load of this
//! process holds waits for that load too (`freshness/lock.rs`, `Holding`): a second load of a
//! key, started after a write of it, whose loader's callees call the key back, waited for its
//! first load's lock until the lock's lifetime had passed (found by a regression hunt).
//!
//! Only the load's own task is known: a task the loader spawns and awaits is no part of its
//! load (tokio's task-locals do not reach it), and a cycle through it is not seen.

use std::collections::{HashMap, HashSet};
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

/// The waits of the loads in this process: by waiting load, the loads it waits for now, each
/// with the number of its waits for it (a loader may wait for several at once, and for one more
/// than once).
type Waits = HashMap<Load, HashMap<Load, usize>>;

static WAITS: LazyLock<Mutex<Waits>> = LazyLock::new(Default::default);

/// `task`, running `load`.
pub(super) fn loading<T: Future>(load: Load, task: T) -> impl Future<Output = T::Output> {
    LOADING.scope(load, task)
}

/// The load this task runs, if it runs one.
pub(super) fn current() -> Option<Load> {
    LOADING.try_with(|own| *own).ok()
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
            if let Some(count) = targets.get_mut(&self.to) {
                *count -= 1;
                if *count == 0 {
                    targets.remove(&self.to);
                }
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
    let Some(own) = current() else {
        return Ok(None);
    };
    let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    // Each load reached once: a walk as long as the loads it reaches (a load waiting for 10,000
    // others at once, each of 50 loads waiting for it: one walk of each, not 10,000² steps each
    // under this lock, which stalled the runtime for seconds; found by a probe).
    let mut next = vec![load];
    let mut seen = HashSet::from([load]);
    while let Some(at) = next.pop() {
        if at == own {
            return Err(Cycle);
        }
        let targets = waits.get(&at).into_iter().flat_map(HashMap::keys);
        next.extend(targets.filter(|target| seen.insert(**target)));
    }
    Ok(Some(record(&mut waits, own, load)))
}

/// A wait of this task for `load`, which it starts itself (a task of its own, which it leads
/// or runs without the flight), recorded before that task starts (its loader may wait for this
/// task's load) and whatever else waits: this wait is made in any case. `None` outside a load.
pub(super) fn waiting_for_own(load: Load) -> Option<Edge> {
    let own = current()?;
    let mut waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    Some(record(&mut waits, own, load))
}

fn record(waits: &mut Waits, own: Load, to: Load) -> Edge {
    *waits.entry(own).or_default().entry(to).or_default() += 1;
    Edge { from: own, to }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` as the load `own`.
    async fn as_load<R>(own: Load, f: impl FnOnce() -> R) -> R {
        loading(own, async move { f() }).await
    }

    #[tokio::test]
    async fn a_wait_is_refused_only_when_it_leads_back_to_the_waiting_load() {
        let (root, waiter) = (Load::alone(), Load::alone());
        let leaves: Vec<Load> = (0..1000).map(|_| Load::alone()).collect();
        // The root waits for 1,000 leaves, twice for the first (each wait kept while it lasts).
        let mut edges = as_load(root, || {
            let mut edges: Vec<_> = leaves.iter().map(|leaf| wait_for(*leaf)).collect();
            edges.push(wait_for(leaves[0]));
            edges
        })
        .await;
        assert!(edges.iter().all(|edge| matches!(edge, Ok(Some(_)))));
        // Another load may wait for the root (a wide wait, no cycle), but a leaf may not.
        let to_root = as_load(waiter, || wait_for(root)).await;
        assert!(matches!(to_root, Ok(Some(_))));
        assert!(as_load(leaves[0], || wait_for(root)).await.is_err());
        assert!(as_load(leaves[0], || wait_for(waiter)).await.is_err());
        // One of the root's two waits for the first leaf ends: the other still leads back.
        drop(edges.pop());
        assert!(as_load(leaves[0], || wait_for(waiter)).await.is_err());
        drop(edges);
        assert!(matches!(
            as_load(leaves[0], || wait_for(waiter)).await,
            Ok(Some(_))
        ));
        drop(to_root);
        // Outside a load, nothing is recorded.
        assert!(matches!(wait_for(root), Ok(None)));
        let waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!waits.contains_key(&root) && !waits.contains_key(&waiter));
    }
}
