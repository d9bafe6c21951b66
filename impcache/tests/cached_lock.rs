//! `#[cached(lock = ...)]`: one run of the body per key across processes. Each "process" is a
//! `Cache` of its own (its own single-flight) over one in-memory store; the lock is the same
//! mechanism as on Redis (`SET NX PX` of `{prefix}:{version}:__lock:{key}`, compare-and-delete),
//! which `tests/lock.rs` of the harness runs on Redis and Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use impcache::{cached, Cache, CacheRepository, MemoryCacheRepository};
use tokio::sync::Semaphore;

mod block_on;
use block_on::block_on;

const HANG: Duration = Duration::from_secs(10);

static RUNS: AtomicUsize = AtomicUsize::new(0);
/// Holds the body until every caller has started.
static GATE: Semaphore = Semaphore::const_new(0);

#[cached(cache = process, expire = 60, skip(process), lock = 10)]
async fn locked(process: Cache, id: u32) -> String {
    let run = RUNS.fetch_add(1, SeqCst);
    let _permit = GATE.acquire().await.unwrap();
    format!("{id}:{run}")
}

/// The default lock: `lock` alone (and `lock = false` is no lock).
#[cached(cache = process, expire = 60, skip(process), lock)]
async fn locked_by_default(process: Cache, id: u32) -> u32 {
    id
}

#[cached(cache = process, expire = 60, skip(process), lock = false)]
async fn not_locked(process: Cache, id: u32) -> u32 {
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_run_the_body_once() {
    let store = MemoryCacheRepository::new();
    let processes: Vec<Cache> = (0..4)
        .map(|_| {
            let repository: Arc<dyn CacheRepository> = Arc::new(store.clone());
            Cache::builder_shared(repository).build()
        })
        .collect();
    let callers: Vec<_> = processes
        .iter()
        .flat_map(|process| (0..50).map(|_| tokio::spawn(locked(process.clone(), 7))))
        .collect();
    while RUNS.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The lock of the key, at `{prefix}:{version}:__lock:{key}`.
    let lock = processes[0].make_key("__lock:cached_lock::locked:7");
    assert!(store.get(&lock).await.unwrap().is_some(), "{lock}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    GATE.add_permits(1_000);
    for caller in callers {
        let got = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        assert_eq!(got, "7:0");
    }
    assert_eq!(RUNS.load(SeqCst), 1);
    assert_eq!(
        processes[3].get_raw("cached_lock::locked:7").await.unwrap(),
        Some("\"7:0\"".into())
    );
    assert_eq!(locked_by_default(processes[1].clone(), 3).await, 3);
    assert_eq!(not_locked(processes[1].clone(), 4).await, 4);
}

/// Outside a tokio runtime, a lock held elsewhere does not make the call wait (nor panic for
/// want of a timer): the body runs without the lock.
#[test]
fn outside_a_tokio_runtime_the_body_runs_without_the_lock() {
    let process = Cache::new(MemoryCacheRepository::new());
    let lock = process.make_key("__lock:cached_lock::locked_by_default:9");
    block_on(process.repository().set_nx(
        &lock,
        "another process".into(),
        impcache::Expiry::Seconds(60),
    ))
    .unwrap();
    assert_eq!(block_on(locked_by_default(process, 9)), 9);
}

static TOO_SHORT_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A lifetime under 1 ms, which the macro cannot see at compile time.
#[cached(cache = process, expire = 60, skip(process), lock = Duration::from_micros(500))]
async fn locked_too_briefly(process: Cache, id: u32) -> u32 {
    TOO_SHORT_RUNS.fetch_add(1, SeqCst);
    id
}

/// A lock the cache refuses (a lifetime under 1 ms) runs the body uncached, as any invalid
/// option does: the caller gets its value, not a panic.
#[tokio::test]
async fn a_lock_shorter_than_a_millisecond_runs_the_body_uncached() {
    let process = Cache::new(MemoryCacheRepository::new());
    assert_eq!(locked_too_briefly(process.clone(), 5).await, 5);
    assert_eq!(locked_too_briefly(process.clone(), 5).await, 5);
    assert_eq!(TOO_SHORT_RUNS.load(SeqCst), 2);
    assert_eq!(
        process
            .get_raw("cached_lock::locked_too_briefly:5")
            .await
            .unwrap(),
        None
    );
}
