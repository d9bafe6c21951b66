//! [`Cache`]: the handle applications use, and its builder.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use metrics::Recorder;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{shown, shown_many, Error, Result};
use crate::expire::{Expire, Expiry};
use crate::flight;
use crate::json;
use crate::key::{full_key, full_pattern, KeyBatch, KeyParts, Version, LOCK_KEY_PART};
use crate::near::{NearCache, NearCacheStats, NearCacheStatus, Store as NearStore};
use crate::observe::hooks::{CachedFunction, CallOutcome};
use crate::observe::metrics::{Operation, Tally};
use crate::observe::stale::{stale_served, StaleReason};
use crate::observe::{CacheStats, Counters};
use crate::progress::{trace_progress, DeleteProgress};
use crate::repository::backend::Backend;
use crate::repository::{CacheRepository, SetNxOrGet};
use crate::tags::{self, envelope, TagInvalidation, Tags, Verdict};

/// Runs `$body`, the future of one operation's work (`Result<(T, Tally)>`), observed: inside the
/// operation's span, then counted in the stats and the metrics; evaluates to `Result<T>`. A
/// caller that drops the operation's future before it ends (a timeout around the call) has it
/// counted as cancelled, by the observation's drop guard.
///
/// A macro rather than an `async fn` taking the future: an `async fn` argument is copied into
/// the callee's state, a memcpy of the whole operation's future on every call (+200 instructions
/// on an in-memory `get`, op-cost).
///
/// `map: |value| ..` turns the body's value into the operation's (after the body, before the
/// counting: not in the body's future, which would grow by it), and `also: |value, recorder| ..`
/// records the caller's own metrics of a success in the same call into
/// the recorder (only when one is installed).
macro_rules! observed {
    ($cache:expr, $operation:expr, $key:expr, $body:expr) => {
        $crate::cache::observed!($cache, $operation, $key, $body, map: |value, _| value, also: |_, _| {})
    };
    // `map` turns what the body read into the caller's answer, and may count a key found as a
    // miss in its tally (`Tally::not_decoded`: a value the caller cannot use, whose loader runs).
    // `also` records the caller's own metrics in the same call into the recorder.
    ($cache:expr, $operation:expr, $key:expr, $body:expr, map: $map:expr, also: $also:expr) => {{
        // A cooperative yield point, as tokio's own resources are: local hits (the memory
        // repository, the near cache) complete without ever waiting, so a task looping over them
        // would otherwise never give its worker back, starving the runtime's other tasks (the near
        // cache's heartbeat and invalidations, the Redis connection's driver). Before the
        // operation, so a caller cancelled at this point has changed nothing.
        ::tokio::task::coop::consume_budget().await;
        let observation = $crate::observe::Observation::start(
            &$cache.shared.counters,
            $cache.shared.record_keys,
            $cache.shared.near.is_some(),
            $operation,
            $key,
        );
        // `$body` twice: awaited in place when no subscriber wants the span (moving the future
        // into `Instrumented` is a memcpy of it), instrumented otherwise.
        let result: $crate::Result<(_, $crate::observe::metrics::Tally)> =
            if observation.span().is_disabled() {
                $body.await
            } else {
                ::tracing::Instrument::instrument($body, observation.span().clone()).await
            };
        // A match, not `Result::map`s: the value is moved once (it may be a large decoded one).
        match result {
            Ok((value, mut tally)) => {
                let value = ($map)(value, &mut tally);
                observation.finish(Ok(&tally), |recorder| ($also)(&value, recorder));
                Ok(value)
            }
            Err(error) => {
                observation.finish(Err(&error), |_| {});
                Err(error)
            }
        }
    }};
}
/// For the load protocol's reads and writes in `crate::freshness`.
pub(crate) use observed;

/// What a write of the caller's reached, for `Cache::detaching`.
#[derive(Clone, Copy)]
enum Written<'a> {
    /// One key (the caller's part, without the prefix and version).
    Key(&'a str),
    /// Full keys.
    Full(&'a [&'a str]),
    /// A full `delete_pattern` glob.
    Pattern(&'a str),
}

/// How many times [`Cache::set_nx`] looks again at a key whose hidden tagged entry changed
/// under it (another writer's value, or another hidden entry, landed first) before it answers
/// `false`.
const CLAIM_ROUNDS: usize = 4;

/// The default key prefix, as in the Python library.
pub const DEFAULT_KEY_PREFIX: &str = "cache";

/// The default longest key (the caller's part): 64 KiB.
pub const DEFAULT_MAX_KEY_BYTES: usize = 64 * 1024;

/// A cache of JSON values under versioned keys, over a [`CacheRepository`].
///
/// Keys are stored as `{key_prefix}:{version}:{key}` and values as compact JSON, exactly as the
/// Python library `impcache` stores them, so services in both languages can share one Redis.
///
/// `Cache` is cheap to clone (two `Arc`s); clones share the repository and its connection.
///
/// # Table of contents
/// - [Building](#building)
/// - [Versions](#versions)
/// - [Expiry](#expiry)
/// - [Errors](#errors)
/// - [Observability](#observability)
///
/// # Building
/// ```
/// use impcache::{Cache, MemoryCacheRepository};
///
/// let cache = Cache::builder(MemoryCacheRepository::new())
///     .key_prefix("myapp")
///     .version(3)
///     .build();
/// assert_eq!(cache.make_key("user:1"), "myapp:3:user:1");
/// ```
///
/// # Versions
/// Every operation uses the cache's version; [`Cache::with_version`] gives a handle on another
/// version of the same repository and prefix (the Python library's per-call `version=`).
/// Bumping the version makes old entries unreachable but frees no memory until they expire.
///
/// # Expiry
/// Writes take an expiry in whole seconds (any integer) or a [`Duration`](std::time::Duration);
/// zero is refused with [`Error::InvalidExpire`]. Storing without expiry takes the explicit
/// [`Expire::NEVER`].
///
/// # Errors
/// Every method returns [`enum@Error`] naming the key and what went wrong; see
/// [`Error::is_backend_failure`] to tell an outage from bad input.
///
/// # Observability
/// Every operation is counted in [`Cache::stats`] (hits, misses, errors), recorded through the
/// [`metrics`](https://docs.rs/metrics) facade when a recorder is installed
/// (`impcache_operations_total`, `impcache_operation_duration_seconds`, ...; see
/// `OBSERVABILITY.md` and [`describe_metrics`](crate::describe_metrics)), and runs inside a
/// `DEBUG` span `cache_operation` (target `impcache`) with its `operation` and `outcome`; keys are
/// on the span only with [`CacheBuilder::record_keys`].
#[derive(Clone)]
pub struct Cache {
    pub(crate) shared: Arc<Shared>,
    pub(crate) version: Version,
}

pub(crate) struct Shared {
    /// What [`Cache::repository`] returns; operations go through `backend`.
    repository: Arc<dyn CacheRepository>,
    /// Every operation's single call into the repository.
    pub(crate) backend: Backend,
    key_prefix: String,
    /// Whether the prefix makes keys of another cache's tag state
    /// ([`is_reserved_prefix`](crate::key::is_reserved_prefix)).
    reserved_prefix: bool,
    max_key_bytes: usize,
    /// Whether operation spans carry the key.
    pub(crate) record_keys: bool,
    /// The counters of [`Cache::stats`], shared by clones and `with_version` copies.
    pub(crate) counters: Counters,
    /// The near cache's store, when one was configured (issue 14).
    pub(crate) near: Option<Arc<NearStore>>,
    /// Tags (issue 16): the clock-skew allowance of tag invalidations.
    pub(crate) tag_clock_skew: Duration,
    /// Tags: the latest invalidation this cache sent, for the waiters of a tagged load that
    /// cannot read the tags' state (`freshness/load.rs`, `Shared::holds_for`).
    pub(crate) invalidations_sent: tags::SentInvalidations,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("key_prefix", &self.shared.key_prefix)
            .field("version", &self.version)
            .field("repository", &self.shared.repository)
            .finish()
    }
}

/// Builds a [`Cache`]: prefix, version and key limit.
#[must_use]
pub struct CacheBuilder {
    repository: Arc<dyn CacheRepository>,
    key_prefix: String,
    version: Version,
    max_key_bytes: usize,
    record_keys: bool,
    near: Option<NearCache>,
    tag_clock_skew: Duration,
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("key_prefix", &self.key_prefix)
            .field("version", &self.version)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("record_keys", &self.record_keys)
            .field("near", &self.near)
            .field("tag_clock_skew", &self.tag_clock_skew)
            .field("repository", &self.repository)
            .finish()
    }
}

impl CacheBuilder {
    /// The prefix of every key (default `"cache"`). Keep it short: Redis stores it in every key.
    pub fn key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// The version of every key (default `1`): an integer or a string.
    pub fn version(mut self, version: impl Into<Version>) -> Self {
        self.version = version.into();
        self
    }

    /// The longest key accepted (the caller's part, default 64 KiB); longer keys are refused with
    /// [`Error::InvalidKey`], longer tags with [`Error::InvalidTag`].
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Whether each operation's `tracing` span records the key (the caller's part; the pattern
    /// of `delete_pattern`), and whether log events name it (a failed operation's message, a
    /// stale value served, `#[cached]`'s and `CacheLayer`'s warnings). Off by default: keys can
    /// be personal data; the events then carry the error's kind and cause, not the key.
    pub fn record_keys(mut self, record: bool) -> Self {
        self.record_keys = record;
        self
    }

    /// Keeps hot entries in process memory, kept coherent by Redis itself (see [`NearCache`]).
    /// On a repository that cannot track keys (the memory repository, a custom one) the cache
    /// runs without it, logs it once and reports [`NearCacheStatus::Unsupported`].
    pub fn near_cache(mut self, near: NearCache) -> Self {
        self.near = Some(near);
        self
    }

    /// Tags (issue 16): how far apart the clocks of the processes sharing this cache may be
    /// (default 0). Entries created up to this long after a tag's invalidation count as
    /// invalidated too, so an entry computed just before it on a host whose clock runs ahead is
    /// not served, the value of a load its callers wait for included: for this long after an
    /// invalidation, the waiters of a load take the next turn together (two loader runs for a
    /// burst of callers of a key). See the
    /// [`tags` section of the README](crate#tags) and `Cache::invalidate_tag`.
    pub fn tag_clock_skew(mut self, allowance: Duration) -> Self {
        self.tag_clock_skew = allowance;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        let backend = Backend::of(&self.repository);
        let (backend, near) = match &self.near {
            Some(config) => {
                let (backend, store) = backend.with_near(config, &self.key_prefix);
                (backend, Some(store))
            }
            None => (backend, None),
        };
        Cache {
            shared: Arc::new(Shared {
                backend,
                near,
                repository: self.repository,
                reserved_prefix: crate::key::is_reserved_prefix(&self.key_prefix),
                key_prefix: self.key_prefix,
                max_key_bytes: self.max_key_bytes,
                record_keys: self.record_keys,
                counters: Counters::default(),
                tag_clock_skew: self.tag_clock_skew,
                invalidations_sent: tags::SentInvalidations::default(),
            }),
            version: self.version,
        }
    }
}

impl Cache {
    /// A cache with the default prefix (`"cache"`) and version (`1`).
    pub fn new(repository: impl CacheRepository) -> Self {
        Self::builder(repository).build()
    }

    /// Configures a cache over `repository`.
    pub fn builder(repository: impl CacheRepository) -> CacheBuilder {
        Self::builder_shared(Arc::new(repository))
    }

    /// Configures a cache over a repository that is already shared.
    pub fn builder_shared(repository: Arc<dyn CacheRepository>) -> CacheBuilder {
        CacheBuilder {
            repository,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            version: Version::default(),
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            record_keys: false,
            near: None,
            tag_clock_skew: Duration::ZERO,
        }
    }

    /// The same repository and prefix, another version. Cheap: no connection is made.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// assert_eq!(cache.with_version("v2").make_key("k"), "cache:v2:k");
    /// ```
    pub fn with_version(&self, version: impl Into<Version>) -> Cache {
        Cache {
            shared: Arc::clone(&self.shared),
            version: version.into(),
        }
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.shared.key_prefix
    }

    /// The version.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Whether spans and log events name keys ([`CacheBuilder::record_keys`]).
    pub fn records_keys(&self) -> bool {
        self.shared.record_keys
    }

    /// The repository.
    pub fn repository(&self) -> &Arc<dyn CacheRepository> {
        &self.shared.repository
    }

    /// The hits, misses, errors, stale answers and cancelled operations counted so far by this
    /// cache, its clones and its [`with_version`](Cache::with_version) copies (see
    /// [`CacheStats`]). Cheap: five striped counters summed (40 relaxed atomic loads).
    pub fn stats(&self) -> CacheStats {
        self.shared.counters.snapshot()
    }

    /// Counts a value served past its expiry by the freshness policy: in the stats, the metric and
    /// at `DEBUG`.
    pub(crate) fn served_stale(&self, key: &str, reason: StaleReason) {
        self.shared.counters.served_stale();
        stale_served(reason);
        let key = self.logged_key(key);
        tracing::debug!(target: "impcache", key, reason = reason.name(), "served a stale value");
    }

    /// Whether reads of every key are served from the near cache now
    /// ([`NearCacheStatus::Active`]). `false` while it is [`NearCacheStatus::Partial`] (on
    /// Cluster, some primary has no tracking connection: its keys go to Redis, the others' are
    /// still served locally), as when it is connecting: ask
    /// [`near_cache_status`](Cache::near_cache_status) to tell the two apart.
    pub fn is_near_cache_active(&self) -> bool {
        self.near_cache_status() == NearCacheStatus::Active
    }

    /// The state of the near cache: [`NearCacheStatus::Off`] when none was configured.
    pub fn near_cache_status(&self) -> NearCacheStatus {
        self.shared
            .near
            .as_ref()
            .map_or(NearCacheStatus::Off, |store| store.status())
    }

    /// The near cache's counters (all zero when none was configured).
    pub fn near_cache_stats(&self) -> NearCacheStats {
        self.shared
            .near
            .as_ref()
            .map_or_else(NearCacheStats::default, |store| store.stats())
    }

    /// The full key for `key`: `{key_prefix}:{version}:{key}`.
    pub fn make_key(&self, key: &str) -> String {
        full_key(&self.shared.key_prefix, self.version.as_str(), key)
    }

    /// The full Redis glob for a `delete_pattern` pattern: prefix and version escaped, the
    /// pattern as given (checked for unclosed `[`).
    pub fn make_pattern(&self, pattern: &str) -> Result<String> {
        if self.reserved() {
            return Err(Error::InvalidPattern {
                pattern: shown(pattern),
                reason: self.why_reserved(),
            });
        }
        full_pattern(&self.shared.key_prefix, self.version.as_str(), pattern)
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<()> {
        if self.reserved() {
            return Err(Error::InvalidKey {
                key: shown(key),
                reason: self.why_reserved(),
            });
        }
        if key.len() > self.shared.max_key_bytes {
            return Err(Error::InvalidKey {
                key: shown(key),
                reason: format!(
                    "the key is {} bytes long, the limit is {} bytes",
                    key.len(),
                    self.shared.max_key_bytes
                ),
            });
        }
        Ok(())
    }

    /// [`check_key`](Self::check_key) for a write: keys starting `__lock:` hold the
    /// cross-process locks of loads, and a value written there would stand in a lock's place
    /// (reading or deleting one is allowed: a stuck lock can be looked at and removed).
    pub(crate) fn check_written_key(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        if key.starts_with(LOCK_KEY_PART) {
            return Err(Error::InvalidKey {
                key: shown(key),
                reason: format!(
                    "keys starting `{LOCK_KEY_PART}` are reserved for the cross-process locks of loads: not written"
                ),
            });
        }
        Ok(())
    }

    /// Whether this cache's keys would be tag state keys: its version's
    /// ([`Version::is_reserved`]) or its prefix's
    /// ([`is_reserved_prefix`](crate::key::is_reserved_prefix)). Operations refuse them.
    fn reserved(&self) -> bool {
        self.version.is_reserved() || self.shared.reserved_prefix
    }

    /// Why a reserved version or prefix ([`reserved`](Self::reserved)) is refused.
    #[cold]
    fn why_reserved(&self) -> String {
        if self.shared.reserved_prefix {
            return format!(
                "the key prefix `{}` is reserved: `{{prefix}}:__impcache_tag:{{tag}}` keys hold tags' state",
                self.shared.key_prefix
            );
        }
        format!(
            "the version `{}` is reserved: `{}:__impcache_tag:{{tag}}` keys hold tags' state",
            self.version, self.shared.key_prefix
        )
    }

    /// Checks a tag as every operation taking tags does: not empty, and no longer than a key
    /// may be (its state is a key).
    pub(crate) fn check_tag(&self, tag: &str) -> Result<()> {
        let invalid = |reason: String| Error::InvalidTag {
            tag: shown(tag),
            reason,
        };
        if tag.is_empty() {
            return Err(invalid("a tag cannot be empty".to_owned()));
        }
        if tag.len() > self.shared.max_key_bytes {
            return Err(invalid(format!(
                "the tag is {} bytes long, the limit is {} bytes (the cache's key limit)",
                tag.len(),
                self.shared.max_key_bytes
            )));
        }
        Ok(())
    }

    /// The parts of an operation's full key (the backend builds it as its repository needs).
    pub(crate) fn key_parts<'a>(&'a self, key: &'a str) -> KeyParts<'a> {
        KeyParts {
            prefix: &self.shared.key_prefix,
            version: self.version.as_str(),
            key,
        }
    }

    fn key_batch(&self, count: usize) -> KeyBatch {
        let each = self.shared.key_prefix.len() + self.version.as_str().len() + 24;
        KeyBatch::with_capacity(count.saturating_mul(each), count)
    }

    /// The full keys of `keys`, each checked, in one buffer.
    fn checked_keys<I>(&self, keys: I) -> Result<KeyBatch>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let keys = keys.into_iter();
        let mut batch = self.key_batch(keys.size_hint().0);
        for key in keys {
            let key = key.as_ref();
            self.check_key(key)?;
            batch.push(&self.shared.key_prefix, self.version.as_str(), key);
        }
        Ok(batch)
    }

    /// Runs the write that `write` makes, a write of the caller's that reaches `written`, ending
    /// this process's loads in flight (`get_or_set`'s and `#[cached]`'s single-flights) of those
    /// keys on both sides of it ([`crate::flight`]: detaching). Their waiters, who asked before,
    /// still get their leaders' answers, but:
    ///
    /// - a detached load stores nothing (its leader checks right before sending its store): its
    ///   value, computed before the write, would otherwise land after it and be served for the
    ///   whole expiry, the `delete` or `_invalidate` undone (found by a probe);
    /// - the caller's next call of such a key loads anew rather than join a load whose store is
    ///   still in progress and be handed the value the write replaced or removed (found by a
    ///   probe: on Redis, a `delete` then a call of the key got the deleted value without a run).
    ///
    /// Before the write is sent, so that a load ending while it is in flight (its reply not yet
    /// in) stores nothing: its store would land after the write. Again once the write is done,
    /// failed or not (it may have landed), before the caller is answered: a load begun meanwhile
    /// (by another caller) could read the old value before the write lands and hand it to the
    /// caller's next call.
    async fn detaching<F: Future>(
        &self,
        written: Written<'_>,
        write: impl FnOnce() -> F,
    ) -> F::Output {
        self.detach_flights(written);
        // Built here, in its place in this future: built by the caller, it was moved in (a copy
        // of the repository call's future on every write).
        let done = write().await;
        self.detach_flights(written);
        done
    }

    /// [`detaching`](Cache::detaching)'s work, done on each side of the write: one lock of each
    /// table; the keys are copied only while a load is in flight.
    fn detach_flights(&self, written: Written<'_>) {
        // The repository's address, as in the flights' keys (`freshness::job::flight_key`).
        let repository = Arc::as_ptr(self.repository()) as *const () as usize;
        match written {
            Written::Key(key) => {
                flight::detach_written(std::iter::once_with(|| (repository, self.make_key(key))))
            }
            Written::Full(keys) => {
                flight::detach_written(keys.iter().map(|key| (repository, (*key).to_owned())))
            }
            Written::Pattern(pattern) => {
                let reaches = |(at, key): &(usize, String)| {
                    *at == repository && crate::glob_match(pattern.as_bytes(), key.as_bytes())
                };
                flight::detach_written_where(reaches);
            }
        }
    }

    /// The bytes at `key`, and the lookup's tally.
    async fn read(&self, key: &str) -> Result<(Option<Bytes>, Tally)> {
        self.check_key(key)?;
        let parts = self.key_parts(key);
        let mut found = self.shared.backend.get(parts).await?;
        if let Some(bytes) = found.take_if(|bytes| envelope::is_envelope(bytes)) {
            found = self
                .open_tagged(key, &bytes, Some(parts), Operation::Get)
                .await?;
        }
        let tally = Tally::read(found.as_ref().map(Bytes::len));
        Ok((found, tally))
    }

    /// Stores `value` at `key` for `expire`, replacing any previous value.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// cache.set("key", &"value", 100).await?;
    /// assert_eq!(cache.get::<String>("key").await?.as_deref(), Some("value"));
    /// # Ok(()) }
    /// ```
    #[doc(alias = "insert")]
    pub async fn set<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        expire: impl Into<Expire>,
    ) -> Result<()> {
        observed!(self, Operation::Set, Some(key), async {
            self.check_written_key(key)?;
            let expiry = expire.into().resolve(key)?;
            let bytes = json::encode(key, value)?;
            let tally = Tally::written(bytes.len());
            let write = || self.shared.backend.set(self.key_parts(key), bytes, expiry);
            self.detaching(Written::Key(key), write).await?;
            Ok(((), tally))
        })
    }

    /// Stores `value` at `key` only if nothing is stored there; `true` when it was stored.
    /// Atomic: of many concurrent callers, exactly one gets `true`.
    ///
    /// A tagged entry that reads as a miss (one of its tags was invalidated, hard or soft: see
    /// [`invalidate_tag`](Cache::invalidate_tag)) counts as nothing stored, as [`get`](Cache::get)
    /// sees it: `set_nx` replaces it and returns `true`. One round trip whether the key is free
    /// or taken (`SET .. NX GET`: a taken key's bytes come back with the refused write; a server
    /// before Redis 7.0 refuses `NX` with `GET` and gets a `GET` after the `SET NX`); a tagged
    /// entry found costs one more (its tags' state), and a hidden one is replaced by a
    /// compare-and-set on exactly the bytes read (a third), never a value another writer stored
    /// meanwhile. A repository without an atomic compare-and-set
    /// ([`CacheRepository::set_if_equal`]'s default) claims no hidden entry: `false`.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// assert!(cache.set_nx("key", &1, 100).await?);
    /// assert!(!cache.set_nx("key", &2, 100).await?);
    /// cache.set_tagged("tagged", &1, 100, ["t"]).await?;
    /// cache.invalidate_tag("t").await?;
    /// assert!(cache.set_nx("tagged", &2, 100).await?); // the hidden entry counts as absent
    /// assert_eq!(cache.get::<i32>("tagged").await?, Some(2));
    /// # Ok(()) }
    /// ```
    pub async fn set_nx<V: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &V,
        expire: impl Into<Expire>,
    ) -> Result<bool> {
        observed!(self, Operation::SetNx, Some(key), async {
            self.check_written_key(key)?;
            let expiry = expire.into().resolve(key)?;
            let bytes = json::encode(key, value)?;
            let tally = Tally::written(bytes.len());
            let write = || self.claim(key, bytes, expiry);
            let stored = self.detaching(Written::Key(key), write).await?;
            Ok((stored, tally))
        })
    }

    /// Stores every pair, each with its own TTL of `expire`, in one round trip (pipelined
    /// `SET .. EX`, not atomic) per 10,000 pairs and 16 MiB of values, each round trip within the
    /// deadline. Every value is encoded before anything is sent, so a bad value stores nothing.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// cache.set_many([("k1", 1), ("k2", 2)], 100).await?;
    /// cache.set_many(&[("k3", 3)], 100).await?; // or borrowed pairs
    /// let values: Vec<Option<i64>> = cache.get_many(&["k1", "missing", "k2"]).await?;
    /// assert_eq!(values, [Some(1), None, Some(2)]);
    /// # Ok(()) }
    /// ```
    pub async fn set_many<I, K, V>(&self, entries: I, expire: impl Into<Expire>) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<(K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        observed!(self, Operation::SetMany, None, async {
            let written = self.write_many(entries, expire.into()).await?;
            Ok(((), Tally::written(written)))
        })
    }

    /// [`set_many`](Cache::set_many)'s work; the number of value bytes written.
    async fn write_many<I, K, V>(&self, entries: I, expire: Expire) -> Result<usize>
    where
        I: IntoIterator,
        I::Item: Borrow<(K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        let entries = entries.into_iter();
        let mut keys = self.key_batch(entries.size_hint().0);
        let mut values = Vec::with_capacity(entries.size_hint().0);
        // Values sent over the network share a few buffers; the memory repository keeps its
        // values, so each gets its own exact allocation there.
        let mut packed = BytesMut::new();
        let mut expiry = None;
        for entry in entries {
            let (key, value) = entry.borrow();
            let key = key.as_ref();
            self.check_written_key(key)?;
            if expiry.is_none() {
                expiry = Some(expire.resolve(key)?);
            }
            keys.push(&self.shared.key_prefix, self.version.as_str(), key);
            values.push(if self.shared.backend.keeps_values() {
                json::encode(key, &value)?
            } else {
                json::encode_packed(key, &value, &mut packed)?
            });
        }
        let Some(expiry) = expiry else {
            return Ok(0);
        };
        let written = values.iter().map(Bytes::len).sum();
        let full = keys.keys();
        let entries: Vec<(&str, Bytes)> = full.iter().copied().zip(values).collect();
        let write = || self.shared.backend.set_many(&entries, expiry);
        self.detaching(Written::Full(&full), write).await?;
        Ok(written)
    }

    /// The value at `key`, `None` when nothing is stored (or it expired).
    ///
    /// A stored JSON `null` is not a miss: `get::<Option<T>>` returns `Some(None)` for it.
    pub async fn get<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>> {
        observed!(self, Operation::Get, Some(key), async {
            let (found, tally) = self.read(key).await?;
            let value = match found {
                None => None,
                Some(bytes) => Some(json::decode(|| shown(&self.make_key(key)), &bytes)?),
            };
            Ok((value, tally))
        })
    }

    /// The values at `keys`, in the same order, `None` where nothing is stored; one round trip
    /// per 10,000 keys, each within the deadline (and one more reads the tag states of the tagged
    /// entries found, if any).
    pub async fn get_many<V>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Option<V>>>
    where
        V: DeserializeOwned,
    {
        observed!(self, Operation::GetMany, None, async {
            self.read_many(keys, |key, bytes| json::decode(|| shown(key), &bytes))
                .await
        })
    }

    /// The raw bytes at `keys`, without JSON decoding, in the same order, `None` where nothing
    /// is stored: [`get_many`](Cache::get_many) for values written with
    /// [`set_raw`](Cache::set_raw), as [`get_raw`](Cache::get_raw) is for one key. Counted as a
    /// `get_many`.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// use bytes::Bytes;
    ///
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// cache.set_raw("a", Bytes::from_static(b"raw"), 60).await?;
    /// let values = cache.get_many_raw(["a", "b"]).await?;
    /// assert_eq!(values, [Some(Bytes::from_static(b"raw")), None]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many_raw(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Option<Bytes>>> {
        observed!(self, Operation::GetMany, None, async {
            self.read_many(keys, |_, bytes| Ok(bytes)).await
        })
    }

    /// The work of [`get_many`](Cache::get_many) and [`get_many_raw`](Cache::get_many_raw): the
    /// bytes at `keys` (each checked), tagged entries opened, each found value turned by `each`
    /// (given its full key, for errors), and the lookups' tally.
    async fn read_many<T>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
        mut each: impl FnMut(&str, Bytes) -> Result<T>,
    ) -> Result<(Vec<Option<T>>, Tally)> {
        let batch = self.checked_keys(keys)?;
        let full = batch.keys();
        if full.is_empty() {
            return Ok((Vec::new(), Tally::NONE));
        }
        let mut values = self.shared.backend.get_many(&full).await?;
        self.open_tagged_many(&full, &mut values).await?;
        let mut tally = Tally::NONE;
        let found = values
            .into_iter()
            .zip(&full)
            .map(|(value, key)| match value {
                None => {
                    tally.misses += 1;
                    Ok(None)
                }
                Some(bytes) => {
                    tally.hits += 1;
                    tally.bytes_read += bytes.len() as u64;
                    each(key, bytes).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        Ok((found, tally))
    }

    /// Removes `key`; the number of keys removed (0 or 1).
    #[doc(alias = "remove", alias = "invalidate")]
    pub async fn delete(&self, key: &str) -> Result<u64> {
        observed!(self, Operation::Delete, Some(key), async {
            self.check_key(key)?;
            let write = || self.shared.backend.delete(self.key_parts(key));
            let removed = self.detaching(Written::Key(key), write).await?;
            Ok((removed, Tally::NONE))
        })
    }

    /// Removes `keys`; the number of keys removed: one `UNLINK` per 10,000 keys, each within the
    /// deadline. An empty list sends nothing.
    pub async fn delete_many<I>(&self, keys: I) -> Result<u64>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        observed!(self, Operation::DeleteMany, None, async {
            let batch = self.checked_keys(keys)?;
            let full = batch.keys();
            if full.is_empty() {
                return Ok((0, Tally::NONE));
            }
            let write = || self.shared.backend.delete_many(&full);
            let removed = self.detaching(Written::Full(&full), write).await?;
            Ok((removed, Tally::NONE))
        })
    }

    /// Removes every key of this prefix and version whose key part matches the Redis glob
    /// `pattern`; the number of keys removed.
    ///
    /// Patterns: `h?llo`, `h*llo`, `h[ae]llo`, `h[^e]llo`, `h[a-b]llo`, and `\` to escape (see
    /// [`escape_pattern`](crate::escape_pattern) for literals). The prefix and version are escaped,
    /// so `delete_pattern("*")` removes this cache's keys and never a neighbour's. On Redis it
    /// uses `SCAN` and `UNLINK` in batches, never `KEYS`.
    ///
    /// A sweep that fails after removing keys (the server killed or frozen mid-sweep) returns
    /// [`Error::Interrupted`], which says how many ([`Error::removed_before_failure`]); see
    /// [`delete_pattern_with_progress`](Cache::delete_pattern_with_progress) to follow a long
    /// sweep as it goes.
    pub async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.delete_pattern_with_progress(pattern, |_| {}).await
    }

    /// [`delete_pattern`](Cache::delete_pattern), calling `on_progress` after each batch with the
    /// totals so far ([`DeleteProgress`]: keys matched, keys removed, batches): on Redis a batch
    /// is one `SCAN` reply (`COUNT 1000`: about 1,000 keys, a hint Redis may exceed by a few) and its
    /// `UNLINK`.
    ///
    /// Every sweep, with or without a callback, also emits a `tracing` event (target `impcache`,
    /// inside the operation's span) every 10 batches at `DEBUG` and every 100 batches at `INFO`,
    /// with the fields `matched`, `removed` and `batches`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> impcache::Result<()> {
    /// use impcache::{Cache, MemoryCacheRepository};
    ///
    /// let cache = Cache::builder(MemoryCacheRepository::new()).build();
    /// cache.set_many((0..2500).map(|i| (format!("session:{i}"), i)), 60).await?;
    /// let mut batches = 0;
    /// let removed = cache
    ///     .delete_pattern_with_progress("session:*", |progress| {
    ///         batches = progress.batches;
    ///         println!("{} sessions removed so far", progress.removed);
    ///     })
    ///     .await?;
    /// assert_eq!((removed, batches), (2500, 3));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_pattern_with_progress(
        &self,
        pattern: &str,
        mut on_progress: impl FnMut(DeleteProgress) + Send,
    ) -> Result<u64> {
        observed!(self, Operation::DeletePattern, Some(pattern), async {
            let full = self.make_pattern(pattern)?;
            let mut report = |progress: DeleteProgress| {
                trace_progress(&progress);
                on_progress(progress);
            };
            let removed = self
                .detaching(Written::Pattern(&full), || {
                    self.shared.backend.delete_pattern(&full, &mut report)
                })
                .await?;
            Ok((removed, Tally::NONE))
        })
    }

    /// The raw bytes at `key`, without JSON decoding. For values written with
    /// [`set_raw`](Cache::set_raw) (such as the HTTP layer's entries).
    pub async fn get_raw(&self, key: &str) -> Result<Option<Bytes>> {
        observed!(self, Operation::Get, Some(key), self.read(key))
    }

    /// [`get_raw`](Cache::get_raw) for the `#[cached]` runtime: the bytes found go through `decode`
    /// (`Err(())`: not a value of the function's type, whose body then runs: a miss, not a hit,
    /// see [`Tally::not_decoded`]), and a decoded value counts as a hit of `function` (when
    /// given: not for a leader's second look) in the same call into the metrics recorder as the
    /// `get` itself.
    pub(crate) async fn get_raw_cached<V>(
        &self,
        key: &str,
        function: Option<&'static CachedFunction>,
        decode: impl FnOnce(&Bytes) -> Result<V, ()>,
    ) -> Result<Option<Result<V, ()>>> {
        observed!(
            self,
            Operation::Get,
            Some(key),
            self.read(key),
            map: |found: Option<Bytes>, tally: &mut Tally| {
                let found = found.map(|bytes| decode(&bytes));
                if let Some(Err(())) = found {
                    tally.not_decoded();
                }
                found
            },
            also: |found: &Option<Result<V, ()>>, recorder: &dyn Recorder| {
                if let (Some(Ok(_)), Some(function)) = (found, function) {
                    function.record_call(recorder, CallOutcome::Hit);
                }
            }
        )
    }

    /// Stores raw bytes at `key`, without JSON encoding. Such entries are not readable by
    /// [`get`](Cache::get) nor by the Python library. Bytes starting as a tagged entry's
    /// envelope does (`{"__impcache_tagged__":`) are refused ([`Error::Encode`]): they would
    /// read back as another value.
    pub async fn set_raw(&self, key: &str, value: Bytes, expire: impl Into<Expire>) -> Result<()> {
        let write = || self.write_raw(key, value, expire.into());
        self.detaching(Written::Key(key), write).await
    }

    /// [`set_raw`](Cache::set_raw) without ending the key's loads in flight.
    async fn write_raw(&self, key: &str, value: Bytes, expire: Expire) -> Result<()> {
        observed!(self, Operation::Set, Some(key), async {
            self.check_written_key(key)?;
            envelope::refuse_lookalike(key, &value)?;
            let expiry = expire.resolve(key)?;
            let tally = Tally::written(value.len());
            self.shared
                .backend
                .set(self.key_parts(key), value, expiry)
                .await?;
            Ok(((), tally))
        })
    }

    /// [`set_nx`](Cache::set_nx) for raw bytes (a tagged entry its tags hide counts as absent
    /// here too).
    pub async fn set_nx_raw(
        &self,
        key: &str,
        value: Bytes,
        expire: impl Into<Expire>,
    ) -> Result<bool> {
        let write = || self.claim_raw(key, value, expire.into());
        self.detaching(Written::Key(key), write).await
    }

    /// [`set_nx_raw`](Cache::set_nx_raw) without ending the key's loads in flight.
    async fn claim_raw(&self, key: &str, value: Bytes, expire: Expire) -> Result<bool> {
        observed!(self, Operation::SetNx, Some(key), async {
            self.check_written_key(key)?;
            envelope::refuse_lookalike(key, &value)?;
            let expiry = expire.resolve(key)?;
            let tally = Tally::written(value.len());
            let stored = self.claim(key, value, expiry).await?;
            Ok((stored, tally))
        })
    }

    /// A `#[cached]` leader's store of its value (`set_raw` when `overwrite`, else
    /// `set_nx_raw`), which leaves the key's flight alone: that flight is the leader's own, and
    /// ends once this write has returned, so that callers arriving meanwhile take its value
    /// (detached by its own write, it let a caller whose `GET` missed just before run the body
    /// once more: found by a probe; and it would skip its own store, taking its detaching for
    /// another caller's write: see [`detaching`](Cache::detaching)).
    pub(crate) async fn store_loaded_raw(
        &self,
        key: &str,
        value: Bytes,
        expire: Expire,
        overwrite: bool,
    ) -> Result<()> {
        if overwrite {
            self.write_raw(key, value, expire).await
        } else {
            self.claim_raw(key, value, expire).await.map(|_| ())
        }
    }
}

// --- Member lists (`crate::members`): `impcache-tower`'s list of the hosts of a namespace. ---

impl Cache {
    /// `member` added to the member list at `key`, which then lives at least `expire` (see
    /// `crate::members`); counted as a `set`.
    pub(crate) async fn add_member(
        &self,
        key: &str,
        member: &str,
        expire: impl Into<Expire>,
    ) -> Result<()> {
        observed!(self, Operation::Set, Some(key), async {
            self.check_key(key)?;
            crate::members::check(key, member)?;
            let expiry = expire.into().resolve(key)?;
            let tally = Tally::written(member.len());
            let key = self.key_parts(key);
            self.shared.backend.add_member(key, member, expiry).await?;
            Ok(((), tally))
        })
    }
}

// --- Tags (issue 16): tagged writes, invalidation by tag, tagged reads (`crate::tags`). ---

impl Cache {
    /// Stores `value` at `key` for `expire`, tagged `tags`: [`invalidate_tag`](Cache::invalidate_tag)
    /// of any of them hides it, without a scan. With no tags, the same as [`set`](Cache::set).
    ///
    /// A tagged entry is stored in an envelope, `{"__impcache_tagged__":{"created":..,"tags":[..]},
    /// "value":..}`: the Python library reads it as that dict, not as the value (see the
    /// [README's Tags section](crate#tags)). Reads of this crate unwrap it.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// cache.set_tagged("user:1:profile", &"Ada", 60, ["user:1"]).await?;
    /// assert_eq!(cache.get::<String>("user:1:profile").await?.as_deref(), Some("Ada"));
    /// cache.invalidate_tag("user:1").await?;
    /// assert_eq!(cache.get::<String>("user:1:profile").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn set_tagged<V, I>(
        &self,
        key: &str,
        value: &V,
        expire: impl Into<Expire>,
        tags: I,
    ) -> Result<()>
    where
        V: Serialize + ?Sized,
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags = Tags::new(tags);
        let created = tags::stamp_micros();
        observed!(self, Operation::Set, Some(key), async {
            self.check_written_key(key)?;
            for tag in tags.as_slice() {
                self.check_tag(tag)?;
            }
            let expiry = expire.into().resolve(key)?;
            let mut bytes = json::encode(key, value)?;
            // The value's bytes, as its reads count them: not the envelope around them.
            let tally = Tally::written(bytes.len());
            if !tags.is_empty() {
                bytes = envelope::wrap(&bytes, tags.as_slice(), created);
            }
            let write = || self.shared.backend.set(self.key_parts(key), bytes, expiry);
            self.detaching(Written::Key(key), write).await?;
            Ok(((), tally))
        })
    }

    /// Invalidates every entry tagged `tag` that exists now or is being computed (its loader
    /// started before this call): they read as misses from now on, in every process sharing the
    /// repository. One `EVAL` of a script on the tag's key (keeping the later time if another
    /// process's invalidation, stamped later, landed first), never a scan; counted as a
    /// `set_many`. A tag is not a key: to remove one key, [`delete`](Cache::delete) it (moka's
    /// `invalidate`).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        self.mark_tags(Tags::new([tag]), TagInvalidation::Hard, "invalidate_tag")
            .await
    }

    /// [`invalidate_tag`](Cache::invalidate_tag) of each of `tags`: one `EVAL` each, in one round
    /// trip on a single node (on Sentinel and Cluster all sent at once, one wait).
    pub async fn invalidate_tags<I>(&self, tags: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.mark_tags(Tags::new(tags), TagInvalidation::Hard, "invalidate_tags")
            .await
    }

    /// Marks every entry tagged `tag` stale (Fastly's soft purge): a
    /// [`get_or_set`](Cache::get_or_set) with a [`Freshness`](crate::Freshness) stale window
    /// still serves it, counting the window from now, while one reload runs; reads without a
    /// stale window (and plain [`get`](Cache::get)) see a miss. Entries a hard invalidation hid
    /// stay hidden: on Redis one `EVAL` of a script rewriting the tag's key keeping its hard
    /// invalidation time (and the later soft time), never a scan; counted as a `set_many`.
    pub async fn soft_invalidate_tag(&self, tag: &str) -> Result<()> {
        self.mark_tags(
            Tags::new([tag]),
            TagInvalidation::Soft,
            "soft_invalidate_tag",
        )
        .await
    }

    /// [`soft_invalidate_tag`](Cache::soft_invalidate_tag) of each of `tags`, as
    /// [`invalidate_tags`](Cache::invalidate_tags).
    pub async fn soft_invalidate_tags<I>(&self, tags: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.mark_tags(
            Tags::new(tags),
            TagInvalidation::Soft,
            "soft_invalidate_tags",
        )
        .await
    }

    /// Records an invalidation of `kind` now in the state key of each of `tags` (one `EVAL`
    /// each on Redis, pipelined on a single node): each time a state holds replaced only by a
    /// later one, atomically on the built-in repositories (`crate::tags`'s module doc). A
    /// backend failure is told as `operation` (the public method's name) of the failing tag,
    /// not as a write of its state key.
    async fn mark_tags(
        &self,
        tags: Tags,
        kind: TagInvalidation,
        operation: &'static str,
    ) -> Result<()> {
        observed!(self, Operation::SetMany, None, async {
            for tag in tags.as_slice() {
                self.check_tag(tag)?;
            }
            let stamp = tags::stamp_micros();
            // Before it is sent: it may land even if the call reports an error (no tags: nothing
            // is sent).
            if !tags.as_slice().is_empty() {
                self.shared.invalidations_sent.record(kind, stamp);
            }
            let now = Bytes::from(stamp.to_string());
            let keys = tags::state_keys(self.key_prefix(), tags.as_slice());
            let keys = keys.keys();
            self.shared
                .backend
                .mark_tags(&keys, kind, now.clone())
                .await
                .map_err(|error| {
                    error.relabeled(operation, |key| {
                        tags::failed_tags(self.key_prefix(), tags.as_slice(), key)
                    })
                })?;
            Ok(((), Tally::written(now.len() * keys.len())))
        })
    }

    /// [`set_nx`](Cache::set_nx)'s work: stores `value` at `key` if nothing is stored there, or
    /// if what is stored reads as a miss because its tags hide it (as [`get`](Cache::get) judges
    /// it: `open_tagged`); `true` when stored.
    ///
    /// `SET NX` and, when the key is taken, its bytes, in one round trip
    /// (`Backend::set_nx_or_get`: `SET .. NX GET` on Redis 7.0+). Only a tagged entry needs more:
    /// its tags' state (one round trip), and one its tags hide is replaced by a compare-and-set
    /// on exactly those bytes (`Backend::set_if_equal`), so a value another writer stored
    /// meanwhile is never overwritten. An entry judged hidden stays hidden until the
    /// compare-and-set lands: its creation time is in its bytes, and a tag's state only moves
    /// later (`crate::tags`). When the key changed under it (another writer, an expiry), it
    /// looks again, up to [`CLAIM_ROUNDS`] times, then answers `false`; it answers `false` at
    /// once when the compare-and-set refused bytes the key still holds (a repository without
    /// one: the trait's default refuses).
    async fn claim(&self, key: &str, value: Bytes, expiry: Expiry) -> Result<bool> {
        let parts = self.key_parts(key);
        let backend = &self.shared.backend;
        let mut refused: Option<Bytes> = None;
        for _ in 0..CLAIM_ROUNDS {
            let found = match backend.set_nx_or_get(parts, value.clone(), expiry).await? {
                SetNxOrGet::Stored => return Ok(true),
                SetNxOrGet::Taken(Some(found)) => found,
                // Gone between a repository's two calls (expired, deleted): free again.
                SetNxOrGet::Taken(None) => continue,
            };
            if refused.as_ref() == Some(&found) {
                return Ok(false);
            }
            let hidden = envelope::is_envelope(&found)
                && self
                    .open_tagged(key, &found, Some(parts), Operation::SetNx)
                    .await?
                    .is_none();
            if !hidden {
                return Ok(false);
            }
            if backend
                .set_if_equal(parts, found.clone(), value.clone(), expiry)
                .await?
            {
                return Ok(true);
            }
            refused = Some(found);
        }
        Ok(false)
    }

    /// Where an entry created at `created` (µs since the epoch) and tagged `tags` stands against
    /// their invalidations: one round trip (for `impcache-tower`, through `__private::tags`).
    pub(crate) async fn tag_verdict<T: AsRef<str> + Sync>(
        &self,
        tags: &[T],
        created: u64,
    ) -> Result<Verdict> {
        let states = self.tag_states(tags).await?;
        Ok(tags::verdict(created, &states, self.shared.tag_clock_skew))
    }

    /// The bytes at `key` (as [`get_raw`](Cache::get_raw) reads them, counted as a `get`) and
    /// the state value of each of `tags`, in one round trip (for `impcache-tower`: a URL's record
    /// read with the tags its response carried last time, through `__private::tags`).
    pub(crate) async fn get_raw_with_tag_states<T: AsRef<str> + Sync>(
        &self,
        key: &str,
        tags: &[T],
    ) -> Result<(Option<Bytes>, Vec<Option<Bytes>>)> {
        observed!(self, Operation::Get, Some(key), async {
            self.check_key(key)?;
            let keys = tags::state_keys(self.key_prefix(), tags);
            let (found, states) = self
                .shared
                .backend
                .get_with_tags(self.key_parts(key), &keys.keys(), false)
                .await
                .map_err(self.read_failed_for(Operation::Get, key))?;
            let found = found.map(|found| found.value);
            let tally = Tally::read(found.as_ref().map(Bytes::len));
            Ok(((found, states), tally))
        })
    }

    /// Where an entry created at `created` (µs since the epoch) and tagged `tags` stands, from
    /// the states of the tags `known` read already (`states[i]` is `known[i]`'s); `None` when
    /// one of `tags` is not among them.
    pub(crate) fn tag_verdict_from<T: AsRef<str>, K: AsRef<str>>(
        &self,
        tags: &[T],
        created: u64,
        known: &[K],
        states: &[Option<Bytes>],
    ) -> Option<Verdict> {
        let mut picked = Vec::with_capacity(tags.len());
        for tag in tags {
            let at = known
                .iter()
                .position(|known| known.as_ref() == tag.as_ref())?;
            picked.push(states.get(at)?.clone());
        }
        Some(tags::verdict(created, &picked, self.shared.tag_clock_skew))
    }

    /// The state value of each of `tags`, one round trip.
    pub(crate) async fn tag_states<T: AsRef<str> + Sync>(
        &self,
        tags: &[T],
    ) -> Result<Vec<Option<Bytes>>> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let keys = tags::state_keys(self.key_prefix(), tags);
        self.shared.backend.get_tag_states(&keys.keys()).await
    }

    /// Tells a failure of a read made for `operation` of `key` as that operation's of the key
    /// (its full key, as the repositories name keys), through [`Error::relabeled`] as
    /// `mark_tags` tells an invalidation's as the method's of its tag: a tagged entry's second
    /// read, its tags' state, fails as a `get_many` of the tags' state keys, which are not what
    /// the caller asked for (on Cluster and through a near cache the entry and the states are
    /// read apart, so a tagged `get_or_set`'s one read can fail that way too).
    pub(crate) fn read_failed_for<'a>(
        &'a self,
        operation: Operation,
        key: &'a str,
    ) -> impl FnOnce(Error) -> Error + 'a {
        move |error| error.relabeled(operation.name(), |_| shown(&self.make_key(key)))
    }

    /// [`open_tagged`](Cache::open_tagged) for the `values` read at `keys`: each envelope becomes
    /// its value, or `None` when one of its tags invalidated it; the state of all their tags is
    /// read in one more round trip (none without a tagged entry).
    async fn open_tagged_many(&self, keys: &[&str], values: &mut [Option<Bytes>]) -> Result<()> {
        let mut tagged = Vec::new();
        for (i, (value, key)) in values.iter().zip(keys).enumerate() {
            let Some(bytes) = value.as_ref().filter(|bytes| envelope::is_envelope(bytes)) else {
                continue;
            };
            match envelope::open(bytes) {
                Some(opened) => tagged.push((i, opened)),
                None => {
                    let key = self.logged_key(key);
                    tracing::debug!(target: "impcache", key, "a value starting like a tagged envelope is not one");
                }
            }
        }
        if tagged.is_empty() {
            return Ok(());
        }
        // Every tag once, in the order first seen.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut all: Vec<&str> = Vec::new();
        for tag in tagged.iter().flat_map(|(_, opened)| &opened.tags) {
            index.entry(tag).or_insert_with(|| {
                all.push(tag);
                all.len() - 1
            });
        }
        let states = self.tag_states(&all).await.map_err(|error| {
            let owners: Vec<&str> = tagged
                .iter()
                .filter_map(|(i, _)| keys.get(*i))
                .copied()
                .collect();
            error.relabeled(Operation::GetMany.name(), |_| shown_many(&owners))
        })?;
        let mut verdicts = Vec::with_capacity(tagged.len());
        for (i, opened) in &tagged {
            let own: Vec<Option<Bytes>> = opened
                .tags
                .iter()
                .map(|tag| {
                    index
                        .get(tag.as_ref())
                        .and_then(|&at| states.get(at).cloned().flatten())
                })
                .collect();
            let verdict = tags::verdict(opened.created, &own, self.shared.tag_clock_skew);
            let value = (verdict == Verdict::Fresh).then(|| opened.value.clone());
            verdicts.push((*i, value));
        }
        drop(tagged);
        for (i, value) in verdicts {
            if let Some(slot) = values.get_mut(i) {
                *slot = value;
            }
        }
        Ok(())
    }

    /// The value of the envelope `bytes` stored at `key` when none of its tags invalidated it
    /// (a soft invalidation counts: no stale window here); a second round trip, for the tags'
    /// state, whose failure is told as `operation`'s of `key`. Bytes that are no well-formed
    /// envelope are returned as they are. With `parts` (`key`'s) and a near cache, a verdict
    /// kept on the local entry answers, and a new verdict "fresh" is kept (`near/store.rs`,
    /// "Verified tagged entries").
    pub(crate) async fn open_tagged(
        &self,
        key: &str,
        bytes: &Bytes,
        parts: Option<KeyParts<'_>>,
        operation: Operation,
    ) -> Result<Option<Bytes>> {
        let call_tags = Tags::default();
        let slot = match parts.map(|parts| self.shared.backend.verified(parts, &call_tags, false)) {
            Some(Ok(found)) => return Ok(Some(found.value)),
            Some(Err(slot)) => slot,
            None => None,
        };
        let Some(opened) = envelope::open(bytes) else {
            let key = self.logged_key(key);
            tracing::debug!(target: "impcache", key, "a value starting like a tagged envelope is not one");
            return Ok(Some(bytes.clone()));
        };
        let states = self
            .tag_states(&opened.tags)
            .await
            .map_err(self.read_failed_for(operation, key))?;
        let verdict = tags::verdict(opened.created, &states, self.shared.tag_clock_skew);
        if verdict != Verdict::Fresh {
            return Ok(None);
        }
        if let Some(slot) = slot {
            slot.keep(bytes, &call_tags, opened.value.clone());
        }
        Ok(Some(opened.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryCacheRepository, RedisCacheRepository};

    fn shareable<T: Clone + Send + Sync + fmt::Debug + 'static>() {}

    #[test]
    fn handles_are_cheap_shareable_and_debug() {
        shareable::<Cache>();
        shareable::<MemoryCacheRepository>();
        shareable::<RedisCacheRepository>();
        // The repository trait is object-safe: a user backend goes behind `Arc<dyn ..>`.
        let repository: Arc<dyn CacheRepository> = Arc::new(MemoryCacheRepository::new());
        let cache = Cache::builder_shared(repository).build();
        let clone = cache.with_version(2);
        assert!(Arc::ptr_eq(cache.repository(), clone.repository()));
        assert!(format!("{cache:?}").contains("key_prefix"));
    }
}
