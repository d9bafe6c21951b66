//! Where entries live: the [`CacheRepository`] trait and its four implementations: in memory
//! ([`memory`]), one Redis server ([`redis`]), Redis behind Sentinel (`sentinel`, feature
//! `sentinel`) and Redis Cluster (`cluster`, feature `cluster`).
//!
//! A repository stores opaque bytes under full keys (`{prefix}:{version}:{key}`, already built by
//! [`Cache`](crate::Cache)). It knows nothing of JSON or key layout, so adding a backend means
//! implementing these eight operations. [`Cache`](crate::Cache) calls every repository through
//! one crate-private dispatch point (`backend.rs`), which calls the memory and single-node Redis
//! repositories directly and any other one through the trait.
//!
//! The three Redis repositories share, one file each: the call policy (`call.rs`: breaker
//! admission, probe guard, deadline, one more attempt, the outcome told to the breaker; each
//! repository gives its hooks), the failure kinds (`failure.rs`: a `redis` error read once into
//! a kind, and the [`Error`](crate::Error) reported for it), the circuit breaker ([`breaker`]),
//! the connection strings (`dsn.rs`: checks, redaction, `scrub`), the settings and their
//! defaults (`settings.rs`) and the commands sent (`commands.rs`).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;
use crate::expire::Expiry;
use crate::progress::DeleteProgress;
pub use crate::tags::TagInvalidation;

pub(crate) mod backend;
pub mod breaker;
pub(crate) mod call;
#[cfg(feature = "cluster")]
pub mod cluster;
pub(crate) mod commands;
pub(crate) mod dsn;
pub(crate) mod failure;
pub mod memory;
pub mod redis;
#[cfg(feature = "sentinel")]
pub mod sentinel;
pub(crate) mod settings;
#[cfg(any(feature = "sentinel", feature = "cluster"))]
pub(crate) mod switches;

/// A boxed, `Send` future: what [`CacheRepository`] methods return, so that the trait stays
/// object-safe (`Arc<dyn CacheRepository>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A storage backend for [`Cache`](crate::Cache).
///
/// Implementations must be cheap to share (`Cache` holds one in an `Arc`), apply the expiry to
/// every write atomically with the value, and return errors that name the key. Keys and patterns
/// arrive complete: `delete_pattern` gets a Redis glob whose prefix and version are already escaped.
pub trait CacheRepository: Debug + Send + Sync + 'static {
    /// Stores `value` at `key`, replacing any previous value and its expiry.
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>>;

    /// Stores `value` at `key` only if the key holds nothing; `true` when it was stored.
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Stores every pair, each with the same expiry; one round trip where the backend allows it.
    /// A `Cache` calls it with at most 10,000 pairs and 16 MiB of values (a larger value alone):
    /// a larger batch comes in several calls, one after another.
    ///
    /// The values of one call may share an allocation (they are encoded into a few buffers): a
    /// repository that keeps them in memory should keep copies (`Bytes::copy_from_slice`).
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>>;

    /// The bytes at `key`, `None` when nothing is stored.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>>;

    /// The bytes at each key, in the order of `keys` (at most 10,000 of them from a `Cache`, see
    /// [`set_many`](CacheRepository::set_many)).
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>>;

    /// Removes `key`; the number of keys removed (0 or 1).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>>;

    /// Removes every key; the number of keys removed (at most 10,000 keys from a `Cache`, see
    /// [`set_many`](CacheRepository::set_many)).
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>>;

    /// Removes every key matching the Redis glob `pattern`; the number of keys removed.
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>>;

    /// [`delete_pattern`](CacheRepository::delete_pattern), calling `progress` with the totals so
    /// far after each batch; when it fails after removing keys, the error is
    /// [`Error::Interrupted`](crate::Error::Interrupted) with the count removed.
    ///
    /// The default calls `delete_pattern` and reports once, at the end (one batch, every key
    /// removed counted as matched): a repository that sweeps in batches overrides it, and may
    /// then implement `delete_pattern` as this with a callback that does nothing.
    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let removed = self.delete_pattern(pattern).await?;
            let mut done = DeleteProgress::default();
            done.add_batch(removed, removed);
            progress(done);
            Ok(removed)
        })
    }

    // --- Freshness (issue 15): the value with its remaining TTL. ---

    /// The bytes at `key` with the key's remaining time to live, in one round trip (on Redis a
    /// pipelined `GET` + `PTTL`): what [`Cache::get_or_set`](crate::Cache::get_or_set) reads to
    /// tell a fresh entry from a stale one. The TTL is `None` when the key has no expiry, or
    /// when the repository cannot tell.
    ///
    /// The default calls [`get`](CacheRepository::get) and reports no TTL: every entry then
    /// reads as fresh, so stale serving and early refresh never trigger on that repository.
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<WithTtl>>> {
        Box::pin(async move {
            Ok(self
                .get(key)
                .await?
                .map(|value| WithTtl { value, ttl: None }))
        })
    }

    // --- One loader run across processes (issue 16). ---

    /// Removes `key` only if it holds exactly `expected`; `true` when it was removed. This is how
    /// a lock taken with [`set_nx`](CacheRepository::set_nx) and a random token is released by
    /// its owner alone (see [`Lock`](crate::Lock)): on Redis one `EVAL` of a compare-and-delete
    /// script, atomic and on one key (so it works on Cluster).
    ///
    /// The default reads, compares and deletes in two calls: not atomic (a lock that expires
    /// and is taken by another owner between the two is removed all the same, and a second
    /// loader run may follow). A repository shared between processes should override it.
    fn delete_if_equal<'a>(&'a self, key: &'a str, expected: Bytes) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.get(key).await? {
                Some(found) if found == expected => Ok(self.delete(key).await? > 0),
                _ => Ok(false),
            }
        })
    }

    // --- Tags (issue 16): an entry and its tags' state together. ---

    /// The bytes at `key` (with its remaining TTL when `with_ttl`, else a TTL of `None`) and the
    /// bytes at each of `tag_keys`, in their order: what a tagged read needs, in one wait. On
    /// single-node Redis one `MGET` (with the TTL, `GET` + `PTTL` + `MGET` pipelined); the default
    /// sends the two reads concurrently (on Cluster the tag keys live on other slots than the
    /// entry).
    fn get_with_tags<'a>(
        &'a self,
        key: &'a str,
        tag_keys: &'a [&'a str],
        with_ttl: bool,
    ) -> BoxFuture<'a, Result<TaggedRead>> {
        Box::pin(async move {
            let entry = async {
                if with_ttl {
                    self.get_with_ttl(key).await
                } else {
                    Ok(self
                        .get(key)
                        .await?
                        .map(|value| WithTtl { value, ttl: None }))
                }
            };
            let (entry, states) = tokio::join!(entry, self.get_many(tag_keys));
            Ok((entry?, states?))
        })
    }

    /// Stores `value` at `key` with `expiry` only if the key holds nothing, as
    /// [`set_nx`](CacheRepository::set_nx) does; when the key is taken, nothing is stored and
    /// the bytes it holds come back ([`SetNxOrGet::Taken`]). This is how
    /// [`Cache::set_nx`](crate::Cache::set_nx) learns, with the write itself, whether a key it
    /// could not claim holds a tagged entry its tags hide (which counts as nothing stored). On
    /// Redis 7.0 and later one `SET key value NX GET` (with `EX`/`PX`), atomic and on one key
    /// (so on Cluster too); in memory atomic under the entry's lock. A server that refuses `NX`
    /// with `GET` (`ERR syntax error`: Redis before 7.0) gets the two calls of the default
    /// instead, from then on: the repository remembers it (and logs it once, at `INFO`).
    ///
    /// The default calls [`set_nx`](CacheRepository::set_nx), then, when the key was taken,
    /// [`get`](CacheRepository::get): two calls, between which the key may change (the bytes
    /// read are then those of a later write, or `Taken(None)` when the key was gone);
    /// a failure of the `get` is reported as one of the `set_nx`. Locks do not use this: they
    /// take their key with a plain [`set_nx`](CacheRepository::set_nx).
    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        Box::pin(set_nx_then_get(self, key, value, expiry))
    }

    /// Stores `value` at `key` with `expiry` only if the key holds exactly `expected`; `true`
    /// when it was stored. This is how [`Cache::set_nx`](crate::Cache::set_nx) claims a key
    /// whose tagged entry reads as a miss (a tag invalidated it): it replaces that entry and
    /// never a value another writer stored meanwhile. On Redis one `EVAL` of a compare-and-set
    /// script, atomic and on one key (so it works on Cluster); in memory atomic under the entry's
    /// lock.
    ///
    /// The default refuses (`Ok(false)`, nothing sent): a read then a write would not be atomic,
    /// and every one of several callers racing over one hidden entry would store and be told it
    /// claimed the key. So [`set_nx`](crate::Cache::set_nx) over a hidden entry of a repository
    /// that keeps this default returns `false`, as over any taken key, until the entry expires
    /// or is deleted. Override it with an atomic compare-and-set to let `set_nx` claim hidden
    /// entries.
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        let _ = (key, expected, value, expiry);
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Records an invalidation of a tag, of `kind`, at `at` (µs since the epoch, decimal), in its
    /// state key `key` (`{hard}`, `{hard};{soft}` or `;{soft}`, with no expiry): each time the
    /// key holds is replaced only by a later one of its kind, and the soft time is dropped once
    /// the hard one covers it (`tags::marked`). An invalidation stamped earlier than one
    /// already recorded (another process's, delayed on its way) then never undoes it, and a hard
    /// and a soft one racing are both kept. On Redis one `EVAL` of a script on the one key (so it
    /// works on Cluster); in memory atomic under the entry's lock.
    ///
    /// The default reads the key and writes it in two calls: not atomic (an invalidation landing
    /// between the two is lost: the entries it hid come back). A repository shared between
    /// processes should override it.
    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: TagInvalidation,
        at: Bytes,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let old = self.get(key).await?;
            let state = crate::tags::marked(old.as_deref(), kind, &at);
            self.set(key, state, Expiry::Never).await
        })
    }

    /// Adds `member` to the member list at `key` (each member followed by `\n`; past 64 members
    /// the list becomes `*\n`), which then lives at least `expiry` (forever once any addition
    /// asked for no expiry). On Redis one `EVAL` on the one key; in memory atomic under the
    /// entry's lock. Used by `impcache-tower` for its index of the hosts of a URL; not for use
    /// outside the impcache crates.
    ///
    /// The default reads the key and its TTL and writes it in two calls: not atomic (a member
    /// added by another process between the two is lost). A repository shared between processes
    /// should override it.
    #[doc(hidden)]
    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a str,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let old = self.get_with_ttl(key).await?;
            let list = crate::members::with_member(old.as_ref().map(|o| &o.value[..]), member);
            let expiry = crate::members::longer(old.map(|old| old.ttl), expiry);
            self.set(key, list, expiry).await
        })
    }

    /// The bytes at each key with its remaining TTL, in the order of `keys`, in one round trip
    /// (on Sentinel an `MGET` pipelined with each key's `PTTL`; on Cluster one script per slot):
    /// what a near cache keeps of a [`get_many`](CacheRepository::get_many), no longer than each
    /// key lives. `None` (the default): the repository cannot, and a near cache keeps nothing of
    /// its `get_many`. Not for use outside this crate.
    #[doc(hidden)]
    fn get_many_with_ttl<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> Option<BoxFuture<'a, Result<Vec<Option<WithTtl>>>>> {
        let _ = keys;
        None
    }

    /// Lets [`Cache`](crate::Cache) see which repository this is: the built-in in-memory and
    /// single-node Redis repositories return themselves, and are then called directly, without
    /// the boxed futures of this trait; every other repository keeps this default and is called
    /// through the trait. Not for use outside this crate.
    #[doc(hidden)]
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

// --- Tags (issue 16): `set_nx` over a tagged entry its tags hide. ---

/// What [`CacheRepository::set_nx_or_get`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetNxOrGet {
    /// The key held nothing: the value is stored.
    Stored,
    /// The key was taken: nothing is stored. The bytes it held, read by the same command on
    /// Redis 7.0+ and in memory; read by a second call otherwise, which finds `None` when the
    /// key was removed (or expired) in between.
    Taken(Option<Bytes>),
}

/// [`CacheRepository::set_nx_or_get`] in two calls: `set_nx`, then, when the key was taken, a
/// `get`, whose failure is told as the `set_nx`'s (the caller's operation, on the same key).
/// The trait's default, and what a Redis repository falls back to on a server that refuses
/// `NX` with `GET`.
pub(crate) async fn set_nx_then_get<R: CacheRepository + ?Sized>(
    repository: &R,
    key: &str,
    value: Bytes,
    expiry: Expiry,
) -> Result<SetNxOrGet> {
    if repository.set_nx(key, value, expiry).await? {
        return Ok(SetNxOrGet::Stored);
    }
    let found = repository
        .get(key)
        .await
        .map_err(|error| error.relabeled("set_nx", str::to_owned))?;
    Ok(SetNxOrGet::Taken(found))
}

// --- Freshness (issue 15). ---

/// Tags (issue 16): what [`CacheRepository::get_with_tags`] returns: the entry (with its TTL
/// when asked), and the bytes at each tag key, in order.
pub type TaggedRead = (Option<WithTtl>, Vec<Option<Bytes>>);

/// A value read with its key's remaining time to live ([`CacheRepository::get_with_ttl`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WithTtl {
    /// The stored bytes.
    pub value: Bytes,
    /// The key's remaining time to live; `None` when it has no expiry (or the repository cannot
    /// tell).
    pub ttl: Option<Duration>,
}

impl WithTtl {
    /// `value` with the remaining time to live `ttl`.
    pub fn new(value: Bytes, ttl: Option<Duration>) -> Self {
        WithTtl { value, ttl }
    }

    /// From a Redis `PTTL` reply: milliseconds left, `-1` for no expiry, `-2` when the key
    /// expired between the `GET` and the `PTTL` (read as no time left).
    pub(crate) fn from_pttl(value: Bytes, pttl: i64) -> Self {
        let ttl = match pttl {
            -1 => None,
            ms => Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        };
        WithTtl { value, ttl }
    }
}
