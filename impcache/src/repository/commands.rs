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
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
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

/// Turns a `redis` error into ours: timeouts, unreachable or dropped connections (and, on a
/// cluster, its own unavailability replies: `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`,
/// no connection to the slot's node) are outages; any other error reply is the server's refusal.
pub(crate) fn classify(
    e: RedisError,
    operation: &'static str,
    key: String,
    deadline: Duration,
) -> Error {
    let cluster_outage = e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
        );
    if e.is_timeout() {
        Error::Timeout {
            operation,
            key,
            deadline,
        }
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
