//! Counts heap allocations and allocated bytes per operation on the hit path (and `set`), for
//! impcache and for the same work done by hand, with a counting global allocator. Starts its own
//! throwaway `redis-server`.
//!
//! `cargo run --release -p impcache-benches --bin alloc-count`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

use std::alloc::System;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_benches::Small;
use impcache_tests::RedisServer;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const OPS: u64 = 5_000;
const KEYS: u64 = 1_000;

/// Runs `op` `OPS` times (after a warm-up) and prints allocations and bytes per call.
async fn per_op<F, Fut>(name: &str, op: F) -> (f64, f64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..200 {
        op(i % KEYS).await;
    }
    let region = Region::new(GLOBAL);
    for i in 0..OPS {
        op(i % KEYS).await;
    }
    let stats = region.change();
    let (allocs, bytes) = (
        stats.allocations as f64 / OPS as f64,
        stats.bytes_allocated as f64 / OPS as f64,
    );
    println!("| {name} | {allocs:.1} | {bytes:.0} |");
    (allocs, bytes)
}

#[impcache::cached(expire = 300, cache = CACHE.get().expect("CACHE"), key = "small:{id}")]
async fn memoized(id: u64) -> Small {
    Small::new(id)
}

static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

fn main() {
    let server = RedisServer::start();
    // A current-thread runtime: the connection's driver task runs on this thread, and its
    // allocations are counted with the operation (the same on both sides).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
        CACHE.set(cache.clone()).unwrap();
        let raw = impcache_benches::raw_connection(&server.url())
            .await
            .unwrap();
        let memory = Cache::new(MemoryCacheRepository::new());
        let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
            .max_capacity(1 << 28)
            .time_to_live(Duration::from_secs(300))
            .build();
        let values: Vec<Small> = (0..KEYS).map(Small::new).collect();
        for (id, v) in values.iter().enumerate() {
            cache.set(&format!("small:{id}"), v, 300).await.unwrap();
            memory.set(&format!("small:{id}"), v, 300).await.unwrap();
            moka.insert(
                format!("cache:1:small:{id}"),
                Bytes::from(serde_json::to_vec(v).unwrap()),
            );
        }
        println!(
            "| operation (100 B JSON value) | allocations per call | bytes allocated per call |"
        );
        println!("|---|---:|---:|");
        per_op("impcache `Cache::get` (Redis)", |id| {
            let cache = &cache;
            async move {
                let v: Small = cache.get(&format!("small:{id}")).await.unwrap().unwrap();
                std::hint::black_box(v);
            }
        })
        .await;
        per_op("redis-rs `GET` + serde_json (same work by hand)", |id| {
            let mut conn = raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(format!("cache:1:small:{id}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                std::hint::black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
            }
        })
        .await;
        per_op("impcache `#[cached]` hit (Redis)", |id| async move {
            std::hint::black_box(memoized(id).await);
        })
        .await;
        per_op("impcache `Cache::set` (Redis)", |id| {
            let (cache, values) = (&cache, &values);
            async move {
                cache
                    .set(&format!("small:{id}"), &values[id as usize], 300)
                    .await
                    .unwrap();
            }
        })
        .await;
        per_op("redis-rs `SET EX` + serde_json", |id| {
            let mut conn = raw.clone();
            let values = &values;
            async move {
                let bytes = serde_json::to_vec(&values[id as usize]).unwrap();
                let () = redis::cmd("SET")
                    .arg(format!("cache:1:small:{id}"))
                    .arg(bytes)
                    .arg("EX")
                    .arg(300)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
        .await;
        per_op("impcache `Cache::get` (memory)", |id| {
            let memory = &memory;
            async move {
                let v: Small = memory.get(&format!("small:{id}")).await.unwrap().unwrap();
                std::hint::black_box(v);
            }
        })
        .await;
        per_op("moka `get` + serde_json", |id| {
            let moka = &moka;
            async move {
                let bytes = moka.get(&format!("cache:1:small:{id}")).unwrap();
                std::hint::black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
            }
        })
        .await;
        let encoded: Vec<Vec<u8>> = values
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap())
            .collect();
        per_op("serde_json decode alone", |id| {
            let bytes = &encoded[id as usize];
            async move {
                std::hint::black_box(serde_json::from_slice::<Small>(bytes).unwrap());
            }
        })
        .await;
    });
}
