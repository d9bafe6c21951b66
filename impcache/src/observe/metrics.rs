//! The operation metrics of [`Cache`](crate::Cache), recorded through the `metrics` facade.
//!
//! Every key is a `static` built at compile time (name and labels), so recording allocates nothing
//! and, with no recorder installed, costs a thread-local read, an atomic load and a no-op call.

use std::time::Duration;

use metrics::{Key, Label, Recorder, Unit};

use super::{Ended, METADATA};

use crate::error::Error;

/// `impcache_operations_total{operation, outcome}`: cache operations by outcome.
pub(crate) const OPERATIONS_TOTAL: &str = "impcache_operations_total";
/// `impcache_lookups_total{outcome}`: keys looked up (`get`, `get_raw`, each key of `get_many`).
pub(crate) const LOOKUPS_TOTAL: &str = "impcache_lookups_total";
/// `impcache_errors_total{operation, kind}`: failed operations by error kind.
pub(crate) const ERRORS_TOTAL: &str = "impcache_errors_total";
/// `impcache_operation_duration_seconds{operation}`: the time of an operation, errors included.
pub(crate) const OPERATION_DURATION_SECONDS: &str = "impcache_operation_duration_seconds";
/// `impcache_bytes_read_total`: value bytes read from the repository (before JSON decoding).
pub(crate) const BYTES_READ_TOTAL: &str = "impcache_bytes_read_total";
/// `impcache_bytes_written_total`: value bytes handed to the repository (after JSON encoding).
pub(crate) const BYTES_WRITTEN_TOTAL: &str = "impcache_bytes_written_total";

/// A cache operation: the `operation` label. The `_raw` methods count as their JSON twins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Get,
    GetMany,
    Set,
    SetNx,
    SetMany,
    Delete,
    DeleteMany,
    DeletePattern,
}

impl Operation {
    /// Whether it reads (`get`, `get_many`): the operations a near cache may answer.
    pub(crate) fn is_read(self) -> bool {
        matches!(self, Operation::Get | Operation::GetMany)
    }

    /// Every operation, in the order of the key tables below.
    #[cfg(test)]
    pub(crate) const ALL: [Operation; 8] = [
        Operation::Get,
        Operation::GetMany,
        Operation::Set,
        Operation::SetNx,
        Operation::SetMany,
        Operation::Delete,
        Operation::DeleteMany,
        Operation::DeletePattern,
    ];

    /// The label value.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::GetMany => "get_many",
            Operation::Set => "set",
            Operation::SetNx => "set_nx",
            Operation::SetMany => "set_many",
            Operation::Delete => "delete",
            Operation::DeleteMany => "delete_many",
            Operation::DeletePattern => "delete_pattern",
        }
    }

    /// Whether the operation reads one key: its outcome is `hit` or `miss` rather than `ok`.
    fn is_lookup(self) -> bool {
        self == Operation::Get
    }
}

/// How an operation ended: the `outcome` label of [`OPERATIONS_TOTAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A single-key read found the key.
    Hit,
    /// A single-key read found nothing.
    Miss,
    /// Any other operation succeeded.
    Ok,
    /// The operation returned an error (its kind is in [`ERRORS_TOTAL`]).
    Error,
    /// The operation's future was dropped before it ended: its caller gave up on it (a timeout
    /// around the call, a dropped request), or it panicked. Not an error of the cache's.
    Cancelled,
}

impl Outcome {
    /// The label value.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What a successful operation did, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Keys found.
    pub(crate) hits: u64,
    /// Keys looked up and not found.
    pub(crate) misses: u64,
    /// Value bytes read.
    pub(crate) bytes_read: u64,
    /// Value bytes written.
    pub(crate) bytes_written: u64,
}

impl Tally {
    /// Nothing read or written (deletes).
    pub(crate) const NONE: Tally = Tally {
        hits: 0,
        misses: 0,
        bytes_read: 0,
        bytes_written: 0,
    };

    /// One key looked up: found with `len` bytes, or not found.
    pub(crate) fn read(found: Option<usize>) -> Tally {
        match found {
            Some(len) => Tally {
                hits: 1,
                bytes_read: len as u64,
                ..Tally::NONE
            },
            None => Tally {
                misses: 1,
                ..Tally::NONE
            },
        }
    }

    /// A key found whose value the caller cannot use: it does not decode as the caller's type
    /// (`get_or_set`'s read, `#[cached]`'s, of a value stored by another type, such as before a
    /// deploy that changed a cached type). The caller's loader runs and overwrites it, so it
    /// counts as a miss, not a hit (its bytes were read all the same). A `get` of it fails with
    /// a decode error instead (no lookup).
    pub(crate) fn not_decoded(&mut self) {
        self.misses += self.hits;
        self.hits = 0;
    }

    /// `len` value bytes written.
    pub(crate) fn written(len: usize) -> Tally {
        Tally {
            bytes_written: len as u64,
            ..Tally::NONE
        }
    }

    /// Whether it looked keys up (found or not).
    #[inline(always)]
    pub(crate) fn looked_up(&self) -> bool {
        self.hits | self.misses != 0
    }

    /// The same, its keys not counted as lookups: a read of the lock's protocol
    /// (`polling.rs`).
    pub(crate) fn not_lookups(&self) -> Tally {
        Tally {
            hits: 0,
            misses: 0,
            ..*self
        }
    }

    /// The outcome of `operation` that did this.
    pub(crate) fn outcome(&self, operation: Operation) -> Outcome {
        match (operation.is_lookup(), self.hits > 0) {
            (true, true) => Outcome::Hit,
            (true, false) => Outcome::Miss,
            (false, _) => Outcome::Ok,
        }
    }
}

/// The `kind` label of [`ERRORS_TOTAL`]: the [`enum@Error`] variant in snake case.
pub(crate) fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::InvalidDsn { .. } => "invalid_dsn",
        Error::InvalidKey { .. } => "invalid_key",
        Error::InvalidTag { .. } => "invalid_tag",
        Error::InvalidExpire { .. } => "invalid_expire",
        Error::InvalidPattern { .. } => "invalid_pattern",
        Error::Encode { .. } => "encode",
        Error::Decode { .. } => "decode",
        Error::ValueTooLarge { .. } => "value_too_large",
        Error::Unavailable { .. } => "unavailable",
        Error::Timeout { .. } => "timeout",
        Error::CircuitOpen { .. } => "circuit_open",
        Error::Server { .. } => "server",
        Error::Loader { .. } => "loader",
        // The kind of the failure: an interrupted sweep failed as its failure did.
        Error::Interrupted { source, .. } => error_kind(source),
    }
}

/// The labels of each operation, in [`Operation`] order: `operation`, then the `$key => $value`.
macro_rules! per_operation {
    ($($key:literal => $value:literal),*) => {
        per_operation!(@ [$($key => $value),*],
            "get", "get_many", "set", "set_nx", "set_many", "delete", "delete_many", "delete_pattern")
    };
    (@ $extra:tt, $($operation:literal),*) => {
        [$(per_operation!(@labels $operation, $extra)),*]
    };
    (@labels $operation:literal, [$($key:literal => $value:literal),*]) => {
        [Label::from_static_parts("operation", $operation) $(, Label::from_static_parts($key, $value))*]
    };
}

/// The keys named `name` with each operation's `labels`.
const fn per_operation_keys<const N: usize>(
    name: &'static str,
    labels: &'static [[Label; N]; 8],
) -> [Key; 8] {
    [
        Key::from_static_parts(name, &labels[0]),
        Key::from_static_parts(name, &labels[1]),
        Key::from_static_parts(name, &labels[2]),
        Key::from_static_parts(name, &labels[3]),
        Key::from_static_parts(name, &labels[4]),
        Key::from_static_parts(name, &labels[5]),
        Key::from_static_parts(name, &labels[6]),
        Key::from_static_parts(name, &labels[7]),
    ]
}

static OPERATION_LABELS: [[[Label; 2]; 8]; 5] = [
    per_operation!("outcome" => "hit"),
    per_operation!("outcome" => "miss"),
    per_operation!("outcome" => "ok"),
    per_operation!("outcome" => "error"),
    per_operation!("outcome" => "cancelled"),
];
/// [`OPERATIONS_TOTAL`] by outcome ([`Outcome`] order), then operation.
static OPERATION_KEYS: [[Key; 8]; 5] = [
    per_operation_keys(OPERATIONS_TOTAL, &OPERATION_LABELS[0]),
    per_operation_keys(OPERATIONS_TOTAL, &OPERATION_LABELS[1]),
    per_operation_keys(OPERATIONS_TOTAL, &OPERATION_LABELS[2]),
    per_operation_keys(OPERATIONS_TOTAL, &OPERATION_LABELS[3]),
    per_operation_keys(OPERATIONS_TOTAL, &OPERATION_LABELS[4]),
];

static DURATION_LABELS: [[Label; 1]; 8] = per_operation!();
/// [`OPERATION_DURATION_SECONDS`] by operation.
static DURATION_KEYS: [Key; 8] = per_operation_keys(OPERATION_DURATION_SECONDS, &DURATION_LABELS);

static HIT_LABELS: [Label; 1] = [Label::from_static_parts("outcome", "hit")];
static MISS_LABELS: [Label; 1] = [Label::from_static_parts("outcome", "miss")];
static HIT_KEY: Key = Key::from_static_parts(LOOKUPS_TOTAL, &HIT_LABELS);
static MISS_KEY: Key = Key::from_static_parts(LOOKUPS_TOTAL, &MISS_LABELS);
static BYTES_READ_KEY: Key = Key::from_static_name(BYTES_READ_TOTAL);
static BYTES_WRITTEN_KEY: Key = Key::from_static_name(BYTES_WRITTEN_TOTAL);

/// Whether a metrics recorder (global, or local to this thread) is installed.
///
/// The facade gives every caller a recorder, a no-op one when none is installed, and has no
/// query for which; the no-op recorder is the only zero-sized one in practice (a recorder keeps
/// its metrics somewhere). Without one, operations skip their metrics and do not read the clock
/// (two clock reads and the recorder calls are ~10 % of an in-memory `get`). A zero-sized
/// recorder of a user's (one forwarding to a `static`) records nothing from this crate.
#[inline(always)]
pub fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// Records one ended operation: its count by `outcome`, its duration, on success what it read
/// and wrote, on failure its error's kind, then whatever `also` records. One call into the
/// recorder for all of them.
pub(crate) fn record(
    operation: Operation,
    outcome: Outcome,
    ended: Ended<'_>,
    elapsed: Duration,
    also: impl FnOnce(&dyn Recorder),
) {
    metrics::with_recorder(|recorder| {
        let index = operation as usize;
        recorder
            .register_counter(&OPERATION_KEYS[outcome as usize][index], &METADATA)
            .increment(1);
        recorder
            .register_histogram(&DURATION_KEYS[index], &METADATA)
            .record(elapsed);
        match ended {
            Ended::Done(tally) => record_tally(recorder, tally),
            Ended::Failed(error) => record_error(recorder, operation, error),
            Ended::Cancelled => {}
        }
        also(recorder);
    });
}

fn record_tally(recorder: &dyn Recorder, tally: &Tally) {
    let counters = [
        (&HIT_KEY, tally.hits),
        (&MISS_KEY, tally.misses),
        (&BYTES_READ_KEY, tally.bytes_read),
        (&BYTES_WRITTEN_KEY, tally.bytes_written),
    ];
    for (key, value) in counters {
        if value > 0 {
            recorder.register_counter(key, &METADATA).increment(value);
        }
    }
}

/// Errors are rare: their key (operation and kind) is built when one happens.
#[cold]
fn record_error(recorder: &dyn Recorder, operation: Operation, error: &Error) {
    let key = Key::from_parts(
        ERRORS_TOTAL,
        vec![
            Label::from_static_parts("operation", operation.name()),
            Label::from_static_parts("kind", error_kind(error)),
        ],
    );
    recorder.register_counter(&key, &METADATA).increment(1);
}

/// Name, unit and help text of the operation metrics.
pub(super) const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    (
        OPERATIONS_TOTAL,
        Some(Unit::Count),
        "Cache operations, by operation and outcome (hit, miss, ok, error, cancelled).",
    ),
    (
        LOOKUPS_TOTAL,
        Some(Unit::Count),
        "Keys looked up by get, get_raw and get_many, by outcome (hit, miss).",
    ),
    (
        ERRORS_TOTAL,
        Some(Unit::Count),
        "Failed cache operations, by operation and error kind.",
    ),
    (
        OPERATION_DURATION_SECONDS,
        Some(Unit::Seconds),
        "Duration of cache operations, by operation.",
    ),
    (
        BYTES_READ_TOTAL,
        Some(Unit::Bytes),
        "Value bytes read from the repository.",
    ),
    (
        BYTES_WRITTEN_TOTAL,
        Some(Unit::Bytes),
        "Value bytes written to the repository.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tables_follow_the_enums() {
        for operation in Operation::ALL {
            let index = operation as usize;
            assert_eq!(
                DURATION_KEYS[index].labels().next().map(Label::value),
                Some(operation.name())
            );
            for outcome in [
                Outcome::Hit,
                Outcome::Miss,
                Outcome::Ok,
                Outcome::Error,
                Outcome::Cancelled,
            ] {
                let key = &OPERATION_KEYS[outcome as usize][index];
                let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
                assert_eq!(
                    labels,
                    [("operation", operation.name()), ("outcome", outcome.name())]
                );
            }
        }
    }

    #[test]
    fn outcomes_of_a_tally() {
        assert_eq!(Tally::read(Some(3)).outcome(Operation::Get), Outcome::Hit);
        assert_eq!(Tally::read(None).outcome(Operation::Get), Outcome::Miss);
        assert_eq!(
            Tally::read(Some(3)).outcome(Operation::GetMany),
            Outcome::Ok
        );
        assert_eq!(Tally::written(3).outcome(Operation::Set), Outcome::Ok);
    }
}
