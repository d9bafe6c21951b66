//! The fail-safe throttle ([`Freshness::fail_safe_throttle`](super::Freshness::fail_safe_throttle),
//! FusionCache's `FailSafeThrottleDuration`): the keys whose loader failed recently in this
//! process, and until when their stale value answers without a loader run. Per process, like
//! the single-flight it sits beside: another process learns of a failure by failing itself.
//! Timed on tokio's clock, as the loader's timeouts are: on a paused test clock,
//! `tokio::time::advance` ends a throttle.

use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::job::{flight_key, FlightKey};
use crate::{Cache, CacheRepository};

/// How many keys the table holds at most (the least recently used go first): a failing key costs
/// an entry of about its key's length, so the table stays within a few MiB.
const MAX_KEYS: u64 = 10_000;

/// A throttled key's entry: until when its stale value answers, and the repository it was
/// throttled on. A flight key names its repository by address, and a new repository (a `Cache`
/// rebuilt) must not inherit a dropped one's throttles: the `Weak` keeps the dropped one's
/// allocation, so its address is not reused while the entry lives, and says it is gone.
#[derive(Clone)]
struct Throttled {
    until: Instant,
    repository: Weak<dyn CacheRepository>,
}

/// The throttled keys. An entry past its `until` answers no more and stays until the key fails
/// again, succeeds, or is evicted: moka's own expiry would follow the real clock, not tokio's.
/// Least recently used first, so that a newly failed key always gets its entry (moka's default
/// admission may refuse a new key, seen once, when the table is full).
static THROTTLED: LazyLock<moka::sync::Cache<FlightKey, Throttled>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(MAX_KEYS)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build()
});

/// The longest throttle kept: a year (a longer one, `Duration::MAX` say, would overflow an
/// `Instant`); past it the key loads again, as it would once its stale window ended anyway.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// The loader of `key` in `cache` failed: its stale value answers for `throttle` from now.
pub(super) fn start(cache: &Cache, key: &str, throttle: Duration) {
    if let Some(until) = Instant::now().checked_add(throttle.min(LONGEST)) {
        let repository = Arc::downgrade(cache.repository());
        THROTTLED.insert(flight_key(cache, key), Throttled { until, repository });
    }
}

/// The loader of `key` in `cache` succeeded: its throttle, if any, ends (as FusionCache's,
/// which a successful factory replaces), so the value it loaded is reloaded once stale.
pub(super) fn end(cache: &Cache, key: &str) {
    THROTTLED.invalidate(&flight_key(cache, key));
}

/// Whether the loader of `key` in `cache` failed less than its throttle ago.
pub(super) fn holds(cache: &Cache, key: &str) -> bool {
    THROTTLED
        .get(&flight_key(cache, key))
        .is_some_and(|entry| entry.until > Instant::now() && entry.repository.strong_count() > 0)
}
