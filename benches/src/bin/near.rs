//! The near cache (issue 14), side by side in one run on a throwaway `redis-server`:
//!
//! - hot-key `get` of 100 keys holding a `Small` JSON object (~100 B), at 1 and 64 tasks:
//!   impcache with a near cache, impcache without, the plain `redis` crate (a
//!   `MultiplexedConnection` with its defaults, `GET` + `serde_json`), moka + `serde_json`, and
//!   impcache's memory repository; rates and ratios against the plain `redis` crate (the anchor);
//! - the invalidation delay: another client `SET`s a near-cached key, time until the reader sees
//!   the new value (p50/p99 over many samples, loopback);
//! - a mix of reads and writes over 10,000 keys chosen with a Zipf law (s = 1), at 99:1, 90:10
//!   and 50:50, with and without the near cache, at 64 tasks.
//!
//! usage: `cargo run --release -p impcache-benches --bin near [-- --seconds S]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use impcache::{Cache, MemoryCacheRepository, NearCache, RedisCacheRepository};
use impcache_benches::Small;
use impcache_tests::RedisServer;

const KEYS: u64 = 100;
const ROUNDS: usize = 3;

fn main() {
    let mut seconds = 1.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|s| s.parse().ok())
                .expect("--seconds S");
        }
    }
    let window = Duration::from_secs_f64(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(window));
}

/// Runs `op(i)` on `tasks` tasks for `window`; operations per second.
async fn rate<F, Fut>(tasks: usize, window: Duration, op: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (op, stop, count) = (op.clone(), Arc::clone(&stop), Arc::clone(&count));
        handles.push(tokio::spawn(async move {
            let mut i = task as u64 * 7;
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                op(i).await;
                i = i.wrapping_add(1);
                done += 1;
                if done % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            count.fetch_add(done, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else {
        format!("{:.1} k/s", rate / 1e3)
    }
}

async fn run(window: Duration) {
    let server = RedisServer::start();
    let near_cache = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
        .near_cache(NearCache::new())
        .build();
    let remote_cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    let memory = Cache::new(MemoryCacheRepository::new());
    let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
        .max_capacity(64 * 1024 * 1024)
        .weigher(|k: &String, v: &Bytes| (k.len() + v.len()) as u32)
        .build();
    let client = redis::Client::open(server.url()).unwrap();
    let plain = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("small:{i}")).collect());
    let full: Arc<Vec<String>> = Arc::new(keys.iter().map(|k| near_cache.make_key(k)).collect());
    for (i, key) in keys.iter().enumerate() {
        let value = Small::new(i as u64);
        remote_cache.set(key, &value, 3600).await.unwrap();
        memory.set(key, &value, 3600).await.unwrap();
        moka.insert(
            full[i].clone(),
            Bytes::from(serde_json::to_vec(&value).unwrap()),
        );
    }
    while !near_cache.is_near_cache_active() {
        let _ = near_cache.get::<Small>("small:0").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for key in keys.iter() {
        let _: Small = near_cache.get(key).await.unwrap().unwrap();
    }

    println!("## Hot-key get, {KEYS} keys, `Small` JSON, median of {ROUNDS} alternating rounds of {window:?}\n");
    println!("| reader | 1 task | ratio | 64 tasks | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let names = [
        "`redis` crate, plain `MultiplexedConnection` (anchor)",
        "impcache `Cache::get`, Redis, no near cache",
        "impcache `Cache::get`, Redis + near cache",
        "moka `sync::Cache` of bytes + `serde_json`",
        "impcache memory repository",
    ];
    let mut results = vec![[Vec::new(), Vec::new()]; names.len()];
    for _ in 0..ROUNDS {
        for (t, tasks) in [1usize, 64].into_iter().enumerate() {
            for (c, result) in results.iter_mut().enumerate() {
                let keys = Arc::clone(&keys);
                let full = Arc::clone(&full);
                let r = match c {
                    0 => {
                        let plain = plain.clone();
                        rate(tasks, window, move |i| {
                            let mut plain = plain.clone();
                            let full = Arc::clone(&full);
                            async move {
                                let bytes: Vec<u8> = redis::cmd("GET")
                                    .arg(&full[(i % KEYS) as usize])
                                    .query_async(&mut plain)
                                    .await
                                    .unwrap();
                                std::hint::black_box(
                                    serde_json::from_slice::<Small>(&bytes).unwrap(),
                                );
                            }
                        })
                        .await
                    }
                    1 | 2 | 4 => {
                        let cache = match c {
                            1 => remote_cache.clone(),
                            2 => near_cache.clone(),
                            _ => memory.clone(),
                        };
                        rate(tasks, window, move |i| {
                            let cache = cache.clone();
                            let keys = Arc::clone(&keys);
                            async move {
                                let v: Small = cache
                                    .get(&keys[(i % KEYS) as usize])
                                    .await
                                    .unwrap()
                                    .unwrap();
                                std::hint::black_box(v);
                            }
                        })
                        .await
                    }
                    _ => {
                        let moka = moka.clone();
                        rate(tasks, window, move |i| {
                            let moka = moka.clone();
                            let full = Arc::clone(&full);
                            async move {
                                let bytes = moka.get(&full[(i % KEYS) as usize]).unwrap();
                                std::hint::black_box(
                                    serde_json::from_slice::<Small>(&bytes).unwrap(),
                                );
                            }
                        })
                        .await
                    }
                };
                result[t].push(r);
            }
        }
    }
    let anchor = [median(results[0][0].clone()), median(results[0][1].clone())];
    for (name, result) in names.iter().zip(&results) {
        let one = median(result[0].clone());
        let many = median(result[1].clone());
        println!(
            "| {name} | {} | {:.2}× | {} | {:.2}× |",
            human(one),
            one / anchor[0],
            human(many),
            many / anchor[1]
        );
    }
    let stats = near_cache.near_cache_stats();
    println!("\nnear cache during the run: {stats:?}\n");

    // Invalidation delay: another client writes, the reader polls until it sees the value.
    let mut writer = client.get_multiplexed_async_connection().await.unwrap();
    let mut delays = Vec::new();
    let key = "small:0";
    for n in 0..2000u64 {
        // Held locally first.
        let before = near_cache.near_cache_stats().hits;
        let _: Option<i64> = near_cache.get("delay").await.unwrap_or(None);
        if n > 0 && near_cache.near_cache_stats().hits == before {
            let _: Option<i64> = near_cache.get("delay").await.unwrap_or(None);
        }
        let started = Instant::now();
        let _: () = redis::cmd("SET")
            .arg(near_cache.make_key("delay"))
            .arg(n.to_string())
            .query_async(&mut writer)
            .await
            .unwrap();
        let sent = started.elapsed();
        loop {
            if near_cache.get::<i64>("delay").await.unwrap() == Some(n as i64) {
                break;
            }
        }
        delays.push((started.elapsed().saturating_sub(sent)).as_secs_f64() * 1e6);
        let _ = key;
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "## Invalidation delay (another client's SET acknowledged → the near-cached reader sees it), {} samples\n\np50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (a read polling in a loop; loopback)\n",
        delays.len(),
        pct(0.50),
        pct(0.99),
        delays[delays.len() - 1]
    );

    // Zipf mixes over 10k keys.
    const MIX_KEYS: usize = 10_000;
    let weights: Vec<f64> = (1..=MIX_KEYS).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(MIX_KEYS);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let cdf = Arc::new(cdf);
    let mix_keys: Arc<Vec<String>> = Arc::new((0..MIX_KEYS).map(|i| format!("mix:{i}")).collect());
    remote_cache
        .set_many(mix_keys.iter().map(|k| (k.as_str(), Small::new(1))), 3600)
        .await
        .unwrap();
    println!(
        "## Zipf (s = 1) reads:writes over {MIX_KEYS} keys, 64 tasks, median of {ROUNDS} rounds\n"
    );
    println!("| mix | without near cache | with near cache | ratio |");
    println!("|---|---:|---:|---:|");
    for reads_per_100 in [99u64, 90, 50] {
        let mut rates = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (c, cache) in [remote_cache.clone(), near_cache.clone()]
                .into_iter()
                .enumerate()
            {
                let (cdf, mix_keys) = (Arc::clone(&cdf), Arc::clone(&mix_keys));
                rates[c].push(
                    rate(64, window, move |i| {
                        let cache = cache.clone();
                        let (cdf, mix_keys) = (Arc::clone(&cdf), Arc::clone(&mix_keys));
                        async move {
                            // A cheap, well-spread pseudo-random number from the counter.
                            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
                            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                            let rank = cdf.partition_point(|&p| p < u).min(MIX_KEYS - 1);
                            let key = &mix_keys[rank];
                            if x % 100 < reads_per_100 {
                                let v: Option<Small> = cache.get(key).await.unwrap();
                                std::hint::black_box(v);
                            } else {
                                cache.set(key, &Small::new(i), 3600).await.unwrap();
                            }
                        }
                    })
                    .await,
                );
            }
        }
        let without = median(rates[0].clone());
        let with = median(rates[1].clone());
        println!(
            "| {reads_per_100}:{} | {} | {} | {:.2}× |",
            100 - reads_per_100,
            human(without),
            human(with),
            with / without
        );
    }
    println!(
        "\nnear cache at the end: {:?}",
        near_cache.near_cache_stats()
    );
}
