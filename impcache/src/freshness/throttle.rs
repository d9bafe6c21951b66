//! The fail-safe throttle ([`Freshness::fail_safe_throttle`](super::Freshness::fail_safe_throttle),
//! FusionCache's `FailSafeThrottleDuration`): the keys whose loader failed recently in this
//! process, and until when their stale value answers without a loader run. Per process, like
//! the single-flight it sits beside: another process learns of a failure by failing itself.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use super::job::FlightKey;

/// How many keys the table holds at most (the least used go first): a failing key costs an
/// entry of about its key's length, so the table stays within a few MiB.
const MAX_KEYS: u64 = 10_000;

/// Until when each throttled key's stale value answers (an entry is dropped past that time,
/// by moka's per-entry expiry).
static THROTTLED: LazyLock<moka::sync::Cache<FlightKey, Instant>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(MAX_KEYS)
        .expire_after(Until)
        .build()
});

/// Expires each entry at its own `Instant`.
struct Until;

impl moka::Expiry<FlightKey, Instant> for Until {
    fn expire_after_create(
        &self,
        _key: &FlightKey,
        until: &Instant,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &FlightKey,
        until: &Instant,
        updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(until.saturating_duration_since(updated_at))
    }
}

/// The longest throttle kept: a year (a longer one, `Duration::MAX` say, would overflow an
/// `Instant`); past it the key loads again, as it would once its stale window ended anyway.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// The loader of `key` failed: its stale value answers for `throttle` from now.
pub(super) fn start(key: FlightKey, throttle: Duration) {
    let now = Instant::now();
    if let Some(until) = now.checked_add(throttle.min(LONGEST)) {
        THROTTLED.insert(key, until);
    }
}

/// Whether `key`'s loader failed less than its throttle ago.
pub(super) fn holds(key: &FlightKey) -> bool {
    THROTTLED
        .get(key)
        .is_some_and(|until| until > Instant::now())
}
