//! The embedded in-memory repository, built on [moka](https://docs.rs/moka).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::commands::SCAN_BATCH;
use super::{BoxFuture, CacheRepository, SetNxOrGet, TagInvalidation, TaggedRead, WithTtl};
use crate::error::{shown, Error, Result};
use crate::expire::Expiry;
use crate::glob::glob_match;
use crate::key::LocalKeyHasher;
use crate::progress::{DeleteProgress, Report};

/// Default capacity: 256 MiB of keys and values.
pub const DEFAULT_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes counted for each entry on top of its key and value: moka's own bookkeeping with a
/// per-entry expiry, measured at 372 heap bytes per entry over 1 M entries (BENCHMARKS.md,
/// "Memory per entry", the row of this shape), so that the bound holds for the heap. The near
/// cache counts the same (`near/weight.rs`).
const ENTRY_OVERHEAD_BYTES: usize = 384;

/// An in-process repository: the default for tests, single-instance services and local
/// development, with the same semantics as the Redis repository.
///
/// - every entry has its own TTL (`SET .. EX`), and expired entries are never returned;
/// - capacity is bounded by bytes (keys + values); when full, the least recently used entries are
///   evicted (moka's LRU policy), as Redis does under `allkeys-lru`: a write is always kept, and
///   recent writes and reads survive. (moka's default, TinyLFU, may refuse a new key that is not
///   yet popular: a `set` that returned `Ok` would be gone at once.)
/// - `set_nx` is atomic per key, and so are `set_nx_or_get` (the bytes of a taken key read with
///   the refused write: [`CacheRepository::set_nx_or_get`]) and the compare-and-set that replaces
///   a tagged entry its tags hide ([`CacheRepository::set_if_equal`]);
/// - `delete_pattern` uses exactly Redis's glob rules (a port of Redis's matcher).
///
/// Clones share the same entries.
///
/// ```
/// use impcache::{Cache, MemoryCacheRepository};
///
/// let repository = MemoryCacheRepository::builder().max_capacity_bytes(64 * 1024 * 1024).build();
/// let cache = Cache::new(repository);
/// # let _ = cache;
/// ```
#[derive(Clone)]
pub struct MemoryCacheRepository {
    entries: moka::sync::Cache<String, Entry, LocalKeyHasher>,
    max_value_bytes: usize,
}

#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Option<Duration>,
    written: WrittenAt,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        entry.written.record(created_at);
        entry.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        entry.written.record(updated_at);
        entry.ttl
    }
}

// --- Freshness (issue 15): when an entry was written, for its remaining TTL. ---

/// The instant all [`WrittenAt`]s count from.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// When an entry was written, in nanoseconds since [`ORIGIN`]: set by the expiry callbacks with
/// moka's own timestamp of the write (no clock read of ours on a `set`), read by
/// [`MemoryCacheRepository::get_with_ttl_now`]. An atomic because moka hands the callbacks a
/// shared reference to the entry it stores.
#[derive(Default)]
struct WrittenAt(AtomicU64);

impl WrittenAt {
    fn record(&self, at: Instant) {
        // Seconds and nanoseconds apart rather than `as_nanos` (a u128): cheaper on every write,
        // and 2^64 ns is 584 years.
        let since = at.saturating_duration_since(*ORIGIN);
        let nanos = since
            .as_secs()
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(since.subsec_nanos()));
        self.0.store(nanos, Ordering::Relaxed);
    }

    fn get(&self) -> Instant {
        *ORIGIN + Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl Clone for WrittenAt {
    fn clone(&self) -> Self {
        WrittenAt(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl MemoryCacheRepository {
    /// The bytes at `key` and the entry's remaining time to live.
    pub(crate) fn get_with_ttl_now(&self, key: &str) -> Option<WithTtl> {
        let entry = self.entries.get(key)?;
        let ttl = entry.ttl.map(|ttl| {
            let age = entry.written.get().elapsed();
            ttl.saturating_sub(age)
        });
        Some(WithTtl::new(entry.value, ttl))
    }

    /// The entry (with its TTL when `with_ttl`) and the bytes at each tag key.
    pub(crate) fn get_with_tags_now(
        &self,
        key: &str,
        tag_keys: &[&str],
        with_ttl: bool,
    ) -> TaggedRead {
        let entry = if with_ttl {
            self.get_with_ttl_now(key)
        } else {
            self.get_now(key).map(|value| WithTtl::new(value, None))
        };
        (entry, self.get_many_now(tag_keys))
    }
}

impl MemoryCacheRepository {
    /// A repository holding at most [`DEFAULT_CAPACITY_BYTES`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures the capacity.
    pub fn builder() -> MemoryCacheRepositoryBuilder {
        MemoryCacheRepositoryBuilder {
            max_capacity_bytes: DEFAULT_CAPACITY_BYTES,
        }
    }

    /// The number of entries kept (approximate while writes are in flight). Entries that expired
    /// within about the last second may still count: moka's housekeeping removes them on a
    /// timer wheel of about one second, run by the repository's calls (they are never returned).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Bytes used by keys, values and per-entry overhead (approximate while writes are in flight;
    /// entries that expired within about the last second may still count, as for
    /// [`entry_count`](Self::entry_count)).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    fn entry(&self, key: &str, value: Bytes, expiry: Expiry) -> Result<Entry> {
        self.check_fits(key, &value)?;
        Ok(Entry {
            value,
            ttl: expiry.as_duration(),
            written: WrittenAt::default(),
        })
    }

    /// Whether an entry of `key` and `value` fits the capacity bound: moka would evict a
    /// heavier one at once, so a write that returned `Ok` would be gone.
    fn check_fits(&self, key: &str, value: &[u8]) -> Result<()> {
        let size = key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        if size > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: shown(key),
                size: value.len(),
                limit: self
                    .max_value_bytes
                    .saturating_sub(key.len() + ENTRY_OVERHEAD_BYTES),
            });
        }
        Ok(())
    }

    // The operations themselves, synchronous: `Cache` calls them directly (no boxed future, the
    // key moved in rather than copied), the `CacheRepository` impl wraps them in ready futures.

    pub(crate) fn get_now(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).map(|entry| entry.value)
    }

    pub(crate) fn set_now(&self, key: String, value: Bytes, expiry: Expiry) -> Result<()> {
        let entry = self.entry(&key, value, expiry)?;
        self.entries.insert(key, entry);
        Ok(())
    }

    pub(crate) fn set_nx_now(&self, key: &str, value: Bytes, expiry: Expiry) -> Result<bool> {
        let entry = self.entry(key, value, expiry)?;
        Ok(self
            .entries
            .entry_by_ref(key)
            .or_insert_with(|| entry)
            .is_fresh())
    }

    /// [`CacheRepository::set_nx_or_get`], atomic under the entry's lock: the value stored, or
    /// the live entry's bytes.
    pub(crate) fn set_nx_or_get_now(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<SetNxOrGet> {
        let entry = self.entry(key, value, expiry)?;
        let found = self.entries.entry_by_ref(key).or_insert_with(|| entry);
        Ok(if found.is_fresh() {
            SetNxOrGet::Stored
        } else {
            SetNxOrGet::Taken(Some(found.into_value().value))
        })
    }

    pub(crate) fn set_many_now(&self, entries: &[(&str, Bytes)], expiry: Expiry) -> Result<()> {
        // Check every entry first, so that a rejected one leaves nothing half-written.
        let checked = entries
            .iter()
            .map(|(key, value)| self.entry(key, value.clone(), expiry))
            .collect::<Result<Vec<_>>>()?;
        for ((key, _), entry) in entries.iter().zip(checked) {
            self.entries.insert((*key).to_owned(), entry);
        }
        Ok(())
    }

    pub(crate) fn get_many_now(&self, keys: &[&str]) -> Vec<Option<Bytes>> {
        keys.iter().map(|key| self.get_now(key)).collect()
    }

    pub(crate) fn delete_now(&self, key: &str) -> u64 {
        u64::from(self.remove_live(key))
    }

    /// Removes `key`, saying whether a live entry was there: moka's `remove` also returns an
    /// entry that has expired but is not evicted yet, which Redis would not count.
    fn remove_live(&self, key: &str) -> bool {
        self.remove_if(key, |_| true)
    }

    /// Compare-and-delete, atomic under the entry's lock.
    pub(crate) fn delete_if_equal_now(&self, key: &str, expected: &[u8]) -> bool {
        self.remove_if(key, |entry| entry.value == expected)
    }

    /// Compare-and-set ([`CacheRepository::set_if_equal`]), atomic under the entry's lock.
    pub(crate) fn set_if_equal_now(
        &self,
        key: &str,
        expected: &[u8],
        value: Bytes,
        expiry: Expiry,
    ) -> Result<bool> {
        let entry = self.entry(key, value, expiry)?;
        let stored = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|found| match found {
                Some(found) if found.value().value == expected => {
                    moka::ops::compute::Op::Put(entry)
                }
                _ => moka::ops::compute::Op::Nop,
            });
        Ok(matches!(
            stored,
            moka::ops::compute::CompResult::ReplacedWith(_)
        ))
    }

    /// Removes the live entry at `key` if `remove` says so, under the entry's lock; whether it
    /// was removed.
    fn remove_if(&self, key: &str, remove: impl FnOnce(&Entry) -> bool) -> bool {
        let removed = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|found| match found {
                Some(entry) if remove(entry.value()) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
        matches!(removed, moka::ops::compute::CompResult::Removed(_))
    }

    /// A tag's invalidation ([`CacheRepository::mark_tag`]), atomic under the entry's lock. No
    /// expiry, as every tag state.
    pub(crate) fn mark_tag_now(&self, key: &str, kind: TagInvalidation, at: &[u8]) -> Result<()> {
        let mut refused = Ok(());
        self.entries.entry_by_ref(key).and_compute_with(|found| {
            let old = found.as_ref().map(|entry| &entry.value().value[..]);
            let value = crate::tags::marked(old, kind, at);
            // An invalidation that cannot be kept is an error, not an `Ok` that is lost.
            if let Err(error) = self.check_fits(key, &value) {
                refused = Err(error);
                return moka::ops::compute::Op::Nop;
            }
            moka::ops::compute::Op::Put(Entry {
                value,
                ttl: None,
                written: WrittenAt::default(),
            })
        });
        refused
    }

    /// A member added to the list at `key` ([`CacheRepository::add_member`]), atomic under the
    /// entry's lock.
    pub(crate) fn add_member_now(&self, key: &str, member: &str, expiry: Expiry) -> Result<()> {
        let mut refused = Ok(());
        self.entries.entry_by_ref(key).and_compute_with(|found| {
            let old = found.map(|entry| {
                let entry = entry.into_value();
                let left = entry
                    .ttl
                    .map(|ttl| ttl.saturating_sub(entry.written.get().elapsed()));
                (entry.value, left)
            });
            let list = crate::members::with_member(old.as_ref().map(|(v, _)| &v[..]), member);
            if let Some((old, left)) = &old {
                if crate::members::unchanged(old, *left, &list, expiry) {
                    return moka::ops::compute::Op::Nop;
                }
            }
            if let Err(error) = self.check_fits(key, &list) {
                refused = Err(error);
                return moka::ops::compute::Op::Nop;
            }
            let expiry = crate::members::longer(old.map(|(_, left)| left), expiry);
            moka::ops::compute::Op::Put(Entry {
                value: list,
                ttl: expiry.as_duration(),
                written: WrittenAt::default(),
            })
        });
        refused
    }

    pub(crate) fn delete_many_now(&self, keys: &[&str]) -> u64 {
        keys.iter().filter(|key| self.remove_live(key)).count() as u64
    }

    /// Removes the matching keys in batches of [`SCAN_BATCH`], as a Redis sweep does, reporting
    /// each batch to `report`.
    pub(crate) fn delete_pattern_now(&self, pattern: &str, report: Report<'_>) -> u64 {
        let matching: Vec<_> = self
            .entries
            .iter()
            .filter(|(key, _)| glob_match(pattern.as_bytes(), key.as_bytes()))
            .map(|(key, _)| key)
            .collect();
        let mut progress = DeleteProgress::default();
        for batch in matching.chunks(SCAN_BATCH) {
            let removed = batch.iter().filter(|key| self.remove_live(key)).count();
            progress.add_batch(batch.len() as u64, removed as u64);
            report(progress);
        }
        progress.removed
    }
}

impl Default for MemoryCacheRepository {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryCacheRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheRepository")
            .field("entry_count", &self.entry_count())
            .field("weighted_size", &self.weighted_size())
            .field("max_capacity_bytes", &self.entries.policy().max_capacity())
            .finish()
    }
}

/// Builds a [`MemoryCacheRepository`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryCacheRepositoryBuilder {
    max_capacity_bytes: u64,
}

impl MemoryCacheRepositoryBuilder {
    /// The most bytes (keys + values + 384 bytes per entry, moka's bookkeeping) kept before
    /// evicting; a single entry larger than this is refused with [`Error::ValueTooLarge`].
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.max_capacity_bytes = bytes;
        self
    }

    /// Builds the repository.
    pub fn build(self) -> MemoryCacheRepository {
        // Before any entry is written: every write's instant is after it.
        LazyLock::force(&ORIGIN);
        let entries = moka::sync::Cache::builder()
            .max_capacity(self.max_capacity_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.value.len() + ENTRY_OVERHEAD_BYTES)
                    .unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(LocalKeyHasher::default());
        // moka weighs entries with a u32, so no single entry can exceed 4 GiB.
        let max_value_bytes =
            usize::try_from(self.max_capacity_bytes.min(u64::from(u32::MAX))).unwrap_or(usize::MAX);
        MemoryCacheRepository {
            entries,
            max_value_bytes,
        }
    }
}

impl CacheRepository for MemoryCacheRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        let result = self.set_now(key.to_owned(), value, expiry);
        Box::pin(async move { result })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        let result = self.set_nx_now(key, value, expiry);
        Box::pin(async move { result })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        // Called through the trait, the values of one call may share one buffer (see the trait's
        // docs): each is copied, so that a kept value does not hold the whole buffer. (`Cache`
        // calls `set_many_now` directly with values of their own.)
        let copies: Vec<(&str, Bytes)> = entries
            .iter()
            .map(|(key, value)| (*key, Bytes::copy_from_slice(value)))
            .collect();
        let result = self.set_many_now(&copies, expiry);
        Box::pin(async move { result })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        let value = self.get_now(key);
        Box::pin(async move { Ok(value) })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        let values = self.get_many_now(keys);
        Box::pin(async move { Ok(values) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        let removed = self.delete_now(key);
        Box::pin(async move { Ok(removed) })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        let removed = self.delete_many_now(keys);
        Box::pin(async move { Ok(removed) })
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        let removed = self.delete_pattern_now(pattern, &mut |_| {});
        Box::pin(async move { Ok(removed) })
    }

    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        let removed = self.delete_pattern_now(pattern, progress);
        Box::pin(async move { Ok(removed) })
    }

    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<WithTtl>>> {
        let found = self.get_with_ttl_now(key);
        Box::pin(async move { Ok(found) })
    }

    fn delete_if_equal<'a>(&'a self, key: &'a str, expected: Bytes) -> BoxFuture<'a, Result<bool>> {
        let removed = self.delete_if_equal_now(key, &expected);
        Box::pin(async move { Ok(removed) })
    }

    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        let result = self.set_nx_or_get_now(key, value, expiry);
        Box::pin(std::future::ready(result))
    }

    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        let result = self.set_if_equal_now(key, &expected, value, expiry);
        Box::pin(std::future::ready(result))
    }

    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a str,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        let result = self.add_member_now(key, member, expiry);
        Box::pin(std::future::ready(result))
    }

    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: TagInvalidation,
        at: Bytes,
    ) -> BoxFuture<'a, Result<()>> {
        let result = self.mark_tag_now(key, kind, &at);
        Box::pin(std::future::ready(result))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full repository keeps what was just written, as Redis's `allkeys-lru` does: moka's
    /// default TinyLFU admission refused new keys that were not yet "popular" and kept the first
    /// ~500 keys ever written instead (issue 12, item 14).
    #[test]
    fn recent_writes_survive_next_to_the_capacity_bound() -> Result<()> {
        const CAPACITY: u64 = 1024 * 1024;
        let repository = MemoryCacheRepository::builder()
            .max_capacity_bytes(CAPACITY)
            .build();
        let value = Bytes::from(vec![b'x'; 2000]);
        let write = |key: String| repository.set_now(key, value.clone(), Expiry::Never);
        for i in 0..1000 {
            write(format!("old:{i}"))?;
        }
        repository.entries.run_pending_tasks();
        assert!(repository.weighted_size() <= CAPACITY);
        write("fresh".to_owned())?;
        repository.entries.run_pending_tasks();
        for i in 0..100 {
            write(format!("new:{i}"))?;
        }
        repository.entries.run_pending_tasks();
        assert!(
            repository.get_now("fresh").is_some(),
            "the fresh write is gone"
        );
        let missing: Vec<_> = (0..100)
            .filter(|i| repository.get_now(&format!("new:{i}")).is_none())
            .collect();
        assert!(missing.is_empty(), "recent writes gone: {missing:?}");
        assert!(
            repository.get_now("old:0").is_none(),
            "the oldest was evicted"
        );
        let used = repository.weighted_size();
        assert!(used <= CAPACITY, "{used} bytes used");
        assert!(used > CAPACITY * 9 / 10, "{used} bytes used: not full");
        Ok(())
    }

    /// Values given through the trait's `set_many` may share one buffer (as `Cache` packs them
    /// for other repositories): each is kept as a copy, so that a small value does not hold a
    /// whole buffer alive while weighing only its own bytes.
    #[test]
    fn values_set_through_the_trait_are_kept_as_copies() -> Result<()> {
        use futures_util::FutureExt;

        let repository = MemoryCacheRepository::new();
        let buffer = Bytes::from_static(b"12");
        let entries = [("a", buffer.slice(0..1)), ("b", buffer.slice(1..2))];
        let written =
            CacheRepository::set_many(&repository, &entries, Expiry::Never).now_or_never();
        assert!(matches!(written, Some(Ok(()))), "{written:?}");
        let buffer_bytes = buffer.as_ptr_range();
        for key in ["a", "b"] {
            let kept = repository.get_now(key).unwrap_or_default();
            assert_eq!(kept.len(), 1, "{key}");
            assert!(
                !buffer_bytes.contains(&kept.as_ptr()),
                "{key} is kept in the caller's buffer"
            );
        }
        Ok(())
    }

    /// A tag's invalidation (or a member list) that cannot fit the capacity bound is refused:
    /// moka would evict it at once, and the invalidation would be lost behind an `Ok`.
    #[test]
    fn state_writes_heavier_than_the_bound_are_refused() -> Result<()> {
        let repository = MemoryCacheRepository::builder()
            .max_capacity_bytes(400)
            .build();
        let marked = repository.mark_tag_now("p:__impcache_tag:t", TagInvalidation::Hard, b"17");
        assert!(
            matches!(marked, Err(Error::ValueTooLarge { .. })),
            "{marked:?}"
        );
        let added = repository.add_member_now("p:members", &"m".repeat(64), Expiry::Never);
        assert!(
            matches!(added, Err(Error::ValueTooLarge { .. })),
            "{added:?}"
        );
        let roomy = MemoryCacheRepository::new();
        roomy.mark_tag_now("p:__impcache_tag:t", TagInvalidation::Hard, b"17")?;
        assert_eq!(
            roomy.get_now("p:__impcache_tag:t"),
            Some(Bytes::from_static(b"17"))
        );
        Ok(())
    }

    /// A sweep counts only entries alive when it removes them, as Redis does: one that expired
    /// after the sweep listed it (moka keeps it until its housekeeping) is not "removed".
    #[test]
    fn a_sweep_does_not_count_an_entry_that_expired_meanwhile() -> Result<()> {
        let repository = MemoryCacheRepository::new();
        // One batch and one more entry (which, the order being moka's, is not known), all
        // expiring while the first batch is reported.
        for i in 0..=SCAN_BATCH {
            let expiry = Expiry::Milliseconds(200);
            repository.set_now(format!("k{i}"), Bytes::from_static(b"1"), expiry)?;
        }
        let mut reports = 0;
        let removed = repository.delete_pattern_now("*", &mut |_| {
            reports += 1;
            if reports == 1 {
                std::thread::sleep(std::time::Duration::from_millis(400));
            }
        });
        assert_eq!(reports, 2, "two batches");
        assert_eq!(removed, SCAN_BATCH as u64);
        Ok(())
    }

    /// An entry weighs its key, its value and the measured bookkeeping; `Debug` shows the
    /// counts as the accessors do (after moka's pending work).
    #[test]
    fn weight_and_debug_count_what_was_written() -> Result<()> {
        let repository = MemoryCacheRepository::new();
        repository.set_now(
            "key".to_owned(),
            Bytes::from_static(b"value"),
            Expiry::Never,
        )?;
        repository.set_now("other".to_owned(), Bytes::from_static(b"1"), Expiry::Never)?;
        let shown = format!("{repository:?}");
        assert!(shown.contains("entry_count: 2"), "{shown}");
        assert_eq!(
            repository.weighted_size(),
            (3 + 5 + ENTRY_OVERHEAD_BYTES + 5 + 1 + ENTRY_OVERHEAD_BYTES) as u64
        );
        Ok(())
    }
}
