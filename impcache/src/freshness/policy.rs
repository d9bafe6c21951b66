//! [`Freshness`]: how long a value is served after its expiry, and how long its loader may take.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use super::lock_settings::Lock;
use crate::error::{Error, Result};
use crate::expire::{Expire, Expiry, MAX_EXPIRE};

/// The longest stale window kept (see [`Freshness::stale_window`]).
const LONGEST_STALE_WINDOW: Duration = Duration::from_secs(MAX_EXPIRE.as_secs() / 2);

/// A freshness policy: what [`Cache::get_or_set`](crate::Cache::get_or_set) (through
/// [`GetOrSet::freshness`](crate::GetOrSet::freshness)) and `#[cached(...)]` do around an entry's
/// expiry and a slow or failing loader. Every option is off by default, and
/// `Freshness::default()` behaves as a plain `get_or_set`.
///
/// | option | effect |
/// |---|---|
/// | [`stale_while_revalidate(d)`](Freshness::stale_while_revalidate) | up to `d` after the expiry, answer with the stale value at once and reload it once, in the background |
/// | [`stale_if_error(d)`](Freshness::stale_if_error) | up to `d` after the expiry, answer with the stale value when the loader fails, times out or panics |
/// | [`soft_timeout(d)`](Freshness::soft_timeout) | with a stale value at hand, answer with it when the loader takes longer than `d`; the loader finishes and stores in the background |
/// | [`hard_timeout(d)`](Freshness::hard_timeout) | give up on the loader after `d` (stale value if any, else [`Error::Loader`](crate::Error::Loader)) |
/// | [`early_refresh(d)`](Freshness::early_refresh) | reload a fresh value in the background before it expires, with a probability that rises as the expiry nears (XFetch) |
/// | [`fail_safe_throttle(d)`](Freshness::fail_safe_throttle) | for `d` after a loader failed, answer with the stale value (within either window) without running the loader |
/// | [`lock(l)`](Freshness::lock) | one loader run per key across processes: a lock in the repository, the other processes wait for the value (see [`Lock`]) |
///
/// The entry is stored with a time to live of `expire` plus the longer of the two stale windows,
/// and a read learns how much of it is left (`GET` + `PTTL` in one round trip): the value itself
/// is stored as it always is (see the [module docs](crate::freshness)).
///
/// ```
/// use std::time::Duration;
/// use impcache::Freshness;
///
/// let policy = Freshness::new()
///     .stale_while_revalidate(Duration::from_secs(60))
///     .stale_if_error(Duration::from_secs(3600))
///     .soft_timeout(Duration::from_millis(100))
///     .hard_timeout(Duration::from_secs(2));
/// assert_eq!(policy.stale_window(), Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Freshness {
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    early_refresh: Option<Duration>,
    fail_safe_throttle: Option<Duration>,
    lock: Option<Lock>,
}

/// Where a value read with its remaining TTL stands under a policy ([`Freshness::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Before its expiry: `left` until it (`None`: no expiry known).
    Fresh {
        /// Time left before the expiry.
        left: Option<Duration>,
    },
    /// Past its expiry by `past` (within the stored stale window).
    Stale {
        /// Time since the expiry.
        past: Duration,
    },
}

impl Freshness {
    /// No option set: the same as `Freshness::default()`.
    pub const fn new() -> Self {
        Freshness {
            stale_while_revalidate: None,
            stale_if_error: None,
            soft_timeout: None,
            hard_timeout: None,
            early_refresh: None,
            fail_safe_throttle: None,
            lock: None,
        }
    }

    /// Up to `window` after the expiry, a read answers with the stale value at once, and the
    /// first such read starts one reload in the background (a spawned task holding the key's
    /// single-flight, bounded by [`hard_timeout`](Freshness::hard_timeout)). Past the window a read
    /// loads, as on a miss (the entry itself may still be kept for a longer
    /// [`stale_if_error`](Freshness::stale_if_error) window, to answer a failing loader).
    pub const fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Up to `window` after the expiry, a read whose loader fails (an `Err`, a hard timeout, a
    /// panic) answers with the stale value instead; the failure is logged (`WARN`, target
    /// `impcache::freshness`) and nothing is stored.
    pub const fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// With a stale value at hand (within [`stale_if_error`](Freshness::stale_if_error)), a
    /// caller waits at most `timeout` for the loader and then answers with the stale value; the
    /// loader goes on in the background and stores its value. Without a stale value it has no
    /// effect.
    pub const fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// The loader is given up after `timeout` (its future dropped): the caller gets the stale
    /// value when one is at hand, else [`Error::Loader`](crate::Error::Loader)
    /// (`timed out after 2s (hard timeout)`); the callers waiting for it get the same (their
    /// stale value, else an `Error::Loader` naming that failure), without running their
    /// loaders. Also bounds background reloads. Taken literally, as a zero
    /// [`soft_timeout`](Freshness::soft_timeout) is: a zero `timeout` gives the loader no time,
    /// so it is never started (`not run: the hard timeout is zero`). Timed on tokio's clock;
    /// outside a tokio runtime (a plain executor) a non-zero one is not applied, having no timer
    /// (README).
    pub const fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Probabilistic early refresh (XFetch, as in Symfony's cache): a read of a fresh value with
    /// `left` before its expiry starts a background reload when `left <= -gap * ln(u)`, `u`
    /// uniform in (0, 1]: with probability `exp(-left / gap)`. Set `gap` to about the loader's
    /// duration (XFetch's δ·β): one reader reloads a little before the expiry, and the others
    /// keep being answered from the cache.
    pub const fn early_refresh(mut self, gap: Duration) -> Self {
        self.early_refresh = Some(gap);
        self
    }

    /// FusionCache's fail-safe throttle: once a loader of a key failed (an `Err`, a hard
    /// timeout, a panic; in the foreground or in a background reload), for `throttle` the key's
    /// stale value answers at once, within [`stale_if_error`](Freshness::stale_if_error) or
    /// [`stale_while_revalidate`](Freshness::stale_while_revalidate), and no loader runs nor
    /// background reload starts (an [early refresh](Freshness::early_refresh) neither): a
    /// failing origin is not called again at the rate of the requests. Per process; past
    /// `throttle` (at most a year) the next call loads again, and a load that succeeds (a miss
    /// always loads) ends it at once, as in FusionCache. Timed on tokio's clock, as the
    /// loader's timeouts are (`tokio::time::advance` ends it on a paused clock). The process
    /// keeps the throttles of at most 10,000 keys (of every `Cache`; the least recently throttled
    /// go first). Off by default.
    pub const fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = Some(throttle);
        self
    }

    /// One loader run per key across every process sharing the repository (see [`Lock`]): a
    /// miss takes the key's lock before its loader runs, and the other processes wait for the
    /// value it stores. Also applies to background reloads, which skip when another process
    /// holds the lock.
    pub const fn lock(mut self, lock: Lock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// The lock, if set.
    pub const fn lock_options(&self) -> Option<Lock> {
        self.lock
    }

    /// The stale-while-revalidate window, if set.
    pub const fn stale_while_revalidate_window(&self) -> Option<Duration> {
        self.stale_while_revalidate
    }

    /// The stale-if-error window, if set.
    pub const fn stale_if_error_window(&self) -> Option<Duration> {
        self.stale_if_error
    }

    /// The soft timeout, if set.
    pub const fn soft_timeout_duration(&self) -> Option<Duration> {
        self.soft_timeout
    }

    /// The hard timeout, if set.
    pub const fn hard_timeout_duration(&self) -> Option<Duration> {
        self.hard_timeout
    }

    /// The early-refresh gap, if set.
    pub const fn early_refresh_gap(&self) -> Option<Duration> {
        self.early_refresh
    }

    /// The fail-safe throttle, if set.
    pub const fn fail_safe_throttle_duration(&self) -> Option<Duration> {
        self.fail_safe_throttle
    }

    /// How long an entry is kept after its expiry: the longer of the two stale windows (zero
    /// when neither is set), at most half of [`MAX_EXPIRE`] (50 years: a window of
    /// `Duration::MAX` is that long), so that every `expire` up to the other half takes any
    /// window.
    pub fn stale_window(&self) -> Duration {
        let swr = self.stale_while_revalidate.unwrap_or_default();
        let sie = self.stale_if_error.unwrap_or_default();
        swr.max(sie).min(LONGEST_STALE_WINDOW)
    }

    /// Whether a read needs the entry's remaining TTL (`GET` + `PTTL`) rather than a `GET`.
    pub(crate) fn needs_ttl(&self) -> bool {
        self.early_refresh.is_some() || !self.stale_window().is_zero()
    }

    /// The expiry stored for a value that is fresh for `expire`: `expire` plus the stale
    /// window (no expiry stays no expiry). `key` names the key in an invalid expire's error.
    ///
    /// With [`state`](Freshness::state), what a caller other than `get_or_set` (the HTTP layer)
    /// needs to store and read entries by this policy.
    pub fn stored_expiry(&self, expire: Expire, key: &str) -> Result<Expiry> {
        let expiry = expire.resolve(key)?;
        let window = self.stale_window();
        match expiry.as_duration() {
            Some(fresh) if fresh.saturating_add(window) > MAX_EXPIRE => Err(Error::InvalidExpire {
                key: key.to_owned(),
                reason: format!(
                    "{fresh:?} plus the stale window of {window:?} is longer than the maximum \
                     of {MAX_EXPIRE:?} (a window is at most {LONGEST_STALE_WINDOW:?})"
                ),
            }),
            Some(fresh) if !window.is_zero() => {
                Expire::from_duration(fresh.saturating_add(window)).resolve(key)
            }
            _ => Ok(expiry),
        }
    }

    /// What a load by this policy stores and locks with, checked before anything runs: the
    /// stored expiry ([`stored_expiry`](Self::stored_expiry)) and, with a [`lock`](Self::lock),
    /// the lock resolved against the hard timeout with its key's expiry. Errors
    /// ([`Error::InvalidExpire`](crate::Error::InvalidExpire), naming `key`): an invalid
    /// `expire`, a lock lifetime under 1 ms or not longer than the hard timeout.
    pub(crate) fn load_settings(&self, expire: Expire, key: &str) -> Result<LoadSettings> {
        let expiry = self.stored_expiry(expire, key)?;
        let lock = match self.lock {
            Some(lock) => {
                let lock = lock.resolved(self.hard_timeout);
                Some((lock, lock.checked(self.hard_timeout, key)?))
            }
            None => None,
        };
        Ok(LoadSettings { expiry, lock })
    }

    /// Where a value whose key has `ttl` left (as [`Cache::get_raw_with_ttl`] reads it) stands:
    /// fresh while more than the stale window is left.
    ///
    /// [`Cache::get_raw_with_ttl`]: crate::Cache::get_raw_with_ttl
    pub fn state(&self, ttl: Option<Duration>) -> State {
        let window = self.stale_window();
        match ttl {
            None => State::Fresh { left: None },
            Some(ttl) if ttl > window => State::Fresh {
                left: Some(ttl - window),
            },
            Some(ttl) => State::Stale { past: window - ttl },
        }
    }

    /// Whether a stale value `past` its expiry is served while it is reloaded in the background.
    pub fn serves_while_revalidating(&self, past: Duration) -> bool {
        self.stale_while_revalidate
            .is_some_and(|window| past <= window)
    }

    /// Whether a stale value `past` its expiry may stand in for a failed loader.
    pub fn serves_if_error(&self, past: Duration) -> bool {
        self.stale_if_error.is_some_and(|window| past <= window)
    }

    /// Whether a fresh value with `left` before its expiry should be reloaded now (XFetch: a
    /// coin thrown at each call).
    pub fn refresh_early(&self, left: Option<Duration>) -> bool {
        let (Some(gap), Some(left)) = (self.early_refresh, left) else {
            return false;
        };
        if gap.is_zero() {
            return false;
        }
        // u in (0, 1]: -ln(u) in [0, inf).
        let u = (random() >> 11) as f64 / (1u64 << 53) as f64;
        let u = 1.0 - u;
        left.as_secs_f64() <= -gap.as_secs_f64() * u.ln()
    }
}

/// A pseudo-random `u64` (splitmix64 over a counter seeded once per process): for early refresh's
/// coin, where only spreading matters.
fn random() -> u64 {
    static STATE: LazyLock<AtomicU64> =
        LazyLock::new(|| AtomicU64::new(RandomState::new().hash_one(0x5eed_u64)));
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What [`Freshness::load_settings`] checked: the stored expiry, and the lock with its key's
/// expiry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadSettings {
    pub(crate) expiry: Expiry,
    pub(crate) lock: Option<(Lock, Expiry)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_stored_ttl_is_the_expire_plus_the_longer_stale_window() -> Result<()> {
        let policy = Freshness::new()
            .stale_while_revalidate(10 * S)
            .stale_if_error(60 * S);
        assert_eq!(
            policy.stored_expiry(Expire::seconds(5), "k")?,
            Expiry::Seconds(65)
        );
        assert_eq!(
            Freshness::new().stored_expiry(Expire::seconds(5), "k")?,
            Expiry::Seconds(5)
        );
        assert_eq!(policy.stored_expiry(Expire::NEVER, "k")?, Expiry::Never);
        assert!(policy.stored_expiry(Expire::seconds(0), "k").is_err());
        assert!(policy.needs_ttl() && !Freshness::new().needs_ttl());
        Ok(())
    }

    #[test]
    fn a_window_of_duration_max_is_the_longest_kept() -> Result<()> {
        let forever = Freshness::new().stale_if_error(Duration::MAX);
        assert_eq!(forever.stale_window(), LONGEST_STALE_WINDOW);
        assert_eq!(
            forever.stored_expiry(Expire::seconds(60), "k")?,
            Expiry::Seconds(LONGEST_STALE_WINDOW.as_secs() + 60)
        );
        // Fresh for a minute, then stale for the rest of the key's life.
        let stored = LONGEST_STALE_WINDOW + 60 * S;
        assert_eq!(
            forever.state(Some(stored)),
            State::Fresh { left: Some(60 * S) }
        );
        assert_eq!(
            forever.state(Some(LONGEST_STALE_WINDOW - S)),
            State::Stale { past: S }
        );
        // Past the longest expiry in all: refused, the window named.
        let error = forever
            .stored_expiry(Expire::from_duration(MAX_EXPIRE), "k")
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("stale window"), "{error}");
        Ok(())
    }

    #[test]
    fn the_remaining_ttl_says_fresh_or_how_long_past_the_expiry() {
        let policy = Freshness::new()
            .stale_while_revalidate(10 * S)
            .stale_if_error(60 * S);
        assert_eq!(
            policy.state(Some(70 * S)),
            State::Fresh { left: Some(10 * S) }
        );
        assert_eq!(policy.state(Some(55 * S)), State::Stale { past: 5 * S });
        assert!(policy.serves_while_revalidating(5 * S));
        assert_eq!(policy.state(Some(30 * S)), State::Stale { past: 30 * S });
        assert!(!policy.serves_while_revalidating(30 * S));
        assert!(policy.serves_if_error(30 * S));
        assert_eq!(policy.state(None), State::Fresh { left: None });
        // No window: anything present is fresh.
        assert_eq!(
            Freshness::new().state(Some(S)),
            State::Fresh { left: Some(S) }
        );
    }

    #[test]
    fn early_refresh_fires_more_often_as_the_expiry_nears() {
        let policy = Freshness::new().early_refresh(S);
        let rate = |left: Duration| {
            (0..10_000)
                .filter(|_| policy.refresh_early(Some(left)))
                .count()
        };
        let (near, far) = (rate(Duration::from_millis(10)), rate(10 * S));
        assert!(near > 9_000, "{near}");
        assert!(far < 100, "{far}");
        assert!(!Freshness::new().refresh_early(Some(Duration::ZERO)));
    }
}
