//! Tags (issue 16): invalidate every entry carrying a tag in O(1) round trips, without a
//! keyspace scan, on every repository including Cluster.
//!
//! # How it works
//! - **Tag state**: two keys per tag, under the cache's prefix and version, each holding a time
//!   (µs since the Unix epoch, as a decimal number): `{prefix}:{version}:__impcache_tag:hard:{tag}`
//!   (set by [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)) and
//!   `{prefix}:{version}:__impcache_tag:soft:{tag}` (set by
//!   [`Cache::soft_invalidate_tag`](crate::Cache::soft_invalidate_tag)). An invalidation is one
//!   `SET` of one key: no read-modify-write, so concurrent hard and soft invalidations never lose
//!   each other. Tag keys have no expiry (an entry they invalidate may have none): one small key
//!   per tag ever invalidated, gone with the version. The key part `__impcache_tag:` is reserved:
//!   a user key starting with it would be read as a tag's state.
//! - **Tagged entry**: the value's JSON inside an envelope holding its tags and its creation time
//!   (`envelope.rs`). The creation time is taken *before* the loader runs, so an invalidation
//!   that lands while the value is computed hides it (FusionCache #535/#628). Untagged entries
//!   stay the Python library's bytes exactly.
//! - **Read**: an entry created at or before the latest hard invalidation of one of its tags is
//!   a miss; at or before the latest soft invalidation, it is stale: served under the call's
//!   [`Freshness`](crate::Freshness) policy while it reloads (`stale_while_revalidate` counted
//!   from the soft invalidation), a miss without one. A caller that knows its tags
//!   (`get_or_set(..).tags(..)`, `#[cached(tags = ..)]`) reads the entry and the tag keys in one
//!   round trip (single node: one `MGET` of the entry and the tag keys, or with a stale window
//!   `GET` + `PTTL` + `MGET` pipelined; Cluster, where tag keys live
//!   on other slots: concurrent requests, one wait). A plain [`get`](crate::Cache::get) finds the
//!   tags in the envelope and reads their state in a second round trip.
//! - **Near cache** (issue 14): tag state keys live under the tracked prefix, so they are kept
//!   locally like any key, their absence included (`near/store.rs`), and invalidated by Redis when
//!   a tag is invalidated (or its key created) anywhere. A tagged read whose entry and states are
//!   all local makes no round trip; the rest is read in one and kept (the dispatch point's
//!   `Near` arm, `Backend::get_with_tags` and `Backend::get_tag_states`).
//! - **No expiry of tag keys**: a state may only go once no entry created at or before it can be
//!   served, which the cache cannot know (entries without expiry, a TTL per write, a loader that
//!   stores long after the invalidation); a soft state dropped early would make its stale entries
//!   fresh again.
//!
//! # Clock
//! Client clocks (`SystemTime`), not the server's `TIME`: taking the server's time before a
//! loader runs would cost one more round trip per miss and a script per invalidation, on every
//! repository. The cost: processes whose clocks disagree by `d` can serve, for up to `d` after an
//! invalidation, an entry computed just before it. [`CacheBuilder::tag_clock_skew`]
//! (default 0) is the allowance: entries created up to that long after an invalidation count as
//! invalidated too (they are reloaded once the allowance has passed). With NTP-synchronised hosts
//! a few milliseconds is enough.
//!
//! [`CacheBuilder::tag_clock_skew`]: crate::CacheBuilder::tag_clock_skew

pub(crate) mod envelope;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::key::full_key;

/// The reserved key part of tag state keys.
pub(crate) const TAG_KEY_PART: &str = "__impcache_tag:";

/// The tags of one call (`get_or_set(..).tags(..)`, `#[cached(tags = ..)]`): none, or a shared list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tags(Option<Arc<[String]>>);

impl Tags {
    /// The tags given, in order, without duplicates.
    pub(crate) fn new<I>(tags: I) -> Tags
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut list: Vec<String> = Vec::new();
        for tag in tags {
            let tag = tag.as_ref();
            if !list.iter().any(|known| known == tag) {
                list.push(tag.to_owned());
            }
        }
        if list.is_empty() {
            Tags(None)
        } else {
            Tags(Some(list.into()))
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn as_slice(&self) -> &[String] {
        self.0.as_deref().unwrap_or_default()
    }
}

/// Which invalidation a tag key records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hard,
    Soft,
}

/// The full key of `tag`'s state of `kind`.
pub(crate) fn state_key(prefix: &str, version: &str, tag: &str, kind: Kind) -> String {
    let kind = match kind {
        Kind::Hard => "hard:",
        Kind::Soft => "soft:",
    };
    full_key(prefix, version, &[TAG_KEY_PART, kind, tag].concat())
}

/// The state keys of some tags, hard then soft of each tag, in order ([`state_key`] of each):
/// in one buffer, since a tagged read builds them on every call.
pub(crate) struct StateKeys {
    buffer: String,
    ends: Vec<usize>,
}

impl StateKeys {
    pub(crate) fn new<T: AsRef<str>>(prefix: &str, version: &str, tags: &[T]) -> StateKeys {
        let fixed = prefix.len() + version.len() + TAG_KEY_PART.len() + 7;
        let size: usize = tags
            .iter()
            .map(|tag| 2 * (fixed + tag.as_ref().len()))
            .sum();
        let mut buffer = String::with_capacity(size);
        let mut ends = Vec::with_capacity(2 * tags.len());
        for tag in tags {
            for kind in ["hard:", "soft:"] {
                for part in [prefix, ":", version, ":", TAG_KEY_PART, kind, tag.as_ref()] {
                    buffer.push_str(part);
                }
                ends.push(buffer.len());
            }
        }
        StateKeys { buffer, ends }
    }

    /// The keys, in order.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let key = self.buffer.get(start..end).unwrap_or_default();
                start = end;
                key
            })
            .collect()
    }
}

/// Now, in µs since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where an entry stands against its tags' invalidations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// No invalidation since it was created.
    Fresh,
    /// Soft-invalidated at `since` (µs): stale.
    Stale {
        /// When (µs since the epoch).
        since: u64,
    },
    /// Invalidated: a miss.
    Gone,
}

/// The verdict on an entry created at `created` (µs), from its tags' state values as read
/// (`states`: what [`StateKeys`] hold, in that order; `None` where a tag was never invalidated)
/// with the clock-skew allowance `skew`.
pub(crate) fn verdict(created: u64, states: &[Option<Bytes>], skew: Duration) -> Verdict {
    let skew = u64::try_from(skew.as_micros()).unwrap_or(u64::MAX);
    let time = |state: &Option<Bytes>| {
        state
            .as_deref()
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    let mut stale_since = None;
    for (index, state) in states.iter().enumerate() {
        let Some(at) = time(state) else { continue };
        if created > at.saturating_add(skew) {
            continue;
        }
        if index % 2 == 0 {
            return Verdict::Gone;
        }
        stale_since = stale_since.max(Some(at));
    }
    match stale_since {
        Some(since) => Verdict::Stale { since },
        None => Verdict::Fresh,
    }
}

/// How long ago `since` (µs) was.
pub(crate) fn elapsed_since(since: u64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(since))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: u64) -> Option<Bytes> {
        Some(Bytes::from(micros.to_string()))
    }

    #[test]
    fn the_latest_invalidation_decides() {
        let none = Duration::ZERO;
        assert_eq!(verdict(10, &[None, None], none), Verdict::Fresh);
        assert_eq!(verdict(10, &[at(9), None], none), Verdict::Fresh);
        assert_eq!(verdict(10, &[at(10), None], none), Verdict::Gone);
        assert_eq!(
            verdict(10, &[None, at(12)], none),
            Verdict::Stale { since: 12 }
        );
        // A hard invalidation of any tag wins over a soft one of another.
        assert_eq!(
            verdict(10, &[None, at(12), at(11), None], none),
            Verdict::Gone
        );
        // The skew allowance widens each invalidation.
        assert_eq!(
            verdict(10, &[at(9), None], Duration::from_micros(1)),
            Verdict::Gone
        );
        // Unreadable state is ignored.
        let junk = Some(Bytes::from_static(b"x"));
        assert_eq!(verdict(10, &[junk, None], none), Verdict::Fresh);
    }

    #[test]
    fn tag_keys_are_reserved_and_deduplicated() {
        let tags = Tags::new(["a", "b", "a"]);
        assert_eq!(tags.as_slice(), ["a", "b"]);
        let keys = StateKeys::new("p", "1", tags.as_slice());
        assert_eq!(keys.keys()[3], state_key("p", "1", "b", Kind::Soft));
        assert_eq!(
            keys.keys(),
            [
                "p:1:__impcache_tag:hard:a",
                "p:1:__impcache_tag:soft:a",
                "p:1:__impcache_tag:hard:b",
                "p:1:__impcache_tag:soft:b"
            ]
        );
        assert!(Tags::new(Vec::<String>::new()).is_empty());
    }
}
