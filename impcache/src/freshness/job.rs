//! One load's data (`Job`: the cache, key, expiry, policy, lock and tags of a `get_or_set` call)
//! and its reporting, shared by the load protocol (`load.rs`) and the cross-process lock
//! (`lock.rs`).

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::lock_settings::Lock;
use super::policy::Freshness;
use crate::error::{shown, Error};
use crate::expire::Expiry;
use crate::json;
use crate::repository::WithTtl;
use crate::tags::{LoadedTags, Tags};
use crate::Cache;

/// The `tracing` target of the events of a `get_or_set` call's load.
pub(crate) const TARGET: &str = "impcache::freshness";

/// Whom a load is for, which names the `tracing` target of its events ([`load_event!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// [`Cache::get_or_set`] and `try_get_or_set` (and the HTTP layer's lock): target
    /// `impcache::freshness`.
    GetOrSet,
    /// A `#[cached]` function with freshness options, tags or a lock: target `impcache::cached`,
    /// as every other event of the macro's runtime, whichever path serves the call.
    Cached,
}

/// A `tracing` event of a load for `$origin` ([`Origin`]): `load_event!(origin, warn, key, "..")`
/// is `tracing::warn!` with the origin's target. A target is fixed at each call site: this picks
/// one call site per origin.
macro_rules! load_event {
    ($origin:expr, limited_warn, $($event:tt)+) => {
        match $origin {
            $crate::freshness::job::Origin::GetOrSet => {
                $crate::observe::limited::limited_warn!(target: $crate::freshness::job::TARGET, $($event)+)
            }
            $crate::freshness::job::Origin::Cached => {
                $crate::observe::limited::limited_warn!(target: $crate::memoize::TARGET, $($event)+)
            }
        }
    };
    ($origin:expr, $level:ident, $($event:tt)+) => {
        match $origin {
            $crate::freshness::job::Origin::GetOrSet => {
                ::tracing::$level!(target: $crate::freshness::job::TARGET, $($event)+)
            }
            $crate::freshness::job::Origin::Cached => {
                ::tracing::$level!(target: $crate::memoize::TARGET, $($event)+)
            }
        }
    };
}
pub(super) use load_event;

/// The key of a load: the repository's address and the full key (two caches never share one).
pub(super) type FlightKey = (usize, String);

/// What a load needs besides its loader: shared by the foreground and background paths.
#[derive(Clone)]
pub(super) struct Job {
    pub(super) cache: Cache,
    pub(super) key: String,
    pub(super) expiry: Expiry,
    pub(super) policy: Freshness,
    /// The cross-process lock and its checked lifetime; `None` without one, or when the call's
    /// read failed (the cache is down: fail open at once).
    pub(super) lock: Option<(Lock, Expiry)>,
    /// Tags (issue 16): the call's tags, read with the entry and stored in its envelope.
    pub(super) tags: Tags,
    /// The tags its loader chose from the value (`tags_from`), stored with the call's.
    pub(super) loaded_tags: Option<LoadedTags>,
    /// Whether the stale value at hand is the near cache's fail-safe copy (the read failed).
    pub(super) fail_safe: bool,
    /// An early refresh: when the fresh value it replaces expires. The lock's second read ends
    /// such a refresh only for a value expiring later (another process's refresh), not for the
    /// value it replaces, which is fresh too.
    pub(super) replaces: Option<tokio::time::Instant>,
    /// What its caller spent of the hard timeout waiting for another caller's load
    /// ([`having_spent`](Job::having_spent)): its loader has the rest.
    pub(super) waited: std::time::Duration,
    /// Whom the load is for: the target of its events.
    pub(super) origin: Origin,
}

impl Job {
    /// This job with `spent` (waiting for another caller's load) taken off its allowance: first
    /// off the lock's `wait` (the time a caller may wait for other processes' values), then off
    /// its hard timeout ([`waited`](Job::waited); the policy keeps the hard timeout as set, which
    /// errors name). A caller that waited for another caller's load, and then loads on its own
    /// or leads the next turn, waits at most about one allowance in all.
    pub(super) fn having_spent(mut self, spent: std::time::Duration) -> Job {
        let mut over = spent;
        if let Some((lock, _)) = &mut self.lock {
            let wait = lock.wait_duration();
            *lock = lock.wait(wait.saturating_sub(spent));
            over = spent.saturating_sub(wait);
        }
        self.waited = over;
        self
    }

    /// The tags a loaded value is stored with: the call's, then those its loader chose, each
    /// checked as [`Cache::invalidate_tag`] checks it (one refused is left out, logged: it could
    /// never be invalidated).
    pub(super) fn value_tags(&self) -> Tags {
        let Some(loaded) = &self.loaded_tags else {
            return self.tags.clone();
        };
        let chosen: Vec<String> = loaded
            .get()
            .into_iter()
            .filter(|tag| match self.cache.check_tag(tag) {
                Ok(()) => true,
                Err(error) => {
                    let key = self.cache.logged_key(&self.key);
                    let error = self.cache.logged_error(&error);
                    load_event!(self.origin, warn, key, %error, "a tag chosen by the loader is left out");
                    false
                }
            })
            .collect();
        self.tags.and(&chosen)
    }

    pub(super) fn flight(&self) -> FlightKey {
        flight_key(&self.cache, &self.key)
    }
}

/// The flight key of `key` in `cache`.
pub(super) fn flight_key(cache: &Cache, key: &str) -> FlightKey {
    (
        Arc::as_ptr(cache.repository()) as *const () as usize,
        cache.make_key(key),
    )
}

/// Logs a cache operation of a load for `origin` that failed: the load goes on without the
/// cache.
pub(super) fn report(
    origin: Origin,
    cache: &Cache,
    operation: &'static str,
    key: &str,
    error: &Error,
) {
    let open = matches!(error, Error::CircuitOpen { .. });
    let (key, error) = (cache.logged_key(key), cache.logged_error(error));
    if open {
        load_event!(origin, debug, operation, key, %error, "cache unavailable; loading regardless");
    } else {
        load_event!(origin, limited_warn, operation, key, %error, "cache operation failed; loading regardless");
    }
}

/// What a `get_or_set` read found at its key: the value as the caller's type, and the entry it
/// was decoded from (its JSON, the key's remaining TTL). A value that does not decode is not
/// found ([`Cache::read_for_load_tagged`]).
pub(crate) struct Found<V> {
    pub(crate) value: V,
    pub(crate) entry: WithTtl,
}

/// The stored JSON as a `V`; `None` (logged) when it is not one.
pub(super) fn decode<V: DeserializeOwned>(job: &Job, bytes: &[u8]) -> Option<V> {
    decode_at(job.origin, &job.cache, &job.key, bytes)
}

/// The JSON stored at `key` as a `V`; `None` (logged, for `origin`) when it is not one.
pub(super) fn decode_at<V: DeserializeOwned>(
    origin: Origin,
    cache: &Cache,
    key: &str,
    bytes: &[u8],
) -> Option<V> {
    match json::decode(|| shown(&cache.make_key(key)), bytes) {
        Ok(value) => Some(value),
        Err(error) => {
            let error = cache.logged_error(&error);
            load_event!(origin, warn, %error, "the stored value does not decode as the requested type; loading and replacing it");
            None
        }
    }
}
