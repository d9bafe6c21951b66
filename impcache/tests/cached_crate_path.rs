//! `#[cached(crate = "...")]`: the expansion reaches the runtime through the path given, as
//! tokio's `#[tokio::main(crate = "...")]` does (a string, or the path itself), for a crate that renamed the dependency or uses
//! impcache through a re-export. That a path which does not resolve fails to compile (so the
//! option is used) is `impcache-macros/tests/ui/fail/crate_path.rs`.
//!
//! The user's lints do not reach the expansion's paths: with `Cache` imported, a given
//! `facade::cache` made `unused_qualifications` fire on `facade::cache::Cache` (found by a
//! regression hunt, 2026-12-07).
#![deny(unused_qualifications)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// A facade crate's re-export, as an application's `common` crate would give it.
mod facade {
    pub(crate) mod cache {
        pub(crate) use impcache::*;
    }
}

use facade::cache::{Cache, MemoryCacheRepository};

fn fresh() -> Cache {
    Cache::builder(MemoryCacheRepository::new())
        .key_prefix("t")
        .build()
}

static PLAIN: AtomicUsize = AtomicUsize::new(0);

#[facade::cache::cached(crate = facade::cache, cache = cache, expire = 60, skip(cache))]
async fn plain(cache: &Cache, id: u64) -> u64 {
    PLAIN.fetch_add(1, SeqCst);
    id * 2
}

static FRESH: AtomicUsize = AtomicUsize::new(0);

/// Every runtime path the expansion names: a template key, a version, freshness options, a lock,
/// tags (and so `_invalidate_all`).
#[facade::cache::cached(
    crate = "crate::facade::cache",
    cache = CACHE.clone(),
    expire = 60,
    version = 3,
    key = "user:{id}",
    stale_while_revalidate = 30,
    hard_timeout = Duration::from_secs(5),
    lock = 10,
    tags = ["user:{id}"],
)]
async fn tagged(id: u64) -> Result<u64, std::io::Error> {
    FRESH.fetch_add(1, SeqCst);
    Ok(id + 1)
}

static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(fresh);

#[tokio::test]
async fn a_function_whose_crate_path_is_a_re_export_is_memoized() {
    let cache = fresh();
    assert_eq!(plain(&cache, 2).await, 4);
    assert_eq!(plain(&cache, 2).await, 4);
    assert_eq!(PLAIN.load(SeqCst), 1, "the second call is a hit");
    assert!(plain_invalidate(&cache, 2).await.unwrap());
    assert_eq!(plain(&cache, 2).await, 4);
    assert_eq!(PLAIN.load(SeqCst), 2, "the invalidation reached the entry");
}

#[tokio::test]
async fn every_option_works_through_the_crate_path() {
    assert_eq!(tagged(1).await.unwrap(), 2);
    assert_eq!(tagged(1).await.unwrap(), 2);
    assert_eq!(FRESH.load(SeqCst), 1, "the second call is a hit");
    CACHE
        .with_version(3)
        .invalidate_tag("user:1")
        .await
        .unwrap();
    assert_eq!(tagged(1).await.unwrap(), 2);
    assert_eq!(
        FRESH.load(SeqCst),
        2,
        "the tag's invalidation reached the entry"
    );
    tagged_invalidate_all().await.unwrap();
    assert_eq!(tagged(1).await.unwrap(), 2);
    assert_eq!(FRESH.load(SeqCst), 3, "`tagged_invalidate_all` reached it");
}
