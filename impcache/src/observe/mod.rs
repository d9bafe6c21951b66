//! Observability: metrics through the [`metrics`](https://docs.rs/metrics) facade, the counters of
//! [`Cache::stats`](crate::Cache::stats), and a `tracing` span per operation.
//!
//! Every operation of a [`Cache`](crate::Cache) goes through [`Observation`]: started before the
//! operation's body, finished with its result, or counted as cancelled when dropped unfinished.
//! The table of metrics is in `OBSERVABILITY.md`.

pub(crate) mod hooks;
pub(crate) mod limited;
pub(crate) mod lock;
mod logged;
pub(crate) mod metrics;
pub(crate) mod polling;
pub(crate) mod span;
pub(crate) mod stale;
mod stats;
mod striped;

use std::time::Instant;

use tracing::Span;

use self::metrics::{Operation, Outcome, Tally};
pub use self::stats::CacheStats;
pub(crate) use self::stats::Counters;
pub(crate) use self::striped::StripedCounter;
use crate::error::Error;

/// One operation being observed: its span and, when a metrics recorder is installed, its start.
///
/// Also the operation's drop guard: an operation whose future is dropped before it ends (the
/// caller's timeout around the call, a dropped request; a panic inside it) is counted when the
/// observation is dropped unfinished, with the outcome `cancelled` (stats, span, metrics, its
/// duration included). The cache did not fail, so it is no error.
pub(crate) struct Observation<'a> {
    operation: Operation,
    /// `None` without a recorder: the metrics are skipped, the clock is not read.
    started: Option<Instant>,
    span: Span,
    /// The counters of the cache's [`stats`](crate::Cache::stats).
    counters: &'a Counters,
    /// Whether the span records the key.
    record_keys: bool,
    /// Whether the cache has a near cache (the span's `tier`).
    near: bool,
    /// Whether [`finish`](Observation::finish) counted it: else dropping it counts it as
    /// cancelled.
    finished: bool,
}

/// How an operation ended, for the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ended<'a> {
    /// It succeeded, having done this.
    Done(&'a Tally),
    /// It returned this error.
    Failed(&'a Error),
    /// Its future was dropped before it ended.
    Cancelled,
}

impl Ended<'_> {
    /// The outcome label of `operation` ending so.
    fn outcome(self, operation: Operation) -> Outcome {
        match self {
            Ended::Done(tally) => tally.outcome(operation),
            Ended::Failed(_) => Outcome::Error,
            Ended::Cancelled => Outcome::Cancelled,
        }
    }
}

impl<'a> Observation<'a> {
    /// Starts observing `operation` on `key` (recorded on the span only with `record_keys`;
    /// `None` for batches), counted in `counters`; `near`: the cache has a near cache.
    #[inline(always)]
    pub(crate) fn start(
        counters: &'a Counters,
        record_keys: bool,
        near: bool,
        operation: Operation,
        key: Option<&str>,
    ) -> Self {
        Self::started_at(
            Observation::clock(),
            counters,
            record_keys,
            near,
            operation,
            key,
        )
    }

    /// The start of an observation: the time now when a metrics recorder is installed (else the
    /// clock is not read).
    #[inline(always)]
    pub(crate) fn clock() -> Option<Instant> {
        metrics::recorder_installed().then(Instant::now)
    }

    /// As [`start`](Observation::start), for an operation that began at `started` (a
    /// [`clock`](Observation::clock) read before it): one whose body ran before it was known to
    /// be this operation (`get_or_set`'s answer from the near cache alone).
    #[inline(always)]
    pub(crate) fn started_at(
        started: Option<Instant>,
        counters: &'a Counters,
        record_keys: bool,
        near: bool,
        operation: Operation,
        key: Option<&str>,
    ) -> Self {
        Observation {
            operation,
            span: span::operation_span(operation, key, record_keys),
            started,
            counters,
            record_keys,
            near,
            finished: false,
        }
    }

    /// The operation's span ([`Span::is_disabled`] when no subscriber wants it).
    #[inline(always)]
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Counts the result everywhere: stats, metrics, span; `also` records the caller's own metrics
    /// in the same call into the recorder (the `#[cached]` runtime's count of a hit), only when one
    /// is installed.
    #[inline(always)]
    pub(crate) fn finish(
        mut self,
        result: Result<&Tally, &Error>,
        also: impl FnOnce(&dyn ::metrics::Recorder),
    ) {
        self.finished = true;
        let ended = match result {
            Ok(tally) => Ended::Done(tally),
            Err(error) => Ended::Failed(error),
        };
        self.count(ended, also);
    }

    /// Counts how the operation ended: stats, span, metrics.
    #[inline(always)]
    fn count(&self, ended: Ended<'_>, also: impl FnOnce(&dyn ::metrics::Recorder)) {
        let outcome = ended.outcome(self.operation);
        // A read of the cross-process lock's protocol is no lookup of the caller's
        // (`polling.rs`): an operation as any other, not a hit or a miss.
        let polled;
        let ended = match ended {
            Ended::Done(tally) if tally.looked_up() && polling::active() => {
                polled = tally.not_lookups();
                Ended::Done(&polled)
            }
            ended => ended,
        };
        self.counters.count(ended);
        let error = match ended {
            Ended::Failed(error) => Some(error),
            _ => None,
        };
        span::finish(
            &self.span,
            self.operation,
            outcome,
            error,
            self.record_keys,
            self.near,
        );
        if let Some(started) = self.started {
            metrics::record(self.operation, outcome, ended, started.elapsed(), also);
        }
    }

    /// The operation's future was dropped before it ended.
    #[cold]
    fn cancelled(&self) {
        self.count(Ended::Cancelled, |_| {});
    }
}

impl Drop for Observation<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.finished {
            self.cancelled();
        }
    }
}

/// The metadata of every metric of this crate: target `impcache`, level `INFO`.
pub(crate) static METADATA: ::metrics::Metadata<'static> =
    ::metrics::Metadata::new("impcache", ::metrics::Level::INFO, Some(module_path!()));

/// Sends the description and unit of every metric of this crate (the runtime's and those the
/// `#[cached]` macro and the HTTP layer record) to the installed recorder, which an exporter shows
/// as `# HELP` and uses for units. Call it once after installing the recorder; metrics are recorded
/// with or without it.
pub fn describe_metrics() {
    ::metrics::with_recorder(|recorder| {
        for (name, unit, help) in hooks::DESCRIPTIONS
            .iter()
            .chain(metrics::DESCRIPTIONS)
            .chain(lock::DESCRIPTIONS)
            .chain(stale::DESCRIPTIONS)
        {
            match unit {
                Some(::metrics::Unit::Seconds) => {
                    recorder.describe_histogram((*name).into(), *unit, (*help).into());
                }
                _ if name.ends_with("_total") => {
                    recorder.describe_counter((*name).into(), *unit, (*help).into());
                }
                _ => recorder.describe_gauge((*name).into(), *unit, (*help).into()),
            }
        }
    });
}
