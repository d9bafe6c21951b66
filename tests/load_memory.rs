//! Memory of loads over time, alone in its binary (the process's resident memory is measured):
//! loads made without the single flight (here a loader calling its own key, whose inner call
//! runs alone) free their tasks. Each such load kept its whole task for ever (its abort handle
//! was `mem::forget`-ten): 128 B per call in a debug build, 12 KB in a release one, found by a
//! probe with a counting allocator, 2026-12-07.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use impcache::{Cache, MemoryCacheRepository};

/// Calls per task (4 tasks, each over keys of its own).
const WARM_UP: usize = 2_000;
const CALLS: usize = 15_000;
const TASKS: usize = 4;

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

async fn self_calling(cache: &Cache, task: usize, i: usize) {
    let key = format!("t{task}:k{}", i % 16);
    let inner = cache.clone();
    let inner_key = key.clone();
    let value: String = cache
        .get_or_set(&key, 60, move || async move {
            let own: String = inner
                .get_or_set(&inner_key, 60, || async { "inner".to_owned() })
                .await
                .unwrap();
            format!("outer over {own}")
        })
        .await
        .unwrap();
    assert_eq!(value, "outer over inner");
    cache.delete(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_made_without_the_single_flight_free_their_tasks() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let run = |calls: std::ops::Range<usize>| {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    for i in calls {
                        self_calling(&cache, task, i).await;
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    run(0..WARM_UP).await;
    let warm = rss_kib();
    run(WARM_UP..WARM_UP + CALLS).await;
    let grown = rss_kib().saturating_sub(warm);
    let calls = TASKS * CALLS;
    eprintln!("resident memory after the warm-up: {warm} KiB, {calls} calls later: +{grown} KiB");
    // With each task kept: +17,740 KiB here; with none: +64 KiB (2026-12-07, a debug build).
    assert!(grown < 3 * 1024, "grew by {grown} KiB over {calls} calls");
}
