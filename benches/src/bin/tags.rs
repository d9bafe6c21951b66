//! The tags benchmark (issue 16), on a throwaway `redis-server`:
//!
//! 1. **Hit cost**: `get_or_set(..).tags([two tags])` (one pipeline: `GET` + `MGET` of the four
//!    tag keys) against the same `get_or_set` untagged (one `GET`), closed loop, alternating
//!    rounds; the ratio of throughputs (target ≥ 0.9). Then the same through a near cache (issue
//!    14), where the entry and its tags' state are all served from process memory.
//! 2. **Invalidation**: `invalidate_tag` against `delete_pattern` of the same 10,000 entries,
//!    among 100,000 other keys; wall time and round trips (from `INFO commandstats`).
//!
//! ```text
//! cargo run --release -p impcache-benches --bin tags -- [seconds per round, default 2]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impcache::{Cache, NearCache, RedisCacheRepository};
use impcache_benches::Small;
use impcache_tests::RedisServer;

const CONCURRENCY: usize = 32;
const KEYS: u64 = 50;
const GROUP: u64 = 10_000;
const OTHERS: u64 = 100_000;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(2.0, |s| s.parse().expect("seconds per round"));
    let round = Duration::from_secs_f64(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    runtime.block_on(async {
        let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
        hit_cost("", &cache, round).await;
        let repository = RedisCacheRepository::new(&server.url()).unwrap();
        let near = Cache::builder(repository)
            .near_cache(NearCache::new())
            .build();
        hit_cost("near cache, ", &near, round).await;
        invalidation(&cache, &server).await;
    });
}

/// Calls per second of `op` from `tasks` tasks for `round`.
async fn throughput<F, Fut>(tasks: usize, round: Duration, op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, done, stop) = (op.clone(), Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut i = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    op(i % KEYS).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    // A near-cache hit never waits: yield now and then, or the timer that
                    // ends the round never runs (as in `near.rs`).
                    if i.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(round).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn hit_cost(label: &str, cache: &Cache, round: Duration) {
    for k in 0..KEYS {
        let _: Small = cache
            .get_or_set(
                &format!("plain:{k}"),
                3600,
                move || async move { Small::new(k) },
            )
            .await
            .unwrap();
        let _: Small = cache
            .get_or_set(&format!("tagged:{k}"), 3600, move || async move {
                Small::new(k)
            })
            .tags([format!("user:{k}"), "users".to_owned()])
            .await
            .unwrap();
    }
    // A tag invalidated long ago: its keys exist, as in production.
    cache.invalidate_tag("users").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for k in 0..KEYS {
        let _: Small = cache
            .get_or_set(&format!("tagged:{k}"), 3600, move || async move {
                Small::new(k)
            })
            .tags([format!("user:{k}"), "users".to_owned()])
            .await
            .unwrap();
    }
    for tasks in [1, CONCURRENCY] {
        let (mut plain, mut tagged) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let c = cache.clone();
            plain.push(
                throughput(tasks, round, move |k| {
                    let c = c.clone();
                    async move {
                        let _: Small = c
                            .get_or_set(&format!("plain:{k}"), 3600, || async {
                                unreachable!("a hit")
                            })
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
            let c = cache.clone();
            tagged.push(
                throughput(tasks, round, move |k| {
                    let c = c.clone();
                    async move {
                        let _: Small = c
                            .get_or_set(&format!("tagged:{k}"), 3600, || async {
                                unreachable!("a hit")
                            })
                            .tags([format!("user:{k}"), "users".to_owned()])
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
        }
        let (p, t) = (median(&mut plain), median(&mut tagged));
        println!(
            "hit, {label}{tasks:>2} tasks: get_or_set {p:>9.0}/s  get_or_set.tags(2) {t:>9.0}/s  ratio {:.3}",
            t / p
        );
    }
}

/// Round trips (commands) the server ran, from `INFO commandstats`.
fn commands(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| line.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|calls| calls.parse::<u64>().ok())
        .sum()
}

async fn invalidation(cache: &Cache, server: &RedisServer) {
    let fill = |prefix: &'static str, count: u64, tagged: bool| {
        let cache = cache.clone();
        async move {
            for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
                if tagged {
                    for &i in chunk {
                        cache
                            .set_tagged(&format!("{prefix}:{i}"), &i, 3600, ["group"])
                            .await
                            .unwrap();
                    }
                } else {
                    cache
                        .set_many(chunk.iter().map(|i| (format!("{prefix}:{i}"), *i)), 3600)
                        .await
                        .unwrap();
                }
            }
        }
    };
    fill("other", OTHERS, false).await;
    fill("group", GROUP, true).await;

    let before = commands(server);
    let started = Instant::now();
    cache.invalidate_tag("group").await.unwrap();
    let tag_time = started.elapsed();
    let tag_commands = commands(server) - before - 1; // the INFO itself
    assert_eq!(cache.get::<u64>("group:0").await.unwrap(), None);

    fill("group", GROUP, false).await;
    let before = commands(server);
    let started = Instant::now();
    let removed = cache.delete_pattern("group:*").await.unwrap();
    let pattern_time = started.elapsed();
    let pattern_commands = commands(server) - before - 1;
    assert_eq!(removed, GROUP);
    println!(
        "invalidate {GROUP} entries among {OTHERS} others: invalidate_tag {tag_time:?} ({tag_commands} commands)  delete_pattern {pattern_time:?} ({pattern_commands} commands)  ratio {:.0}x",
        pattern_time.as_secs_f64() / tag_time.as_secs_f64()
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
