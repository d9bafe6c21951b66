//! How far a `delete_pattern` sweep has got: [`DeleteProgress`], reported to the caller's callback
//! after each batch, and the crate-private [`Sweep`] that counts the batches of one call.

use std::sync::{Mutex, PoisonError};

use crate::error::Error;

/// How far a [`delete_pattern`](crate::Cache::delete_pattern_with_progress) sweep has got:
/// totals since it started, reported after each batch.
///
/// On Redis a batch is one `SCAN` reply that found keys (about 1,000: `COUNT` is a hint) and its `UNLINK`; on Redis
/// Cluster the batches of every primary are added up, as they come; the in-memory repository
/// removes in batches of 1,000 too. A [`CacheRepository`](crate::CacheRepository) that does not
/// report its own progress reports once, at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteProgress {
    /// Keys found matching the pattern so far.
    pub matched: u64,
    /// Keys removed so far (at most `matched`: a key can expire between the `SCAN` that found it
    /// and its `UNLINK`).
    pub removed: u64,
    /// Batches done so far.
    pub batches: u64,
}

impl DeleteProgress {
    /// Adds one batch of `matched` keys found, `removed` of them removed: for a
    /// [`CacheRepository`](crate::CacheRepository) reporting its own progress.
    pub fn add_batch(&mut self, matched: u64, removed: u64) {
        self.matched = self.matched.saturating_add(matched);
        self.removed = self.removed.saturating_add(removed);
        self.batches = self.batches.saturating_add(1);
    }
}

/// A `DEBUG` event every this many batches of a sweep, target `impcache`.
const DEBUG_EVERY_BATCHES: u64 = 10;

/// An `INFO` event (instead of the `DEBUG` one) every this many batches: a long sweep.
const INFO_EVERY_BATCHES: u64 = 100;

/// The `tracing` event of a sweep's progress, every [`DEBUG_EVERY_BATCHES`] batches. No pattern:
/// the operation's span has it when keys are recorded.
pub(crate) fn trace_progress(progress: &DeleteProgress) {
    let DeleteProgress {
        matched,
        removed,
        batches,
    } = *progress;
    if batches == 0 {
        return;
    }
    if batches % INFO_EVERY_BATCHES == 0 {
        tracing::info!(target: "impcache", matched, removed, batches, "delete_pattern: sweep in progress");
    } else if batches % DEBUG_EVERY_BATCHES == 0 {
        tracing::debug!(target: "impcache", matched, removed, batches, "delete_pattern: sweep in progress");
    }
}

/// The progress callback a sweep reports to.
pub(crate) type Report<'a> = &'a mut (dyn FnMut(DeleteProgress) + Send);

/// The count of one `delete_pattern` call: adds up its batches (from every attempt and, on a
/// cluster, every primary), reports each to the callback, and turns an error into
/// [`Error::Interrupted`] once keys were removed.
pub(crate) struct Sweep<'a> {
    state: Mutex<(DeleteProgress, Report<'a>)>,
}

impl<'a> Sweep<'a> {
    pub(crate) fn new(report: Report<'a>) -> Self {
        Sweep {
            state: Mutex::new((DeleteProgress::default(), report)),
        }
    }

    /// One batch done: `matched` keys found, `removed` of them removed.
    pub(crate) fn batch(&self, matched: usize, removed: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (progress, report) = &mut *state;
        progress.add_batch(u64::try_from(matched).unwrap_or(u64::MAX), removed);
        report(*progress);
    }

    /// Keys removed so far.
    pub(crate) fn removed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .removed
    }

    /// The error of a sweep that failed: [`Error::Interrupted`] with the count removed so far
    /// when it is not 0, `error` as it is otherwise.
    pub(crate) fn interrupted(&self, error: Error) -> Error {
        let error = match error {
            Error::Interrupted { source, .. } => *source,
            other => other,
        };
        match self.removed() {
            0 => error,
            removed => Error::Interrupted {
                removed,
                source: Box::new(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_add_up_and_an_error_carries_the_count() {
        let mut seen = Vec::new();
        let mut report = |p: DeleteProgress| seen.push(p);
        let sweep = Sweep::new(&mut report);
        let timeout = || Error::Timeout {
            operation: "delete_pattern",
            key: "p:*".into(),
            deadline: std::time::Duration::from_secs(1),
        };
        // Nothing removed yet: the error as it is.
        assert!(matches!(
            sweep.interrupted(timeout()),
            Error::Timeout { .. }
        ));
        sweep.batch(1000, 998);
        sweep.batch(5, 5);
        let error = sweep.interrupted(timeout());
        assert_eq!(error.removed_before_failure(), Some(1003));
        assert!(error.is_outage() && error.is_backend_failure());
        assert_eq!(error.subject(), "p:*");
        // Wrapped once, with the latest count.
        sweep.batch(1, 1);
        let error = sweep.interrupted(error);
        assert_eq!(error.removed_before_failure(), Some(1004));
        assert!(
            matches!(&error, Error::Interrupted { source, .. } if matches!(**source, Error::Timeout { .. }))
        );
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[1],
            DeleteProgress {
                matched: 1005,
                removed: 1003,
                batches: 2
            }
        );
    }
}
