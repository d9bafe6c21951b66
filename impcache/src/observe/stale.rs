//! The metric of stale answers of `get_or_set` and `#[cached]` with a
//! [`Freshness`](crate::Freshness) policy: why a value past its expiry was served.

use metrics::{Key, Label, Unit};

use super::METADATA;

/// `impcache_stale_served_total{reason}`: values served past their expiry, by why.
pub(crate) const STALE_SERVED_TOTAL: &str = "impcache_stale_served_total";

/// The `reason` label of [`STALE_SERVED_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StaleReason {
    /// Within `stale_while_revalidate`: served while one background reload runs.
    Revalidating,
    /// Within `stale_if_error`: the loader failed, timed out or panicked.
    Error,
    /// The loader was slower than `soft_timeout`: it goes on in the background.
    SoftTimeout,
    /// Within `fail_safe_throttle` of a loader failure: no loader run.
    Throttled,
}

impl StaleReason {
    /// The label value.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            StaleReason::Revalidating => "revalidating",
            StaleReason::Error => "error",
            StaleReason::SoftTimeout => "soft_timeout",
            StaleReason::Throttled => "fail_safe_throttle",
        }
    }
}

/// Counts one stale answer in the installed recorder, if any.
pub(crate) fn stale_served(reason: StaleReason) {
    metrics::with_recorder(|recorder| {
        let labels = vec![Label::from_static_parts("reason", reason.name())];
        let key = Key::from_parts(STALE_SERVED_TOTAL, labels);
        recorder.register_counter(&key, &METADATA).increment(1);
    });
}

/// Name, unit and help text of the metric.
pub(super) const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[(
    STALE_SERVED_TOTAL,
    Some(Unit::Count),
    "Values served past their expiry by get_or_set and #[cached] with a freshness policy, by reason (revalidating, error, soft_timeout, fail_safe_throttle).",
)];

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn stale_answers_are_counted_by_reason() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            stale_served(StaleReason::Error);
            stale_served(StaleReason::Error);
        });
        let counted: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let reason = key
                    .key()
                    .labels()
                    .map(|l| l.value().to_owned())
                    .collect::<String>();
                (key.key().name().to_owned(), reason, value)
            })
            .collect();
        assert_eq!(
            counted,
            [(
                STALE_SERVED_TOTAL.to_owned(),
                "error".to_owned(),
                DebugValue::Counter(2)
            )]
        );
    }
}
