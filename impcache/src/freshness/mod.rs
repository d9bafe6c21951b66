//! Freshness: [`Cache::get_or_set`](crate::Cache::get_or_set) and
//! [`try_get_or_set`](crate::Cache::try_get_or_set), and the [`Freshness`] policy they (and
//! `#[cached(...)]`) take: stale-while-revalidate, stale-if-error, soft and hard timeouts of the
//! loader, and probabilistic early refresh.
//!
//! # How a call runs
//! - **Read**: one round trip. Without a policy that needs it, a `GET`; with a stale window or
//!   early refresh, `GET` + `PTTL` pipelined (on Cluster, one `EVAL` doing both), through
//!   [`CacheRepository::get_with_ttl`](crate::CacheRepository::get_with_ttl).
//! - **Fresh hit**: the value is returned (with early refresh, sometimes after starting a
//!   background reload).
//! - **Stale hit** within `stale_while_revalidate`: the stale value is returned at once, and one
//!   background reload starts (`load.rs`: a spawned task holding the key's single-flight).
//! - **Miss** (or stale past that window): the loader runs once per key per process, through the
//!   single-flight of [`crate::flight`]. The leader's loader runs in a spawned task that answers
//!   the leader, publishes the value's JSON to the waiters, stores it (`SET`, in the background
//!   of the caller; the command is sent before the caller is answered, so a write of the key the
//!   caller makes next lands after it) and only then ends the flight. A write of the key through
//!   a `Cache` of the process (`set`, `delete`, ...) detaches the flight before it is sent and
//!   again once done (`Cache::detaching`): a load detached before its store is sent stores
//!   nothing (its value, computed before the write, answers its caller and waiters only; so too
//!   a background reload, or a load whose caller was answered early with a stale value), and a
//!   call after the write loads again rather than be handed the value the write replaced or
//!   removed. The loader
//!   runs in the caller's `tracing` span, as it would in place (the loader only: the span
//!   closes once the caller and its loader are done, not the store; a background reload runs in no caller's span); a task-local cannot follow it. A dropped caller therefore cancels nothing and strands no one. A
//!   panicking loader is caught in its task and treated as a failure (below): the flight is
//!   answered, nothing stays stuck, and the panicking caller gets the stale value or
//!   [`Error::Loader`](crate::Error::Loader) (`#[cached]` resumes the panic instead).
//! - **Loader failure** (an `Err` of `try_get_or_set`, the hard timeout, a panic): logged
//!   (`WARN`, target `impcache::freshness`; `impcache::cached` when the call is a `#[cached]`
//!   function's, as every event of its load: `job.rs`, `load_event!`), never stored; the caller gets the stale value when
//!   its read found one within `stale_if_error`, else the error. The waiters do not run their
//!   loaders (as moka's `try_get_with`): each answers with the stale value its own read found
//!   within its window, else gets [`Error::Loader`](crate::Error::Loader) naming the key, whose
//!   reason says another caller's load of the key failed and gives that load's error. Errors are
//!   never stored: a caller arriving once the flight has ended loads again. A panic abandons the
//!   flight instead: the waiters join it again and one of them leads the next run, as a
//!   panicking `#[cached]` body's waiters do. (`#[cached]`: a body's `Err` or `None` is the
//!   caller's own, so each waiter with no stale value runs its own body at once, as without
//!   freshness options, and under a `lock` without taking it; a body given up at its hard timeout is shared, its waiters get the "timed out"
//!   return value.) With a `fail_safe_throttle`, the stale value then answers the key's calls
//!   for that long without a loader run (timed on tokio's clock, as the loader's timeouts are).
//! - **Cache errors** (down, deadline, breaker open, a key too long): logged, and the loader runs
//!   and answers; they never fail the call. The read costs at most one deadline, and the store
//!   happens after the caller is answered.
//!
//! # Storage: byte-identical to the Python library
//! No envelope around the value. An entry fresh for `expire` is stored with a Redis TTL of
//! `expire` plus the stale window (the longer of `stale_while_revalidate` and `stale_if_error`),
//! and a read learns how far it is into that window from the `PTTL` of the same round trip: it is
//! fresh while more than the window is left. The alternative, an envelope holding the logical
//! expiry (FusionCache's), would make every value unreadable by the Python library and by plain
//! `get`. The cost of this choice: a Python reader (or a plain [`get`](crate::Cache::get)) sees
//! an ordinary value that lives until the stale window ends, not until `expire`; and a policy's
//! reads send `PTTL` too (one round trip all the same).
//!
//! The exception is a call with [tags](GetOrSet::tags) (issue 16): its value is stored in an
//! envelope holding the tags and the creation time (see the crate docs' Tags section).
//!
//! # Bounds
//! No call waits longer than the read's deadline plus what its policy allows the loader: the
//! hard timeout (or, without one, the loader's own duration); with a stale value at hand and a
//! soft timeout, the soft timeout. Stores never delay an answer.
//! With a [`Lock`], a miss may also wait up to the lock's wait for another process's value
//! (or, on a cache error, one more deadline), before its loader runs.
//!
//! # Where each part lives
//! - `policy.rs`: [`Freshness`], its options and the fresh/stale rule.
//! - `request.rs`: [`GetOrSet`] / [`TryGetOrSet`], what `get_or_set` returns, and their future
//!   [`GetOrSetFuture`] (a near-cached fresh hit answered without the machinery).
//! - `load.rs`: one call: read, classify, load through the flight.
//! - `throttle.rs`: the fail-safe throttle's table of recently failed keys.
//! - `answer.rs`: how a call was answered, for `#[cached]`'s counts.
//! - `lock.rs`: [`Lock`], one loader run across processes (its protocol is in its docs), and
//!   the lock key's reads and writes.
//! - `cache_io.rs`: the [`Cache`](crate::Cache) methods of the protocol: `get_or_set`,
//!   `try_get_or_set`, `get_raw_with_ttl`, and the reads and writes `load.rs` goes through.

pub(crate) mod answer;
mod cache_io;
pub(crate) mod job;
mod load;
mod lock;
mod lock_settings;
mod policy;
mod request;
mod throttle;
mod waits;

pub(crate) use job::Origin;
pub(crate) use load::{get_or_set as load_with, near_fresh_hit, LoadError};
pub use lock_settings::Lock;

/// The lock's protocol for the HTTP layer (`__private::lock`).
pub(crate) mod lock_private {
    use std::time::Duration;

    use super::lock::take_polling;
    pub use super::lock::{Held, Turn};
    use super::lock_settings::Lock;

    /// [`take_polling`] with the lock's own lifetime (raised above `hard_timeout` when not set,
    /// as `get_or_set`'s), waiting for another process's value when `wait` (else
    /// [`Turn::Busy`]: a background revalidation). A lifetime that `get_or_set` would refuse
    /// ([`invalid`]) is raised as if not set: a layer has no call to refuse it with (it warns
    /// when it is applied), and running without the lock would call the handler in every
    /// process.
    pub(crate) async fn take<T, F, Fut>(
        cache: &crate::Cache,
        key: &str,
        lock: Lock,
        hard_timeout: Option<std::time::Duration>,
        wait: bool,
        poll: F,
    ) -> Turn<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::Result<Option<T>>>,
    {
        let mut lock = lock.resolved(hard_timeout);
        let mut checked = lock.checked(hard_timeout, key);
        if checked.is_err() {
            lock = lock.without_lifetime().resolved(hard_timeout);
            checked = lock.checked(hard_timeout, key);
        }
        // Its events under `get_or_set`'s target, as before a `#[cached]` origin existed.
        let origin = super::job::Origin::GetOrSet;
        match checked {
            Ok(lifetime) => take_polling(cache, key, origin, lock, lifetime, wait, poll).await,
            // The default lifetime is always valid; kept open rather than assumed.
            Err(_) => Turn::Open,
        }
    }

    /// Why `get_or_set` would refuse `lock` under `hard_timeout` (its lifetime not longer than
    /// the hard timeout, say), or `None`; [`take`] raises such a lifetime as if it were not set.
    pub(crate) fn invalid(lock: Lock, hard_timeout: Option<Duration>) -> Option<String> {
        match lock.resolved(hard_timeout).checked(hard_timeout, "") {
            Err(crate::Error::InvalidExpire { reason, .. }) => Some(reason),
            Err(error) => Some(error.to_string()),
            Ok(_) => None,
        }
    }
}

/// The fail-safe throttle for the HTTP layer (`__private::fail_safe`): the same table of
/// recently failed keys as `get_or_set`'s, keyed as its flights are.
pub(crate) mod throttle_private {
    use std::time::Duration;

    /// The handler of `key` (under the cache's prefix and version) failed: [`throttled`] says
    /// so for `throttle` from now.
    pub fn throttle(cache: &crate::Cache, key: &str, throttle: Duration) {
        super::throttle::start(cache, key, throttle);
    }

    /// The handler of `key` succeeded: its throttle, if any, ends.
    pub fn unthrottle(cache: &crate::Cache, key: &str) {
        super::throttle::end(cache, key);
    }

    /// Whether the handler of `key` failed less than its throttle ago.
    pub fn throttled(cache: &crate::Cache, key: &str) -> bool {
        super::throttle::holds(cache, key)
    }
}
pub use policy::{Freshness, State};
pub use request::{GetOrSet, GetOrSetFuture, TryGetOrSet};
