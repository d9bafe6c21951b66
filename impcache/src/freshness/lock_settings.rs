//! [`Lock`]: the settings of the cross-process lock of a `get_or_set` loader (the protocol that
//! uses them is `lock.rs`).

use std::time::Duration;

use crate::error::{shown, Error, Result};
use crate::expire::{Expiry, MAX_EXPIRE};

/// A cross-process lock around a `get_or_set` loader: with it, among all the processes sharing a
/// Redis, one runs the loader of a missing key and the others wait for its value. Set it with
/// [`Freshness::lock`](crate::Freshness::lock), or `#[cached(lock = 10)]`.
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
///   shared across processes: the next process takes the lock and runs its own loader; the
///   owner's own waiting callers get its error, as without a lock). A crashed owner releases
///   nothing: its lock expires after its lifetime, which must exceed the loader's hard timeout.
/// - **Wait**: a process that finds the lock taken polls the value key with a backoff (5 ms,
///   doubling, at most 50 ms), each poll one read and, while nothing fresh is there, one more
///   `SET NX` (which takes over a released or expired lock). A fresh value ends the wait and is
///   shared with the process's own waiters; the loader does not run here.
/// - **Bounds**: past [`Lock::wait`] the process stops waiting and runs the loader itself,
///   without the lock (fail open). A cache error while taking or polling does the same at once
///   (one while re-reading the value after taking the lock runs the loader under the lock, as
///   if nothing were there), and a call whose first read failed does not try the lock at all: a
///   Redis outage costs at most one deadline, as without the lock. A `SET NX` that timed out or
///   lost its connection may still have taken the lock: it is released in the background (its
///   token only), so that no other process waits out its lifetime.
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
    /// `None`: [`DEFAULT_LIFETIME`], or more under a long hard timeout ([`Lock::resolved`]).
    lifetime: Option<Duration>,
    /// `None`: twice the lifetime.
    wait: Option<Duration>,
}

/// The lifetime of a lock whose lifetime is not set, under a hard timeout shorter than it.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(10);
/// What a lifetime that is not set keeps above the loader's hard timeout: time for the store.
const STORE_MARGIN: Duration = Duration::from_secs(5);

impl Default for Lock {
    fn default() -> Self {
        Lock::new()
    }
}

impl Lock {
    /// A lifetime of 10 s (the [`hard_timeout`](crate::Freshness::hard_timeout) plus 5 s when
    /// that is longer: see [`lifetime`](Self::lifetime)), and a wait of twice the lifetime.
    pub const fn new() -> Self {
        Lock {
            lifetime: None,
            wait: None,
        }
    }

    /// How long the lock lives when its owner does not release it (a crashed or stuck owner):
    /// the others take over after it. Must be longer than the loader's
    /// [`hard_timeout`](crate::Freshness::hard_timeout) (checked: a shorter one is
    /// [`Error::InvalidExpire`]); give it a margin for the store too. Without a hard timeout, a
    /// loader running longer than the lifetime loses the lock, and another process may run its
    /// own loader meanwhile. At least 1 ms.
    ///
    /// Not set, it is 10 s, or the hard timeout plus 5 s when that is longer.
    pub const fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The most a process waits for another process's value before it runs the loader itself
    /// (fail open). Not set, it is twice the lifetime: when the owner dies, its lock expires
    /// after one lifetime, one waiting process takes it over, and the others wait for that
    /// process's value rather than all loading at once.
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// The lock without a lifetime of its own: the default, raised above the hard timeout.
    pub(crate) const fn without_lifetime(self) -> Lock {
        Lock {
            lifetime: None,
            ..self
        }
    }

    /// The lock's lifetime (without a hard timeout to outlast: see [`lifetime`](Self::lifetime)).
    pub const fn lifetime_duration(&self) -> Duration {
        match self.lifetime {
            Some(lifetime) => lifetime,
            None => DEFAULT_LIFETIME,
        }
    }

    /// The longest wait.
    pub const fn wait_duration(&self) -> Duration {
        match self.wait {
            Some(wait) => wait,
            None => self.lifetime_duration().saturating_mul(2),
        }
    }

    /// The lock with its lifetime (when not set) raised above the loader's hard timeout: the hard
    /// timeout plus [`STORE_MARGIN`], when that is longer than [`DEFAULT_LIFETIME`]. A wait that
    /// is not set follows. A hard timeout of [`MAX_EXPIRE`] or more ("no limit",
    /// `Duration::MAX`) counts as none, as no lock could outlast it.
    pub(crate) fn resolved(self, hard_timeout: Option<Duration>) -> Lock {
        match (self.lifetime, bounded(hard_timeout)) {
            (None, Some(hard)) if hard.saturating_add(STORE_MARGIN) > DEFAULT_LIFETIME => Lock {
                lifetime: Some(hard.saturating_add(STORE_MARGIN)),
                ..self
            },
            _ => self,
        }
    }

    /// The lifetime checked against the loader's hard timeout, as the lock key's expiry.
    pub(crate) fn checked(&self, hard_timeout: Option<Duration>, key: &str) -> Result<Expiry> {
        let hard_timeout = bounded(hard_timeout);
        let invalid = |reason: String| Error::InvalidExpire {
            key: shown(key),
            reason,
        };
        let lifetime = self.lifetime_duration();
        let millis = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return Err(invalid(format!(
                "the lock's lifetime ({lifetime:?}) must be at least 1 ms"
            )));
        }
        if lifetime > MAX_EXPIRE {
            return Err(invalid(format!(
                "the lock's lifetime ({lifetime:?}) is longer than the longest expiry ({MAX_EXPIRE:?})"
            )));
        }
        if let Some(hard) = hard_timeout {
            if lifetime <= hard {
                return Err(invalid(format!(
                    "the lock's lifetime ({lifetime:?}) must be longer than the loader's hard timeout ({hard:?})"
                )));
            }
        }
        Ok(Expiry::Milliseconds(millis))
    }
}

/// A loader's hard timeout as the lock sees it: one of [`MAX_EXPIRE`] or more is none.
fn bounded(hard_timeout: Option<Duration>) -> Option<Duration> {
    hard_timeout.filter(|hard| *hard < MAX_EXPIRE)
}
