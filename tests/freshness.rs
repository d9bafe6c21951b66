//! `Cache::get_or_set` / `try_get_or_set` and their `Freshness` options, each against the
//! memory repository and a real Redis (started by `tests/support`), and with the feature
//! `cluster` the shared Redis Cluster. `per_store!` instantiates
//! each `async fn(Backend)` once per repository.
//!
//! No timing assertions: entries are made stale by short expiries and sleeps past them, and
//! "answered at once" is shown by answering while the loader is still held at a gate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impcache::freshness::State;
use impcache::{
    Cache, CacheRepository, Error, Freshness, Lock, MemoryCacheRepository, RedisCacheRepository,
};
use impcache_tests::late::LateWrites;
use impcache_tests::loader::{calling_x_back, counted, stale_entry, until_stored};
use impcache_tests::logs::Logs;
use impcache_tests::per_store;
use impcache_tests::store::Store;
use impcache_tests::RedisServer;
use tokio::sync::Semaphore;

const HANG: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);

struct Backend {
    cache: Cache,
    _store: Store,
}

impl Backend {
    fn on(store: Store) -> Self {
        Backend {
            cache: store.cache(),
            _store: store,
        }
    }
}

per_store!(
    #[tokio::test]
    make: Backend::on,
    prefix: "freshness",
    deadline: HANG;
    concurrent_misses_run_the_loader_once,
    stale_readers_are_answered_at_once_by_one_background_reload,
    a_failing_loader_serves_the_stale_value_and_is_logged,
    concurrent_callers_of_a_failing_loader_all_get_the_stale_value,
    waiters_behind_a_failing_loader_get_its_error_without_loading,
    the_soft_timeout_answers_stale_and_the_loader_still_stores,
    the_hard_timeout_gives_up_with_or_without_a_stale_value,
    past_the_stale_window_is_a_miss,
    a_panicking_or_dropped_leader_strands_no_one,
    waiters_behind_a_panicking_loader_elect_one_new_leader,
    waiters_without_a_stale_value_behind_a_panicking_leader_with_one_elect_one_new_leader,
    early_refresh_reloads_a_fresh_value_in_the_background,
    the_fail_safe_throttle_answers_stale_without_the_loader,
    a_failed_background_reload_throttles_the_next_ones,
    a_failed_early_refresh_throttles_the_next_ones,
    a_successful_load_ends_the_throttle,
    a_window_of_duration_max_keeps_the_value_as_long_as_there_is,
    a_write_right_after_get_or_set_is_not_undone_by_its_store,
    a_loader_calling_its_own_key_runs_without_waiting_for_itself,
    a_background_reload_started_by_a_loader_waits_for_its_key_as_anyone,
);

/// The same on a multi-thread runtime, where the caller resumes on another worker while the
/// load's task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_right_after_get_or_set_is_not_undone_by_its_store_multi_thread() {
    for store in [Store::memory(), Store::redis(HANG)] {
        a_write_right_after_get_or_set_is_not_undone_by_its_store(Backend::on(store)).await;
    }
}

/// A call made right after the caller's own call was answered does not join that call's load,
/// which has ended: after a failed load its loader runs (it got "not run: another caller's load
/// of the key failed", its own earlier call's failure, or the stale value without a run), and
/// after a load and a `delete` of the key it loads again rather than get the deleted value.
/// The load's flight used to end just after the answer: up to 94 calls in 500 on the memory
/// repository, found by a probe. 300 rounds of each, on a multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_an_answer_does_not_join_its_ended_load() {
    let cache = Store::memory().cache();
    for policy in [Freshness::new(), Freshness::new().stale_if_error(MINUTE)] {
        let mut missed = Vec::new();
        for round in 0..300 {
            let key = format!("failed{round}");
            if policy.stale_window() > Duration::ZERO {
                let _: String = cache
                    .get_or_set(&key, MS, || async { "old".to_owned() })
                    .freshness(policy)
                    .await
                    .unwrap();
                tokio::time::sleep(3 * MS).await;
            }
            let failed: Result<String, String> = cache
                .try_get_or_set(&key, 60, || async { Err("down".to_owned()) })
                .freshness(policy)
                .await;
            assert!(
                failed.is_err() || failed.as_deref() == Ok("old"),
                "{failed:?}"
            );
            let ran = Arc::new(AtomicUsize::new(0));
            let value: String = cache
                .get_or_set(&key, 60, {
                    let ran = Arc::clone(&ran);
                    move || async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        "new".to_owned()
                    }
                })
                .freshness(policy)
                .await
                .unwrap();
            if (value.as_str(), ran.load(Ordering::SeqCst)) != ("new", 1) {
                missed.push(format!("{key}: {value}"));
            }

            let key = format!("deleted{round}");
            let _: String = cache
                .get_or_set(&key, 60, || async { "v1".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            cache.delete(&key).await.unwrap();
            let value: String = cache
                .get_or_set(&key, 60, || async { "v2".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            if value != "v2" {
                missed.push(format!("{key}: {value}"));
            }
        }
        assert!(
            missed.is_empty(),
            "{policy:?}: handed an ended load's answer: {missed:?}"
        );
    }
}

/// The same after the caller's own write of the key, on a real Redis, where a load's store is
/// still in progress when its caller is answered (its flight ends once the store's reply is
/// handled): a call right after a `delete`, `delete_many` or `delete_pattern` of the key, or a
/// `set_many` of a value of another type (which reads as a miss), loads again rather than join that
/// flight and be handed the value the write removed. It was handed it without a run (found by
/// a probe: 2 to 22 calls in 300 with a lock, in 9 runs of 14; without one, in 2 runs of 14):
/// own writes now detach the key's flights. The stores' replies are handled 2 ms late
/// ([`LateWrites`]), so that the window opens every time (on a plain Redis, about 1 call in
/// 2,000 here); 40 rounds, with and without a lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_an_own_write_does_not_join_the_keys_storing_load() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(HANG)
        .build()
        .unwrap();
    let cache = Cache::new(LateWrites::new(repository, 2 * MS));
    let locked = Freshness::new().lock(impcache::Lock::new());
    let mut missed = Vec::new();
    for (name, policy) in [("plain", Freshness::new()), ("locked", locked)] {
        for round in 0..40 {
            let key = format!("{name}-written{round}");
            let _: String = cache
                .get_or_set(&key, 60, || async { "v1".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            let (write, written) = match round % 4 {
                0 => ("delete", cache.delete(&key).await.map(drop)),
                1 => ("delete_many", cache.delete_many([&key]).await.map(drop)),
                2 => {
                    let pattern = impcache::escape_pattern(&key);
                    (
                        "delete_pattern",
                        cache.delete_pattern(&pattern).await.map(drop),
                    )
                }
                // (`set_many`: `set`'s own reply would come late too, after the load's.)
                _ => ("set_many", cache.set_many([(&key, 0)], 60).await),
            };
            written.unwrap();
            let value: String = cache
                .get_or_set(&key, 60, || async { "v2".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            if value != "v2" {
                missed.push(format!("{key} after {write}: {value}"));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} calls of 80 handed the value their own write removed: {:?}",
        missed.len(),
        &missed[..missed.len().min(8)]
    );
}

/// A `delete` on another worker thread timed around the end of a load (1 ms loader, the delete
/// 0.9 to 1.3 ms after it starts), 1,000 times: never undone by the load's store. The leader's
/// check that its flight is still attached and the send of its store are one step under the
/// flight table's lock, which the write's detach takes before it is sent; as a check then a
/// send, a write in between was undone 3 to 4 times in 1,000 (found by a regression probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_the_store_on_another_thread_is_never_undone() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let mut undone = Vec::new();
    for round in 0..1000u64 {
        let key = &format!("race{round}");
        let started = Arc::new(tokio::sync::Notify::new());
        let notify = Arc::clone(&started);
        let load = cache
            .get_or_set(key, 60, move || async move {
                notify.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
                "loaded".to_owned()
            })
            .into_future();
        let delete = async {
            started.notified().await;
            tokio::time::sleep(Duration::from_micros(900 + (round % 5) * 100)).await;
            cache.delete(key).await.unwrap();
        };
        let (loaded, ()) = tokio::join!(load, delete);
        assert_eq!(loaded.unwrap(), "loaded");
        if cache.get::<String>(key).await.unwrap().is_some() {
            undone.push(key.clone());
        }
    }
    assert!(
        undone.is_empty(),
        "{} of 1,000 undone: {undone:?}",
        undone.len()
    );
}

/// A `delete` of a key made while its `get_or_set` loader runs is not undone by that load's
/// store: the loaded value, computed before the delete, answers the load's caller but is not
/// stored, and the next call loads again. It was stored after the delete and served for the
/// whole `expire` (found by a probe, 3 runs of 3). On memory and Redis, with and without a lock,
/// with the delete done before the loader returns, and with it in flight when the loader
/// returns (the key gone, its reply handled 300 ms late: `LateWrites::deletes_too`), which a
/// write's detaching before it is sent covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_load_is_not_undone_by_its_store() {
    let server = RedisServer::start();
    let redis = RedisCacheRepository::builder(server.url())
        .deadline(HANG)
        .build()
        .unwrap();
    let memory = MemoryCacheRepository::new();
    let repositories = [
        ("memory", LateWrites::new(memory, 300 * MS)),
        ("redis", LateWrites::new(redis, 300 * MS)),
    ];
    let locked = Freshness::new().lock(impcache::Lock::new());
    let mut undone = Vec::new();
    for (repository, late) in repositories {
        let cache = &Cache::new(late.deletes_too());
        for (name, policy) in [("plain", Freshness::new()), ("locked", locked)] {
            for in_flight in [false, true] {
                let key = &format!("{name}-{}", if in_flight { "in-flight" } else { "done" });
                let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
                let load = cache
                    .get_or_set(key, 60, counted(&runs, &gate, "old"))
                    .freshness(policy)
                    .into_future();
                let delete = async {
                    until_runs(&runs, 1).await;
                    let deleted = async { assert_eq!(cache.delete(key).await.unwrap(), 0) };
                    let open = async {
                        if in_flight {
                            tokio::time::sleep(50 * MS).await;
                        }
                        gate.add_permits(1);
                    };
                    if in_flight {
                        tokio::join!(deleted, open);
                    } else {
                        deleted.await;
                        open.await;
                    }
                };
                let (loaded, ()) = tokio::join!(load, delete);
                assert_eq!(loaded.unwrap(), "old");
                let again: String = cache
                    .get_or_set(key, 60, || async { "new".to_owned() })
                    .freshness(policy)
                    .await
                    .unwrap();
                if again != "new" {
                    undone.push(format!("{repository} {key}: {again}"));
                }
            }
        }
    }
    assert!(
        undone.is_empty(),
        "deletes undone by the store of a load they came during: {undone:?}"
    );
}

/// `get_or_set` answers before its store lands; a `set` or `delete` of the key made right after
/// (by the same caller) must not be undone by that store landing later: the store is sent
/// before the caller is answered, so this process's next command queues behind it. 50 rounds.
async fn a_write_right_after_get_or_set_is_not_undone_by_its_store(b: Backend) {
    let cache = &b.cache;
    let policy = Freshness::new().stale_if_error(MINUTE);
    let mut undone = Vec::new();
    for round in 0..50 {
        let (set, deleted) = (format!("set{round}"), format!("deleted{round}"));
        for key in [&set, &deleted] {
            let loaded: String = cache
                .get_or_set(key, 60, || async { "loaded".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            assert_eq!(loaded, "loaded");
        }
        cache.set(&set, &"mine", 60).await.unwrap();
        cache.delete(&deleted).await.unwrap();
        tokio::time::sleep(5 * MS).await;
        if cache.get::<String>(&set).await.unwrap().as_deref() != Some("mine") {
            undone.push(set);
        }
        if cache.get::<String>(&deleted).await.unwrap().is_some() {
            undone.push(deleted);
        }
    }
    assert!(
        undone.is_empty(),
        "writes undone by an earlier store: {undone:?}"
    );
}

/// A loader that calls `get_or_set` of its own key (or of a key whose loader calls it back)
/// would wait for its own load for ever, and hold the key's flight for every caller of the
/// process until a write of the key (it hung, and every later call of the key with it, found by
/// a probe 2026-12-07): the inner call runs its loader without the single flight, as the code
/// would without a cache, and the outer load answers and stores. Also under a lock, which the
/// outer load holds.
async fn a_loader_calling_its_own_key_runs_without_waiting_for_itself(b: Backend) {
    for policy in [Freshness::new(), Freshness::new().lock(Lock::new())] {
        let cache = &b.cache;
        cache
            .delete_many(&["self", "cycle:a", "cycle:b"])
            .await
            .unwrap();
        // Directly.
        let inner = cache.clone();
        let outer = cache
            .get_or_set("self", 60, move || async move {
                let inner: String = inner
                    .get_or_set("self", 60, || async { "inner".to_owned() })
                    .freshness(policy)
                    .await
                    .unwrap();
                format!("outer over {inner}")
            })
            .freshness(policy);
        let outer: String = tokio::time::timeout(HANG, outer.into_future())
            .await
            .expect("a loader calling its own key hangs")
            .unwrap();
        assert_eq!(outer, "outer over inner");
        let next = cache
            .get_or_set("self", 60, || async { "next".to_owned() })
            .freshness(policy);
        let next: String = tokio::time::timeout(HANG, next.into_future())
            .await
            .expect("the key stayed held")
            .unwrap();
        assert_eq!(next, outer, "the outer load, stored last, answers");

        // Through another key's load: a -> b -> a.
        let (in_a, in_b) = (cache.clone(), cache.clone());
        let a = cache
            .get_or_set("cycle:a", 60, move || async move {
                let b: String = in_a
                    .get_or_set("cycle:b", 60, move || async move {
                        let a: String = in_b
                            .get_or_set("cycle:a", 60, || async { "a".to_owned() })
                            .freshness(policy)
                            .await
                            .unwrap();
                        format!("b over {a}")
                    })
                    .freshness(policy)
                    .await
                    .unwrap();
                format!("a over {b}")
            })
            .freshness(policy);
        let a: String = tokio::time::timeout(HANG, a.into_future())
            .await
            .expect("a cycle of loaders hangs")
            .unwrap();
        assert_eq!(a, "a over b over a");
    }
}

/// A background reload runs within its own load only: started from a loader (whose call was
/// answered at once with the stale value), its own loader waiting for that loader's key is an
/// ordinary waiter, and that key's loader runs once. It ran twice: the reload took on the
/// list of loads its starter ran within, and its wait looked like a load waiting for itself
/// (found by a regression hunt, 2026-12-07).
async fn a_background_reload_started_by_a_loader_waits_for_its_key_as_anyone(b: Backend) {
    let cache = &b.cache;
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    stale_entry(cache, "b", "old b", 100 * MS, policy).await;
    let (runs, inner_runs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_x, x_runs) = (cache.clone(), runs.clone());
    let b_loader = calling_x_back(cache, Duration::ZERO, policy, &inner_runs);
    let x = cache
        .get_or_set("x", 60, move || async move {
            x_runs.fetch_add(1, Ordering::SeqCst);
            let b: String = in_x
                .get_or_set("b", 60, b_loader)
                .freshness(policy)
                .await
                .unwrap();
            tokio::time::sleep(300 * MS).await;
            format!("x over {b}")
        })
        .freshness(policy);
    let x: String = tokio::time::timeout(HANG, x.into_future())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x, "x over old b");
    until_stored(cache, "b", "b over x over old b").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `stale_if_error(Duration::MAX)` / `stale_while_revalidate(Duration::MAX)` ("serve stale for
/// as long as there is", FusionCache's fail-safe with no limit): the window is the longest kept
/// (50 years) and the call works; an `expire` that leaves no room for the window is refused
/// before the loader runs, with an error that names the key and the window.
async fn a_window_of_duration_max_keeps_the_value_as_long_as_there_is(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    let forever = Freshness::new()
        .stale_if_error(Duration::MAX)
        .stale_while_revalidate(Duration::MAX);
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &open, "v"))
        .freshness(forever)
        .await
        .unwrap();
    assert_eq!(value, "v");
    until_stored(cache, "k", "v").await;
    let found = cache.get_raw_with_ttl("k").await.unwrap().unwrap();
    let ttl = found.ttl.unwrap();
    assert!(ttl > forever.stale_window(), "{ttl:?}");
    assert_eq!(
        forever.state(Some(ttl)),
        State::Fresh {
            left: Some(ttl - forever.stale_window())
        }
    );
    let error = cache
        .get_or_set("k2", impcache::MAX_EXPIRE, counted(&runs, &open, "v"))
        .freshness(forever)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidExpire { key, reason } if key == "k2" && reason.contains("stale window")),
        "{error}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn concurrent_misses_run_the_loader_once(backend: Backend) {
    let cache = backend.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, loader) = (cache.clone(), counted(&runs, &gate, "v1"));
            tokio::spawn(async move { cache.get_or_set("k", 60, loader).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(50 * MS).await;
    gate.add_permits(1000);
    for caller in callers {
        assert_eq!(
            tokio::time::timeout(HANG, caller).await.unwrap().unwrap(),
            "v1"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    until_stored(&cache, "k", "v1").await;
    // A hit does not run the loader.
    let again: String = cache
        .get_or_set("k", 60, || async { "v2".to_owned() })
        .await
        .unwrap();
    assert_eq!(again, "v1");
    // An error is returned, never stored.
    let failed: Result<String, Error> = cache
        .try_get_or_set("e", 60, || async {
            Err(Error::Loader {
                key: "e".into(),
                reason: "boom".into(),
            })
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(cache.get::<String>("e").await.unwrap(), None);
    // A loader's error may be a plain message or an I/O error: both take the cache's errors.
    let message: Result<u32, String> = cache
        .try_get_or_set("e", 60, || async { Err("boom".to_owned()) })
        .await;
    assert_eq!(message, Err("boom".to_owned()));
    let io: Result<u32, std::io::Error> = cache
        .try_get_or_set("e", 60, || async {
            Err(std::io::Error::other("disk on fire"))
        })
        .await;
    assert_eq!(io.unwrap_err().to_string(), "disk on fire");
    assert_eq!(cache.get::<u32>("e").await.unwrap(), None);
}

async fn stale_readers_are_answered_at_once_by_one_background_reload(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    // The raw read a layer would make: the TTL is the expire plus the window, partly spent.
    let found = cache.get_raw_with_ttl("k").await.unwrap().unwrap();
    assert_eq!(&found.value[..], b"\"old\"");
    let ttl = found.ttl.unwrap();
    assert!(ttl < MINUTE && ttl > MINUTE - HANG, "{ttl:?}");
    assert!(matches!(policy.state(found.ttl), State::Stale { .. }));
    let stale_before = cache.stats().stale;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, loader) = (cache.clone(), counted(&runs, &gate, "new"));
            tokio::spawn(async move {
                cache
                    .get_or_set("k", Duration::from_secs(60), loader)
                    .freshness(policy)
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Every reader is answered while the reload is still held at its gate.
    for caller in callers {
        assert_eq!(
            tokio::time::timeout(HANG, caller).await.unwrap().unwrap(),
            "old"
        );
    }
    assert_eq!(
        cache.stats().stale - stale_before,
        100,
        "each stale answer counted"
    );
    gate.add_permits(1000);
    until_stored(&cache, "k", "new").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one reload for 100 readers");
    // Fresh again: the next read is a plain hit.
    let fresh: String = cache
        .get_or_set("k", 60, || async { "newer".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(fresh, "new");
}

/// The log of every thread, through a global subscriber (installed once for this test binary): a
/// thread-local one (`set_default`) missed the loader's warning now and then on Cluster, though
/// the stale value was served.
fn global_logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        // At `DEBUG`: a warning repeated within a second from its call site (another test's
        // failing loader) is logged at `DEBUG`.
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

async fn a_failing_loader_serves_the_stale_value_and_is_logged(backend: Backend) {
    let cache = backend.cache;
    let logs = global_logs();
    // This call's own reason, so that the parallel runs of this test on other backends (which
    // log into the same global buffer) cannot stand in for it.
    static CALL: AtomicUsize = AtomicUsize::new(0);
    let reason = format!(
        "the origin is down (call {})",
        CALL.fetch_add(1, Ordering::Relaxed)
    );
    let policy = Freshness::new().stale_if_error(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let stale_before = cache.stats().stale;
    let served: Result<String, Error> = cache
        .try_get_or_set("k", 60, {
            let reason = reason.clone();
            || async move {
                Err(Error::Loader {
                    key: "k".into(),
                    reason,
                })
            }
        })
        .freshness(policy)
        .await;
    assert_eq!(served.unwrap(), "old");
    assert_eq!(
        cache.stats().stale - stale_before,
        1,
        "the stale answer counted"
    );
    // The leader's task logs the failure; it may finish after the caller was answered.
    let logged = tokio::time::timeout(HANG, async {
        while !logs.text().contains(&reason) {
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await;
    assert!(logged.is_ok(), "not logged: {}", logs.text());
    // Without a stale value the error is the caller's.
    let failed: Result<String, Error> = cache
        .try_get_or_set("absent", 60, || async {
            Err(Error::Loader {
                key: "absent".into(),
                reason: "the origin is down".into(),
            })
        })
        .freshness(policy)
        .await;
    assert!(matches!(failed, Err(Error::Loader { .. })));
}

/// 50 concurrent callers of a stale key whose loader fails: one loader run, every caller
/// answered with the stale value and counted.
async fn concurrent_callers_of_a_failing_loader_all_get_the_stale_value(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new().stale_if_error(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let stale_before = cache.stats().stale;
    let runs = Arc::new(AtomicUsize::new(0));
    let failing = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(200 * MS).await;
            Err::<String, _>(Error::Loader {
                key: "k".into(),
                reason: "the origin is down".into(),
            })
        }
    };
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, loader) = (cache.clone(), failing(&runs));
            tokio::spawn(async move {
                cache
                    .try_get_or_set("k", 60, loader)
                    .freshness(policy)
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "old");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one loader run");
    assert_eq!(
        cache.stats().stale - stale_before,
        50,
        "every stale answer counted"
    );
}

/// Concurrent callers of a key whose loader fails, with no stale value at hand: the loader runs
/// once. Its caller gets its error; the others, without running theirs, an `Error::Loader`
/// naming the key and the leader's error (moka's `try_get_with`). Each waiter used to run its own
/// loader, nearly all at once (20 callers: 20 runs, 19 at once). A caller arriving after the
/// flight ended loads again: errors are never stored.
async fn waiters_behind_a_failing_loader_get_its_error_without_loading(backend: Backend) {
    let cache = backend.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let failing = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(200 * MS).await;
            Err::<String, String>("the origin is down".to_owned())
        }
    };
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (cache, loader) = (cache.clone(), failing(&runs));
            tokio::spawn(async move { cache.try_get_or_set("k", 60, loader).await })
        })
        .collect();
    let mut errors = Vec::new();
    for caller in callers {
        let answer = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        errors.push(answer.unwrap_err());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{errors:?}");
    let shared = "the loader of `k` gave no value: not run: another caller's load of the key \
                  failed: the origin is down";
    assert_eq!(
        errors.iter().filter(|e| *e == "the origin is down").count(),
        1,
        "{errors:?}"
    );
    assert_eq!(
        errors.iter().filter(|e| *e == shared).count(),
        19,
        "{errors:?}"
    );
    let again = cache.try_get_or_set("k", 60, failing(&runs)).await;
    assert_eq!(again.unwrap_err(), "the origin is down");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "a later caller loads again");
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

/// Callers that waited a whole hard timeout behind a leader whose loader hit it have nothing
/// left: their loaders are not started (each was polled once and dropped at once: 50 loader runs
/// for 50 callers, where the loader is a query to a struggling database). Paused clock.
#[tokio::test(start_paused = true)]
async fn waiters_with_no_time_left_do_not_start_their_loader() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let hard = Duration::from_secs(2);
    let policy = Freshness::new().hard_timeout(hard);
    let runs = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                cache
                    .try_get_or_set("k", 60, move || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<String, Error>>()
                    })
                    .freshness(policy)
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert!(matches!(caller.await.unwrap(), Err(Error::Loader { .. })));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the leader's loader only");
    assert_eq!(started.elapsed(), hard, "one hard timeout in all");
}

/// A caller that waited on a leader whose loader hit the hard timeout loads on its own within
/// what is left of its hard timeout: it waits about one hard timeout in all, not two. On tokio's
/// paused clock (virtual time, nothing measured on a real clock).
#[tokio::test(start_paused = true)]
async fn a_waiter_waits_at_most_one_hard_timeout_in_all() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let hard = Duration::from_secs(10);
    let policy = Freshness::new().hard_timeout(hard);
    let runs = Arc::new(AtomicUsize::new(0));
    let never = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<String, Error>>()
        }
    };
    let started = tokio::time::Instant::now();
    let leader = tokio::spawn({
        let (cache, loader) = (cache.clone(), never(&runs));
        async move {
            cache
                .try_get_or_set("k", 60, loader)
                .freshness(policy)
                .await
        }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let waiter = tokio::spawn({
        let (cache, loader) = (cache.clone(), never(&runs));
        async move {
            let answer = cache
                .try_get_or_set("k", 60, loader)
                .freshness(policy)
                .await;
            (answer, tokio::time::Instant::now())
        }
    });
    assert!(matches!(leader.await.unwrap(), Err(Error::Loader { .. })));
    let (answer, answered_at) = waiter.await.unwrap();
    assert!(matches!(answer, Err(Error::Loader { .. })));
    let waited = answered_at - started;
    assert!(waited < hard + hard / 10, "waited {waited:?}");
}

/// Waiters behind loaders that always panic elect one new leader after another, each within
/// what is left of its own hard timeout: every caller answers within one hard timeout in all.
/// (A new leader had a whole hard timeout of its own: 10 callers behind a loader panicking
/// after 3 s of a 5 s timeout answered one after another, the last after 30 s.) Paused clock.
#[tokio::test(start_paused = true)]
async fn waiters_behind_panicking_loaders_stay_within_one_hard_timeout() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let hard = Duration::from_secs(5);
    let policy = Freshness::new().hard_timeout(hard);
    let runs = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                let answer = cache
                    .get_or_set("k", 60, move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        if true {
                            panic!("the loader always panics (on purpose)");
                        }
                        "never".to_owned()
                    })
                    .freshness(policy)
                    .await;
                (answer, tokio::time::Instant::now())
            })
        })
        .collect();
    let mut reasons = Vec::new();
    for caller in callers {
        let (answer, answered_at) = caller.await.unwrap();
        match answer {
            Err(Error::Loader { reason, .. }) => reasons.push(reason),
            other => panic!("{other:?}"),
        }
        let waited = answered_at - started;
        assert!(waited < hard + hard / 10, "waited {waited:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // The new leader's error names the hard timeout as set, and the part of it spent waiting
    // (it named what was left: "timed out after 2s").
    let led = "timed out after 5s (hard timeout), 3s of it spent waiting for another caller's load";
    assert_eq!(
        reasons.iter().filter(|r| *r == led).count(),
        1,
        "{reasons:?}"
    );
}

/// Waiters behind a loader that panics, with a stale value within `stale_if_error` at hand,
/// answer with it as the panicking caller does: no new leader, one loader run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_behind_a_panicking_loader_answer_with_the_stale_value() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new().stale_if_error(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                cache
                    .get_or_set("k", 60, move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(100 * MS).await;
                        if true {
                            panic!("the loader panics (on purpose)");
                        }
                        "never".to_owned()
                    })
                    .freshness(policy)
                    .await
            })
        })
        .collect();
    for caller in callers {
        let answer = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        assert_eq!(answer.unwrap(), "old");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The hard timeout's error names the timeout as set: "timed out after 300ms (hard timeout)"
/// (it named what was left of it after the few microseconds the caller took to join its flight:
/// "timed out after 299.982604ms").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_timeout_error_names_the_timeout_set() {
    let cache = Cache::new(MemoryCacheRepository::new());
    for n in 0..5 {
        let key = format!("k{n}");
        let error = cache
            .get_or_set(&key, 60, std::future::pending::<String>)
            .hard_timeout(300 * MS)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::Loader { key: k, reason } if *k == key && reason == "timed out after 300ms (hard timeout)"),
            "{error:?}"
        );
    }
}

/// A hard timeout of zero gives the loader no time: it is not started, and the error says so
/// (it said "its hard timeout was spent waiting for another caller's load", with no other
/// caller); a stale value within `stale_if_error` answers instead, as for any hard timeout.
/// Outside a tokio runtime (a plain executor) a zero hard timeout still starts no loader: it
/// needs no timer (the loader ran and answered, 4 of 4; found by a probe, 2026-12-07). A
/// non-zero one cannot be timed there: the loader runs to its end (README).
#[test]
fn a_zero_hard_timeout_runs_no_loader_outside_tokio() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let load = |value: u64, hard: Duration| {
        let runs = Arc::clone(&runs);
        impcache_tests::block_on(
            cache
                .get_or_set("k", 60, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    value
                })
                .hard_timeout(hard),
        )
    };
    let error = load(1, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&error, Error::Loader { key, reason } if key == "k" && reason == "not run: the hard timeout is zero"),
        "{error:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let loaded = load(2, Duration::from_secs(5));
    assert_eq!((loaded.unwrap(), runs.load(Ordering::SeqCst)), (2, 1));
}

#[tokio::test]
async fn a_zero_hard_timeout_runs_no_loader() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let loader = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            "new".to_owned()
        }
    };
    let error = cache
        .get_or_set("k", 60, loader(&runs))
        .hard_timeout(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Loader { key, reason } if key == "k" && reason == "not run: the hard timeout is zero"),
        "{error:?}"
    );
    let policy = Freshness::new().stale_if_error(MINUTE);
    stale_entry(&cache, "s", "old", 100 * MS, policy).await;
    let got: String = cache
        .get_or_set("s", 60, loader(&runs))
        .freshness(policy.hard_timeout(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(got, "old");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// The fail-safe throttle follows tokio's clock, as the loader's timeouts do: on a paused
/// clock, `tokio::time::advance` past it ends it (it followed the real clock, and never ended).
/// The memory repository's TTLs follow the real clock: the value is made stale by a real sleep.
#[tokio::test(start_paused = true)]
async fn the_fail_safe_throttle_follows_tokios_clock() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .fail_safe_throttle(Duration::from_secs(10));
    let _: String = cache
        .get_or_set("k", 100 * MS, || async { "old".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    std::thread::sleep(200 * MS);
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let got = cache
            .try_get_or_set("k", 60, failing_loader(&runs))
            .freshness(policy)
            .await;
        assert_eq!(got.unwrap(), "old");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "throttled after the failure"
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    let got = cache
        .try_get_or_set("k", 60, failing_loader(&runs))
        .freshness(policy)
        .await;
    assert_eq!(got.unwrap(), "old");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "still throttled");
    tokio::time::advance(Duration::from_secs(2)).await;
    let got = cache
        .try_get_or_set("k", 60, failing_loader(&runs))
        .freshness(policy)
        .await;
    assert_eq!(got.unwrap(), "old");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the throttle has passed");
}

/// A failed miss starts no throttle: a throttle is the time a stale value stands in for a failed
/// loader (FusionCache sets it on the stale entry), and a miss had none. A failed miss's entry
/// took a place in the throttle's table (10,000 keys, least recently used out: a probe saw
/// 12,000 failed misses evict a hot stale key's throttle), and throttled a value stored after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_miss_starts_no_throttle() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .fail_safe_throttle(MINUTE);
    let runs = Arc::new(AtomicUsize::new(0));
    let missed = cache
        .try_get_or_set("k", 60, failing_loader(&runs))
        .freshness(policy)
        .await;
    assert!(missed.is_err());
    // Stored by another caller, fresh for 100 ms, then within `stale_if_error`.
    cache.set("k", &"old", MINUTE + 100 * MS).await.unwrap();
    tokio::time::sleep(200 * MS).await;
    let got = cache
        .try_get_or_set("k", 60, failing_loader(&runs))
        .freshness(policy)
        .await;
    assert_eq!(got.unwrap(), "old");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the stale read ran its loader"
    );
}

/// A write of the key (a `set`, a `delete`) made while a load runs after its caller was
/// answered early, with the stale value (by a soft timeout, or by stale-while-revalidate, whose
/// load is a background reload), is not overwritten by that load's store: the loaded value,
/// computed before the write, is not stored. It was, landing after the write (as the README
/// said then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_a_load_answered_early_runs_is_not_overwritten() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policies = [
        Freshness::new()
            .stale_if_error(MINUTE)
            .soft_timeout(20 * MS),
        Freshness::new().stale_while_revalidate(MINUTE),
    ];
    for (name, policy) in ["soft", "swr"].into_iter().zip(policies) {
        for delete in [false, true] {
            let key = &format!("{name}-{}", if delete { "deleted" } else { "set" });
            stale_entry(&cache, key, "old", 100 * MS, policy).await;
            let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
            let got: String = cache
                .get_or_set(key, 60, counted(&runs, &gate, "loaded"))
                .freshness(policy)
                .await
                .unwrap();
            assert_eq!(got, "old");
            until_runs(&runs, 1).await;
            let written = if delete {
                cache.delete(key).await.unwrap();
                None
            } else {
                cache.set(key, &"mine", 60).await.unwrap();
                Some("mine")
            };
            gate.add_permits(1);
            // The loader has returned once its permit is back: its store is sent right then.
            while gate.available_permits() == 0 {
                tokio::time::sleep(MS).await;
            }
            tokio::time::sleep(50 * MS).await;
            let stored = cache.get::<String>(key).await.unwrap();
            assert_eq!(stored.as_deref(), written, "{key}");
        }
    }
}

async fn the_soft_timeout_answers_stale_and_the_loader_still_stores(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .soft_timeout(50 * MS);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let served = tokio::time::timeout(
        HANG,
        cache
            .get_or_set("k", 60, counted(&runs, &gate, "new"))
            .freshness(policy)
            .into_future(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(served, "old", "answered while the loader is held");
    gate.add_permits(1);
    until_stored(&cache, "k", "new").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn the_hard_timeout_gives_up_with_or_without_a_stale_value(backend: Backend) {
    let cache = backend.cache;
    let never = || std::future::pending::<String>();
    let hard = Freshness::new().hard_timeout(50 * MS);
    let failed = tokio::time::timeout(
        HANG,
        cache
            .get_or_set("k", 60, never)
            .freshness(hard)
            .into_future(),
    )
    .await
    .unwrap();
    assert!(
        matches!(&failed, Err(Error::Loader { reason, .. }) if reason.contains("hard timeout")),
        "{failed:?}"
    );
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    let policy = hard.stale_if_error(MINUTE);
    stale_entry(&cache, "s", "old", 100 * MS, policy).await;
    let served = tokio::time::timeout(
        HANG,
        cache
            .get_or_set("s", 60, never)
            .freshness(policy)
            .into_future(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(served, "old");
}

async fn past_the_stale_window_is_a_miss(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new().stale_while_revalidate(100 * MS);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    tokio::time::sleep(150 * MS).await;
    // The entry's TTL (expire + window) is over: gone for any reader.
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    let loaded: String = cache
        .get_or_set("k", 60, || async { "new".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(loaded, "new", "loaded in the foreground");
}

async fn a_panicking_or_dropped_leader_strands_no_one(backend: Backend) {
    let cache = backend.cache;
    // A dropped caller: its load goes on, and the waiter gets its value.
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let first = {
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "v"));
        tokio::spawn(async move { cache.get_or_set("k", 60, loader).await })
    };
    // The first caller leads (its loader has started) before the second joins.
    until_runs(&runs, 1).await;
    let second = {
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "other"));
        tokio::spawn(async move { cache.get_or_set("k", 60, loader).await })
    };
    tokio::time::sleep(20 * MS).await;
    first.abort();
    gate.add_permits(10);
    let got = tokio::time::timeout(HANG, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, "v");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // A panicking loader: its caller gets an error, the next caller loads normally.
    let panicked = cache
        .get_or_set("p", 60, || async {
            if true {
                panic!("loader panics");
            }
            "never".to_owned()
        })
        .await;
    assert!(matches!(&panicked, Err(Error::Loader { reason, .. }) if reason == "panicked"));
    let loaded: String = tokio::time::timeout(
        HANG,
        cache
            .get_or_set("p", 60, || async { "fine".to_owned() })
            .into_future(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(loaded, "fine");
}

/// Waiters behind a loader that panics join the key's flight again: one of them leads the next
/// run and the others get its value, as a panicking `#[cached]` body's waiters do; they do not
/// each load at once (10 runs for 10 callers before).
async fn waiters_behind_a_panicking_loader_elect_one_new_leader(backend: Backend) {
    let cache = backend.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                cache
                    .get_or_set("k", 60, move || async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(100 * MS).await;
                        if run == 0 {
                            panic!("the first run panics (on purpose)");
                        }
                        "v".to_owned()
                    })
                    .stale_if_error(MINUTE)
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for caller in callers {
        answers.push(tokio::time::timeout(HANG, caller).await.unwrap().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let panicked = answers.iter().filter(|answer| answer.is_err()).count();
    assert_eq!(panicked, 1, "{answers:?}");
    assert!(answers.iter().flatten().all(|value| value == "v"));
}

/// Behind a loader that panics with a stale value at hand, the waiters whose own read found the
/// stale value answer with it, and those whose read found none (the key was deleted after the
/// leader's and their reads) join the key's flight again: one of them leads the next run and the
/// others get its value, as behind a panicking loader with no stale value. (They each ran their
/// own loader at once: 8 runs for 8 such waiters; found by a probe.)
async fn waiters_without_a_stale_value_behind_a_panicking_leader_with_one_elect_one_new_leader(
    backend: Backend,
) {
    let cache = backend.cache;
    let policy = Freshness::new().stale_if_error(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let leader = tokio::spawn({
        let (cache, started, gate) = (cache.clone(), Arc::clone(&started), Arc::clone(&gate));
        async move {
            cache
                .get_or_set("k", 60, move || async move {
                    started.add_permits(1);
                    drop(gate.acquire().await);
                    if true {
                        panic!("the leader's loader panics (on purpose)");
                    }
                    "never".to_owned()
                })
                .freshness(policy)
                .await
        }
    });
    drop(tokio::time::timeout(HANG, started.acquire()).await.unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    let waiters = |count: usize| -> Vec<_> {
        (0..count)
            .map(|_| {
                let (cache, loader) = (cache.clone(), counted(&runs, &open, "new"));
                tokio::spawn(
                    async move { cache.get_or_set("k", 60, loader).freshness(policy).await },
                )
            })
            .collect()
    };
    // Waiters that read the stale value, then (the key deleted) waiters that read nothing; each
    // joins the leader's flight while its loader is held.
    let with_stale = waiters(3);
    tokio::time::sleep(50 * MS).await;
    cache.delete("k").await.unwrap();
    let without = waiters(8);
    tokio::time::sleep(50 * MS).await;
    gate.add_permits(1);
    let answer = |task: tokio::task::JoinHandle<Result<String, Error>>| async move {
        tokio::time::timeout(HANG, task).await.unwrap().unwrap()
    };
    assert_eq!(answer(leader).await.unwrap(), "old");
    for waiter in with_stale {
        assert_eq!(answer(waiter).await.unwrap(), "old");
    }
    for waiter in without {
        assert_eq!(answer(waiter).await.unwrap(), "new");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one new leader");
}

async fn early_refresh_reloads_a_fresh_value_in_the_background(backend: Backend) {
    let cache = backend.cache;
    // A gap far longer than the expiry: every read of a fresh value reloads.
    let policy = Freshness::new().early_refresh(Duration::from_secs(3600));
    let first: String = cache
        .get_or_set("k", 60, || async { "old".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(first, "old");
    until_stored(&cache, "k", "old").await;
    // Each read reloads with probability exp(-60 s / 1 h), about 98 %: read until one did.
    tokio::time::timeout(HANG, async {
        loop {
            let served: String = cache
                .get_or_set("k", 60, || async { "new".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            if served == "new" {
                break;
            }
            assert_eq!(served, "old", "the fresh value is served");
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await
    .expect("no early refresh");
}

/// With Redis down, the loader answers every call; nothing fails.
#[tokio::test]
async fn with_the_cache_down_the_loader_answers() {
    let repository = RedisCacheRepository::builder(impcache_tests::NO_SERVER_URL)
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let cache = Cache::new(repository);
    let policy = Freshness::new()
        .stale_while_revalidate(MINUTE)
        .stale_if_error(MINUTE);
    for _ in 0..3 {
        let got: String = tokio::time::timeout(
            HANG,
            cache
                .get_or_set("k", 60, || async { "loaded".to_owned() })
                .freshness(policy)
                .into_future(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, "loaded");
        let tried: Result<u32, Error> = cache.try_get_or_set("n", 60, || async { Ok(7) }).await;
        assert_eq!(tried.unwrap(), 7);
    }
}

/// A repository that keeps the trait's default `get_with_ttl` (no TTL known): every entry reads
/// as fresh, so a policy degrades to a plain `get_or_set`.
#[tokio::test]
async fn a_repository_without_ttls_reads_everything_as_fresh() {
    use impcache_tests::cluster::NamespacedRepository;
    let repository: Arc<dyn CacheRepository> = Arc::new(NamespacedRepository::unique(Arc::new(
        MemoryCacheRepository::new(),
    )));
    let cache = Cache::builder_shared(repository).build();
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let got: String = cache
        .get_or_set("k", 60, || async { "new".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(got, "old");
}

/// Through Sentinel (feature `sentinel`): the read with its TTL goes to the primary the
/// Sentinel names; one case, the group being slow to start.
#[cfg(feature = "sentinel")]
#[tokio::test]
async fn through_sentinel_stale_readers_are_answered_by_one_reload() {
    use impcache_tests::cluster::SentinelGroup;
    let group = SentinelGroup::start();
    let store = Store::sentinel(group.sentinel_url(), HANG);
    stale_readers_are_answered_at_once_by_one_background_reload(Backend::on(store)).await;
    drop(group);
}

/// The policy's settings as methods of the call: `get_or_set(..).stale_while_revalidate(..)` is
/// `.freshness(Freshness::new().stale_while_revalidate(..))`, and likewise on `try_get_or_set`.
#[tokio::test]
async fn policy_settings_on_the_call() {
    let cache = Cache::new(impcache::MemoryCacheRepository::new());
    stale_entry(
        &cache,
        "k",
        "old",
        100 * MS,
        Freshness::new().stale_while_revalidate(MINUTE),
    )
    .await;
    let got: String = cache
        .get_or_set("k", 100 * MS, || async { "new".to_owned() })
        .stale_while_revalidate(MINUTE)
        .stale_if_error(MINUTE)
        .hard_timeout(HANG)
        .await
        .unwrap();
    assert_eq!(got, "old", "served stale while it reloads");
    until_stored(&cache, "k", "new").await;
    // On `try_get_or_set` too: a failing loader is answered with the stale value.
    stale_entry(
        &cache,
        "j",
        "old",
        100 * MS,
        Freshness::new().stale_if_error(MINUTE),
    )
    .await;
    let got: Result<String, String> = cache
        .try_get_or_set("j", 100 * MS, || async { Err("boom".to_owned()) })
        .stale_if_error(MINUTE)
        .soft_timeout(HANG)
        .early_refresh(MS)
        .fail_safe_throttle(MINUTE)
        .lock(impcache::Lock::new())
        .await;
    assert_eq!(got, Ok("old".to_owned()));
    // The throttle set on the call holds: the next call answers stale without a loader run.
    let runs = Arc::new(AtomicUsize::new(0));
    let got = cache
        .try_get_or_set("j", 100 * MS, failing_loader(&runs))
        .stale_if_error(MINUTE)
        .fail_safe_throttle(MINUTE)
        .await;
    assert_eq!(got.unwrap(), "old");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "throttled: no loader run");
}

/// A loader that answers within the soft timeout, a stale value at hand: its answer is the call's
/// (the leader awaited the loader's answer a second time and panicked, "called after complete").
#[tokio::test]
async fn a_loader_faster_than_the_soft_timeout_answers() {
    let cache = Cache::new(impcache::MemoryCacheRepository::new());
    let policy = Freshness::new().stale_if_error(MINUTE).soft_timeout(HANG);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let got: String = cache
        .get_or_set("k", 100 * MS, || async { "new".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(got, "new");
    let failed: Result<String, String> = cache
        .try_get_or_set("k", 60, || async { Err("boom".to_owned()) })
        .freshness(policy)
        .await;
    assert!(failed.is_ok(), "{failed:?}");
}

/// A memory repository with scripted reads and writes: reads fail after `READ_DEADLINE` (as a
/// Redis past its deadline does) when `reads_fail`, and are counted; reads of the key `k` wait
/// for a permit of `read_gate` once a test has set it; writes land after `WRITE_DELAY`, or once
/// `write_gate` lets them, and are counted. Tag invalidations go straight to the memory
/// repository.
#[derive(Debug)]
struct Scripted {
    inner: MemoryCacheRepository,
    reads_fail: bool,
    reads: AtomicUsize,
    read_gate: std::sync::Mutex<Option<Arc<Semaphore>>>,
    write_gate: Option<Semaphore>,
    /// Values written (`set`, once landed).
    writes: AtomicUsize,
}

const READ_DEADLINE: Duration = Duration::from_millis(100);
const WRITE_DELAY: Duration = Duration::from_millis(30);

impl Scripted {
    fn new(reads_fail: bool, write_gate: Option<Semaphore>) -> Arc<Self> {
        Arc::new(Scripted {
            inner: MemoryCacheRepository::new(),
            reads_fail,
            reads: AtomicUsize::new(0),
            read_gate: std::sync::Mutex::new(None),
            write_gate,
            writes: AtomicUsize::new(0),
        })
    }

    fn cache(self: &Arc<Self>) -> Cache {
        let shared: Arc<dyn CacheRepository> = self.clone();
        Cache::builder_shared(shared).build()
    }

    async fn read(&self, key: &str) -> impcache::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let gate = self.read_gate.lock().unwrap().clone();
        if let Some(gate) = gate.filter(|_| key.ends_with(":k")) {
            gate.acquire().await.unwrap().forget();
        }
        if !self.reads_fail {
            return Ok(());
        }
        tokio::time::sleep(READ_DEADLINE).await;
        Err(Error::Timeout {
            operation: "get",
            key: key.to_owned(),
            deadline: READ_DEADLINE,
        })
    }
}

impl CacheRepository for Scripted {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        Box::pin(async move {
            match &self.write_gate {
                Some(gate) => drop(gate.acquire().await),
                None => tokio::time::sleep(WRITE_DELAY).await,
            }
            self.inner.set(key, value, expiry).await?;
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<bool>> {
        self.inner.set_nx(key, value, expiry)
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, bytes::Bytes)],
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        self.inner.set_many(entries, expiry)
    }
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<Option<bytes::Bytes>>> {
        Box::pin(async move {
            self.read(key).await?;
            self.inner.get(key).await
        })
    }
    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<Option<impcache::WithTtl>>> {
        Box::pin(async move {
            self.read(key).await?;
            self.inner.get_with_ttl(key).await
        })
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<Vec<Option<bytes::Bytes>>>> {
        self.inner.get_many(keys)
    }
    fn delete<'a>(&'a self, key: &'a str) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete(key)
    }
    fn delete_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_many(keys)
    }
    fn delete_pattern<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_pattern(pattern)
    }
    // (A tag's invalidation is neither gated nor delayed, nor counted as a read.)
    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: impcache::TagInvalidation,
        at: bytes::Bytes,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        self.inner.mark_tag(key, kind, at)
    }
}

/// With every read failing, a call reads once: a flight of the key that ended during that read
/// (the previous call's store, landing late) does not make it read again, which would wait a
/// second deadline ("an outage costs at most one deadline per call").
#[tokio::test]
async fn a_failed_read_is_not_read_again_when_a_flight_ended_meanwhile() {
    let repository = Scripted::new(true, None);
    let cache = repository.cache();
    let policy = Freshness::new().stale_if_error(MINUTE);
    for call in 1..=3 {
        let got: String = cache
            .get_or_set("k", 60, || async { "loaded".to_owned() })
            .freshness(policy)
            .await
            .unwrap();
        assert_eq!(got, "loaded");
        assert_eq!(repository.reads.load(Ordering::SeqCst), call, "call {call}");
    }
}

/// A stale read during which flights of other keys ended still starts its background reload.
/// (Flights share groups by hash: one of them ending makes the reload look again first, as it
/// may be this key's flight, whose store the read overtook; it is not a reason to give up.)
#[tokio::test]
async fn flights_of_other_keys_ending_during_a_stale_read_do_not_cancel_its_reload() {
    let repository = Scripted::new(false, None);
    let cache = repository.cache();
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let gate = Arc::new(Semaphore::new(0));
    *repository.read_gate.lock().unwrap() = Some(Arc::clone(&gate));
    let runs = Arc::new(AtomicUsize::new(0));
    let reads = repository.reads.load(Ordering::SeqCst);
    let reader = tokio::spawn({
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        async move {
            let get = cache.get_or_set("k", 60, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                "new".to_owned()
            });
            get.freshness(policy).await.unwrap()
        }
    });
    while repository.reads.load(Ordering::SeqCst) == reads {
        tokio::time::sleep(MS).await;
    }
    // 500 keys load and store while the read of `k` is held: about 8 flights end in each of
    // the table's 64 groups, `k`'s among them.
    for n in 0..500 {
        let key = format!("other{n}");
        let got: String = cache
            .get_or_set(&key, 60, || async { "v".to_owned() })
            .await
            .unwrap();
        assert_eq!(got, "v");
    }
    tokio::time::sleep(WRITE_DELAY + 100 * MS).await;
    gate.add_permits(100);
    assert_eq!(reader.await.unwrap(), "old");
    until_runs(&runs, 1).await;
    until_stored(&cache, "k", "new").await;
}

/// The leader of `k`'s flight, read and loading (returned once its loader runs, so that a
/// caller started next is its waiter, not the flight's leader), with the tag `t`: its loader
/// answers 1 once `release` lets it.
async fn tagged_leader(
    repository: &Scripted,
    cache: &Cache,
) -> (tokio::task::JoinHandle<Result<u32, Error>>, Arc<Semaphore>) {
    let (release, running) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let leader = tokio::spawn({
        let (cache, release, running) = (cache.clone(), release.clone(), running.clone());
        async move {
            cache
                .try_get_or_set("k", 60, || async move {
                    running.add_permits(1);
                    drop(release.acquire().await);
                    Ok::<u32, Error>(1)
                })
                .tags(["t"])
                .await
        }
    });
    drop(tokio::time::timeout(HANG, running.acquire()).await);
    assert_eq!(repository.reads.load(Ordering::SeqCst), 1);
    (leader, release)
}

/// Once a second caller has read (a miss) and joined the `tagged_leader`'s flight, invalidates
/// the tag `t` (the leader's value, computed before, does not hold for that waiter: it loads on
/// its own), then lets the leader answer.
async fn invalidate_once_the_waiter_joined(
    repository: &Scripted,
    cache: &Cache,
    leader: tokio::task::JoinHandle<Result<u32, Error>>,
    release: Arc<Semaphore>,
) {
    while repository.reads.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(MS).await;
    }
    // The waiter has read and joins the leader's flight.
    tokio::time::sleep(50 * MS).await;
    cache.invalidate_tag("t").await.unwrap();
    release.add_permits(1);
    let led = tokio::time::timeout(HANG, leader).await.unwrap().unwrap();
    assert_eq!(led.unwrap(), 1);
}

/// A waiter loading on its own (the leader's value was invalidated since it joined) is
/// answered as soon as its loader is done: its store, held here until the end, does not delay
/// the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_loading_on_its_own_is_answered_before_its_store() {
    let repository = Scripted::new(false, Some(Semaphore::new(0)));
    let cache = repository.cache();
    let (leader, release) = tagged_leader(&repository, &cache).await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.try_get_or_set("k", 60, || async { Ok(7) }).await }
    });
    invalidate_once_the_waiter_joined(&repository, &cache, leader, release).await;
    let answered: Result<u32, Error> = tokio::time::timeout(HANG, waiter)
        .await
        .expect("the waiter's answer waited for its store")
        .unwrap();
    assert_eq!(answered.unwrap(), 7);
    // The leader's store first (queued first), then the waiter's.
    let gate = repository.write_gate.as_ref().unwrap();
    gate.add_permits(1);
    tokio::time::timeout(HANG, async {
        while repository.writes.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .expect("the leader's value was never stored");
    gate.add_permits(1);
    tokio::time::timeout(HANG, async {
        while cache.get::<u32>("k").await.unwrap() != Some(7) {
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await
    .expect("the waiter's value was never stored");
}

/// A waiter loading on its own (the leader's value was invalidated since it joined) and
/// dropped before its answer stops its loader: no flight holds that load for anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_waiter_loading_on_its_own_stops_its_loader() {
    let repository = Scripted::new(false, None);
    let cache = repository.cache();
    let (leader, release) = tagged_leader(&repository, &cache).await;
    let (started, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let finished = Arc::new(AtomicUsize::new(0));
    let waiter = tokio::spawn({
        let (cache, started, gate, finished) = (
            cache.clone(),
            started.clone(),
            gate.clone(),
            finished.clone(),
        );
        async move {
            cache
                .try_get_or_set("k", 60, || async move {
                    started.add_permits(1);
                    drop(gate.acquire().await);
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, Error>(7)
                })
                .await
        }
    });
    invalidate_once_the_waiter_joined(&repository, &cache, leader, release).await;
    drop(tokio::time::timeout(HANG, started.acquire()).await.unwrap());
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    tokio::time::sleep(100 * MS).await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the dropped waiter's loader ran on"
    );
}

/// How long the throttle tests throttle: long enough that the calls right after a failure are
/// within it on a loaded machine.
const THROTTLE: Duration = Duration::from_secs(2);

/// A loader counting its runs in `runs` and failing.
fn failing_loader(
    runs: &Arc<AtomicUsize>,
) -> impl FnOnce() -> std::future::Ready<Result<String, Error>> + Send + 'static {
    let runs = Arc::clone(runs);
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(Error::Loader {
            key: "k".into(),
            reason: "the origin is down".into(),
        }))
    }
}

/// FusionCache's fail-safe throttle: once the loader failed (the stale value answering), the
/// stale value answers the key's next calls without a loader run, until the throttle has passed;
/// then the loader runs again. A miss is not throttled.
async fn the_fail_safe_throttle_answers_stale_without_the_loader(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .fail_safe_throttle(THROTTLE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let stale_before = cache.stats().stale;
    for _ in 0..5 {
        let served = cache.try_get_or_set("k", 60, failing_loader(&runs));
        assert_eq!(served.freshness(policy).await.unwrap(), "old");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one loader run, then throttled"
    );
    assert_eq!(
        cache.stats().stale - stale_before,
        5,
        "every stale answer counted"
    );
    // The same key without the throttle in its policy loads (and fails) again.
    let unthrottled = Freshness::new().stale_if_error(MINUTE);
    let served = cache.try_get_or_set("k", 60, failing_loader(&runs));
    assert_eq!(served.freshness(unthrottled).await.unwrap(), "old");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // A miss always loads.
    let absent = cache.try_get_or_set("absent", 60, failing_loader(&runs));
    assert!(absent.freshness(policy).await.is_err());
    let absent = cache.try_get_or_set("absent", 60, failing_loader(&runs));
    assert!(absent.freshness(policy).await.is_err());
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    // Past the throttle the loader runs again, and its value answers.
    tokio::time::sleep(THROTTLE + 100 * MS).await;
    let loaded: String = cache
        .get_or_set("k", 60, || async { "new".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(loaded, "new");
}

/// A throttle belongs to its repository: caches built one after another, each dropped before
/// the next (whose repository may be allocated where the last one was: flight keys name
/// repositories by address), inherit none of the throttles of those before them.
#[tokio::test]
async fn a_new_repository_at_a_freed_address_inherits_no_throttle() {
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .fail_safe_throttle(THROTTLE);
    let runs = Arc::new(AtomicUsize::new(0));
    for cache in 1..=10 {
        let built = Cache::new(MemoryCacheRepository::new());
        stale_entry(&built, "k", "old", 100 * MS, policy).await;
        let served = built.try_get_or_set("k", 60, failing_loader(&runs));
        assert_eq!(served.freshness(policy).await.unwrap(), "old");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            cache,
            "cache {cache}'s loader ran"
        );
    }
}

/// A loader closure that panics before it returns its future is a panicking loader like any
/// other: its caller gets `Error::Loader` "panicked" (it got "cancelled (its runtime shut
/// down)"), its waiters are answered, the fail-safe throttle starts, and the key loads next time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_panicking_before_its_future_is_a_panic() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .fail_safe_throttle(THROTTLE);
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |cache: Cache, runs: Arc<AtomicUsize>| async move {
        let load = cache.try_get_or_set("k", 60, move || {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("before its future (on purpose)");
            }
            async { Ok::<_, Error>("loaded".to_owned()) }
        });
        load.freshness(policy).await
    };
    let callers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(call(cache.clone(), Arc::clone(&runs))))
        .collect();
    let mut errors = Vec::new();
    for caller in callers {
        let answered = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        if let Err(error) = answered {
            errors.push(error.to_string());
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("panicked"), "{errors:?}");
    // A stale value and the throttle: the stale value answers without the loader.
    stale_entry(&cache, "s", "old", 100 * MS, policy).await;
    let load = cache.try_get_or_set("s", 60, || -> std::future::Ready<Result<String, Error>> {
        panic!("before its future (on purpose)")
    });
    assert_eq!(load.freshness(policy).await.unwrap(), "old");
    let throttled = cache.try_get_or_set("s", 60, || async { Ok::<_, Error>("new".to_owned()) });
    assert_eq!(throttled.freshness(policy).await.unwrap(), "old");
}

/// A value whose `Serialize` panics answers its caller and is not stored: an encoding error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_whose_serialize_panics_answers_unstored() {
    #[derive(Debug, serde::Deserialize)]
    struct Unwritable(u32);
    impl serde::Serialize for Unwritable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("Serialize panics (on purpose)")
        }
    }
    let cache = Cache::new(MemoryCacheRepository::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                let load = cache.get_or_set("k", 60, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(20 * MS).await;
                    Unwritable(7)
                });
                load.freshness(Freshness::new()).await
            })
        })
        .collect();
    for caller in callers {
        let answered = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        assert_eq!(answered.unwrap().0, 7);
    }
    assert_eq!(cache.get_raw("k").await.unwrap(), None);
}

/// A waiter is bounded by the hard timeout even when its leader's task cannot run: the leader
/// is on a one-thread runtime that is kept but no longer driven (its caller gave up with its
/// own timeout), and the waiter on another runtime used to wait for it forever.
#[test]
fn a_waiter_is_bounded_by_the_hard_timeout_when_its_leaders_runtime_is_idle() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new().hard_timeout(Duration::from_millis(300));
    let idle = impcache_tests::current_thread_runtime();
    let gave_up = idle.block_on(async {
        let load = cache.get_or_set("k", 60, || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            "from the idle runtime".to_owned()
        });
        tokio::time::timeout(20 * MS, load.freshness(policy).into_future()).await
    });
    assert!(gave_up.is_err());
    let answered = impcache_tests::multi_thread_runtime().block_on(async {
        let load = cache.get_or_set("k", 60, || async { "here".to_owned() });
        tokio::time::timeout(HANG, load.freshness(policy).into_future()).await
    });
    drop(idle);
    // Answered (by the hard timeout's error: no time is left to load), not left waiting.
    assert!(answered.is_ok(), "still waiting after {HANG:?}");
}

/// Waits (at most [`HANG`]) until `runs` counts `n` loader runs.
async fn until_runs(runs: &AtomicUsize, n: usize) {
    tokio::time::timeout(HANG, async {
        while runs.load(Ordering::SeqCst) < n {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never {n} loader runs"));
}

/// Under stale-while-revalidate, a background reload that failed throttles the next ones: the
/// stale value answers, and no reload starts until the throttle has passed.
async fn a_failed_background_reload_throttles_the_next_ones(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new()
        .stale_while_revalidate(MINUTE)
        .fail_safe_throttle(THROTTLE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let served = cache.try_get_or_set("k", 60, failing_loader(&runs));
    assert_eq!(served.freshness(policy).await.unwrap(), "old");
    // The background reload runs, fails, and starts the throttle right after.
    tokio::time::timeout(HANG, async {
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(100 * MS).await;
    for _ in 0..5 {
        let served = cache.try_get_or_set("k", 60, failing_loader(&runs));
        assert_eq!(served.freshness(policy).await.unwrap(), "old");
    }
    tokio::time::sleep(100 * MS).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no reload while throttled");
    // Past the throttle a stale read starts a reload again.
    tokio::time::sleep(THROTTLE).await;
    let served = cache.try_get_or_set("k", 60, failing_loader(&runs));
    assert_eq!(served.freshness(policy).await.unwrap(), "old");
    until_runs(&runs, 2).await;
}

/// An early refresh is a background reload: one that failed throttles the next ones, as a stale
/// read's does (every fresh read started one: 80 failing loader runs in 100 reads).
async fn a_failed_early_refresh_throttles_the_next_ones(backend: Backend) {
    let cache = backend.cache;
    // A gap far longer than the value's life: every fresh read is due for an early refresh.
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .early_refresh(MINUTE)
        .fail_safe_throttle(THROTTLE);
    let _: String = cache
        .get_or_set("k", 10, || async { "old".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    // Each read refreshes with probability exp(-10 / 60): reads until one has.
    for _ in 0..500 {
        if runs.load(Ordering::SeqCst) > 0 {
            break;
        }
        let served = cache.try_get_or_set("k", 10, failing_loader(&runs));
        assert_eq!(served.freshness(policy).await.unwrap(), "old");
        tokio::time::sleep(2 * MS).await;
    }
    until_runs(&runs, 1).await;
    tokio::time::sleep(100 * MS).await;
    for _ in 0..20 {
        let served = cache.try_get_or_set("k", 10, failing_loader(&runs));
        assert_eq!(served.freshness(policy).await.unwrap(), "old");
        tokio::time::sleep(2 * MS).await;
    }
    tokio::time::sleep(100 * MS).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no early refresh while throttled"
    );
}

/// A load that succeeds ends the key's throttle (as in FusionCache, where the factory's value
/// replaces the throttled entry): once that value is stale, it is reloaded, not served as
/// throttled for what is left of the throttle.
async fn a_successful_load_ends_the_throttle(backend: Backend) {
    let cache = backend.cache;
    let policy = Freshness::new()
        .stale_if_error(MINUTE)
        .fail_safe_throttle(MINUTE);
    stale_entry(&cache, "k", "old", 100 * MS, policy).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let served = cache.try_get_or_set("k", 60, failing_loader(&runs));
    assert_eq!(served.freshness(policy).await.unwrap(), "old", "throttled");
    // A miss loads, and succeeds.
    cache.delete("k").await.unwrap();
    stale_entry(&cache, "k", "new", 100 * MS, policy).await;
    let reloaded: String = cache
        .get_or_set("k", 60, || async { "newer".to_owned() })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(
        reloaded, "newer",
        "the stale value is reloaded, not throttled"
    );
}
