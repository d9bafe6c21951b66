//! Observability: metrics through the [`metrics`](https://docs.rs/metrics) facade, the counters of
//! [`Cache::stats`](crate::Cache::stats), and a `tracing` span per operation.
//!
//! Every operation of a [`Cache`](crate::Cache) goes through [`Observation`]: started before the
//! operation's body, finished with its result. The table of metrics is in `OBSERVABILITY.md`.

pub(crate) mod hooks;
pub(crate) mod lock;
mod logged;
pub(crate) mod metrics;
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
#[derive(Debug)]
pub(crate) struct Observation {
    operation: Operation,
    /// `None` without a recorder: the metrics are skipped, the clock is not read.
    started: Option<Instant>,
    span: Span,
    record_keys: bool,
    /// Whether the cache has a near cache (which records the span's tier itself).
    near: bool,
}

impl Observation {
    /// Starts observing `operation` on `key` (recorded on the span only when `record_keys`; `None`
    /// for batches); `near`: whether the cache has a near cache (which then records the span's
    /// tier).
    #[inline(always)]
    pub(crate) fn start(
        operation: Operation,
        key: Option<&str>,
        record_keys: bool,
        near: bool,
    ) -> Self {
        Observation {
            operation,
            span: span::operation_span(operation, key, record_keys),
            started: metrics::recorder_installed().then(Instant::now),
            record_keys,
            near,
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
        self,
        counters: &Counters,
        result: Result<&Tally, &Error>,
        also: impl FnOnce(&dyn ::metrics::Recorder),
    ) {
        let outcome = match result {
            Ok(tally) => {
                counters.succeeded(tally);
                tally.outcome(self.operation)
            }
            Err(_) => {
                counters.failed();
                Outcome::Error
            }
        };
        span::finish(
            &self.span,
            self.operation,
            outcome,
            result.err(),
            self.record_keys,
            self.near,
        );
        if let Some(started) = self.started {
            metrics::record(self.operation, result, started.elapsed(), also);
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
