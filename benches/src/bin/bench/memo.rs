//! Memoized functions: impcache's `#[cached]` against a hand-written `get` + decode (case 4), and
//! against the `cached` crate's Redis store (case 7a), hits, misses and a stampede.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cached::macros::concurrent_cached;
use impcache::Cache;
use impcache_benches::{side_by_side, Contender, Small};
use impcache_tests::RedisServer;

use crate::cases::leaked_cache;
use crate::{count, Config, Results};

const TTL: u64 = 300;
/// Keys of the hit loops.
const KEYS: u64 = 1_000;

/// The cache of the `#[cached]` functions and of the hand-written code.
static CACHE: OnceLock<&'static Cache> = OnceLock::new();
/// The server the `cached` stores connect to (their `create` blocks read it).
static CACHED_URL: OnceLock<String> = OnceLock::new();
/// How long the body of the stampede functions takes.
static SLOW_BODY: OnceLock<Duration> = OnceLock::new();

static MACRO_RUNS: AtomicU64 = AtomicU64::new(0);
static HAND_RUNS: AtomicU64 = AtomicU64::new(0);
static CACHED_RUNS: AtomicU64 = AtomicU64::new(0);
/// Fresh ids for the miss loops.
static NEXT: AtomicU64 = AtomicU64::new(1_000_000);

fn cache() -> &'static Cache {
    CACHE.get().expect("CACHE is set before any call")
}

fn slow_body() -> Duration {
    *SLOW_BODY.get().expect("SLOW_BODY is set before any call")
}

fn pick(task: usize, i: u64) -> u64 {
    (task as u64 * 7_919 + i * 13) % KEYS
}

#[impcache::cached(expire = 300, cache = cache(), key = "m:{id}")]
async fn macro_small(id: u64) -> Small {
    MACRO_RUNS.fetch_add(1, Ordering::Relaxed);
    Small::new(id)
}

#[impcache::cached(expire = 300, cache = cache(), key = "slow:{id}")]
async fn macro_slow(id: u64) -> Small {
    MACRO_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(slow_body()).await;
    Small::new(id)
}

/// The error type the `cached` functions return.
#[derive(Debug, Clone)]
pub(crate) struct BenchError(String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[concurrent_cached(
    map_error = r##"|e| BenchError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Small>",
    create = r##"{
        cached::AsyncRedisCache::builder("bench-small")
            .ttl(Duration::from_secs(TTL))
            .connection_string(CACHED_URL.get().expect("CACHED_URL"))
            .build()
            .await
            .expect("cached's AsyncRedisCache")
    }"##
)]
async fn cached_small(id: u64) -> Result<Small, BenchError> {
    CACHED_RUNS.fetch_add(1, Ordering::Relaxed);
    Ok(Small::new(id))
}

#[concurrent_cached(
    map_error = r##"|e| BenchError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Small>",
    create = r##"{
        cached::AsyncRedisCache::builder("bench-slow")
            .ttl(Duration::from_secs(TTL))
            .connection_string(CACHED_URL.get().expect("CACHED_URL"))
            .build()
            .await
            .expect("cached's AsyncRedisCache")
    }"##
)]
async fn cached_slow(id: u64) -> Result<Small, BenchError> {
    CACHED_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(slow_body()).await;
    Ok(Small::new(id))
}

/// The memoization a user writes by hand with impcache: `get`, and on a miss run the body and
/// `set` (no single-flight). Same key as `macro_small`.
async fn hand_memo<F, Fut>(prefix: &str, id: u64, body: F) -> impcache::Result<Small>
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = Small>,
{
    let key = format!("{prefix}:{id}");
    if let Some(value) = cache().get::<Small>(&key).await? {
        return Ok(value);
    }
    HAND_RUNS.fetch_add(1, Ordering::Relaxed);
    let value = body(id).await;
    cache().set(&key, &value, TTL).await?;
    Ok(value)
}

async fn small(id: u64) -> Small {
    Small::new(id)
}

async fn slow(id: u64) -> Small {
    tokio::time::sleep(slow_body()).await;
    Small::new(id)
}

fn runs() -> [u64; 3] {
    [&MACRO_RUNS, &HAND_RUNS, &CACHED_RUNS].map(|c| c.load(Ordering::Relaxed))
}

fn setup(config: &Config, server: &RedisServer) {
    CACHE.get_or_init(|| leaked_cache(server));
    CACHED_URL.get_or_init(|| server.url());
    SLOW_BODY.get_or_init(|| Duration::from_millis(if config.quick { 50 } else { 200 }));
}

/// Runs 20 concurrent first calls of `call` on one fresh key; how many times the body ran.
async fn stampede<F, Fut>(counter: &AtomicU64, call: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let before = counter.load(Ordering::Relaxed);
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(call(id))).collect();
    for call in calls {
        call.await.expect("stampede task");
    }
    counter.load(Ordering::Relaxed) - before
}

/// Case 4: the `#[cached]` hit path against a hand-written `get` + decode (the same key, the same
/// value), and the miss path against a hand-written `get` + body + `set`.
pub(crate) async fn macro_case(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 4: #[cached] against hand-written get + decode");
    setup(config, server);
    for id in 0..KEYS {
        macro_small(id).await;
    }
    let macro_hit = Contender {
        name: "#[cached]".to_owned(),
        op: Arc::new(|task: usize, i: u64| async move {
            std::hint::black_box(macro_small(pick(task, i)).await);
            1
        }),
    };
    let hand_get = Contender {
        name: "get+decode".to_owned(),
        op: Arc::new(|task: usize, i: u64| async move {
            let key = format!("m:{}", pick(task, i));
            count(match cache().get::<Small>(&key).await {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err("unexpected miss".to_owned()),
                Err(e) => Err(e.to_string()),
            })
        }),
    };
    let before = runs();
    for &c in &config.concurrencies {
        results.add(
            side_by_side(
                "#[cached] hit 100B",
                c,
                config.timing,
                &macro_hit,
                &hand_get,
                Some(0.95),
            )
            .await,
        );
    }
    assert_eq!(before, runs(), "the hit loop must not run bodies");

    let macro_miss = Contender {
        name: "#[cached]".to_owned(),
        op: Arc::new(|_: usize, _: u64| async move {
            std::hint::black_box(macro_small(NEXT.fetch_add(1, Ordering::Relaxed)).await);
            1
        }),
    };
    let hand_miss = Contender {
        name: "get+body+set".to_owned(),
        op: Arc::new(|_: usize, _: u64| async move {
            count(hand_memo("m", NEXT.fetch_add(1, Ordering::Relaxed), small).await)
        }),
    };
    for c in [1, 16] {
        results.add(
            side_by_side(
                "#[cached] miss 100B",
                c,
                config.timing,
                &macro_miss,
                &hand_miss,
                None,
            )
            .await,
        );
    }
    let by_macro = stampede(&MACRO_RUNS, macro_slow).await;
    let by_hand = stampede(&HAND_RUNS, |id| async move {
        let _ = hand_memo("slow", id, slow).await;
    })
    .await;
    results.note(format!(
        "stampede, 20 concurrent calls on one cold key ({} ms body): #[cached] ran the body {by_macro} time(s), \
         hand-written get+body+set {by_hand} times",
        slow_body().as_millis()
    ));
}

/// Case 7a: the `cached` crate's `AsyncRedisCache` memoization (MessagePack values, one
/// multiplexed connection) against impcache's `#[cached]`.
pub(crate) async fn cached_crate(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 7a: the cached crate's AsyncRedisCache against #[cached]");
    setup(config, server);
    for id in 0..KEYS {
        cached_small(id).await.expect("prime cached");
        macro_small(id).await;
    }
    let macro_hit = Contender {
        name: "#[cached]".to_owned(),
        op: Arc::new(|task: usize, i: u64| async move {
            std::hint::black_box(macro_small(pick(task, i)).await);
            1
        }),
    };
    let cached_hit = Contender {
        name: "cached crate".to_owned(),
        op: Arc::new(|task: usize, i: u64| async move { count(cached_small(pick(task, i)).await) }),
    };
    let before = runs();
    for &c in &config.concurrencies {
        results.add(
            side_by_side(
                "memoized hit 100B",
                c,
                config.timing,
                &macro_hit,
                &cached_hit,
                None,
            )
            .await,
        );
    }
    assert_eq!(before, runs(), "the hit loop must not run bodies");

    let macro_miss = Contender {
        name: "#[cached]".to_owned(),
        op: Arc::new(|_: usize, _: u64| async move {
            std::hint::black_box(macro_small(NEXT.fetch_add(1, Ordering::Relaxed)).await);
            1
        }),
    };
    let cached_miss = Contender {
        name: "cached crate".to_owned(),
        op: Arc::new(|_: usize, _: u64| async move {
            count(cached_small(NEXT.fetch_add(1, Ordering::Relaxed)).await)
        }),
    };
    for c in [1, 16] {
        results.add(
            side_by_side(
                "memoized miss 100B",
                c,
                config.timing,
                &macro_miss,
                &cached_miss,
                None,
            )
            .await,
        );
    }
    let by_cached = stampede(&CACHED_RUNS, |id| async move {
        let _ = cached_slow(id).await;
    })
    .await;
    let by_macro = stampede(&MACRO_RUNS, macro_slow).await;
    results.note(format!(
        "stampede, 20 concurrent calls on one cold key ({} ms body): the cached crate ran the body \
         {by_cached} times, impcache #[cached] {by_macro} time(s)",
        slow_body().as_millis()
    ));
}
