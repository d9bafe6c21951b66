//! Tags (issue 16): invalidate every entry carrying a tag in O(1) round trips, without a
//! keyspace scan, on every repository including Cluster.
//!
//! # How it works
//! - **Tag state**: one key per tag, under the cache's prefix and *no* version,
//!   `{prefix}:__impcache_tag:{tag}`, holding the times (µs since the Unix epoch, as
//!   decimal numbers) of the tag's last hard and soft invalidation: `{hard}` after a hard one
//!   ([`Cache::invalidate_tag`](crate::Cache::invalidate_tag)), `{hard};{soft}` (or `;{soft}`
//!   with no hard one yet) after a soft one
//!   ([`Cache::soft_invalidate_tag`](crate::Cache::soft_invalidate_tag)). One key rather than
//!   two: a tagged read reads 1 + N keys for N tags, not 1 + 2N (BENCHMARKS.md, "Issue 16:
//!   tags"). Tag keys have no expiry (an entry they invalidate may have none): one small key
//!   per tag ever invalidated. No version in them, so one invalidation reaches every version's
//!   entries: a `#[cached(version = 2, tags = [..])]` function's (which reads through
//!   [`Cache::with_version`](crate::Cache::with_version)) as well as the app cache's, and, in a
//!   rolling deploy that bumps the version, the old processes' entries as well as the new ones'.
//!   (Before this layout, unreleased, the tag keys were `{prefix}:{version}:__impcache_tag:{tag}`,
//!   and before that a tag had two keys, `…:hard:{tag}` and `…:soft:{tag}`: they are not read,
//!   and not migrated.)
//! - **Invalidation writes**: an invalidation at `t` is a read-modify-write of the one key, made
//!   atomic by the repository ([`CacheRepository::mark_tag`](crate::CacheRepository::mark_tag):
//!   on Redis one `EVAL` on the one key, so Cluster-safe; in memory under moka's per-key
//!   compute lock). Each time the state holds is replaced only by a later one of its kind, so
//!   an invalidation stamped earlier than one already recorded (another process's, delayed on
//!   its way or stamped by a clock behind) never undoes it: an entry created between the two
//!   stays hidden (`tests/tags.rs`, `an_earlier_invalidation_landing_later_undoes_nothing`). A
//!   soft invalidation keeps the hard time (entries created before the hard time stay gone, not
//!   stale); a soft time the hard one covers is dropped, since every entry it made stale is
//!   gone. Concurrent hard and soft invalidations are all kept (`tests/tags.rs`, `races`). The
//!   trait's default, for a user repository, is a read then a write, not atomic (documented
//!   there). (Until this layout's last change, a hard invalidation was a blind `SET`, one
//!   `set_many` for several tags: one round trip fewer for many tags at once, but the last write
//!   to land won, even an earlier one.) Rejected: a blind encoding (hard = `SET`, soft =
//!   `APPEND`) needs a new repository operation all the same, and a bound on the growth of a tag
//!   soft-invalidated often, which needs a read-modify-write again.
//! - **Tagged entry**: the value's JSON inside an envelope holding its tags and its creation time
//!   (`envelope.rs`). The creation time is taken *before* the loader runs, so an invalidation
//!   that lands while the value is computed hides it (FusionCache #535/#628). Untagged entries
//!   stay the Python library's bytes exactly. Tags chosen from the loaded value
//!   (`get_or_set(..).tags_from(..)`, [`LoadedTags`]) join the call's in the envelope, with the
//!   same creation time.
//! - **Read**: an entry created at or before the latest hard invalidation of one of its tags is
//!   a miss; at or before the latest soft invalidation, it is stale: served under the call's
//!   [`Freshness`](crate::Freshness) policy while it reloads (`stale_while_revalidate` counted
//!   from the soft invalidation), a miss without one. A caller that knows its tags
//!   (`get_or_set(..).tags(..)`, `#[cached(tags = ..)]`) reads the entry and the tag keys in one
//!   round trip (single node: one `MGET` of the entry and the tag keys, or with a stale window
//!   `GET` + `PTTL` + `MGET` pipelined; Cluster, where tag keys live
//!   on other slots: concurrent requests, one wait). A plain [`get`](crate::Cache::get) finds the
//!   tags in the envelope and reads their state in a second round trip. A plain entry (no
//!   envelope: stored before its function had tags, by `set`, by the Python library) read by a
//!   call that names tags counts as created at time 0: any invalidation of those tags covers it.
//! - **`set_nx`**: an entry a plain [`get`](crate::Cache::get) reads as a miss (hard- or
//!   soft-invalidated) counts as absent. A key found taken comes back with its bytes in the same
//!   round trip ([`CacheRepository::set_nx_or_get`](crate::CacheRepository::set_nx_or_get):
//!   `SET .. NX GET`); a tagged entry's tags' state is then read (the same judgement as `get`),
//!   and a hidden entry replaced with a compare-and-set on exactly the bytes read
//!   ([`CacheRepository::set_if_equal`](crate::CacheRepository::set_if_equal): one `EVAL` on one
//!   key on Redis and Cluster; the trait's default refuses), so another writer's value is never
//!   overwritten (`Cache::claim`). Safe because hiding only grows: the entry's creation time is
//!   in its bytes, and a tag's state only moves later (short of its key being removed or
//!   evicted).
//! - **Errors**: a failed read of the tags' state is told as the operation that read them, of
//!   the entry's key (`Cache::read_failed_for`), and an invalidation's failure as the method's,
//!   of the tag (`failed_tags`): never as a `get_many` or write of a tag's state key.
//! - **Near cache** (issue 14): tag state keys live under the tracked prefix, so they are kept
//!   locally like any key, their absence included (`near/store.rs`), and invalidated by Redis when
//!   a tag is invalidated (or its key created) anywhere. A tagged read whose entry and states are
//!   all local makes no round trip; the rest is read in one and kept (the dispatch point's
//!   `Near` arm, `Backend::get_with_tags` and `Backend::get_tag_states`). A local entry judged
//!   fresh keeps the verdict for the next read with the same tags until a tag state changes
//!   (`near/store.rs`, "Verified tagged entries").
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{shown, shown_many};
use crate::key::{KeyBatch, TAG_KEY_PART};

/// The tags of one call (`get_or_set(..).tags(..)`, `#[cached(tags = ..)]`). A plain list, not
/// a shared one: a hit builds it and drops it, and only a miss (its job) or a near cache's
/// verdict copies it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tags(Vec<String>);

impl Tags {
    /// The tags given, in order, without duplicates.
    pub(crate) fn new<I>(tags: I) -> Tags
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags = tags.into_iter();
        let mut list: Vec<String> = Vec::with_capacity(tags.size_hint().0);
        for tag in tags {
            let tag = tag.as_ref();
            if !list.iter().any(|known| known == tag) {
                list.push(tag.to_owned());
            }
        }
        Tags(list)
    }

    /// [`new`](Tags::new) of tags already owned (`#[cached]`'s, built from its templates), kept
    /// without copying them.
    pub(crate) fn from_owned(mut tags: Vec<String>) -> Tags {
        let mut kept = 0;
        for i in 0..tags.len() {
            if !tags[..kept].contains(&tags[i]) {
                tags.swap(kept, i);
                kept += 1;
            }
        }
        tags.truncate(kept);
        Tags(tags)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// These tags, then those of `more` not among them.
    pub(crate) fn and<T: AsRef<str>>(&self, more: &[T]) -> Tags {
        if more.is_empty() {
            return self.clone();
        }
        let more = more.iter().map(|tag| tag.as_ref());
        Tags::new(self.as_slice().iter().map(String::as_str).chain(more))
    }
}

/// What the allocator takes per allocation besides the bytes asked for, as [`heap_bytes`]
/// counts it: a rough figure, not an exact one. glibc's malloc adds an 8 B header and rounds to
/// 16 B (8–23 B more per allocation of 24 B or more; up to 31 B for a tag of 1 B, its chunks
/// being 32 B at least); other allocators round to size classes instead.
const ALLOCATION_SLACK_BYTES: usize = 16;

/// The heap a [`Tags`] holding `tags` takes: its list's buffer (one `String` per tag) and each
/// tag's bytes, each allocation counted with [`ALLOCATION_SLACK_BYTES`]. A clone of a `Tags`
/// allocates exactly that much (no spare capacity), so this is what a copy kept by a near
/// cache's verdict costs (`near/store.rs`, `VerdictSlot::keep`).
pub(crate) fn heap_bytes<T: AsRef<str>>(tags: &[T]) -> usize {
    if tags.is_empty() {
        return 0;
    }
    let list = tags.len() * std::mem::size_of::<String>() + ALLOCATION_SLACK_BYTES;
    tags.iter().fold(list, |bytes, tag| {
        bytes + tag.as_ref().len() + ALLOCATION_SLACK_BYTES
    })
}

/// The tags a loader chose from its value (`get_or_set(..).tags_from(..)`): set by the loader's
/// wrapper once the value is there, read by the load that stores it. A tag may then depend on
/// what was loaded (the organisation a user belongs to, say), which a caller cannot know before
/// the loader runs (HybridCache #6897).
#[derive(Clone, Debug, Default)]
pub(crate) struct LoadedTags(Arc<std::sync::Mutex<Vec<String>>>);

impl LoadedTags {
    /// Records tags of the loaded value (each `tags_from` of the call adds its own).
    pub(crate) fn add<I>(&self, tags: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut recorded = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recorded.extend(tags.into_iter().map(Into::into));
    }

    /// The tags recorded; none before the value is there.
    pub(crate) fn get(&self) -> Vec<String> {
        let recorded = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recorded.clone()
    }
}

/// Which invalidation of a tag a repository records in the tag's state
/// ([`CacheRepository::mark_tag`](crate::CacheRepository::mark_tag)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TagInvalidation {
    /// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag): the tag's entries created at or
    /// before it are misses.
    Hard,
    /// [`Cache::soft_invalidate_tag`](crate::Cache::soft_invalidate_tag): they are stale.
    Soft,
}

impl TagInvalidation {
    /// The name the Redis script takes (`commands::MARK_TAG_SCRIPT`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TagInvalidation::Hard => "hard",
            TagInvalidation::Soft => "soft",
        }
    }
}

/// The state keys of `tags`, in order (`{prefix}:__impcache_tag:{tag}`: no version, see the
/// module docs): in one buffer, since a tagged read builds them on every call.
pub(crate) fn state_keys<T: AsRef<str>>(prefix: &str, tags: &[T]) -> KeyBatch {
    let fixed = prefix.len() + TAG_KEY_PART.len() + 1;
    let size: usize = tags.iter().map(|tag| fixed + tag.as_ref().len()).sum();
    let mut keys = KeyBatch::with_capacity(size, tags.len());
    for tag in tags {
        keys.push_parts([prefix, ":", TAG_KEY_PART, tag.as_ref()]);
    }
    keys
}

/// The tag an invalidation's error is about, for its message: `subject`, the state key the
/// repository's error names (as [`shown`] or [`shown_many`] show it: `{prefix}:__impcache_tag:a`,
/// `… and 2 more`), with that key replaced by its tag of `tags`; all of `tags` when it names
/// none of their keys (a user repository's own error).
pub(crate) fn failed_tags(prefix: &str, tags: &[String], subject: &str) -> String {
    let keys = state_keys(prefix, tags);
    for (tag, key) in tags.iter().zip(keys.keys()) {
        let Some(rest) = subject.strip_prefix(shown(key).as_str()) else {
            continue;
        };
        // Not the key of a longer tag that begins with this one.
        if rest.is_empty() || rest.starts_with(" and ") {
            return format!("{}{rest}", shown(tag));
        }
    }
    shown_many(tags)
}

/// The time (a tag stamp, [`stamp_micros`]) of the latest tag invalidation, hard or soft, a
/// [`Cache`](crate::Cache) sent, shared by its clones and `with_version` copies. A waiter on a
/// tagged load that cannot read the tags' state (the cache failing) knows of these all the same
/// (`freshness/load.rs`, `Shared::holds_for`). One time for all tags is bounded; its cost, a
/// waiter turned away by an invalidation of another tag, is one load of its own. The latest
/// hard one apart: only a hard invalidation turns a waiter away from a failed load
/// (`Holds::failure_holds_for`).
#[derive(Debug, Default)]
pub(crate) struct SentInvalidations {
    any: AtomicU64,
    hard: AtomicU64,
}

impl SentInvalidations {
    /// Records an invalidation of `kind` stamped `at`, before it is sent: it may land even when
    /// the call reports an error.
    pub(crate) fn record(&self, kind: TagInvalidation, at: u64) {
        self.any.fetch_max(at, Ordering::Relaxed);
        if kind == TagInvalidation::Hard {
            self.hard.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// Whether an invalidation stamped at or after `since` was sent (or is being sent).
    pub(crate) fn any_since(&self, since: u64) -> bool {
        self.any.load(Ordering::Relaxed) >= since
    }

    /// The time of the latest hard invalidation sent (0: none).
    pub(crate) fn latest_hard(&self) -> u64 {
        self.hard.load(Ordering::Relaxed)
    }
}

/// The separator of the hard and soft times in a tag's state (`{hard};{soft}`).
const SOFT_SEPARATOR: u8 = b';';

/// A tag's state after an invalidation of `kind` at `at` (decimal µs) on top of `old`: each
/// time the later of the one `old` holds and, for its kind, `at`, so an invalidation stamped
/// earlier than one already recorded (another process's, delayed on its way) never replaces it;
/// the soft time is dropped once the hard time covers it (every entry it made stale is gone).
/// What [`CacheRepository::mark_tag`] writes; the Redis script (`commands::MARK_TAG_SCRIPT`)
/// does the same in Lua.
///
/// [`CacheRepository::mark_tag`]: crate::CacheRepository::mark_tag
pub(crate) fn marked(old: Option<&[u8]>, kind: TagInvalidation, at: &[u8]) -> Bytes {
    let old = old.unwrap_or_default();
    let (mut hard, mut soft) = split_state(old);
    let later = |time: &[u8], than: &[u8]| match (decimal(time), decimal(than)) {
        (Some(time), Some(than)) => time > than,
        (time, _) => time.is_some(),
    };
    match kind {
        TagInvalidation::Hard if later(at, hard) => hard = at,
        TagInvalidation::Soft if later(at, soft) => soft = at,
        _ => {}
    }
    // `later` is false for a soft part that is not a time (none yet, or unreadable).
    let keeps_soft = later(soft, hard);
    let mut state = Vec::with_capacity(hard.len() + 1 + soft.len());
    state.extend_from_slice(hard);
    if keeps_soft {
        state.push(SOFT_SEPARATOR);
        state.extend_from_slice(soft);
    }
    Bytes::from(state)
}

/// The hard and soft parts of a tag's state, as written (`{hard}`, `{hard};{soft}`, `;{soft}`).
fn split_state(state: &[u8]) -> (&[u8], &[u8]) {
    let mut parts = state.splitn(2, |&byte| byte == SOFT_SEPARATOR);
    let hard = parts.next().unwrap_or_default();
    (hard, parts.next().unwrap_or_default())
}

/// A time in a tag's state (decimal µs), if it reads as one.
fn decimal(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
}

/// The hard and soft times in a tag's state (`None` where absent or unreadable).
fn parse_state(state: &[u8]) -> (Option<u64>, Option<u64>) {
    let (hard, soft) = split_state(state);
    (decimal(hard), decimal(soft))
}

/// Now, in µs since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A time for an entry's creation or a tag's invalidation: the clock (µs since the epoch), but
/// later than every stamp taken before it in this process. An entry written right after an
/// invalidation (within the same microsecond, or after the clock stepped back) is then newer
/// than it, as its order says; across processes only the clocks order them (see the module docs
/// on skew).
pub fn stamp_micros() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_micros();
    // `fetch_update` with a closure that always returns `Some` cannot fail.
    let last = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    now.max(last.saturating_add(1))
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
    let covers = |at: u64| created <= at.saturating_add(skew);
    let mut stale_since = None;
    for state in states.iter().flatten() {
        let (hard, soft) = parse_state(state);
        if hard.is_some_and(covers) {
            return Verdict::Gone;
        }
        if let Some(soft) = soft.filter(|&soft| covers(soft)) {
            stale_since = stale_since.max(Some(soft));
        }
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

    fn soft(old: Option<Bytes>, micros: u64) -> Option<Bytes> {
        let at = micros.to_string();
        Some(marked(old.as_deref(), TagInvalidation::Soft, at.as_bytes()))
    }

    #[test]
    fn stamps_are_strictly_increasing_and_near_the_clock() {
        // Many stamps per microsecond: `now_micros` alone would repeat.
        let mut last = stamp_micros();
        for _ in 0..10_000 {
            let stamp = stamp_micros();
            assert!(stamp > last, "{stamp} after {last}");
            last = stamp;
        }
        // It runs ahead of the clock only by the stamps taken within one microsecond.
        assert!(last <= now_micros() + 10_000);
        // An invalidation stamped before a creation does not cover it.
        let invalidated = stamp_micros();
        let created = stamp_micros();
        assert_eq!(
            verdict(created, &[at(invalidated)], Duration::ZERO),
            Verdict::Fresh
        );
    }

    #[test]
    fn the_latest_invalidation_decides() {
        let none = Duration::ZERO;
        assert_eq!(verdict(10, &[None, None], none), Verdict::Fresh);
        assert_eq!(verdict(10, &[at(9), None], none), Verdict::Fresh);
        assert_eq!(verdict(10, &[at(10), None], none), Verdict::Gone);
        assert_eq!(
            verdict(10, &[soft(None, 12)], none),
            Verdict::Stale { since: 12 }
        );
        // A soft invalidation keeps the hard time: still gone.
        assert_eq!(verdict(10, &[soft(at(11), 12)], none), Verdict::Gone);
        // A hard time before the entry and a soft one after it: stale.
        assert_eq!(
            verdict(10, &[soft(at(9), 12)], none),
            Verdict::Stale { since: 12 }
        );
        // A hard invalidation of any tag wins over a soft one of another.
        assert_eq!(
            verdict(10, &[soft(None, 12), at(11), None], none),
            Verdict::Gone
        );
        // The latest soft invalidation of the tags is the one counted.
        assert_eq!(
            verdict(10, &[soft(None, 12), soft(at(3), 15)], none),
            Verdict::Stale { since: 15 }
        );
        // The skew allowance widens each invalidation.
        assert_eq!(
            verdict(10, &[at(9), None], Duration::from_micros(1)),
            Verdict::Gone
        );
        assert_eq!(
            verdict(10, &[soft(None, 9)], Duration::from_micros(1)),
            Verdict::Stale { since: 9 }
        );
        // Unreadable state is ignored.
        let junk = Some(Bytes::from_static(b"x"));
        assert_eq!(verdict(10, &[junk, None], none), Verdict::Fresh);
        let junk = Some(Bytes::from_static(b"x;y"));
        assert_eq!(verdict(10, &[junk], none), Verdict::Fresh);
    }

    /// The Redis script (`commands::MARK_TAG_SCRIPT`) is held to the same table by
    /// `tests/tags.rs`, `every_repository_keeps_the_later_invalidation`.
    #[test]
    fn each_invalidation_keeps_the_later_time_of_its_kind() {
        use TagInvalidation::{Hard, Soft};
        let cases: [(Option<&str>, TagInvalidation, &str, &str); 14] = [
            (None, Soft, "5", ";5"),
            (Some("3"), Soft, "5", "3;5"),
            (Some("3;4"), Soft, "5", "3;5"),
            (Some(";4"), Soft, "5", ";5"),
            // An earlier soft time landing later is not kept.
            (Some("3;6"), Soft, "5", "3;6"),
            // A soft time the hard one covers is dropped.
            (Some("7"), Soft, "5", "7"),
            (None, Hard, "5", "5"),
            (Some("3"), Hard, "5", "5"),
            // An earlier hard time landing later is not kept.
            (Some("6"), Hard, "5", "6"),
            (Some("6;8"), Hard, "5", "6;8"),
            (Some("3;4"), Hard, "5", "5"),
            (Some("3;9"), Hard, "5", "5;9"),
            (Some(";9"), Hard, "10", "10"),
            // Unreadable state is replaced.
            (Some("x;y"), Hard, "5", "5"),
        ];
        for (old, kind, at, state) in cases {
            let new = marked(old.map(str::as_bytes), kind, at.as_bytes());
            assert_eq!(new, state, "{old:?} {kind:?} {at}");
        }
        assert_eq!(parse_state(b"3;5"), (Some(3), Some(5)));
        assert_eq!(parse_state(b";5"), (None, Some(5)));
        assert_eq!(parse_state(b"3"), (Some(3), None));
    }

    #[test]
    fn an_invalidation_error_names_the_tag_not_its_state_key() {
        let tags = ["user:4".to_owned(), "user:42".to_owned()];
        let failed = |subject: &str| failed_tags("p", &tags, subject);
        assert_eq!(failed("p:__impcache_tag:user:42"), "user:42");
        assert_eq!(failed("p:__impcache_tag:user:4"), "user:4");
        assert_eq!(
            failed("p:__impcache_tag:user:4 and 1 more"),
            "user:4 and 1 more"
        );
        // A subject naming none of the state keys: all the tags.
        assert_eq!(failed("somewhere else"), "user:4 and 1 more");
        let long = ["t".repeat(300)];
        let key = state_keys("p", &long).keys().concat();
        assert_eq!(failed_tags("p", &long, &shown(&key)), shown(&long[0]));
    }

    #[test]
    fn sent_invalidations_keep_the_latest() {
        let sent = SentInvalidations::default();
        assert!(!sent.any_since(1));
        sent.record(TagInvalidation::Hard, 10);
        sent.record(TagInvalidation::Hard, 5);
        assert!(sent.any_since(10));
        assert!(!sent.any_since(11));
        // The latest hard one apart.
        sent.record(TagInvalidation::Soft, 20);
        assert!(sent.any_since(20));
        assert_eq!(sent.latest_hard(), 10);
    }

    #[test]
    fn tag_keys_have_no_version_and_are_deduplicated() {
        let tags = Tags::new(["a", "b", "a"]);
        assert_eq!(tags.as_slice(), ["a", "b"]);
        let owned = ["b", "a", "b", "c", "a"].map(str::to_owned);
        assert_eq!(Tags::from_owned(owned.to_vec()).as_slice(), ["b", "a", "c"]);
        let keys = state_keys("p", tags.as_slice());
        assert_eq!(keys.keys(), ["p:__impcache_tag:a", "p:__impcache_tag:b"]);
        assert!(Tags::new(Vec::<String>::new()).is_empty());
    }
}
