//! Criterion micro-benchmarks of the in-process parts of the hit path: key building, JSON encode
//! and decode, and the memory repository against moka used directly.
//!
//! `cargo bench -p impcache-benches --bench micro`
//!
//! Every memory case runs inside the same `block_on` of a current-thread runtime, moka included,
//! so that the executor's own cost is on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmark code

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use impcache::repository::memory::DEFAULT_CAPACITY_BYTES;
use impcache::{Cache, CacheRepository, Expiry, MemoryCacheRepository};
use impcache_benches::{Large, Small};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn keys(c: &mut Criterion) {
    let cache = Cache::builder(MemoryCacheRepository::new())
        .key_prefix("cache")
        .version(1)
        .build();
    let mut group = c.benchmark_group("key");
    group.bench_function("impcache make_key", |b| {
        b.iter(|| cache.make_key(black_box("user:123456")))
    });
    group.bench_function("format!", |b| {
        b.iter(|| format!("cache:{}:{}", black_box(1), black_box("user:123456")))
    });
    group.finish();
}

fn json(c: &mut Criterion) {
    let (small, large) = (Small::new(123_456), Large::new(123_456));
    let (small_bytes, large_bytes) = (
        serde_json::to_vec(&small).unwrap(),
        serde_json::to_vec(&large).unwrap(),
    );
    let mut group = c.benchmark_group("json");
    group.bench_function(BenchmarkId::new("encode", "100B"), |b| {
        b.iter(|| serde_json::to_vec(black_box(&small)).unwrap())
    });
    group.bench_function(BenchmarkId::new("encode", "10KiB"), |b| {
        b.iter(|| serde_json::to_vec(black_box(&large)).unwrap())
    });
    group.bench_function(BenchmarkId::new("decode", "100B"), |b| {
        b.iter(|| serde_json::from_slice::<Small>(black_box(&small_bytes)).unwrap())
    });
    group.bench_function(BenchmarkId::new("decode", "10KiB"), |b| {
        b.iter(|| serde_json::from_slice::<Large>(black_box(&large_bytes)).unwrap())
    });
    group.finish();
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let repository = MemoryCacheRepository::new();
    let cache = Cache::new(repository.clone());
    let moka_bytes: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
        .max_capacity(DEFAULT_CAPACITY_BYTES)
        .weigher(|k: &String, v: &Bytes| u32::try_from(k.len() + v.len() + 64).unwrap_or(u32::MAX))
        .time_to_live(Duration::from_secs(300))
        .build();
    let values: Vec<Small> = (0..1_000).map(Small::new).collect();
    rt.block_on(async {
        for (id, v) in values.iter().enumerate() {
            cache.set(&format!("small:{id}"), v, 300).await.unwrap();
            moka_bytes.insert(
                format!("cache:1:small:{id}"),
                Bytes::from(serde_json::to_vec(v).unwrap()),
            );
        }
    });
    let mut group = c.benchmark_group("memory get 100B");
    let mut i = 0usize;
    group.bench_function("impcache Cache::get", |b| {
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(cache.get::<Small>(&format!("small:{i}")))
                .unwrap()
                .unwrap()
        })
    });
    group.bench_function("moka get + serde_json", |b| {
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(async {
                let bytes = moka_bytes.get(&format!("cache:1:small:{i}")).unwrap();
                serde_json::from_slice::<Small>(&bytes).unwrap()
            })
        })
    });
    group.bench_function("impcache repository get (bytes)", |b| {
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(repository.get(&format!("cache:1:small:{i}")))
                .unwrap()
                .unwrap()
        })
    });
    group.bench_function("moka get (bytes)", |b| {
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(async { moka_bytes.get(&format!("cache:1:small:{i}")).unwrap() })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("memory set 100B");
    group.bench_function("impcache Cache::set", |b| {
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(cache.set(&format!("small:{i}"), &values[i], 300))
                .unwrap()
        })
    });
    group.bench_function("moka insert + serde_json", |b| {
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(async {
                let bytes = Bytes::from(serde_json::to_vec(&values[i]).unwrap());
                moka_bytes.insert(format!("cache:1:small:{i}"), bytes)
            })
        })
    });
    group.bench_function("impcache repository set (bytes)", |b| {
        let bytes = Bytes::from(serde_json::to_vec(&values[0]).unwrap());
        b.iter(|| {
            i = (i + 7) % 1_000;
            rt.block_on(repository.set(
                &format!("cache:1:small:{i}"),
                bytes.clone(),
                Expiry::Seconds(300),
            ))
            .unwrap()
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
}

criterion_group! {
    name = micro;
    config = config();
    targets = keys, json, memory
}
criterion_main!(micro);
