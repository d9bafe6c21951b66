//! `#[cached]` against a real (throwaway) Redis: the raw key layout, TTLs, `delete_pattern`
//! invalidation, version bumps, concurrency, a value of the wrong type, and fail-open when the
//! server is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod block_on;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use block_on::block_on;
use impcache::{cached, Cache, RedisCacheRepository};
use impcache_tests::late::LateWrites;
use impcache_tests::RedisServer;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Waits until `count` keys are on the server: a miss answers its caller first and stores in
/// the background.
async fn wait_for_keys(server: &RedisServer, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = server.keys();
        if keys.len() >= count || Instant::now() > deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cache_on(server: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    Cache::new(repository)
}

mod users {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) struct User {
        pub(crate) id: u64,
        pub(crate) name: String,
    }

    pub(crate) static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[cached(cache = cache, expire = 100, skip(cache))]
    pub(crate) async fn get_user(cache: &Cache, id: u64, name: &str) -> Result<User, String> {
        CALLS.fetch_add(1, SeqCst);
        if id == 0 {
            return Err("no user 0".into());
        }
        Ok(User {
            id,
            name: name.to_owned(),
        })
    }
}

#[tokio::test]
async fn raw_key_layout_ttl_and_delete_pattern() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    let alice = users::get_user(&cache, 42, "alice").await.unwrap();
    assert_eq!(users::get_user(&cache, 42, "alice").await.unwrap(), alice);
    users::get_user(&cache, 43, "bob").await.unwrap();
    assert!(users::get_user(&cache, 0, "nobody").await.is_err());
    assert_eq!(users::CALLS.load(SeqCst), 3);

    // Err is not stored; the layout is {prefix}:{version}:{module_path}::{fn}:{json args}.
    assert_eq!(
        wait_for_keys(&server, 2).await,
        [
            r#"cache:1:cached_redis::users::get_user:42:"alice""#,
            r#"cache:1:cached_redis::users::get_user:43:"bob""#,
        ]
    );
    let raw: String = server.cmd(&["GET", r#"cache:1:cached_redis::users::get_user:42:"alice""#]);
    assert_eq!(raw, r#"{"id":42,"name":"alice"}"#);
    let ttl: i64 = server.cmd(&[
        "PTTL",
        r#"cache:1:cached_redis::users::get_user:42:"alice""#,
    ]);
    assert!(ttl > 0 && ttl <= 100_000, "{ttl}");

    // A version bump: the same function on version 2 misses and writes its own key.
    let v2 = cache.with_version(2);
    users::get_user(&v2, 42, "alice").await.unwrap();
    assert_eq!(users::CALLS.load(SeqCst), 4);
    assert!(wait_for_keys(&server, 3)
        .await
        .contains(&r#"cache:2:cached_redis::users::get_user:42:"alice""#.to_owned()));

    // Every entry of the function, on this version only.
    assert_eq!(
        cache
            .delete_pattern("cached_redis::users::get_user:*")
            .await
            .unwrap(),
        2
    );
    assert_eq!(server.keys().len(), 1);
    users::get_user(&cache, 42, "alice").await.unwrap();
    assert_eq!(users::CALLS.load(SeqCst), 5);
    wait_for_keys(&server, 2).await;

    // The invalidate companion removes one call's entry.
    assert!(users::get_user_invalidate(&cache, 42, "alice")
        .await
        .unwrap());
    assert!(!users::get_user_invalidate(&cache, 42, "alice")
        .await
        .unwrap());
}

static SLOW: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "slow:{id}")]
async fn slow(cache: &Cache, id: u64) -> Vec<u64> {
    SLOW.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    vec![id; 3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_one_execution_on_redis() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { slow(&cache, 7).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), [7, 7, 7]);
    }
    assert_eq!(SLOW.load(SeqCst), 1);
    assert_eq!(wait_for_keys(&server, 1).await, ["cache:1:slow:7"]);
}

static TYPED: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "typed:{id}", version = 3)]
async fn typed(cache: &Cache, id: u64) -> users::User {
    TYPED.fetch_add(1, SeqCst);
    users::User {
        id,
        name: "new".into(),
    }
}

#[tokio::test]
async fn a_stored_value_of_another_type_is_replaced() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    let _: () = server.cmd(&["SET", "cache:3:typed:1", r#"["an","old","shape"]"#]);
    assert_eq!(typed(&cache, 1).await.name, "new");
    // Replaced in the background: wait for the new value.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .cmd::<String>(&["GET", "cache:3:typed:1"])
        .starts_with('[')
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let raw: String = server.cmd(&["GET", "cache:3:typed:1"]);
    assert_eq!(raw, r#"{"id":1,"name":"new"}"#);
    let ttl: i64 = server.cmd(&["TTL", "cache:3:typed:1"]);
    assert!(ttl > 0 && ttl <= 60, "replaced with the expire: {ttl}");
    assert_eq!(typed(&cache, 1).await.name, "new");
    assert_eq!(TYPED.load(SeqCst), 1);
}

#[cached(cache = cache, expire = 60, key = "foreign:{id}", version = 3)]
async fn foreign(cache: &Cache, id: u64) -> u64 {
    id
}

/// A key of another Redis type under the function's key (a list another program pushed to) is
/// replaced, as a value of another type is (issue 3: "a value that no longer decodes is
/// replaced"): its store was a `SET NX`, which never lands on a taken key, so the function ran
/// its body on every call for as long as the list lived (found by a probe). `get_or_set` too.
#[tokio::test]
async fn a_key_of_another_redis_type_is_replaced() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    for key in ["cache:3:foreign:1", "cache:1:loaded"] {
        let _: () = server.cmd(&["RPUSH", key, "a"]);
    }
    assert_eq!(foreign(&cache, 1).await, 1);
    let loaded = cache.get_or_set("loaded", 60, || async { 7 }).await;
    assert_eq!(loaded.unwrap(), 7);
    for key in ["cache:3:foreign:1", "cache:1:loaded"] {
        // Replaced in the background: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.cmd::<String>(&["TYPE", key]) != "string" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ttl: i64 = server.cmd(&["TTL", key]);
        assert!(
            ttl > 0 && ttl <= 60,
            "{key} replaced with the expire: {ttl}"
        );
    }
    assert_eq!(server.cmd::<String>(&["GET", "cache:3:foreign:1"]), "1");
    assert_eq!(cache.get::<u64>("loaded").await.unwrap(), Some(7));
}

static DOWN: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn down(cache: &Cache, id: u64) -> Result<u64, std::io::Error> {
    DOWN.fetch_add(1, SeqCst);
    Ok(id + 1)
}

#[tokio::test]
async fn fails_open_when_the_server_is_killed() {
    let mut server = RedisServer::start();
    let cache = cache_on(&server);
    assert_eq!(down(&cache, 1).await.unwrap(), 2);
    assert_eq!(down(&cache, 1).await.unwrap(), 2);
    assert_eq!(DOWN.load(SeqCst), 1);

    server.kill();
    let started = Instant::now();
    // Distinct keys: a second call on one key while the first one's (failing) store is still in
    // flight would get the first one's value from memory.
    for id in 2..5 {
        assert_eq!(down(&cache, id).await.unwrap(), id + 1);
    }
    assert_eq!(
        DOWN.load(SeqCst),
        4,
        "the body runs while the cache is down"
    );
    // Bounded by the deadline (one cache call per miss; the store is in the background), with
    // generous slack.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The invalidate companion reports the outage instead.
    assert!(down_invalidate(&cache, 1)
        .await
        .unwrap_err()
        .is_backend_failure());
}

static FROZEN: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn hundred_ms(cache: &Cache, id: u64) -> u64 {
    FROZEN.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    id
}

#[tokio::test]
async fn a_miss_costs_one_deadline_plus_the_body_with_the_server_frozen() {
    let server = RedisServer::start();
    let deadline = Duration::from_secs(1);
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(deadline)
        .build()
        .unwrap();
    let cache = Cache::new(repository);

    // Healthy: the store runs in the background and lands; the next call is a hit.
    assert_eq!(hundred_ms(&cache, 1).await, 1);
    assert_eq!(hundred_ms(&cache, 1).await, 1);
    assert_eq!(FROZEN.load(SeqCst), 1);
    assert_eq!(
        wait_for_keys(&server, 1).await,
        ["cache:1:cached_redis::hundred_ms:1"]
    );
    let raw: String = server.cmd(&["GET", "cache:1:cached_redis::hundred_ms:1"]);
    assert_eq!(raw, "1");

    // Frozen: the GET waits one deadline, the body 100 ms, and the SET NX no longer delays the
    // answer (before: GET deadline + body + SET deadline = 2.1 s).
    server.freeze();
    for id in 2..4 {
        let started = Instant::now();
        assert_eq!(hundred_ms(&cache, id).await, id);
        let took = started.elapsed();
        eprintln!("miss with the server frozen: {took:?}");
        assert!(
            took < deadline + Duration::from_millis(100 + 600),
            "a miss took {took:?} with a {deadline:?} deadline and a 100 ms body"
        );
    }
    assert_eq!(FROZEN.load(SeqCst), 3);
    server.thaw();
}

static AGAIN: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn once(cache: &Cache, id: u64) -> u64 {
    AGAIN.fetch_add(1, SeqCst);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_a_miss_never_runs_the_body_again() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    // The store of each miss is still in the background when the next call starts: it finds
    // the value in Redis (the write was queued first) or in the still-open flight.
    for id in 0..300 {
        assert_eq!(once(&cache, id).await, id);
        assert_eq!(once(&cache, id).await, id);
        assert_eq!(AGAIN.load(SeqCst), id as usize + 1, "key {id}");
    }
    assert_eq!(wait_for_keys(&server, 300).await.len(), 300);
}

static WRITTEN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache, value))]
async fn written(cache: &Cache, id: u64, value: u64) -> u64 {
    WRITTEN_RUNS.fetch_add(1, SeqCst);
    value
}

/// A call right after the caller's own `_invalidate` or `Cache::delete` of its key runs the
/// body again, rather than join the run whose store is still in progress (its flight ends once
/// the store's reply is handled) and be handed the value it has just removed. It was (found by
/// a probe: 1 to 27 calls in 500 on a real Redis, in 6 runs of 6): own writes now detach the
/// key's flight. The stores' replies are handled 2 ms late (`LateWrites`), so that the window
/// opens every time; 100 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_an_own_invalidation_runs_the_body() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let cache = Cache::new(LateWrites::new(repository, Duration::from_millis(2)));
    let mut missed = Vec::new();
    for id in 0..100 {
        assert_eq!(written(&cache, id, 1).await, 1);
        let how = if id % 2 == 0 {
            assert!(written_invalidate(&cache, id).await.unwrap());
            "_invalidate"
        } else {
            let key = format!("cached_redis::written:{id}");
            assert_eq!(cache.delete(&key).await.unwrap(), 1);
            "delete"
        };
        let got = written(&cache, id, 2).await;
        if got != 2 {
            missed.push(format!("{id} after {how}: {got}"));
        }
    }
    assert!(
        missed.is_empty(),
        "{} calls of 100 handed the value their own write removed: {:?}",
        missed.len(),
        &missed[..missed.len().min(8)]
    );
    assert_eq!(WRITTEN_RUNS.load(SeqCst), 200);
}

static HELD_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Its key argument and the run's number, once `gate` lets the run through.
#[cached(cache = cache, expire = 60, skip(cache, gate))]
async fn held(cache: &Cache, gate: Arc<Semaphore>, id: u64) -> (u64, usize) {
    let run = HELD_RUNS.fetch_add(1, SeqCst);
    drop(gate.acquire().await);
    (id, run)
}

/// `held` with a freshness option: its load goes through `get_or_set`'s protocol.
#[cached(cache = cache, expire = 60, stale_if_error = 60, skip(cache, gate))]
async fn held_fresh(cache: &Cache, gate: Arc<Semaphore>, id: u64) -> (u64, usize) {
    let run = HELD_RUNS.fetch_add(1, SeqCst);
    drop(gate.acquire().await);
    (id, run)
}

/// A call of `call` whose run is held until `invalidate` is done, or, `in_flight`, until 50 ms
/// after it was sent (a `DEL` answered late has landed, its reply is not yet handled); then a
/// call after both. The run number each of the two calls got.
async fn invalidated_during_a_run<C, Fut>(
    call: C,
    invalidate: impl Future<Output = ()>,
    in_flight: bool,
) -> (usize, usize)
where
    C: Fn(Arc<Semaphore>) -> Fut,
    Fut: Future<Output = (u64, usize)>,
{
    let gate = Arc::new(Semaphore::new(0));
    let before = HELD_RUNS.load(SeqCst);
    let writer = async {
        while HELD_RUNS.load(SeqCst) == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let open = async {
            if in_flight {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            gate.add_permits(1000);
        };
        if in_flight {
            tokio::join!(invalidate, open);
        } else {
            invalidate.await;
            open.await;
        }
    };
    let ((_, first), ()) = tokio::join!(call(Arc::clone(&gate)), writer);
    let (_, again) = call(gate).await;
    (first, again)
}

/// An `_invalidate` (or a `Cache::delete`) of a key made while its body runs is not undone by
/// that run's store: the value, computed before the invalidation, answers the run's callers but
/// is not stored, and the next call runs the body again. It was stored after the invalidation
/// and served for the whole `expire` (found by a probe, 3 runs of 3, with and without freshness
/// options). Both with the invalidation done before the body returns, and with its `DEL` in
/// flight when it does (answered 300 ms late: `LateWrites::deletes_too`), which a write's
/// detaching before it is sent covers. On the memory repository, then on Redis, one after the
/// other (the runs are counted in one static). Here rather than in `cached.rs`, which builds
/// from the published package: `LateWrites` is the unpublished harness's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_run_is_not_undone_by_its_store() {
    let memory = impcache::MemoryCacheRepository::new();
    let memory = LateWrites::new(memory, Duration::from_millis(300)).deletes_too();
    invalidations_during_runs_are_not_undone(&Cache::new(memory)).await;
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let late = LateWrites::new(repository, Duration::from_millis(300)).deletes_too();
    invalidations_during_runs_are_not_undone(&Cache::new(late)).await;
}

async fn invalidations_during_runs_are_not_undone(cache: &Cache) {
    let mut undone = Vec::new();
    for (id, in_flight) in (0..8).map(|id| (id, id % 2 == 1)) {
        let fresh = id >= 4;
        let invalidate = async move {
            let name = if fresh { "held_fresh" } else { "held" };
            let key = format!("cached_redis::{name}:{id}");
            let removed = match (id % 4 < 2, fresh) {
                (true, false) => held_invalidate(cache, id).await.unwrap(),
                (true, true) => held_fresh_invalidate(cache, id).await.unwrap(),
                (false, _) => cache.delete(&key).await.unwrap() > 0,
            };
            assert!(!removed, "nothing stored yet");
        };
        let (first, again) = if fresh {
            let call = |gate| held_fresh(cache, gate, id);
            invalidated_during_a_run(call, invalidate, in_flight).await
        } else {
            invalidated_during_a_run(|gate| held(cache, gate, id), invalidate, in_flight).await
        };
        if again == first {
            undone.push(format!("{id} (fresh: {fresh}, in flight: {in_flight})"));
        }
    }
    assert!(
        undone.is_empty(),
        "invalidations undone by the store of a run they came during: {undone:?}"
    );
}

static SPREAD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn spread(cache: &Cache, id: u64) -> u64 {
    SPREAD_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    id
}

/// A stampede on a cold key, its callers arriving over 20 ms (while the body runs and while its
/// value is stored), runs the body once. A caller whose `GET` missed just before the leader's
/// store completed, and which joined once its flight had ended, ran the body once more: 4 to 8
/// keys of 30 in every run (found by a probe). Its ticket is now taken before its `GET`, so it
/// looks again; and the leader's own store no longer ends its flight early.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_spread_over_the_store_runs_the_body_once() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    let mut twice = Vec::new();
    for id in 0..30 {
        let before = SPREAD_RUNS.load(SeqCst);
        let callers: Vec<_> = (0..100u64)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros((i * 7919) % 20_000)).await;
                    spread(&cache, id).await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), id);
        }
        let runs = SPREAD_RUNS.load(SeqCst) - before;
        if runs != 1 {
            twice.push((id, runs));
        }
    }
    assert!(
        twice.is_empty(),
        "keys whose body ran more than once: {twice:?}"
    );
}

static NO_RUNTIME_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn outside_tokio(cache: &Cache, id: u64) -> u64 {
    NO_RUNTIME_CALLS.fetch_add(1, SeqCst);
    id + 5
}

/// Outside any tokio runtime (a plain executor), a call to a Redis repository is a typed error
/// naming the operation, the key and the missing runtime, not tokio's panic ("there is no
/// reactor running", at the deadline's timer: found by a probe), and a `#[cached]` function
/// over it fails open: its body answers, every time.
#[test]
fn outside_a_tokio_runtime_a_redis_call_is_an_error_and_cached_runs_its_body() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let error = block_on(impcache::CacheRepository::get(&repository, "k")).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(&error, impcache::Error::Unavailable { operation: "get", key, .. } if key == "k"),
        "{error:?}"
    );
    assert!(message.contains("tokio runtime"), "{message}");
    assert!(!repository.is_circuit_open());
    let cache = Cache::new(repository);
    assert!(block_on(cache.get::<u64>("k")).is_err());
    assert_eq!(block_on(outside_tokio(&cache, 1)), 6);
    assert_eq!(block_on(outside_tokio(&cache, 1)), 6);
    assert_eq!(NO_RUNTIME_CALLS.load(SeqCst), 2);
    assert!(server.keys().is_empty(), "{:?}", server.keys());
}
