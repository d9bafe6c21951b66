//! Tags (issue 16): `Cache::set_tagged`, `get_or_set(..).tags(..)`, `invalidate_tag`,
//! `soft_invalidate_tag`, each against the memory repository and a real Redis (started by
//! `tests/support`), and with the feature `cluster` the shared Redis Cluster (tag keys on other
//! slots than the entries). `per_store!` instantiates each `async fn(Backend)` once per repository.
//!
//! No timing assertions. Tag times have microsecond resolution, and within one process each is
//! later than the one before (`a_write_right_after_an_invalidation_is_newer`); between two
//! `Cache` instances, which stand for two processes but share one clock, a test that writes
//! right after an invalidation and wants the write to count as newer sleeps a millisecond first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use impcache::{
    BoxFuture, Cache, CacheRepository, Expiry, Freshness, NearCache, RedisCacheRepository, Result,
    SetNxOrGet, TagInvalidation,
};
use impcache_tests::loader::counted;
use impcache_tests::per_store;
use impcache_tests::store::Store;
use impcache_tests::RedisServer;
use tokio::sync::Semaphore;

const HANG: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);

struct Backend {
    cache: Cache,
    /// Another `Cache` over the same data through its own repository (its own connection):
    /// another process, as far as the cache can tell.
    other: Cache,
    _store: Store,
}

impl Backend {
    fn on(store: Store) -> Self {
        Backend {
            cache: store.cache(),
            other: store.cache(),
            _store: store,
        }
    }
}

per_store!(
    #[tokio::test]
    make: Backend::on,
    prefix: "tags",
    deadline: HANG;
    an_invalidated_tag_hides_its_entries_and_only_those,
    untagged_entries_keep_the_python_bytes_and_tagged_ones_are_json,
    another_instance_sees_the_invalidation,
    get_or_set_with_tags_loads_once_and_again_after_an_invalidation,
    an_invalidation_during_the_computation_is_not_missed,
    a_caller_after_the_invalidation_does_not_share_the_older_computation,
    a_caller_after_the_invalidation_does_not_share_the_older_computations_failure,
    a_caller_before_the_invalidation_shares_the_computations_failure,
    a_soft_invalidation_serves_stale_while_one_reload_runs,
    a_soft_invalidation_without_a_stale_window_is_a_miss,
    a_plain_get_or_set_checks_the_tags_of_what_it_finds,
    a_write_right_after_an_invalidation_is_newer,
    tags_chosen_from_the_value_hide_it_when_invalidated,
    an_invalidation_of_a_chosen_tag_during_the_computation_is_not_missed,
    a_failed_loader_chooses_no_tags_and_stores_nothing,
    an_earlier_invalidation_landing_later_undoes_nothing,
    every_repository_keeps_the_later_invalidation,
    a_version_spelled_like_tag_state_is_refused,
    a_prefix_spelled_like_tag_state_is_refused,
    a_value_spelled_like_a_tagged_entry_is_refused,
    a_plain_entry_read_with_tags_is_covered_by_their_invalidations,
    set_nx_claims_an_entry_its_tags_hide,
);

/// The races of invalidations, on a runtime with worker threads: the memory repository's
/// writes, synchronous, then really run at the same time.
mod races {
    use super::*;

    per_store!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        make: Backend::on,
        prefix: "tags_races",
        deadline: HANG;
        concurrent_hard_and_soft_invalidations_never_lose_the_hard_one,
        concurrent_set_nx_over_a_hidden_entry_stores_once,
    );
}

/// Sentinel (not in `per_store!`: a group of its own): the soft invalidation's script goes to
/// the primary the Sentinel names, and the race keeps the hard invalidation there too.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_hard_and_soft_invalidations_never_lose_the_hard_one() {
    let group = impcache_tests::cluster::SentinelGroup::start();
    let b = Backend::on(Store::sentinel(group.sentinel_url(), HANG));
    concurrent_hard_and_soft_invalidations_never_lose_the_hard_one(b).await;
}

/// With a clock skew allowance, an entry created within it after an invalidation counts as
/// invalidated, for the callers that waited for its load too; they then take the next turn
/// together, one of them loading for the others: two loader runs for 20 callers of a key, not
/// one each (found by a probe: 50 runs for 50 callers).
async fn within_the_clock_skew_callers_share_the_next_load(cache: Cache, other: Cache) {
    other.invalidate_tag("t").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let call = |cache: &Cache| {
        let (cache, runs, gate) = (cache.clone(), Arc::clone(&runs), Arc::clone(&gate));
        // A loader that takes some time, once let through.
        let loader = move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            drop(gate.acquire().await.unwrap());
            tokio::time::sleep(50 * MS).await;
            "v".to_owned()
        };
        tokio::spawn(async move {
            let value: String = cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap();
            value
        })
    };
    let leader = call(&cache);
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(MS).await;
    }
    // The load has begun: these callers wait for it.
    let waiters: Vec<_> = (0..19).map(|_| call(&cache)).collect();
    tokio::time::sleep(20 * MS).await;
    gate.add_permits(1000);
    assert_eq!(leader.await.unwrap(), "v");
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), "v");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Its entry counts as invalidated for a later read, within the allowance.
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_within_the_clock_skew_callers_share_the_next_load() {
    let store = impcache::MemoryCacheRepository::new();
    let process = || {
        let repository: Arc<dyn CacheRepository> = Arc::new(store.clone());
        Cache::builder_shared(repository)
            .tag_clock_skew(Duration::from_secs(30))
            .build()
    };
    within_the_clock_skew_callers_share_the_next_load(process(), process()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_within_the_clock_skew_callers_share_the_next_load() {
    let server = RedisServer::start();
    let process = || {
        let repository = RedisCacheRepository::builder(server.url())
            .deadline(HANG)
            .build()
            .unwrap();
        Cache::builder(repository)
            .tag_clock_skew(Duration::from_secs(30))
            .build()
    };
    within_the_clock_skew_callers_share_the_next_load(process(), process()).await;
}

/// The raw bytes stored at `key` (through the repository: no tag check).
async fn raw(cache: &Cache, key: &str) -> Option<bytes::Bytes> {
    cache.repository().get(&cache.make_key(key)).await.unwrap()
}

/// Waits until the raw entry at `key` contains `needle` (a background store landed).
async fn stored(cache: &Cache, key: &str, needle: &str) {
    for _ in 0..5000 {
        if let Some(bytes) = raw(cache, key).await {
            if String::from_utf8_lossy(&bytes).contains(needle) {
                return;
            }
        }
        tokio::time::sleep(MS).await;
    }
    panic!("{needle} was never stored at {key}");
}

/// In one process, a write made right after an invalidation (no wait: often within the same
/// microsecond on the memory repository) is newer than it, and one made right before is not.
async fn a_write_right_after_an_invalidation_is_newer(b: Backend) {
    let cache = &b.cache;
    for i in 0..300 {
        cache.set_tagged("k", &i, 60, ["t"]).await.unwrap();
        cache.invalidate_tag("t").await.unwrap();
        assert_eq!(cache.get::<i32>("k").await.unwrap(), None, "round {i}");
        cache.set_tagged("k", &i, 60, ["t"]).await.unwrap();
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(i), "round {i}");
        let loaded: i32 = cache
            .get_or_set("l", 60, move || async move { i })
            .tags(["t"])
            .await
            .unwrap();
        cache.invalidate_tag("t").await.unwrap();
        let reloaded: i32 = cache
            .get_or_set("l", 60, move || async move { i + 1000 })
            .tags(["t"])
            .await
            .unwrap();
        assert_eq!((loaded, reloaded), (i, i + 1000), "round {i}");
    }
}

async fn an_invalidated_tag_hides_its_entries_and_only_those(b: Backend) {
    let cache = &b.cache;
    cache.set_tagged("a", &1, 60, ["t1"]).await.unwrap();
    cache.set_tagged("b", &2, 60, ["t1", "t2"]).await.unwrap();
    cache.set("c", &3, 60).await.unwrap();
    cache.set_tagged("d", &4, 60, ["t3"]).await.unwrap();
    assert_eq!(cache.get::<i32>("b").await.unwrap(), Some(2));

    cache.invalidate_tag("t2").await.unwrap();
    assert_eq!(cache.get::<i32>("a").await.unwrap(), Some(1));
    assert_eq!(cache.get::<i32>("b").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("c").await.unwrap(), Some(3));
    assert_eq!(
        cache.get_many::<i32>(["a", "b", "c", "d"]).await.unwrap(),
        [Some(1), None, Some(3), Some(4)]
    );

    cache.invalidate_tags(["t1", "t3"]).await.unwrap();
    assert_eq!(
        cache.get_many::<i32>(["a", "b", "c", "d"]).await.unwrap(),
        [None, None, Some(3), None]
    );
    assert_eq!(cache.get_raw("a").await.unwrap(), None);

    // A write after the invalidation is visible again.
    cache.set_tagged("a", &5, 60, ["t1"]).await.unwrap();
    assert_eq!(cache.get::<i32>("a").await.unwrap(), Some(5));
    // Tags have no version: an invalidation reaches every version's entries (a
    // `#[cached(version = 2, tags = ..)]` function's, the other side of a rolling deploy).
    let v2 = cache.with_version(2);
    v2.set_tagged("a", &6, 60, ["t1"]).await.unwrap();
    assert_eq!(v2.get::<i32>("a").await.unwrap(), Some(6));
    cache.invalidate_tag("t1").await.unwrap();
    assert_eq!(v2.get::<i32>("a").await.unwrap(), None);
}

async fn untagged_entries_keep_the_python_bytes_and_tagged_ones_are_json(b: Backend) {
    let cache = &b.cache;
    cache
        .set("plain", &serde_json::json!({"a": 1}), 60)
        .await
        .unwrap();
    assert_eq!(raw(cache, "plain").await.unwrap(), &br#"{"a":1}"#[..]);

    cache
        .set_tagged("tagged", &serde_json::json!({"a": 1}), 60, ["user:1"])
        .await
        .unwrap();
    let stored = raw(cache, "tagged").await.unwrap();
    // What the Python library's `get` returns for it: this dict.
    let seen: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(seen["value"], serde_json::json!({"a": 1}));
    assert_eq!(
        seen["__impcache_tagged__"]["tags"],
        serde_json::json!(["user:1"])
    );
    assert!(seen["__impcache_tagged__"]["created"].is_u64());
}

async fn another_instance_sees_the_invalidation(b: Backend) {
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    let value: String = b
        .cache
        .get_or_set("user:1:profile", 60, counted(&runs, &open, "v1"))
        .tags(["user:1"])
        .await
        .unwrap();
    assert_eq!(value, "v1");
    stored(&b.cache, "user:1:profile", "v1").await;
    // The other "process" reads the entry, then invalidates the tag.
    assert_eq!(
        b.other.get::<String>("user:1:profile").await.unwrap(),
        Some("v1".to_owned())
    );
    b.other.invalidate_tag("user:1").await.unwrap();
    tokio::time::sleep(MS).await;
    let value: String = b
        .cache
        .get_or_set("user:1:profile", 60, counted(&runs, &open, "v2"))
        .tags(["user:1"])
        .await
        .unwrap();
    assert_eq!(value, "v2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn get_or_set_with_tags_loads_once_and_again_after_an_invalidation(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    for _ in 0..3 {
        let value: String = cache
            .get_or_set("k", 60, counted(&runs, &open, "v1"))
            .tags(["t", "u"])
            .await
            .unwrap();
        assert_eq!(value, "v1");
        stored(cache, "k", "v1").await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Invalidating a tag the entry does not carry changes nothing.
    cache.invalidate_tag("other").await.unwrap();
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &open, "unused"))
        .tags(["t", "u"])
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("v1", 1));

    cache.invalidate_tag("u").await.unwrap();
    tokio::time::sleep(MS).await;
    let value: String = cache
        .try_get_or_set("k", 60, {
            let run = counted(&runs, &open, "v2");
            move || async move { Ok::<_, impcache::Error>(run().await) }
        })
        .tags(["t", "u"])
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("v2", 2));
}

/// FusionCache #535/#628: the loader started before `invalidate_tag`; the value it computed
/// answers the call that ran it, but is never served from the cache after the invalidation.
async fn an_invalidation_during_the_computation_is_not_missed(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let leader = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "old"));
        async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(MS).await;
    }
    // The loader is running (held at its gate): the other process invalidates now.
    b.other.invalidate_tag("t").await.unwrap();
    gate.add_permits(1000);
    assert_eq!(leader.await.unwrap(), "old");
    // Its value was stored (after the invalidation), and is a miss all the same.
    stored(cache, "k", "old").await;
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    assert_eq!(b.other.get::<String>("k").await.unwrap(), None);
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &gate, "new"))
        .tags(["t"])
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("new", 2));
}

/// The same race seen by a second caller of this process: it asks after the invalidation, while
/// the loader that started before it still runs. It does not get that loader's value (which the
/// first caller, who asked before, does): it loads its own.
async fn a_caller_after_the_invalidation_does_not_share_the_older_computation(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let first = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "old"));
        async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(MS).await;
    }
    b.other.invalidate_tag("t").await.unwrap();
    let second = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "new"));
        async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
    });
    // The second caller has read a miss and waits on the first one's flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    gate.add_permits(1000);
    assert_eq!(first.await.unwrap(), "old");
    assert_eq!(second.await.unwrap(), "new");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The same race when the older computation fails: the caller that asked after the
/// invalidation does not get its failure either ("not run: another caller's load of the key
/// failed", without running its loader: found by a probe, behind a load that timed out), it
/// loads its own value; the first caller gets its own loader's error.
async fn a_caller_after_the_invalidation_does_not_share_the_older_computations_failure(b: Backend) {
    after_a_hard_invalidation_a_caller_loads_its_own(&b, "k", "t", false).await;
    // A soft invalidation after the caller asked changes nothing (it was taken for a hard one
    // after the join, and the failure was shared: found by a probe).
    after_a_hard_invalidation_a_caller_loads_its_own(&b, "k2", "t2", true).await;
}

async fn after_a_hard_invalidation_a_caller_loads_its_own(
    b: &Backend,
    key: &'static str,
    tag: &'static str,
    soft_after: bool,
) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let first = tokio::spawn({
        let (cache, runs, gate) = (cache.clone(), runs.clone(), gate.clone());
        let failing = move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            drop(gate.acquire().await.unwrap());
            Err(impcache::Error::Loader {
                key: key.into(),
                reason: "the origin is down".into(),
            })
        };
        async move {
            let got: Result<String> = cache.try_get_or_set(key, 60, failing).tags([tag]).await;
            got
        }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(MS).await;
    }
    b.other.invalidate_tag(tag).await.unwrap();
    let second = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "new"));
        async move { cache.get_or_set(key, 60, loader).tags([tag]).await.unwrap() }
    });
    // The second caller has read a miss and waits on the first one's flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    if soft_after {
        b.other.soft_invalidate_tag(tag).await.unwrap();
    }
    gate.add_permits(1000);
    let failed = first.await.unwrap().unwrap_err();
    assert!(
        failed.to_string().contains("the origin is down"),
        "{failed}"
    );
    assert_eq!(second.await.unwrap(), "new", "soft after: {soft_after}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The other side of the rule: a caller that asked before the invalidation (it waits on the
/// load when the tag is invalidated) gets the load's failure, as without tags, and does not run
/// its loader (it did, once failures were checked as values are, against the load's start: a
/// regression found by a probe, which also made 21 waiters with a stale value at hand run 21
/// loaders against a failing origin).
async fn a_caller_before_the_invalidation_shares_the_computations_failure(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let call = |value: &'static str| {
        let (cache, runs, gate) = (cache.clone(), runs.clone(), gate.clone());
        let loader = move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            drop(gate.acquire().await.unwrap());
            if value == "old" {
                Err(impcache::Error::Loader {
                    key: "k".into(),
                    reason: "the origin is down".into(),
                })
            } else {
                Ok(value.to_owned())
            }
        };
        async move {
            let got: Result<String> = cache.try_get_or_set("k", 60, loader).tags(["t"]).await;
            got
        }
    };
    let first = tokio::spawn(call("old"));
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(MS).await;
    }
    let second = tokio::spawn(call("new"));
    // The second caller has read a miss and waits on the first one's flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.other.invalidate_tag("t").await.unwrap();
    gate.add_permits(1000);
    assert!(first.await.unwrap().is_err());
    let shared = second.await.unwrap().unwrap_err().to_string();
    assert!(shared.contains("not run"), "{shared}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn a_soft_invalidation_serves_stale_while_one_reload_runs(b: Backend) {
    let cache = &b.cache;
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    let gate = Arc::new(Semaphore::new(0));
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &open, "v1"))
        .tags(["t"])
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(value, "v1");
    stored(cache, "k", "v1").await;

    b.other.soft_invalidate_tag("t").await.unwrap();
    tokio::time::sleep(MS).await;
    // Every reader is answered with the stale value while the one reload is held at its gate.
    for _ in 0..5 {
        let value: String = cache
            .get_or_set("k", 60, counted(&runs, &gate, "v2"))
            .tags(["t"])
            .freshness(policy)
            .await
            .unwrap();
        assert_eq!(value, "v1");
    }
    // A plain read has no stale window: a miss.
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    gate.add_permits(1000);
    stored(cache, "k", "v2").await;
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &gate, "unused"))
        .tags(["t"])
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("v2", 2));
    assert_eq!(
        cache.get::<String>("k").await.unwrap(),
        Some("v2".to_owned())
    );
}

async fn a_soft_invalidation_without_a_stale_window_is_a_miss(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    cache.set_tagged("k", &"v1", 60, ["t"]).await.unwrap();
    // The plural form, with a tag never used.
    cache.soft_invalidate_tags(["t", "unused"]).await.unwrap();
    tokio::time::sleep(MS).await;
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &open, "v2"))
        .tags(["t"])
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("v2", 1));
}

/// A `get_or_set` that names no tags still finds an envelope's tags and checks them (a second
/// round trip), and a read naming other tags checks the entry's own too.
async fn a_plain_get_or_set_checks_the_tags_of_what_it_finds(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    cache.set_tagged("k", &"v1", 60, ["t"]).await.unwrap();
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &open, "unused"))
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("v1", 0));
    let found = cache.get_raw_with_ttl("k").await.unwrap().unwrap();
    assert_eq!(&found.value[..], b"\"v1\"");

    cache.invalidate_tag("t").await.unwrap();
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &open, "v2"))
        .tags(["unrelated"])
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("v2", 1));
}

/// A plain entry (stored before the function had tags, by a plain `set`, by the Python library)
/// read by a call that names tags has no creation time: any invalidation of those tags covers
/// it, hard (a miss: the loader stores a tagged entry) or soft (stale, served within the window
/// while one reload runs); without an invalidation of them it is served as it is.
async fn a_plain_entry_read_with_tags_is_covered_by_their_invalidations(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    let read = |key: &'static str, tag: &'static str, value: &'static str| {
        cache
            .get_or_set(key, 60, counted(&runs, &open, value))
            .tags([tag])
            .stale_while_revalidate(MINUTE)
    };
    // Longer than the window: fresh as far as the TTL goes.
    cache.set("hard", &"old", 3600).await.unwrap();
    cache.set("soft", &"old", 3600).await.unwrap();
    assert_eq!(read("hard", "t", "unused").await.unwrap(), "old");
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    b.other.invalidate_tag("t").await.unwrap();
    assert_eq!(read("hard", "t", "new").await.unwrap(), "new");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    stored(cache, "hard", "\"new\"").await;
    assert_eq!(read("hard", "t", "unused").await.unwrap(), "new");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    b.other.soft_invalidate_tag("u").await.unwrap();
    assert_eq!(
        read("soft", "u", "newer").await.unwrap(),
        "old",
        "stale, reloading"
    );
    stored(cache, "soft", "\"newer\"").await;
    assert_eq!(read("soft", "u", "unused").await.unwrap(), "newer");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A tagged entry that reads as a miss (a tag invalidated, hard or soft, in this process or
/// another) counts as nothing stored for `set_nx` and `set_nx_raw`, as `get` sees it: they
/// store, and the value is read back at once in both processes. A tagged entry no invalidation
/// covers, and the value `set_nx` stored, are kept.
async fn set_nx_claims_an_entry_its_tags_hide(b: Backend) {
    let cache = &b.cache;
    cache.set_tagged("hard", &1, 60, ["t"]).await.unwrap();
    cache.set_tagged("soft", &1, 60, ["s"]).await.unwrap();
    cache.set_tagged("raw", &1, 60, ["t"]).await.unwrap();
    cache.set_tagged("kept", &1, 60, ["u"]).await.unwrap();
    tokio::time::sleep(MS).await;
    b.other.invalidate_tag("t").await.unwrap();
    b.other.soft_invalidate_tag("s").await.unwrap();
    for key in ["hard", "soft", "raw"] {
        assert_eq!(cache.get::<i32>(key).await.unwrap(), None, "{key}");
    }

    assert!(
        cache.set_nx("hard", &2, 60).await.unwrap(),
        "over a hard invalidation"
    );
    assert!(
        cache.set_nx("soft", &2, 60).await.unwrap(),
        "over a soft invalidation"
    );
    let bytes = Bytes::from_static(b"raw bytes");
    assert!(cache.set_nx_raw("raw", bytes.clone(), 60).await.unwrap());
    for key in ["hard", "soft"] {
        assert_eq!(cache.get::<i32>(key).await.unwrap(), Some(2), "{key}");
        assert_eq!(b.other.get::<i32>(key).await.unwrap(), Some(2), "{key}");
        // Now a plain value: the key is taken.
        assert!(!b.other.set_nx(key, &3, 60).await.unwrap(), "{key}");
        assert_eq!(cache.get::<i32>(key).await.unwrap(), Some(2), "{key}");
    }
    assert_eq!(b.other.get_raw("raw").await.unwrap(), Some(bytes));

    // A tagged entry that reads as a hit is something stored.
    assert!(!cache.set_nx("kept", &2, 60).await.unwrap());
    assert!(!cache
        .set_nx_raw("kept", Bytes::from_static(b"2"), 60)
        .await
        .unwrap());
    assert_eq!(b.other.get::<i32>("kept").await.unwrap(), Some(1));
}

/// Callers of `set_nx` racing over one hidden tagged entry, from two processes: exactly one
/// stores, and its value is the one read.
async fn concurrent_set_nx_over_a_hidden_entry_stores_once(b: Backend) {
    for round in 0..20 {
        let (key, tag) = (format!("k{round}"), format!("t{round}"));
        b.cache.set_tagged(&key, &-1, 60, [&tag]).await.unwrap();
        tokio::time::sleep(MS).await;
        b.other.invalidate_tag(&tag).await.unwrap();
        let callers: Vec<_> = (0..8)
            .map(|caller| {
                let cache = if caller % 2 == 0 { &b.cache } else { &b.other }.clone();
                let key = key.clone();
                tokio::spawn(async move { cache.set_nx(&key, &caller, 60).await })
            })
            .collect();
        let mut winners = Vec::new();
        for (caller, stored) in callers.into_iter().enumerate() {
            if stored.await.unwrap().unwrap() {
                winners.push(caller);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?} stored");
        let read = b.other.get::<usize>(&key).await.unwrap();
        assert_eq!(read, Some(winners[0]), "round {round}");
    }
}

/// A user repository over the memory repository whose reads and `set`s take a few
/// milliseconds (a remote store), with the trait's defaults for everything else:
/// `set_nx_or_get` (a `set_nx`, then a `get`) and `set_if_equal`.
#[derive(Debug, Default)]
struct SlowReads(impcache::MemoryCacheRepository);

impl CacheRepository for SlowReads {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.set(key, value, expiry).await
        })
    }
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        self.0.set_nx(key, value, expiry)
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        self.0.set_many(entries, expiry)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.get(key).await
        })
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.get_many(keys).await
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.0.delete(key)
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        self.0.delete_many(keys)
    }
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.0.delete_pattern(pattern)
    }
}

/// `set_nx` over a hidden tagged entry of a user repository that keeps the trait's default
/// `set_if_equal` answers `false` to each of 8 racing callers and stores nothing, as over any
/// taken key: the default refuses, a read then a write not being atomic (each caller stored
/// and was told it claimed the key, found by a probe). (A repository with an atomic
/// compare-and-set lets exactly one claim it: `concurrent_set_nx_over_a_hidden_entry_stores_once`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_own_compare_and_set_a_user_repository_claims_no_hidden_entry() {
    let cache = Cache::new(SlowReads::default());
    cache.set_tagged("k", &-1, 60, ["t"]).await.unwrap();
    tokio::time::sleep(MS).await;
    cache.invalidate_tag("t").await.unwrap();
    let callers: Vec<_> = (0..8)
        .map(|caller| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.set_nx("k", &caller, 60).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (caller, stored) in callers.into_iter().enumerate() {
        if stored.await.unwrap().unwrap() {
            winners.push(caller);
        }
    }
    assert_eq!(
        winners,
        Vec::<usize>::new(),
        "stored without a compare-and-set"
    );
    assert_eq!(cache.get::<usize>("k").await.unwrap(), None, "still hidden");
    // A free key is claimed as ever.
    assert!(cache.set_nx("free", &1, 60).await.unwrap());
    assert!(!cache.set_nx("free", &2, 60).await.unwrap());
}

/// A tag's hard and soft times share one key, and a soft invalidation rewrites it keeping the
/// hard time: hard and soft invalidations racing from two processes (two connections) never
/// lose the hard one, so the entry created before them all is a miss even with a stale window.
async fn concurrent_hard_and_soft_invalidations_never_lose_the_hard_one(b: Backend) {
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    for round in 0..40 {
        let (key, tag) = (format!("k{round}"), format!("t{round}"));
        b.cache.set_tagged(&key, &"old", 60, [&tag]).await.unwrap();
        tokio::time::sleep(MS).await;
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let cache = if writer % 2 == 0 { &b.cache } else { &b.other }.clone();
                let tag = tag.clone();
                tokio::spawn(async move {
                    if writer == round % 8 {
                        cache.invalidate_tag(&tag).await
                    } else {
                        cache.soft_invalidate_tag(&tag).await
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let value: String = b
            .cache
            .get_or_set(&key, 60, counted(&runs, &open, "new"))
            .tags([&tag])
            .freshness(policy)
            .await
            .unwrap();
        assert_eq!(
            value, "new",
            "round {round}: the hard invalidation was lost"
        );
    }
}

/// On Cluster, an entry and its tag keys live on different slots (and here nodes): the tagged
/// read and the invalidation work across them.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn cluster_tags_live_on_other_slots_than_their_entries() {
    let b = Backend::on(Store::cluster("tags", HANG));
    let cluster = impcache_tests::cluster::RedisCluster::shared();
    // The key prefix is the test's own, so which user's keys land on two primaries varies: take
    // the first that does.
    let user = (0..1000)
        .find(|user| {
            let entry = b.cache.make_key(&format!("user:{user}:profile"));
            let tag = format!("{}:__impcache_tag:user:{user}", b.cache.key_prefix());
            cluster.primary_for(&entry) != cluster.primary_for(&tag)
        })
        .expect("an entry and its tag key on two primaries");
    let (key, tag) = (format!("user:{user}:profile"), format!("user:{user}"));
    b.cache.set_tagged(&key, &"Ada", 60, [&tag]).await.unwrap();
    b.other.invalidate_tag(&tag).await.unwrap();
    assert_eq!(b.cache.get::<String>(&key).await.unwrap(), None);
    // The soft invalidation's script runs on the tag key's node, and keeps the hard time.
    b.other.soft_invalidate_tag(&tag).await.unwrap();
    let policy = Freshness::new().stale_while_revalidate(MINUTE);
    let value: String = b
        .cache
        .get_or_set(&key, 60, || async { "Grace".to_owned() })
        .tags([&tag])
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(value, "Grace");
}

/// Two `get_or_set` calls of `k` tagged `tag`, which the cache refuses: both run the loader
/// (nothing is stored) and answer its value.
async fn assert_runs_uncached(cache: &Cache, tag: &str) {
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let runs = Arc::clone(&runs);
        let value: i32 = cache
            .get_or_set("k", 60, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                1
            })
            .tags([tag])
            .await
            .unwrap();
        assert_eq!(value, 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "not stored");
}

/// A tag longer than the cache's key limit is refused as `set_tagged` and `invalidate_tag`
/// refuse it: `get_or_set` runs its loader uncached rather than store an entry whose tag could
/// never be invalidated.
#[tokio::test]
async fn a_tag_the_cache_refuses_is_never_stored() {
    let cache = Cache::builder(impcache::MemoryCacheRepository::new())
        .max_key_bytes(8)
        .build();
    assert_runs_uncached(&cache, "a-long-tag").await;
    assert!(matches!(
        cache.invalidate_tag("a-long-tag").await,
        Err(impcache::Error::InvalidTag { .. })
    ));
    let error = cache.set_tagged("k", &1, 60, ["a-long-tag"]).await;
    assert!(matches!(&error, Err(impcache::Error::InvalidTag { tag, .. }) if tag == "a-long-tag"));
}

/// An empty tag is refused with a typed error naming it, wherever tags are taken; nothing is
/// written.
#[tokio::test]
async fn an_empty_tag_is_refused() {
    let cache = Cache::new(impcache::MemoryCacheRepository::new());
    let refused = |result: impcache::Result<()>| matches!(&result, Err(impcache::Error::InvalidTag { tag, reason }) if tag.is_empty() && reason.contains("empty"));
    assert!(refused(cache.set_tagged("k", &1, 60, ["a", ""]).await));
    assert!(refused(cache.invalidate_tag("").await));
    assert!(refused(cache.soft_invalidate_tags(["a", ""]).await));
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    assert_runs_uncached(&cache, "").await;
}

/// `get_many` of tagged entries: the entries in one round trip, the state of all their tags in
/// one more, however many entries are tagged; each is judged by its own tags.
#[tokio::test]
async fn get_many_reads_the_tags_of_all_its_entries_at_once() {
    let server = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let tags = [format!("user:{i}"), format!("group:{}", i % 5)];
        cache.set_tagged(key, &i, 60, tags).await.unwrap();
    }
    cache.set("plain", &-1, 60).await.unwrap();
    cache.invalidate_tag("group:3").await.unwrap();
    cache.invalidate_tag("user:4").await.unwrap();
    let before = server.command_calls(&["get", "mget"]);
    let all = keys.iter().map(String::as_str).chain(["plain", "missing"]);
    let values: Vec<Option<i64>> = cache.get_many(all).await.unwrap();
    assert_eq!(server.command_calls(&["get", "mget"]) - before, 2);
    let expected: Vec<Option<i64>> = (0..50)
        .map(|i| (i % 5 != 3 && i != 4).then_some(i))
        .chain([Some(-1), None])
        .collect();
    assert_eq!(values, expected);
    // Untagged entries only: one round trip.
    let before = server.command_calls(&["get", "mget"]);
    let values: Vec<Option<i64>> = cache.get_many(["plain", "missing"]).await.unwrap();
    assert_eq!(values, [Some(-1), None]);
    assert_eq!(server.command_calls(&["get", "mget"]) - before, 1);
}

/// A Redis of its own (to kill) and a `Cache` over it whose calls give up after 200 ms.
fn redis_with_a_short_deadline() -> (RedisServer, Cache) {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    (server, Cache::new(repository))
}

/// Fail open: with Redis down, a tagged `get_or_set` runs its loader and answers; an
/// invalidation reports the outage (it is a write the caller must know failed).
#[tokio::test]
async fn with_redis_down_a_tagged_get_or_set_runs_its_loader() {
    let (mut server, cache) = redis_with_a_short_deadline();
    server.kill();
    let value: String = cache
        .get_or_set("k", 60, || async { "v".to_owned() })
        .tags(["t"])
        .await
        .unwrap();
    assert_eq!(value, "v");
    let error = cache.invalidate_tag("t").await.unwrap_err();
    assert!(error.is_backend_failure(), "{error}");
}

/// Redis down, an invalidation's error is told as the method the caller called, of the tag it
/// named: not as a write of the tag's internal state key.
#[tokio::test]
async fn with_redis_down_an_invalidation_error_names_the_method_and_the_tag() {
    let (mut server, cache) = redis_with_a_short_deadline();
    server.kill();
    let errors = [
        ("invalidate_tag", cache.invalidate_tag("user:42").await),
        (
            "soft_invalidate_tag",
            cache.soft_invalidate_tag("user:42").await,
        ),
        (
            "invalidate_tags",
            cache.invalidate_tags(["user:42", "org:3"]).await,
        ),
        (
            "soft_invalidate_tags",
            cache.soft_invalidate_tags(["user:42", "org:3"]).await,
        ),
    ];
    for (operation, result) in errors {
        let error = result.unwrap_err();
        let message = error.to_string();
        assert!(error.is_backend_failure(), "{message}");
        assert!(
            message.contains(&format!("{operation} of `user:42")),
            "{message}"
        );
        assert!(error.subject().starts_with("user:42"), "{message}");
        assert!(!message.contains("__impcache_tag"), "{message}");
    }
}

/// A user repository over a real Redis that, when armed, freezes the server (SIGSTOP) at a
/// chosen `get_many`: the read of a tagged entry's tags' state, which then times out. The rest
/// is forwarded (`set_nx_or_get` too), `get_with_tags` left to the trait's default, which reads
/// the entry and the states apart, as on Cluster.
#[derive(Debug)]
struct FreezingRepository {
    inner: RedisCacheRepository,
    server: Arc<RedisServer>,
    /// `get_many` calls to let through before the one that freezes the server; `None`: unarmed.
    freeze_after: std::sync::Mutex<Option<usize>>,
}

impl FreezingRepository {
    fn freeze_at_get_many(&self, let_through: usize) {
        *self.freeze_after.lock().unwrap() = Some(let_through);
    }
}

impl CacheRepository for FreezingRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        self.inner.set(key, value, expiry)
    }
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        self.inner.set_nx(key, value, expiry)
    }
    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        self.inner.set_nx_or_get(key, value, expiry)
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
        let freeze = {
            let mut armed = self.freeze_after.lock().unwrap();
            match *armed {
                Some(0) => armed.take().is_some(),
                Some(n) => {
                    *armed = Some(n - 1);
                    false
                }
                None => false,
            }
        };
        if freeze {
            self.server.freeze();
        }
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

/// Redis frozen while the tags' state of a tagged entry is read for `set_nx`, `get`, `get_many`
/// or a tagged `get_or_set`: the error names the operation called and the entry's key, not a
/// `get_many` of a tag's state key (as an invalidation's names the method and the tag).
#[tokio::test]
async fn a_failed_read_of_tag_states_names_the_operation_and_the_entry() {
    let server = Arc::new(RedisServer::start());
    let inner = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .without_circuit_breaker()
        .build()
        .unwrap();
    let repository = Arc::new(FreezingRepository {
        inner,
        server: Arc::clone(&server),
        freeze_after: std::sync::Mutex::new(None),
    });
    let cache = Cache::builder_shared(repository.clone())
        .record_keys(true)
        .build();
    cache.set_tagged("a", &1, 60, ["t"]).await.unwrap();
    cache.set_tagged("b", &2, 60, ["u"]).await.unwrap();
    cache.set("plain", &0, 60).await.unwrap();
    let named = |error: impcache::Error, expected: &str| {
        let message = error.to_string();
        assert!(error.is_backend_failure(), "{message}");
        assert!(message.starts_with(expected), "{expected}: {message}");
        assert!(!message.contains("__impcache_tag"), "{message}");
    };

    repository.freeze_at_get_many(0);
    let error = cache.set_nx("a", &3, 60).await.unwrap_err();
    server.thaw();
    named(error, "set_nx of `cache:1:a` timed out");

    repository.freeze_at_get_many(0);
    let error = cache.get::<i32>("a").await.unwrap_err();
    server.thaw();
    named(error, "get of `cache:1:a` timed out");

    // The entries' `MGET` goes through; the states' read of the two tagged ones freezes.
    repository.freeze_at_get_many(1);
    let error = cache
        .get_many::<i32>(["plain", "a", "b"])
        .await
        .unwrap_err();
    server.thaw();
    named(error, "get_many of `cache:1:a and 1 more` timed out");

    // A tagged `get_or_set` fails open (its loader answers) and logs the failed read (at
    // `DEBUG` when its call site warned less than a second before, in another test).
    let logs = impcache_tests::logs::Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    impcache_tests::logs::keep_callsites_interested();
    let logging = tracing::subscriber::set_default(subscriber);
    repository.freeze_at_get_many(0);
    let value: i32 = cache
        .get_or_set("a", 60, || async { 9 })
        .tags(["t"])
        .await
        .unwrap();
    server.thaw();
    drop(logging);
    assert_eq!(value, 9);
    let text = logs.text();
    assert!(text.contains("get of `cache:1:a` timed out"), "{text}");
    assert!(!text.contains("__impcache_tag"), "{text}");
}

/// With Redis down (the tags' state unreadable), a waiter of a failing tagged load that joined
/// after its own `Cache`'s *soft* invalidation takes the failure, as with the state readable:
/// only an own hard invalidation between the load's start and the join turns it away (any
/// invalidation did: 20 waiters ran 21 loaders against a failing origin; found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_failure_is_shared_after_an_own_soft_invalidation() {
    let mut server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let cache = Cache::new(repository);
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let call = |fails: bool| {
        let (cache, runs, gate) = (cache.clone(), runs.clone(), gate.clone());
        let loader = move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            drop(gate.acquire().await.unwrap());
            if fails {
                Err(impcache::Error::Loader {
                    key: "k".into(),
                    reason: "the origin is down".into(),
                })
            } else {
                Ok("new".to_owned())
            }
        };
        async move {
            let got: Result<String> = cache.try_get_or_set("k", 60, loader).tags(["t"]).await;
            got
        }
    };
    let first = tokio::spawn(call(true));
    tokio::time::timeout(HANG, async {
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .unwrap();
    cache.soft_invalidate_tag("t").await.unwrap();
    server.kill();
    let waiters: Vec<_> = (0..5).map(|_| tokio::spawn(call(false))).collect();
    // Their reads have failed, and they wait on the first one's flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.add_permits(100);
    assert!(tokio::time::timeout(HANG, first)
        .await
        .unwrap()
        .unwrap()
        .is_err());
    for waiter in waiters {
        let shared = tokio::time::timeout(HANG, waiter).await.unwrap().unwrap();
        assert!(shared.unwrap_err().to_string().contains("not run"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A caller that joins a tagged load after its own process invalidated the tag, Redis then
/// down: it cannot read the tags' state, but the invalidation was this `Cache`'s own (a clone's),
/// so it is not handed the value computed before it; it loads its own (fail open). With and
/// without a near cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_caller_after_an_own_invalidation_does_not_share_the_older_computation() {
    for near in [false, true] {
        let mut server = RedisServer::start();
        let repository = RedisCacheRepository::builder(server.url())
            .deadline(Duration::from_millis(200))
            .build()
            .unwrap();
        let cache = if near {
            Cache::builder(repository)
                .near_cache(NearCache::new().heartbeat(Duration::from_millis(100)))
                .build()
        } else {
            Cache::new(repository)
        };
        if near {
            let _ = cache.get::<String>("warm-up").await;
            tokio::time::timeout(HANG, async {
                while !cache.is_near_cache_active() {
                    tokio::time::sleep(MS).await;
                }
            })
            .await
            .unwrap();
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let first = tokio::spawn({
            let (cache, loader) = (cache.clone(), counted(&runs, &gate, "old"));
            async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
        });
        tokio::time::timeout(HANG, async {
            while runs.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(MS).await;
            }
        })
        .await
        .unwrap();
        cache.invalidate_tag("t").await.unwrap();
        server.kill();
        let second = tokio::spawn({
            let (cache, loader) = (cache.clone(), counted(&runs, &gate, "new"));
            async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
        });
        // The second caller's read has failed, and it waits on the first one's flight.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "near cache: {near}");
        gate.add_permits(100);
        let first = tokio::time::timeout(HANG, first).await.unwrap().unwrap();
        let second = tokio::time::timeout(HANG, second).await.unwrap().unwrap();
        assert_eq!(
            (first.as_str(), second.as_str()),
            ("old", "new"),
            "near cache: {near}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2, "near cache: {near}");
    }
}

/// The same when the invalidation is another process's that the near cache was told of before
/// Redis went down: the caller cannot read the tags' state, but its near cache saw a tag change
/// after the load began, so it loads its own value (it was handed the older one: found by a
/// chaos fuzz, 2026-12-07). Without a near cache nothing tells of it (README, "Race-free").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_caller_after_another_process_invalidation_its_near_cache_saw_loads_its_own(
) {
    let (first, second, runs) = near_cached_load_told_of(|other| async move {
        other.invalidate_tag("t").await.unwrap();
    })
    .await;
    assert_eq!((first.as_str(), second.as_str()), ("old", "new"));
    assert_eq!(runs, 2);
}

/// What counts is a change of a tag state key, not of an entry whose key holds
/// `__impcache_tag:` (the key `__impcache_tag:x` of version 1): with Redis down the caller takes
/// the load's value (each waiter ran its own loader: found by a regression hunt, 2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_an_entry_key_holding_the_tag_part_is_no_tag_change() {
    let (first, second, runs) = near_cached_load_told_of(|other| async move {
        other
            .set("__impcache_tag:x", &"an entry", 60)
            .await
            .unwrap();
    })
    .await;
    assert_eq!((first.as_str(), second.as_str()), ("old", "old"));
    assert_eq!(runs, 1);
}

/// A tagged load of `k` (tag `t`) through a near-cached `Cache`, held at its gate while another
/// process makes `change` and the near cache is told of it; then Redis is killed, a second
/// caller of `k` joins, and the load is let through: the two answers and the loader runs.
async fn near_cached_load_told_of<F, Fut>(change: F) -> (String, String, usize)
where
    F: FnOnce(Cache) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let cache = Cache::builder(repository)
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(100)))
        .build();
    let other = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    let _ = cache.get::<String>("warm-up").await;
    tokio::time::timeout(HANG, async {
        while !cache.is_near_cache_active() {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let first = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "old"));
        async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
    });
    tokio::time::timeout(HANG, async {
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .unwrap();
    let invalidations = cache.near_cache_stats().invalidations;
    change(other).await;
    tokio::time::timeout(HANG, async {
        while cache.near_cache_stats().invalidations == invalidations {
            tokio::time::sleep(MS).await;
        }
    })
    .await
    .expect("the near cache is told of the change");
    server.kill();
    let second = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "new"));
        async move { cache.get_or_set("k", 60, loader).tags(["t"]).await.unwrap() }
    });
    // The second caller's read has failed, and it waits on the first one's flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    gate.add_permits(100);
    let first = tokio::time::timeout(HANG, first).await.unwrap().unwrap();
    let second = tokio::time::timeout(HANG, second).await.unwrap().unwrap();
    (first, second, runs.load(Ordering::SeqCst))
}

/// One loader run per key per process holds with Redis down too, for tagged calls as for
/// untagged ones: 10 concurrent callers of one key, Redis killed while the leader's loader runs
/// (the waiters' reads went through, and their check of the tags' state fails) or down from the
/// start (their reads failed). The waiters take the leader's value: no other process's
/// invalidation can be seen while Redis is down, this one sent none, and a run per waiter would
/// fall on the loader's source exactly then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_tagged_callers_share_one_loader_run() {
    for killed_during_the_load in [true, false] {
        let (mut server, cache) = redis_with_a_short_deadline();
        if !killed_during_the_load {
            server.kill();
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let (cache, loader) = (cache.clone(), counted(&runs, &gate, "v"));
                tokio::spawn(async move { cache.get_or_set("k", 60, loader).tags(["t"]).await })
            })
            .collect();
        // Every caller has read (or failed to) and waits for the leader's loader.
        tokio::time::timeout(HANG, async {
            while runs.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(MS).await;
            }
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if killed_during_the_load {
            server.kill();
        }
        gate.add_permits(100);
        for caller in callers {
            let value = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
            assert_eq!(value.unwrap(), "v");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "killed during the load: {killed_during_the_load}"
        );
    }
}

/// A version whose keys would be tag state keys (`{prefix}:__impcache_tag:{tag}`) is refused by
/// every operation, so that no write replaces a tag's state (and brings back what it hid).
async fn a_version_spelled_like_tag_state_is_refused(b: Backend) {
    let cache = &b.cache;
    cache.set_tagged("k", &"hidden", 60, ["t"]).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    // (`x:__impcache_tag`: the keys of the tags' state of the cache whose prefix is `{prefix}:x`.)
    for version in ["__impcache_tag", "__impcache_tag:x", "x:__impcache_tag"] {
        let odd = cache.with_version(version);
        let error = odd.set("t", &"user data", 60).await.unwrap_err();
        assert!(
            matches!(&error, impcache::Error::InvalidKey { key, .. } if key == "t"),
            "{error}"
        );
        assert!(error.to_string().contains("reserved"), "{error}");
        assert!(odd.get::<String>("t").await.is_err());
        assert!(odd.delete_pattern("*").await.is_err());
    }
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    // Only those: a version that merely starts alike is an ordinary one.
    let ordinary = cache.with_version("__impcache_tags");
    ordinary.set("t", &"user data", 60).await.unwrap();
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

/// The same through a key prefix: a cache whose prefix is another's followed by
/// `:__impcache_tag` makes keys of that cache's tag state (`{prefix}:__impcache_tag:u:1`, the
/// key `1` of version `u`, is the state of the tag `u:1`): its `delete_pattern("*")` removed the
/// other cache's invalidations, and a hidden entry came back (found by a probe, 2026-12-07).
/// Refused by every operation, naming the prefix.
async fn a_prefix_spelled_like_tag_state_is_refused(b: Backend) {
    let cache = &b.cache;
    cache.set_tagged("k", &"hidden", 60, ["u:1"]).await.unwrap();
    cache.invalidate_tag("u:1").await.unwrap();
    let over = |prefix: String| {
        Cache::builder_shared(cache.repository().clone())
            .key_prefix(prefix)
            .version("u")
            .build()
    };
    let prefix = cache.key_prefix();
    for odd in [
        format!("{prefix}:__impcache_tag"),
        format!("{prefix}:__impcache_tag:x"),
    ] {
        let odd = over(odd);
        let error = odd.set("1", &"user data", 60).await.unwrap_err();
        assert!(
            matches!(&error, impcache::Error::InvalidKey { key, .. } if key == "1"),
            "{error}"
        );
        assert!(error.to_string().contains("key prefix"), "{error}");
        assert!(odd.get::<String>("1").await.is_err());
        assert!(odd.delete("1").await.is_err());
        assert!(odd.delete_pattern("*").await.is_err());
    }
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    // Only those: a prefix whose segment merely starts alike is an ordinary one.
    let ordinary = over(format!("{prefix}:__impcache_tags"));
    ordinary.set("1", &"user data", 60).await.unwrap();
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

/// A plain value whose JSON starts as a tagged entry's envelope would read back as another
/// value (its `value` field), or as nothing once a tag it names is invalidated: every write of
/// one is refused, naming the key, and nothing is stored. A value merely holding the field
/// further in is ordinary.
async fn a_value_spelled_like_a_tagged_entry_is_refused(b: Backend) {
    let cache = &b.cache;
    let lookalike =
        serde_json::json!({"__impcache_tagged__": {"created": 0, "tags": ["t"]}, "value": 5});
    let refused = |error: impcache::Error| {
        assert!(
            matches!(&error, impcache::Error::Encode { key, .. } if key.ends_with('k')),
            "{error}"
        );
        assert!(error.to_string().contains("__impcache_tagged__"), "{error}");
    };
    refused(cache.set("k", &lookalike, 60).await.unwrap_err());
    refused(cache.set_nx("k", &lookalike, 60).await.unwrap_err());
    refused(cache.set_many([("k", &lookalike)], 60).await.unwrap_err());
    refused(
        cache
            .set_tagged("k", &lookalike, 60, ["u"])
            .await
            .unwrap_err(),
    );
    let raw = bytes::Bytes::from(lookalike.to_string());
    refused(cache.set_raw("k", raw.clone(), 60).await.unwrap_err());
    refused(cache.set_nx_raw("k", raw, 60).await.unwrap_err());
    assert_eq!(cache.get_raw("k").await.unwrap(), None);
    // `get_or_set` answers with its loader's value, and stores nothing.
    let got: serde_json::Value = cache
        .get_or_set("k", 60, move || async move { lookalike })
        .await
        .unwrap();
    assert_eq!(got["value"], 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.get_raw("k").await.unwrap(), None);
    let ordinary =
        serde_json::json!({"Id": 1, "__impcache_tagged__": {"created": 0, "tags": ["t"]}});
    cache.set("k", &ordinary, 60).await.unwrap();
    assert_eq!(
        cache.get::<serde_json::Value>("k").await.unwrap(),
        Some(ordinary)
    );
}

// --- Tags chosen from the loaded value (`tags_from`, HybridCache #6897). ---

/// A tag known only once the value is loaded (the value's "org") is stored with the call's own
/// tags: invalidating it, from this process or another, hides the entry from `get_or_set`
/// (which reloads) and from a plain `get`; a tag the value did not choose changes nothing.
async fn tags_chosen_from_the_value_hide_it_when_invalidated(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Semaphore::new(1000));
    let load = |value: &'static str| {
        cache
            .get_or_set("user:7", 60, counted(&runs, &open, value))
            .tags(["user:7"])
            .tags_from(|value: &String| [format!("org:{}", &value[..1])])
            // A second closure adds its own.
            .tags_from(|value: &String| [format!("name:{}", &value[2..])])
    };
    assert_eq!(load("3-ada").await.unwrap(), "3-ada");
    stored(cache, "user:7", "org:3").await;
    stored(cache, "user:7", "name:ada").await;
    assert_eq!(load("unused").await.unwrap(), "3-ada");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    b.other.invalidate_tag("org:4").await.unwrap();
    assert_eq!(load("unused").await.unwrap(), "3-ada");
    assert_eq!(
        b.other.get::<String>("user:7").await.unwrap().as_deref(),
        Some("3-ada")
    );
    // Another process invalidates the organisation the value chose.
    b.other.invalidate_tag("org:3").await.unwrap();
    tokio::time::sleep(MS).await;
    assert_eq!(cache.get::<String>("user:7").await.unwrap(), None);
    assert_eq!(b.other.get::<String>("user:7").await.unwrap(), None);
    assert_eq!(load("4-ada").await.unwrap(), "4-ada");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    stored(cache, "user:7", "org:4").await;
    // The new value chose another organisation: the old one's invalidation is behind it, and
    // the new one's hides it.
    assert_eq!(load("unused").await.unwrap(), "4-ada");
    cache.invalidate_tag("org:4").await.unwrap();
    tokio::time::sleep(MS).await;
    assert_eq!(load("5-ada").await.unwrap(), "5-ada");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// FusionCache #535/#628 for a chosen tag: the entry's creation time is taken before the
/// loader runs, so an invalidation of the tag it will choose, landing meanwhile, hides it.
async fn an_invalidation_of_a_chosen_tag_during_the_computation_is_not_missed(b: Backend) {
    let cache = &b.cache;
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let leader = tokio::spawn({
        let (cache, loader) = (cache.clone(), counted(&runs, &gate, "old"));
        async move {
            cache
                .get_or_set("k", 60, loader)
                .tags_from(|_: &String| ["chosen"])
                .await
                .unwrap()
        }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(MS).await;
    }
    b.other.invalidate_tag("chosen").await.unwrap();
    gate.add_permits(1000);
    assert_eq!(leader.await.unwrap(), "old");
    stored(cache, "k", "old").await;
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    let value: String = cache
        .get_or_set("k", 60, counted(&runs, &gate, "new"))
        .await
        .unwrap();
    assert_eq!((value.as_str(), runs.load(Ordering::SeqCst)), ("new", 2));
}

/// `try_get_or_set(..).tags_from(..)`: an error chooses nothing and stores nothing; a value
/// chooses its tags; a chosen tag the cache refuses (empty) is left out, the value stored.
async fn a_failed_loader_chooses_no_tags_and_stores_nothing(b: Backend) {
    let cache = &b.cache;
    let chosen = Arc::new(AtomicUsize::new(0));
    let failed: Result<String, impcache::Error> = cache
        .try_get_or_set("k", 60, || async {
            Err(impcache::Error::Loader {
                key: "k".into(),
                reason: "down".into(),
            })
        })
        .tags_from({
            let chosen = chosen.clone();
            move |_: &String| {
                chosen.fetch_add(1, Ordering::SeqCst);
                ["t"]
            }
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(chosen.load(Ordering::SeqCst), 0);
    assert_eq!(raw(cache, "k").await, None);
    let value: String = cache
        .try_get_or_set("k", 60, || async {
            Ok::<_, impcache::Error>("v".to_owned())
        })
        .tags_from(|_: &String| ["t", ""])
        .await
        .unwrap();
    assert_eq!(value, "v");
    stored(cache, "k", "\"v\"").await;
    assert_eq!(
        cache.get::<String>("k").await.unwrap().as_deref(),
        Some("v")
    );
    cache.invalidate_tag("t").await.unwrap();
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

/// The state key of `tag` (`{prefix}:__impcache_tag:{tag}`).
fn state_key(cache: &Cache, tag: &str) -> String {
    format!("{}:__impcache_tag:{tag}", cache.key_prefix())
}

/// Two processes invalidate a tag: the one whose invalidation was stamped first is slower to
/// land (a delayed request, or a clock behind). The later invalidation stays recorded, so an
/// entry created between the two stamps is a miss after the later one, as the issue's "never
/// served as fresh after it" asks. (With a blind `SET` for each, the earlier stamp landing last
/// undid the later one and the entry came back.) The delayed invalidation is written through the
/// repository, as `Cache::invalidate_tag` writes it, with the earlier stamp.
async fn an_earlier_invalidation_landing_later_undoes_nothing(b: Backend) {
    for kind in [TagInvalidation::Hard, TagInvalidation::Soft] {
        let (key, tag) = (format!("k-{kind:?}"), format!("t-{kind:?}"));
        let earlier = impcache::__private::tags::stamp_micros();
        tokio::time::sleep(MS).await;
        b.cache
            .set_tagged(&key, &"between", 60, [&tag])
            .await
            .unwrap();
        tokio::time::sleep(MS).await;
        match kind {
            TagInvalidation::Hard => b.other.invalidate_tag(&tag).await.unwrap(),
            _ => b.other.soft_invalidate_tag(&tag).await.unwrap(),
        }
        let delayed = Bytes::from(earlier.to_string());
        b.cache
            .repository()
            .mark_tag(&state_key(&b.cache, &tag), kind, delayed)
            .await
            .unwrap();
        let got: Option<String> = b.cache.get(&key).await.unwrap();
        assert_eq!(got, None, "{kind:?}: the later invalidation was undone");
        // Under a stale window, a soft-invalidated entry is stale, a hard-invalidated one gone.
        let policy = Freshness::new().stale_while_revalidate(MINUTE);
        let value: String = b
            .cache
            .get_or_set(&key, 60, || async { "reloaded".to_owned() })
            .tags([&tag])
            .freshness(policy)
            .await
            .unwrap();
        let expected = match kind {
            TagInvalidation::Hard => "reloaded",
            _ => "between",
        };
        assert_eq!(value, expected, "{kind:?}");
    }
}

/// Every repository's atomic invalidation (Redis: the script; memory: under the entry's lock)
/// writes the state `tags::marked` computes (its unit test holds the same table): each time
/// replaced only by a later one of its kind, the soft time dropped once the hard one covers it.
async fn every_repository_keeps_the_later_invalidation(b: Backend) {
    use TagInvalidation::{Hard, Soft};
    let cases: [(&[(TagInvalidation, u64)], &str); 9] = [
        (&[(Soft, 5)], ";5"),
        (&[(Hard, 3), (Soft, 5)], "3;5"),
        (&[(Hard, 3), (Soft, 6), (Soft, 5)], "3;6"),
        (&[(Hard, 7), (Soft, 5)], "7"),
        (&[(Hard, 6), (Hard, 5)], "6"),
        (&[(Hard, 6), (Soft, 8), (Hard, 5)], "6;8"),
        (&[(Hard, 3), (Soft, 4), (Hard, 5)], "5"),
        (&[(Hard, 3), (Soft, 9), (Hard, 5)], "5;9"),
        // Today's times (16 digits) compare as numbers, not as text, and are written back whole.
        (
            &[(Hard, 1_764_800_000_000_001), (Hard, 999_999_999_999_999)],
            "1764800000000001",
        ),
    ];
    // No tags: nothing to send, and no error.
    b.cache.invalidate_tags(Vec::<&str>::new()).await.unwrap();
    b.cache
        .soft_invalidate_tags(Vec::<&str>::new())
        .await
        .unwrap();
    let repository = b.cache.repository();
    for (case, (marks, state)) in cases.iter().enumerate() {
        let key = state_key(&b.cache, &format!("case{case}"));
        for (kind, at) in *marks {
            let at = Bytes::from(at.to_string());
            repository.mark_tag(&key, *kind, at).await.unwrap();
        }
        let got = repository.get(&key).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(state.as_bytes()),
            "case {case}: {marks:?}"
        );
    }
}
