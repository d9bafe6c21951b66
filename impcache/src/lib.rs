//! # impcache
//!
//! Simple async cache with high performance, right by default: JSON values under versioned keys
//! (`{key_prefix}:{version}:{key}`), on Redis or an embedded in-memory repository, with deadlines
//! and a circuit breaker so that a cache outage never slows the application down.
//!
//! The storage format is the Python library [impcache](https://pypi.org/project/impcache/)'s: a
//! Rust and a Python service with the same prefix and version share entries in one Redis.
//!
//! ```
//! use impcache::{Cache, MemoryCacheRepository};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> impcache::Result<()> {
//! let cache = Cache::builder(MemoryCacheRepository::new())
//!     .key_prefix("cache")
//!     .version(1)
//!     .build();
//!
//! cache.set("key", &"value", 100).await?;
//! let value: Option<String> = cache.get("key").await?;
//! assert_eq!(value.as_deref(), Some("value"));
//!
//! assert!(!cache.set_nx("key", &"other", 100).await?);
//! cache.set_many([("hello", 1), ("hallo", 2)], 100).await?;
//! assert_eq!(cache.delete_pattern("h?llo").await?, 2);
//! # Ok(())
//! # }
//! ```
//!
//! With Redis, swap the repository:
//!
//! ```no_run
//! # async fn run() -> impcache::Result<()> {
//! use impcache::{Cache, RedisCacheRepository};
//! let cache = Cache::new(RedisCacheRepository::new("redis://127.0.0.1:6379/0")?);
//! # Ok(()) }
//! ```
//!
//! ## Memoizing async functions: `#[cached]`
//!
//! [`#[cached(expire = 60)]`](macro@cached) on an `async fn` stores its results in a cache (the one
//! installed with [`set_default_cache`], or `cache = ...`): a hit is one `GET`, concurrent misses
//! run the body once per key, and a cache outage runs the body. Feature `macros`, on by default.
//!
//! ## Tags
//!
//! Entries written with [`Cache::set_tagged`] or [`get_or_set(..).tags(..)`](GetOrSet::tags)
//! carry tags; [`Cache::invalidate_tag`] hides every entry of a tag with one write to the
//! tag's key (on Redis an `EVAL` that keeps the later time), without a keyspace scan (on
//! Cluster too), and [`Cache::soft_invalidate_tag`] makes them stale (served
//! under a [`Freshness`] stale window while they reload). An entry whose loader started before an
//! invalidation is never served after it. Tagged entries are stored in a JSON envelope (the
//! Python library reads it as a dict holding the value); untagged ones keep the Python bytes.
//!
//! ```
//! # use impcache::{Cache, MemoryCacheRepository};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
//! let cache = Cache::new(MemoryCacheRepository::new());
//! let name: String = cache
//!     .get_or_set("user:42:name", 60, || async { "Ada".to_owned() })
//!     .tags(["user:42"])
//!     .await?;
//! cache.invalidate_tag("user:42").await?; // every entry about user 42, gone
//! assert_eq!(cache.get::<String>("user:42:name").await?, None);
//! # Ok(()) }
//! ```
//!
//! ## Caching HTTP responses: `impcache-tower`
//!
//! The [`impcache-tower`](https://docs.rs/impcache-tower) crate's `CacheLayer` is a tower/axum
//! layer caching HTTP responses in a [`Cache`], with the defaults of a safe shared cache.
//!
//! ## Modules
//! - [`Cache`] and [`CacheBuilder`]: the API.
//! - [`repository`]: [`CacheRepository`], [`RedisCacheRepository`], [`MemoryCacheRepository`].
//! - [`Expire`] / [`Expiry`]: lifetimes; [`Version`]: key versions; [`escape_pattern`]: glob escaping.
//! - [`enum@Error`]: what can go wrong.
//!
//! ## Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `macros` | yes | [`#[cached]`](macro@cached) |
//! | `tls` | no | `rediss://` through rustls, certificates verified |
//! | `cluster` | no | `RedisClusterCacheRepository` (Redis Cluster) |
//! | `sentinel` | no | `RedisSentinelCacheRepository` (the primary found through Sentinel) |
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]
// On docs.rs (nightly), items behind a feature show which one.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod error;
mod expire;
#[doc(hidden)]
pub mod flight;
pub mod freshness;
mod glob;
mod json;
mod key;
mod members;
mod memoize;
mod near;
mod observe;
mod progress;
pub mod repository;
mod tags;

pub use cache::{Cache, CacheBuilder, DEFAULT_KEY_PREFIX, DEFAULT_MAX_KEY_BYTES};
pub use error::{BoxError, Error, Result};
pub use expire::{Expire, Expiry, MAX_EXPIRE};
pub use freshness::{Freshness, GetOrSet, GetOrSetFuture, Lock, TryGetOrSet};
pub use glob::glob_match;
pub use key::{escape_pattern, Version};
pub use memoize::{default_cache, set_default_cache, SetDefaultCacheError};
pub use near::{
    NearCache, NearCacheStats, NearCacheStatus, TrackingMode, DEFAULT_NEAR_CAPACITY_BYTES,
    DEFAULT_NEAR_HEARTBEAT, DEFAULT_NEAR_MAX_TTL, DEFAULT_NEAR_MAX_VALUE_BYTES,
};
pub use observe::{describe_metrics, CacheStats};
pub use progress::DeleteProgress;
pub use repository::breaker::CircuitBreakerConfig;
#[cfg(feature = "cluster")]
pub use repository::cluster::{RedisClusterCacheRepository, RedisClusterCacheRepositoryBuilder};
pub use repository::memory::{MemoryCacheRepository, MemoryCacheRepositoryBuilder};
pub use repository::redis::{RedisCacheRepository, RedisCacheRepositoryBuilder};
#[cfg(feature = "sentinel")]
pub use repository::sentinel::{RedisSentinelCacheRepository, RedisSentinelCacheRepositoryBuilder};
pub use repository::{
    BoxFuture, CacheRepository, SetNxOrGet, TagInvalidation, TaggedRead, WithTtl,
};

#[cfg(feature = "macros")]
#[doc(inline)]
pub use impcache_macros::cached;

/// Items used by macro expansions. /!\ Not a stable API: may change in any release. /!\
#[doc(hidden)]
pub mod __private {
    pub use crate::__limited_warn as limited_warn;
    pub use crate::memoize::__private::*;
    pub use crate::observe::limited::Limited;

    /// `error` as `cache`'s log events show it: its message (which names its key) when the cache
    /// records keys, else its kind and cause.
    pub fn logged_error<'a>(
        cache: &crate::Cache,
        error: &'a crate::Error,
    ) -> impl std::fmt::Display + 'a {
        cache.logged_error(error)
    }

    /// `error`, the failure of a purge's step after earlier steps removed `earlier` keys:
    /// [`Error::Interrupted`](crate::Error::Interrupted) with the total removed (a failed
    /// sweep's own count added), so that a purge of several steps loses no count.
    pub fn removed_before(error: crate::Error, earlier: u64) -> crate::Error {
        error.after_removing(earlier)
    }

    /// Whether `cache` accepts `key` (the caller's part) for its operations (its length, the
    /// cache's version): a key it refuses holds nothing it stored.
    pub fn accepts_key(cache: &crate::Cache, key: &str) -> bool {
        cache.check_key(key).is_ok()
    }

    /// `expire` as a bound on a lifetime (`CacheLayer::expire` and `max_ttl`): no expiry and
    /// what is longer than [`MAX_EXPIRE`](crate::MAX_EXPIRE) are `MAX_EXPIRE`, zero and
    /// negative numbers are zero.
    pub fn expire_bound(expire: crate::Expire) -> std::time::Duration {
        expire.as_bound()
    }

    /// Member lists (`impcache-tower`'s list of the hosts that stored responses in a
    /// namespace): a key holding a short list of distinct names that only grows, read in one
    /// round trip.
    pub mod members {
        pub use crate::members::{Members, MAX_MEMBERS};

        /// Adds `member` (not empty, no newline, not `*`) to the list at `key` (under the
        /// cache's prefix and version), atomically; the key then lives at least `expire`, or
        /// forever once any addition asked for no expiry. Past 64 members the list reads as
        /// [`Members::TooMany`] for good.
        pub async fn add(
            cache: &crate::Cache,
            key: &str,
            member: &str,
            expire: impl Into<crate::Expire>,
        ) -> crate::Result<()> {
            cache.add_member(key, member, expire).await
        }

        /// Marks the list at `key` as holding too many members ([`Members::TooMany`], for
        /// good): its readers must find the members some other way.
        pub async fn give_up(cache: &crate::Cache, key: &str) -> crate::Result<()> {
            let full = bytes::Bytes::from_static(crate::members::TOO_MANY);
            cache.set_raw(key, full, crate::Expire::NEVER).await
        }

        /// The members listed at `key`, read as [`Cache::get_raw`](crate::Cache::get_raw)
        /// reads (and counted as a `get`).
        pub async fn read(cache: &crate::Cache, key: &str) -> crate::Result<Members> {
            let found = cache.get_raw(key).await?;
            Ok(Members::read(found.as_deref()))
        }
    }

    /// The fail-safe throttle for `impcache-tower`'s `CacheLayer::fail_safe_throttle`: the same
    /// table of recently failed keys as [`Freshness::fail_safe_throttle`](crate::Freshness::fail_safe_throttle)'s.
    pub mod fail_safe {
        pub use crate::freshness::throttle_private::{throttle, throttled, unthrottle};
    }

    /// Tag state for `impcache-tower`'s tagged responses (issue 16): the same state keys as
    /// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
    pub mod tags {
        pub use crate::tags::{stamp_micros, Verdict};

        /// Checks a tag as [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) does
        /// ([`Error::InvalidTag`](crate::Error::InvalidTag): empty, or too long).
        pub fn check(cache: &crate::Cache, tag: &str) -> crate::Result<()> {
            cache.check_tag(tag)
        }

        /// Where an entry created at `created` (µs since the epoch) and tagged `tags` stands:
        /// one round trip reading their state.
        pub async fn verdict<T: AsRef<str> + Sync>(
            cache: &crate::Cache,
            tags: &[T],
            created: u64,
        ) -> crate::Result<Verdict> {
            cache.tag_verdict(tags, created).await
        }

        /// The bytes at `key` (as [`Cache::get_raw`](crate::Cache::get_raw)) and the state of
        /// each of `tags` (for [`verdict_from`]), in one round trip.
        pub async fn get_raw_with_states<T: AsRef<str> + Sync>(
            cache: &crate::Cache,
            key: &str,
            tags: &[T],
        ) -> crate::Result<(Option<bytes::Bytes>, Vec<Option<bytes::Bytes>>)> {
            cache.get_raw_with_tag_states(key, tags).await
        }

        /// Where an entry created at `created` and tagged `tags` stands, from the `states` of
        /// the tags `known` that [`get_raw_with_states`] read; `None` when one of `tags` is not
        /// among them (then [`verdict`] reads them).
        pub fn verdict_from<T: AsRef<str>, K: AsRef<str>>(
            cache: &crate::Cache,
            tags: &[T],
            created: u64,
            known: &[K],
            states: &[Option<bytes::Bytes>],
        ) -> Option<Verdict> {
            cache.tag_verdict_from(tags, created, known, states)
        }

        /// Whether `cache` (or one of its clones or `with_version` copies) sent a tag
        /// invalidation, hard or soft, of any tag, stamped at or after `created` (a
        /// [`stamp_micros`]): what a waiter that cannot read the tags' state (the cache failing)
        /// knows all the same, as `get_or_set`'s waiters do.
        pub fn invalidated_here_since(cache: &crate::Cache, created: u64) -> bool {
            cache.shared.invalidations_sent.any_since(created)
        }
    }

    /// The cross-process [`Lock`](crate::Lock) for `impcache-tower`'s `CacheLayer::lock`: the same
    /// protocol as `get_or_set`'s, polling what the caller reads.
    pub mod lock {
        pub use crate::freshness::lock_private::{Held, Turn};

        /// Takes the lock of `key` (the caller's part; at `__lock:{key}`), waiting (up to the
        /// lock's wait, when `wait`; else [`Turn::Busy`] at once) while another process holds
        /// it: `poll` reads what that process stores (`Some` ends the wait). A lifetime not set
        /// outlasts `hard_timeout`, the bound of the work the lock covers. See
        /// [`Lock`](crate::Lock)'s protocol.
        pub async fn take<T, F, Fut>(
            cache: &crate::Cache,
            key: &str,
            lock: crate::Lock,
            hard_timeout: Option<std::time::Duration>,
            wait: bool,
            poll: F,
        ) -> Turn<T>
        where
            F: FnMut() -> Fut,
            Fut: std::future::Future<Output = crate::Result<Option<T>>>,
        {
            crate::freshness::lock_private::take(cache, key, lock, hard_timeout, wait, poll).await
        }

        /// Why `get_or_set` would refuse `lock` under `hard_timeout`, or `None`: [`take`] raises
        /// such a lifetime as if it were not set, and `CacheLayer` warns of it when applied.
        pub fn invalid(
            lock: crate::Lock,
            hard_timeout: Option<std::time::Duration>,
        ) -> Option<String> {
            crate::freshness::lock_private::invalid(lock, hard_timeout)
        }
    }

    /// Metrics recorded by the `#[cached]` expansion, the HTTP layer and the circuit breaker.
    pub mod metrics {
        pub use crate::observe::hooks::*;
        pub use crate::observe::metrics::recorder_installed;
    }
}
