//! How long an entry lives: [`Expire`] (what callers pass) and [`Expiry`] (what repositories get).

use std::time::Duration;

use crate::error::{shown, Error, Result};

/// The longest expiry accepted: 100 years. Redis itself rejects expiries whose absolute time in
/// milliseconds overflows a signed 64-bit integer; the in-memory repository needs a bound too.
pub const MAX_EXPIRE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `duration`, at most [`MAX_EXPIRE`]: for the waits and local lifetimes impcache adds to an
/// `Instant` (a deadline, a lock's wait, a near-cache copy's life), where a setting such as
/// `Duration::MAX` ("no limit") would overflow; 100 years is no limit in practice.
pub(crate) fn capped(duration: Duration) -> Duration {
    duration.min(MAX_EXPIRE)
}

/// The lifetime given to a write: whole seconds (any integer), a [`Duration`], or the explicit
/// [`Expire::NEVER`].
///
/// ```
/// use std::time::Duration;
/// use impcache::Expire;
///
/// let a: Expire = 100.into();                          // 100 s, sent as `SET .. EX 100`
/// let b: Expire = Duration::from_millis(1500).into();  // sent as `SET .. PX 1500`
/// let c = Expire::NEVER;                               // no TTL: an explicit choice
/// # let _ = (a, b, c);
/// ```
///
/// Zero, negative and over-long expiries are rejected with [`Error::InvalidExpire`] before
/// anything is sent: a cache entry without a TTL is never an accident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expire(Repr);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repr {
    Seconds(i128),
    Duration(Duration),
    Never,
}

impl Expire {
    /// Store without any expiry. Under a `volatile-*` eviction policy such keys are never evicted:
    /// use this only where the entry is invalidated by hand.
    pub const NEVER: Expire = Expire(Repr::Never);

    /// An expiry of whole seconds.
    pub const fn seconds(seconds: u64) -> Self {
        Expire(Repr::Seconds(seconds as i128))
    }

    /// An expiry given as a [`Duration`]; sub-second precision is kept (`PX`).
    pub const fn from_duration(duration: Duration) -> Self {
        Expire(Repr::Duration(duration))
    }

    /// The expiry as a bound on a lifetime (a local cache's longest): no expiry and what is
    /// longer than [`MAX_EXPIRE`] are `MAX_EXPIRE`, zero and negative numbers are zero.
    pub(crate) fn as_bound(self) -> Duration {
        match self.0 {
            Repr::Never => MAX_EXPIRE,
            Repr::Seconds(s) => {
                Duration::from_secs(s.clamp(0, i128::from(MAX_EXPIRE.as_secs())) as u64)
            }
            Repr::Duration(d) => capped(d),
        }
    }

    /// Checks the expiry and turns it into what is sent to the repository.
    pub fn resolve(self, key: &str) -> Result<Expiry> {
        let invalid = |reason: String| Error::InvalidExpire {
            key: shown(key),
            reason,
        };
        match self.0 {
            Repr::Never => Ok(Expiry::Never),
            Repr::Seconds(s) if s <= 0 => Err(invalid(format!(
                "{s} seconds: an expire must be positive (use `Expire::NEVER` to store without expiry)"
            ))),
            Repr::Seconds(s) if s > i128::from(MAX_EXPIRE.as_secs()) => Err(invalid(format!(
                "{s} seconds is longer than the maximum of {} seconds",
                MAX_EXPIRE.as_secs()
            ))),
            Repr::Seconds(s) => Ok(Expiry::Seconds(s as u64)),
            Repr::Duration(d) if d.is_zero() => Err(invalid(
                "a zero duration: an expire must be positive (use `Expire::NEVER` to store without expiry)"
                    .to_owned(),
            )),
            Repr::Duration(d) if d > MAX_EXPIRE => Err(invalid(format!(
                "{d:?} is longer than the maximum of {MAX_EXPIRE:?}"
            ))),
            Repr::Duration(d) if d.subsec_nanos() == 0 => Ok(Expiry::Seconds(d.as_secs())),
            // Round sub-millisecond parts up, so 1 ns is 1 ms rather than an invalid 0.
            Repr::Duration(d) => Ok(Expiry::Milliseconds(d.as_nanos().div_ceil(1_000_000) as u64)),
        }
    }
}

macro_rules! expire_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Expire {
            fn from(seconds: $t) -> Self {
                Expire(Repr::Seconds(seconds as i128))
            }
        }
    )*};
}
expire_from_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<Duration> for Expire {
    fn from(duration: Duration) -> Self {
        Expire::from_duration(duration)
    }
}

/// A validated expiry, as handed to a [`CacheRepository`](crate::CacheRepository).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Expiry {
    /// Whole seconds (`SET .. EX n`); never zero.
    Seconds(u64),
    /// Milliseconds (`SET .. PX n`); never zero.
    Milliseconds(u64),
    /// No expiry.
    Never,
}

impl Expiry {
    /// The lifetime as a [`Duration`], `None` for [`Expiry::Never`].
    pub fn as_duration(self) -> Option<Duration> {
        match self {
            Expiry::Seconds(s) => Some(Duration::from_secs(s)),
            Expiry::Milliseconds(ms) => Some(Duration::from_millis(ms)),
            Expiry::Never => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_a_bound_never_and_too_long_are_the_maximum_and_non_positive_is_zero() {
        assert_eq!(Expire::from(300).as_bound(), Duration::from_secs(300));
        assert_eq!(
            Expire::from(Duration::from_millis(50)).as_bound(),
            Duration::from_millis(50)
        );
        assert_eq!(Expire::NEVER.as_bound(), MAX_EXPIRE);
        assert_eq!(Expire::from(Duration::MAX).as_bound(), MAX_EXPIRE);
        assert_eq!(Expire::from(u64::MAX).as_bound(), MAX_EXPIRE);
        assert_eq!(Expire::from(0).as_bound(), Duration::ZERO);
        assert_eq!(Expire::from(-5).as_bound(), Duration::ZERO);
    }

    #[test]
    fn integers_are_seconds_and_durations_keep_milliseconds() {
        assert_eq!(
            Expire::from(100).resolve("k").ok(),
            Some(Expiry::Seconds(100))
        );
        assert_eq!(
            Expire::from(Duration::from_secs(3)).resolve("k").ok(),
            Some(Expiry::Seconds(3))
        );
        assert_eq!(
            Expire::from(Duration::from_millis(1500)).resolve("k").ok(),
            Some(Expiry::Milliseconds(1500))
        );
        assert_eq!(
            Expire::from(Duration::from_nanos(1)).resolve("k").ok(),
            Some(Expiry::Milliseconds(1))
        );
        assert_eq!(Expire::NEVER.resolve("k").ok(), Some(Expiry::Never));
    }

    #[test]
    fn zero_negative_and_too_long_are_rejected_naming_the_key() {
        for bad in [
            Expire::from(0),
            Expire::from(-5),
            Expire::from(Duration::ZERO),
            Expire::from(u64::MAX),
            Expire::from(MAX_EXPIRE + Duration::from_millis(1)),
        ] {
            let err = bad.resolve("my-key").unwrap_err();
            assert!(matches!(err, Error::InvalidExpire { .. }), "{err}");
            assert!(err.to_string().contains("my-key"), "{err}");
        }
    }
}
