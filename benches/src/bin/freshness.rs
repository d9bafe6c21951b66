//! The freshness benchmark (issue 15), on a throwaway `redis-server`:
//!
//! 1. **Hit cost**: `get_or_set` with a `Freshness` policy (a `GET` + `PTTL` pipeline) against a
//!    plain `Cache::get` hit, closed loop, alternating rounds; the ratio of throughputs.
//!    The same through a near cache (issue 14), where both hits are local: the policy judges
//!    the age from the Redis TTL the near cache keeps with the value.
//!    The same two reads written by hand on the redis crate's defaults (`GET` against `GET` +
//!    `PTTL` pipelined, one `MultiplexedConnection`): the ceiling of that ratio for any library
//!    whose hit reads `PTTL`.
//! 2. **Tail latency under expiry**: tasks read 50 keys through `get_or_set`; each key is fresh
//!    for 1 s and its loader takes 50 ms, so keys expire all through the run. Without a policy
//!    every expiry is a cliff (the callers of that key wait for the loader); with
//!    `stale_while_revalidate` they are answered with the stale value and one reload runs in the
//!    background. p50, p99 and max of the call latency.
//!
//! ```text
//! cargo run --release -p impcache-benches --bin freshness -- [seconds per round, default 2]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impcache::{Cache, Freshness, NearCache, RedisCacheRepository};
use impcache_benches::{
    keyed_rate, multiplexed_connection, raw_get_rate, store_raw_smalls, OnRedis, Small,
};

const CONCURRENCY: usize = 32;
const KEYS: u64 = 50;

fn main() {
    let OnRedis {
        runtime,
        server,
        round,
    } = OnRedis::start().unwrap();
    runtime.block_on(async {
        let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
        hit_cost(&cache, "", round).await;
        let near = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
            .near_cache(NearCache::new())
            .build();
        impcache_benches::wait_near_active(&near).await;
        hit_cost(&near, "near cache, ", round).await;
        hand_written(&server.url(), round).await;
        tail_latency(&cache, round * 5).await;
    });
}

/// `label` names the cache's configuration in the output lines.
async fn hit_cost(cache: &Cache, label: &str, round: Duration) {
    let policy = Freshness::new()
        .stale_while_revalidate(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(600));
    for k in 0..KEYS {
        let key = format!("hit:{k}");
        let _: Small = cache
            .get_or_set(&key, 3600, move || async move { Small::new(k) })
            .freshness(policy)
            .await
            .unwrap();
    }
    for tasks in [1, CONCURRENCY] {
        let (mut plain, mut fresh, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let c = cache.clone();
            plain.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let c = c.clone();
                    async move {
                        let v: Option<Small> = c.get(&format!("hit:{k}")).await.unwrap();
                        assert!(v.is_some());
                    }
                })
                .await,
            );
            let c = cache.clone();
            bare.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let c = c.clone();
                    async move {
                        let _: Small =
                            c.get_or_set(&format!("hit:{k}"), 3600, move || async move {
                                Small::new(k)
                            })
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
            let c = cache.clone();
            fresh.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let c = c.clone();
                    async move {
                        let _: Small =
                            c.get_or_set(&format!("hit:{k}"), 3600, move || async move {
                                Small::new(k)
                            })
                            .freshness(policy)
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
        }
        let (p, f) = (median(&mut plain), median(&mut fresh));
        let b = median(&mut bare);
        println!(
            "hit, {label}{tasks:>2} tasks: get {p:>9.0}/s  get_or_set (no policy) {b:>9.0}/s ratio {:.3}  get_or_set+freshness {f:>9.0}/s  ratio {:.3}",
            b / p,
            f / p
        );
    }
}

/// `GET` + decode against `GET` + `PTTL` pipelined + decode, written by hand: what the second
/// command costs client and server with no library in between.
async fn hand_written(url: &str, round: Duration) {
    let mut conn = multiplexed_connection(url).await.unwrap();
    store_raw_smalls(&mut conn, KEYS).await.unwrap();
    for tasks in [1, CONCURRENCY] {
        let (mut get, mut with_pttl) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            get.push(raw_get_rate(&conn, tasks, round, KEYS).await);
            let c = conn.clone();
            with_pttl.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let mut c = c.clone();
                    async move {
                        let key = format!("raw:{k}");
                        let (bytes, ttl): (Vec<u8>, i64) = redis::pipe()
                            .get(&key)
                            .pttl(&key)
                            .query_async(&mut c)
                            .await
                            .unwrap();
                        std::hint::black_box((
                            serde_json::from_slice::<Small>(&bytes).unwrap(),
                            ttl,
                        ));
                    }
                })
                .await,
            );
        }
        let (g, p) = (median(&mut get), median(&mut with_pttl));
        println!(
            "hit by hand, {tasks:>2} tasks: GET {g:>9.0}/s  GET+PTTL {p:>9.0}/s  ratio {:.3}",
            p / g
        );
    }
}

async fn tail_latency(cache: &Cache, run: Duration) {
    for (name, policy) in [
        ("no policy", Freshness::new()),
        (
            "stale_while_revalidate(60s)",
            Freshness::new().stale_while_revalidate(Duration::from_secs(60)),
        ),
    ] {
        let prefix = format!("tail:{}", name.len());
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let loads = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..CONCURRENCY)
            .map(|t| {
                let (cache, latencies, loads, stop, prefix) = (
                    cache.clone(),
                    Arc::clone(&latencies),
                    Arc::clone(&loads),
                    Arc::clone(&stop),
                    prefix.clone(),
                );
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    let mut i = t as u64 * 7;
                    while !stop.load(Ordering::Relaxed) {
                        let k = i % KEYS;
                        i += 1;
                        let loads = Arc::clone(&loads);
                        let started = Instant::now();
                        let _: Small = cache
                            .get_or_set(
                                &format!("{prefix}:{k}"),
                                Duration::from_secs(1),
                                move || async move {
                                    loads.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    Small::new(k)
                                },
                            )
                            .freshness(policy)
                            .await
                            .unwrap();
                        mine.push(started.elapsed());
                    }
                    latencies.lock().unwrap().extend(mine);
                })
            })
            .collect();
        tokio::time::sleep(run).await;
        stop.store(true, Ordering::Relaxed);
        for handle in handles {
            handle.await.unwrap();
        }
        let mut all = std::mem::take(&mut *latencies.lock().unwrap());
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        println!(
            "expiring keys, {name:<28}: {} calls, {} loads, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            all.len(),
            loads.load(Ordering::Relaxed),
            at(0.50),
            at(0.99),
            at(0.999),
            all[all.len() - 1]
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
