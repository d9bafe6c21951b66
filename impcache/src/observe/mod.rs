//! Observability: metrics through the [`metrics`](https://docs.rs/metrics) facade, the counters of
//! [`Cache::stats`](crate::Cache::stats), and a `tracing` span per operation.
//!
//! Every operation of a [`Cache`](crate::Cache) goes through [`Observation`]: started before the
//! operation's body, finished with its result. The table of metrics is in `OBSERVABILITY.md`.

pub(crate) mod hooks;
pub(crate) mod metrics;
mod span;
mod stats;

use std::time::Instant;

use tracing::Span;

pub use self::metrics::describe_metrics;
use self::metrics::{Operation, Outcome, Tally};
pub use self::stats::CacheStats;
pub(crate) use self::stats::Counters;
use crate::error::Result;

/// One operation being observed: its span and its start.
#[derive(Debug)]
pub(crate) struct Observation {
    operation: Operation,
    started: Instant,
    span: Span,
}

impl Observation {
    /// Starts observing `operation` on `key` (recorded on the span only when `record_keys`; `None`
    /// for batches).
    pub(crate) fn start(operation: Operation, key: Option<&str>, record_keys: bool) -> Self {
        Observation {
            operation,
            span: span::operation_span(operation, key, record_keys),
            started: Instant::now(),
        }
    }

    /// The operation's span ([`Span::is_disabled`] when no subscriber wants it).
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Counts the result everywhere (stats, metrics, span) and hands back the value.
    pub(crate) fn finish<T>(self, counters: &Counters, result: Result<(T, Tally)>) -> Result<T> {
        let elapsed = self.started.elapsed();
        match result {
            Ok((value, tally)) => {
                counters.succeeded(&tally);
                metrics::record(self.operation, Ok(&tally), elapsed);
                span::finish(&self.span, tally.outcome(self.operation), None);
                Ok(value)
            }
            Err(error) => {
                counters.failed();
                metrics::record(self.operation, Err(&error), elapsed);
                span::finish(&self.span, Outcome::Error, Some(&error));
                Err(error)
            }
        }
    }
}
