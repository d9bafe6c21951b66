//! `#[cached]` does not make its caller wait for the store of a miss: the caller is answered when
//! the body returns, the write finishes in the background, and the key's single-flight stays open
//! until it has (issue 12 item 6). A repository whose writes take seconds makes the store
//! boundary visible; `cached_redis.rs` checks the same against a frozen Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use impcache::{cached, BoxFuture, Cache, CacheRepository, Expiry, MemoryCacheRepository, Result};

mod block_on;
use block_on::block_on;

/// An in-memory repository whose writes take [`WRITE_DELAY`]; reads are immediate.
#[derive(Debug)]
struct SlowWrites {
    inner: MemoryCacheRepository,
}

const WRITE_DELAY: Duration = Duration::from_secs(2);

impl CacheRepository for SlowWrites {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            tokio::time::sleep(WRITE_DELAY).await;
            self.inner.set(key, value, expiry).await
        })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            tokio::time::sleep(WRITE_DELAY).await;
            self.inner.set_nx(key, value, expiry).await
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.set_many(entries, expiry)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        self.inner.get(key)
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        self.inner.get_many(keys)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete(key)
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete_many(keys)
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete_pattern(pattern)
    }
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "slow-store:{id}")]
async fn answer(cache: &Cache, id: u64) -> u64 {
    CALLS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    id * 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_answers_before_its_store_and_holds_the_flight_until_stored() {
    let cache = Cache::new(SlowWrites {
        inner: MemoryCacheRepository::new(),
    });

    // The miss costs the body (100 ms), not the body and the 2 s write.
    let started = Instant::now();
    assert_eq!(answer(&cache, 21).await, 42);
    let first = started.elapsed();
    assert!(
        first < WRITE_DELAY / 2,
        "the caller waited for the store: {first:?}"
    );
    assert_eq!(CALLS.load(SeqCst), 1);
    assert_eq!(
        cache.get_raw("slow-store:21").await.unwrap(),
        None,
        "the write is still in progress"
    );

    // Calls arriving while the write is in progress get the leader's value from memory.
    let started = Instant::now();
    let again: Vec<u64> = futures_join(
        (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { answer(&cache, 21).await })
            })
            .collect(),
    )
    .await;
    assert_eq!(again, [42; 8]);
    assert_eq!(
        CALLS.load(SeqCst),
        1,
        "the body ran again before the store ended"
    );
    assert!(
        started.elapsed() < WRITE_DELAY / 2,
        "{:?}",
        started.elapsed()
    );

    // The write completes in the background; then it is an ordinary hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.get_raw("slow-store:21").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the value was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        &cache.get_raw("slow-store:21").await.unwrap().unwrap()[..],
        b"42"
    );
    assert_eq!(answer(&cache, 21).await, 42);
    assert_eq!(CALLS.load(SeqCst), 1);
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

static PLAIN_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "no-runtime:{id}")]
async fn no_runtime(cache: &Cache, id: u64) -> u64 {
    PLAIN_CALLS.fetch_add(1, SeqCst);
    id + 1
}

#[test]
fn outside_a_tokio_runtime_the_store_is_awaited_in_place() {
    let cache = Cache::new(MemoryCacheRepository::new());
    assert_eq!(block_on(no_runtime(&cache, 1)), 2);
    assert_eq!(
        block_on(cache.get_raw("no-runtime:1")).unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(block_on(no_runtime(&cache, 1)), 2);
    assert_eq!(PLAIN_CALLS.load(SeqCst), 1);
}
