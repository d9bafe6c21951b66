//! The process-wide default cache: before `set_default_cache`, `#[cached]` functions run uncached
//! and warn once; afterwards they use it. (Its own test binary: the default is per process.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use impcache::{cached, Cache, MemoryCacheRepository};

static CALLS: AtomicUsize = AtomicUsize::new(0);
static WARNINGS: AtomicUsize = AtomicUsize::new(0);

#[cached(expire = 60)]
async fn double(x: u32) -> u32 {
    CALLS.fetch_add(1, SeqCst);
    x * 2
}

/// Counts `WARN` events.
struct CountWarnings;

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            WARNINGS.fetch_add(1, SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn uncached_until_a_default_is_installed() {
    tracing::subscriber::set_global_default(CountWarnings).unwrap();
    assert!(impcache::default_cache().is_none());
    assert_eq!(double(2).await, 4);
    assert_eq!(double(2).await, 4);
    assert_eq!(CALLS.load(SeqCst), 2);
    assert_eq!(WARNINGS.load(SeqCst), 1, "warned once");
    assert!(!double_invalidate(2).await.unwrap());

    let cache = Cache::new(MemoryCacheRepository::new());
    impcache::set_default_cache(cache.clone()).unwrap();
    assert_eq!(double(2).await, 4);
    assert_eq!(double(2).await, 4);
    assert_eq!(CALLS.load(SeqCst), 3);
    assert!(cache
        .get_raw("cached_default::double:2")
        .await
        .unwrap()
        .is_some());

    let again = impcache::set_default_cache(Cache::new(MemoryCacheRepository::new()));
    let err = again.unwrap_err();
    assert!(err.to_string().contains("already installed"), "{err}");
    // `fn main() -> Result<(), SetDefaultCacheError>` prints the Debug form: it says why too.
    assert!(format!("{err:?}").contains("already installed"), "{err:?}");
    let _rejected: Cache = err.into_cache();
    assert_eq!(WARNINGS.load(SeqCst), 1);
}
