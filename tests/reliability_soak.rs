//! Under load: mixed operations from 256 concurrent tasks while `redis-server` is killed and
//! restarted in the middle. Every operation either succeeds or returns a typed error within its
//! deadline (plus scheduling slack), and memory stays flat.
//!
//! Default: 100,000 operations. `IMPCACHE_SOAK=1`: 1,000,000 (`IMPCACHE_SOAK_OPS=N` for any N).
//!
//! ```text
//! IMPCACHE_SOAK=1 cargo test --release -p impcache-tests --test reliability_soak -- --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use impcache::{Cache, Error, RedisCacheRepository};
use impcache_tests::RedisServer;

const TASKS: usize = 256;
const KEYS: u64 = 2000;
const DEADLINE: Duration = Duration::from_millis(250);
/// Scheduling slack: 256 tasks share 2 cores with the server.
const SLACK: Duration = Duration::from_millis(1000);

fn operations() -> u64 {
    if let Some(n) = std::env::var("IMPCACHE_SOAK_OPS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return n;
    }
    match std::env::var("IMPCACHE_SOAK").as_deref() {
        Ok("1") => 1_000_000,
        _ => 100_000,
    }
}

/// `VmRSS` and `VmHWM` (peak) of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn kind(error: &Error) -> &'static str {
    match error {
        Error::Timeout { .. } => "Timeout",
        Error::Unavailable { .. } => "Unavailable",
        Error::CircuitOpen { .. } => "CircuitOpen",
        Error::Server { .. } => "Server",
        Error::Decode { .. } => "Decode",
        _ => "other",
    }
}

#[derive(Default)]
struct Stats {
    ok: u64,
    errors: BTreeMap<&'static str, u64>,
    worst: Duration,
    worst_error: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_a_restart_in_the_middle() {
    let total = operations();
    let server = Arc::new(Mutex::new(RedisServer::start()));
    let url = server.lock().unwrap().url();
    let repository = RedisCacheRepository::builder(&url)
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let cache = Cache::builder(repository.clone())
        .key_prefix("soak")
        .build();
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (rss_start, _) = memory_kib();
    let rss_after_warm_up = Arc::new(AtomicU64::new(0));

    // Kill redis-server once half the operations are issued, restart it 300 ms later.
    let chaos = {
        let (server, issued) = (server.clone(), issued.clone());
        tokio::spawn(async move {
            while issued.load(Ordering::Relaxed) < total / 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let killed_at = start.elapsed();
            tokio::task::spawn_blocking(move || {
                let mut server = server.lock().unwrap();
                server.kill();
                std::thread::sleep(Duration::from_millis(300));
                server.restart();
            })
            .await
            .unwrap();
            (killed_at, start.elapsed())
        })
    };

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, issued, rss) = (cache.clone(), issued.clone(), rss_after_warm_up.clone());
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return stats;
                    }
                    if n == total / 4 {
                        rss.store(memory_kib().0, Ordering::Relaxed);
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = format!("k{}", rng % KEYS);
                    let began = Instant::now();
                    let result: Result<(), Error> = match rng % 100 {
                        0..=49 => cache.get::<u64>(&key).await.map(drop),
                        50..=79 => cache.set(&key, &n, 60).await,
                        80..=89 => {
                            let keys = [key.clone(), format!("k{}", (rng >> 8) % KEYS)];
                            cache.get_many::<u64>(&keys).await.map(drop)
                        }
                        90..=94 => cache.delete(&key).await.map(drop),
                        _ => cache.set_many([(key.as_str(), n), ("shared", n)], 60).await,
                    };
                    let elapsed = began.elapsed();
                    if elapsed > stats.worst {
                        stats.worst = elapsed;
                    }
                    match result {
                        Ok(()) => stats.ok += 1,
                        Err(e) => {
                            assert!(e.is_backend_failure(), "untyped failure: {e:?}");
                            *stats.errors.entry(kind(&e)).or_default() += 1;
                            if elapsed > DEADLINE {
                                stats.worst_error = Some(e.to_string());
                            }
                            // What an application does on a cache failure: ask the origin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();

    let mut total_stats = Stats::default();
    for task in tasks {
        let stats = task.await.expect("no task panicked");
        total_stats.ok += stats.ok;
        for (kind, n) in stats.errors {
            *total_stats.errors.entry(kind).or_default() += n;
        }
        if stats.worst > total_stats.worst {
            total_stats.worst = stats.worst;
            total_stats.worst_error = stats.worst_error;
        }
    }
    let elapsed = start.elapsed();
    let (killed_at, restarted_at) = chaos.await.unwrap();
    let (rss_end, hwm) = memory_kib();
    let rss_warm = rss_after_warm_up.load(Ordering::Relaxed);
    let failed: u64 = total_stats.errors.values().sum();
    eprintln!(
        "soak: {total} operations from {TASKS} tasks in {elapsed:.1?} ({:.0} ops/s); \
         redis killed at {killed_at:.1?}, back at {restarted_at:.1?}\n\
         soak: ok {}, errors {failed} by kind {:?}\n\
         soak: worst latency {:?} (deadline {DEADLINE:?}){}\n\
         soak: RSS start {rss_start} KiB, after 25% {rss_warm} KiB, end {rss_end} KiB, peak (VmHWM) {hwm} KiB",
        total as f64 / elapsed.as_secs_f64(),
        total_stats.ok,
        total_stats.errors,
        total_stats.worst,
        total_stats
            .worst_error
            .map(|e| format!(", slowest error: {e}"))
            .unwrap_or_default(),
    );
    assert_eq!(
        total_stats.ok + failed,
        total,
        "every operation accounted for"
    );
    assert!(
        total_stats.worst <= DEADLINE + SLACK,
        "an operation took {:?}",
        total_stats.worst
    );
    assert!(failed > 0, "the restart was not noticed");
    assert!(
        total_stats.ok > total / 2,
        "most operations succeed: only {}",
        total_stats.ok
    );
    // Memory is flat: no queue or cache grew with the number of operations.
    assert!(
        rss_end < rss_warm + 64 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    // And the cache works after the storm (once a probe has closed the breaker).
    let recovered = Instant::now();
    while cache.set("after", &1, 60).await.is_err() {
        assert!(recovered.elapsed() < Duration::from_secs(3), "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.get::<u64>("after").await.unwrap(), Some(1));
    drop(server);
}
