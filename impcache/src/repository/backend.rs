//! The one dispatch point between [`Cache`](crate::Cache) and its repository.
//!
//! Every operation of `Cache` makes a single call into a [`Backend`], chosen once when the cache
//! is built. The built-in in-memory and single-node Redis repositories are called directly (no
//! boxed future, and for the memory repository no future at all); any other repository (Sentinel,
//! Cluster, or one written by a user) goes through the [`CacheRepository`] trait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::failure::Failed;
use super::memory::MemoryCacheRepository;
use super::redis::RedisCacheRepository;
use super::{BoxFuture, CacheRepository, SetNxOrGet, TagInvalidation, TaggedRead, WithTtl};
use crate::error::Result;
use crate::expire::Expiry;
use crate::key::KeyParts;
use crate::near::{Near, NearCache, Store, Target, VerdictSlot};
use crate::progress::{Report, Sweep};
use crate::tags::Tags;

/// How `Cache` reaches its repository.
///
/// Sentinel and Cluster have no arm of their own: their operations are not written as plain
/// `async fn`s (the boxed future of the trait is all they have), so an arm would call the same
/// boxed future.
///
#[derive(Debug)]
pub(crate) enum Backend {
    /// The in-memory repository: its operations are synchronous and called as such.
    Memory(MemoryCacheRepository),
    /// The single-node Redis repository: its operations are awaited without boxing them.
    Redis(RedisCacheRepository),
    /// Any other repository, through the trait.
    Custom(Arc<dyn CacheRepository>),
    /// A near cache (issue 14) in front of the Redis arm or the trait: reads are served from
    /// process memory when they can be, writes remove the local entry. Its remote calls are
    /// boxed (a miss costs a round trip anyway): the arm contains a `Backend`.
    Near(Box<Near<Backend>>),
}

/// The most keys one call to the repository carries for a batch (`get_many`, `set_many`,
/// `delete_many`): one round trip on a single node, one per node on a Cluster. A larger batch is
/// sent in calls of this many keys, one after another, each within the deadline, so that its size
/// alone does not time out on a healthy server (a timeout counts towards the circuit breaker:
/// five `get_many`s of 300,000 keys opened it for every caller, found by a probe), and the calls
/// of other tasks on the shared connection go between its round trips rather than wait behind
/// all of it. A frozen server still costs one deadline: the batch fails with its first call.
const BATCH_KEYS: usize = 10_000;

/// The most value bytes one call of a `set_many` carries (a larger value goes alone), for the
/// same reasons as [`BATCH_KEYS`].
const BATCH_BYTES: usize = 16 << 20;

/// How many of `entries` the next call of a `set_many` carries: at most [`BATCH_KEYS`], and
/// at most [`BATCH_BYTES`] of values unless the first value alone is larger.
fn set_batch_len(entries: &[(&str, Bytes)]) -> usize {
    let mut bytes = 0usize;
    let fit = entries
        .iter()
        .take(BATCH_KEYS)
        .take_while(|(_, value)| {
            bytes = bytes.saturating_add(value.len());
            bytes <= BATCH_BYTES
        })
        .count();
    fit.max(1)
}

impl Backend {
    /// `entries` stored, in calls of at most [`BATCH_KEYS`] keys and [`BATCH_BYTES`] of
    /// values, one after another; the first that fails fails the batch (the calls before it
    /// stay applied: a `set_many` is not atomic).
    pub(crate) async fn set_many(&self, entries: &[(&str, Bytes)], expiry: Expiry) -> Result<()> {
        let mut rest = entries;
        while !rest.is_empty() {
            let (batch, after) = rest.split_at(set_batch_len(rest));
            self.set_many_at_once(batch, expiry).await?;
            rest = after;
        }
        Ok(())
    }

    /// The values at `keys`, in calls of at most [`BATCH_KEYS`] keys, one after another. Each
    /// key is read once, so that a key listed twice gets one value (read in two round trips, its
    /// two places got two values while another client wrote it: found by a probe).
    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        if keys.len() <= BATCH_KEYS {
            return self.get_many_at_once(keys).await;
        }
        let mut place: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        let mut unique: Vec<&str> = Vec::with_capacity(keys.len());
        for key in keys {
            place.entry(*key).or_insert_with(|| {
                unique.push(key);
                unique.len() - 1
            });
        }
        let mut found = Vec::with_capacity(unique.len());
        for batch in unique.chunks(BATCH_KEYS) {
            found.extend(self.get_many_at_once(batch).await?);
        }
        let value = |key: &&str| {
            place
                .get(key)
                .and_then(|at| found.get(*at))
                .cloned()
                .flatten()
        };
        Ok(keys.iter().map(value).collect())
    }

    /// `keys` removed, in calls of at most [`BATCH_KEYS`] keys, one after another; the number
    /// removed.
    pub(crate) async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut removed = 0u64;
        for batch in keys.chunks(BATCH_KEYS) {
            removed = removed.saturating_add(self.delete_many_at_once(batch).await?);
        }
        Ok(removed)
    }
}

impl Backend {
    /// The backend for `repository`: its own arm if it is a built-in one (which it tells through
    /// [`CacheRepository::as_any`]), else the trait.
    pub(crate) fn of(repository: &Arc<dyn CacheRepository>) -> Backend {
        let any = repository.as_any();
        if let Some(memory) = any.and_then(|any| any.downcast_ref::<MemoryCacheRepository>()) {
            return Backend::Memory(memory.clone());
        }
        if let Some(redis) = any.and_then(|any| any.downcast_ref::<RedisCacheRepository>()) {
            return Backend::Redis(redis.clone());
        }
        Backend::Custom(Arc::clone(repository))
    }

    /// `self` behind a near cache, when the repository can track keys; the store either way (its
    /// status says `Unsupported` when it cannot).
    pub(crate) fn with_near(self, config: &NearCache, prefix: &str) -> (Backend, Arc<Store>) {
        let target = match &self {
            Backend::Redis(redis) => Ok(Target::Single(redis.clone())),
            Backend::Memory(_) => Err("the memory repository is in process already"),
            Backend::Custom(repository) => {
                Target::of(repository.as_any()).ok_or("a custom repository cannot track keys")
            }
            Backend::Near(_) => Err("a near cache is in front already"),
        };
        match target {
            Ok(target) => {
                let store = Arc::new(Store::new(
                    config,
                    target.deadline(),
                    target.slot_of(),
                    prefix,
                ));
                let near = Near::new(self, Arc::clone(&store), target, prefix);
                (Backend::Near(Box::new(near)), store)
            }
            Err(why) => {
                let store = Arc::new(Store::new(config, Duration::MAX, None, prefix));
                store.unsupported(why);
                (self, store)
            }
        }
    }

    /// Whether the repository keeps the value bytes it is given (in this process): then each
    /// value should get its own exact allocation rather than share a buffer with others.
    pub(crate) fn keeps_values(&self) -> bool {
        matches!(self, Backend::Memory(_))
    }

    pub(crate) async fn set(&self, key: KeyParts<'_>, value: Bytes, expiry: Expiry) -> Result<()> {
        match self {
            // The memory repository keeps the key: it gets it as an owned `String`.
            Backend::Memory(memory) => memory.set_now(key.owned(), value, expiry),
            Backend::Redis(redis) => redis
                .set_direct(key.stack().as_str(), value, expiry)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository.set(key.stack().as_str(), value, expiry).await
            }
            Backend::Near(near) => {
                near.track();
                let full = key.stack();
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.set(key, value, expiry)).await;
                write.written(result.is_ok());
                result
            }
        }
    }

    pub(crate) async fn set_nx(
        &self,
        key: KeyParts<'_>,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<bool> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => memory.set_nx_now(full.as_str(), value, expiry),
            Backend::Redis(redis) => redis
                .set_nx_direct(full.as_str(), value, expiry)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.set_nx(full.as_str(), value, expiry).await,
            Backend::Near(near) => {
                near.track();
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.set_nx(key, value, expiry)).await;
                write.written(matches!(result, Ok(true)));
                result
            }
        }
    }

    /// One call of a `set_many` ([`set_many`](Backend::set_many) splits larger ones).
    async fn set_many_at_once(&self, entries: &[(&str, Bytes)], expiry: Expiry) -> Result<()> {
        match self {
            Backend::Memory(memory) => memory.set_many_now(entries, expiry),
            Backend::Redis(redis) => redis
                .set_many_direct(entries, expiry)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.set_many(entries, expiry).await,
            Backend::Near(near) => {
                near.track();
                let keys = entries.iter().map(|(key, _)| key.as_bytes()).collect();
                let write = near.store.writing(keys);
                let result = Box::pin(near.remote.set_many(entries, expiry)).await;
                write.written(result.is_ok());
                result
            }
        }
    }

    pub(crate) async fn get(&self, key: KeyParts<'_>) -> Result<Option<Bytes>> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => Ok(memory.get_now(full.as_str())),
            Backend::Redis(redis) => redis
                .get_direct(full.as_str())
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.get(full.as_str()).await,
            Backend::Near(near) => {
                near.store.catch_up().await;
                if let Some(value) = near.store.get(full.as_str()) {
                    return Ok(Some(value));
                }
                near.ready().await;
                near.store.after_own_write(full.as_str()).await;
                let Some(ticket) = near.store.ticket(full.as_str()) else {
                    let found = Box::pin(near.remote.get(key)).await?;
                    near.store.replied(full.as_str());
                    return Ok(found);
                };
                // The `PTTL` in the same pipeline: the local entry never outlives the key.
                let found = Box::pin(near.remote.get_with_ttl(key)).await?;
                near.store
                    .settle(Some(ticket), full.as_str(), found.as_ref())
                    .await;
                Ok(found.map(|found| found.value))
            }
        }
    }

    // --- Freshness (issue 15). ---

    /// The bytes at `key` with the key's remaining TTL, in one round trip.
    pub(crate) async fn get_with_ttl(&self, key: KeyParts<'_>) -> Result<Option<WithTtl>> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => Ok(memory.get_with_ttl_now(full.as_str())),
            Backend::Redis(redis) => redis
                .get_with_ttl_direct(full.as_str())
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.get_with_ttl(full.as_str()).await,
            Backend::Near(near) => {
                near.store.catch_up().await;
                if let Some(found) = near.store.get_with_ttl(full.as_str()) {
                    return Ok(Some(found));
                }
                near.ready().await;
                near.store.after_own_write(full.as_str()).await;
                let ticket = near.store.ticket(full.as_str());
                let found = Box::pin(near.remote.get_with_ttl(key)).await?;
                near.store
                    .settle(ticket, full.as_str(), found.as_ref())
                    .await;
                Ok(found)
            }
        }
    }

    // --- One loader run across processes (issue 16). ---

    /// Removes `key` only if it holds `expected` (a lock's release by its owner).
    pub(crate) async fn delete_if_equal(&self, key: KeyParts<'_>, expected: Bytes) -> Result<bool> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => Ok(memory.delete_if_equal_now(full.as_str(), &expected)),
            Backend::Redis(redis) => redis
                .delete_if_equal_direct(full.as_str(), &expected)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository.delete_if_equal(full.as_str(), expected).await
            }
            // A write: the local copy goes at once, as for every write of this `Cache`.
            Backend::Near(near) => {
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.delete_if_equal(key, expected)).await;
                write.written(matches!(result, Ok(true)));
                result
            }
        }
    }

    // --- Tags (issue 16). ---

    /// Stores `value` at `key` only if it holds nothing, else the bytes it holds (`set_nx`,
    /// which judges a taken key's entry: `CacheRepository::set_nx_or_get`).
    pub(crate) async fn set_nx_or_get(
        &self,
        key: KeyParts<'_>,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<SetNxOrGet> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => memory.set_nx_or_get_now(full.as_str(), value, expiry),
            Backend::Redis(redis) => redis
                .set_nx_or_get_direct(full.as_str(), value, expiry)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository.set_nx_or_get(full.as_str(), value, expiry).await
            }
            // A write: the local copy goes at once, as for every write of this `Cache`.
            Backend::Near(near) => {
                near.track();
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.set_nx_or_get(key, value, expiry)).await;
                write.written(matches!(result, Ok(SetNxOrGet::Stored)));
                result
            }
        }
    }

    /// Stores `value` at `key` only if it holds `expected` (`set_nx` over an entry its tags
    /// hide).
    pub(crate) async fn set_if_equal(
        &self,
        key: KeyParts<'_>,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<bool> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => {
                memory.set_if_equal_now(full.as_str(), &expected, value, expiry)
            }
            Backend::Redis(redis) => redis
                .set_if_equal_direct(full.as_str(), &expected, value, expiry)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository
                    .set_if_equal(full.as_str(), expected, value, expiry)
                    .await
            }
            // A write: the local copy goes at once, as for every write of this `Cache`.
            Backend::Near(near) => {
                near.track();
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.set_if_equal(key, expected, value, expiry)).await;
                write.written(matches!(result, Ok(true)));
                result
            }
        }
    }

    /// Through a near cache, without waiting, the local entry at `key` with its remaining Redis
    /// TTL when `with_ttl`, not counted ([`near_hit`](Backend::near_hit) counts it): for a call
    /// with `tags`, the value of a tagged entry already judged fresh against them
    /// ([`verified`](Backend::verified)). `None` without a near cache, when a lookup would first
    /// have to give the thread back ([`Store::catch_up`]), or when nothing (or no verdict) is
    /// held locally.
    ///
    /// [`Store::catch_up`]: crate::near::Store::catch_up
    pub(crate) fn near_now(
        &self,
        key: KeyParts<'_>,
        tags: &Tags,
        with_ttl: bool,
    ) -> Option<WithTtl> {
        let Backend::Near(near) = self else {
            return None;
        };
        if !near.store.caught_up() {
            return None;
        }
        let key = key.stack();
        if !tags.is_empty() {
            return near.store.verified(key.as_str(), tags, with_ttl).ok();
        }
        let found = near.store.peek_with_ttl(key.as_str())?;
        Some(if with_ttl {
            found
        } else {
            WithTtl::new(found.value, None)
        })
    }

    /// Counts a local entry of [`near_now`](Backend::near_now) that answered a read.
    pub(crate) fn near_hit(&self) {
        if let Backend::Near(near) = self {
            near.store.count_hit();
        }
    }

    /// Before a local lookup made outside this dispatch point ([`verified`](Self::verified)):
    /// see `Store::catch_up`.
    pub(crate) async fn catch_up(&self) {
        if let Backend::Near(near) = self {
            near.store.catch_up().await;
        }
    }

    /// Through a near cache, the local tagged entry at `key` already judged fresh against
    /// `tags`, no tag state having changed since; or, for a local tagged entry without such a
    /// verdict, where to keep one (`near/store.rs`, "Verified tagged entries").
    pub(crate) fn verified(
        &self,
        key: KeyParts<'_>,
        tags: &Tags,
        with_ttl: bool,
    ) -> Result<WithTtl, Option<VerdictSlot>> {
        match self {
            Backend::Near(near) => {
                let found = near.store.verified(key.stack().as_str(), tags, with_ttl)?;
                near.store.count_hit();
                Ok(found)
            }
            _ => Err(None),
        }
    }

    /// The entry at `key` and the bytes at each tag key, in one wait.
    pub(crate) async fn get_with_tags(
        &self,
        key: KeyParts<'_>,
        tag_keys: &[&str],
        with_ttl: bool,
    ) -> Result<TaggedRead> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => {
                Ok(memory.get_with_tags_now(full.as_str(), tag_keys, with_ttl))
            }
            Backend::Redis(redis) => redis
                .get_with_tags_direct(full.as_str(), tag_keys, with_ttl)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository
                    .get_with_tags(full.as_str(), tag_keys, with_ttl)
                    .await
            }
            // The entry and the tag states are served locally when all are (a state's absence
            // included); what is missing is read in one round trip and kept, under the race
            // rule and the barrier as for any read (the entry with its `PTTL`, to be kept).
            Backend::Near(near) => {
                let strip = |found: WithTtl| {
                    if with_ttl {
                        found
                    } else {
                        WithTtl::new(found.value, None)
                    }
                };
                near.store.catch_up().await;
                if let Some(found) = near.store.get_with_ttl(full.as_str()) {
                    let states = self.get_tag_states(tag_keys).await?;
                    return Ok((Some(strip(found)), states));
                }
                near.ready().await;
                near.store.after_own_write(full.as_str()).await;
                let states = LocalStates::of(&near.store, tag_keys);
                let ticket = near.store.ticket_for(1 + states.missing.len());
                let (found, fetched) =
                    Box::pin(near.remote.get_with_tags(key, &states.missing, true)).await?;
                let entry = Some((full.as_str(), found.as_ref()));
                near.store
                    .settle_tagged(ticket, entry, &states.missing, &fetched)
                    .await;
                Ok((found.map(strip), states.filled(fetched)))
            }
        }
    }

    /// `member` added to the member list at `key` (see `crate::members`).
    pub(crate) async fn add_member(
        &self,
        key: KeyParts<'_>,
        member: &str,
        expiry: Expiry,
    ) -> Result<()> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => memory.add_member_now(full.as_str(), member, expiry),
            Backend::Redis(redis) => redis
                .add_member_direct(full.as_str(), member, expiry)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository.add_member(full.as_str(), member, expiry).await
            }
            Backend::Near(near) => {
                near.track();
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.add_member(key, member, expiry)).await;
                // Whether the script changed the list is not known: no echo is expected.
                write.written(false);
                result
            }
        }
    }

    /// Tags' invalidations of `kind` at `at` in their state keys `keys` (each time the later of
    /// the recorded one and `at`: `CacheRepository::mark_tag`): on single-node Redis in one
    /// round trip, through a user repository (Sentinel, Cluster) one `mark_tag` per key, all at
    /// once (`mark_all_at_once`).
    pub(crate) async fn mark_tags(
        &self,
        keys: &[&str],
        kind: TagInvalidation,
        at: Bytes,
    ) -> Result<()> {
        // Nothing to send (redis-rs refuses an empty pipeline).
        if keys.is_empty() {
            return Ok(());
        }
        match self {
            Backend::Memory(memory) => keys
                .iter()
                .try_for_each(|key| memory.mark_tag_now(key, kind, &at)),
            Backend::Redis(redis) => redis
                .mark_tags_direct(keys, kind, &at)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => mark_all_at_once(repository, keys, kind, at).await,
            Backend::Near(near) => {
                near.track();
                let write = near
                    .store
                    .writing(keys.iter().map(|key| key.as_bytes()).collect());
                let result = Box::pin(near.remote.mark_tags(keys, kind, at)).await;
                // Whether the script changed the state is not known: no echo is expected.
                write.written(false);
                result
            }
        }
    }

    /// The bytes at each tag state key (`None` where absent): [`get_many`](Backend::get_many),
    /// and through a near cache each state, or its absence, is kept locally like any key.
    pub(crate) async fn get_tag_states(&self, tag_keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let Backend::Near(near) = self else {
            return self.get_many(tag_keys).await;
        };
        let states = LocalStates::of(&near.store, tag_keys);
        if states.missing.is_empty() {
            return Ok(states.filled(Vec::new()));
        }
        near.ready().await;
        let ticket = near.store.ticket_for(states.missing.len());
        let fetched = Box::pin(near.remote.get_many(&states.missing)).await?;
        near.store
            .settle_tagged(ticket, None, &states.missing, &fetched)
            .await;
        Ok(states.filled(fetched))
    }

    /// One call of a `get_many` ([`get_many`](Backend::get_many) splits larger ones).
    async fn get_many_at_once(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        match self {
            Backend::Memory(memory) => Ok(memory.get_many_now(keys)),
            Backend::Redis(redis) => redis
                .get_many_direct(keys)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.get_many(keys).await,
            Backend::Near(near) => {
                // Local keys served, one `MGET` for the rest.
                near.store.catch_up().await;
                // Each key looked up once, so that a key listed twice gets one value: an
                // invalidation landing between two lookups would give its places two.
                let mut local: HashMap<&str, Option<Bytes>> = HashMap::with_capacity(keys.len());
                let mut missing: Vec<&str> = Vec::new();
                for key in keys {
                    local.entry(*key).or_insert_with(|| {
                        let value = near.store.get(key);
                        if value.is_none() {
                            missing.push(key);
                        }
                        value
                    });
                }
                let in_order = |local: &HashMap<&str, Option<Bytes>>| {
                    keys.iter()
                        .map(|key| local.get(key).cloned().flatten())
                        .collect()
                };
                if missing.is_empty() {
                    return Ok(in_order(&local));
                }
                near.ready().await;
                // Active: the values with their TTLs, so that the replies are kept as any
                // read's (the local entry never outlives the key). Single node: the `MGET`
                // pipelined with each key's `PTTL`; Sentinel and Cluster through the trait.
                let with_ttl = match &near.remote {
                    _ if !near.store.active() => None,
                    Backend::Redis(redis) => Some(Box::pin(async {
                        redis
                            .get_many_with_ttl_direct(&missing)
                            .await
                            .map_err(Failed::into_error)
                    })
                        as BoxFuture<'_, Result<Vec<Option<WithTtl>>>>),
                    Backend::Custom(repository) => repository.get_many_with_ttl(&missing),
                    _ => None,
                };
                let fetched = match with_ttl {
                    Some(read) => {
                        // Before the read is sent (its future is lazy): see `Store::ticket_for`.
                        let ticket = near.store.ticket_for(missing.len());
                        let found = read.await?;
                        near.store.settle_each(ticket, &missing, &found).await;
                        found
                            .into_iter()
                            .map(|found| found.map(|found| found.value))
                            .collect()
                    }
                    // A repository that reads no TTLs: its replies are not kept.
                    None => {
                        let remote = &near.remote;
                        let ticket = near.store.ticket_for(missing.len());
                        let fetched = Box::pin(remote.get_many(&missing)).await?;
                        near.store.settle_many(ticket, &missing).await;
                        fetched
                    }
                };
                local.extend(missing.iter().copied().zip(fetched));
                Ok(in_order(&local))
            }
        }
    }

    pub(crate) async fn delete(&self, key: KeyParts<'_>) -> Result<u64> {
        let full = key.stack();
        match self {
            Backend::Memory(memory) => Ok(memory.delete_now(full.as_str())),
            Backend::Redis(redis) => redis
                .delete_direct(full.as_str())
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.delete(full.as_str()).await,
            Backend::Near(near) => {
                near.track();
                let write = near.store.writing(vec![full.as_str().as_bytes()]);
                let result = Box::pin(near.remote.delete(key)).await;
                write.written(matches!(result, Ok(1..)));
                result
            }
        }
    }

    /// One call of a `delete_many` ([`delete_many`](Backend::delete_many) splits larger ones).
    async fn delete_many_at_once(&self, keys: &[&str]) -> Result<u64> {
        match self {
            Backend::Memory(memory) => Ok(memory.delete_many_now(keys)),
            Backend::Redis(redis) => redis
                .delete_many_direct(keys)
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => repository.delete_many(keys).await,
            Backend::Near(near) => {
                near.track();
                let write = near
                    .store
                    .writing(keys.iter().map(|key| key.as_bytes()).collect());
                let result = Box::pin(near.remote.delete_many(keys)).await;
                // Every key changed only when each one was removed (a repeated key counts once).
                let all = u64::try_from(keys.len()).unwrap_or(u64::MAX);
                write.written(matches!(result, Ok(removed) if removed == all));
                result
            }
        }
    }

    pub(crate) async fn delete_pattern(&self, pattern: &str, report: Report<'_>) -> Result<u64> {
        match self {
            Backend::Memory(memory) => Ok(memory.delete_pattern_now(pattern, report)),
            Backend::Redis(redis) => redis
                .delete_pattern_direct(pattern, &Sweep::new(report))
                .await
                .map_err(Failed::into_error),
            Backend::Custom(repository) => {
                repository
                    .delete_pattern_with_progress(pattern, report)
                    .await
            }
            Backend::Near(near) => {
                near.track();
                // When the sweep ends, or its future is dropped midway (keys it removed are
                // gone locally either way).
                let _flush = near.store.flush_when_dropped();
                Box::pin(near.remote.delete_pattern(pattern, report)).await
            }
        }
    }
}

/// Tag states as the near cache knows them: each one's local state (`Some(None)`: known absent)
/// and the keys it does not know, in order.
struct LocalStates<'a> {
    states: Vec<Option<Option<Bytes>>>,
    missing: Vec<&'a str>,
}

impl<'a> LocalStates<'a> {
    fn of(store: &Store, tag_keys: &[&'a str]) -> LocalStates<'a> {
        let states: Vec<_> = tag_keys.iter().map(|key| store.get_state(key)).collect();
        let missing = tag_keys
            .iter()
            .zip(&states)
            .filter(|(_, state)| state.is_none())
            .map(|(key, _)| *key)
            .collect();
        LocalStates { states, missing }
    }

    /// Every state, the missing ones taken from `fetched` (their values, in order).
    fn filled(self, fetched: Vec<Option<Bytes>>) -> Vec<Option<Bytes>> {
        let mut fetched = fetched.into_iter();
        self.states
            .into_iter()
            .map(|state| state.unwrap_or_else(|| fetched.next().flatten()))
            .collect()
    }
}

/// [`Backend::mark_tags`] through a user repository: one `mark_tag` per key, all sent at once,
/// so an invalidation of several tags waits for one round trip rather than one per tag (on
/// Cluster the keys live on several nodes; on Sentinel the connection pipelines them). Every
/// mark is sent even when one fails; the first error is returned.
async fn mark_all_at_once(
    repository: &Arc<dyn CacheRepository>,
    keys: &[&str],
    kind: TagInvalidation,
    at: Bytes,
) -> Result<()> {
    let marks = keys
        .iter()
        .map(|key| repository.mark_tag(key, kind, at.clone()));
    futures_util::future::join_all(marks)
        .await
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::BoxFuture;

    #[test]
    fn a_set_many_call_carries_at_most_ten_thousand_keys_and_sixteen_mib() {
        let entries = |sizes: &[usize]| -> Vec<(&'static str, Bytes)> {
            sizes
                .iter()
                .map(|size| ("k", Bytes::from(vec![0; *size])))
                .collect()
        };
        let mib = 1 << 20;
        assert_eq!(set_batch_len(&entries(&[1; 25_000])), BATCH_KEYS);
        assert_eq!(set_batch_len(&entries(&[mib; 20])), 16);
        assert_eq!(set_batch_len(&entries(&[20 * mib, 1])), 1);
        assert_eq!(set_batch_len(&entries(&[10 * mib, 10 * mib])), 1);
        assert_eq!(set_batch_len(&entries(&[1, 2])), 2);
    }

    /// A user repository: here, one that delegates to the memory repository. With a barrier, a
    /// read waits at it first: `n` reads in flight at once pass it, reads made one after another
    /// never do.
    #[derive(Debug)]
    struct Wrapped(MemoryCacheRepository, Option<tokio::sync::Barrier>);

    impl Wrapped {
        fn new() -> Wrapped {
            Wrapped(MemoryCacheRepository::new(), None)
        }

        fn gathering(n: usize) -> Wrapped {
            Wrapped(
                MemoryCacheRepository::new(),
                Some(tokio::sync::Barrier::new(n)),
            )
        }
    }

    impl CacheRepository for Wrapped {
        fn set<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
            expiry: Expiry,
        ) -> BoxFuture<'a, Result<()>> {
            self.0.set(key, value, expiry)
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
                if let Some(barrier) = &self.1 {
                    barrier.wait().await;
                }
                self.0.get(key).await
            })
        }
        fn get_many<'a>(
            &'a self,
            keys: &'a [&'a str],
        ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
            self.0.get_many(keys)
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

    #[test]
    fn each_repository_gets_its_arm_even_behind_a_shared_trait_object() -> Result<()> {
        let memory: Arc<dyn CacheRepository> = Arc::new(MemoryCacheRepository::new());
        assert!(matches!(Backend::of(&memory), Backend::Memory(_)));
        // Nothing is connected until the first operation.
        let redis = RedisCacheRepository::new("redis://127.0.0.1:1/")?;
        let redis: Arc<dyn CacheRepository> = Arc::new(redis);
        assert!(matches!(Backend::of(&redis), Backend::Redis(_)));
        let custom: Arc<dyn CacheRepository> = Arc::new(Wrapped::new());
        let backend = Backend::of(&custom);
        assert!(
            matches!(&backend, Backend::Custom(repository) if Arc::ptr_eq(repository, &custom)),
            "a user repository goes through the trait, got {backend:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_memory_arm_deletes_directly() -> Result<()> {
        let memory = MemoryCacheRepository::new();
        let backend = Backend::Memory(memory.clone());
        let parts = |key| KeyParts {
            prefix: "p",
            version: "1",
            key,
        };
        for key in ["a", "b", "c", "d"] {
            backend
                .set(parts(key), Bytes::from_static(b"1"), Expiry::Never)
                .await?;
        }
        assert_eq!(backend.delete(parts("a")).await?, 1);
        assert_eq!(backend.delete(parts("a")).await?, 0);
        assert_eq!(backend.delete_many(&["p:1:b", "p:1:x"]).await?, 1);
        let mut reports = Vec::new();
        let removed = backend
            .delete_pattern("p:1:*", &mut |p| reports.push(p))
            .await?;
        assert_eq!(removed, 2);
        assert_eq!(reports.len(), 1);
        assert_eq!((reports[0].matched, reports[0].removed), (2, 2));
        assert_eq!(memory.get_now("p:1:c"), None);
        Ok(())
    }

    /// The trait's default invalidation (a read, then a write) keeps the later time of each
    /// kind, as the built-in repositories' atomic ones do.
    #[tokio::test]
    async fn every_arm_keeps_the_later_invalidation() -> Result<()> {
        use TagInvalidation::{Hard, Soft};
        let memory = MemoryCacheRepository::new();
        let custom: Arc<dyn CacheRepository> = Arc::new(Wrapped::new());
        for backend in [Backend::Memory(memory), Backend::of(&custom)] {
            let marks: [(TagInvalidation, &'static [u8]); 5] = [
                (Soft, b"5"),
                (Hard, b"7"),
                (Hard, b"6"),
                (Soft, b"9"),
                (Soft, b"8"),
            ];
            for (kind, at) in marks {
                backend
                    .mark_tags(&["s"], kind, Bytes::from_static(at))
                    .await?;
            }
            let states = backend.get_many(&["s"]).await?;
            assert_eq!(states, [Some(Bytes::from_static(b"7;9"))], "{backend:?}");
        }
        Ok(())
    }

    /// Through a user repository (Sentinel, Cluster), the tags of one invalidation are marked
    /// all at once: one wait, not one per tag. Here each mark's read (the trait's default
    /// `mark_tag`) waits until the three are in flight, which marks sent in turn never are.
    #[tokio::test]
    async fn a_user_repository_marks_all_the_tags_at_once() -> Result<()> {
        let custom: Arc<dyn CacheRepository> = Arc::new(Wrapped::gathering(3));
        let backend = Backend::of(&custom);
        let keys = ["s1", "s2", "s3"];
        let marked = backend.mark_tags(&keys, TagInvalidation::Hard, Bytes::from_static(b"7"));
        let marked = tokio::time::timeout(Duration::from_secs(10), marked).await;
        assert!(marked.is_ok(), "the marks were sent one after another");
        marked.ok().transpose()?;
        let states = custom.get_many(&keys).await?;
        assert_eq!(states, vec![Some(Bytes::from_static(b"7")); 3]);
        Ok(())
    }
}
