//! Warnings limited to one a second per call site. A failure that every call meets (a read-only
//! replica, a refused login, a `BUSY` script, a loader's backend down, the near cache's fail-safe
//! copy answering through an outage) is not an outage the circuit breaker speaks for once: logged
//! per call, it made tens of thousands of warnings a second (found by a probe). The warnings left
//! out are logged at `DEBUG`, and the next one logged at `WARN` says how many there were
//! (`left_out`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The shortest time between two warnings of one call site.
const EVERY: Duration = Duration::from_secs(1);

/// The warnings of one call site: `static WARNINGS: Limited = Limited::new();` beside it.
#[derive(Debug)]
pub struct Limited {
    /// When the next warning may be logged, in milliseconds since [`start`].
    next: AtomicU64,
    /// The warnings logged at `DEBUG` since the last one logged at `WARN`.
    left_out: AtomicU64,
}

impl Limited {
    /// A call site that has logged nothing yet.
    #[allow(clippy::new_without_default)] // only ever a `static`
    pub const fn new() -> Self {
        Self {
            next: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(left_out)` when this warning is logged at `WARN` (`left_out` were logged at `DEBUG`
    /// since the last one); `None` when it is logged at `DEBUG`.
    pub fn warn(&self) -> Option<u64> {
        let now = millis(start().elapsed());
        let next = self.next.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now + millis(EVERY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The instant the limits count from: the first warning's.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `tracing::warn!` at most once a second from this call site, `tracing::debug!` otherwise:
/// `limited_warn!(target: "impcache", key, %error, "...")`. The `WARN` event has a `left_out`
/// field: the events logged at `DEBUG` since the last one.
/// (`impcache::__private::limited_warn!` for the HTTP layer.)
#[doc(hidden)]
#[macro_export]
macro_rules! __limited_warn {
    (target: $target:expr, $($event:tt)+) => {{
        static WARNINGS: $crate::__private::Limited = $crate::__private::Limited::new();
        match WARNINGS.warn() {
            Some(left_out) => ::tracing::warn!(target: $target, left_out, $($event)+),
            None => ::tracing::debug!(target: $target, $($event)+),
        }
    }};
}
pub(crate) use crate::__limited_warn as limited_warn;

// Unit tests: an `assert!` here is the test failing; none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_second_and_the_rest_counted() {
        let limited = Limited::new();
        assert_eq!(limited.warn(), Some(0));
        for _ in 0..5 {
            assert_eq!(limited.warn(), None);
        }
        // Once the second has passed, the next warning says how many were left out.
        limited.next.store(0, Ordering::Relaxed);
        assert_eq!(limited.warn(), Some(5));
        assert_eq!(limited.warn(), None);
    }
}
