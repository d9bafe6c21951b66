//! What the Redis-backed repositories send and how they read failures: shared by the single-node,
//! Sentinel and Cluster repositories.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{shown, BoxError, Error};
use crate::expire::Expiry;

/// Refuses, before anything is sent, a value larger than the repository accepts.
pub(crate) fn check_value_size(key: &str, size: usize, limit: usize) -> Result<(), Error> {
    if size > limit {
        return Err(Error::ValueTooLarge {
            key: shown(key),
            size,
            limit,
        });
    }
    Ok(())
}

/// Keys per `SCAN` batch in `delete_pattern`.
pub(crate) const SCAN_BATCH: usize = 1000;

/// `SET key value [EX s | PX ms] [NX]`.
pub(crate) fn set_command(
    key: &str,
    value: &[u8],
    expiry: Expiry,
    only_if_absent: bool,
) -> redis::Cmd {
    // Sized up front: no buffer grows while the arguments are written.
    let mut cmd = redis::Cmd::with_capacity(6, key.len() + value.len() + 32);
    cmd.arg("SET").arg(key).arg(value);
    match expiry {
        Expiry::Seconds(s) => {
            cmd.arg("EX").arg(s);
        }
        Expiry::Milliseconds(ms) => {
            cmd.arg("PX").arg(ms);
        }
        Expiry::Never => {}
    }
    if only_if_absent {
        cmd.arg("NX");
    }
    cmd
}

/// `{name} key` (`GET`, `UNLINK`), in buffers sized up front (`redis::cmd` grows its data buffer
/// for the key: one more allocation and copy per call).
pub(crate) fn key_command(name: &'static str, key: &str) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(2, name.len() + key.len());
    cmd.arg(name).arg(key);
    cmd
}

/// `{name} key…` (`MGET`, `UNLINK`), in buffers sized up front.
pub(crate) fn keys_command(name: &'static str, keys: &[&str]) -> redis::Cmd {
    let size = name.len() + keys.iter().map(|k| k.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(1 + keys.len(), size);
    cmd.arg(name).arg(keys);
    cmd
}

/// `SCAN cursor MATCH pattern COUNT 1000`.
pub(crate) fn scan_command(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_BATCH);
    cmd
}

/// How long an operation had waited when its error came back, against what it was allowed: a
/// timeout the `redis` client reports before the deadline is the client's own timer (its connect
/// timeout) or the operating system giving up, not the deadline passing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waited {
    /// How long the operation had run when the error came back.
    pub(crate) waited: Duration,
    /// The operation's deadline.
    pub(crate) deadline: Duration,
    /// The connect timeout the repository gave the client that failed, named in the message;
    /// `None` when that client runs on the `redis` crate's defaults (Sentinel lookups).
    pub(crate) connect_timeout: Option<Duration>,
}

/// Turns a `redis` error into ours: timeouts, unreachable or dropped connections (and, on a
/// cluster, its own unavailability replies: `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`,
/// no connection to the slot's node) are outages; any other error reply is the server's refusal.
/// A timeout is [`Error::Timeout`] only once the deadline has passed (see [`timed_out`]).
pub(crate) fn classify(
    e: RedisError,
    operation: &'static str,
    key: String,
    waited: Waited,
) -> Error {
    let cluster_outage = e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
        );
    if e.is_timeout() {
        timed_out(e, operation, key, waited)
    } else if cluster_outage
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        Error::Unavailable {
            operation,
            key,
            source: Box::new(e) as BoxError,
        }
    } else {
        Error::Server {
            operation,
            key,
            code: e.code().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

/// A timeout reported by the `redis` client: [`Error::Timeout`] once the deadline has passed;
/// before it (the client's connect timeout, or the operating system, gave up), an
/// [`Error::Unavailable`] that names the client's cause and the time actually waited, rather
/// than reporting the deadline as passed.
pub(crate) fn timed_out(
    e: RedisError,
    operation: &'static str,
    key: String,
    waited: Waited,
) -> Error {
    if waited.waited >= waited.deadline {
        return Error::Timeout {
            operation,
            key,
            deadline: waited.deadline,
        };
    }
    Error::Unavailable {
        operation,
        key,
        source: Box::new(GaveUpEarly {
            // To the millisecond: `102ms`, not `102.267089ms`.
            waited: Duration::from_millis(
                u64::try_from(waited.waited.as_millis()).unwrap_or(u64::MAX),
            ),
            deadline: waited.deadline,
            connect_timeout: waited.connect_timeout,
            source: e,
        }),
    }
}

/// A timeout reported by the `redis` client (its connect timeout, or the operating system's)
/// before the operation's deadline passed: the source of [`Error::Unavailable`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the redis client gave up after {waited:?}, before the {deadline:?} deadline: {source}{}",
    .connect_timeout.map(|t| format!(" (connect timeout {t:?})")).unwrap_or_default()
)]
struct GaveUpEarly {
    waited: Duration,
    deadline: Duration,
    connect_timeout: Option<Duration>,
    #[source]
    source: RedisError,
}
