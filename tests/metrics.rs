//! Observability of `Cache` (issue 17): the metrics recorded through the `metrics` facade and the
//! counters of `Cache::stats()` for a scripted sequence of hits, misses and errors, on the memory
//! repository and on Redis (a throwaway redis-server, then killed for the errors); and the
//! operation spans, with keys only when asked for.
//!
//! Each test installs its own recorder for its thread only (`set_default_local_recorder`) and runs
//! a current-thread runtime on that thread, so tests running in parallel do not see each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impcache::{Cache, CacheRepository, CacheStats, MemoryCacheRepository, RedisCacheRepository};
use impcache_tests::loader::cycle_through_the_lock;
use impcache_tests::logs::Logs;
use impcache_tests::{answered_locally, current_thread_runtime, RedisServer};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;

/// A recorded metric: name, sorted labels, value.
type Metric = (String, Vec<(String, String)>, DebugValue);

/// What a recorder holds.
struct Recorded(Vec<Metric>);

impl Recorded {
    /// Everything recorded since the last snapshot (a snapshot drains the debugging recorder).
    fn take(snapshotter: &Snapshotter) -> Recorded {
        let all = snapshotter.snapshot().into_vec().into_iter();
        Recorded(
            all.map(|(key, _, _, value)| {
                let key = key.key();
                let mut labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                (key.name().to_owned(), labels, value)
            })
            .collect(),
        )
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut expected: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        expected.sort();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == expected)
            .map(|(_, _, value)| value)
    }

    /// The counter `name` with exactly `labels` (0 when never incremented).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    /// How many durations the histogram of `operation` holds.
    fn timings(&self, operation: &str) -> usize {
        match self.find(
            "impcache_operation_duration_seconds",
            &[("operation", operation)],
        ) {
            Some(DebugValue::Histogram(times)) => times.len(),
            _ => 0,
        }
    }

    fn ops(&self, operation: &str, outcome: &str) -> u64 {
        self.counter(
            "impcache_operations_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    }

    fn errors(&self, operation: &str, kind: &str) -> u64 {
        self.counter(
            "impcache_errors_total",
            &[("operation", operation), ("kind", kind)],
        )
    }
}

/// The same script on any repository: 2 hits, 3 misses, 2 errors (a decode, a key too long),
/// and the writes and deletes around them. Returns the stats afterwards.
async fn script(repository: Arc<dyn CacheRepository>, snapshotter: &Snapshotter) -> Cache {
    let cache = Cache::builder_shared(repository)
        .key_prefix("metrics-test")
        .max_key_bytes(16)
        .build();
    cache.set("a", &json!({"n": 1}), 60).await.unwrap(); // {"n":1}: 7 bytes
    assert!(cache.get::<serde_json::Value>("a").await.unwrap().is_some()); // hit
    assert!(cache.get::<serde_json::Value>("b").await.unwrap().is_none()); // miss
    let many: Vec<Option<serde_json::Value>> = cache.get_many(["a", "b", "c"]).await.unwrap(); // 1 hit, 2 misses
    assert_eq!(many.iter().filter(|v| v.is_some()).count(), 1);
    assert!(cache.get::<i64>("a").await.is_err()); // decode error
    assert!(cache.get::<i64>("a-key-longer-than-16").await.is_err()); // invalid key
    assert_eq!(cache.delete("a").await.unwrap(), 1);

    let recorded = Recorded::take(snapshotter);
    assert_eq!(recorded.ops("set", "ok"), 1);
    assert_eq!(recorded.ops("get", "hit"), 1);
    assert_eq!(recorded.ops("get", "miss"), 1);
    assert_eq!(recorded.ops("get", "error"), 2);
    assert_eq!(recorded.ops("get_many", "ok"), 1);
    assert_eq!(recorded.ops("delete", "ok"), 1);
    assert_eq!(recorded.errors("get", "decode"), 1);
    assert_eq!(recorded.errors("get", "invalid_key"), 1);
    let lookups = |outcome| recorded.counter("impcache_lookups_total", &[("outcome", outcome)]);
    // The decode error read its key but is an error, not a hit.
    assert_eq!((lookups("hit"), lookups("miss")), (2, 3));
    assert_eq!(recorded.counter("impcache_bytes_written_total", &[]), 7);
    assert_eq!(recorded.counter("impcache_bytes_read_total", &[]), 14);
    assert_eq!(recorded.timings("get"), 4);
    assert_eq!(recorded.timings("set"), 1);
    assert_eq!(
        (
            cache.stats().hits,
            cache.stats().misses,
            cache.stats().errors
        ),
        (2, 3, 2)
    );
    cache
}

#[test]
fn a_scripted_sequence_on_the_memory_repository() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = script(Arc::new(MemoryCacheRepository::new()), &snapshotter).await;
        // Clones and other versions count into the same stats.
        cache.clone().get::<i64>("x").await.unwrap();
        cache.with_version(2).get::<i64>("x").await.unwrap();
        assert_eq!(cache.stats().misses, 5);
        let recorded = Recorded::take(&snapshotter);
        assert_eq!(recorded.ops("get", "miss"), 2);
        // A cache built separately over the same repository counts on its own.
        let other = Cache::builder_shared(Arc::clone(cache.repository())).build();
        assert_eq!(other.stats(), CacheStats::default());
    });
}

#[test]
fn a_scripted_sequence_on_redis_then_errors_when_it_is_gone() {
    let mut server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let repository = RedisCacheRepository::new(&server.url()).unwrap();
        let cache = script(Arc::new(repository), &snapshotter).await;

        server.kill();
        for _ in 0..2 {
            let error = cache.get::<i64>("a").await.unwrap_err();
            assert!(error.is_backend_failure(), "{error}");
        }
        let recorded = Recorded::take(&snapshotter);
        let backend_errors: u64 = ["unavailable", "timeout", "circuit_open"]
            .into_iter()
            .map(|kind| recorded.errors("get", kind))
            .sum();
        assert_eq!(backend_errors, 2);
        assert_eq!(recorded.ops("get", "error"), 2);
        assert_eq!(cache.stats().errors, 4);
        assert_eq!(recorded.timings("get"), 2);
    });
}

#[test]
fn without_a_recorder_only_the_stats_count() {
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        cache.set("a", &1, 60).await.unwrap();
        cache.get::<i64>("a").await.unwrap();
        cache.get::<i64>("b").await.unwrap();
        assert_eq!(cache.stats().hit_ratio(), Some(0.5));
    });
}

/// What a `tracing_subscriber::fmt` subscriber at `level` writes (closed spans included, with
/// their fields) while `body` runs on a current-thread runtime.
fn logged(level: tracing::Level, body: impl std::future::Future<Output = ()>) -> String {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    impcache_tests::logs::keep_callsites_interested();
    tracing::subscriber::with_default(subscriber, || {
        // Interest computed with this subscriber in place: another test's subscriber, made or
        // dropped alongside, may have left a callsite switched off (tracing's interest and max
        // level are process-wide).
        tracing::callsite::rebuild_interest_cache();
        current_thread_runtime().block_on(body)
    });
    logs.text()
}

/// [`logged`] at `DEBUG` of `body`, run again (three times at most) while a line of `expected`
/// is missing: a subscriber of a test running alongside can still switch this test's spans off
/// for a moment.
fn logged_with_all<F, Fut>(expected: &[&str], body: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut logs = String::new();
    for _ in 0..3 {
        logs = logged(tracing::Level::DEBUG, body());
        if expected.iter().all(|line| logs.contains(line)) {
            break;
        }
    }
    logs
}

/// The closed `cache_operation` spans (with their fields) of `set`, a hit and a miss.
fn spans_of_a_hit_and_a_miss(record_keys: bool) -> String {
    let logs = logged(tracing::Level::DEBUG, async {
        let cache = Cache::builder(MemoryCacheRepository::new())
            .record_keys(record_keys)
            .build();
        cache.set("user:1", &1, 60).await.unwrap();
        cache.get::<i64>("user:1").await.unwrap();
        cache.get::<i64>("user:2").await.unwrap();
        cache.get::<String>("user:1").await.unwrap_err();
    });
    logs
}

#[test]
fn each_operation_is_a_debug_span_with_its_outcome_and_no_key_by_default() {
    let logs = spans_of_a_hit_and_a_miss(false);
    for fields in [
        r#"cache_operation{operation="set" outcome="ok" tier="remote"}"#,
        r#"cache_operation{operation="get" outcome="hit" tier="remote"}"#,
        r#"cache_operation{operation="get" outcome="miss" tier="remote"}"#,
        r#"cache_operation{operation="get" outcome="error" tier="remote"}"#,
    ] {
        assert!(logs.contains(fields), "{fields} in\n{logs}");
    }
    assert!(
        logs.contains(": impcache: close"),
        "target impcache:\n{logs}"
    );
    // The decode error is an event inside its span, without its message (which names the key).
    assert!(
        logs.contains("cache operation failed kind=\"decode\"\n"),
        "{logs}"
    );
    assert!(!logs.contains("user:"), "no key by default:\n{logs}");
}

#[test]
fn keys_are_on_the_spans_only_when_the_cache_records_them() {
    let logs = spans_of_a_hit_and_a_miss(true);
    assert!(
        logs.contains(
            r#"cache_operation{operation="get" key="user:2" outcome="miss" tier="remote"}"#
        ) || logs.contains(
            r#"cache_operation{operation="get" outcome="miss" key="user:2" tier="remote"}"#
        ),
        "{logs}"
    );
    assert!(logs.contains("error=cannot decode the value stored at key `cache:1:user:1`"));
}

#[impcache::cached(cache = cache, expire = 60, skip(cache))]
async fn square(cache: &Cache, n: u64) -> u64 {
    tokio::task::yield_now().await;
    n * n
}

#[test]
fn cached_calls_count_by_function_and_outcome_and_their_hits_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::builder(MemoryCacheRepository::new())
            .max_key_bytes(20)
            .build();
        assert_eq!(square(&cache, 3).await, 9); // miss
        assert_eq!(square(&cache, 3).await, 9); // hit
        assert_eq!(square(&cache, 3).await, 9); // hit
                                                // The key ("metrics::square:" and the number) is too long: the cache fails, the body runs.
        assert_eq!(square(&cache, 12345).await, 12345 * 12345); // bypass
        let recorded = Recorded::take(&snapshotter);
        let calls = |outcome| {
            recorded.counter(
                "impcache_cached_calls_total",
                &[("function", "metrics::square"), ("outcome", outcome)],
            )
        };
        assert_eq!((calls("hit"), calls("miss"), calls("bypass")), (2, 1, 1));
        // The cache's own operations are counted as before: 3 GETs that reached the repository
        // (1 miss, 2 hits), one failed, the store.
        assert_eq!(recorded.ops("get", "hit"), 2);
        assert_eq!(recorded.ops("get", "miss"), 1);
        assert_eq!(recorded.ops("get", "error"), 1);
        assert_eq!(recorded.ops("set_nx", "ok"), 1);
        assert_eq!((cache.stats().hits, cache.stats().misses), (2, 1));

        // Two callers of one key together: the second waits for the first's run.
        let (a, b) = tokio::join!(square(&cache, 4), square(&cache, 4));
        assert_eq!((a, b), (16, 16));
        let recorded = Recorded::take(&snapshotter);
        let function = [("function", "metrics::square")];
        assert_eq!(
            recorded.counter("impcache_single_flight_waits_total", &function),
            1
        );
        assert!(matches!(
            recorded.find("impcache_single_flight_wait_duration_seconds", &function),
            Some(DebugValue::Histogram(times)) if times.len() == 1
        ));
        assert_eq!(
            recorded.counter(
                "impcache_cached_calls_total",
                &[("function", "metrics::square"), ("outcome", "miss")]
            ),
            2
        );
    });
}

/// How many times `abandoned`'s body ran.
static ABANDONED_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A body whose first run never ends (its caller gives up on it); the next ones take 100 ms.
#[impcache::cached(cache = cache, expire = 60, skip(cache))]
async fn abandoned(cache: &Cache, n: u64) -> u64 {
    if ABANDONED_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    n
}

/// A probe's find: the waiters of a leader dropped by its caller (a `timeout` around it) join
/// the key's flight again, one leads, the others wait once more. Each is one wait, timed from
/// its first to its last (it counted a wait per wait: 7 for 4 callers), and one lookup, its own
/// `GET` (the new leader's second look counted another: 6 misses for 5 calls).
#[test]
fn waiters_of_a_cancelled_leader_count_one_wait_and_one_lookup_each() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        // The leader's caller gives up on it (drops it, as a timeout around it does) 25 ms after
        // the waiters joined. A 30 ms timeout from the leader's start raced their spawn after a
        // 5 ms sleep: on a loaded machine they joined late (a 16 ms wait, 11 of 100 runs) or
        // after the leader was gone (3 waits).
        let (give_up, given_up) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                tokio::select! {
                    n = abandoned(&cache, 9) => Ok(n),
                    _ = given_up => Err("given up"),
                }
            })
        };
        // One turn of this runtime (its only thread): the leader runs its body (a memory
        // repository answers at once).
        tokio::task::yield_now().await;
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { abandoned(&cache, 9).await })
            })
            .collect();
        // Another: each waiter has joined the leader's flight.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        give_up.send(()).unwrap();
        assert!(leader.await.unwrap().is_err());
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), 9);
        }
        let recorded = Recorded::take(&snapshotter);
        let function = [("function", "metrics::abandoned")];
        assert_eq!(
            recorded.counter("impcache_single_flight_waits_total", &function),
            4
        );
        // One duration per caller, its whole wait: the new leader's 25 ms, the others' 25 ms
        // and then the new leader's run (100 ms).
        let Some(DebugValue::Histogram(waits)) =
            recorded.find("impcache_single_flight_wait_duration_seconds", &function)
        else {
            panic!("no wait durations");
        };
        let mut waits: Vec<f64> = waits.iter().map(|wait| wait.into_inner()).collect();
        waits.sort_by(f64::total_cmp);
        assert_eq!(waits.len(), 4, "{waits:?}");
        // Lower bounds and an order only: a busy machine may stretch any wait.
        assert!(waits[0] >= 0.02, "{waits:?}");
        assert!(waits[1..].iter().all(|&wait| wait >= 0.1), "{waits:?}");
        assert!(
            waits[0] < waits[1],
            "the new leader waited only until the first caller gave up: {waits:?}"
        );
        // The leader's call, dropped, is not counted; the 4 others are misses.
        assert_eq!(
            recorded.counter(
                "impcache_cached_calls_total",
                &[("function", "metrics::abandoned"), ("outcome", "miss")]
            ),
            4
        );
        let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
        assert_eq!((lookups("hit"), lookups("miss")), (0, 5));
        assert_eq!((cache.stats().hits, cache.stats().misses), (0, 5));
        // The second look is a `get` all the same.
        assert_eq!(recorded.ops("get", "miss"), 6);
    });
}

tokio::task_local! {
    /// Which caller runs a body.
    static CALLER: usize;
}

/// The callers that ran `relayed`'s body, in order.
static RELAYED_RUNNERS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

#[impcache::cached(cache = cache, expire = 60, skip(cache))]
async fn relayed(cache: &Cache, n: u64) -> u64 {
    RELAYED_RUNNERS.lock().unwrap().push(CALLER.get());
    tokio::time::sleep(Duration::from_millis(300)).await;
    n
}

/// A probe's find: a waiter that becomes the new leader and is then dropped by its caller too
/// counted a wait (when elected), though a dropped call counts none (4 waits for 3 answers).
#[test]
fn a_new_leader_dropped_by_its_caller_counts_no_wait() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let caller = |id: usize| {
            let cache = cache.clone();
            tokio::spawn(CALLER.scope(id, async move { relayed(&cache, 1).await }))
        };
        // The first leader's caller gives up on it (drops it, as a timeout around it does) once
        // the waiters joined: a 30 ms timeout raced their spawn after a 5 ms sleep, as in
        // `waiters_of_a_cancelled_leader_count_one_wait_and_one_lookup_each` (a flake hunt).
        let (give_up, given_up) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let cache = cache.clone();
            tokio::spawn(CALLER.scope(0, async move {
                tokio::select! {
                    n = relayed(&cache, 1) => Ok(n),
                    _ = given_up => Err("given up"),
                }
            }))
        };
        // One turn of this runtime (its only thread): the leader starts its body.
        tokio::task::yield_now().await;
        let mut waiters: Vec<_> = (1..5).map(|id| Some(caller(id))).collect();
        // Another: each waiter has joined the leader's flight.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        give_up.send(()).unwrap();
        assert!(leader.await.unwrap().is_err());
        // The next leader's caller drops it 50 ms into its run.
        let next = loop {
            if let Some(&id) = RELAYED_RUNNERS.lock().unwrap().get(1) {
                break id;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let dropped = waiters[next - 1].take().unwrap();
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        for waiter in waiters.into_iter().flatten() {
            assert_eq!(waiter.await.unwrap(), 1);
        }
        assert_eq!(RELAYED_RUNNERS.lock().unwrap().len(), 3);
        let recorded = Recorded::take(&snapshotter);
        let function = [("function", "metrics::relayed")];
        assert_eq!(
            recorded.counter("impcache_single_flight_waits_total", &function),
            3
        );
        assert_eq!(
            recorded.counter(
                "impcache_cached_calls_total",
                &[("function", "metrics::relayed"), ("outcome", "miss")]
            ),
            3
        );
    });
}

/// How many times `fresh_panicky`'s body ran.
static FRESH_PANICKY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A function with a freshness option whose first run panics after 50 ms.
#[impcache::cached(cache = cache, expire = 60, hard_timeout = Duration::from_secs(5), skip(cache))]
async fn fresh_panicky(cache: &Cache, n: u64) -> Option<u64> {
    let first = FRESH_PANICKY_RUNS.fetch_add(1, Ordering::SeqCst) == 0;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!first, "the first run panics");
    Some(n)
}

/// A probe's find: with a freshness option, the waiters of a panicking leader counted as the
/// plain path's do not: the new leader's wait was lost (3 waits for 4 waiting callers), each
/// wait was timed from its last join (50 ms for those that waited for both runs), and the
/// caller whose body panicked counted a `miss` (5 misses for 4 answers).
#[test]
fn waiters_of_a_panicking_leader_with_a_freshness_option_count_one_wait_each() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { fresh_panicky(&cache, 4).await })
            })
            .collect();
        let mut answered = 0;
        for caller in callers {
            if let Ok(answer) = caller.await {
                assert_eq!(answer, Some(4));
                answered += 1;
            }
        }
        assert_eq!(
            (answered, FRESH_PANICKY_RUNS.load(Ordering::SeqCst)),
            (4, 2)
        );
        let recorded = Recorded::take(&snapshotter);
        let function = [("function", "metrics::fresh_panicky")];
        assert_eq!(
            recorded.counter("impcache_single_flight_waits_total", &function),
            4
        );
        // The new leader waited for the first run (50 ms), the others for both (100 ms).
        let Some(DebugValue::Histogram(waits)) =
            recorded.find("impcache_single_flight_wait_duration_seconds", &function)
        else {
            panic!("no wait durations");
        };
        let mut waits: Vec<f64> = waits.iter().map(|wait| wait.into_inner()).collect();
        waits.sort_by(f64::total_cmp);
        assert_eq!(waits.len(), 4, "{waits:?}");
        // Lower bounds and an order only: a busy machine may stretch any wait.
        assert!(waits[0] >= 0.04, "{waits:?}");
        assert!(waits[1..].iter().all(|&wait| wait >= 0.09), "{waits:?}");
        assert!(
            waits[0] < waits[1],
            "the new leader waited for one run only: {waits:?}"
        );
        let calls = |outcome| {
            recorded.counter(
                "impcache_cached_calls_total",
                &[("function", "metrics::fresh_panicky"), ("outcome", outcome)],
            )
        };
        assert_eq!((calls("hit"), calls("miss"), calls("bypass")), (0, 4, 0));
    });
}

/// `square` with a freshness option (its calls go through `get_or_set`).
#[impcache::cached(cache = cache, expire = Duration::from_millis(300), stale_while_revalidate = 60, skip(cache))]
async fn fresh_square(cache: &Cache, n: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    n * n
}

/// The same counts for a function with a freshness option: a caller that waited for another
/// caller's run is a `miss` and a single-flight wait (it was counted a `hit`), an outage is a
/// `bypass` (it was a `miss`), and a stale answer is a `hit` whatever the background reload's
/// timing (on a multi-thread runtime it was `hit` or `miss` at random).
#[test]
fn cached_calls_with_a_freshness_option_count_as_the_plain_ones() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let cache = Cache::new(MemoryCacheRepository::new());
    let calls = |recorded: &Recorded, outcome| {
        recorded.counter(
            "impcache_cached_calls_total",
            &[("function", "metrics::fresh_square"), ("outcome", outcome)],
        )
    };
    // The recorder is this thread's: on a one-thread runtime, spawned callers count here.
    current_thread_runtime().block_on(async {
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { fresh_square(&cache, 5).await })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 25);
        }
        let recorded = Recorded::take(&snapshotter);
        let function = [("function", "metrics::fresh_square")];
        assert_eq!((calls(&recorded, "hit"), calls(&recorded, "miss")), (0, 20));
        assert_eq!(
            recorded.counter("impcache_single_flight_waits_total", &function),
            19
        );
    });
    // Stale answers (each starting or finding a background reload, which runs on a worker
    // thread): hits, every one. The calls are made on this thread.
    impcache_tests::multi_thread_runtime().block_on(async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        for _ in 0..30 {
            assert_eq!(fresh_square(&cache, 5).await, 25);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let recorded = Recorded::take(&snapshotter);
        assert_eq!((calls(&recorded, "hit"), calls(&recorded, "miss")), (30, 0));
        // The cache down: bypasses.
        let repository = RedisCacheRepository::builder(impcache_tests::NO_SERVER_URL)
            .deadline(Duration::from_millis(200))
            .build()
            .unwrap();
        let down = Cache::new(repository);
        for n in 0..3 {
            assert_eq!(fresh_square(&down, n).await, n * n);
        }
        let recorded = Recorded::take(&snapshotter);
        assert_eq!(
            (calls(&recorded, "miss"), calls(&recorded, "bypass")),
            (0, 3)
        );
    });
}

#[test]
fn cached_hits_and_misses_are_trace_events_of_target_impcache_cached() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    impcache_tests::logs::keep_callsites_interested();
    tracing::subscriber::with_default(subscriber, || {
        current_thread_runtime().block_on(async {
            let cache = Cache::builder(MemoryCacheRepository::new())
                .max_key_bytes(20)
                .build();
            square(&cache, 5).await;
            square(&cache, 5).await;
            square(&cache, 12345).await;
        });
    });
    let logs = logs.text();
    for outcome in ["miss", "hit", "bypass"] {
        let event = format!(
            "TRACE impcache::cached: #[cached] call function=\"metrics::square\" outcome=\"{outcome}\""
        );
        assert!(logs.contains(&event), "{event} in\n{logs}");
    }
    // The warning of the failed lookup has the same target, not the runtime's module (at
    // `DEBUG` when the call site warned less than a second ago, in another test).
    assert!(
        logs.contains(" impcache::cached: #[cached]: cache operation failed"),
        "{logs}"
    );
    assert!(!logs.contains("memoize"), "{logs}");
}

#[impcache::cached(cache = cache, expire = 60, skip(cache))]
async fn plain_logged(cache: &Cache, id: u64) -> u64 {
    tracing::info!("plain body ran for {id}");
    id
}

#[impcache::cached(cache = cache, expire = 60, skip(cache), tags = ["id:{id}"])]
async fn tagged_logged(cache: &Cache, id: u64) -> u64 {
    tracing::info!("tagged body ran for {id}");
    id
}

#[impcache::cached(cache = cache, expire = 60, skip(cache), stale_if_error = 60)]
async fn fresh_logged(cache: &Cache, id: u64) -> u64 {
    tracing::info!("fresh body ran for {id}");
    id
}

#[impcache::cached(cache = cache, expire = Duration::from_millis(100), skip(cache), stale_while_revalidate = 60)]
async fn revalidated_logged(cache: &Cache, id: u64) -> u64 {
    tracing::info!("revalidated body ran for {id}");
    id
}

/// A `#[cached]` body's events belong to its caller's span (`#[instrument]`, a request's span),
/// whether the body runs in place (the plain path) or in a spawned task (`tags`, a freshness
/// option; spawned bodies logged outside any span). A background reload runs in no caller's
/// span.
#[test]
fn a_cached_body_logs_in_its_callers_span() {
    use tracing::Instrument;

    let logs = logged(tracing::Level::INFO, async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let request = |rid: u64| tracing::info_span!("request", rid);
        plain_logged(&cache, 1).instrument(request(1)).await;
        tagged_logged(&cache, 2).instrument(request(2)).await;
        fresh_logged(&cache, 3).instrument(request(3)).await;
        revalidated_logged(&cache, 4).instrument(request(4)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Stale: answered at once, the body reloading in the background.
        let stale = revalidated_logged(&cache, 4).instrument(request(5)).await;
        assert_eq!(stale, 4);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let lines =
        |needle: &str| -> Vec<&str> { logs.lines().filter(|line| line.contains(needle)).collect() };
    for (body, rid) in [("plain", 1), ("tagged", 2), ("fresh", 3)] {
        let ran = lines(&format!("{body} body ran for {rid}"));
        assert_eq!(ran.len(), 1, "{logs}");
        assert!(ran[0].contains(&format!("request{{rid={rid}}}")), "{logs}");
    }
    let revalidated = lines("revalidated body ran for 4");
    assert_eq!(revalidated.len(), 2, "{logs}");
    assert!(revalidated[0].contains("request{rid=4}"), "{logs}");
    // The background reload: no caller waits for it, and it would keep request 5's span open
    // for as long as it runs.
    assert!(!revalidated[1].contains("request{"), "{logs}");
}

/// A `get_or_set` loader's events belong to its caller's span too: the leader's load runs in a
/// spawned task, which carries the span current at the call.
#[test]
fn a_get_or_set_loader_logs_in_its_callers_span() {
    use std::future::IntoFuture;
    use tracing::Instrument;

    let logs = logged(tracing::Level::INFO, async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let loaded: u64 = cache
            .get_or_set("k", 60, || async {
                tracing::info!("loader ran");
                1
            })
            .into_future()
            .instrument(tracing::info_span!("request", rid = 7))
            .await
            .unwrap();
        assert_eq!(loaded, 1);
    });
    let ran: Vec<&str> = logs.lines().filter(|l| l.contains("loader ran")).collect();
    assert_eq!(ran.len(), 1, "{logs}");
    assert!(ran[0].contains("request{rid=7}"), "{logs}");
}

#[impcache::cached(cache = cache, expire = 60, skip(cache))]
async fn profile(cache: &Cache, email: String) -> String {
    format!("profile of {email}")
}

/// Everything logged (at `TRACE` and up) while a cache whose Redis is down serves a `#[cached]`
/// call, a `get_or_set` and a `try_get_or_set` keyed by an e-mail address.
fn logs_of_an_outage(record_keys: bool) -> String {
    let logs = logged(tracing::Level::TRACE, async {
        // A server that is down: every operation fails at once.
        let cache =
            Cache::builder(RedisCacheRepository::new(impcache_tests::NO_SERVER_URL).unwrap())
                .record_keys(record_keys)
                .build();
        let email = "alice@example.com".to_owned();
        assert_eq!(
            profile(&cache, email.clone()).await,
            "profile of alice@example.com"
        );
        let key = format!("user:{email}");
        let loaded: String = cache
            .get_or_set(&key, 60, || async { "loaded".to_owned() })
            .await
            .unwrap();
        assert_eq!(loaded, "loaded");
        let failed = cache
            .try_get_or_set(&format!("orders:{email}"), 60, || async {
                Err::<String, _>(std::io::Error::other("database down"))
            })
            .await;
        assert!(failed.is_err());
        // A loader past its hard timeout: the crate's own error, which names the key.
        let timed_out = cache
            .try_get_or_set(&format!("slow:{email}"), 60, || async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                Ok::<String, impcache::Error>("late".to_owned())
            })
            .hard_timeout(std::time::Duration::from_millis(20))
            .await;
        assert!(timed_out.is_err());
    });
    logs
}

/// Issue 17: keys are recorded only when the user opts in, in the spans and in every log event
/// (a failed operation's message names its key).
#[test]
fn an_outage_logs_no_key_unless_the_cache_records_them() {
    let logs = logs_of_an_outage(false);
    assert!(
        logs.contains("cache operation failed"),
        "the failures are logged:\n{logs}"
    );
    assert!(
        logs.contains("the loader failed") && logs.contains("timed out after"),
        "the loader's hard timeout is logged:\n{logs}"
    );
    assert!(!logs.contains("alice"), "no key by default:\n{logs}");
    let logs = logs_of_an_outage(true);
    assert!(logs.contains("alice@example.com"), "{logs}");
}

/// A cache on `server` with a near cache.
fn near_cached(server: &RedisServer) -> Cache {
    Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
        .near_cache(impcache::NearCache::new())
        .build()
}

/// Issue 17: the span's tier. With a near cache, a read answered from process memory is
/// `tier="near"`, one read from Redis `tier="remote"`.
#[test]
fn a_near_cache_records_the_tier_that_answered() {
    let server = RedisServer::start();
    let expected = [
        r#"cache_operation{operation="get" tier="remote" outcome="miss"}"#,
        r#"cache_operation{operation="get" tier="near" outcome="hit"}"#,
        r#"cache_operation{operation="set" outcome="ok" tier="remote"}"#,
    ];
    let logs = logged_with_all(&expected, || async {
        let cache = near_cached(&server);
        cache.set("user:1", &1, 60).await.unwrap();
        // Until a read is answered from process memory (the near cache starts tracking).
        for _ in 0..400 {
            let hits = cache.near_cache_stats().hits;
            assert_eq!(cache.get::<i64>("user:1").await.unwrap(), Some(1));
            if cache.near_cache_stats().hits > hits {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(cache.near_cache_stats().hits > 0);
        // A key not held locally: read from Redis.
        assert_eq!(cache.get::<i64>("user:2").await.unwrap(), None);
        // The write asserted on: the spans of a test's first moments can be missed while other
        // tests' subscribers come and go (tracing's callsite interest is process-wide).
        cache.set("user:3", &3, 60).await.unwrap();
    });
    for line in expected {
        assert!(logs.contains(line), "{logs}");
    }
}

/// A `get_or_set` hit answered from the near cache alone (its future built without the call's
/// machinery, `GetOrSetFuture`) records its read as the full way does: a `get` span with
/// `tier="near"`, never one without a tier.
#[test]
fn a_get_or_set_hit_answered_from_the_near_cache_alone_records_the_near_tier() {
    use tracing::Instrument;
    let server = RedisServer::start();
    let expected = [r#"request:cache_operation{operation="get" tier="near" outcome="hit"}"#];
    let logs = logged_with_all(&expected, || async {
        let cache = near_cached(&server);
        let call = || {
            cache
                .get_or_set("k", 60, || async { 1 })
                .stale_while_revalidate(Duration::from_secs(10))
        };
        assert_eq!(call().await.unwrap(), 1);
        // Calls back to back: on this one-thread runtime, the first read after a pause goes the
        // full way (it gives the thread back first, `Store::catch_up`). Each in the caller's
        // span, whose child its operation's span is.
        let mut local = 0;
        for _ in 0..400 {
            for _ in 0..3 {
                let (answered_locally, value) = answered_locally(call())
                    .instrument(tracing::info_span!("request"))
                    .await;
                assert_eq!(value.unwrap(), 1);
                local += usize::from(answered_locally);
            }
            if local >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(local >= 3, "never answered from the near cache alone");
        // The write asserted on: the spans of a test's first moments can be missed while other
        // tests' subscribers come and go (tracing's callsite interest is process-wide).
        cache.set("other", &3, 60).await.unwrap();
    });
    for line in expected {
        assert!(logs.contains(line), "{logs}");
    }
    assert!(
        !logs.contains(r#"cache_operation{operation="get" outcome="hit"}"#),
        "{logs}"
    );
}

/// A probe's find: the span of a `get_many` through a near cache has one `near` per key answered
/// from process memory and one `remote` for its one read of the others from Redis (3 fields for
/// 5 keys, 2 local), as OBSERVABILITY.md now says (it said one per key).
#[test]
fn a_get_many_through_a_near_cache_records_a_near_per_local_key_and_one_remote() {
    let server = RedisServer::start();
    let expected = [
        r#"cache_operation{operation="get_many" tier="near" tier="near" tier="remote" outcome="ok"}"#,
    ];
    let logs = logged_with_all(&expected, || async {
        let cache = near_cached(&server);
        cache
            .set_many([("a", 1), ("b", 2), ("c", 3), ("d", 4)], 60)
            .await
            .unwrap();
        // Until `a` and `b` are answered from process memory.
        for key in ["a", "b"] {
            for _ in 0..400 {
                let hits = cache.near_cache_stats().hits;
                cache.get::<i64>(key).await.unwrap();
                if cache.near_cache_stats().hits > hits {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let values: Vec<Option<i64>> = cache.get_many(["a", "b", "c", "d", "e"]).await.unwrap();
        assert_eq!(values, [Some(1), Some(2), Some(3), Some(4), None]);
    });
    for line in expected {
        assert!(logs.contains(line), "{logs}");
    }
}

/// The near cache records the tier on the operation's span only: with `impcache`'s spans
/// filtered out (a user at `DEBUG` for their own targets), a user's span around a near hit,
/// current while the lookup runs, never gets a `tier`.
#[test]
fn the_tier_is_never_recorded_on_a_users_span() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let server = RedisServer::start();
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("impcache", tracing::Level::INFO)
                    .with_default(tracing::Level::DEBUG),
            ),
    );
    impcache_tests::logs::keep_callsites_interested();
    tracing::subscriber::with_default(subscriber, || {
        current_thread_runtime().block_on(async {
            let cache = near_cached(&server);
            cache.set("user:1", &1, 60).await.unwrap();
            for _ in 0..400 {
                let hits = cache.near_cache_stats().hits;
                let user_span = tracing::debug_span!("request", tier = tracing::field::Empty);
                let read = cache.get::<i64>("user:1");
                let found = tracing::Instrument::instrument(read, user_span).await;
                assert_eq!(found.unwrap(), Some(1));
                if cache.near_cache_stats().hits > hits {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert!(cache.near_cache_stats().hits > 0);
        });
    });
    let logs = logs.text();
    assert!(logs.contains("request: metrics: close"), "{logs}");
    assert!(!logs.contains("tier"), "{logs}");
}

/// Issue 17 (a probe's find): an operation its caller gives up on (a timeout around the call, a
/// frozen Redis) is counted, once, as `cancelled`: in `impcache_operations_total` and the stats,
/// with its duration, and its span ends with that outcome. Not an error, nor a lookup. Before,
/// it left no trace: the observation was only counted when the operation's future completed.
#[test]
fn an_operation_its_caller_cancels_counts_as_cancelled() {
    let server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let span = r#"cache_operation{operation="get" outcome="cancelled" tier="remote"}"#;
    let logs = logged_with_all(&[span], || async {
        let repository = RedisCacheRepository::builder(server.url())
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap();
        let cache = Cache::new(repository);
        cache.set("a", &1, 60).await.unwrap();
        Recorded::take(&snapshotter);
        server.freeze();
        for _ in 0..3 {
            let read = tokio::time::timeout(Duration::from_millis(100), cache.get::<i64>("a"));
            assert!(read.await.is_err(), "the caller's timeout ends the call");
        }
        server.thaw();
        let recorded = Recorded::take(&snapshotter);
        assert_eq!(recorded.ops("get", "cancelled"), 3);
        assert_eq!(recorded.timings("get"), 3, "the slow tail shows");
        assert_eq!(recorded.ops("get", "error"), 0);
        let lookups = |outcome| recorded.counter("impcache_lookups_total", &[("outcome", outcome)]);
        assert_eq!((lookups("hit"), lookups("miss")), (0, 0));
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.errors, stats.cancelled),
            (0, 0, 0, 3),
            "{stats:?}"
        );
        // Thawed, the next call completes and counts as usual.
        assert_eq!(cache.get::<i64>("a").await.unwrap(), Some(1));
        assert_eq!(Recorded::take(&snapshotter).ops("get", "hit"), 1);
    });
    assert!(logs.contains(span), "{logs}");
}

#[impcache::cached(cache = cache, expire = 60, skip(cache), stale_if_error = 60)]
async fn fresh_target(cache: &Cache, id: u64) -> u64 {
    id
}

#[impcache::cached(cache = cache, expire = 60, skip(cache), tags = ["target:{id}"])]
async fn tagged_target(cache: &Cache, id: u64) -> u64 {
    id
}

#[impcache::cached(cache = cache, expire = 60, skip(cache), lock = impcache::Lock::new().wait(Duration::from_millis(100)))]
async fn locked_target(cache: &Cache, id: u64) -> u64 {
    id
}

#[impcache::cached(cache = cache, expire = 60, key = "swr:{id}", stale_while_revalidate = 60)]
async fn revalidated_target(cache: &Cache, id: u64) -> u64 {
    id
}

/// Issue 17 (a probe's find): every warning emitted on behalf of a `#[cached]` call has target
/// `impcache::cached`, whichever runtime path serves it: a cache failure of a function with a
/// freshness option or tags, another process's lock waited for past its wait, a stored value
/// that no longer decodes. `get_or_set` called directly keeps `impcache::freshness`, and names
/// the check that refused a tag (`operation="tags"`, not `get`). Before, the freshness path's
/// warnings all had target `impcache::freshness`.
#[test]
fn every_warning_of_a_cached_call_has_target_impcache_cached() {
    let expected = [
        " impcache::cached: cache operation failed",
        "WARN impcache::cached: waited for another process's value past the lock's wait",
        "WARN impcache::cached: the stored value does not decode",
        r#"operation="tags" error=invalid_tag"#,
    ];
    let logs = logged_with_all(&expected, || async {
        // A server that is down: every operation fails at once (and keeps failing so: no
        // breaker, whose opening is a warning of its own).
        let down = RedisCacheRepository::builder(impcache_tests::NO_SERVER_URL)
            .without_circuit_breaker()
            .build()
            .unwrap();
        let down = Cache::new(down);
        assert_eq!(fresh_target(&down, 1).await, 1);
        assert_eq!(tagged_target(&down, 2).await, 2);
        let cache = Cache::builder(MemoryCacheRepository::new())
            .max_key_bytes(40)
            .build();
        // Another process holds the lock of `locked_target(3)`: waited for past its wait.
        let lock = cache.make_key("__lock:metrics::locked_target:3");
        let held = cache.repository().set_nx(
            &lock,
            "another process".into(),
            impcache::Expiry::Seconds(60),
        );
        assert!(held.await.unwrap());
        assert_eq!(locked_target(&cache, 3).await, 3);
        // A stored value of another type.
        cache.set("swr:4", &"text", 60).await.unwrap();
        assert_eq!(revalidated_target(&cache, 4).await, 4);
        tracing::warn!(target: "marker", "---- get_or_set");
        let loaded: u64 = down.get_or_set("k", 60, || async { 5 }).await.unwrap();
        assert_eq!(loaded, 5);
        let tag = "t".repeat(50);
        let loaded: u64 = cache
            .get_or_set("k", 60, || async { 6 })
            .tags([tag])
            .await
            .unwrap();
        assert_eq!(loaded, 6);
    });
    let (cached, direct) = logs.split_once("---- get_or_set").unwrap();
    // A failed cache operation warns at most once a second from its call site, at `DEBUG`
    // after that: counted as a warning at either level.
    let warned = |l: &&str| {
        (l.contains(" WARN ") && !l.contains(" WARN marker:"))
            || (l.contains(" DEBUG ")
                && l.contains("cache operation failed; ")
                && l.contains("regardless"))
    };
    let warnings: Vec<&str> = cached.lines().filter(warned).collect();
    for expected in [
        "cache operation failed",
        "past the lock's wait",
        "does not decode",
    ] {
        assert!(
            warnings.iter().any(|line| line.contains(expected)),
            "{expected}:\n{logs}"
        );
    }
    for line in &warnings {
        assert!(line.contains(" impcache::cached: "), "{line}\n{logs}");
    }
    let warnings: Vec<&str> = direct.lines().filter(warned).collect();
    assert_eq!(warnings.len(), 2, "{logs}");
    for line in &warnings {
        assert!(line.contains(" impcache::freshness: "), "{line}");
    }
    assert!(
        warnings[1].contains(r#"operation="tags" error=invalid_tag"#),
        "{}",
        warnings[1]
    );
}

/// Issue 17 (a probe's find): the polls of a process waiting for another process's value under
/// a `Lock` (and the read after taking it) are `get` operations but no lookups: the waiting
/// call counts one miss, its own read, not one per poll (about ten for a wait of 300 ms, which
/// skewed the hit ratio).
#[test]
fn a_lock_waits_polls_are_not_lookups() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let store = MemoryCacheRepository::new();
        // Two "processes": caches of their own (their own single-flight) over one store.
        let process = || Cache::builder_shared(Arc::new(store.clone())).build();
        let (a, b) = (process(), process());
        let policy = impcache::Freshness::new().lock(impcache::Lock::new());
        let load_a = a
            .get_or_set("report", 60, || async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                1
            })
            .freshness(policy);
        let load_b = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.get_or_set("report", 60, || async { 2 })
                .freshness(policy)
                .await
        };
        let (from_a, from_b): (impcache::Result<i64>, impcache::Result<i64>) =
            tokio::join!(load_a.into_future(), load_b);
        assert_eq!((from_a.unwrap(), from_b.unwrap()), (1, 1));
        let recorded = Recorded::take(&snapshotter);
        let outcome = |o| recorded.counter("impcache_lock_outcomes_total", &[("outcome", o)]);
        assert_eq!((outcome("acquired"), outcome("waited")), (1, 1));
        let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
        assert_eq!((lookups("hit"), lookups("miss")), (0, 2));
        // The polls are operations all the same: the two calls' reads and more.
        let gets = recorded.ops("get", "miss") + recorded.ops("get", "hit");
        assert!(gets > 4, "{gets} gets");
        for process in [&a, &b] {
            let stats = process.stats();
            assert_eq!((stats.hits, stats.misses), (0, 1), "{stats:?}");
        }
    });
}

/// A cycle of loads through the lock counts an outcome too (`cycle`): a's load holds a's lock,
/// a is deleted, a's loader calls b, whose loader calls a: that second load of a finds a's lock
/// held by the first, which waits for it, and loads without the lock (uncounted before: found by
/// a regression hunt).
#[test]
fn a_cycle_through_the_lock_counts_its_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let policy = impcache::Freshness::new().lock(impcache::Lock::new());
        let first = tokio::time::timeout(
            Duration::from_secs(5),
            cycle_through_the_lock(&cache, policy),
        );
        assert_eq!(
            first.await.unwrap().unwrap(),
            "first a over b over second a"
        );
        let recorded = Recorded::take(&snapshotter);
        let outcome = |o| recorded.counter("impcache_lock_outcomes_total", &[("outcome", o)]);
        assert_eq!((outcome("acquired"), outcome("cycle")), (2, 1));
    });
}

/// A flight leader's second look at its key (a flight of the key ended since its read: here the
/// waiters of a panicking loader, one of which leads next) is a `get` operation but no lookup:
/// each caller counts one, its own read.
#[test]
fn a_new_leaders_second_look_is_not_a_lookup() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (cache, runs) = (cache.clone(), Arc::clone(&runs));
                tokio::spawn(async move {
                    cache
                        .get_or_set("report", 60, move || async move {
                            let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            assert!(!first, "the first run fails");
                            1_u64
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            let _ = caller.await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let recorded = Recorded::take(&snapshotter);
        let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
        assert_eq!((lookups("hit"), lookups("miss")), (0, 4));
        assert_eq!((cache.stats().hits, cache.stats().misses), (0, 4));
        assert_eq!(recorded.ops("get", "miss"), 5);
    });
}

/// Issue 17 (a probe's find): the byte counters count the same thing both ways, a value's bytes
/// (its JSON), without a tagged entry's envelope: `set_tagged` counted the 77-byte envelope as
/// written and a read of the same entry 1 byte read.
#[test]
fn a_tagged_entry_counts_its_value_bytes_both_ways() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        let bytes = |recorded: &Recorded| {
            (
                recorded.counter("impcache_bytes_written_total", &[]),
                recorded.counter("impcache_bytes_read_total", &[]),
            )
        };
        cache.set_tagged("t", &12, 60, ["tag"]).await.unwrap();
        assert_eq!(cache.get::<i64>("t").await.unwrap(), Some(12));
        assert_eq!(bytes(&Recorded::take(&snapshotter)), (2, 2));
        // A value `get_or_set` loads with tags: the same.
        let loaded: i64 = cache
            .get_or_set("g", 60, || async { 345 })
            .tags(["tag"])
            .await
            .unwrap();
        assert_eq!(loaded, 345);
        tokio::task::yield_now().await;
        assert_eq!(cache.get::<i64>("g").await.unwrap(), Some(345));
        assert_eq!(bytes(&Recorded::take(&snapshotter)), (3, 3));
    });
}

/// Issue 17: a near cache's fail-safe copy, standing in for a failed loader while Redis fails,
/// counts as what happened, as documented: the read failed (a `get` error, no hit nor miss),
/// and the copy served is a stale answer (`impcache_stale_served_total{reason="error"}`,
/// `stats().stale`) from the `stale` tier.
#[test]
fn a_fail_safe_copy_counts_as_a_failed_read_and_a_stale_answer() {
    let mut server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let repository = RedisCacheRepository::builder(server.url())
            .deadline(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let near = impcache::NearCache::new()
            .fail_safe(true)
            .heartbeat(Duration::from_millis(100));
        let cache = Cache::builder(repository).near_cache(near).build();
        let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(60));
        let expire = Duration::from_millis(200);
        let loaded: String = cache
            .get_or_set("k", expire, || async { "v1".to_owned() })
            .freshness(policy)
            .await
            .unwrap();
        assert_eq!(loaded, "v1");
        // The copy is kept from then on.
        until_held_locally(&cache, "k").await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        Recorded::take(&snapshotter);
        let before = cache.stats();
        let served = cache
            .try_get_or_set("k", expire, || async {
                Err::<String, _>(std::io::Error::other("database down"))
            })
            .freshness(policy)
            .await;
        assert_eq!(served.unwrap(), "v1");
        let recorded = Recorded::take(&snapshotter);
        let after = cache.stats();
        assert_eq!(recorded.ops("get", "error"), 1);
        let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
        assert_eq!((lookups("hit"), lookups("miss")), (0, 0));
        assert_eq!(
            recorded.counter("impcache_stale_served_total", &[("reason", "error")]),
            1
        );
        assert_eq!(
            recorded.counter("impcache_near_cache_lookups_total", &[("tier", "stale")]),
            1
        );
        assert_eq!(
            (
                after.hits - before.hits,
                after.errors - before.errors,
                after.stale - before.stale
            ),
            (0, 1, 1)
        );
    });
}

/// What `get_or_set` or a `#[cached]` call counts for one read of a value of another type: one
/// lookup, a miss (not a hit), its `get` a miss, and the same in `stats()`.
fn counts_one_miss(recorded: &Recorded, before: CacheStats, after: CacheStats, what: &str) {
    let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
    assert_eq!((lookups("hit"), lookups("miss")), (0, 1), "{what}");
    assert_eq!(
        (recorded.ops("get", "hit"), recorded.ops("get", "miss")),
        (0, 1),
        "{what}"
    );
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (0, 1),
        "{what}"
    );
    // No error either: the loader ran, as on a miss.
    assert_eq!(recorded.ops("get", "error"), 0, "{what}");
}

/// `get_or_set` of a `u64` at `key`, the variant the key names: `try` (`try_get_or_set`),
/// `policy` (a freshness policy), `tagged` (with tags), else plain.
async fn load_as_u64(cache: &Cache, key: &str) -> u64 {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(60));
    let loaded = match key {
        "try" => {
            cache
                .try_get_or_set(key, 60, || async { Ok::<_, impcache::Error>(3) })
                .await
        }
        "policy" => {
            cache
                .get_or_set(key, 60, || async { 3 })
                .freshness(policy)
                .await
        }
        "tagged" => cache.get_or_set(key, 60, || async { 3 }).tags(["t"]).await,
        _ => cache.get_or_set(key, 60, || async { 3 }).await,
    };
    loaded.unwrap()
}

/// A probe's find: a value `get_or_set` reads that does not decode as the caller's type (stored
/// by another type, as before a deploy that changed it) is loaded and overwritten, as a miss,
/// and was counted a hit: every recomputation after such a deploy read as a hit. It is a miss
/// now, in every variant (`try_get_or_set`, a freshness policy, tags).
#[test]
fn get_or_set_over_a_value_of_another_type_counts_a_miss() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        cache.set("plain", &"a string", 60).await.unwrap();
        cache.set("try", &"a string", 60).await.unwrap();
        cache.set("policy", &"a string", 60).await.unwrap();
        cache
            .set_tagged("tagged", &"a string", 60, ["t"])
            .await
            .unwrap();
        for what in ["plain", "try", "policy", "tagged"] {
            Recorded::take(&snapshotter);
            let before = cache.stats();
            assert_eq!(load_as_u64(&cache, what).await, 3, "{what}");
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            let recorded = Recorded::take(&snapshotter);
            counts_one_miss(&recorded, before, cache.stats(), what);
            // Overwritten: the next call is a hit.
            assert_eq!(load_as_u64(&cache, what).await, 3, "{what}");
            let recorded = Recorded::take(&snapshotter);
            let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
            assert_eq!((lookups("hit"), lookups("miss")), (1, 0), "{what}");
        }
    });
}

/// The same through a near cache, the value of another type answered from process memory.
#[test]
fn get_or_set_over_a_near_cached_value_of_another_type_counts_a_miss() {
    let server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = near_cached(&server);
        cache.set("k", &"a string", 60).await.unwrap();
        until_held_locally(&cache, "k").await;
        Recorded::take(&snapshotter);
        let (before, near_before) = (cache.stats(), cache.near_cache_stats().hits);
        let loaded: u64 = cache.get_or_set("k", 60, || async { 3 }).await.unwrap();
        assert_eq!(loaded, 3);
        assert!(
            cache.near_cache_stats().hits > near_before,
            "read from process memory"
        );
        let recorded = Recorded::take(&snapshotter);
        counts_one_miss(&recorded, before, cache.stats(), "near cache");
    });
}

#[impcache::cached(cache = cache, expire = 60, skip(cache))]
async fn retyped(cache: &Cache, n: u64) -> u64 {
    n + 1
}

#[impcache::cached(cache = cache, expire = 60, skip(cache), stale_if_error = 60)]
async fn retyped_fresh(cache: &Cache, n: u64) -> u64 {
    n + 1
}

/// Through a near cache, a `#[cached]` function with a freshness option answers its fresh hits
/// from process memory without its body (`memoize_fresh` takes `get_or_set`'s answer from the
/// near cache alone): each call one hit of the function, one `get` hit, one local hit. A value
/// of another type held locally is still a miss that runs the body.
#[test]
fn a_near_cached_function_with_a_freshness_option_counts_its_local_hits() {
    let server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = near_cached(&server);
        assert_eq!(retyped_fresh(&cache, 7).await, 8);
        until_held_locally(&cache, "metrics::retyped_fresh:7").await;
        Recorded::take(&snapshotter);
        let (before, near_before) = (cache.stats(), cache.near_cache_stats().hits);
        for _ in 0..20 {
            assert_eq!(retyped_fresh(&cache, 7).await, 8);
        }
        let recorded = Recorded::take(&snapshotter);
        let calls = |o| {
            recorded.counter(
                "impcache_cached_calls_total",
                &[("function", "metrics::retyped_fresh"), ("outcome", o)],
            )
        };
        assert_eq!((calls("hit"), calls("miss")), (20, 0));
        let lookups = |o| recorded.counter("impcache_lookups_total", &[("outcome", o)]);
        assert_eq!((lookups("hit"), lookups("miss")), (20, 0));
        assert_eq!(cache.stats().hits, before.hits + 20);
        assert_eq!(cache.near_cache_stats().hits, near_before + 20);

        cache
            .set("metrics::retyped_fresh:5", &"old type", 60)
            .await
            .unwrap();
        until_held_locally(&cache, "metrics::retyped_fresh:5").await;
        Recorded::take(&snapshotter);
        let before = cache.stats();
        assert_eq!(retyped_fresh(&cache, 5).await, 6);
        let recorded = Recorded::take(&snapshotter);
        counts_one_miss(&recorded, before, cache.stats(), "near-cached #[cached]");
    });
}

/// A probe's find: a `#[cached]` call over a value of another type (its return type changed)
/// runs its body, a `miss` of the function, and its lookup was counted a hit. A miss now, with
/// or without a freshness option (which runs on `get_or_set`'s machinery).
#[test]
fn a_cached_call_over_a_value_of_another_type_counts_a_miss() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    current_thread_runtime().block_on(async {
        let cache = Cache::new(MemoryCacheRepository::new());
        for (function, key) in [
            ("metrics::retyped", "metrics::retyped:5"),
            ("metrics::retyped_fresh", "metrics::retyped_fresh:5"),
        ] {
            cache.set(key, &"old type", 60).await.unwrap();
            Recorded::take(&snapshotter);
            let before = cache.stats();
            let answer = match function {
                "metrics::retyped" => retyped(&cache, 5).await,
                _ => retyped_fresh(&cache, 5).await,
            };
            assert_eq!(answer, 6);
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            let recorded = Recorded::take(&snapshotter);
            let calls = |o| {
                recorded.counter(
                    "impcache_cached_calls_total",
                    &[("function", function), ("outcome", o)],
                )
            };
            assert_eq!((calls("hit"), calls("miss")), (0, 1), "{function}");
            counts_one_miss(&recorded, before, cache.stats(), function);
        }
    });
}

/// Reads `key` (a `get`) until process memory answers it: the near cache tracks it from then on.
async fn until_held_locally(cache: &Cache, key: &str) {
    for _ in 0..400 {
        let hits = cache.near_cache_stats().hits;
        cache.get::<serde_json::Value>(key).await.unwrap();
        if cache.near_cache_stats().hits > hits {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A key of any length is logged as an excerpt (its first 200 characters and its length) when
/// the cache records keys, in the operation's span and in its events: a 1 MiB key refused for
/// its length was written whole into each (about 3 MB of logs per call; found by a probe).
#[test]
fn a_long_key_is_logged_as_an_excerpt() {
    let key = "k".repeat(1 << 20);
    let logs = logged(tracing::Level::DEBUG, async {
        let cache = Cache::builder(MemoryCacheRepository::new())
            .record_keys(true)
            .build();
        assert!(cache.get::<u64>(&key).await.is_err());
        let loaded: u64 = cache.get_or_set(&key, 60, || async { 7 }).await.unwrap();
        assert_eq!(loaded, 7);
    });
    assert!(
        logs.contains("(1048576 bytes)"),
        "{}",
        &logs[..logs.len().min(2000)]
    );
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 10_000, "a line of {longest} bytes");
}

/// A failure every call meets that is no outage (here a server refusing writes: `NOREPLICAS`,
/// as `READONLY`, `BUSY`, `OOM` or a refused login would) warns once a second per call site,
/// the others logged at `DEBUG`, the next warning saying how many it left out: one warning per
/// call made tens of thousands a second (found by a probe).
#[test]
fn a_failure_every_call_meets_warns_once_a_second() {
    let server = RedisServer::start_with(&["--min-replicas-to-write", "1"]);
    let logs = logged(tracing::Level::DEBUG, async {
        let cache = Cache::new(RedisCacheRepository::new(server.url().as_str()).unwrap());
        for i in 0..100 {
            let loaded: u64 = cache
                .get_or_set(&format!("k{i}"), 60, move || async move { i })
                .await
                .unwrap();
            assert_eq!(loaded, i);
        }
    });
    let failed = |level: &str| {
        logs.lines()
            .filter(|line| line.contains(level))
            .filter(|line| line.contains("cache operation failed; loading regardless"))
            .count()
    };
    // Two when the calls straddle a second; none when another test of this binary warned from
    // the same call site less than a second before.
    assert!(failed(" WARN ") <= 2, "{logs}");
    assert!(failed(" WARN ") + failed(" DEBUG ") >= 95, "{logs}");
}
