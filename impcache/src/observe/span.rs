//! The `tracing` span of a cache operation.

use tracing::field::Empty;
use tracing::Span;

use super::metrics::{error_kind, Operation, Outcome};
use crate::error::Error;

/// The span of one operation: `cache_operation` at `DEBUG`, target `impcache`, with the fields
/// `operation`, `outcome` (recorded when it ends), `tier` (`remote`, the repository, recorded
/// after the outcome, for every write and for reads without a near cache; with one, a read's
/// tiers are recorded by the near cache: `near` for each key answered from process memory,
/// `remote` once for each read from Redis, whatever its number of keys (a `get_many`'s `MGET`);
/// see [`record_tier`]) and, when the cache was built with
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
        OPERATION_SPAN,
        operation = operation.name(),
        outcome = Empty,
        tier = Empty,
        key = Empty,
    );
    if let (true, Some(key)) = (record_keys, key) {
        span.record("key", &*crate::error::excerpt(key));
    }
    span
}

/// Records on the current operation's span (the near cache's reads run inside it) that a key was
/// answered by `tier` (`near`, `remote`); nothing when no subscriber wants `DEBUG`, nor when the
/// current span is not an operation's (its span filtered out, or a fail-safe copy served after
/// the failed read's span closed): never a field of another span.
#[inline]
pub(crate) fn record_tier(tier: &'static str) {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return;
    }
    let span = Span::current();
    if span
        .metadata()
        .is_some_and(|m| m.name() == OPERATION_SPAN && m.target() == "impcache")
    {
        span.record("tier", tier);
    }
}

/// The name of an operation's span.
const OPERATION_SPAN: &str = "cache_operation";

/// Records how the operation ended on its span; an error is also a `DEBUG` event in it: its kind,
/// and its message only when keys are recorded (every message names its key).
#[inline(always)]
pub(crate) fn finish(
    span: &Span,
    operation: Operation,
    outcome: Outcome,
    error: Option<&Error>,
    record_keys: bool,
    near: bool,
) {
    if span.is_disabled() {
        return;
    }
    span.record("outcome", outcome.name());
    if !near || !operation.is_read() {
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
