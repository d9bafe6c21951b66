//! `#[cached(crate = ..)]` across crates: a facade crate's `macro_rules!` (here the support
//! crate's [`impcache_tests::cached_through_a_facade!`]) names impcache through its own
//! re-export, `crate = $crate::facade_impcache`, and the user's expire and freshness values pass
//! through it. The user's lints do not reach the expansion's paths: `unused_qualifications`
//! fired on a given crate path, and `cargo fix` then broke the attribute (found by a regression
//! hunt, 2026-12-07).
#![deny(unused_qualifications)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::LazyLock;
use std::time::Duration;

use impcache::{Cache, MemoryCacheRepository};

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

static RUNS: AtomicUsize = AtomicUsize::new(0);

impcache_tests::cached_through_a_facade!(
    CACHE.clone(),
    Duration::from_secs(60),
    30,
    async fn double(id: u64) -> u64 {
        RUNS.fetch_add(1, SeqCst);
        id * 2
    }
);

#[tokio::test]
async fn a_facade_macro_memoizes_through_its_re_export() {
    assert_eq!(double(21).await, 42);
    assert_eq!(double(21).await, 42);
    assert_eq!(RUNS.load(SeqCst), 1, "the second call is a hit");
    double_invalidate_all().await.unwrap();
    assert_eq!(double(21).await, 42);
    assert_eq!(
        RUNS.load(SeqCst),
        2,
        "`double_invalidate_all` reached the entry"
    );
}
