//! `Freshness::lock`: one loader run per key across processes. Each "process" is an
//! independent `Cache` over its own repository (its own connections, its own single-flight),
//! sharing the store: one `redis-server` started by `tests/support`, the memory repository's
//! store, or (feature `cluster`) the shared Redis Cluster. `per_store!` instantiates each
//! `async fn(Store)` once per store.
//!
//! No timing assertions but one generous bound far below a lock's lifetime (a lost release is
//! retried): the loader is held at a gate while the others wait, and a killed owner is a tokio
//! runtime shut down with its task mid-load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impcache::{Cache, Error, Freshness, Lock, MemoryCacheRepository, RedisCacheRepository};
use impcache_tests::loader::until_stored;
use impcache_tests::per_store;
use impcache_tests::store::Store;
use tokio::sync::{oneshot, Semaphore};

const HANG: Duration = Duration::from_secs(30);
const PROCESSES: usize = 4;
const CALLERS: usize = 50;

per_store!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    make: std::convert::identity,
    prefix: "lock",
    deadline: HANG;
    four_processes_of_fifty_callers_run_the_loader_once,
    a_killed_owner_is_taken_over_after_the_lock_lifetime,
    a_killed_owner_is_taken_over_once_with_the_default_wait,
    a_killed_owner_is_taken_over_for_callers_with_a_shorter_hard_timeout,
    a_tag_invalidated_during_the_wait_hides_only_the_older_value,
    a_failing_owner_lets_the_next_process_load,
    the_callers_of_a_failed_owner_share_its_error_and_the_next_process_loads,
    a_stale_key_is_reloaded_in_the_background_by_one_process,
    a_value_of_an_older_type_is_reloaded_once_across_processes,
    an_early_refresh_under_the_lock_reloads,
    a_lock_left_by_a_runtime_shut_down_is_taken_over_at_once_by_its_process,
);

/// `CALLERS` concurrent `get_or_set` calls of `key` on `cache`, each with `loader()`.
fn callers<L, Fut>(
    cache: &Cache,
    key: &'static str,
    policy: Freshness,
    loader: L,
) -> Vec<tokio::task::JoinHandle<String>>
where
    L: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    (0..CALLERS)
        .map(|_| {
            let (cache, loader) = (cache.clone(), loader.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set(key, 60, loader)
                    .freshness(policy)
                    .await
                    .unwrap()
            })
        })
        .collect()
}

/// Waits until the lock of `k` is gone.
async fn released(cache: &Cache) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while cache.get_raw("__lock:k").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the lock is released");
}

async fn answers(handles: Vec<tokio::task::JoinHandle<String>>) -> Vec<String> {
    let mut all = Vec::new();
    for handle in handles {
        all.push(tokio::time::timeout(HANG, handle).await.unwrap().unwrap());
    }
    all
}

/// 4 processes × 50 concurrent callers of a missing key: the loader runs once, and everyone
/// gets its value.
async fn four_processes_of_fifty_callers_run_the_loader_once(store: Store) {
    let processes = store.processes(PROCESSES);
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    let loader = {
        let (runs, gate) = (Arc::clone(&runs), Arc::clone(&gate));
        move || {
            let (runs, gate) = (Arc::clone(&runs), Arc::clone(&gate));
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.unwrap();
                "loaded".to_owned()
            }
        }
    };
    let mut handles = Vec::new();
    for cache in &processes {
        handles.extend(callers(cache, "k", policy, loader.clone()));
    }
    // Held at the gate until one loader has started and every process has had time to find
    // the lock taken and wait (waiting longer only makes the wait longer, never a second run).
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.add_permits(1_000);
    let all = answers(handles).await;
    assert_eq!(all.len(), PROCESSES * CALLERS);
    assert!(all.iter().all(|got| got == "loaded"), "{all:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one loader run across processes"
    );
    // Released by its owner after the store (which follows the answers).
    released(&processes[0]).await;
}

/// The owner's process dies mid-load (its runtime shut down: nothing is released). Its lock
/// stays until its lifetime ends; then one of the other processes takes over and loads.
async fn a_killed_owner_is_taken_over_after_the_lock_lifetime(store: Store) {
    let lifetime = Duration::from_secs(1);
    let policy = Freshness::new().lock(Lock::new().lifetime(lifetime).wait(HANG));
    killed_owner(store, policy).await;
}

/// The same with a hard timeout shorter than what is left of the dead owner's lock: each
/// process's waiting callers wait for their leader, which waits for the lock (the lock's `wait`
/// comes on top of the hard timeout), and get the value it loads. They gave up at their hard
/// timeout before, without a loader run ("timed out after 0ns").
async fn a_killed_owner_is_taken_over_for_callers_with_a_shorter_hard_timeout(store: Store) {
    let lock = Lock::new().lifetime(Duration::from_millis(1500)).wait(HANG);
    let policy = Freshness::new()
        .lock(lock)
        .hard_timeout(Duration::from_secs(1));
    killed_owner(store, policy).await;
}

/// The same with the lock's default wait (twice its lifetime): the waiters that started as the
/// owner took its lock are still waiting when it expires, so one takes it over and the others
/// wait for its value. (With a wait equal to the lifetime they gave up as it expired, and all
/// loaded.)
async fn a_killed_owner_is_taken_over_once_with_the_default_wait(store: Store) {
    let lock = Lock::new().lifetime(Duration::from_secs(1));
    assert_eq!(lock.wait_duration(), Duration::from_secs(2));
    killed_owner(store, Freshness::new().lock(lock)).await;
}

/// The same process, in another runtime: a `Cache` whose locked load was cut short by its
/// runtime's shutdown (a `static` cache used by successive `#[tokio::test]`s, say) releases and
/// takes that lock at its next call of the key, instead of waiting out the lock's lifetime (an
/// hour here; 10 s by default, found by a probe) as another process must.
async fn a_lock_left_by_a_runtime_shut_down_is_taken_over_at_once_by_its_process(store: Store) {
    let policy = Freshness::new().lock(Lock::new().lifetime(Duration::from_secs(3600)));
    let cache = store.cache();
    dies_mid_load(cache.clone(), policy).await;
    assert!(cache.get_raw("__lock:k").await.unwrap().is_some());
    let next = cache
        .get_or_set("k", 60, || async { "next".to_owned() })
        .freshness(policy);
    let next = tokio::time::timeout(HANG, next.into_future()).await;
    assert_eq!(next.expect("not held up by the lock").unwrap(), "next");
    // Its own lock this time, released after the store.
    released(&cache).await;
}

/// `owner` loads `k` under `policy` in a runtime of its own, which is shut down once the loader
/// runs: nothing is released.
async fn dies_mid_load(owner: Cache, policy: Freshness) {
    let owner_runtime = impcache_tests::multi_thread_runtime();
    let (started, loading) = oneshot::channel::<()>();
    let started = std::sync::Mutex::new(Some(started));
    let started = Arc::new(started);
    owner_runtime.spawn(async move {
        let _ = owner
            .get_or_set("k", 60, move || async move {
                if let Some(started) = started.lock().unwrap().take() {
                    let _ = started.send(());
                }
                std::future::pending::<String>().await
            })
            .freshness(policy)
            .await;
    });
    tokio::time::timeout(HANG, loading).await.unwrap().unwrap();
    owner_runtime.shutdown_background();
}

async fn killed_owner(store: Store, policy: Freshness) {
    dies_mid_load(store.cache(), policy).await;

    let processes = store.processes(PROCESSES - 1);
    // The dead owner's lock, at `{prefix}:{version}:__lock:{key}`.
    let token = processes[0].get_raw("__lock:k").await.unwrap();
    assert!(token.is_some(), "the dead owner's lock is still there");
    if let Some(server) = store.server() {
        assert!(server.keys().contains(&processes[0].make_key("__lock:k")));
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let loader = {
        let runs = Arc::clone(&runs);
        move || {
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                "taken over".to_owned()
            }
        }
    };
    let mut handles = Vec::new();
    for cache in &processes {
        handles.extend(callers(cache, "k", policy, loader.clone()));
    }
    let all = answers(handles).await;
    assert!(all.iter().all(|got| got == "taken over"), "{all:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one process took over");
}

/// A tag invalidated while one process loads under the lock and another waits for it: the
/// first value (its loader started before the invalidation) is hidden; the waiting process takes
/// the lock and loads once for all its callers, and its value (loaded after the invalidation)
/// is a hit for everyone. Its creation time was taken before its wait for the lock, so it was
/// hidden too, and each of its callers loaded on its own: 10 runs for 10 callers.
async fn a_tag_invalidated_during_the_wait_hides_only_the_older_value(store: Store) {
    let processes = store.processes(3);
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let loader = |cache: &Cache| {
        let (cache, runs, gate) = (cache.clone(), Arc::clone(&runs), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .get_or_set("k", 60, move || async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    if run == 0 {
                        let _permit = gate.acquire().await.unwrap();
                    }
                    format!("run {run}")
                })
                .tags(["t"])
                .freshness(policy)
                .await
                .unwrap()
        })
    };
    let owner = loader(&processes[0]);
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiting: Vec<_> = (0..10).map(|_| loader(&processes[1])).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    processes[2].invalidate_tag("t").await.unwrap();
    gate.add_permits(1);
    assert_eq!(owner.await.unwrap(), "run 0");
    let answers = answers(waiting).await;
    assert!(answers.iter().all(|got| got == "run 1"), "{answers:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Stored after the invalidation: a hit in every process.
    for cache in &processes {
        assert_eq!(loader(cache).await.unwrap(), "run 1");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// An owner whose loader fails releases its lock at once: errors are never shared, the next
/// process takes the lock and runs its own loader.
async fn a_failing_owner_lets_the_next_process_load(store: Store) {
    let processes = store.processes(2);
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    let failed: Result<String, Error> = processes[0]
        .try_get_or_set("k", 60, || async {
            Err(Error::Loader {
                key: "k".into(),
                reason: "the origin is down".into(),
            })
        })
        .freshness(policy)
        .await;
    assert!(failed.is_err());
    // Released after the answer, long before its lifetime (10 s) ends.
    released(&processes[0]).await;
    let got: String = tokio::time::timeout(
        HANG,
        processes[1]
            .get_or_set("k", 60, || async { "second".to_owned() })
            .freshness(policy)
            .into_future(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got, "second");
}

/// Under the lock, the callers of a process whose load failed do not run the loader (moka's
/// `try_get_with`): they get an error naming the failure; the owner releases the lock at once,
/// and the other process loads, once, for all its callers. Two processes of ten callers: the
/// failure, then one run. (The failed owner's callers used to take the next turns one at a time,
/// through the lock: each waiter a loader run when every run fails.)
async fn the_callers_of_a_failed_owner_share_its_error_and_the_next_process_loads(store: Store) {
    let processes = store.processes(2);
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    let runs = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for cache in &processes {
        for _ in 0..10 {
            let cache = cache.clone();
            let (runs, running, most) = (runs.clone(), running.clone(), most_at_once.clone());
            handles.push(tokio::spawn(async move {
                cache
                    .try_get_or_set("k", 60, move || async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(
                            running.fetch_add(1, Ordering::SeqCst) + 1,
                            Ordering::SeqCst,
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        if run == 1 {
                            Err(Error::Loader {
                                key: "k".into(),
                                reason: "the origin is down".into(),
                            })
                        } else {
                            Ok(format!("run {run}"))
                        }
                    })
                    .freshness(policy)
                    .await
            }));
        }
    }
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(tokio::time::timeout(HANG, handle).await.unwrap().unwrap());
    }
    // One process's callers all fail (its owner's own error, and the others' naming it), the
    // other's all get the next run's value.
    let (first, second) = answers.split_at(10);
    let (failed, loaded) = match first[0] {
        Err(_) => (first, second),
        Ok(_) => (second, first),
    };
    assert!(
        loaded
            .iter()
            .all(|answer| matches!(answer, Ok(value) if value == "run 2")),
        "{answers:?}"
    );
    let shared = failed
        .iter()
        .filter(|answer| matches!(answer, Err(Error::Loader { key, reason }) if key == "k" && reason.starts_with("not run: another caller's load of the key failed")))
        .count();
    assert_eq!(shared, 9, "{answers:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the failure, then one run");
    assert_eq!(most_at_once.load(Ordering::SeqCst), 1, "never two at once");
}

/// Stale-while-revalidate under a lock: the first process's background reload holds the lock;
/// the second process's stale read is answered at once too, and its reload finds the lock
/// taken and skips (or, once the lock is released, finds the new value): one reload in all.
async fn a_stale_key_is_reloaded_in_the_background_by_one_process(store: Store) {
    let processes = store.processes(2);
    let short = Duration::from_millis(100);
    let policy = Freshness::new()
        .stale_while_revalidate(Duration::from_secs(60))
        .lock(Lock::new().wait(HANG));
    let old: String = processes[0]
        .get_or_set("k", short, || async { "old".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(old, "old");
    holds(&processes[0], "\"old\"").await;
    tokio::time::sleep(2 * short).await;

    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let loader = {
        let (runs, gate) = (Arc::clone(&runs), Arc::clone(&gate));
        move || {
            let (runs, gate) = (Arc::clone(&runs), Arc::clone(&gate));
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.unwrap();
                "new".to_owned()
            }
        }
    };
    for process in &processes {
        let got: String = tokio::time::timeout(
            HANG,
            process
                .get_or_set("k", short, loader.clone())
                .freshness(policy)
                .into_future(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, "old", "a stale read is answered at once");
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.add_permits(1_000);
    holds(&processes[1], "\"new\"").await;
    released(&processes[0]).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one background reload");
}

/// Waits until `k` holds the JSON `json`.
async fn holds(cache: &Cache, json: &str) {
    tokio::time::timeout(HANG, async {
        while cache.get_raw("k").await.unwrap().as_deref() != Some(json.as_bytes()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("k never held {json}"));
}

/// With Redis down, every process fails open at once: each call is answered by its loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_every_process_fails_open() {
    let processes: Vec<Cache> = (0..PROCESSES)
        .map(|_| {
            Cache::new(
                RedisCacheRepository::builder(impcache_tests::NO_SERVER_URL)
                    .deadline(Duration::from_millis(200))
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let runs = Arc::new(AtomicUsize::new(0));
    let loader = {
        let runs = Arc::clone(&runs);
        move || {
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                "loaded".to_owned()
            }
        }
    };
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    let mut handles = Vec::new();
    for cache in &processes {
        handles.extend(callers(cache, "k", policy, loader.clone()));
    }
    let all = answers(handles).await;
    assert_eq!(all.len(), PROCESSES * CALLERS);
    assert!(all.iter().all(|got| got == "loaded"));
    assert!(runs.load(Ordering::SeqCst) >= 1);
}

/// A stored value of another type (an older one, after a deploy): every process finds it
/// undecodable and reloads; under the lock, once in all (the owner's second read and the
/// others' polls do not take it for another process's value).
async fn a_value_of_an_older_type_is_reloaded_once_across_processes(store: Store) {
    let processes = store.processes(PROCESSES);
    processes[0].set("k", &"an older type", 60).await.unwrap();
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let mut handles = Vec::new();
    for cache in &processes {
        for _ in 0..10 {
            let (cache, runs, gate) = (cache.clone(), runs.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                let load = cache.get_or_set("k", 60, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    drop(gate.acquire().await.unwrap());
                    42_u64
                });
                load.freshness(policy).await.unwrap()
            }));
        }
    }
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The other processes poll meanwhile (a stampede would start its loaders here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(1000);
    for handle in handles {
        assert_eq!(
            tokio::time::timeout(HANG, handle).await.unwrap().unwrap(),
            42
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// An early refresh under the lock reloads: its second read finds the value it replaces, still
/// fresh, and must not take it for another process's refresh.
async fn an_early_refresh_under_the_lock_reloads(store: Store) {
    let cache = store.cache();
    let policy = Freshness::new()
        // A gap far above the time left: XFetch's coin says "reload" almost surely.
        .early_refresh(Duration::from_secs(3600))
        .lock(Lock::new());
    let first: String = cache
        .get_or_set("k", 60, || async { "old".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(first, "old");
    released(&cache).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let refreshed = tokio::time::timeout(HANG, async {
        loop {
            let runs = runs.clone();
            let served: String = cache
                .get_or_set("k", 60, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    "new".to_owned()
                })
                .freshness(policy)
                .await
                .unwrap();
            if served == "new" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    refreshed
        .await
        .expect("the early refresh stores the new value");
    assert!(runs.load(Ordering::SeqCst) >= 1);
}

/// A lock lifetime past the longest expiry (`Duration::MAX`: Redis refuses `PX` that large, so
/// every call would have run without the lock) is refused before anything runs.
#[tokio::test]
async fn a_lock_lifetime_past_the_longest_expiry_is_refused() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new().lock(Lock::new().lifetime(Duration::MAX));
    let got: Result<String, Error> = cache
        .get_or_set("k", 60, || async { unreachable!("not run") })
        .freshness(policy)
        .await;
    match got {
        Err(Error::InvalidExpire { key, reason }) => {
            assert!(
                key.ends_with('k') && reason.contains("longest expiry"),
                "{key}: {reason}"
            )
        }
        other => panic!("expected InvalidExpire, got {other:?}"),
    }
    let year = Freshness::new().lock(Lock::new().lifetime(Duration::from_secs(365 * 86_400)));
    let got: String = cache
        .get_or_set("k", 60, || async { "loaded".to_owned() })
        .freshness(year)
        .await
        .unwrap();
    assert_eq!(got, "loaded");
}

/// Keys starting `__lock:` hold locks: a write there (which would stall every locked load of
/// the key for its wait) is refused, naming the key; reading or deleting a stuck lock is not.
#[tokio::test]
async fn keys_reserved_for_locks_are_not_written() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let refused = |error: Error| {
        assert!(
            matches!(&error, Error::InvalidKey { key, reason } if key.ends_with("__lock:k") && reason.contains("reserved")),
            "{error}"
        )
    };
    refused(cache.set("__lock:k", &"user data", 60).await.unwrap_err());
    refused(cache.set_nx("__lock:k", &1, 60).await.unwrap_err());
    refused(cache.set_many([("__lock:k", 1)], 60).await.unwrap_err());
    refused(cache.set_raw("__lock:k", "x".into(), 60).await.unwrap_err());
    let loaded: Result<String, Error> = cache
        .get_or_set("__lock:k", 60, || async { "v".to_owned() })
        .await;
    assert_eq!(
        loaded.unwrap(),
        "v",
        "the loader answers (fail open), nothing stored"
    );
    assert_eq!(cache.get_raw("__lock:k").await.unwrap(), None);
    assert_eq!(cache.delete("__lock:k").await.unwrap(), 0);
}

/// A loader closure that panics before it returns its future releases the lock at once, as
/// any failing loader does (it was left held for its lifetime, and the next process waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_panicking_before_its_future_releases_the_lock() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new().lock(Lock::new().lifetime(Duration::from_secs(60)));
    let got = cache
        .try_get_or_set("k", 60, || -> std::future::Ready<Result<String, Error>> {
            panic!("before its future (on purpose)")
        })
        .freshness(policy)
        .await;
    assert!(got.unwrap_err().to_string().contains("panicked"));
    released(&cache).await;
}

/// The owner's connection is reset between its failed load and its release (a network blip,
/// the connection reconnecting right after): the release (a compare-and-delete, safe to repeat)
/// fails, and is retried in the background until it lands, so another process takes the lock
/// at once rather than waiting for its whole lifetime (8 s; the bound, 3 s, is generous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_lost_to_a_connection_reset_is_retried() {
    let server = impcache_tests::RedisServer::start();
    let proxy = impcache_tests::FaultProxy::start(server.port()).await;
    let cache_on = |url: String| {
        let repository = RedisCacheRepository::builder(url)
            .deadline(Duration::from_millis(300))
            .build()
            .unwrap();
        Cache::new(repository)
    };
    let (owner, other) = (cache_on(proxy.url()), cache_on(server.url()));
    let lifetime = Duration::from_secs(8);
    let policy = Freshness::new()
        .hard_timeout(Duration::from_secs(1))
        .lock(Lock::new().lifetime(lifetime));
    let gate = Arc::new(Semaphore::new(0));
    let failing = tokio::spawn({
        let (owner, gate) = (owner.clone(), gate.clone());
        async move {
            let loader = || async move {
                drop(gate.acquire().await.unwrap());
                Err(Error::Loader {
                    key: "k".into(),
                    reason: "the origin is down".into(),
                })
            };
            let failed: Result<String, Error> = owner
                .try_get_or_set("k", 60, loader)
                .freshness(policy)
                .await;
            failed
        }
    });
    tokio::time::timeout(HANG, async {
        while other.get_raw("__lock:k").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the owner takes the lock");
    // The owner's connection is reset while its loader runs; its release is the next command.
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(1);
    assert!(tokio::time::timeout(HANG, failing)
        .await
        .unwrap()
        .unwrap()
        .is_err());
    takes_the_lock_at_once(&other, policy, "released by no one").await;
}

/// The owner's `SET NX` lands but its answer comes back after the deadline (writes paused
/// for 500 ms by `CLIENT PAUSE WRITE`, the deadline 300 ms; the owner's read goes through): the
/// owner fails open and loads without the lock, and the lock it took unknowingly is released
/// in the background, so another process takes the lock at once rather than waiting for its
/// whole lifetime (8 s; the bound, 3 s, is generous). (It was left held: a connection reset
/// racing the answer made `a_release_lost_to_a_connection_reset_is_retried` wait 7.95 s, in 1 of
/// 20 runs of this file on a busy machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_with_its_answer_lost_is_released() {
    let server = impcache_tests::RedisServer::start();
    let cache = || {
        let repository = RedisCacheRepository::builder(server.url())
            .deadline(Duration::from_millis(300))
            .build()
            .unwrap();
        Cache::new(repository)
    };
    let (owner, other) = (cache(), cache());
    let lifetime = Duration::from_secs(8);
    let policy = Freshness::new()
        .hard_timeout(Duration::from_secs(1))
        .lock(Lock::new().lifetime(lifetime));
    let _: () = server.cmd(&["CLIENT", "PAUSE", "500", "WRITE"]);
    let failed: Result<String, Error> = owner
        .try_get_or_set("k", 60, || async {
            Err(Error::Loader {
                key: "k".into(),
                reason: "the origin is down".into(),
            })
        })
        .freshness(policy)
        .await;
    assert!(failed.is_err());
    // The pause is over: the owner's `SET NX` has run.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server.command_calls(&["set"]), 1, "the owner's SET NX");
    takes_the_lock_at_once(&other, policy, "its owner never knew it held").await;
}

/// `other` takes the lock of `k` within 3 s, far below the lifetime of `policy`'s lock (8 s):
/// no stray lock (`stray`: whose) is left for it to wait out.
async fn takes_the_lock_at_once(other: &Cache, policy: Freshness, stray: &str) {
    let lifetime = policy.lock_options().unwrap().lifetime_duration();
    let started = std::time::Instant::now();
    let got: String = tokio::time::timeout(
        HANG,
        other
            .get_or_set("k", 60, || async { "other".to_owned() })
            .freshness(policy)
            .into_future(),
    )
    .await
    .unwrap()
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(got, "other");
    assert!(
        waited < Duration::from_secs(3),
        "waited {waited:?} for a lock {stray} (lifetime {lifetime:?})"
    );
}

/// A lock that would expire before the loader's hard timeout is refused before anything runs.
#[tokio::test]
async fn the_lock_must_outlive_the_hard_timeout() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new()
        .hard_timeout(Duration::from_secs(5))
        .lock(Lock::new().lifetime(Duration::from_secs(5)));
    let got: Result<String, Error> = cache
        .get_or_set("k", 60, || async { unreachable!("not run") })
        .freshness(policy)
        .await;
    match got {
        Err(Error::InvalidExpire { reason, .. }) => {
            assert!(reason.contains("hard timeout"), "{reason}")
        }
        other => panic!("expected InvalidExpire, got {other:?}"),
    }
    // A lock whose lifetime is not set outlasts any hard timeout by itself.
    let policy = Freshness::new()
        .hard_timeout(Duration::from_secs(30))
        .lock(Lock::new());
    let got: String = cache
        .get_or_set("k", 60, || async { "loaded".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(got, "loaded");
    let ttl = cache.get_raw_with_ttl("__lock:k").await.unwrap();
    assert!(ttl.is_none(), "released after the store: {ttl:?}");
}

/// Through Sentinel (feature `sentinel`): 4 processes, each its own Sentinel repository, share
/// the primary the Sentinel names; one case, the group being slow to start.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_four_processes_run_the_loader_once() {
    use impcache_tests::cluster::SentinelGroup;
    let group = SentinelGroup::start();
    let store = Store::sentinel(group.sentinel_url(), HANG);
    four_processes_of_fifty_callers_run_the_loader_once(store).await;
    drop(group);
}

/// The cost of a miss under a lock, in commands (counted by the server, `INFO commandstats`):
/// without it a `GET` and a `SET`; with it a `SET NX` of the lock and a second `GET` before the
/// loader, and the release (`EVAL`) after the store: three round trips more. A hit is one `GET`
/// either way.
#[tokio::test]
async fn a_miss_under_a_lock_costs_three_round_trips_more() {
    let store = Store::redis(HANG);
    let server = store.server().unwrap();
    let cache = store.cache();
    let calls = |name: &str| -> u64 {
        let info: String = server.cmd(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let counts = || (calls("get"), calls("set"), calls("eval"));
    for (key, policy, expected) in [
        ("plain", Freshness::new(), (1, 1, 0)),
        // The release script's own `GET` is counted too (a third `GET`, no round trip).
        ("locked", Freshness::new().lock(Lock::new()), (3, 2, 1)),
    ] {
        let _: String = server.cmd(&["CONFIG", "RESETSTAT"]);
        let got: String = cache
            .get_or_set(key, 60, || async { "v".to_owned() })
            .freshness(policy)
            .await
            .unwrap();
        assert_eq!(got, "v");
        // The store and the release follow the answer.
        tokio::time::timeout(HANG, async {
            while counts() != expected {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key}: {:?}, expected {expected:?}", counts()));
        let _: String = server.cmd(&["CONFIG", "RESETSTAT"]);
        let hit: String = cache
            .get_or_set(key, 60, || async { "other".to_owned() })
            .freshness(policy)
            .await
            .unwrap();
        assert_eq!(hit, "v");
        assert_eq!(counts(), (1, 0, 0), "{key}: a hit is one GET");
    }
}

/// With a near cache, a waiting process is woken by the value key's invalidation when the owner
/// stores it, not at its next poll: each round holds the owner long enough for the waiter to
/// poll at its longest pause (50 ms); the invalidation arrives well within it, so at least one
/// of five rounds (in practice all) logs the wake. Both get the owner's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_near_cache_a_waiter_is_woken_by_the_stores_invalidation() {
    let logs = debug_logs();
    let server = impcache_tests::RedisServer::start();
    let near = || {
        let repository = RedisCacheRepository::new(&server.url()).unwrap();
        Cache::builder(repository)
            .near_cache(impcache::NearCache::new())
            .build()
    };
    let (owner, waiter) = (near(), near());
    for cache in [&owner, &waiter] {
        tokio::time::timeout(HANG, async {
            while !cache.is_near_cache_active() {
                let _ = cache.get::<String>("warm-up").await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the near cache becomes active");
    }
    let policy = Freshness::new().lock(Lock::new().wait(HANG));
    for key in ["w0", "w1", "w2", "w3", "w4"] {
        // Interest recomputed with the global subscriber: other tests' subscribers, made or
        // dropped alongside, may have switched the wake's `debug!` off (tracing's interest and
        // max level are process-wide).
        tracing::callsite::rebuild_interest_cache();
        let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        let first = tokio::spawn({
            let (cache, started, gate) = (owner.clone(), started.clone(), gate.clone());
            let loader = || async move {
                started.add_permits(1);
                gate.acquire().await.unwrap().forget();
                "owner".to_owned()
            };
            async move { cache.get_or_set(key, 60, loader).freshness(policy).await }
        });
        started.acquire().await.unwrap().forget();
        let second = tokio::spawn({
            let cache = waiter.clone();
            let loader = || async { "waiter".to_owned() };
            async move { cache.get_or_set(key, 60, loader).freshness(policy).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), "owner");
        assert_eq!(second.await.unwrap().unwrap(), "owner");
    }
    let woken = logs.text().matches("the value key changed").count();
    assert!(woken >= 1, "never woken by the invalidation");
}

/// Everything logged at `DEBUG` and above by this test binary (a global subscriber: the waiting
/// runs in spawned tasks on worker threads).
fn debug_logs() -> &'static impcache_tests::logs::Logs {
    static LOGS: std::sync::OnceLock<impcache_tests::logs::Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = impcache_tests::logs::Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

/// A process waiting for another's load over a value of another type (an older deploy's) warns
/// of it once, at its own read, not at each poll of the wait (every 5 to 50 ms: 15 warnings in
/// 550 ms after the read of `get_or_set` began to decode; found by a regression probe).
#[test]
fn a_waiter_over_a_value_of_another_type_warns_once_not_at_each_poll() {
    let server = impcache_tests::RedisServer::start();
    let logs = impcache_tests::logs::Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    // The binary's global subscriber first: a call site first reached by a sibling test's thread
    // with none would be cached as uninterested for every thread, this one's included
    // (`impcache_tests::logs::keep_callsites_interested`).
    debug_logs();
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let warned = || {
        logs.text()
            .matches("does not decode as the requested type")
            .count()
    };
    impcache_tests::current_thread_runtime().block_on(async {
        let process = || Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
        let (owner, waiter) = (process(), process());
        owner.set("k", &"an older type", 60).await.unwrap();
        let policy = Freshness::new().lock(Lock::new().wait(HANG));
        let first = tokio::spawn(async move {
            let load = owner.get_or_set("k", 60, || async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                1_u64
            });
            load.freshness(policy).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waited = waiter.get_or_set("k", 60, || async { 2_u64 });
        assert_eq!(waited.freshness(policy).await.unwrap(), 1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
    });
    // The owner's read and the waiter's.
    assert_eq!(warned(), 2, "{}", logs.text());
}

/// A lock owner that stops running past its lock's lifetime (a paused process; here a loader
/// holding its runtime's only thread, so that every timer is overdue when it runs again, its
/// hard timeout too) answers with its value but does not store it: the process that took the
/// expired lock over stored a newer one meanwhile (found by a probe: the older value replaced
/// it, 5 runs of 5, also with SIGSTOP/SIGCONT of a separate process).
#[test]
fn a_stalled_owner_does_not_overwrite_the_value_of_the_process_that_took_over() {
    let server = impcache_tests::RedisServer::start();
    // The lifetime outlasts the hard timeout, as required.
    let policy = || {
        Freshness::new()
            .hard_timeout(Duration::from_millis(800))
            .lock(Lock::new().lifetime(Duration::from_secs(1)).wait(HANG))
    };
    let process = |url: String| Cache::new(RedisCacheRepository::new(url.as_str()).unwrap());
    let (stalled, url) = (process(server.url()), server.url());
    let owner = std::thread::spawn(move || {
        impcache_tests::current_thread_runtime().block_on(async move {
            stalled
                .get_or_set("k", 60, || async {
                    std::thread::sleep(Duration::from_millis(2500));
                    "older".to_owned()
                })
                .freshness(policy())
                .await
        })
    });
    // The other process comes once the owner's lock has expired.
    std::thread::sleep(Duration::from_millis(1300));
    let newer = impcache_tests::multi_thread_runtime().block_on(async {
        let cache = process(url);
        let newer = cache
            .get_or_set("k", 60, || async { "newer".to_owned() })
            .freshness(policy())
            .await;
        // Its store runs in the background: a runtime ended right after the call may drop it
        // (README), and the owner then rightly fills the empty key (the key was empty after 5
        // of 30 runs on a loaded machine). The runtime lives until it has landed.
        until_stored(&cache, "k", "newer").await;
        newer
    });
    assert_eq!(newer.unwrap(), "newer");
    assert_eq!(
        owner.join().unwrap().unwrap(),
        "older",
        "its callers have its value"
    );
    let stored: Option<String> = server.cmd(&["GET", "cache:1:k"]);
    assert_eq!(stored.as_deref(), Some(r#""newer""#));
}

/// A loader slower than its lock's lifetime, with no other process loading the key, still
/// stores its value: past the lifetime the store is skipped only when the key holds a fresh
/// value (another process's, stored after taking the lock over), and a missing one is filled
/// (storing nothing past the lifetime left it uncached for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_slower_than_its_locks_lifetime_fills_an_empty_key() {
    let server = impcache_tests::RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(server.url().as_str()).unwrap());
    let policy = Freshness::new().lock(Lock::new().lifetime(Duration::from_millis(200)));
    let loaded: String = cache
        .get_or_set("slow", 60, || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "value".to_owned()
        })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(loaded, "value");
    assert_eq!(
        cache.get::<String>("slow").await.unwrap().as_deref(),
        Some("value")
    );
}

/// Past its lock's lifetime, a loader alone still replaces what does not answer: here an entry
/// hidden by its tag's invalidation and a value of another type (with a `SET NX` store they
/// stayed, and every call ran the loader: 3 runs in 3 calls; found by a regression hunt). A
/// stale entry is replaced the same way (`lock::fresh` reads it as absent); not tested here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_slower_than_its_locks_lifetime_replaces_what_does_not_answer() {
    let server = impcache_tests::RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(server.url().as_str()).unwrap());
    let policy = Freshness::new().lock(Lock::new().lifetime(Duration::from_millis(200)));
    let runs = Arc::new(AtomicUsize::new(0));
    let slow = |runs: &Arc<AtomicUsize>| {
        let runs = runs.clone();
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            "new".to_owned()
        }
    };
    cache.set_tagged("hidden", &"old", 60, ["t"]).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    cache.set("typed", &42, 60).await.unwrap();
    for (key, tags) in [("hidden", vec!["t"]), ("typed", vec![])] {
        for _ in 0..2 {
            let loaded: String = cache
                .get_or_set(key, 60, slow(&runs))
                .tags(tags.clone())
                .freshness(policy)
                .await
                .unwrap();
            assert_eq!(loaded, "new", "{key}");
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
}
