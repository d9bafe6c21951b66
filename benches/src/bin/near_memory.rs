//! Memory per entry of the near cache at 1 M small entries (issue 14), against moka holding the
//! same keys and values. One system per process (run each a few times, alternating):
//!
//! - `near`: 1 M keys (`Small` JSON, ~100 B) written to a throwaway `redis-server`, then read
//!   once each through a near-cached `Cache` (64 tasks), so the near cache holds them all;
//! - `moka`: a `moka::sync::Cache<String, Bytes>` bounded by bytes (key + value), what a user
//!   would write, filled with the same full keys and JSON bytes;
//! - `moka-ttl`: the same with a TTL per entry (the shape of impcache's memory repository).
//!
//! Measured two ways around the fill: the live heap (bytes allocated minus bytes freed, counted by
//! a global allocator wrapper) and the resident set (`/proc/self/statm`). Both include the keys
//! and values themselves.
//!
//! usage: `cargo run --release -p impcache-benches --bin near-memory -- near|moka|moka-ttl [N]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use impcache::{Cache, NearCache, RedisCacheRepository};
use impcache_benches::Small;
use impcache_tests::RedisServer;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CAPACITY: u64 = 4 * 1024 * 1024 * 1024;
const TASKS: u64 = 64;

/// Live heap bytes and resident set bytes now.
fn snapshot() -> (i64, i64) {
    let stats = GLOBAL.stats();
    let heap = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
        + stats.bytes_reallocated as i64;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    (heap, pages * 4096)
}

fn key(i: u64) -> String {
    format!("m:{i}")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let system = args.next().expect("near|moka|moka-ttl");
    let n: u64 = args.next().map_or(1_000_000, |s| s.parse().expect("N"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&system, n));
}

fn report(system: &str, n: u64, before: (i64, i64), after: (i64, i64), entries: u64, weight: u64) {
    let heap = (after.0 - before.0) as f64;
    let rss = (after.1 - before.1) as f64;
    println!(
        "| {system} | {entries} | {:.1} | {:.0} | {:.0} | {:.1} MiB | {:.1} MiB |",
        weight as f64 / entries.max(1) as f64,
        heap / n as f64,
        rss / n as f64,
        heap / 1048576.0,
        rss / 1048576.0,
    );
}

async fn run(system: &str, n: u64) {
    println!(
        "| system | entries | key + value B | live heap B/entry | RSS B/entry | live heap | RSS |"
    );
    match system {
        "near" => {
            let server = RedisServer::start();
            let writer = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
            let mut start = 0;
            while start < n {
                let end = (start + 1000).min(n);
                let batch: Vec<(String, Small)> =
                    (start..end).map(|i| (key(i), Small::new(i))).collect();
                writer
                    .set_many(batch.iter().map(|(k, v)| (k.as_str(), v)), 3600)
                    .await
                    .unwrap();
                start = end;
            }
            drop(writer);
            let near = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
                .near_cache(
                    NearCache::new()
                        .max_capacity_bytes(CAPACITY)
                        .max_ttl(Duration::from_secs(3600)),
                )
                .build();
            impcache_benches::wait_near_active(&near).await;
            // Warm the connections and buffers on keys outside the measured set.
            let _ = near.get::<Small>("warm").await;
            let _ = near.near_cache_stats();
            let held = near.near_cache_stats().entries;
            let before = snapshot();
            let near = Arc::new(near);
            let mut handles = Vec::new();
            for task in 0..TASKS {
                let near = Arc::clone(&near);
                handles.push(tokio::spawn(async move {
                    let mut i = task;
                    while i < n {
                        let v: Option<Small> = near.get(&key(i)).await.unwrap();
                        assert!(v.is_some());
                        i += TASKS;
                    }
                }));
            }
            for handle in handles {
                handle.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stats = near.near_cache_stats();
            let after = snapshot();
            report(
                "impcache near cache",
                n,
                before,
                after,
                stats.entries - held,
                stats.bytes,
            );
            println!("\n{stats:?}");
        }
        "moka" | "moka-ttl" => {
            let prefix = Cache::new(impcache::MemoryCacheRepository::new()).make_key("");
            let before = snapshot();
            let (entries, weight) = if system == "moka" {
                let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
                    .max_capacity(CAPACITY)
                    .weigher(|k: &String, v: &Bytes| (k.len() + v.len()) as u32)
                    .build();
                for i in 0..n {
                    moka.insert(
                        format!("{prefix}{}", key(i)),
                        Bytes::from(serde_json::to_vec(&Small::new(i)).unwrap()),
                    );
                }
                moka.run_pending_tasks();
                let r = (moka.entry_count(), moka.weighted_size());
                std::mem::forget(moka);
                r
            } else {
                let moka = moka::sync::Cache::builder()
                    .max_capacity(CAPACITY)
                    .weigher(|k: &String, v: &(Bytes, Duration)| (k.len() + v.0.len()) as u32)
                    .expire_after(Ttl)
                    .build();
                for i in 0..n {
                    moka.insert(
                        format!("{prefix}{}", key(i)),
                        (
                            Bytes::from(serde_json::to_vec(&Small::new(i)).unwrap()),
                            Duration::from_secs(3600),
                        ),
                    );
                }
                moka.run_pending_tasks();
                let r = (moka.entry_count(), moka.weighted_size());
                std::mem::forget(moka);
                r
            };
            let after = snapshot();
            let name = if system == "moka" {
                "moka `Cache<String, Bytes>`"
            } else {
                "moka `Cache<String, (Bytes, Duration)>` + per-entry expiry"
            };
            report(name, n, before, after, entries, weight);
        }
        other => panic!("unknown system {other}"),
    }
}

struct Ttl;

impl moka::Expiry<String, (Bytes, Duration)> for Ttl {
    fn expire_after_create(
        &self,
        _: &String,
        value: &(Bytes, Duration),
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}
