//! [`Lock`]: one loader run per key across processes, for
//! [`Freshness::lock`](crate::Freshness::lock) (and `#[cached(lock = ...)]`).
//!
//! The protocol is in [`Lock`]'s docs.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::job::{load_event, report, Found, Job, Origin};
use super::lock_settings::Lock;
use super::policy::State;
use super::waits::{self, Cycle, Edge, Load};
use crate::cache::{observed, Cache};
use crate::error::{Error, Result};
use crate::expire::Expiry;
use crate::key::LOCK_KEY_PART;
use crate::observe::lock::{lock_outcome, LockOutcome};
use crate::observe::metrics::{Operation, Tally};
use crate::observe::polling::polled;

/// The first pause between two polls of a waiting process.
const FIRST_POLL: Duration = Duration::from_millis(5);
/// The longest pause between two polls.
const LAST_POLL: Duration = Duration::from_millis(50);
/// The first pause before a failed release is tried again.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest pause between two tries of a failed release.
const LAST_RETRY: Duration = Duration::from_secs(1);

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

/// The lock of a key, held by this process. Dropped unreleased (its load's future dropped: a
/// `CacheLayer` request whose client went away, a runtime shut down), it is released in the
/// background on the current runtime, and left to this process's next attempt on the key,
/// which releases and takes it at once (see `Orphans`), in case that release cannot run (the
/// runtime is gone): otherwise another process waits out its lifetime.
#[derive(Debug)]
pub struct Held {
    /// Where it is (the cache and the caller's key): for a release when dropped unreleased.
    /// Boxed: `Turn::Owner` would otherwise be the size of a whole `Cache` more.
    at: Box<(Cache, String)>,
    token: Bytes,
    /// When the lock has expired by itself: its lifetime, counted from when it was taken.
    expires: Instant,
    /// Until when it is held for sure: its lifetime, counted from when its `SET NX` was sent.
    held_until: Instant,
    /// Whom it was taken for: the target of the release's events.
    origin: Origin,
    /// Which lock it is, until it is released (or found gone, or expired).
    which: Option<LockId>,
    /// The load of this process holding it, when taken for one.
    holding: Option<Holding>,
}

impl Held {
    /// The lock of `key` in `cache`, taken with `token` for `lifetime` by a `SET NX` `sent` then
    /// (it has expired for sure `lifetime` after now, its answer, and is held for sure until
    /// `lifetime` after `sent`), for `origin`.
    fn new(
        cache: &Cache,
        key: &str,
        token: Bytes,
        lifetime: Expiry,
        origin: Origin,
        sent: Instant,
    ) -> Held {
        let lifetime = lifetime
            .as_duration()
            .map_or(crate::expire::MAX_EXPIRE, crate::expire::capped);
        Held {
            at: Box::new((cache.clone(), key.to_owned())),
            token,
            expires: Instant::now() + lifetime,
            held_until: sent + lifetime,
            origin,
            which: Some(lock_id(cache, key)),
            holding: None,
        }
    }

    /// Whether the lock is still held for sure: its lifetime has not passed since it was taken.
    /// Once it has, another process may have taken it over and stored a newer value: a load
    /// past its lock's lifetime (a stall, the process paused) does not store when the key holds
    /// a fresh value of its type (a paused owner overwrote the value of the process that took
    /// over, every time; found by a probe; see `load::run`).
    pub(crate) fn still_held(&self) -> bool {
        Instant::now() < self.held_until
    }

    /// Releases the lock of `key` on `cache` if this process still holds it
    /// (compare-and-delete). A release that fails (a connection reset, say) is logged and
    /// retried in the background (on the current tokio runtime; the caller does not wait), with
    /// a backoff, until it lands or the lock has expired by itself.
    pub async fn release(mut self, cache: &Cache, key: &str) {
        let released = cache.release_lock(key, self.token.clone()).await;
        if released.is_ok() {
            self.which = None;
        }
        match released {
            Ok(true) => {}
            Ok(false) => {
                let key = cache.logged_key(key);
                load_event!(self.origin, warn, key, "the lock was gone before its release: expired (its lifetime is shorter than the load and store took) or deleted (a delete_pattern matching the lock keys, `__lock:` under the prefix and version)");
            }
            Err(error) => {
                report(self.origin, cache, "release_lock", key, &error);
                self.release_later(cache, key);
            }
        }
    }

    /// Releases the lock of `key` in the background ([`retry_release`](Self::retry_release)),
    /// on the current tokio runtime; outside one the lock expires by itself.
    fn release_later(self, cache: &Cache, key: &str) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, key) = (cache.clone(), key.to_owned());
            runtime.spawn(async move { self.retry_release(&cache, &key).await });
        }
    }

    /// Tries the release of `key` again (the compare-and-delete is safe to repeat: only this
    /// process's token is deleted), pausing 50 ms, then twice as long each time up to 1 s,
    /// until it lands, finds the lock gone, or the lock has expired by itself.
    async fn retry_release(mut self, cache: &Cache, key: &str) {
        let mut pause = FIRST_RETRY;
        while Instant::now() + pause < self.expires {
            tokio::time::sleep(pause).await;
            let released = cache.release_lock(key, self.token.clone()).await;
            if released.is_ok() {
                self.which = None;
            }
            let logged = cache.logged_key(key);
            match released {
                Ok(true) => {
                    load_event!(
                        self.origin,
                        debug,
                        key = logged,
                        "released the lock on a retry"
                    );
                    return;
                }
                Ok(false) => {
                    load_event!(
                        self.origin,
                        debug,
                        key = logged,
                        "the lock was gone when its release was retried"
                    );
                    return;
                }
                Err(error) => {
                    let error = cache.logged_error(&error);
                    load_event!(self.origin, debug, key = logged, %error, ?pause, "the lock's release failed again; retrying");
                }
            }
            pause = (pause * 2).min(LAST_RETRY);
        }
        self.which = None;
        load_event!(
            self.origin,
            debug,
            key = cache.logged_key(key),
            "the lock expires by itself before the release's next retry: giving it up"
        );
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(which) = self.which.take() {
            Orphans::leave(which, self.token.clone(), self.expires);
            // (A runtime shutting down drops the task unrun: the orphan stays for the next
            // attempt.)
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (cache, key) = (self.at.0.clone(), self.at.1.clone());
                let token = self.token.clone();
                runtime.spawn(async move {
                    let _ = cache.release_lock(&key, token).await;
                });
            }
        }
    }
}

/// A `SET NX` of a lock under way. Dropped before its answer is known (the caller's future
/// dropped: `CacheLayer` takes its lock in the request's future, dropped when the client goes
/// away), it may have taken the lock: released in the background, as after an error that may
/// have landed. It held every process off for the lock's lifetime with no one loading (found by
/// a probe: 10 s for the next request of every process).
struct Taking<'a> {
    lock: Option<(&'a Cache, &'a str, Bytes, Expiry, Origin, Instant)>,
}

impl Taking<'_> {
    /// Its answer is known: nothing to do when dropped.
    fn answered(mut self) {
        self.lock = None;
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        if let Some((cache, key, token, lifetime, origin, sent)) = self.lock.take() {
            Held::new(cache, key, token, lifetime, origin, sent).release_later(cache, key);
        }
    }
}

/// A lock of this process: the repository's address (as in the flights' keys) and the lock's
/// full key.
type LockId = (usize, String);

/// The [`LockId`] of the lock of `key` in `cache`.
fn lock_id(cache: &Cache, key: &str) -> LockId {
    (
        Arc::as_ptr(cache.repository()) as *const () as usize,
        cache.make_key(&lock_key(key)),
    )
}

/// The loads of this process holding a lock, by lock, with when the lock has expired by itself
/// (see [`Holding`]).
static HOLDERS: LazyLock<Mutex<HashMap<LockId, (Load, Instant)>>> = LazyLock::new(Default::default);

/// The load of this process holding a lock (a `get_or_set` load's, not the HTTP layer's, whose
/// lock outlives the call that took it), known while the lock is held and has not expired: a
/// load of this process waiting for that lock waits for that load, and a wait that would close
/// a cycle of loads is not made (see `waits`).
#[derive(Debug)]
struct Holding {
    which: LockId,
    load: Load,
}

impl Holding {
    /// The lock `which`, expiring by itself at `expires`, held by the load this task runs
    /// (`None` outside a load).
    fn new(which: LockId, expires: Instant) -> Option<Holding> {
        let load = waits::current()?;
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        holders.insert(which.clone(), (load, expires));
        Some(Holding { which, load })
    }

    /// The load of this process holding the lock `which`, if any. Not one whose lock has expired
    /// (it may be another process's now: a lifetime shorter than the load).
    fn holder(which: &LockId) -> Option<Load> {
        let holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        let (load, expires) = holders.get(which)?;
        (*expires > Instant::now()).then_some(*load)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.get(&self.which).map(|(load, _)| *load) == Some(self.load) {
            holders.remove(&self.which);
        }
    }
}

/// The locks this process took and dropped unreleased, by [`LockId`], with their tokens and
/// expiry: the next attempt of this process on such a lock releases it (compare-and-delete) and
/// takes it at once. Without this, a load whose runtime shut down mid-way held up this process's
/// next runtime for the lock's whole lifetime (10 s by default; found by a probe). Entries are
/// only made by such drops, and the expired ones are pruned at each.
struct Orphans;

/// A list, not a map: it is empty but after a runtime's shutdown, and a `static` needs a `const`
/// constructor.
static ORPHANS: Mutex<Vec<(LockId, Bytes, Instant)>> = Mutex::new(Vec::new());

impl Orphans {
    fn leave(which: LockId, token: Bytes, expires: Instant) {
        let now = Instant::now();
        if expires <= now {
            return;
        }
        let mut orphans = ORPHANS.lock().unwrap_or_else(PoisonError::into_inner);
        orphans.retain(|(known, _, expires)| *expires > now && *known != which);
        orphans.push((which, token, expires));
    }

    /// The token of this process's orphaned lock of `key` in `cache`, if any (taken out).
    fn take(cache: &Cache, key: &str) -> Option<Bytes> {
        let mut orphans = ORPHANS.lock().unwrap_or_else(PoisonError::into_inner);
        if orphans.is_empty() {
            return None;
        }
        let which = lock_id(cache, key);
        let at = orphans.iter().position(|(known, _, _)| *known == which)?;
        let (_, token, expires) = orphans.swap_remove(at);
        (expires > Instant::now()).then_some(token)
    }
}

/// Takes the lock of `job`'s key, waiting for another process's value while it is held
/// (`wait`), or giving up at once (a background reload, `!wait`).
pub(super) async fn take<V: DeserializeOwned>(
    job: &Job,
    lock: Lock,
    lifetime: Expiry,
    wait: bool,
) -> Turn<(V, Bytes)> {
    let poll = || fresh(job);
    match take_polling(&job.cache, &job.key, job.origin, lock, lifetime, wait, poll).await {
        Turn::Owner(mut held) => {
            held.holding = Holding::new(lock_id(&job.cache, &job.key), held.expires);
            Turn::Owner(held)
        }
        turn => turn,
    }
}

/// The protocol of [`Lock`] on the lock of `key` (caller's part), `poll` reading what another
/// process stores (`Some`: it is there, the wait ends). `get_or_set` polls the value key; the
/// HTTP layer polls a URL's response (through `__private::lock`). The reads of `poll` are no
/// lookups of the caller's (`observe/polling.rs`): they count as operations, not as hits or
/// misses. `origin`: whom the lock is taken for, the target of its events.
pub(crate) async fn take_polling<T, F, Fut>(
    cache: &Cache,
    key: &str,
    origin: Origin,
    lock: Lock,
    lifetime: Expiry,
    wait: bool,
    mut poll: F,
) -> Turn<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    // Outside a tokio runtime (a plain executor) there are no timers to wait with nor tasks to
    // release a lock with: the caller loads without it, as `get_or_set` does (`load.rs`, `run`).
    // (`CacheLayer`'s lock, taken here, panicked there when busy: "no reactor running", found by
    // a probe, 2026-12-07.)
    if tokio::runtime::Handle::try_current().is_err() {
        return Turn::Open;
    }
    let token = token();
    let deadline = Instant::now() + crate::expire::capped(lock.wait_duration());
    // Before the first attempt: a store made after it is not missed.
    let watch = wait.then(|| cache.near_watch(key)).flatten();
    let mut pause = FIRST_POLL;
    let mut waited = false;
    // Within a load: the lock's id, and this caller's wait for the load of this process holding
    // the lock, if one does, looked up at each busy attempt (the lock passes from load to load).
    let which = waits::current().is_some().then(|| lock_id(cache, key));
    let mut waiting_for_holder: Option<(Load, Option<Edge>)> = None;
    loop {
        let sent = Instant::now();
        let taking = Taking {
            lock: Some((cache, key, token.clone(), lifetime, origin, sent)),
        };
        let acquired = cache.acquire_lock(key, token.clone(), lifetime).await;
        taking.answered();
        match acquired {
            Ok(true) => {
                let read = polled(poll());
                let held = Held::new(cache, key, token, lifetime, origin, sent);
                return owned(cache, key, held, waited, read).await;
            }
            Ok(false) => {
                if let Some(token) = Orphans::take(cache, key) {
                    // This process's own lock, dropped unreleased: released (only if it still
                    // holds that token) and taken again at once.
                    if cache.release_lock(key, token).await.unwrap_or(false) {
                        continue;
                    }
                }
                if !wait {
                    return outcome(LockOutcome::Busy, Turn::Busy);
                }
                match which.as_ref().and_then(Holding::holder) {
                    Some(holder)
                        if waiting_for_holder.as_ref().map(|(load, _)| *load) == Some(holder) => {}
                    Some(holder) => match waits::wait_for(holder) {
                        Ok(edge) => waiting_for_holder = Some((holder, edge)),
                        Err(Cycle) => {
                            let key = cache.logged_key(key);
                            load_event!(origin, warn, key, "the lock is held by a load waiting for this one: loading here, without the lock");
                            return outcome(LockOutcome::Cycle, Turn::Open);
                        }
                    },
                    None => waiting_for_holder = None,
                }
            }
            Err(error) => {
                if may_have_landed(&error) {
                    // The `SET NX` may have taken the lock with its answer lost (the connection
                    // reset, or the deadline passed, after it was sent): the loader runs here
                    // without the lock, and a lock it may hold unknowingly is released in the
                    // background (only this token is deleted), or other processes would wait
                    // out its whole lifetime for a value no one is loading.
                    Held::new(cache, key, token, lifetime, origin, sent).release_later(cache, key);
                }
                return failed(origin, cache, key, "acquire_lock", &error);
            }
        }
        // Waiting for the value.
        let now = Instant::now();
        if now >= deadline {
            let key = cache.logged_key(key);
            load_event!(origin, warn, key, wait = ?lock.wait_duration(), "waited for another process's value past the lock's wait: loading here, without the lock");
            return outcome(LockOutcome::TimedOut, Turn::Open);
        }
        until_changed(
            origin,
            cache.logged_key(key).as_deref(),
            pause.min(deadline - now),
            watch.as_ref(),
        )
        .await;
        pause = (pause * 2).min(LAST_POLL);
        waited = true;
        match polled(poll()).await {
            Ok(Some(value)) => return outcome(LockOutcome::Waited, Turn::Loaded(value)),
            Ok(None) => {}
            Err(error) => return failed(origin, cache, key, "get", &error),
        }
    }
}

/// The pause of a waiting process before its next poll of the value key. With a near cache
/// (`watch`), which tracks the value key, another process's store ends it at once, by the key's
/// invalidation (rueidisaside's waiters are woken that way); the poll that follows reads the
/// new value.
async fn until_changed(
    origin: Origin,
    key: Option<&str>,
    pause: Duration,
    watch: Option<&crate::near::Watch>,
) {
    match watch {
        Some(watch) => {
            if watch.changed_within(pause).await {
                load_event!(origin, debug, key, "the value key changed: polling at once");
            }
        }
        None => tokio::time::sleep(pause).await,
    }
}

/// The lock was taken (`held`): one more read (`read`), since another process may have stored
/// the value (and released its lock) since this process's read.
async fn owned<T>(
    cache: &Cache,
    key: &str,
    held: Held,
    waited: bool,
    read: impl Future<Output = Result<Option<T>>>,
) -> Turn<T> {
    let origin = held.origin;
    match read.await {
        Ok(None) => {}
        Ok(Some(value)) => {
            held.release(cache, key).await;
            return outcome(LockOutcome::Waited, Turn::Loaded(value));
        }
        // The loader runs; the lock is released after it as usual.
        Err(error) => report(origin, cache, "get", key, &error),
    }
    let taken = if waited {
        let key = cache.logged_key(key);
        load_event!(origin, debug, key, "took the lock over after waiting");
        LockOutcome::TookOver
    } else {
        LockOutcome::Acquired
    };
    outcome(taken, Turn::Owner(held))
}

/// The value at `job`'s key (decoded, and its bytes) if it is there, fresh, of the caller's
/// type (a value of an older type is reloaded under the lock, not served), and, for an early
/// refresh, not the value it replaces.
pub(super) async fn fresh<V: DeserializeOwned>(job: &Job) -> Result<Option<(V, Bytes)>> {
    // The tagged read when the call has tags: an envelope is opened and its tags are checked.
    // (A value of another type reads as none: reloaded under the lock.)
    let found = job
        .cache
        .read_for_load_tagged(&job.key, &job.policy, &job.tags, job.origin)
        .await?;
    let Some(Found { value, entry }) = found else {
        return Ok(None);
    };
    let State::Fresh { left } = job.policy.state(entry.ttl) else {
        return Ok(None);
    };
    if let (Some(replaced), Some(left)) = (job.replaces, left) {
        if Instant::now() + left <= replaced + SAME_EXPIRY {
            return Ok(None);
        }
    }
    Ok(Some((value, entry.value)))
}

/// How much later than the value an early refresh replaces another value must expire to be
/// another process's refresh: two reads of one key's expiry differ by their round trips.
const SAME_EXPIRY: Duration = Duration::from_millis(50);

fn failed<T>(
    origin: Origin,
    cache: &Cache,
    key: &str,
    operation: &'static str,
    error: &Error,
) -> Turn<T> {
    report(origin, cache, operation, key, error);
    outcome(LockOutcome::FailedOpen, Turn::Open)
}

/// `true` when a write that failed with `error` may still have been applied: it timed out, or
/// its connection failed, possibly after it was sent (not when the breaker kept it from being
/// sent, nor when the server refused it).
fn may_have_landed(error: &Error) -> bool {
    matches!(error, Error::Unavailable { .. } | Error::Timeout { .. })
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

// --- The lock of a key in the repository (issue 16): taken and released as operations of the
// cache (counted, observed). ---

impl Cache {
    /// Takes the lock of `key` (at `{prefix}:{version}:__lock:{key}`) with `token` for
    /// `lifetime` (`SET NX PX`), counted as a `set_nx`; `true` when taken.
    pub(crate) async fn acquire_lock(
        &self,
        key: &str,
        token: Bytes,
        lifetime: Expiry,
    ) -> Result<bool> {
        let lock = lock_key(key);
        observed!(self, Operation::SetNx, Some(&lock), async {
            let tally = Tally::written(token.len());
            let taken = self
                .shared
                .backend
                .set_nx(self.key_parts(&lock), token, lifetime)
                .await?;
            Ok((taken, tally))
        })
    }

    /// Releases the lock of `key` if it still holds `token` (compare-and-delete), counted as a
    /// `delete`; `true` when released.
    pub(crate) async fn release_lock(&self, key: &str, token: Bytes) -> Result<bool> {
        let lock = lock_key(key);
        observed!(self, Operation::Delete, Some(&lock), async {
            let released = self
                .shared
                .backend
                .delete_if_equal(self.key_parts(&lock), token)
                .await?;
            Ok((released, Tally::NONE))
        })
    }
}

/// The caller's part of the lock key of `key`: `__lock:{key}`.
pub(crate) fn lock_key(key: &str) -> String {
    format!("{LOCK_KEY_PART}{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_must_outlast_the_hard_timeout() -> Result<()> {
        let s = Duration::from_secs(1);
        let lock = Lock::new().lifetime(2 * s);
        assert_eq!(lock.checked(Some(s), "k")?, Expiry::Milliseconds(2000));
        assert_eq!(lock.checked(None, "k")?, Expiry::Milliseconds(2000));
        let error = lock.checked(Some(2 * s), "k").unwrap_err();
        assert!(error.to_string().contains("hard timeout"), "{error}");
        assert!(Lock::new()
            .lifetime(Duration::ZERO)
            .checked(None, "k")
            .is_err());
        Ok(())
    }

    #[test]
    fn an_unset_lifetime_outlasts_the_hard_timeout() -> Result<()> {
        let s = Duration::from_secs(1);
        // The defaults: 10 s, and a wait of twice the lifetime.
        assert_eq!(Lock::new().lifetime_duration(), 10 * s);
        assert_eq!(Lock::new().wait_duration(), 20 * s);
        assert_eq!(Lock::new().resolved(Some(2 * s)), Lock::new());
        // A hard timeout of 30 s: the lifetime becomes 35 s, the wait 70 s.
        let resolved = Lock::new().resolved(Some(30 * s));
        assert_eq!(resolved.lifetime_duration(), 35 * s);
        assert_eq!(resolved.wait_duration(), 70 * s);
        assert_eq!(
            resolved.checked(Some(30 * s), "k")?,
            Expiry::Milliseconds(35_000)
        );
        // A lifetime or a wait set is kept.
        let set = Lock::new().lifetime(40 * s).wait(3 * s);
        assert_eq!(set.resolved(Some(30 * s)), set);
        assert!(Lock::new()
            .lifetime(20 * s)
            .resolved(Some(30 * s))
            .checked(Some(30 * s), "k")
            .is_err());
        Ok(())
    }

    /// A hard timeout of `Duration::MAX` ("no limit") counts as none: the default lifetime is
    /// kept, where "hard timeout plus 5 s" was past the longest expiry and refused.
    #[test]
    fn an_unbounded_hard_timeout_keeps_the_default_lifetime() -> Result<()> {
        let endless = Some(Duration::MAX);
        let resolved = Lock::new().resolved(endless);
        assert_eq!(resolved, Lock::new());
        assert_eq!(
            resolved.checked(endless, "k")?,
            Expiry::Milliseconds(10_000)
        );
        let short = Lock::new().lifetime(Duration::from_secs(1));
        assert_eq!(
            short
                .without_lifetime()
                .resolved(Some(Duration::from_secs(30))),
            Lock::new().resolved(Some(Duration::from_secs(30)))
        );
        Ok(())
    }

    #[test]
    fn tokens_differ() {
        let tokens: std::collections::HashSet<_> = (0..1000).map(|_| token()).collect();
        assert_eq!(tokens.len(), 1000);
        assert_eq!(token().len(), 32);
    }
}
