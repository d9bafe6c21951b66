//! The coherent near cache (issue 14) against real throwaway servers: every coherence rule of the
//! issue has a case here (changes by other clients, the in-flight race under concurrent writes,
//! own writes, the tracking connection killed, Redis restarted, a server refusing tracking,
//! expiry and the byte bound, a Python writer; Sentinel and Cluster with their features).
//!
//! No timing assertions: "within a bound" waits are generous ceilings for liveness (a test fails
//! only if a change never arrives); the coherence checks are orderings (never an older value
//! after a newer one, never a value Redis no longer has).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impcache::{
    Cache, CacheRepository, MemoryCacheRepository, NearCache, NearCacheStatus, RedisCacheRepository,
};
use impcache_tests::{answered_locally, RedisServer};
use redis::AsyncCommands;

/// The ceiling for anything that must happen "soon" (an invalidation, a reconnect).
const SOON: Duration = Duration::from_secs(10);

fn near() -> NearCache {
    NearCache::new().heartbeat(Duration::from_millis(100))
}

fn near_cache(server: &RedisServer, near: NearCache) -> Cache {
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::builder(repository).near_cache(near).build()
}

async fn other_client(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Polls `check` until it holds; panics after [`SOON`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SOON;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_active(cache: &Cache) {
    let _ = cache.get::<i64>("warm-up").await;
    eventually("the near cache becomes active", || async {
        cache.is_near_cache_active()
    })
    .await;
}

/// Reads `key` until it is served from process memory.
async fn wait_local(cache: &Cache, key: &str) {
    eventually("the value is served locally", || async {
        let before = cache.near_cache_stats().hits;
        let _ = cache.get::<serde_json::Value>(key).await;
        cache.near_cache_stats().hits > before
    })
    .await;
}

/// Restarts `server` with `k` = 2 stored in it, and reads `k` until an answer comes: every
/// answer must be the new value (an error while reconnecting is no answer); another value
/// fails the test with `served`.
async fn restart_with_k_2(server: &mut RedisServer, cache: &Cache, served: &str) {
    server.restart();
    let _: () = server.cmd(&["SET", &cache.make_key("k"), "2"]);
    eventually("the new value is read", || async {
        match cache.get::<i64>("k").await {
            Ok(value) => {
                assert_eq!(value, Some(2), "{served}");
                true
            }
            Err(_) => false,
        }
    })
    .await;
}

/// A near cache on `server`, active, with `k` = 1 set and served from process memory.
async fn local_k(server: &RedisServer) -> Cache {
    local_k_with(server, near()).await
}

async fn local_k_with(server: &RedisServer, near: NearCache) -> Cache {
    let cache = near_cache(server, near);
    wait_active(&cache).await;
    cache.set("k", &1, 60).await.unwrap();
    wait_local(&cache, "k").await;
    cache
}

async fn wait_value(cache: &Cache, key: &str, expected: Option<i64>) {
    eventually(&format!("{key} reads {expected:?}"), || async {
        cache.get::<i64>(key).await.ok() == Some(expected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_by_other_clients_reach_the_reader() {
    let server = RedisServer::start();
    let cache = local_k(&server).await;
    let mut other = other_client(&server).await;
    let key = cache.make_key("k");
    let _: () = other.set(&key, "2").await.unwrap();
    wait_value(&cache, "k", Some(2)).await;

    wait_local(&cache, "k").await;
    let _: () = other.del(&key).await.unwrap();
    wait_value(&cache, "k", None).await;

    let _: () = other.set(&key, "3").await.unwrap();
    wait_value(&cache, "k", Some(3)).await;
    wait_local(&cache, "k").await;
    let _: () = other.pexpire(&key, 20).await.unwrap();
    wait_value(&cache, "k", None).await;

    let _: () = other.set(&key, "4").await.unwrap();
    wait_value(&cache, "k", Some(4)).await;
    wait_local(&cache, "k").await;
    let flushes = cache.near_cache_stats().flushes;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut other).await.unwrap();
    wait_value(&cache, "k", None).await;
    assert!(cache.near_cache_stats().flushes > flushes);

    // get_many: local keys served, the rest read in one MGET.
    cache.set_many([("a", 1), ("b", 2)], 60).await.unwrap();
    wait_local(&cache, "a").await;
    let values: Vec<Option<i64>> = cache.get_many(["a", "b", "c"]).await.unwrap();
    assert_eq!(values, [Some(1), Some(2), None]);
    let _: () = other.set(cache.make_key("a"), "10").await.unwrap();
    eventually("get_many sees the other client's write", || async {
        cache.get_many::<i64>(["a", "b"]).await.unwrap() == [Some(10), Some(2)]
    })
    .await;
}

/// Concurrent misses share the barrier's rounds (`near/barrier.rs`): 100 reads at once send far
/// fewer than the 200 `PING`s of a round each, every one answers with the value, and every
/// value is kept (the next reads are local).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_the_barrier() {
    let server = RedisServer::start();
    // A long heartbeat: its own `PING`s stay out of the count.
    let cache = near_cache(&server, NearCache::new().heartbeat(Duration::from_secs(5)));
    wait_active(&cache).await;
    for i in 0..100 {
        let _: () = server.cmd(&["SET", &cache.make_key(&format!("m:{i}")), &i.to_string()]);
    }
    // Those SETs' invalidations (BCAST) may still be on their way to the tracker; one applied
    // after a read's ticket rightly keeps that read from being kept (80 of 100 kept on a loaded
    // machine). A read through the barrier first: its round of `PING`s begins after Redis sent
    // them all, so it passes once they are applied.
    assert_eq!(cache.get::<i64>("settled").await.unwrap(), None);
    let before = server.command_calls(&["ping"]);
    let reads: Vec<_> = (0..100i64)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<i64>(&format!("m:{i}")).await })
        })
        .collect();
    for (i, read) in (0i64..).zip(reads) {
        assert_eq!(read.await.unwrap().unwrap(), Some(i));
    }
    let sent = server.command_calls(&["ping"]) - before;
    assert!(sent < 100, "{sent} PINGs for 100 concurrent misses");
    let hits = cache.near_cache_stats().hits;
    for i in 0..100i64 {
        assert_eq!(cache.get::<i64>(&format!("m:{i}")).await.unwrap(), Some(i));
    }
    assert_eq!(
        cache.near_cache_stats().hits - hits,
        100,
        "every miss was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_go_back_while_another_client_writes() {
    const WRITES: i64 = 1500;
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    let key = cache.make_key("counter");
    cache.set("counter", &0, 600).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let cache = cache.clone();
        let done = Arc::clone(&done);
        readers.push(tokio::spawn(async move {
            let mut last = 0;
            let mut reads = 0u64;
            loop {
                let seen: i64 = cache.get("counter").await.unwrap().unwrap();
                assert!(seen >= last, "went back from {last} to {seen}");
                last = seen;
                reads += 1;
                if done.load(Ordering::SeqCst) && seen == WRITES {
                    return reads;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut other = other_client(&server).await;
    for value in 1..=WRITES {
        let _: () = other.set(&key, value.to_string()).await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    // Every reader sees the last write (a reader stuck on an older value would never end).
    for reader in readers {
        let reads = tokio::time::timeout(SOON, reader).await.unwrap().unwrap();
        assert!(reads > 0);
    }
    let stats = cache.near_cache_stats();
    assert!(
        stats.hits > 0 && stats.invalidations >= WRITES as u64,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_read_back_at_once() {
    let server = RedisServer::start();
    let cache = local_k(&server).await;
    cache.set("k", &2, 60).await.unwrap();
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(2));
    wait_local(&cache, "k").await;
    cache.set_many([("k", 3)], 60).await.unwrap();
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(3));
    wait_local(&cache, "k").await;
    cache.delete("k").await.unwrap();
    assert_eq!(cache.get::<i64>("k").await.unwrap(), None);
    assert!(cache.set_nx("k", &4, 60).await.unwrap());
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(4));
    wait_local(&cache, "k").await;
    cache.delete_many(["k"]).await.unwrap();
    assert_eq!(cache.get::<i64>("k").await.unwrap(), None);
    cache.set("k", &5, 60).await.unwrap();
    wait_local(&cache, "k").await;
    cache.delete_pattern("*").await.unwrap();
    assert_eq!(cache.get::<i64>("k").await.unwrap(), None);
    // Another version is another key: the local entry of version 1 is not served for it.
    cache.set("k", &6, 60).await.unwrap();
    wait_local(&cache, "k").await;
    let v2 = cache.with_version(2);
    assert_eq!(v2.get::<i64>("k").await.unwrap(), None);
    v2.set("k", &7, 60).await.unwrap();
    assert_eq!(v2.get::<i64>("k").await.unwrap(), Some(7));
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(6));
    // Raw entries (the HTTP layer's, `#[cached]`'s) read through it the same way.
    cache
        .set_raw("raw", bytes::Bytes::from_static(b"r1"), 60)
        .await
        .unwrap();
    eventually("a raw entry is served locally", || async {
        let before = cache.near_cache_stats().hits;
        let found = cache.get_raw("raw").await.unwrap();
        assert_eq!(found.as_deref(), Some(&b"r1"[..]));
        cache.near_cache_stats().hits > before
    })
    .await;
    cache
        .set_raw("raw", bytes::Bytes::from_static(b"r2"), 60)
        .await
        .unwrap();
    assert_eq!(
        cache.get_raw("raw").await.unwrap().as_deref(),
        Some(&b"r2"[..])
    );
    // get_or_set reads through the near cache too (its GET + PTTL).
    let value: i64 = cache
        .get_or_set("k", 60, || async { unreachable!("stored") })
        .await
        .unwrap();
    assert_eq!(value, 6);
}

/// A dropped `Cache` with a near cache closes its connections at once, not at its tracker's
/// next heartbeat (an hour here): the tracker holds the repository, and with a 500 ms heartbeat a
/// `Cache` built per request left a connection per request open meanwhile (313 file descriptors
/// for 300 builds in 0.46 s; found by a probe, 2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_cache_closes_its_connections_at_once() {
    let server = RedisServer::start();
    let clients = || {
        let list: String = server.cmd(&["CLIENT", "LIST"]);
        list.lines().count()
    };
    let alone = clients();
    let cache = near_cache(
        &server,
        NearCache::new().heartbeat(Duration::from_secs(3600)),
    );
    wait_active(&cache).await;
    assert!(clients() >= alone + 2, "a data and a tracking connection");
    drop(cache);
    eventually("the connections close", || async { clients() == alone }).await;
}

/// The id of the cache's tracking connection: the one RESP3 client.
fn tracking_client_id(server: &RedisServer) -> Option<String> {
    let list: String = server.cmd(&["CLIENT", "LIST"]);
    list.lines()
        .find(|line| line.contains("resp=3"))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_never_leaves_a_stale_value() {
    let server = RedisServer::start();
    // A heartbeat of 1 s, not 100 ms: the loss is read from the connection's end at once, and a
    // heartbeat `PING` that a loaded machine answers later than the heartbeat would be a second
    // flush, against the count below.
    let cache = local_k_with(&server, NearCache::new().heartbeat(Duration::from_secs(1))).await;
    let mut other = other_client(&server).await;
    let key = cache.make_key("k");

    let id = tracking_client_id(&server).expect("a RESP3 tracking connection");
    let flushes = cache.near_cache_stats().flushes;
    let _: () = server.cmd(&["CLIENT", "KILL", "ID", &id]);
    // Changed while nothing tracks it: its invalidation is lost.
    let _: () = other.set(&key, "2").await.unwrap();
    // Once the loss is noticed (the connection's end, read by its driver: at once on loopback,
    // within a heartbeat for a silent loss), everything local is gone: the change made while
    // tracking was down is never hidden by the old local value.
    eventually("the loss is noticed", || async {
        cache.near_cache_stats().flushes > flushes
    })
    .await;
    for _ in 0..200 {
        assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(2));
    }
    wait_active(&cache).await;
    assert_ne!(tracking_client_id(&server).as_deref(), Some(id.as_str()));
    // One loss, one flush (reconnecting is not another).
    assert_eq!(cache.near_cache_stats().flushes, flushes + 1);
    wait_local(&cache, "k").await;
    let _: () = other.set(&key, "3").await.unwrap();
    wait_value(&cache, "k", Some(3)).await;
}

/// A delete whose future is dropped after it was sent (a `timeout`, a `select!`) may still land:
/// its keys are dropped locally all the same, as an interrupted `set` or `delete` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_delete_drops_its_keys_locally() {
    let server = RedisServer::start();
    // A heartbeat longer than the test: nothing notices the frozen server meanwhile.
    let cache = near_cache(&server, NearCache::new().heartbeat(Duration::from_secs(30)));
    wait_active(&cache).await;
    for key in ["k", "j"] {
        cache.set(key, &1, 60).await.unwrap();
        wait_local(&cache, key).await;
    }
    server.freeze();
    let short = Duration::from_millis(50);
    let hits = cache.near_cache_stats().hits;
    let mut interrupted = Vec::new();
    let mut served = Vec::new();
    // Each delete then its own key's read: `delete_pattern`'s flush would drop `k` too.
    for key in ["k", "j"] {
        let delete = async {
            match key {
                "k" => cache.delete_many(["k"]).await,
                _ => cache.delete_pattern("j*").await,
            }
        };
        interrupted.push(tokio::time::timeout(short, delete).await.is_err());
        let read = tokio::time::timeout(short, cache.get::<i64>(key)).await;
        served.push(matches!(read, Ok(Ok(Some(1)))));
    }
    server.thaw();
    assert_eq!(interrupted, [true; 2]);
    assert_eq!(
        served, [false; 2],
        "a local copy outlived its interrupted delete"
    );
    assert_eq!(cache.near_cache_stats().hits, hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_the_key_changed() {
    let mut server = RedisServer::start();
    let cache = local_k(&server).await;

    server.kill();
    eventually("the near cache stops serving", || async {
        cache.near_cache_status() == NearCacheStatus::Connecting
    })
    .await;
    assert!(
        cache.get::<i64>("k").await.is_err(),
        "nothing served while Redis is down"
    );
    // Every answer after the restart is the new value (or an error while reconnecting).
    restart_with_k_2(&mut server, &cache, "the old local value was served").await;
    wait_active(&cache).await;
    wait_local(&cache, "k").await;
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(2));
    let _: () = server.cmd(&["SET", &cache.make_key("k"), "3"]);
    wait_value(&cache, "k", Some(3)).await;
}

/// The same on a one-thread runtime (`#[tokio::test]`'s default) with the harness's synchronous
/// restart and write: the thread was blocked throughout, so nothing has read the tracking
/// connection's end yet when the next read comes; the read gives the thread back once first
/// (it had not for a while), the end is read, everything is flushed, and Redis answers.
#[tokio::test]
async fn redis_restarted_with_the_key_changed_on_one_thread() {
    let mut server = RedisServer::start();
    let cache = local_k(&server).await;
    server.restart();
    let _: () = server.cmd(&["SET", &cache.make_key("k"), "2"]);
    match cache.get::<i64>("k").await {
        Ok(value) => assert_eq!(value, Some(2), "the old local value was served"),
        Err(error) => assert!(error.is_backend_failure(), "{error}"),
    }
    wait_value(&cache, "k", Some(2)).await;
}

/// Once the near cache of `cache` is `Unsupported`, every read goes to Redis: another client's
/// writes are all seen, and nothing is served locally.
async fn runs_without_it(server: &RedisServer, cache: &Cache) {
    eventually("the near cache is unsupported", || async {
        cache.near_cache_status() == NearCacheStatus::Unsupported
    })
    .await;
    let mut other = other_client(server).await;
    for value in 0..20 {
        let _: () = other.set(cache.make_key("k"), value).await.unwrap();
        assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(value));
    }
    assert_eq!(cache.near_cache_stats().hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_tracking_runs_without_it() {
    let server = RedisServer::start_with(&["--rename-command", "CLIENT", ""]);
    let cache = near_cache(&server, near());
    let _ = cache.get::<i64>("k").await;
    runs_without_it(&server, &cache).await;
}

/// A near-cached `Cache` logged in as the user `app` (password `pw`), given the ACL `rules`,
/// with `k` set.
async fn as_acl_user(server: &RedisServer, rules: &[&str]) -> Cache {
    let setuser = ["ACL", "SETUSER", "app", "on", ">pw"];
    let _: () = server.cmd(&[&setuser[..], rules].concat());
    let url = format!("redis://app:pw@127.0.0.1:{}/0", server.port());
    let repository = RedisCacheRepository::builder(url)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let cache = Cache::builder(repository).near_cache(near()).build();
    cache.set("k", &1, 60).await.unwrap();
    cache
}

/// An ACL that forbids `CLIENT` answers `NOPERM`: the near cache is unsupported for good (not
/// reconnecting forever), and the cache works without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_forbidding_client_runs_without_it() {
    let server = RedisServer::start();
    let cache = as_acl_user(&server, &["~*", "&*", "+@all", "-client"]).await;
    runs_without_it(&server, &cache).await;
}

/// A server's error reply (`WRONGTYPE` from a key another client made a hash, `NOPERM` from an
/// ACL) is the same error through the near cache as on plain Redis, whose pipelines (`GET` +
/// `PTTL`, `MGET` with the `PTTL`s, `set_many`'s `SET`s) report the first failed command's code
/// and the server's message, as that command alone does. (The near cache reported
/// `code: None, message: "Pipeline failure: [(Index 0, error: \"WRONGTYPE\": ...)]"`: found by a
/// probe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_the_same_through_the_near_cache() {
    let server = RedisServer::start();
    let near = as_acl_user(&server, &["~cache:1:k", "~cache:1:ok*", "&*", "+@all"]).await;
    wait_active(&near).await;
    let url = format!("redis://app:pw@127.0.0.1:{}/0", server.port());
    let plain = Cache::new(
        RedisCacheRepository::builder(url)
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let _: i64 = server.cmd(&["HSET", "cache:1:ok-hash", "f", "v"]);
    let server_error = |r: impcache::Result<_>| match r {
        Err(e @ impcache::Error::Server { .. }) => format!("{e:?}"),
        other => panic!("not a server error: {other:?}"),
    };

    let on_redis = server_error(plain.get::<i64>("ok-hash").await.map(|_| ()));
    let through_near = server_error(near.get::<i64>("ok-hash").await.map(|_| ()));
    assert_eq!(on_redis, through_near);
    assert!(
        on_redis.contains(r#"code: Some("WRONGTYPE"), message: "WRONGTYPE Operation"#),
        "{on_redis}"
    );

    let keys = ["ok-1", "forbidden"];
    let on_redis = server_error(plain.get_many::<i64>(keys).await.map(|_| ()));
    let through_near = server_error(near.get_many::<i64>(keys).await.map(|_| ()));
    assert_eq!(on_redis, through_near);
    assert!(
        on_redis.contains(r#"code: Some("NOPERM"), message: "NOPERM "#),
        "{on_redis}"
    );

    // `set_many` pipelines its `SET`s on plain Redis too: the error of the `SET` that failed.
    let one = server_error(plain.set("forbidden", &1, 60).await);
    let many = server_error(plain.set_many([("ok-1", &1), ("forbidden", &1)], 60).await);
    let message = |shown: &str| shown.split_once("code:").map(|(_, m)| m.to_owned());
    assert_eq!(message(&one), message(&many));
}

/// An ACL that allows `CLIENT TRACKING` but not `PING` (the heartbeat's and the barrier's): the
/// near cache is unsupported for good and says so, rather than flushing and reconnecting at every
/// heartbeat while it reports itself active (54 flushes in 2 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_forbidding_ping_runs_without_it() {
    let server = RedisServer::start();
    let rules = [
        "~*",
        "resetchannels",
        "+@read",
        "+@write",
        "+@scripting",
        "+@connection",
        "-ping",
    ];
    let cache = as_acl_user(&server, &rules).await;
    runs_without_it(&server, &cache).await;
    assert_eq!(cache.near_cache_stats().flushes, 0);
}

/// Everything this test binary logs at `INFO` and above (a global subscriber: the tracking task
/// runs on the runtime's worker threads).
fn global_logs() -> &'static impcache_tests::logs::Logs {
    static LOGS: std::sync::OnceLock<impcache_tests::logs::Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = impcache_tests::logs::Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

/// Logins refused by the server since its `ACL LOG` was last reset (Redis 7.0 has no
/// `acl_access_denied_auth` in `INFO stats`; the log counts repeated refusals in one entry).
fn refused_logins(server: &RedisServer) -> i64 {
    let entries: Vec<std::collections::HashMap<String, redis::Value>> =
        server.cmd(&["ACL", "LOG", "128"]);
    entries
        .iter()
        .filter(|entry| {
            matches!(entry.get("reason"), Some(redis::Value::BulkString(reason)) if reason == b"auth")
        })
        .map(|entry| match entry.get("count") {
            Some(redis::Value::Int(count)) => *count,
            _ => 1,
        })
        .sum()
}

/// The user's password changes on the server and only the tracking connection is lost: the data
/// connection (logged in already) keeps working, the tracking connection cannot log in again. Its
/// attempts back off (28 refused logins in 3 s before, one every ~100 ms) and the failure is
/// logged (`warn!`, naming `WRONGPASS`, without the password); reads stay correct meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_connection_that_cannot_log_in_backs_off_and_says_so() {
    let logs = global_logs();
    let server = RedisServer::start();
    let _: () = server.cmd(&[
        "ACL",
        "SETUSER",
        "rotated",
        "on",
        ">old-secret-7f",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!(
        "redis://rotated:old-secret-7f@127.0.0.1:{}/0",
        server.port()
    );
    let repository = RedisCacheRepository::builder(url)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let cache = Cache::builder(repository).near_cache(near()).build();
    wait_active(&cache).await;
    cache.set("k", &1, 60).await.unwrap();
    wait_local(&cache, "k").await;

    let _: () = server.cmd(&["ACL", "SETUSER", "rotated", "resetpass", ">new-secret-9c"]);
    let id = tracking_client_id(&server).expect("a RESP3 tracking connection");
    let _: () = server.cmd(&["ACL", "LOG", "RESET"]);
    let _: () = server.cmd(&["CLIENT", "KILL", "ID", &id]);
    let mut other = other_client(&server).await;
    let key = cache.make_key("k");
    let start = Instant::now();
    let mut value = 1;
    while start.elapsed() < Duration::from_secs(3) {
        value += 1;
        let _: () = other.set(&key, value).await.unwrap();
        assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(value));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused_logins(&server);
    assert_eq!(cache.near_cache_status(), NearCacheStatus::Connecting);
    assert!(
        (1..=12).contains(&refused),
        "{refused} refused logins of the tracking connection in 3 s"
    );
    let text = logs.text();
    assert!(
        text.lines().any(|line| line.contains("WARN")
            && line.contains("tracking connection")
            && line.contains("WRONGPASS")),
        "no warning names the refused login: {text}"
    );
    assert!(!text.contains("old-secret-7f") && !text.contains("new-secret-9c"));
}

#[derive(Debug)]
struct Custom(MemoryCacheRepository);

impl CacheRepository for Custom {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        self.0.set(key, value, expiry)
    }
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<bool>> {
        self.0.set_nx(key, value, expiry)
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, bytes::Bytes)],
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        self.0.set_many(entries, expiry)
    }
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<Option<bytes::Bytes>>> {
        self.0.get(key)
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<Vec<Option<bytes::Bytes>>>> {
        self.0.get_many(keys)
    }
    fn delete<'a>(&'a self, key: &'a str) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete(key)
    }
    fn delete_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete_many(keys)
    }
    fn delete_pattern<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete_pattern(pattern)
    }
}

/// Local hits complete without ever waiting. A task looping over them must still give its thread
/// back to the runtime (each `Cache` operation spends tokio's cooperative budget), or the near
/// cache's own tasks (its tracking connection, its heartbeat) never run on that thread and the
/// reader never learns of another client's write. On a one-thread runtime that is a hang, so the
/// runtime runs on its own thread and the test waits for its answer with a bound.
#[test]
fn a_reader_looping_over_local_hits_still_receives_invalidations() {
    let runtime = tokio::runtime::Builder::new_current_thread();
    a_looping_reader_sees_another_clients_write(runtime, |cache| {
        Box::pin(async move { cache.get::<i64>("k").await.unwrap().unwrap_or(0) })
    });
}

/// The test of [`a_reader_looping_over_local_hits_still_receives_invalidations`]: a runtime of
/// `runtime` on its own thread, one task looping over `read` of `k` (held locally), another
/// client's `SET` of `k` to 2, which the loop must see.
fn a_looping_reader_sees_another_clients_write(
    mut runtime: tokio::runtime::Builder,
    read: fn(&Cache) -> impcache::BoxFuture<'_, i64>,
) {
    let server = RedisServer::start();
    let url = server.url();
    let (ready, key) = std::sync::mpsc::channel();
    let (done, reads) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = runtime.enable_all().build().unwrap();
        runtime.block_on(async move {
            let repository = RedisCacheRepository::builder(url)
                .deadline(Duration::from_secs(2))
                .build()
                .unwrap();
            let cache = Cache::builder(repository).near_cache(near()).build();
            wait_active(&cache).await;
            cache.set("k", &1, 60).await.unwrap();
            wait_local(&cache, "k").await;
            let key = cache.make_key("k");
            let looping = tokio::spawn(async move {
                let mut reads = 0u64;
                loop {
                    reads += 1;
                    match read(&cache).await {
                        2 => return reads,
                        // Looping: the other client may write now.
                        _ if reads == 1 => ready.send(key.clone()).unwrap(),
                        _ => {}
                    }
                }
            });
            done.send(looping.await.unwrap()).unwrap();
        });
    });
    let key = key
        .recv_timeout(SOON)
        .expect("the near cache never became active");
    let _: () = server.cmd(&["SET", &key, "2"]);
    let reads = reads
        .recv_timeout(3 * SOON)
        .expect("a reader looping over local hits never saw another client's write");
    assert!(reads > 1);
}

/// A new cache's first reads wait for its first tracking handshake (at most 250 ms), so what
/// they read is kept: the second read of a key is a local hit, with no wait for activity first.
/// (Before, a read made before the background handshake ended went to Redis and was not kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cache_keeps_its_first_reads() {
    let server = RedisServer::start();
    let mut other = other_client(&server).await;
    let _: () = other.set("cache:1:k", "1").await.unwrap();
    for round in 0..5 {
        let cache = near_cache(&server, near());
        assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(1));
        assert!(cache.is_near_cache_active(), "round {round}");
        assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(1));
        let stats = cache.near_cache_stats();
        assert_eq!(
            (stats.misses, stats.hits, stats.bypassed),
            (1, 1, 0),
            "round {round}"
        );
    }
}

/// The first read after this cache's own `set` is kept, and the next one is a local hit: Redis's
/// invalidation of the write (its echo), landing after the read was sent, is known for the
/// write's and drops nothing (`near/echo.rs`). Before, 170–184 of 200 were kept, the others
/// dropped by the echo. An echo landing before the write's reply is handled leaves the read
/// dropped, on purpose: hence not all 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_an_own_write_is_kept() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    let mut kept = 0;
    for i in 0..200 {
        let key = format!("w{i}");
        cache.set(&key, &i, 60).await.unwrap();
        assert_eq!(cache.get::<i64>(&key).await.unwrap(), Some(i));
        let before = cache.near_cache_stats().hits;
        assert_eq!(cache.get::<i64>(&key).await.unwrap(), Some(i));
        if cache.near_cache_stats().hits > before {
            kept += 1;
        }
    }
    assert!(kept >= 195, "kept {kept} of 200");
}

/// A value `get_or_set` loads is what the next read through the same `Cache` returns, though its
/// store is only sent when the caller is answered: the local entry it replaces is dropped when
/// the store is sent, not only when it returns. (The old entry answered the next read 48 of 50
/// times over a stale entry, 14 of 50 over one hidden by its tag.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_read_after_a_load_is_the_loaded_value() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    for i in 0..50 {
        // Over an entry held locally and stale under the call's window (its TTL, 60 s, is under
        // the window: stale at once).
        let stale = format!("s{i}");
        cache.set(&stale, &"old", 60).await.unwrap();
        wait_local(&cache, &stale).await;
        let loaded: String = cache
            .get_or_set(&stale, 60, || async { "new".to_owned() })
            .stale_if_error(Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(loaded, "new");
        let next = cache.get::<String>(&stale).await.unwrap();
        assert_eq!(next.as_deref(), Some("new"), "{stale}");
        // Over a tagged entry held locally and hidden by its tag.
        let hidden = format!("t{i}");
        cache.set_tagged(&hidden, &"old", 60, ["t"]).await.unwrap();
        wait_local(&cache, &hidden).await;
        cache.invalidate_tag("t").await.unwrap();
        let loaded: String = cache
            .get_or_set(&hidden, 60, || async { "new".to_owned() })
            .await
            .unwrap();
        assert_eq!(loaded, "new");
        let next = cache.get::<String>(&hidden).await.unwrap();
        assert_eq!(next.as_deref(), Some("new"), "{hidden}");
    }
}

/// The first read after a load is kept, as the first read after a `set` is: `get_or_set`
/// answers once its store is sent, so that read was sent while the store was in flight and the
/// store's return dropped it (kept 0 of 30, against 30 of 30 after a `set`; found by a fault
/// probe). It now waits for the store to return (`near/echo.rs`), and the second read is a
/// local hit; untagged and tagged. An echo arriving before the store's reply is handled leaves
/// the read dropped, on purpose (as `the_first_read_after_an_own_write_is_kept`): hence not
/// all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_a_load_is_kept() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    let (mut plain, mut tagged) = (0, 0);
    for i in 0..50 {
        let key = format!("l{i}");
        let loaded: i64 = cache
            .get_or_set(&key, 60, move || async move { i })
            .await
            .unwrap();
        assert_eq!(loaded, i);
        assert_eq!(cache.get::<i64>(&key).await.unwrap(), Some(i));
        let before = cache.near_cache_stats();
        assert_eq!(cache.get::<i64>(&key).await.unwrap(), Some(i));
        let after = cache.near_cache_stats();
        if after.hits > before.hits && after.misses == before.misses {
            plain += 1;
        }

        let key = format!("t{i}");
        let load = || {
            cache
                .get_or_set(&key, 60, move || async move { i })
                .tags(["t"])
        };
        assert_eq!(load().await.unwrap(), i);
        assert_eq!(load().await.unwrap(), i);
        let before = cache.near_cache_stats();
        assert_eq!(load().await.unwrap(), i);
        let after = cache.near_cache_stats();
        if after.hits > before.hits && after.misses == before.misses {
            tagged += 1;
        }
    }
    assert!(
        plain >= 45 && tagged >= 45,
        "kept {plain} and {tagged} (tagged) of 50"
    );
}

/// With fail-safe on, a load followed by one read leaves a copy for an outage: a `get_or_set`
/// whose loader then fails answers with it. The read after the load was not kept, so no copy
/// was made, and the call failed with the loader's error (10 of 10 in a fault probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_has_a_copy_after_a_load_and_one_read() {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let cache = near_cache(&server, near().fail_safe(true));
    wait_active(&cache).await;
    let stored: i64 = cache
        .get_or_set("k", 60, || async { 1 })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(1));
    outage(&mut server, &cache).await;
    assert_eq!(failing_load(&cache, policy).await.unwrap(), 1);
    assert_eq!(cache.near_cache_stats().fail_safe_served, 1);
}

/// Another client's write racing a load's store is never hidden by what the read after the
/// load keeps: whichever write lands last, the reader ends up reading what Redis holds, and
/// does not go back from it. (Keeping the stored bytes themselves, without that read, would
/// hide a write run in the store's event-loop turn after it: Redis announces both with one
/// invalidation, taken for the store's echo; see `near/echo.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_racing_a_loads_store_is_never_hidden() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    let mut other = other_client(&server).await;
    wait_active(&cache).await;
    let (mut mine, mut theirs) = (0, 0);
    for i in 0..300 {
        let key = format!("r{i}");
        let full = cache.make_key(&key);
        let load = cache.get_or_set(&key, 60, || async { "mine".to_owned() });
        let (loaded, ()) = tokio::join!(load, async {
            if i % 2 == 1 {
                tokio::task::yield_now().await;
            }
            let () = other.set(&full, "\"theirs\"").await.unwrap();
        });
        let loaded: String = loaded.unwrap();
        assert!(loaded == "mine" || loaded == "theirs", "{loaded}");
        // The read right after the load (kept when it can be), then what Redis holds now.
        let _ = cache.get::<String>(&key).await.unwrap();
        let held: String = other.get(&full).await.unwrap();
        let held: String = serde_json::from_str(&held).unwrap();
        if held == "mine" {
            mine += 1;
        } else {
            theirs += 1;
        }
        eventually(&format!("{key} reads {held}"), || async {
            cache.get::<String>(&key).await.unwrap().as_deref() == Some(held.as_str())
        })
        .await;
        for _ in 0..3 {
            let read = cache.get::<String>(&key).await.unwrap();
            assert_eq!(read.as_deref(), Some(held.as_str()), "{key} went back");
        }
    }
    println!("Redis held the load's value {mine} times, the other client's {theirs} times");
}

/// The case that forbids keeping a load's stored bytes without reading them back: another
/// client's write run in the same event-loop turn right after the store. `CLIENT PAUSE WRITE`
/// holds both writes, and Redis runs them in one turn when the pause ends, the store first:
/// Redis holds the other client's value, and announces both writes with one invalidation of the
/// key, which this cache takes for its store's echo. The stored bytes kept locally would then be
/// served until `max_ttl` (tried: "mine" was still read 10 s later, in the 4th of 5 rounds; in
/// the others the invalidation was handled before the store's reply, and no echo was expected);
/// the read after the load is sent after that turn and reads the other client's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_the_stores_event_loop_turn_is_never_hidden() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    let mut other = other_client(&server).await;
    wait_active(&cache).await;
    for i in 0..5 {
        let key = format!("m{i}");
        let full = cache.make_key(&key);
        let _: () = server.cmd(&["CLIENT", "PAUSE", "300", "WRITE"]);
        let loaded: String = cache
            .get_or_set(&key, 60, || async { "mine".to_owned() })
            .await
            .unwrap();
        assert_eq!(loaded, "mine");
        // The store is held first, then the other client's write.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let theirs = tokio::spawn({
            let mut other = other.clone();
            let full = full.clone();
            async move {
                let () = other.set(&full, "\"theirs\"").await.unwrap();
            }
        });
        theirs.await.unwrap();
        let held: String = other.get(&full).await.unwrap();
        assert_eq!(held, "\"theirs\"", "the writes ran in the order sent");
        eventually(&format!("{key} reads theirs"), || async {
            cache.get::<String>(&key).await.unwrap().as_deref() == Some("theirs")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            cache.get::<String>(&key).await.unwrap().as_deref(),
            Some("theirs")
        );
    }
}

/// `NearCacheStats::invalidations` counts one per own write of a key, whether Redis's echo of
/// the write arrives before the write returns (it used to be counted then and again by the
/// write: 2 per write, every run on loopback) or after; another client's write counts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_write_counts_one_invalidation() {
    const WRITES: u64 = 50;
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    for i in 0..WRITES {
        cache.set(&format!("w{i}"), &i, 60).await.unwrap();
        wait_local(&cache, &format!("w{i}")).await;
    }
    // Whatever echo of those writes is still on its way is not counted (it is expected).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cache.near_cache_stats().invalidations;
    for i in 0..WRITES {
        cache.set(&format!("w{i}"), &(i + 1), 60).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let own = cache.near_cache_stats().invalidations - before;
    assert_eq!(own, WRITES, "one per own write");
    wait_local(&cache, "w0").await;
    let before = cache.near_cache_stats().invalidations;
    let _: () = other_client(&server)
        .await
        .set(cache.make_key("w0"), "7")
        .await
        .unwrap();
    wait_value(&cache, "w0", Some(7)).await;
    assert_eq!(cache.near_cache_stats().invalidations - before, 1);
}

/// `get_many` through a near cache on a single node keeps what it reads (its `MGET` is pipelined
/// with the keys' `PTTL`s): the same `get_many` again is served from process memory, sending
/// nothing; another client's change still reaches it. (Before, its replies were never kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_keeps_what_it_reads() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    let mut other = other_client(&server).await;
    for key in ["a", "b", "c"] {
        let _: () = other.set(cache.make_key(key), "1").await.unwrap();
    }
    let keys = ["a", "b", "c", "absent"];
    eventually("a second get_many is served locally", || async {
        let first: Vec<Option<i64>> = cache.get_many(keys).await.unwrap();
        assert_eq!(first, [Some(1), Some(1), Some(1), None]);
        let (hits, sent) = (cache.near_cache_stats().hits, reads_sent(&server));
        let second: Vec<Option<i64>> = cache.get_many(["a", "b", "c"]).await.unwrap();
        assert_eq!(second, [Some(1); 3]);
        cache.near_cache_stats().hits == hits + 3 && reads_sent(&server) == sent
    })
    .await;
    let _: () = other.set(cache.make_key("b"), "2").await.unwrap();
    eventually("another client's change reaches get_many", || async {
        let values: Vec<Option<i64>> = cache.get_many(["a", "b"]).await.unwrap();
        values == [Some(1), Some(2)]
    })
    .await;
    // The local entries end with the keys' Redis TTL.
    let _: () = other.pset_ex(cache.make_key("c"), "3", 300).await.unwrap();
    eventually("c is local, read by get_many", || async {
        let before = cache.near_cache_stats().hits;
        let values: Vec<Option<i64>> = cache.get_many(["c"]).await.unwrap();
        values == [Some(3)] && cache.near_cache_stats().hits > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gone: Vec<Option<i64>> = cache.get_many(["c"]).await.unwrap();
    assert_eq!(gone, [None]);
}

/// A key listed twice in one `get_many` gets one value, while another client writes it: each
/// key is looked up locally once (an invalidation landing between two lookups gave its places
/// an old and a new value, about once in 2,000 calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_gives_a_key_listed_twice_one_value() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    // Keys served locally between the two places of `a`: a wider window for an invalidation.
    let mut keys = vec!["a".to_owned()];
    for n in 0..100 {
        let key = format!("b{n}");
        cache.set(&key, &n, 600).await.unwrap();
        keys.push(key);
    }
    keys.push("a".to_owned());
    let key = cache.make_key("a");
    let mut other = other_client(&server).await;
    let writer = tokio::spawn(async move {
        for n in 0..1_000_i64 {
            let _: () = other.set(&key, n).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut calls = 0;
    while !writer.is_finished() {
        let values: Vec<Option<i64>> = cache.get_many(&keys).await.unwrap();
        assert_eq!(values[0], values[101], "after {calls} calls");
        calls += 1;
    }
    writer.await.unwrap();
}

/// `get_many` through `cache` (Sentinel or Cluster here; single node above) keeps what it reads:
/// a second one is served locally, an own write is read back, and a local entry ends with its
/// key's Redis TTL.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
async fn get_many_keeps_its_replies(cache: &Cache) {
    for key in ["gm-a", "gm-b", "gm-c"] {
        cache.set(key, &1, 600).await.unwrap();
    }
    let keys = ["gm-a", "gm-b", "gm-c", "gm-absent"];
    eventually("a second get_many is served locally", || async {
        let first: Vec<Option<i64>> = cache.get_many(keys).await.unwrap();
        assert_eq!(first, [Some(1), Some(1), Some(1), None]);
        let hits = cache.near_cache_stats().hits;
        let second: Vec<Option<i64>> = cache.get_many(["gm-a", "gm-b", "gm-c"]).await.unwrap();
        assert_eq!(second, [Some(1); 3]);
        cache.near_cache_stats().hits == hits + 3
    })
    .await;
    cache.set("gm-b", &2, 600).await.unwrap();
    let values: Vec<Option<i64>> = cache.get_many(["gm-a", "gm-b"]).await.unwrap();
    assert_eq!(values, [Some(1), Some(2)]);
    cache
        .set("gm-c", &3, Duration::from_millis(300))
        .await
        .unwrap();
    eventually("gm-c is local, read by get_many", || async {
        let before = cache.near_cache_stats().hits;
        let values: Vec<Option<i64>> = cache.get_many(["gm-c"]).await.unwrap();
        values == [Some(3)] && cache.near_cache_stats().hits > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gone: Vec<Option<i64>> = cache.get_many(["gm-c"]).await.unwrap();
    assert_eq!(gone, [None]);
}

#[tokio::test]
async fn memory_and_custom_repositories_run_without_it() {
    let plain = Cache::new(MemoryCacheRepository::new());
    assert_eq!(plain.near_cache_status(), NearCacheStatus::Off);
    for cache in [
        Cache::builder(MemoryCacheRepository::new())
            .near_cache(NearCache::new())
            .build(),
        Cache::builder(Custom(MemoryCacheRepository::new()))
            .near_cache(NearCache::new())
            .build(),
    ] {
        assert_eq!(cache.near_cache_status(), NearCacheStatus::Unsupported);
        assert!(!cache.is_near_cache_active());
        assert_eq!(
            cache.near_cache_stats(),
            impcache::NearCacheStats::default()
        );
        cache.set("k", &1, 60).await.unwrap();
        assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_entries_never_outlive_the_redis_ttl_nor_max_ttl() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    // The Redis TTL: no read that starts after the key expired returns it. Tracking is paused
    // for this key's invalidations by nothing: the local lifetime alone must stop it (Redis
    // reports an expired key lazily).
    cache
        .set("short", &1, Duration::from_millis(300))
        .await
        .unwrap();
    let expires = Instant::now() + Duration::from_millis(300);
    let mut served = 0;
    loop {
        let started = Instant::now();
        let hits = cache.near_cache_stats().hits;
        match cache.get::<i64>("short").await.unwrap() {
            // Served from process memory (Redis itself may answer a little past the TTL: its
            // clock is read once per command).
            Some(_) if cache.near_cache_stats().hits > hits => {
                assert!(
                    started < expires,
                    "served locally {:?} after the Redis TTL",
                    started - expires
                );
                served += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(served > 1);

    // max_ttl: an entry is read again from Redis once it is older than max_ttl.
    let cache = near_cache(&server, near().max_ttl(Duration::from_millis(50)));
    wait_active(&cache).await;
    cache.set("long", &1, 600).await.unwrap();
    wait_local(&cache, "long").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let misses = cache.near_cache_stats().misses;
    cache.get::<i64>("long").await.unwrap();
    assert_eq!(
        cache.near_cache_stats().misses,
        misses + 1,
        "read locally past max_ttl"
    );
}

/// "No limit" settings (`Duration::MAX`) are taken as 100 years, not added to a clock: the
/// deadline, the near cache's longest local lifetime and heartbeat, a lock's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_limit_settings_do_not_overflow() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::MAX)
        .build()
        .unwrap();
    let near = NearCache::new()
        .max_ttl(Duration::MAX)
        .heartbeat(Duration::MAX)
        .fail_safe(true);
    let cache = Cache::builder(repository).near_cache(near).build();
    wait_active(&cache).await;
    // A key without a TTL, kept for max_ttl.
    let mut other = other_client(&server).await;
    let _: () = other.set(cache.make_key("forever"), "7").await.unwrap();
    wait_local(&cache, "forever").await;
    assert_eq!(cache.get::<i64>("forever").await.unwrap(), Some(7));
    let lock = impcache::Lock::new().wait(Duration::MAX);
    let loaded: i64 = cache
        .get_or_set("locked", 60, || async { 8 })
        .freshness(impcache::Freshness::new().lock(lock))
        .await
        .unwrap();
    assert_eq!(loaded, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_by_bytes() {
    const BOUND: u64 = 16 * 1024;
    let server = RedisServer::start();
    let cache = near_cache(
        &server,
        near().max_capacity_bytes(BOUND).max_value_bytes(1024),
    );
    wait_active(&cache).await;
    let value = "x".repeat(200);
    let keys: Vec<String> = (0..500).map(|i| format!("key:{i}")).collect();
    cache
        .set_many(keys.iter().map(|key| (key.as_str(), &value)), 600)
        .await
        .unwrap();
    // A value larger than max_value_bytes is never kept.
    cache.set("big", &"y".repeat(2000), 600).await.unwrap();
    for _ in 0..3 {
        for key in &keys {
            cache.get::<String>(key).await.unwrap();
        }
        let stats = cache.near_cache_stats();
        assert!(stats.bytes <= BOUND, "{stats:?}");
        assert!(stats.entries > 0, "{stats:?}");
    }
    let hits = cache.near_cache_stats().hits;
    for _ in 0..3 {
        cache.get::<String>("big").await.unwrap();
    }
    assert_eq!(cache.near_cache_stats().hits, hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_writer_reaches_the_reader() {
    let Some(python) = python() else {
        return;
    };
    let server = RedisServer::start();
    // The Python script writes under the prefix "interop", version 1.
    let repository = RedisCacheRepository::new(&server.url()).unwrap();
    let cache = Cache::builder(repository)
        .key_prefix("interop")
        .near_cache(near())
        .build();
    wait_active(&cache).await;
    cache.set("py", &1, 60).await.unwrap();
    wait_local(&cache, "py").await;
    let status = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/interop.py"))
        .args([&server.url(), "interop", "1", "write"])
        .stdin(file_with(br#"{"py": 2}"#))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    wait_value(&cache, "py", Some(2)).await;
}

/// A file holding `bytes`, opened for reading (the Python script's stdin).
fn file_with(bytes: &[u8]) -> std::process::Stdio {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "impcache-near-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::open(&path).unwrap().into()
}

/// A Python with `impcache==1.0.2`, as `tests/python_interop.rs` finds it.
fn python() -> Option<std::path::PathBuf> {
    let candidate = std::env::var_os("IMPCACHE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/interop-venv/bin/python")
        });
    let ok = std::process::Command::new(&candidate)
        .args(["-c", "import impcache"])
        .status()
        .is_ok_and(|status| status.success());
    if ok {
        return Some(candidate);
    }
    if std::env::var("IMPCACHE_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("no Python with impcache at {}", candidate.display());
    }
    eprintln!("skipping the Python writer case: no Python with impcache");
    None
}

/// Sentinel: invalidations from the primary reach the reader, and a failover flushes and moves
/// the tracking connection to the promoted primary.
/// A near-cached cache over `group`'s Sentinel repository (deadline 500 ms), active, with its
/// repository.
#[cfg(feature = "sentinel")]
async fn sentinel_near_cache(
    group: &impcache_tests::cluster::SentinelGroup,
    prefix: &str,
    near: NearCache,
) -> (impcache::RedisSentinelCacheRepository, Cache) {
    let repository = impcache::RedisSentinelCacheRepository::builder(
        [group.sentinel_url()],
        impcache_tests::cluster::SENTINEL_SERVICE,
    )
    .deadline(Duration::from_millis(500))
    .build()
    .unwrap();
    let cache = Cache::builder(repository.clone())
        .key_prefix(prefix)
        .near_cache(near)
        .build();
    wait_active(&cache).await;
    (repository, cache)
}

#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_moves_tracking_to_the_new_primary() {
    use impcache_tests::cluster::{SentinelGroup, SENTINEL_SERVICE};

    let group = SentinelGroup::start();
    let second = group.replica.port();
    let (_, cache) = sentinel_near_cache(&group, "ns", near()).await;
    get_many_keeps_its_replies(&cache).await;
    let key = cache.make_key("k");
    cache.set("k", &1, 600).await.unwrap();
    wait_local(&cache, "k").await;
    let _: () = group.primary.cmd(&["SET", &key, "2"]);
    wait_value(&cache, "k", Some(2)).await;
    wait_local(&cache, "k").await;
    group.primary.wait_replicated();

    let flushes = cache.near_cache_stats().flushes;
    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    eventually("the replica is promoted", || async {
        SentinelGroup::role(second) == "master"
    })
    .await;
    // Written on the new primary: read once the repository follows, never hidden by the local 2.
    let _: () = group.replica.cmd(&["SET", &key, "3"]);
    wait_value(&cache, "k", Some(3)).await;
    eventually(
        "the primary change flushed and tracking is back",
        || async {
            let _ = cache.get::<i64>("k").await;
            cache.near_cache_stats().flushes > flushes && cache.is_near_cache_active()
        },
    )
    .await;
    // Tracked on the new primary: a change there reaches a locally held value.
    wait_local(&cache, "k").await;
    let _: () = group.replica.cmd(&["SET", &key, "4"]);
    wait_value(&cache, "k", Some(4)).await;
}

/// Sentinel: the moment the repository switches to the promoted replica (`SENTINEL FAILOVER`),
/// nothing is served locally any more, however long the heartbeat. The near cache compared the
/// primary only at its heartbeat, and its tracking connection stayed on the old primary (still
/// writable for a while, and told nothing of writes on the new one): for up to a heartbeat after
/// the repository switched, local hits served a value another client had already changed on the
/// new primary (found by a probe: 1.8 s with a 2 s heartbeat). Heartbeat 5 s here: every read
/// after the switch must be the new value, and tracking comes back on the new primary.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_switch_stops_local_hits_at_once() {
    use impcache_tests::cluster::{SentinelGroup, SENTINEL_SERVICE};

    let group = SentinelGroup::start();
    let second = group.replica.port();
    let (repository, cache) = sentinel_near_cache(
        &group,
        "sw",
        NearCache::new().heartbeat(Duration::from_secs(5)),
    )
    .await;
    let key = cache.make_key("k");
    cache.set("k", &1, 600).await.unwrap();
    wait_local(&cache, "k").await;
    group.primary.wait_replicated();

    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    let promoted = format!(":{second}");
    eventually(
        "the repository switches to the promoted replica",
        || async {
            repository
                .primary_address()
                .is_some_and(|address| address.ends_with(&promoted))
        },
    )
    .await;
    // Another client writes on the new primary, which the old one's tracking never reports.
    let _: () = group.replica.cmd(&["SET", &key, "2"]);
    let mut stale = 0;
    for _ in 0..50 {
        if cache.get::<i64>("k").await.unwrap() == Some(1) {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "reads of the old local value after the switch, of 50"
    );
    // Tracked again, on the new primary: a change there reaches a locally held value.
    eventually("tracking is back", || async {
        let _ = cache.get::<i64>("k").await;
        cache.is_near_cache_active()
    })
    .await;
    wait_local(&cache, "k").await;
    let _: () = group.replica.cmd(&["SET", &key, "3"]);
    wait_value(&cache, "k", Some(3)).await;
}

/// Sentinel, its announcements missed (`follow_announcements(false)`; the same for a Sentinel
/// that cannot be subscribed to, or a subscription lost): the repository's periodic recheck
/// (`recheck_every`, 1 s) runs for the near cache even when every read is a local hit. It ran
/// only when an operation called the repository, which local hits never do: after a forced
/// failover and another client's write on the new primary, the reader served the old local value
/// for 8 to 11 s (until Sentinel demoted the old primary; found by a probe), however short the
/// recheck. Heartbeat 5 s here: the new value must be read within 4 s of the write (a generous
/// ceiling over about 1 to 2 s, well under the defect's), and the old one never again after.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_sentinel_announcement_is_caught_while_reads_are_local() {
    use impcache_tests::cluster::{SentinelGroup, SENTINEL_SERVICE};

    let group = SentinelGroup::start();
    let second = group.replica.port();
    let repository =
        impcache::RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
            .deadline(Duration::from_millis(500))
            .follow_announcements(false)
            .build()
            .unwrap();
    let cache = Cache::builder(repository.clone())
        .key_prefix("missed")
        .near_cache(NearCache::new().heartbeat(Duration::from_secs(5)))
        .build();
    wait_active(&cache).await;
    let key = cache.make_key("k");
    cache.set("k", &1, 600).await.unwrap();
    wait_local(&cache, "k").await;
    group.primary.wait_replicated();

    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    eventually("the replica is promoted", || async {
        SentinelGroup::role(second) == "master"
    })
    .await;
    // Another client writes on the new primary, which the old one's tracking never reports.
    let _: () = group.replica.cmd(&["SET", &key, "2"]);
    let written = Instant::now();
    let limit = Duration::from_secs(4);
    loop {
        match cache.get::<i64>("k").await {
            Ok(Some(2)) => break,
            read => assert!(
                written.elapsed() < limit,
                "still {read:?} {:?} after the write on the new primary (the repository on {:?})",
                written.elapsed(),
                repository.primary_address()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let promoted = format!(":{second}");
    assert!(repository
        .primary_address()
        .is_some_and(|address| address.ends_with(&promoted)));
    // Never the old value again.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let read = cache.get::<i64>("k").await;
        assert!(
            !matches!(read, Ok(Some(1))),
            "the old value again after the new one"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A dropped near-cached `Cache` over Sentinel stops asking the Sentinels at once: the recheck
/// runs beside the tracker's session, which notices the drop only at its next heartbeat (30 s
/// here), and went on looking the primary up every second until then (found by a regression
/// probe: 4 lookups in the 4 s after the drop, as many as alive).
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_near_cache_over_sentinel_stops_its_lookups() {
    use impcache::RedisSentinelCacheRepository;
    use impcache_tests::cluster::{SentinelGroup, SENTINEL_SERVICE};

    let group = SentinelGroup::start();
    let commands = || {
        let info: String = group.sentinel_cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    // Announcements off: the only Sentinel traffic is the recheck's lookups.
    let repository =
        RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
            .follow_announcements(false)
            .build()
            .unwrap();
    let cache = Cache::builder(repository)
        .near_cache(NearCache::new().heartbeat(Duration::from_secs(30)))
        .build();
    cache.set("k", &1, 600).await.unwrap();
    let started = Instant::now();
    while !cache.is_near_cache_active() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = commands();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // `INFO` itself counts one.
    assert!(
        commands() - before > 1,
        "the recheck runs while the cache lives"
    );
    drop(cache);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = commands();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(commands() - dropped, 1, "lookups after the drop");
}

/// Sentinel: a killed primary, the replica promoted. The switch is one flush and one
/// subscription on the new primary, and tracking follows as the repository switches: the
/// tracker woke from its backoff (it waited out up to 5 s of it), and the notice of the switch,
/// left while it was not watching, made it flush and subscribe a second time.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_primary_is_one_flush_and_one_subscription() {
    use impcache_tests::cluster::SentinelGroup;

    let mut group = SentinelGroup::start();
    let promoted = format!(":{}", group.replica.port());
    // A heartbeat of 500 ms, not 100 ms: a `PING` that a loaded machine answers later than the
    // heartbeat would be a flush more, against the count below.
    let near = NearCache::new().heartbeat(Duration::from_millis(500));
    let (repository, cache) = sentinel_near_cache(&group, "killed", near).await;
    cache.set("k", &1, 600).await.unwrap();
    group.primary.wait_replicated();
    let flushes = cache.near_cache_stats().flushes;
    let subscriptions = || group.replica.command_calls(&["client|tracking"]);
    let subscribed = subscriptions();
    group.primary.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = cache.get::<i64>("k").await;
        let switched = repository
            .primary_address()
            .is_some_and(|address| address.ends_with(&promoted));
        if switched && cache.is_near_cache_active() {
            break;
        }
        assert!(Instant::now() < deadline, "never switched and tracked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A few heartbeats more.
    for _ in 0..150 {
        let _ = cache.get::<i64>("k").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.near_cache_stats().flushes - flushes, 1);
    assert_eq!(subscriptions() - subscribed, 1);
}

/// Cluster: a node added after the near cache subscribed, and a slot resharded to it; the key
/// read during the migration (from the new node, by `ASK`) and kept. Once the migration is over,
/// a write on the new owner reaches the reader within a heartbeat: the near cache asks the
/// Cluster for its slot map on each heartbeat. It read the map in use, which nothing updated
/// while reads were local: the old value was served until `max_ttl`. (During the migration, a
/// write made on the new node through `ASK` is not seen until it ends: RELIABILITY.md.)
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_slot_resharded_to_a_new_node_is_tracked() {
    use impcache::RedisClusterCacheRepository;
    use impcache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::start(3, 0);
    let repository = RedisClusterCacheRepository::builder(cluster.urls())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let cache = Cache::builder(repository)
        .key_prefix("reshard")
        .near_cache(near().max_ttl(Duration::from_secs(600)))
        .build();
    wait_active(&cache).await;
    // A new, empty node joins the cluster.
    let config_file = format!("nodes-reshard-{}.conf", std::process::id());
    let extra = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &config_file,
        "--cluster-node-timeout",
        "1000",
    ]);
    let seed = cluster.primaries()[0];
    let port = extra.port().to_string();
    let _: () = cluster.cmd(seed, &["CLUSTER", "MEET", "127.0.0.1", &port]);
    let id: String = extra.cmd(&["CLUSTER", "MYID"]);
    eventually("the new node joins", || async {
        let known = cluster.primaries().iter().all(|primary| {
            cluster
                .cmd::<String>(*primary, &["CLUSTER", "NODES"])
                .contains(&id)
        });
        let info: String = extra.cmd(&["CLUSTER", "INFO"]);
        known && info.contains("cluster_state:ok")
    })
    .await;
    cache.set("k", &1, 600).await.unwrap();
    wait_local(&cache, "k").await;
    let full = cache.make_key("k");
    let (from, slot) = (cluster.primary_for(&full), cluster.slot_of(&full));
    cluster.begin_migration(slot, from, extra.port());
    cluster.migrate_keys(slot, from, extra.port(), 100);
    // Read again, from the new node (an `ASK` redirection), and kept locally.
    wait_local(&cache, "k").await;
    cluster.finish_migration(slot, from, extra.port());
    // Another client writes on the new owner.
    let _: () = extra.cmd(&["SET", &full, "3"]);
    wait_value(&cache, "k", Some(3)).await;
}

/// Cluster: a write on each primary reaches the reader; a primary's failover flushes and the
/// promoted replica is tracked.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_on_each_primary_and_a_failover() {
    use impcache::RedisClusterCacheRepository;
    use impcache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::start(3, 1);
    let repository = RedisClusterCacheRepository::builder(cluster.urls())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let cache = Cache::builder(repository)
        .key_prefix("nc")
        .near_cache(near())
        .build();
    wait_active(&cache).await;
    get_many_keeps_its_replies(&cache).await;
    // One key per primary.
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let primary = cluster.primary_for(&cache.make_key(&key));
        if keys.iter().all(|(_, port)| *port != primary) {
            keys.push((key, primary));
        }
        if keys.len() == cluster.primaries().len() {
            break;
        }
    }
    for (key, primary) in &keys {
        cache.set(key, &1, 600).await.unwrap();
        wait_local(&cache, key).await;
        let _: () = cluster.cmd(*primary, &["SET", &cache.make_key(key), "2"]);
        wait_value(&cache, key, Some(2)).await;
    }

    let (key, victim) = keys[0].clone();
    let heir = cluster.replica_of(victim).expect("a replica");
    let full = cache.make_key(&key);
    // Replicated before the failover: written again and `WAIT`ed for on one connection.
    let mut primary = redis::Client::open(format!("redis://127.0.0.1:{victim}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&full)
        .arg("2")
        .query(&mut primary)
        .unwrap();
    let replicated: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut primary)
        .unwrap();
    assert_eq!(replicated, 1);
    wait_local(&cache, &key).await;
    let flushes = cache.near_cache_stats().flushes;
    cluster.kill_node(victim);
    cluster.wait_until_healthy(Duration::from_secs(30));
    let _: () = cluster.cmd(heir, &["SET", &full, "3"]);
    eventually("the promoted replica's value is read", || async {
        match cache.get::<i64>(&key).await {
            Ok(value) => {
                assert_ne!(value, Some(2), "the old local value was served");
                value == Some(3)
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(cache.near_cache_stats().flushes > flushes);
    eventually("tracking is back", || async {
        let _ = cache.get::<i64>(&key).await;
        cache.is_near_cache_active()
    })
    .await;
    wait_local(&cache, &key).await;
    let _: () = cluster.cmd(heir, &["SET", &full, "4"]);
    wait_value(&cache, &key, Some(4)).await;
}

/// A near-cached cache over `cluster` (deadline 500 ms), active.
#[cfg(feature = "cluster")]
async fn cluster_near_cache(
    cluster: &impcache_tests::cluster::RedisCluster,
    prefix: &str,
    near: NearCache,
) -> Cache {
    let repository = impcache::RedisClusterCacheRepository::builder(cluster.urls())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let cache = Cache::builder(repository)
        .key_prefix(prefix)
        .near_cache(near)
        .build();
    wait_active(&cache).await;
    cache
}

/// One key per primary of `cluster`, with its primary, each stored (1) and served locally.
#[cfg(feature = "cluster")]
async fn local_key_per_primary(
    cluster: &impcache_tests::cluster::RedisCluster,
    cache: &Cache,
) -> Vec<(String, u16)> {
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let primary = cluster.primary_for(&cache.make_key(&key));
        if keys.iter().all(|(_, port)| *port != primary) {
            keys.push((key, primary));
        }
        if keys.len() == cluster.primaries().len() {
            break;
        }
    }
    for (key, _) in &keys {
        cache.set(key, &1, 600).await.unwrap();
        wait_local(cache, key).await;
    }
    keys
}

/// Cluster: a frozen primary (SIGSTOP) is replaced by its replica, and another client writes on
/// the promoted replica while a reader loops over local hits; heartbeat 4 s. The heartbeat
/// `PING`ed every tracking connection first, waiting up to a heartbeat for each, and asked for
/// the slot map only after: the frozen primary's unanswered `PING` held up the map's check by a
/// whole heartbeat, so the old value was served until two heartbeats after the freeze (7.2–7.7 s
/// after the write with a 5 s heartbeat, found by a probe). Now the `PING`s and the map's check
/// go out at once: the first heartbeat after the promotion flushes. The primary is frozen right
/// after a heartbeat reached it (its `PING` counted on it), so that the next is a whole heartbeat
/// away: the old value was read until about 8 s after the freeze, now until about 4 s, and the
/// test allows 6 s.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_frozen_primarys_replacement_flushes_within_a_heartbeat() {
    use impcache_tests::cluster::{RedisCluster, SentinelGroup};

    const HEARTBEAT: Duration = Duration::from_secs(4);
    let cluster = RedisCluster::start(3, 1);
    let near = NearCache::new().heartbeat(HEARTBEAT);
    let cache = cluster_near_cache(&cluster, "frozen", near).await;
    let (key, victim) = local_key_per_primary(&cluster, &cache).await.remove(0);
    let full = cache.make_key(&key);
    let replicated: i64 = cluster.cmd(victim, &["WAIT", "1", "2000"]);
    assert_eq!(replicated, 1);
    let heir = cluster.replica_of(victim).expect("a replica");
    let pings = || {
        let stats: String = cluster.cmd(victim, &["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_ping:calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = pings();
    let deadline = Instant::now() + SOON;
    while pings() == before {
        assert!(
            Instant::now() < deadline,
            "no heartbeat reached the primary"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let frozen_at = Instant::now();
    let frozen = cluster.freeze_node(victim);
    eventually("the replica is promoted", || async {
        SentinelGroup::role(heir) == "master"
    })
    .await;
    let _: () = cluster.cmd(heir, &["SET", &full, "2"]);
    let mut last_old = None;
    loop {
        match cache.get::<i64>(&key).await {
            Ok(Some(1)) => last_old = Some(frozen_at.elapsed()),
            Ok(Some(2)) => break,
            Ok(other) => panic!("read {other:?}"),
            // Routed to the frozen primary until the repository learns the new map.
            Err(_) => {}
        }
        assert!(
            frozen_at.elapsed() < 3 * SOON,
            "the new value was never read"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("the old value was last read {last_old:?} after the freeze");
    assert!(
        last_old.is_none_or(|at| at < HEARTBEAT * 3 / 2),
        "the old value was read {last_old:?} after the freeze (heartbeat {HEARTBEAT:?})"
    );
    // Tracked on the promoted replica: a change there reaches a locally held value.
    eventually("tracking is back", || async {
        let _ = cache.get::<i64>(&key).await;
        cache.is_near_cache_active()
    })
    .await;
    wait_local(&cache, &key).await;
    let _: () = cluster.cmd(heir, &["SET", &full, "3"]);
    wait_value(&cache, &key, Some(3)).await;
    drop(frozen);
}

/// Cluster (`cluster-require-full-coverage no`, no replicas): a dead primary takes only its own
/// keys out of the near cache. Tracking had to reach every primary of the slot map: with one
/// dead, the near cache stayed `Connecting` for good and every read of every key went to Redis
/// (0 local hits in 5 s of reads of the live primaries' keys, found by a probe). Now the status
/// is `Partial`, the live primaries' keys are served locally and stay coherent, and the dead
/// one's are never served locally (nothing vouches for them): they bypass the near cache.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_dead_primary_takes_only_its_own_keys_out_of_the_near_cache() {
    use impcache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::start(3, 0);
    let cache = cluster_near_cache(&cluster, "dead", near()).await;
    let keys = local_key_per_primary(&cluster, &cache).await;
    let (dead, victim) = keys[0].clone();
    cluster.kill_node(victim);
    eventually("the dead primary's keys leave the near cache", || async {
        cache.near_cache_status() == NearCacheStatus::Partial
    })
    .await;
    assert!(!cache.is_near_cache_active(), "not every key is served");
    let hits = cache.near_cache_stats().hits;
    for _ in 0..100 {
        for (key, _) in &keys[1..] {
            assert_eq!(cache.get::<i64>(key).await.unwrap(), Some(1));
        }
    }
    assert_eq!(
        cache.near_cache_stats().hits - hits,
        200,
        "reads of the live primaries' keys were not all local"
    );
    // Still tracked: another client's change reaches the reader.
    let (key, primary) = &keys[1];
    let _: () = cluster.cmd(*primary, &["SET", &cache.make_key(key), "2"]);
    wait_value(&cache, key, Some(2)).await;
    wait_local(&cache, key).await;
    // The dead primary's key: never the local value, read from Redis (which fails).
    let stats = cache.near_cache_stats();
    for _ in 0..10 {
        let read = cache.get::<i64>(&dead).await;
        assert!(read.is_err(), "{read:?}");
    }
    let now = cache.near_cache_stats();
    assert_eq!(now.hits, stats.hits);
    assert_eq!(now.bypassed - stats.bypassed, 10);
    assert_eq!(cache.near_cache_status(), NearCacheStatus::Partial);
}

/// Cluster: one primary's tracking connection killed (`CLIENT KILL`), the primary alive. Only
/// that primary's keys leave the near cache (the others' are still served locally); a change
/// made there meanwhile, whose invalidation is lost, is read once the connection is back
/// (subscribed again at the next heartbeat): what was kept of its keys before counts as flushed.
/// Tracking used to be all or nothing: the loss flushed every primary's keys.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_primarys_lost_tracking_connection_rejoins_flushed() {
    use impcache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::start(3, 0);
    let near = NearCache::new().heartbeat(Duration::from_secs(2));
    let cache = cluster_near_cache(&cluster, "rejoin", near).await;
    let keys = local_key_per_primary(&cluster, &cache).await;
    let (key, victim) = keys[0].clone();
    let full = cache.make_key(&key);
    let tracking = || {
        let list: String = cluster.cmd(victim, &["CLIENT", "LIST"]);
        list.lines()
            .find(|line| line.contains("resp=3"))
            .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
            .map(str::to_owned)
    };
    let id = tracking().expect("a RESP3 tracking connection");
    let flushes = cache.near_cache_stats().flushes;
    let _: () = cluster.cmd(victim, &["CLIENT", "KILL", "ID", &id]);
    eventually("the primary's keys leave the near cache", || async {
        cache.near_cache_status() == NearCacheStatus::Partial
    })
    .await;
    // Changed while nothing tracks it: its invalidation is lost.
    let _: () = cluster.cmd(victim, &["SET", &full, "2"]);
    let hits = cache.near_cache_stats().hits;
    for (other, _) in &keys[1..] {
        assert_eq!(cache.get::<i64>(other).await.unwrap(), Some(1));
    }
    assert_eq!(
        cache.near_cache_stats().hits - hits,
        2,
        "the others' keys are local"
    );
    // Subscribed again at a heartbeat; the key was not read meanwhile.
    eventually("tracking is back", || async {
        cache.is_near_cache_active()
    })
    .await;
    assert_eq!(cache.get::<i64>(&key).await.unwrap(), Some(2));
    assert_ne!(tracking().as_deref(), Some(id.as_str()));
    assert_eq!(cache.near_cache_stats().flushes, flushes + 1);
    wait_local(&cache, &key).await;
    let _: () = cluster.cmd(victim, &["SET", &full, "3"]);
    wait_value(&cache, &key, Some(3)).await;
}

/// Lookups are counted by tier (`impcache_near_cache_lookups_total{tier}`).
#[test]
fn lookups_are_counted_by_tier() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = impcache_tests::current_thread_runtime();
        runtime.block_on(async {
            local_k(&server).await;
        });
    });
    let mut tiers = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() == "impcache_near_cache_lookups_total" {
            let tier = key.key().labels().next().unwrap().value().to_owned();
            if let DebugValue::Counter(count) = value {
                tiers.insert(tier, count);
            }
        }
    }
    assert!(tiers.get("near").copied().unwrap_or(0) >= 1, "{tiers:?}");
    assert!(tiers.get("remote").copied().unwrap_or(0) >= 1, "{tiers:?}");
}

/// `#[cached]` hits and `CacheLayer` hits read through the near cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_functions_and_the_http_layer_hit_the_near_cache() {
    use std::convert::Infallible;
    use std::sync::OnceLock;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use impcache_tower::CacheLayer;
    use tower::{service_fn, Layer, ServiceExt};

    static CACHE: OnceLock<Cache> = OnceLock::new();
    static CALLS: AtomicU64 = AtomicU64::new(0);

    #[impcache::cached(expire = 60, cache = CACHE.get().unwrap())]
    async fn square(x: u64) -> u64 {
        CALLS.fetch_add(1, Ordering::SeqCst);
        x * x
    }

    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    CACHE.set(cache.clone()).unwrap();
    assert_eq!(square(12).await, 144);
    let hits = cache.near_cache_stats().hits;
    eventually("a #[cached] hit is served locally", || async {
        assert_eq!(square(12).await, 144);
        cache.near_cache_stats().hits > hits
    })
    .await;
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);

    let service = CacheLayer::new(cache.clone()).expire(60).layer(service_fn(
        |_request: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        },
    ));
    let get = || async {
        let response = service
            .clone()
            .oneshot(
                Request::get("http://example.com/greeting")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    };
    assert_eq!(&get().await[..], b"hello");
    let hits = cache.near_cache_stats().hits;
    eventually("a CacheLayer hit is served locally", || async {
        assert_eq!(&get().await[..], b"hello");
        cache.near_cache_stats().hits > hits
    })
    .await;
}

// --- Fail-safe (issue 15): a near entry standing in for a failed loader while Redis fails. ---

fn boom() -> impcache::Error {
    impcache::Error::Loader {
        key: "k".into(),
        reason: "boom".into(),
    }
}

/// `k` holds 1 (stored by `get_or_set` with `policy`) and is served locally; then Redis is
/// killed and the near cache has stopped serving.
async fn outage_after_a_local_entry(
    server: &mut RedisServer,
    cache: &Cache,
    policy: impcache::Freshness,
) {
    wait_active(cache).await;
    let stored: i64 = cache
        .get_or_set("k", 60, || async { 1 })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    wait_local(cache, "k").await;
    server.kill();
    eventually("the near cache stops serving", || async {
        cache.near_cache_status() == NearCacheStatus::Connecting
    })
    .await;
}

async fn failing_load(cache: &Cache, policy: impcache::Freshness) -> Result<i64, impcache::Error> {
    cache
        .try_get_or_set("k", 60, || async { Err::<i64, _>(boom()) })
        .freshness(policy)
        .await
}

/// The fail-safe throttle holds for the near cache's fail-safe copy as for a stale value read
/// from Redis: once the loader failed, the copy answers without a loader run until the throttle
/// has passed (found by a probe: the loader ran at every call, 199 runs in 200 calls, each
/// logging two warnings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_safe_throttle_holds_for_the_near_fail_safe_copy() {
    let policy = impcache::Freshness::new()
        .stale_if_error(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let cache = near_cache(&server, near().fail_safe(true));
    outage_after_a_local_entry(&mut server, &cache, policy).await;
    let runs = Arc::new(AtomicU64::new(0));
    for _ in 0..20 {
        let counted = runs.clone();
        let answer = cache
            .try_get_or_set("k", 60, move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Err::<i64, _>(boom())
            })
            .freshness(policy)
            .await;
        assert_eq!(answer.unwrap(), 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one run, then the throttle");
    assert_eq!(cache.near_cache_stats().fail_safe_served, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_serves_the_near_entry_when_redis_and_the_loader_fail() {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let cache = near_cache(&server, near().fail_safe(true));
    outage_after_a_local_entry(&mut server, &cache, policy).await;

    assert_eq!(failing_load(&cache, policy).await.unwrap(), 1);
    assert_eq!(cache.near_cache_stats().fail_safe_served, 1);
    // Without a stale_if_error window, or past it, the loader's error returns.
    assert!(failing_load(&cache, impcache::Freshness::new())
        .await
        .is_err());
    let past = impcache::Freshness::new().stale_if_error(Duration::ZERO);
    assert!(failing_load(&cache, past).await.is_err());
    // A plain read errors as before.
    assert!(cache.get::<i64>("k").await.is_err());
    assert_eq!(cache.near_cache_stats().fail_safe_served, 1);
    // A succeeding loader is used as ever (the copy is for its failure only; a call joining
    // its flight meanwhile would be answered by it).
    let loaded: i64 = cache
        .get_or_set("k", 60, || async { 7 })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(loaded, 7);

    // Redis back with the key changed: the new value is read, not the copy.
    restart_with_k_2(&mut server, &cache, "the copy was served by get").await;
    assert_eq!(failing_load(&cache, policy).await.unwrap(), 2);
    wait_active(&cache).await;
    let _: () = server.cmd(&["SET", &cache.make_key("k"), "3"]);
    wait_value(&cache, "k", Some(3)).await;
    assert_eq!(failing_load(&cache, policy).await.unwrap(), 3);
}

/// A value loaded during an outage, whose store failed, becomes the key's fail-safe copy: a
/// loader failing next is answered with it, never with the copy from before the load. The
/// store's own write dropped the older copy and nothing took its place: after one successful
/// load every failing call got the loader's error until Redis was back (6 of 6 in a probe;
/// FusionCache keeps the last value loaded in its L1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_loaded_during_an_outage_is_the_next_fail_safe_copy() {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let cache = near_cache(&server, near().fail_safe(true));
    outage_after_a_local_entry(&mut server, &cache, policy).await;
    assert_eq!(failing_load(&cache, policy).await.unwrap(), 1);
    let loaded: i64 = cache
        .get_or_set("k", 60, || async { 7 })
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(loaded, 7);
    // The failed store's end (which keeps the copy) may come after the caller's answer.
    eventually("the loaded value is the copy", || async {
        match failing_load(&cache, policy).await {
            Ok(answer) => {
                assert_eq!(answer, 7, "the copy from before the load answered");
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(failing_load(&cache, policy).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_safe_the_loader_error_returns() {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let cache = near_cache(&server, near());
    outage_after_a_local_entry(&mut server, &cache, policy).await;

    assert!(failing_load(&cache, policy).await.is_err());
    assert_eq!(cache.near_cache_stats().fail_safe_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_keeps_an_entry_whose_local_lifetime_ended() {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let near = near().max_ttl(Duration::from_millis(100)).fail_safe(true);
    let cache = near_cache(&server, near);
    outage_after_a_local_entry(&mut server, &cache, policy).await;
    // The local entry lived 100 ms: long gone, its copy is counted from then.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cache.get::<i64>("k").await.is_err());
    assert_eq!(failing_load(&cache, policy).await.unwrap(), 1);
    let narrow = impcache::Freshness::new().stale_if_error(Duration::from_millis(1));
    assert!(failing_load(&cache, narrow).await.is_err());
}

/// Kills `server` and waits until `cache`'s near cache has stopped serving.
async fn outage(server: &mut RedisServer, cache: &Cache) {
    server.kill();
    eventually("the near cache stops serving", || async {
        cache.near_cache_status() == NearCacheStatus::Connecting
    })
    .await;
}

/// A copy never answers with a value older than one the reader has read since: a reply of the
/// key from Redis that is not kept locally (too large, or absent) drops the copy, so the next
/// outage finds none. It answered with the value from before the first outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_never_answers_older_than_a_read_since() {
    let policy = impcache::Freshness::new().stale_if_error(Duration::from_secs(3600));
    let mut server = RedisServer::start();
    let cache = near_cache(&server, near().max_value_bytes(64).fail_safe(true));
    outage_after_a_local_entry(&mut server, &cache, policy).await;
    // Back with a value too large to keep locally: read, not kept.
    server.restart();
    let large = format!("\"{}\"", "x".repeat(200));
    let _: () = server.cmd(&["SET", &cache.make_key("k"), &large]);
    eventually("the large value is read", || async {
        let read = cache.get::<serde_json::Value>("k").await;
        matches!(read, Ok(Some(serde_json::Value::String(s))) if s.len() == 200)
    })
    .await;
    outage(&mut server, &cache).await;
    let failed: Result<serde_json::Value, impcache::Error> = cache
        .try_get_or_set("k", 60, || async { Err(boom()) })
        .freshness(policy)
        .await;
    assert!(failed.is_err(), "{failed:?}");

    // Back empty, after a copy of 1 was kept again: the reader reads that nothing is there.
    server.restart();
    wait_active(&cache).await;
    outage_after_a_local_entry(&mut server, &cache, policy).await;
    server.restart();
    eventually("the key is read as absent", || async {
        cache.get::<i64>("k").await.ok() == Some(None)
    })
    .await;
    outage(&mut server, &cache).await;
    assert!(failing_load(&cache, policy).await.is_err());
    assert_eq!(cache.near_cache_stats().fail_safe_served, 0);
}

/// A caller of a locked, tagged load whose leader's value was invalidated after the caller
/// joined takes the next turn once that flight has ended: while the leader still stores (Redis
/// frozen), joining again handed it the same value back at once, checked locally by the near
/// cache, in a busy loop (102,016 local lookups in one second, half a core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_behind_an_invalidated_value_does_not_spin_while_it_is_stored() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(1500))
        .build()
        .unwrap();
    let cache = Cache::builder(repository).near_cache(near()).build();
    let other = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    wait_active(&cache).await;
    let policy = impcache::Freshness::new().lock(impcache::Lock::new().wait(SOON));
    let runs = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let call = || {
        let (cache, runs, gate) = (cache.clone(), Arc::clone(&runs), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .get_or_set("k", 60, move || async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    if run == 0 {
                        gate.acquire().await.unwrap().forget();
                    }
                    format!("run {run}")
                })
                .tags(["t"])
                .freshness(policy)
                .await
                .unwrap()
        })
    };
    let leader = call();
    eventually("the leader loads", || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiter = call();
    tokio::time::sleep(Duration::from_millis(50)).await;
    other.invalidate_tag("t").await.unwrap();
    // The tag's new state, read and kept locally.
    eventually("the invalidation is kept locally", || async {
        let read: String = cache
            .get_or_set("other", 60, || async { "o".to_owned() })
            .tags(["t"])
            .await
            .unwrap();
        read == "o" && cache.near_cache_stats().hits > 0
    })
    .await;
    server.freeze();
    let hits = cache.near_cache_stats().hits;
    gate.add_permits(1);
    assert_eq!(leader.await.unwrap(), "run 0");
    // The leader's store waits for the frozen server meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let looked_up = cache.near_cache_stats().hits - hits;
    server.thaw();
    assert_eq!(waiter.await.unwrap(), "run 1");
    assert!(
        looked_up < 100,
        "{looked_up} local lookups while the value was stored"
    );
}

// --- Tags (issue 16): tag state tracked like any key. ---

/// Calls of the data commands a read could send (`GET`, `MGET`, `PTTL`) on `server` so far (the
/// tracking connection's `PING`s are not counted).
fn reads_sent(server: &RedisServer) -> u64 {
    server.command_calls(&["get", "mget", "pttl"])
}

async fn tagged_read(cache: &Cache, value: i64, runs: &Arc<AtomicU64>) -> i64 {
    let runs = Arc::clone(runs);
    cache
        .get_or_set("profile:1", 60, move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            value
        })
        .tags(["user:1", "users"])
        .await
        .unwrap()
}

/// Reads with `read` until one sends nothing to `server`.
async fn wait_served_locally<F, Fut>(server: &RedisServer, what: &str, mut read: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    eventually(what, || {
        let read = read();
        async move {
            let before = reads_sent(server);
            read.await;
            reads_sent(server) == before
        }
    })
    .await;
}

/// A tagged hit through a near cache (the entry and its tags' state, a tag's absence included)
/// makes no round trip; another `Cache` invalidating the tag reaches it within a bound measured
/// here (printed), and the same cache's own invalidation at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_hits_are_local_and_tag_invalidations_reach_them() {
    let server = RedisServer::start();
    let a = near_cache(&server, near());
    let b = near_cache(&server, near());
    wait_active(&a).await;
    wait_active(&b).await;
    let runs = Arc::new(AtomicU64::new(0));
    assert_eq!(tagged_read(&a, 1, &runs).await, 1);
    wait_served_locally(&server, "a tagged hit is served locally", || async {
        assert_eq!(tagged_read(&a, 2, &runs).await, 1);
    })
    .await;
    let before = reads_sent(&server);
    for _ in 0..20 {
        assert_eq!(tagged_read(&a, 2, &runs).await, 1);
    }
    // A plain `get` of the tagged entry judges its tags locally too.
    assert_eq!(a.get::<i64>("profile:1").await.unwrap(), Some(1));
    assert_eq!(reads_sent(&server), before, "tagged hits sent reads");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Another process invalidates a tag (never invalidated before: its absence was local).
    let started = Instant::now();
    b.invalidate_tag("users").await.unwrap();
    eventually(
        "the other cache's invalidation reaches the reader",
        || async { tagged_read(&a, 2, &runs).await == 2 },
    )
    .await;
    eprintln!(
        "tag invalidation seen by the other cache after {:?}",
        started.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // Own invalidation: the very next read misses, without waiting for Redis's message.
    wait_served_locally(&server, "the reloaded entry is served locally", || async {
        assert_eq!(tagged_read(&a, 3, &runs).await, 2);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    a.invalidate_tag("user:1").await.unwrap();
    assert_eq!(tagged_read(&a, 3, &runs).await, 3);
    // `get_or_set` answers before its store lands.
    eventually("the reloaded entry is stored", || async {
        a.get::<i64>("profile:1").await.unwrap() == Some(3)
    })
    .await;
}

/// A near-cached tagged entry that another process's invalidation hid counts as absent for
/// `set_nx` (as `get` sees it), and the value `set_nx` stores is read back at once, here and in
/// the other process; a hidden entry kept by the other cache is claimed as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_over_a_near_cached_hidden_entry_is_read_back_at_once() {
    let server = RedisServer::start();
    let a = near_cache(&server, near());
    let b = near_cache(&server, near());
    wait_active(&a).await;
    wait_active(&b).await;
    for key in ["k1", "k2"] {
        a.set_tagged(key, &1, 60, ["t"]).await.unwrap();
        wait_local(&a, key).await;
        wait_local(&b, key).await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    b.invalidate_tag("t").await.unwrap();
    eventually("the invalidation reaches the other cache", || async {
        a.get::<i64>("k1").await.unwrap().is_none()
    })
    .await;

    assert!(a.set_nx("k1", &2, 60).await.unwrap());
    assert_eq!(a.get::<i64>("k1").await.unwrap(), Some(2), "own write");
    assert!(b.set_nx("k2", &2, 60).await.unwrap());
    assert_eq!(b.get::<i64>("k2").await.unwrap(), Some(2), "own write");
    eventually("each process sees the other's value", || async {
        b.get::<i64>("k1").await.unwrap() == Some(2) && a.get::<i64>("k2").await.unwrap() == Some(2)
    })
    .await;
    assert!(!b.set_nx("k1", &3, 60).await.unwrap());
    assert!(!a.set_nx("k2", &3, 60).await.unwrap());
}

/// A near-cached tagged entry judged fresh keeps its verdict for the next read with the same
/// tags only while no tag state changes: a read naming another tag judges it again (and finds
/// that tag invalidated), and an invalidation of any tag anywhere makes the next read judge
/// again (and an unrelated one leaves the entry fresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_tag_verdict_holds_only_for_the_same_tags_and_no_tag_change() {
    let server = RedisServer::start();
    let a = near_cache(&server, near());
    let b = near_cache(&server, near());
    wait_active(&a).await;
    wait_active(&b).await;
    let runs = Arc::new(AtomicU64::new(0));
    let read = |tags: &'static [&'static str], value: i64| {
        let (a, runs) = (a.clone(), Arc::clone(&runs));
        async move {
            a.get_or_set("page:1", 60, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                value
            })
            .tags(tags)
            .await
            .unwrap()
        }
    };
    assert_eq!(read(&["x"], 1).await, 1);
    // Local, and judged locally at least once: the verdict is kept from then on.
    wait_served_locally(&server, "the tagged entry is served locally", || async {
        assert_eq!(read(&["x"], 2).await, 1);
    })
    .await;
    for _ in 0..10 {
        assert_eq!(read(&["x"], 2).await, 1);
    }

    // Another process invalidates a tag this entry does not carry: the reader judges again
    // once Redis's invalidation is in, and the entry is still fresh.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let before = a.near_cache_stats().invalidations;
    b.invalidate_tag("y").await.unwrap();
    eventually("the invalidation of `y` reaches the reader", || async {
        a.near_cache_stats().invalidations > before
    })
    .await;
    for _ in 0..10 {
        assert_eq!(read(&["x"], 2).await, 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A read naming `y` too is judged against it, not served from the verdict on `x` alone.
    assert_eq!(read(&["x", "y"], 3).await, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // The reloaded entry (tagged `x` and `y`), verdict kept, then `x` invalidated elsewhere.
    // `get_or_set` answers before its store lands: wait for the store, not with a loader.
    eventually("the reloaded entry is stored", || async {
        a.get::<i64>("page:1").await.unwrap() == Some(3)
    })
    .await;
    wait_served_locally(&server, "the reloaded entry is served locally", || async {
        assert_eq!(read(&["x", "y"], 4).await, 3);
    })
    .await;
    // A plain `get` keeps its own verdict (against the entry's tags alone) the same way.
    for _ in 0..10 {
        assert_eq!(a.get::<i64>("page:1").await.unwrap(), Some(3));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    b.invalidate_tag("x").await.unwrap();
    eventually(
        "the invalidation of `x` reaches the verdict kept by `get`",
        || async { a.get::<i64>("page:1").await.unwrap().is_none() },
    )
    .await;
    assert_eq!(read(&["x", "y"], 5).await, 5);
}

/// The byte bound holds for a tagged entry's kept verdict, which holds a copy of the call's
/// tags: the entry weighs its tags a second time (the largest copy kept), and a read whose tags
/// are larger than the entry's keeps no verdict (it is judged again on every read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_entry_weighs_the_verdict_it_may_keep() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    let long: Vec<String> = (0..20)
        .map(|t| format!("tag-{t}-{}", "x".repeat(500)))
        .collect();
    let tags_len: usize = long.iter().map(String::len).sum();

    // Entry `a` brings the tags' states in; entry `b`, read next, is then the only one kept.
    cache.set_tagged("a", &1, 600, &long).await.unwrap();
    wait_local(&cache, "a").await;
    let before = cache.near_cache_stats().bytes;
    cache.set_tagged("b", &1, 600, &long).await.unwrap();
    wait_local(&cache, "b").await;
    let weight = usize::try_from(cache.near_cache_stats().bytes - before).unwrap();
    let key = cache.make_key("b");
    let envelope: usize = server.cmd(&["STRLEN", &key]);
    assert!(
        weight >= key.len() + envelope + tags_len,
        "entry `b` weighs {weight} B: key {} B, envelope {envelope} B, tags {tags_len} B",
        key.len()
    );

    // Stored with [a], read with [a] and the long tags: no verdict kept, each read is judged
    // (the entry and 21 tag states looked up locally, not one verdict).
    cache.set_tagged("small", &1, 600, ["a"]).await.unwrap();
    let read = |tags: Vec<String>| {
        let cache = cache.clone();
        async move {
            let value: i64 = cache
                .get_or_set("small", 600, || async { 2 })
                .tags(tags.iter())
                .await
                .unwrap();
            assert_eq!(value, 1);
        }
    };
    let mut larger = vec!["a".to_owned()];
    larger.extend(long.iter().cloned());
    wait_served_locally(&server, "the tagged entry is served locally", || {
        read(larger.clone())
    })
    .await;
    let hits = cache.near_cache_stats().hits;
    read(larger.clone()).await;
    let looked_up = cache.near_cache_stats().hits - hits;
    assert!(
        looked_up > 1,
        "served from a kept verdict: {looked_up} lookup(s)"
    );

    // Read with its own tags, a verdict is kept: one lookup per read.
    wait_served_locally(&server, "the tagged entry is served locally", || {
        read(vec!["a".to_owned()])
    })
    .await;
    read(vec!["a".to_owned()]).await;
    let hits = cache.near_cache_stats().hits;
    read(vec!["a".to_owned()]).await;
    assert_eq!(cache.near_cache_stats().hits - hits, 1);
}

/// A soft invalidation by another `Cache` makes the near-cached entry stale: served under the
/// stale window while one reload runs, then replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_tag_invalidation_is_seen_as_stale_through_the_near_cache() {
    let server = RedisServer::start();
    let a = near_cache(&server, near());
    let b = near_cache(&server, near());
    wait_active(&a).await;
    wait_active(&b).await;
    let policy = impcache::Freshness::new().stale_while_revalidate(Duration::from_secs(60));
    let runs = Arc::new(AtomicU64::new(0));
    let read = |value: i64| {
        let runs = Arc::clone(&runs);
        let a = a.clone();
        async move {
            a.get_or_set("page:1", 60, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                value
            })
            .tags(["page"])
            .freshness(policy)
            .await
            .unwrap()
        }
    };
    assert_eq!(read(1).await, 1);
    wait_served_locally(&server, "the tagged entry is served locally", || async {
        assert_eq!(read(9).await, 1);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    b.soft_invalidate_tag("page").await.unwrap();
    // Stale: still answered with 1 while the reload (to 2) runs in the background; then 2.
    eventually("the soft invalidation triggers a reload", || async {
        assert!([1, 2].contains(&read(2).await));
        runs.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually("the reloaded value is served", || async {
        read(3).await == 2
    })
    .await;
    // A plain read has no stale window: it sees the reloaded entry (once stored), not the stale
    // one.
    eventually("a plain read sees the reloaded entry", || async {
        a.get::<i64>("page:1").await.unwrap() == Some(2)
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// On Cluster, tag state keys live on other slots (other primaries) than their entries: a
/// tagged hit is still served locally and another cache's invalidation still reaches it.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tag_state_is_tracked_on_every_primary() {
    use impcache::RedisClusterCacheRepository;
    use impcache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::start(3, 0);
    let open = || {
        let repository = RedisClusterCacheRepository::builder(cluster.urls())
            .build()
            .unwrap();
        Cache::builder(repository).near_cache(near()).build()
    };
    let (a, b) = (open(), open());
    wait_active(&a).await;
    wait_active(&b).await;
    let runs = Arc::new(AtomicU64::new(0));
    // Tags whose state keys land on other primaries than the entry.
    let entry = cluster.primary_for(&a.make_key("profile:1"));
    let tags: Vec<String> = (0..64)
        .map(|i| format!("t{i}"))
        .filter(|tag| {
            cluster.primary_for(&format!("{}:__impcache_tag:{tag}", a.key_prefix())) != entry
        })
        .take(2)
        .collect();
    assert_eq!(tags.len(), 2);
    let read = |value: i64| {
        let runs = Arc::clone(&runs);
        let a = a.clone();
        let tags = tags.clone();
        async move {
            a.get_or_set("profile:1", 60, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                value
            })
            .tags(tags)
            .await
            .unwrap()
        }
    };
    assert_eq!(read(1).await, 1);
    eventually("the tagged hit is served locally", || async {
        let hits = a.near_cache_stats().hits;
        let misses = a.near_cache_stats().misses;
        assert_eq!(read(2).await, 1);
        let stats = a.near_cache_stats();
        stats.hits > hits && stats.misses == misses
    })
    .await;
    b.invalidate_tag(&tags[1]).await.unwrap();
    eventually(
        "the invalidation on another primary reaches the reader",
        || async { read(2).await == 2 },
    )
    .await;
}

/// A fresh `get_or_set` hit held by the near cache is answered from it alone (no future of the
/// call's machinery is built), counted as the full read counts one: one `get` hit and one local
/// hit. Anything else goes the full way, which judges it as before: a value of another type
/// (loaded and overwritten), an invalid expire (an error, though the value is local), a plain
/// entry read with tags, an early refresh, a tag invalidated since, a value past its freshness
/// (served stale and revalidated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_get_or_set_hit_is_answered_from_the_near_cache_alone() {
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    // (`k` is stored for 60 s without a window: fresh under a window of 10 s.)
    let policy = impcache::Freshness::new().stale_while_revalidate(Duration::from_secs(10));
    let loaded = |n: i64| move || async move { n };
    assert_eq!(cache.get_or_set("k", 60, loaded(1)).await.unwrap(), 1);
    wait_local(&cache, "k").await;

    for with_policy in [false, true] {
        let (stats, near_hits) = (cache.stats(), cache.near_cache_stats().hits);
        let call = cache.get_or_set("k", 60, || async { unreachable!("held locally") });
        let call = if with_policy {
            call.freshness(policy)
        } else {
            call
        };
        let (local, value) = answered_locally(call).await;
        assert!(local, "with a policy: {with_policy}");
        let value: i64 = value.unwrap();
        assert_eq!(value, 1);
        assert_eq!(cache.stats().hits, stats.hits + 1);
        assert_eq!(cache.stats().misses, stats.misses);
        assert_eq!(cache.near_cache_stats().hits, near_hits + 1);
    }
    let (local, value) =
        answered_locally(cache.try_get_or_set("k", 60, || async { Ok::<i64, impcache::Error>(9) }))
            .await;
    assert!(local, "try_get_or_set");
    assert_eq!(value.unwrap(), 1);

    // The full way: a value of another type is loaded and overwritten.
    let (local, value) =
        answered_locally(cache.get_or_set("k", 60, || async { "two".to_owned() })).await;
    assert!(!local);
    assert_eq!(value.unwrap(), "two");
    // An invalid expire is an error, though the value is held locally.
    wait_local(&cache, "k").await;
    let (local, value) =
        answered_locally(cache.get_or_set("k", 0, || async { "never".to_owned() })).await;
    assert!(!local);
    assert!(matches!(value, Err(impcache::Error::InvalidExpire { .. })));
    // A plain entry read with tags (judged against them), and an early refresh (its coin is
    // thrown once, on the full way).
    let (local, value) = answered_locally(
        cache
            .get_or_set("k", 60, || async { "never".to_owned() })
            .tags(["t"]),
    )
    .await;
    assert!(!local, "tags");
    assert_eq!(value.unwrap(), "two");
    let (local, value) = answered_locally(
        cache
            .get_or_set("k", 60, || async { "never".to_owned() })
            .early_refresh(Duration::from_secs(1)),
    )
    .await;
    assert!(!local, "early refresh");
    assert_eq!(value.unwrap(), "two");

    // A tagged entry judged fresh against the call's tags, no tag state changed since: local
    // too; once its tag is invalidated, the full way (the loader runs).
    let tagged = |n: i64| {
        cache
            .get_or_set("t", 60, move || async move { n })
            .tags(["user:1"])
    };
    assert_eq!(tagged(1).await.unwrap(), 1);
    eventually("the tagged entry's verdict is kept", || async {
        answered_locally(tagged(0)).await.0
    })
    .await;
    let (stats, near_hits) = (cache.stats(), cache.near_cache_stats().hits);
    let ok = |(local, value): (bool, impcache::Result<i64>)| (local, value.ok());
    assert_eq!(ok(answered_locally(tagged(0)).await), (true, Some(1)));
    assert_eq!(cache.stats().hits, stats.hits + 1);
    assert_eq!(cache.near_cache_stats().hits, near_hits + 1);
    cache.invalidate_tag("user:1").await.unwrap();
    assert_eq!(
        ok(answered_locally(tagged(2)).await),
        (false, Some(2)),
        "invalidated"
    );

    // Past its freshness (2 s, of 12 s stored), within the window: the full way serves it
    // stale and reloads it in the background, once.
    let runs = Arc::new(AtomicU64::new(0));
    let counted = |n: i64| {
        let runs = Arc::clone(&runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            n
        }
    };
    let first: i64 = cache
        .get_or_set("s", 2, counted(1))
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(first, 1);
    wait_local(&cache, "s").await;
    let fresh = answered_locally(cache.get_or_set("s", 2, counted(2)).freshness(policy)).await;
    assert_eq!(ok(fresh), (true, Some(1)), "fresh");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = answered_locally(cache.get_or_set("s", 2, counted(2)).freshness(policy)).await;
    assert_eq!(ok(stale), (false, Some(1)), "served stale");
    eventually("the background reload stores 2", || async {
        cache.get::<i64>("s").await.ok() == Some(Some(2))
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A `get_or_set` answered from the near cache alone looks it up when first polled, not when
/// its future is made (found by a probe, 2026-12-07: it looked up in `into_future`): a future
/// made before an own write, or before the value's freshness ended, and awaited after, reads
/// what is there then (the new value; a reload); one dropped unpolled counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_set_answered_locally_looks_up_when_polled() {
    use std::future::IntoFuture;
    let server = RedisServer::start();
    let cache = near_cache(&server, near());
    wait_active(&cache).await;
    cache.set("k", &1, 60).await.unwrap();
    wait_local(&cache, "k").await;

    let (stats, near_hits) = (cache.stats(), cache.near_cache_stats().hits);
    for _ in 0..10 {
        drop(cache.get_or_set("k", 60, || async { 0 }).into_future());
    }
    assert_eq!(cache.stats().hits, stats.hits, "dropped unpolled");
    assert_eq!(cache.near_cache_stats().hits, near_hits);

    let made_before = cache.get_or_set("k", 60, || async { 0 }).into_future();
    cache.set("k", &2, 60).await.unwrap();
    assert_eq!(
        made_before.await.unwrap(),
        2,
        "an own write before the first poll"
    );
    let (set, read) = tokio::join!(
        cache.set("k", &3, 60),
        cache.get_or_set("k", 60, || async { 0 })
    );
    set.unwrap();
    assert_eq!(read.unwrap(), 3, "an own write polled first in a join");

    let runs = Arc::new(AtomicU64::new(0));
    let counted = || {
        let runs = Arc::clone(&runs);
        move || async move { runs.fetch_add(1, Ordering::SeqCst) + 1 }
    };
    assert_eq!(cache.get_or_set("e", 1, counted()).await.unwrap(), 1);
    wait_local(&cache, "e").await;
    let made_fresh = cache.get_or_set("e", 1, counted()).into_future();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        made_fresh.await.unwrap(),
        2,
        "expired before the first poll: loaded"
    );
}

/// A `get_or_set` answered from the near cache alone gives the thread back before it looks up,
/// as every read does, so an invalidation read meanwhile counts (found by a probe, 2026-12-07:
/// it looked up, then yielded, and 757-951 of ~1,000 calls racing another client's writes every
/// millisecond answered a value whose invalidation had arrived during the yield; 3-10 before).
/// On a runtime of one worker the near cache's invalidations are read only while the reader
/// waits, so a call that counted an invalidation and answered from process memory looked up
/// before it: there must be none.
#[test]
fn a_get_or_set_answered_locally_looks_up_after_its_yield() {
    looks_up_after_its_yield(|cache| {
        Box::pin(async move { cache.get_or_set("k", 60, || async { 0 }).await.unwrap() })
    });
}

/// The same for a `#[cached]` function with a freshness option.
#[test]
fn a_cached_call_answered_locally_looks_up_after_its_yield() {
    #[impcache::cached(cache = cache, expire = 60, key = "k", stale_while_revalidate = 10)]
    async fn cached_k(cache: &Cache) -> u64 {
        0
    }
    looks_up_after_its_yield(|cache| Box::pin(cached_k(cache)));
}

/// The test of [`a_get_or_set_answered_locally_looks_up_after_its_yield`], reading `k` with
/// `read`.
fn looks_up_after_its_yield(read: fn(&Cache) -> impcache::BoxFuture<'_, u64>) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = near_cache(&server, near());
        wait_active(&cache).await;
        cache.set("k", &0, 60).await.unwrap();
        wait_local(&cache, "k").await;
        // Another client's writes, on their own thread, every 5 ms.
        let key = cache.make_key("k");
        let url = server.url();
        let writer = std::thread::spawn(move || {
            let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
            for n in 1..=60u64 {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(n.to_string())
                    .query(&mut connection)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // The reader on the worker, beside the near cache's tasks (`block_on` runs on this
        // thread, in parallel with them).
        let reader = tokio::spawn(async move {
            let (mut stale, mut invalidated) = (0, 0);
            while !writer.is_finished() {
                let before = cache.near_cache_stats();
                read(&cache).await;
                let after = cache.near_cache_stats();
                if after.invalidations > before.invalidations {
                    invalidated += 1;
                    if after.hits > before.hits {
                        stale += 1;
                    }
                }
            }
            writer.join().unwrap();
            (stale, invalidated)
        });
        let (stale, invalidated) = reader.await.unwrap();
        assert!(invalidated > 0, "no invalidation arrived during a call");
        assert_eq!(
            stale, 0,
            "local answers looked up before an invalidation read in the call"
        );
    });
}

/// As `a_reader_looping_over_local_hits_still_receives_invalidations`, for `get_or_set` hits
/// answered from the near cache alone, on a multi-thread runtime of one worker (where no
/// catch-up of the near cache gives the thread back): the answer's future spends tokio's
/// cooperative budget too.
#[test]
fn a_reader_looping_over_local_get_or_set_hits_still_receives_invalidations() {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.worker_threads(1);
    a_looping_reader_sees_another_clients_write(runtime, |cache| {
        Box::pin(async move { cache.get_or_set("k", 60, || async { 0 }).await.unwrap() })
    });
}

/// A `GetOrSetFuture` polled again once it has answered (a caller's bug: it breaks `Future`'s
/// contract) answers `Error::Loader` naming the key rather than panic, whether the near cache
/// answered it or the whole call did (on the memory repository, which has no near cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_set_polled_after_its_answer_answers_an_error() {
    use std::future::{Future, IntoFuture};
    use std::pin::Pin;
    use std::task::Poll;
    /// One poll of `future`.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
    }
    let server = RedisServer::start();
    let near = near_cache(&server, near());
    wait_active(&near).await;
    near.set("k", &1, 60).await.unwrap();
    wait_local(&near, "k").await;
    let memory = Cache::new(MemoryCacheRepository::new());
    for (cache, local) in [(&near, true), (&memory, false)] {
        let mut future = cache.get_or_set("k", 60, || async { 1 }).into_future();
        let mut first = poll_once(&mut future).await;
        while first.is_pending() {
            tokio::task::yield_now().await;
            first = poll_once(&mut future).await;
        }
        assert!(matches!(first, Poll::Ready(Ok(1))), "{first:?}");
        assert_eq!(
            format!("{future:?}").contains("answered from the near cache"),
            local
        );
        match poll_once(&mut future).await {
            Poll::Ready(Err(impcache::Error::Loader { key, reason })) => {
                assert_eq!(key, "k");
                assert!(reason.contains("polled again"), "{reason}");
            }
            again => panic!("{again:?}"),
        }
    }
}
