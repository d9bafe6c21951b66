//! [`Lock`]: one loader run per key across processes, for
//! [`Freshness::lock`](crate::Freshness::lock) (and `#[cached(lock = ...)]`).
//!
//! The protocol is in [`Lock`]'s docs.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::load::{report, Job, TARGET};
use super::lock_settings::Lock;
use super::policy::State;
use crate::error::{Error, Result};
use crate::expire::Expiry;
use crate::observe::lock::{lock_outcome, LockOutcome};

/// The first pause between two polls of a waiting process.
const FIRST_POLL: Duration = Duration::from_millis(5);
/// The longest pause between two polls.
const LAST_POLL: Duration = Duration::from_millis(50);

/// What taking the lock came to.
pub(super) enum Turn {
    /// This process holds the lock: run the loader, store, then [`Held::release`].
    Owner(Held),
    /// Another process's fresh value: serve it; the loader does not run.
    Loaded(Bytes),
    /// Run the loader without the lock (the wait's deadline passed, or the cache failed).
    Open,
    /// Taken by another process, and this caller does not wait (a background reload).
    Busy,
}

/// The lock of a key, held by this process.
pub(super) struct Held {
    token: Bytes,
}

impl Held {
    /// Releases the lock if this process still holds it (compare-and-delete); a failure is
    /// logged, and the lock expires by itself.
    pub(super) async fn release(self, job: &Job) {
        match job.cache.release_lock(&job.key, self.token).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(target: TARGET, key = job.key, "the lock had expired before its release: its lifetime is shorter than the load and store took");
            }
            Err(error) => report("release_lock", &job.key, &error),
        }
    }
}

/// Takes the lock of `job`'s key, waiting for another process's value while it is held
/// (`wait`), or giving up at once (a background reload, `!wait`).
pub(super) async fn take(job: &Job, lock: Lock, lifetime: Expiry, wait: bool) -> Turn {
    let token = token();
    let deadline = Instant::now() + lock.wait_duration();
    let mut pause = FIRST_POLL;
    let mut waited = false;
    loop {
        match job
            .cache
            .acquire_lock(&job.key, token.clone(), lifetime)
            .await
        {
            Ok(true) => return owned(job, token, waited).await,
            Ok(false) if !wait => return outcome(LockOutcome::Busy, Turn::Busy),
            Ok(false) => {}
            Err(error) => return failed(job, "acquire_lock", &error),
        }
        // Waiting for the value.
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(target: TARGET, key = job.key, wait = ?lock.wait_duration(), "waited for another process's value past the lock's wait: loading here, without the lock");
            return outcome(LockOutcome::TimedOut, Turn::Open);
        }
        until_changed(job, pause.min(deadline - now)).await;
        pause = (pause * 2).min(LAST_POLL);
        waited = true;
        match fresh(job).await {
            Ok(Some(value)) => return outcome(LockOutcome::Waited, Turn::Loaded(value)),
            Ok(None) => {}
            Err(error) => return failed(job, "get", &error),
        }
    }
}

/// The pause of a waiting process before its next poll of the value key. The hook for a near
/// cache: one that tracks the value key learns of another process's store by its invalidation,
/// and can end this pause then (rueidisaside's waiters are woken that way) instead of when it
/// runs out; the poll that follows reads the new value.
async fn until_changed(_job: &Job, pause: Duration) {
    tokio::time::sleep(pause).await;
}

/// The lock was taken: one more read, since another process may have stored the value (and
/// released its lock) since this process's read.
async fn owned(job: &Job, token: Bytes, waited: bool) -> Turn {
    let held = Held { token };
    match fresh(job).await {
        Ok(None) => {}
        Ok(Some(value)) => {
            held.release(job).await;
            return outcome(LockOutcome::Waited, Turn::Loaded(value));
        }
        // The loader runs; the lock is released after it as usual.
        Err(error) => report("get", &job.key, &error),
    }
    let taken = if waited {
        tracing::debug!(target: TARGET, key = job.key, "took the lock over after waiting");
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

fn failed(job: &Job, operation: &'static str, error: &Error) -> Turn {
    report(operation, &job.key, error);
    outcome(LockOutcome::FailedOpen, Turn::Open)
}

fn outcome(outcome: LockOutcome, turn: Turn) -> Turn {
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
