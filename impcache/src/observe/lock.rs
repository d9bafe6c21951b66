//! The metric of the cross-process lock of `get_or_set` ([`Lock`](crate::Lock)): what each
//! attempt to take a key's lock came to.

use metrics::{Key, Label, Unit};

use super::METADATA;

/// `impcache_lock_outcomes_total{outcome}`: what each attempt to take a key's lock came to.
pub(crate) const LOCK_OUTCOMES_TOTAL: &str = "impcache_lock_outcomes_total";

/// The `outcome` label of [`LOCK_OUTCOMES_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockOutcome {
    /// Taken at once: this process runs the loader.
    Acquired,
    /// Taken after waiting (the previous owner released it without a value, or its lock
    /// expired: a crashed or stuck owner): this process runs the loader.
    TookOver,
    /// Another process's value arrived while waiting: the loader did not run here.
    Waited,
    /// A background reload found the lock taken: another process reloads, this one does not.
    Busy,
    /// The wait's deadline passed: the loader runs here, without the lock.
    TimedOut,
    /// The cache failed (down, deadline, breaker open): the loader runs here, without the lock.
    FailedOpen,
    /// The lock is held by a load of this process that waits for this one (a cycle of loads):
    /// the loader runs here, without the lock.
    Cycle,
}

impl LockOutcome {
    /// The label value.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            LockOutcome::Acquired => "acquired",
            LockOutcome::TookOver => "took_over",
            LockOutcome::Waited => "waited",
            LockOutcome::Busy => "busy",
            LockOutcome::TimedOut => "timed_out",
            LockOutcome::FailedOpen => "failed_open",
            LockOutcome::Cycle => "cycle",
        }
    }
}

/// Counts one outcome.
pub(crate) fn lock_outcome(outcome: LockOutcome) {
    metrics::with_recorder(|recorder| {
        let labels = vec![Label::from_static_parts("outcome", outcome.name())];
        let key = Key::from_parts(LOCK_OUTCOMES_TOTAL, labels);
        recorder.register_counter(&key, &METADATA).increment(1);
    });
}

/// Name, unit and help text of the lock's metric.
pub(super) const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[(
    LOCK_OUTCOMES_TOTAL,
    Some(Unit::Count),
    "Attempts to take a key's cross-process loader lock, by outcome (acquired, took_over, waited, busy, timed_out, failed_open, cycle).",
)];

// Unit tests: an `assert!` here is the test failing (clippy.toml allows the panicking macros in
// tests); none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn outcomes_are_counted_by_label() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            lock_outcome(LockOutcome::Waited);
            lock_outcome(LockOutcome::Waited);
            lock_outcome(LockOutcome::TookOver);
        });
        let mut all: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let label = key
                    .labels()
                    .map(|l| l.value().to_owned())
                    .collect::<String>();
                // Every one a counter: a gauge or histogram shows as `None` and fails below.
                let n = match value {
                    DebugValue::Counter(n) => Some(n),
                    _ => None,
                };
                (key.name().to_owned(), label, n)
            })
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                (
                    LOCK_OUTCOMES_TOTAL.to_owned(),
                    "took_over".to_owned(),
                    Some(1)
                ),
                (LOCK_OUTCOMES_TOTAL.to_owned(), "waited".to_owned(), Some(2)),
            ]
        );
    }
}
