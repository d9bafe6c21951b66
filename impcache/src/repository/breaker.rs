//! A lock-free circuit breaker: after `threshold` consecutive outages the repository fails fast for
//! `cool_down`, then lets one probe through (half-open); a successful probe closes it again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Circuit-breaker settings of a [`RedisCacheRepository`](crate::RedisCacheRepository).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Consecutive outage errors (unreachable, dropped, timed out) that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker fails fast before letting one probe through.
    pub cool_down: Duration,
}

impl CircuitBreakerConfig {
    /// A breaker opening after `failure_threshold` consecutive failures for `cool_down`.
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            cool_down,
        }
    }
}

impl Default for CircuitBreakerConfig {
    /// Opens after 5 consecutive failures, probes every 500 ms.
    fn default() -> Self {
        Self::new(5, Duration::from_millis(500))
    }
}

/// What the breaker says about the next operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead as the one probe; report the outcome.
    Probe,
    /// Open: fail fast.
    Rejected,
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    config: Option<CircuitBreakerConfig>,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
}

impl CircuitBreaker {
    pub(crate) fn new(config: Option<CircuitBreakerConfig>) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so that 0 can mean "closed".
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// `true` while the breaker rejects operations.
    pub(crate) fn is_open(&self) -> bool {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        open_until != 0 && self.now_ms() < open_until
    }

    /// Decides whether the next operation may run. The closed path is one atomic load.
    pub(crate) fn admit(&self) -> Admission {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        if open_until == 0 || self.config.is_none() {
            return Admission::Allowed;
        }
        if self.now_ms() < open_until {
            return Admission::Rejected;
        }
        match self.probe_in_flight.compare_exchange(
            false,
            true,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Rejected,
        }
    }

    /// Records a successful round trip (the server answered, even with an error reply).
    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Release);
            self.probe_in_flight.store(false, Ordering::Release);
            tracing::info!("impcache: redis answered again, circuit breaker closed");
        }
    }

    /// Records an outage (unreachable, dropped connection, timeout).
    pub(crate) fn record_failure(&self, admission: &Admission) {
        let Some(config) = self.config else { return };
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if *admission == Admission::Probe || failures >= config.failure_threshold {
            let until = self.now_ms() + config.cool_down.as_millis() as u64;
            let was_open = self.open_until_ms.swap(until, Ordering::AcqRel) != 0;
            self.probe_in_flight.store(false, Ordering::Release);
            if !was_open {
                tracing::warn!(
                    failures,
                    cool_down = ?config.cool_down,
                    "impcache: circuit breaker opened: redis calls fail fast until a probe succeeds"
                );
            }
        }
    }

    /// Releases a probe slot that ended without telling anything about the server.
    pub(crate) fn release_probe(&self, admission: &Admission) {
        if *admission == Admission::Probe {
            self.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

/// Frees a half-open probe slot when dropped, so that a caller dropping its future mid-flight
/// cannot leave the breaker waiting for a probe that never reports.
pub(crate) struct ProbeGuard<'a> {
    pub(crate) breaker: &'a CircuitBreaker,
    pub(crate) admission: &'a Admission,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.breaker.release_probe(self.admission);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_and_closes_on_success() {
        let breaker = CircuitBreaker::new(Some(CircuitBreakerConfig::new(
            3,
            Duration::from_millis(30),
        )));
        for _ in 0..2 {
            let a = breaker.admit();
            assert_eq!(a, Admission::Allowed);
            breaker.record_failure(&a);
        }
        assert!(!breaker.is_open());
        let a = breaker.admit();
        breaker.record_failure(&a);
        assert!(breaker.is_open());
        assert_eq!(breaker.admit(), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.admit();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(
            breaker.admit(),
            Admission::Rejected,
            "only one probe at a time"
        );
        breaker.record_failure(&probe);
        assert!(breaker.is_open(), "a failed probe reopens at once");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.admit(), Admission::Probe);
        breaker.record_success();
        assert_eq!(breaker.admit(), Admission::Allowed);
    }

    #[test]
    fn disabled_breaker_always_allows() {
        let breaker = CircuitBreaker::new(None);
        for _ in 0..100 {
            let a = breaker.admit();
            breaker.record_failure(&a);
        }
        assert_eq!(breaker.admit(), Admission::Allowed);
    }
}
