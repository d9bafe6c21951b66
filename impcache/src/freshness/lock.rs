//! [`Lock`]: one loader run per key across processes, for
//! [`Freshness::lock`](crate::Freshness::lock) (and `#[cached(lock = ...)]`).
//!
//! The protocol is in [`Lock`]'s docs.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::load::{report, Job, TARGET};
use super::policy::State;
use crate::cache::Cache;
use crate::error::{shown, Error, Result};
use crate::expire::Expiry;
use crate::observe::lock::{lock_outcome, LockOutcome};

/// The first pause between two polls of a waiting process.
const FIRST_POLL: Duration = Duration::from_millis(5);
/// The longest pause between two polls.
const LAST_POLL: Duration = Duration::from_millis(50);

/// A cross-process lock around a `get_or_set` loader: with it, among all the processes sharing a
/// Redis, one runs the loader of a missing key and the others wait for its value. Set it with
/// [`Freshness::lock`](crate::Freshness::lock), or `#[cached(lock = "10s")]`.
///
/// # Protocol
/// - **In front**: the per-process single-flight of `get_or_set`. Only a flight's leader
///   (one caller per key per process) touches the lock.
/// - **Take**: `SET {prefix}:{version}:__lock:{key} {token} NX PX {lifetime}`, the token 128
///   random bits. Keys starting with `__lock:` are therefore reserved. The owner reads the value
///   key once more (another process may have stored it between this process's read and the
///   `SET NX`), then runs the loader, stores the value, and only then releases the lock.
/// - **Release**: by the owner only, compare-and-delete (on Redis, one `EVAL` on one key, so it
///   works on Cluster), after the store, whether the loader succeeded or failed (errors are never
///   shared: the next process takes the lock and runs its own loader). A crashed owner releases
///   nothing: its lock expires after its lifetime, which must exceed the loader's hard timeout.
/// - **Wait**: a process that finds the lock taken polls the value key with a backoff (5 ms,
///   doubling, at most 50 ms), each poll one read and, while nothing fresh is there, one more
///   `SET NX` (which takes over a released or expired lock). A fresh value ends the wait and is
///   shared with the process's own waiters; the loader does not run here.
/// - **Bounds**: past [`Lock::wait`] the process stops waiting and runs the loader itself,
///   without the lock (fail open). A cache error while taking, re-reading or polling does the
///   same at once, and a call whose first read failed does not try the lock at all: a Redis
///   outage costs at most one deadline, as without the lock.
/// - **Background reloads** (stale-while-revalidate, early refresh) try the lock once and do
///   not wait: when it is taken, another process is reloading and this one serves its stale value.
///
/// A miss under a lock costs three round trips more than one without it (`SET NX`, the second
/// read, the release); hits cost nothing more.
///
/// ```
/// use std::time::Duration;
/// use impcache::{Freshness, Lock};
///
/// let policy = Freshness::new()
///     .hard_timeout(Duration::from_secs(5))
///     .lock(Lock::new().lifetime(Duration::from_secs(10)).wait(Duration::from_secs(3)));
/// assert_eq!(policy.lock_options().unwrap().wait_duration(), Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Lock {
    lifetime: Duration,
    wait: Duration,
}

impl Default for Lock {
    fn default() -> Self {
        Lock::new()
    }
}

impl Lock {
    /// A lifetime of 10 s, and a wait of at most 10 s.
    pub const fn new() -> Self {
        Lock {
            lifetime: Duration::from_secs(10),
            wait: Duration::from_secs(10),
        }
    }

    /// How long the lock lives when its owner does not release it (a crashed or stuck owner):
    /// the others take over after it. Must be longer than the loader's
    /// [`hard_timeout`](crate::Freshness::hard_timeout) (checked: a shorter one is
    /// [`Error::InvalidExpire`]); give it a margin for the store too. Without a hard timeout, a
    /// loader running longer than the lifetime loses the lock, and another process may run its
    /// own loader meanwhile. At least 1 ms.
    pub const fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The most a process waits for another process's value before it runs the loader itself
    /// (fail open).
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The lock's lifetime.
    pub const fn lifetime_duration(&self) -> Duration {
        self.lifetime
    }

    /// The longest wait.
    pub const fn wait_duration(&self) -> Duration {
        self.wait
    }

    /// The lifetime checked against the loader's hard timeout, as the lock key's expiry.
    pub(crate) fn checked(&self, hard_timeout: Option<Duration>, key: &str) -> Result<Expiry> {
        let invalid = |reason: String| Error::InvalidExpire {
            key: shown(key),
            reason,
        };
        let millis = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return Err(invalid(format!(
                "the lock's lifetime ({:?}) must be at least 1 ms",
                self.lifetime
            )));
        }
        if let Some(hard) = hard_timeout {
            if self.lifetime <= hard {
                return Err(invalid(format!(
                    "the lock's lifetime ({:?}) must be longer than the loader's hard timeout ({hard:?})",
                    self.lifetime
                )));
            }
        }
        Ok(Expiry::Milliseconds(millis))
    }
}

/// What taking the lock came to (`T`: what the poll found, the value's bytes for `get_or_set`).
#[derive(Debug)]
#[non_exhaustive]
pub enum Turn<T = Bytes> {
    /// This process holds the lock: run the loader, store, then [`Held::release`].
    Owner(Held),
    /// Another process's fresh value: serve it; the loader does not run.
    Loaded(T),
    /// Run the loader without the lock (the wait's deadline passed, or the cache failed).
    Open,
    /// Taken by another process, and this caller does not wait (a background reload).
    Busy,
}

/// The lock of a key, held by this process.
#[derive(Debug)]
pub struct Held {
    token: Bytes,
}

impl Held {
    /// Releases the lock of `key` on `cache` if this process still holds it
    /// (compare-and-delete); a failure is logged, and the lock expires by itself.
    pub async fn release(self, cache: &Cache, key: &str) {
        match cache.release_lock(key, self.token).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(target: TARGET, key, "the lock had expired before its release: its lifetime is shorter than the load and store took");
            }
            Err(error) => report("release_lock", key, &error),
        }
    }
}

/// Takes the lock of `job`'s key, waiting for another process's value while it is held
/// (`wait`), or giving up at once (a background reload, `!wait`).
pub(super) async fn take(job: &Job, lock: Lock, lifetime: Expiry, wait: bool) -> Turn {
    take_polling(&job.cache, &job.key, lock, lifetime, wait, || fresh(job)).await
}

/// The protocol of [`Lock`] on the lock of `key` (caller's part), `poll` reading what another
/// process stores (`Some`: it is there, the wait ends). `get_or_set` polls the value key; the
/// HTTP layer polls a URL's response (through `__private::lock`).
pub(crate) async fn take_polling<T, F, Fut>(
    cache: &Cache,
    key: &str,
    lock: Lock,
    lifetime: Expiry,
    wait: bool,
    mut poll: F,
) -> Turn<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let token = token();
    let deadline = Instant::now() + lock.wait;
    let mut pause = FIRST_POLL;
    let mut waited = false;
    loop {
        match cache.acquire_lock(key, token.clone(), lifetime).await {
            Ok(true) => return owned(cache, key, token, waited, poll()).await,
            Ok(false) if !wait => return outcome(LockOutcome::Busy, Turn::Busy),
            Ok(false) => {}
            Err(error) => return failed(key, "acquire_lock", &error),
        }
        // Waiting for the value.
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(target: TARGET, key, wait = ?lock.wait, "waited for another process's value past the lock's wait: loading here, without the lock");
            return outcome(LockOutcome::TimedOut, Turn::Open);
        }
        until_changed(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LAST_POLL);
        waited = true;
        match poll().await {
            Ok(Some(value)) => return outcome(LockOutcome::Waited, Turn::Loaded(value)),
            Ok(None) => {}
            Err(error) => return failed(key, "get", &error),
        }
    }
}

/// The pause of a waiting process before its next poll of the value key. The hook for a near
/// cache: one that tracks the value key learns of another process's store by its invalidation,
/// and can end this pause then (rueidisaside's waiters are woken that way) instead of when it
/// runs out; the poll that follows reads the new value.
async fn until_changed(pause: Duration) {
    tokio::time::sleep(pause).await;
}

/// The lock was taken: one more read (`read`), since another process may have stored the value
/// (and released its lock) since this process's read.
async fn owned<T>(
    cache: &Cache,
    key: &str,
    token: Bytes,
    waited: bool,
    read: impl Future<Output = Result<Option<T>>>,
) -> Turn<T> {
    let held = Held { token };
    match read.await {
        Ok(None) => {}
        Ok(Some(value)) => {
            held.release(cache, key).await;
            return outcome(LockOutcome::Waited, Turn::Loaded(value));
        }
        // The loader runs; the lock is released after it as usual.
        Err(error) => report("get", key, &error),
    }
    let taken = if waited {
        tracing::debug!(target: TARGET, key, "took the lock over after waiting");
        LockOutcome::TookOver
    } else {
        LockOutcome::Acquired
    };
    outcome(taken, Turn::Owner(held))
}

/// The value at `job`'s key if it is there and fresh.
async fn fresh(job: &Job) -> Result<Option<Bytes>> {
    // The tagged read when the call has tags: an envelope is opened and its tags are checked.
    let found = job
        .cache
        .read_for_load_tagged(&job.key, &job.policy, &job.tags)
        .await?;
    Ok(found
        .filter(|found| matches!(job.policy.state(found.ttl), State::Fresh { .. }))
        .map(|found| found.value))
}

fn failed<T>(key: &str, operation: &'static str, error: &Error) -> Turn<T> {
    report(operation, key, error);
    outcome(LockOutcome::FailedOpen, Turn::Open)
}

fn outcome<T>(outcome: LockOutcome, turn: Turn<T>) -> Turn<T> {
    lock_outcome(outcome);
    turn
}

/// A lock token: 128 bits from two hashers seeded from the OS's randomness, over a counter.
fn token() -> Bytes {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (
        RandomState::new().hash_one(n),
        RandomState::new().hash_one(!n),
    );
    Bytes::from(format!("{a:016x}{b:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_must_outlast_the_hard_timeout() {
        let s = Duration::from_secs(1);
        let lock = Lock::new().lifetime(2 * s);
        assert_eq!(
            lock.checked(Some(s), "k").unwrap(),
            Expiry::Milliseconds(2000)
        );
        assert_eq!(lock.checked(None, "k").unwrap(), Expiry::Milliseconds(2000));
        let error = lock.checked(Some(2 * s), "k").unwrap_err();
        assert!(error.to_string().contains("hard timeout"), "{error}");
        assert!(Lock::new()
            .lifetime(Duration::ZERO)
            .checked(None, "k")
            .is_err());
    }

    #[test]
    fn tokens_differ() {
        let tokens: std::collections::HashSet<_> = (0..1000).map(|_| token()).collect();
        assert_eq!(tokens.len(), 1000);
        assert_eq!(token().len(), 32);
    }
}
