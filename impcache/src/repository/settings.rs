//! Settings shared by the builders of the Redis-backed repositories (single server, Sentinel,
//! Cluster): one definition of the defaults and of the builder methods that set them.

use std::time::Duration;

use super::breaker::CircuitBreakerConfig;
use crate::error::{Error, Result};

/// Default time allowed to open a TCP connection (and handshake) to Redis.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default deadline of one operation, reconnecting included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(500);
/// Redis's default `proto-max-bulk-len`: the largest value a server accepts.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 512 * 1024 * 1024;

/// Deadlines, breaker and size limit of a Redis-backed repository.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) deadline: Duration,
    pub(crate) breaker: Option<CircuitBreakerConfig>,
    pub(crate) max_value_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            breaker: Some(CircuitBreakerConfig::default()),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl Settings {
    /// Refuses settings under which nothing could work, as [`Error::InvalidDsn`] of the
    /// repository's DSN(s) (`shown`, passwords hidden): a zero deadline or connect timeout would
    /// fail every operation, a zero size limit refuse every value.
    pub(crate) fn check(&self, shown: impl FnOnce() -> String) -> Result<()> {
        let problem = if self.deadline.is_zero() {
            "the deadline is zero: every operation would time out"
        } else if self.connect_timeout.is_zero() {
            "the connect timeout is zero: no connection could be opened"
        } else if self.max_value_bytes == 0 {
            "the largest value is 0 bytes: every value would be refused"
        } else {
            return Ok(());
        };
        Err(Error::InvalidDsn {
            dsn: shown(),
            reason: problem.to_owned(),
        })
    }
}

/// The builder methods for [`Settings`], for a builder with a `settings` field.
macro_rules! shared_setters {
    () => {
        /// Time allowed to open a connection (TCP and handshake). Default 250 ms; `build`
        /// refuses zero ([`Error::InvalidDsn`](crate::Error::InvalidDsn)); `Duration::MAX` is
        /// 100 years, as for the deadline (added to it, it overflowed: the Sentinel
        /// repository's task following failover announcements panicked, found by a probe).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.settings.connect_timeout = $crate::expire::capped(timeout);
            self
        }

        /// The most any operation waits, reconnecting (and, on a cluster, redirections and
        /// retries) included. Default 500 ms. For `delete_pattern` it bounds each round trip
        /// of the sweep, and for a `get_many`, `set_many` or `delete_many` each round trip of
        /// 10,000 keys. `build` refuses zero ([`Error::InvalidDsn`](crate::Error::InvalidDsn)).
        pub fn deadline(mut self, deadline: std::time::Duration) -> Self {
            self.settings.deadline = $crate::expire::capped(deadline);
            self
        }

        /// Replaces the circuit-breaker settings (default: open after 5 consecutive outage
        /// errors, probe every 500 ms).
        pub fn circuit_breaker(mut self, config: $crate::CircuitBreakerConfig) -> Self {
            self.settings.breaker = Some(config);
            self
        }

        /// Turns the circuit breaker off: every operation tries the server, each bounded by
        /// the deadline.
        pub fn without_circuit_breaker(mut self) -> Self {
            self.settings.breaker = None;
            self
        }

        /// The largest encoded value accepted before sending (default 512 MiB, Redis's own
        /// limit). `build` refuses zero ([`Error::InvalidDsn`](crate::Error::InvalidDsn)).
        ///
        /// Set it to the server's `proto-max-bulk-len` when that is lower: the server answers a
        /// longer value with a protocol error and closes the connection, which the client may
        /// see first, as an outage ([`Error::Unavailable`](crate::Error::Unavailable), counted
        /// towards the circuit breaker) rather than as the server's refusal.
        pub fn max_value_bytes(mut self, bytes: usize) -> Self {
            self.settings.max_value_bytes = bytes;
            self
        }
    };
}
pub(crate) use shared_setters;
