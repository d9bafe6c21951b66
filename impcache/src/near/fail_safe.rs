//! The near cache's fail-safe copies (issue 15, FusionCache's fail-safe): with
//! [`NearCache::fail_safe`](super::NearCache::fail_safe) on, every entry kept locally also has a
//! copy here that outlives the moment the near cache stops vouching for it (its local lifetime
//! ends, or the tracking connection is lost). A copy is only ever an answer of last resort: a
//! `get_or_set` whose Redis read failed and whose loader then failed too, within the call's
//! `stale_if_error` window (see `freshness/load.rs`). Plain reads never see it.
//!
//! A copy is dropped when Redis says its key changed, when this cache writes or deletes the key,
//! when a read of the key from Redis is not kept locally (`Store::replied`: the reply is newer
//! than the copy, which must not answer after it),
//! on `FLUSHDB`/`delete_pattern`, at the key's Redis expiry (past it no window can serve it), and
//! beyond the byte bound (least recently used first). The values are the live entries' `Bytes`:
//! shared, not copied, while both hold them.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::freshness::{Freshness, State};
use crate::key::LocalKeyHasher;

/// One copy: the value, until when it was vouched for, and the key's Redis expiry.
#[derive(Clone)]
struct Copy {
    value: Bytes,
    /// The end of its local lifetime, or the loss of the tracking connection if earlier.
    vouched_until: Instant,
    /// When the key expires in Redis (`None`: no expiry).
    redis_expires: Option<Instant>,
}

struct UntilRedisExpiry;

impl moka::Expiry<String, Copy> for UntilRedisExpiry {
    fn expire_after_create(&self, _: &String, copy: &Copy, now: Instant) -> Option<Duration> {
        copy.redis_expires
            .map(|at| at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        key: &String,
        copy: &Copy,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, copy, now)
    }
}

/// The fail-safe copies of one near cache, bounded by the same byte count as its live entries.
pub(super) struct FailSafe {
    copies: moka::sync::Cache<String, Copy, LocalKeyHasher>,
}

impl FailSafe {
    pub(super) fn new(max_capacity_bytes: u64) -> FailSafe {
        let copies = moka::sync::Cache::builder()
            .max_capacity(max_capacity_bytes)
            .weigher(|key: &String, copy: &Copy| super::weight::of(key, &copy.value, None))
            .expire_after(UntilRedisExpiry)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(LocalKeyHasher::default());
        FailSafe { copies }
    }

    /// A copy of an entry just kept locally until `vouched_until`.
    pub(super) fn keep(
        &self,
        key: &str,
        value: &Bytes,
        vouched_until: Instant,
        redis_expires: Option<Instant>,
    ) {
        let copy = Copy {
            value: value.clone(),
            vouched_until,
            redis_expires,
        };
        self.copies.insert(key.to_owned(), copy);
    }

    /// A tracking connection is lost: no copy of a key for which `which` holds (all of them
    /// off Cluster; on Cluster, those of the lost primary's slots) is vouched for past now.
    pub(super) fn lost(&self, which: impl Fn(&str) -> bool) {
        let now = Instant::now();
        for (key, copy) in &self.copies {
            if copy.vouched_until > now && which(&key) {
                let copy = Copy {
                    vouched_until: now,
                    ..copy
                };
                self.copies.insert(String::clone(&key), copy);
            }
        }
    }

    /// `key` changed, or was written or deleted by this cache.
    pub(super) fn invalidate(&self, key: &str) {
        self.copies.invalidate(key);
    }

    /// Everything is gone (`FLUSHDB`, `delete_pattern`).
    pub(super) fn flush(&self) {
        self.copies.invalidate_all();
    }

    /// The copy of `key` when `policy`'s `stale_if_error` window covers it: its age past the
    /// earlier of its expiry (by `policy`) and the end of its vouching is within the window.
    pub(super) fn get(&self, key: &str, policy: &Freshness) -> Option<Bytes> {
        let window = policy.stale_if_error_window()?;
        let copy = self.copies.get(key)?;
        let now = Instant::now();
        let expiry = copy.redis_expires.and_then(|at| {
            match policy.state(Some(at.saturating_duration_since(now))) {
                State::Fresh { left } => left.map(|left| now + left),
                State::Stale { past } => now.checked_sub(past),
            }
        });
        let since = expiry.map_or(copy.vouched_until, |at| at.min(copy.vouched_until));
        (now.saturating_duration_since(since) <= window).then_some(copy.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_copy_is_served_within_the_window_past_the_end_of_its_vouching() {
        let fail_safe = FailSafe::new(1024);
        let value = Bytes::from_static(b"1");
        let policy = Freshness::new().stale_if_error(60 * S);
        fail_safe.keep("k", &value, Instant::now() + 3600 * S, None);
        assert_eq!(fail_safe.get("k", &policy), Some(value.clone()));
        assert_eq!(fail_safe.get("k", &Freshness::new()), None);
        // A loss of other keys' connection (a Cluster primary's) leaves it vouched for.
        let zero = Freshness::new().stale_if_error(Duration::ZERO);
        fail_safe.lost(|key| key != "k");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(fail_safe.get("k", &zero), Some(value.clone()));
        fail_safe.lost(|_| true);
        assert_eq!(fail_safe.get("k", &policy), Some(value));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(fail_safe.get("k", &zero), None);
        fail_safe.invalidate("k");
        assert_eq!(fail_safe.get("k", &policy), None);
    }

    #[test]
    fn the_age_counts_from_the_expiry_when_it_came_first() {
        let fail_safe = FailSafe::new(1024);
        let value = Bytes::from_static(b"1");
        // Stored for 10 s fresh + 60 s stale window, 65 s ago: 55 s past its expiry.
        let policy = Freshness::new().stale_if_error(60 * S);
        let redis_expires = Instant::now() + 5 * S;
        fail_safe.keep("k", &value, Instant::now() + 3600 * S, Some(redis_expires));
        assert_eq!(fail_safe.get("k", &policy), Some(value));
        let narrow = Freshness::new()
            .stale_if_error(30 * S)
            .stale_while_revalidate(60 * S);
        assert_eq!(fail_safe.get("k", &narrow), None);
    }
}
