//! A lock-free circuit breaker: after `threshold` consecutive outages the repository fails fast for
//! `cool_down`, then lets one probe through (half-open); a successful probe closes it again. The
//! calls it turns away name the failure that opened it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use metrics::Label;

#[cfg(feature = "cluster")]
use crate::observe::hooks::breaker_gone;
use crate::observe::hooks::{breaker_state, breaker_transition, BreakerState};

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
    /// The labels of its metrics: `repository` and `target`.
    labels: Vec<Label>,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
    /// What the last failure that opened the breaker (or kept it open) ended in.
    last_failure: ArcSwapOption<String>,
    /// Whether its target is gone ([`CircuitBreaker::retire`]): its metrics no longer move.
    retired: AtomicBool,
}

impl CircuitBreaker {
    /// A breaker of the repository kind `repository` (`redis`, `sentinel`, `cluster`) guarding
    /// `target`, as its metrics name them: the server's DSN without its password, the Sentinel
    /// service, the cluster's seed nodes, or one cluster node's `host:port`. Two repositories of
    /// one kind therefore keep apart in the metrics.
    pub(crate) fn new(
        config: Option<CircuitBreakerConfig>,
        repository: &'static str,
        target: String,
    ) -> Self {
        let labels = vec![
            Label::from_static_parts("repository", repository),
            Label::new("target", target),
        ];
        if config.is_some() {
            breaker_state(&labels, BreakerState::Closed);
        }
        Self {
            config,
            labels,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            last_failure: ArcSwapOption::empty(),
            retired: AtomicBool::new(false),
        }
    }

    /// Its target is gone (a Cluster node no longer in the slot map): its state gauges are set
    /// to 0 and no longer move, whatever a call still under way records. A breaker left open
    /// for a primary replaced by a failover said "open" for ever (found by a probe).
    #[cfg(feature = "cluster")]
    pub(crate) fn retire(&self) {
        if self.config.is_some() && !self.retired.swap(true, Ordering::AcqRel) {
            breaker_gone(&self.labels);
        }
    }

    /// The value of its `i`th metrics label (0: `repository`, 1: `target`), which its log events
    /// carry too: with two repositories, a log line says whose breaker moved.
    fn label(&self, i: usize) -> &str {
        self.labels.get(i).map_or("", Label::value)
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

    /// What the last failure that opened the breaker (or kept it open) ended in (`Connection
    /// refused (os error 111)`): named by the errors of the calls it turns away, which said only
    /// "after repeated backend failures" (found by a probe). `None` before any opened it.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.last_failure
            .load()
            .as_deref()
            .map(|cause| cause.as_str().to_owned())
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
            Ok(_) => {
                self.transition(BreakerState::Open, BreakerState::HalfOpen);
                Admission::Probe
            }
            Err(_) => Admission::Rejected,
        }
    }

    /// Records a successful round trip (the server answered, even with an error reply).
    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        // The load keeps the closed path read-only; the swap lets one of two successes landing
        // together close it (and log it) once.
        if self.open_until_ms.load(Ordering::Relaxed) != 0
            && self.open_until_ms.swap(0, Ordering::AcqRel) != 0
        {
            let from = if self.probe_in_flight.swap(false, Ordering::AcqRel) {
                BreakerState::HalfOpen
            } else {
                BreakerState::Open
            };
            self.transition(from, BreakerState::Closed);
            tracing::info!(
                repository = self.label(0),
                target = self.label(1),
                "impcache: redis answered again, circuit breaker closed"
            );
        }
    }

    /// Records an outage (unreachable, dropped connection, timeout); `cause`, the error it ended
    /// in, is named in the warning logged when this opens the breaker.
    pub(crate) fn record_failure(&self, admission: &Admission, cause: &dyn std::fmt::Display) {
        let Some(config) = self.config else { return };
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if *admission == Admission::Probe || failures >= config.failure_threshold {
            // Before it opens: a call turned away finds the cause.
            self.last_failure.store(Some(Arc::new(cause.to_string())));
            // `Duration::MAX` ("stay open") would overflow: capped at 100 years.
            let cool_down = crate::expire::capped(config.cool_down).as_millis() as u64;
            let until = self.now_ms().saturating_add(cool_down);
            let was_open = self.open_until_ms.swap(until, Ordering::AcqRel) != 0;
            // Only the probe's own failure ends its probe: an operation admitted while the
            // breaker was closed may fail late, while a probe is out; it must not free the slot
            // for a second probe.
            let probe_ended = *admission == Admission::Probe
                && self.probe_in_flight.swap(false, Ordering::AcqRel);
            if probe_ended {
                self.transition(BreakerState::HalfOpen, BreakerState::Open);
            } else if !was_open {
                self.transition(BreakerState::Closed, BreakerState::Open);
            }
            if !was_open {
                tracing::warn!(
                    repository = self.label(0),
                    target = self.label(1),
                    failures,
                    cool_down = ?config.cool_down,
                    last_error = %cause,
                    "impcache: circuit breaker opened: redis calls fail fast until a probe succeeds"
                );
            }
        }
    }

    /// Releases a probe slot that ended without telling anything about the server.
    pub(crate) fn release_probe(&self, admission: &Admission) {
        if *admission == Admission::Probe && self.probe_in_flight.swap(false, Ordering::AcqRel) {
            // Back to open with its cool-down over: the next operation is the probe.
            self.transition(BreakerState::HalfOpen, BreakerState::Open);
        }
    }

    /// Records a change of state in the metrics (rare: no cost on the paths that do not change it).
    #[cold]
    fn transition(&self, from: BreakerState, to: BreakerState) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        breaker_transition(&self.labels, from, to);
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

// Unit tests: an `assert!` here is the test failing (clippy.toml allows the panicking macros in
// tests); none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_and_closes_on_success() {
        let breaker = CircuitBreaker::new(
            // A cool-down long enough that no preemption of the test's thread ends it between
            // two lines that expect it running (30 ms could).
            Some(CircuitBreakerConfig::new(3, Duration::from_millis(300))),
            "redis",
            "redis://127.0.0.1:6379/0".to_owned(),
        );
        for _ in 0..2 {
            let a = breaker.admit();
            assert_eq!(a, Admission::Allowed);
            breaker.record_failure(&a, &"refused");
        }
        assert!(!breaker.is_open());
        let a = breaker.admit();
        breaker.record_failure(&a, &"refused");
        assert!(breaker.is_open());
        assert_eq!(breaker.admit(), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(350));
        let probe = breaker.admit();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(
            breaker.admit(),
            Admission::Rejected,
            "only one probe at a time"
        );
        breaker.record_failure(&probe, &"refused");
        assert!(breaker.is_open(), "a failed probe reopens at once");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(breaker.admit(), Admission::Probe);
        breaker.record_success();
        assert_eq!(breaker.admit(), Admission::Allowed);
    }

    /// The calls an open breaker turns away name the failure that opened it (or, after a failed
    /// probe, the probe's): they said only "after repeated backend failures".
    #[test]
    fn an_open_breaker_names_the_failure_that_opened_it() {
        let breaker = CircuitBreaker::new(
            Some(CircuitBreakerConfig::new(2, Duration::from_millis(10))),
            "redis",
            "h:1".to_owned(),
        );
        assert_eq!(breaker.last_failure(), None);
        let a = breaker.admit();
        breaker.record_failure(&a, &"refused");
        let a = breaker.admit();
        breaker.record_failure(&a, &"Connection reset by peer");
        assert_eq!(breaker.admit(), Admission::Rejected);
        assert_eq!(
            breaker.last_failure().as_deref(),
            Some("Connection reset by peer")
        );
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.admit();
        breaker.record_failure(&probe, &"timed out after 100ms");
        assert_eq!(
            breaker.last_failure().as_deref(),
            Some("timed out after 100ms")
        );
    }

    /// A cool-down of `Duration::MAX` ("stay open") keeps the breaker open; it overflowed the
    /// open-until time (a panic in a debug build, a wrapped time in a release one).
    #[test]
    fn an_endless_cool_down_stays_open() {
        let breaker = CircuitBreaker::new(
            Some(CircuitBreakerConfig::new(1, Duration::MAX)),
            "redis",
            "redis://127.0.0.1:6379/0".to_owned(),
        );
        let a = breaker.admit();
        breaker.record_failure(&a, &"refused");
        assert!(breaker.is_open());
        assert_eq!(breaker.admit(), Admission::Rejected);
    }

    /// A retired breaker (its Cluster node gone from the slot map) is in no state: its state
    /// gauges are 0, and what a call still under way records does not move them.
    #[cfg(feature = "cluster")]
    #[test]
    fn a_retired_breaker_is_in_no_state() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let breaker = CircuitBreaker::new(
                Some(CircuitBreakerConfig::new(1, Duration::from_secs(60))),
                "cluster",
                "10.0.0.1:7000".to_owned(),
            );
            let a = breaker.admit();
            breaker.record_failure(&a, &"refused"); // closed -> open
            breaker.retire();
            breaker.record_success(); // open -> closed, not shown
        });
        let states: Vec<(String, f64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Gauge(v) => {
                    let state = key.key().labels().find(|l| l.key() == "state")?;
                    Some((state.value().to_owned(), v.into_inner()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(states.len(), 3, "{states:?}");
        assert!(states.iter().all(|(_, v)| *v == 0.0), "{states:?}");
    }

    #[test]
    fn transitions_are_counted_and_the_state_is_a_gauge_per_breaker() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let breaker = CircuitBreaker::new(
                Some(CircuitBreakerConfig::new(1, Duration::from_millis(10))),
                "cluster",
                "10.0.0.1:7000".to_owned(),
            );
            let a = breaker.admit();
            breaker.record_failure(&a, &"refused"); // closed -> open
            std::thread::sleep(Duration::from_millis(20));
            let probe = breaker.admit(); // open -> half_open
            breaker.record_failure(&probe, &"refused"); // half_open -> open
            std::thread::sleep(Duration::from_millis(20));
            let probe = breaker.admit(); // open -> half_open
            breaker.record_success(); // half_open -> closed
            breaker.release_probe(&probe); // nothing: the probe reported
        });
        let mut transitions = Vec::new();
        let mut states = Vec::new();
        let mut unexpected = Vec::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            assert_eq!(
                labels[..2],
                [("repository", "cluster"), ("target", "10.0.0.1:7000")]
            );
            match (key.name(), value) {
                ("impcache_circuit_breaker_transitions_total", DebugValue::Counter(n)) => {
                    transitions.push((labels[2].1.to_owned(), labels[3].1.to_owned(), n));
                }
                ("impcache_circuit_breaker_state", DebugValue::Gauge(v)) => {
                    states.push((labels[2].1.to_owned(), v.into_inner()));
                }
                (name, value) => unexpected.push(format!("{name}: {value:?}")),
            }
        }
        assert_eq!(unexpected, Vec::<String>::new());
        transitions.sort();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        let t = |from: &str, to: &str, n| (from.to_owned(), to.to_owned(), n);
        assert_eq!(
            transitions,
            [
                t("closed", "open", 1),
                t("half_open", "closed", 1),
                t("half_open", "open", 1),
                t("open", "half_open", 2),
            ]
        );
        let s = |state: &str, v| (state.to_owned(), v);
        assert_eq!(
            states,
            [s("closed", 1.0), s("half_open", 0.0), s("open", 0.0)]
        );
    }

    /// An operation admitted while the breaker was closed that fails once the cool-down is over,
    /// while the probe is out, leaves the probe's slot taken: the next operation fails fast
    /// rather than go as a second probe, and no probe's end is recorded. (It freed the slot.)
    #[test]
    fn a_late_failure_does_not_let_a_second_probe_through() {
        let breaker = CircuitBreaker::new(
            Some(CircuitBreakerConfig::new(1, Duration::from_millis(10))),
            "redis",
            "h:1".to_owned(),
        );
        let early = breaker.admit();
        let late = breaker.admit();
        assert_eq!((&early, &late), (&Admission::Allowed, &Admission::Allowed));
        breaker.record_failure(&early, &"refused"); // closed -> open
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.admit();
        assert_eq!(probe, Admission::Probe);
        breaker.record_failure(&late, &"refused"); // admitted while closed, failing now
        assert_eq!(breaker.admit(), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            breaker.admit(),
            Admission::Rejected,
            "the probe is still out"
        );
        breaker.record_success();
        assert_eq!(breaker.admit(), Admission::Allowed);
    }

    /// A probe that fails after a late success closed the breaker (freeing the probe's slot)
    /// reopens it, and says so: `closed`→`open` (nothing was recorded, and the gauge said closed
    /// while calls failed fast).
    #[test]
    fn a_probe_failing_after_a_late_success_records_the_reopening() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let breaker = CircuitBreaker::new(
                Some(CircuitBreakerConfig::new(1, Duration::from_millis(10))),
                "redis",
                "h:1".to_owned(),
            );
            let first = breaker.admit();
            let _late = breaker.admit();
            breaker.record_failure(&first, &"refused"); // closed -> open
            std::thread::sleep(Duration::from_millis(20));
            let probe = breaker.admit(); // open -> half_open
            breaker.record_success(); // the late one succeeds: half_open -> closed
            breaker.record_failure(&probe, &"refused"); // closed -> open
            assert!(breaker.is_open());
        });
        let open = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| {
                let state = key.key().labels().nth(2).map(|l| l.value().to_owned());
                match (key.key().name(), value) {
                    ("impcache_circuit_breaker_state", DebugValue::Gauge(v))
                        if state.as_deref() == Some("open") =>
                    {
                        Some(v.into_inner())
                    }
                    _ => None,
                }
            });
        assert_eq!(open, Some(1.0));
    }

    /// The state gauge exists from the start: a new breaker is closed.
    #[test]
    fn a_new_breaker_shows_closed() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let config = Some(CircuitBreakerConfig::default());
            CircuitBreaker::new(config, "redis", "h:1".to_owned())
        });
        let mut states: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Gauge(v) => {
                    let state = key.key().labels().nth(2).map(|l| l.value().to_owned());
                    Some((state, v.into_inner()))
                }
                _ => None,
            })
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        let s = |state: &str, v| (Some(state.to_owned()), v);
        assert_eq!(
            states,
            [s("closed", 1.0), s("half_open", 0.0), s("open", 0.0)]
        );
    }

    #[test]
    fn two_breakers_of_one_kind_keep_apart_in_the_metrics() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let config = Some(CircuitBreakerConfig::new(1, Duration::from_secs(60)));
            let sessions = CircuitBreaker::new(config, "redis", "redis://10.0.0.1:6379/0".into());
            let _pages = CircuitBreaker::new(config, "redis", "redis://10.0.0.2:6379/0".into());
            let a = sessions.admit();
            sessions.record_failure(&a, &"refused"); // closed -> open, on the first server only
        });
        let mut open = Vec::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            if let ("impcache_circuit_breaker_state", DebugValue::Gauge(v)) = (key.name(), value) {
                if label("state").as_deref() == Some("open") {
                    open.push((label("target"), v.into_inner()));
                }
            }
        }
        open.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            open,
            [
                (Some("redis://10.0.0.1:6379/0".to_owned()), 1.0),
                (Some("redis://10.0.0.2:6379/0".to_owned()), 0.0)
            ],
            "the second server's breaker stays closed"
        );
    }

    #[test]
    fn disabled_breaker_always_allows() {
        let breaker = CircuitBreaker::new(None, "redis", "redis://127.0.0.1:6379/0".to_owned());
        for _ in 0..100 {
            let a = breaker.admit();
            breaker.record_failure(&a, &"refused");
        }
        assert_eq!(breaker.admit(), Admission::Allowed);
    }
}
