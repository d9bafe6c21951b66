//! The `tracing` span of a cache operation.

use tracing::field::Empty;
use tracing::Span;

use super::metrics::{error_kind, Operation, Outcome};
use crate::error::Error;

/// The span of one operation: `cache_operation` at `DEBUG`, target `impcache`, with the fields
/// `operation`, `outcome` (recorded when it ends), `tier` (without a near cache `remote`, the
/// repository, recorded after the outcome; with one, recorded by it as keys are read: `near` for
/// a key answered from process memory, `remote` for one read from Redis, both for a batch that
/// had both; see [`record_tier`]) and, when the cache was built with
/// [`record_keys(true)`](crate::CacheBuilder::record_keys), `key` (the caller's key, or the
/// pattern of `delete_pattern`; batches record none).
///
/// With no subscriber interested in it, this is a check of the callsite's cached interest and
/// [`Span::none`].
#[inline(always)]
pub(crate) fn operation_span(operation: Operation, key: Option<&str>, record_keys: bool) -> Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return Span::none();
    }
    let span = tracing::debug_span!(
        target: "impcache",
        "cache_operation",
        operation = operation.name(),
        outcome = Empty,
        tier = Empty,
        key = Empty,
    );
    if let (true, Some(key)) = (record_keys, key) {
        span.record("key", key);
    }
    span
}

/// Records on the current operation's span (the near cache's reads run inside it) that a key was
/// answered by `tier` (`near`, `remote`, `stale`); nothing when no subscriber wants `DEBUG`.
#[inline]
pub(crate) fn record_tier(tier: &'static str) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        Span::current().record("tier", tier);
    }
}

/// Records how the operation ended on its span; an error is also a `DEBUG` event in it: its kind,
/// and its message only when keys are recorded (every message names its key).
#[inline(always)]
pub(crate) fn finish(
    span: &Span,
    outcome: Outcome,
    error: Option<&Error>,
    record_keys: bool,
    near: bool,
) {
    if span.is_disabled() {
        return;
    }
    span.record("outcome", outcome.name());
    if !near {
        span.record("tier", "remote");
    }
    if let Some(error) = error {
        failed(span, error, record_keys);
    }
}

#[cold]
fn failed(span: &Span, error: &Error, record_keys: bool) {
    let kind = error_kind(error);
    if record_keys {
        tracing::debug!(target: "impcache", parent: span, kind, %error, "cache operation failed");
    } else {
        tracing::debug!(target: "impcache", parent: span, kind, "cache operation failed");
    }
}
