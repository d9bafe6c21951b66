//! What kind of failure a Redis-backed repository saw: a `redis` error read once into a
//! [`Failure`] (from its kind and `is_*` methods), and the [`Error`] reported for it.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{BoxError, Error};

/// The kind of a failed call, read once from the `redis` error (or from what the call policy
/// saw), so that the policy and each repository's hooks match on kinds, not on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The deadline passed ([`Error::Timeout`]).
    Timeout,
    /// The `redis` client's own timer (its connect timeout), or the operating system, gave up
    /// before the deadline.
    GaveUp,
    /// The connection was refused: nothing was sent.
    Refused,
    /// The connection dropped (reset, closed, a broken pipe).
    Dropped,
    /// Any other sign of an unhealthy connection or server: an I/O error, an error after which
    /// the connection must be replaced, a cluster's own unavailability replies (`CLUSTERDOWN`,
    /// `TRYAGAIN`, `MASTERDOWN`, `LOADING`, no connection to the slot's node).
    Broken,
    /// The circuit breaker is open: nothing was attempted.
    CircuitOpen,
    /// The server refused the DSN's credentials when the connection logged in (`AUTH`, or
    /// `HELLO` with them: `WRONGPASS`, a wrong password or an unknown or disabled ACL user). The
    /// server answered: no outage; but the connection never got past its login, so it is
    /// replaced, and the next call logs in again (a password corrected on the server works at
    /// once).
    Auth,
    /// The client's configuration cannot work (the `redis` crate's `InvalidClientConfig`: an
    /// address given as a Sentinel is a plain Redis server, for instance). Retrying cannot help:
    /// no outage, as for a refused login.
    Misconfigured,
    /// The server answered `READONLY`: it is a replica (a demoted primary).
    ReadOnly,
    /// The server answered a protocol error (a value beyond its `proto-max-bulk-len`), after
    /// which it closes the connection.
    Protocol,
    /// Any other error reply.
    Reply,
    /// Refused before anything was sent: bad input (a value too large).
    Invalid,
    /// Called outside a tokio runtime, where neither the deadline's timer nor a connection's
    /// driver task can run: nothing was attempted, and the server is not to blame.
    NoRuntime,
}

impl Failure {
    /// How `e` failed: timeouts first (one reported before the deadline is the client giving up
    /// early), then a refused login (which the `redis` crate counts among the errors after which
    /// a connection must be replaced, but which is the server's answer), then the outages, then
    /// the server's other replies. A socket of a tokio runtime that is shutting down (another
    /// runtime's: this call runs on a live one) is a dropped connection.
    pub(crate) fn of(e: &RedisError, waited: Waited) -> Failure {
        let cluster_outage = e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(ServerErrorKind::MasterDown)
                    | ErrorKind::Server(ServerErrorKind::BusyLoading)
            );
        if e.is_timeout() && waited.waited < waited.deadline {
            Failure::GaveUp
        } else if e.is_timeout() {
            Failure::Timeout
        } else if is_auth_failure(e) {
            Failure::Auth
        } else if e.kind() == ErrorKind::InvalidClientConfig {
            Failure::Misconfigured
        } else if e.is_connection_refusal() {
            Failure::Refused
        } else if e.is_connection_dropped() || is_runtime_shutting_down(e) {
            Failure::Dropped
        } else if cluster_outage || e.is_io_error() || e.is_unrecoverable_error() {
            Failure::Broken
        } else if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
            Failure::ReadOnly
        } else if e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
            && e.detail().is_some_and(|d| d.contains("Protocol error"))
        {
            Failure::Protocol
        } else {
            Failure::Reply
        }
    }

    /// Any failure but a timeout, a refused login or a configuration that cannot work counted
    /// as an outage: how a failed Sentinel lookup is reported, whatever the error. A refused
    /// login (to a Sentinel or to the primary it names) is the server's answer, as on a single
    /// node, and a plain Redis server given as a Sentinel a configuration error (both opened the
    /// breaker: found by probes).
    #[cfg(feature = "sentinel")]
    pub(crate) fn or_outage(self) -> Failure {
        match self {
            Failure::Timeout | Failure::GaveUp | Failure::Auth | Failure::Misconfigured => self,
            _ => Failure::Broken,
        }
    }

    /// The connection or server is unhealthy (these count towards a circuit breaker); a server's
    /// error reply is not one of them.
    pub(crate) fn is_outage(self) -> bool {
        matches!(
            self,
            Failure::Timeout
                | Failure::GaveUp
                | Failure::Refused
                | Failure::Dropped
                | Failure::Broken
                | Failure::CircuitOpen
        )
    }
}

/// A failed call: its kind, and the error reported for it.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) kind: Failure,
    pub(crate) error: Error,
}

impl Failed {
    /// The error reported. (Not a `From` impl: a second `From` for [`Error`] would leave `?` in
    /// users' code without a type to infer.)
    pub(crate) fn into_error(self) -> Error {
        self.error
    }

    /// Turns a `redis` error into ours: outages are [`Error::Unavailable`], any other error reply
    /// is the server's refusal ([`Error::Server`]). A timeout is [`Error::Timeout`] only once the
    /// deadline has passed: before it (the client's connect timeout, or the operating system,
    /// gave up), an [`Error::Unavailable`] that names the client's cause and the time actually
    /// waited, rather than reporting the deadline as passed.
    pub(crate) fn classify(
        e: RedisError,
        operation: &'static str,
        key: String,
        waited: Waited,
    ) -> Failed {
        let e = first_failed_command(e);
        Failed::of(Failure::of(&e, waited), e, operation, key, waited)
    }

    /// The error reported for a failure of `kind`.
    pub(crate) fn of(
        kind: Failure,
        e: RedisError,
        operation: &'static str,
        key: String,
        waited: Waited,
    ) -> Failed {
        let error = match kind {
            Failure::Timeout => Error::Timeout {
                operation,
                key,
                deadline: waited.deadline,
            },
            Failure::GaveUp => Error::Unavailable {
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
            },
            kind if kind.is_outage() => Error::Unavailable {
                operation,
                key,
                source: Box::new(e) as BoxError,
            },
            _ => Error::Server {
                operation,
                key,
                code: e.code().map(str::to_owned),
                message: server_message(&e),
            },
        };
        Failed { kind, error }
    }

    /// The deadline passed before the call finished.
    pub(crate) fn timeout(operation: &'static str, key: String, deadline: Duration) -> Failed {
        Failed {
            kind: Failure::Timeout,
            error: Error::Timeout {
                operation,
                key,
                deadline,
            },
        }
    }

    /// The circuit breaker is open: the call was not attempted; `last_failure` is what the
    /// failure that opened it ended in.
    pub(crate) fn circuit_open(
        operation: &'static str,
        key: String,
        last_failure: Option<String>,
    ) -> Failed {
        Failed {
            kind: Failure::CircuitOpen,
            error: Error::CircuitOpen {
                operation,
                key,
                last_failure,
            },
        }
    }

    /// Called outside a tokio runtime: [`Error::Unavailable`] naming the operation and the key,
    /// not attempted (tokio's timer would panic there).
    pub(crate) fn no_runtime(operation: &'static str, key: String) -> Failed {
        Failed {
            kind: Failure::NoRuntime,
            error: Error::Unavailable {
                operation,
                key,
                source: "a Redis-backed cache needs a tokio runtime (for its deadline and its \
                         connection's driver task), and this call ran outside one"
                    .into(),
            },
        }
    }

    /// Bad input, refused before anything was sent.
    pub(crate) fn invalid(error: Error) -> Failed {
        Failed {
            kind: Failure::Invalid,
            error,
        }
    }
}

/// Turns a `redis` error into ours (see [`Failed::classify`]): for replies read outside the call
/// policy (a cluster's per-node pipelines).
#[cfg(feature = "cluster")]
pub(crate) fn classify(
    e: RedisError,
    operation: &'static str,
    key: String,
    waited: Waited,
) -> Error {
    Failed::classify(e, operation, key, waited).error
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

/// The longest a login the server refused is not tried again: the calls meanwhile fail with
/// its error at once.
const LOGIN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The last login a server refused (a wrong password, an unknown user) and how many were
/// refused in a row: after the second, the next attempt waits 10 ms, doubling up to
/// [`LOGIN_RETRY`], the calls meanwhile failing with its error at once. A refused login is the
/// server's answer, not an outage, so no circuit breaker stands in for it, and each call made a
/// new connection and `AUTH` (about 200 a second from one process while a password was
/// rotated; found by a probe). The first retry is not delayed: a password fixed on the server
/// right after a refusal is taken at the next call.
///
/// A `NOAUTH` reply to a command counts as a refused login too (the DSN gives no password and
/// the server now wants one: each connection is made, then its first command refused, and each
/// call made a new connection, 467 in 2 s from one task; found by a probe, 2026-12-07).
#[derive(Default)]
pub(crate) struct RefusedLogin {
    last: std::sync::Mutex<Option<Refused>>,
    /// Whether `last` holds a refusal: a call that succeeds reads this, not the lock.
    any: std::sync::atomic::AtomicBool,
}

struct Refused {
    at: std::time::Instant,
    error: RedisError,
    in_a_row: u32,
    /// Refused by a command's `NOAUTH` after a connection was made without `AUTH`: only a call
    /// that succeeds ends the count (a connection made says nothing).
    by_command: bool,
}

impl RefusedLogin {
    /// The last refusal, while the next attempt waits.
    pub(crate) fn recent(&self) -> Option<RedisError> {
        let last = self.lock();
        let refused = last.as_ref()?;
        let pause = match refused.in_a_row {
            0 | 1 => std::time::Duration::ZERO,
            n => std::time::Duration::from_millis(10)
                .saturating_mul(1 << (n - 2).min(16))
                .min(LOGIN_RETRY),
        };
        (refused.at.elapsed() < pause).then(|| refused.error.clone())
    }

    /// Notes how a connection attempt ended: a refused login is counted; a connection made ends
    /// the count, unless a command refused its login (it is made before any command is refused).
    pub(crate) fn note<T>(&self, attempt: &Result<T, RedisError>) {
        match attempt {
            Err(error) if is_auth_failure(error) => self.refused(error.clone(), false),
            Err(_) => self.clear(),
            Ok(_) => {
                let mut last = self.lock();
                if last.as_ref().is_some_and(|refused| !refused.by_command) {
                    *last = None;
                    self.any.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// A command was refused with `NOAUTH`: the connection was made without logging in.
    pub(crate) fn refused_by_command(&self) {
        let error = RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "NOAUTH",
            "Authentication required (the DSN gives no password)".to_owned(),
        ));
        self.refused(error, true);
    }

    /// A call succeeded: the count of refusals ends (one relaxed load when there is none).
    pub(crate) fn clear(&self) {
        if self.any.load(std::sync::atomic::Ordering::Relaxed) {
            let mut last = self.lock();
            *last = None;
            self.any.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn refused(&self, error: RedisError, by_command: bool) {
        let mut last = self.lock();
        let in_a_row = last.as_ref().map_or(0, |r| r.in_a_row).saturating_add(1);
        *last = Some(Refused {
            at: std::time::Instant::now(),
            error,
            in_a_row,
            by_command,
        });
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Refused>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for RefusedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusedLogin")
    }
}

/// The server refused the login: the `redis` crate's `AuthenticationFailed` (its reading of an
/// `AUTH` refused, the server's reply dropped), `WRONGPASS` (a `HELLO` refused, under RESP3), or
/// `NOAUTH` (no password given to a server that wants one). Also inside the Cluster client's
/// "Failed to create initial connections", an `Io` error that keeps only the text of a node's
/// error (whose kind's name or code it ends with): a refused login there opened the breaker
/// (found by a probe). Matched as text there, the one thing the `redis` crate keeps.
fn is_auth_failure(e: &RedisError) -> bool {
    const REFUSED_LOGIN: [&str; 3] = ["AuthenticationFailed", "WRONGPASS", "NOAUTH"];
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        || (e.kind() == ErrorKind::Io
            && e.detail()
                .is_some_and(|detail| REFUSED_LOGIN.iter().any(|text| detail.contains(text))))
}

/// The error tokio returns for a socket whose runtime is shutting down (`A Tokio 1.x context was
/// found, but it is being shutdown.`, [`tokio::runtime::is_rt_shutdown_err`]): a connection
/// made, or being made, on a runtime that ended while another runtime's call waited for it. The
/// `redis` crate keeps an I/O error in an `Arc` (its source), and does not lend it otherwise.
fn is_runtime_shutting_down(e: &RedisError) -> bool {
    kept_io_error(e).is_some_and(tokio::runtime::is_rt_shutdown_err)
}

/// The I/O error the `redis` crate keeps in an `Arc` as `e`'s source, if any.
fn kept_io_error(e: &RedisError) -> Option<&std::io::Error> {
    type Kept = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<Kept>())
        .and_then(|kept| kept.downcast_ref::<std::io::Error>())
}

/// A write's failure on a dropped connection, kept a dropped connection (sent again) only when
/// the write was not sent: the connection was found closed before it (`BrokenPipe`: the server
/// closed it while it sat idle). Dropped while the write was in flight (a reset), it may have
/// been applied: it becomes a broken connection, not sent again, since a second `UNLINK` would
/// report 0 for the key the first removed and a second `SET` would undo a delete made in between
/// (found by a regression hunt, 9 of 9). The `redis` crate also says `BrokenPipe` for a write in
/// flight when the server closed the connection (not reset it) before answering: rare, and sent
/// again.
pub(crate) fn unless_unsent(e: RedisError) -> RedisError {
    let unsent = kept_io_error(&e).is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
    if unsent || !e.is_connection_dropped() {
        return e;
    }
    RedisError::from(std::io::Error::other(format!(
        "{e} (the write may have been applied: not sent again)"
    )))
}

/// A failed pipeline (`GET` + `PTTL`, `MGET` with the TTLs, `set_many`, the tag reads) as the
/// error of its first failed command, the error that command alone gets: the `redis` crate
/// reports the failed commands of a pipeline together, without their code when it does not know
/// it (`WRONGTYPE`, `BUSY`) and in its own words (`Pipeline failure: [(Index 0, error: ...)]`),
/// where a single command reports the server's (found by a probe: the near cache, which reads a
/// value and its TTL in one pipeline, reported errors unlike plain Redis). Any other error
/// (an aborted transaction's `EXECABORT` included) is kept as it is.
fn first_failed_command(e: RedisError) -> RedisError {
    if e.kind() == ErrorKind::Server(ServerErrorKind::ExecAbort) {
        return e;
    }
    match e.clone().into_server_errors() {
        Some(failed) => failed
            .first()
            .map_or(e, |(_, first)| RedisError::from(first.clone())),
        None => e,
    }
}

/// A server's error reply as Redis writes it (`OOM command not allowed when ...`): the `redis`
/// crate's own text quotes the code (`"OOM": command not ...`). A refused `AUTH`, whose reply the
/// `redis` crate does not keep (`Password authentication failed - AuthenticationFailed`), is
/// told in our words, which also fit a DSN with no password for a server that requires one (a
/// probe saw such a `NOAUTH` reported so from the third call on; the words first used, "refused the
/// user name and password of the DSN", denied it).
fn server_message(error: &redis::RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ if error.kind() == ErrorKind::AuthenticationFailed => {
            "authentication failed: the server refused to log in with the DSN's user name and \
             password (or without a password, when the DSN gives none)"
                .to_owned()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(e: RedisError) -> Failure {
        let waited = Waited {
            waited: Duration::from_millis(1),
            deadline: Duration::from_millis(100),
            connect_timeout: None,
        };
        Failure::of(&e, waited)
    }

    /// A refused login is the server's answer, however the `redis` crate reports it: its own
    /// kind, a `WRONGPASS` or `NOAUTH` reply, or the text the Cluster client keeps of a node's
    /// error when no initial connection could be made (that one was an outage: a wrong password
    /// opened a Cluster repository's breaker, found by a probe).
    #[test]
    fn a_refused_login_is_no_outage_however_it_is_reported() {
        let refused = [
            RedisError::from((
                ErrorKind::AuthenticationFailed,
                "Password authentication failed",
            )),
            RedisError::from((
                ErrorKind::Io,
                "Failed to create initial connections",
                "Password authentication failed - AuthenticationFailed".to_owned(),
            )),
            RedisError::from((
                ErrorKind::Io,
                "Failed to create initial connections",
                "NOAUTH: Authentication required.".to_owned(),
            )),
        ];
        for e in refused {
            let failure = of(e);
            assert_eq!(failure, Failure::Auth);
            assert!(!failure.is_outage());
        }
        let unreachable = RedisError::from((
            ErrorKind::Io,
            "Failed to create initial connections",
            "Connection refused (os error 111)".to_owned(),
        ));
        assert!(of(unreachable).is_outage());
    }

    /// tokio's error for a socket of a runtime that is shutting down (another runtime's: a call
    /// only runs on a live one) is a dropped connection, which the call policy replaces and
    /// sends again; it was `Broken`, and the call failed (found by a probe).
    #[test]
    fn a_socket_of_a_runtime_shutting_down_is_a_dropped_connection() {
        let shutting_down = RedisError::from(std::io::Error::other(
            "A Tokio 1.x context was found, but it is being shutdown.",
        ));
        assert_eq!(of(shutting_down), Failure::Dropped);
        let other = RedisError::from(std::io::Error::other("something else"));
        assert_eq!(of(other), Failure::Broken);
    }

    /// A Sentinel lookup's failures are outages but for a timeout and a refused login (to a
    /// Sentinel or to the primary it names), as on a single node (it opened the breaker), and a
    /// configuration that cannot work (a plain Redis server given as a Sentinel: it opened the
    /// breaker too).
    #[cfg(feature = "sentinel")]
    #[test]
    fn a_refused_login_during_a_sentinel_lookup_is_no_outage() {
        assert_eq!(Failure::Auth.or_outage(), Failure::Auth);
        assert_eq!(Failure::Reply.or_outage(), Failure::Broken);
        let not_a_sentinel = RedisError::from((
            ErrorKind::InvalidClientConfig,
            "Address does not point to a sentinel node",
        ));
        let failure = of(not_a_sentinel).or_outage();
        assert_eq!(failure, Failure::Misconfigured);
        assert!(!failure.is_outage());
    }
}
