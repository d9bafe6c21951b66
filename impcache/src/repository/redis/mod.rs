//! The Redis repository: one multiplexed connection (the `redis` crate's
//! `MultiplexedConnection`), replaced when it fails, a deadline on every call and a circuit
//! breaker.
//!
//! This file: the repository, its connection and its builder; `operations.rs`: the operations
//! and the call policy's hooks.

mod operations;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::breaker::CircuitBreaker;
use super::call::{current_runtime, Opened, Unanswered};
use super::commands::NxGet;
use super::dsn;
use super::failure::RefusedLogin;
use super::settings::{shared_setters, Settings};
pub use super::settings::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_MAX_VALUE_BYTES};
use crate::error::Result;

/// Consecutive timeouts after which the connection is presumed dead (a half-open TCP connection,
/// a black-holed route) and replaced by a fresh one.
const RESET_AFTER_TIMEOUTS: u32 = 3;

/// The Redis (or Valkey) repository.
///
/// - **Lazy**: construction only checks the DSN; the connection is opened by the first operation,
///   so an application starts while Redis is down.
/// - **One connection, shared**: every clone (and every [`Cache`](crate::Cache) over it) uses one
///   multiplexed connection; concurrent calls are pipelined on it. It reconnects by itself.
/// - **Bounded**: no operation waits longer than its [deadline](RedisCacheRepositoryBuilder::deadline),
///   reconnecting included ([`Error::Timeout`]). A timed-out write may still be applied by the
///   server later: a timeout is not a cancellation.
/// - **Self-healing**: a connection that failed (refused, reset, a protocol error) or timed out 3
///   times in a row (a half-open connection, a black-holed route) is dropped, and the next
///   operation opens a fresh one: recovery needs no restart of the application. A call its
///   caller dropped first (a shorter timeout of its own around it) counts as a timeout once its
///   deadline has passed with no answer since, here and for the breaker.
/// - **Circuit breaker**: after 5 consecutive outage errors, operations fail at once with
///   [`Error::CircuitOpen`] for 500 ms, then one probe goes through; see
///   [`RedisCacheRepositoryBuilder::circuit_breaker`].
///
/// DSNs: `redis://[[user][:password]@]host[:port][/db]`, `rediss://...` (feature `tls`;
/// certificates are always verified: `#insecure` is refused), `unix:///path/to/redis.sock[?db=N]`
/// and `redis+unix://...`. As redis-py reads them, the query may give the database (`?db=N`),
/// the password (`?password=`) and the user name (`?username=`), on TCP and on sockets; a
/// lone `name@` is a user name.
///
/// A login the server refuses (a wrong password, an unknown or disabled ACL user) is
/// [`Error::Server`], not an outage: the breaker stays closed, every call says why, and a
/// password corrected on the server works at the next call.
///
/// ```
/// use std::time::Duration;
/// use impcache::RedisCacheRepository;
///
/// let repository = RedisCacheRepository::builder("redis://127.0.0.1:6379/0")
///     .deadline(Duration::from_millis(200))
///     .build()?;
/// assert!(RedisCacheRepository::new("http://127.0.0.1").is_err());
/// # Ok::<(), impcache::Error>(())
/// ```
///
/// [`Error::Timeout`]: crate::Error::Timeout
/// [`Error::CircuitOpen`]: crate::Error::CircuitOpen
/// [`Error::Server`]: crate::Error::Server
#[derive(Clone)]
pub struct RedisCacheRepository {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection_config: AsyncConnectionConfig,
    /// The current connection; `None` until the first operation and after a connection was
    /// found dead. Read on every call without a lock (`arc-swap`: no atomic write to a line that
    /// both cores share), replaced under `replacing`.
    current: ArcSwapOption<Current>,
    replacing: Mutex<()>,
    /// Held while a connection is made: one at a time, and those who waited take it.
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    consecutive_timeouts: AtomicU32,
    /// A call its caller abandoned, counted as a timeout once its deadline has passed (see
    /// [`Unanswered`]).
    unanswered: Unanswered,
    deadline: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    breaker: CircuitBreaker,
    /// Whether the server takes `SET .. NX GET` (`set_nx_or_get`): learned from its reply.
    nx_get: NxGet,
    /// The DSN with its password replaced: the only form that is ever printed.
    shown_dsn: String,
    /// A login the server refused lately: not tried again at every call.
    refused_login: RefusedLogin,
}

/// A connection and its generation (which tells a dead connection's replacement apart from it).
struct Current {
    generation: u64,
    connection: MultiplexedConnection,
    /// The tokio runtime that opened the connection, where its driver task runs. When that
    /// runtime ends, the driver ends with it: see [`Attempt::driver_gone`](super::call::Attempt).
    runtime: Option<tokio::runtime::Id>,
}

enum Source {
    Dsn(String),
    Client(Box<redis::Client>),
}

/// Configures a [`RedisCacheRepository`]. Every setting has a default suited to a cache that
/// must never slow its application down.
#[must_use]
pub struct RedisCacheRepositoryBuilder {
    source: Source,
    settings: Settings,
    #[cfg(feature = "tls")]
    tls: TlsSettings,
}

/// Certificates for `rediss://` beyond the default (webpki) roots.
#[cfg(feature = "tls")]
#[derive(Default)]
struct TlsSettings {
    root_certificate: Option<Vec<u8>>,
    client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisCacheRepositoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Dsn(dsn) => dsn::redact(dsn),
            Source::Client(client) => dsn::describe_client(client),
        };
        let mut debug = f.debug_struct("RedisCacheRepositoryBuilder");
        debug
            .field("source", &source)
            .field("settings", &self.settings);
        #[cfg(feature = "tls")]
        debug
            .field(
                "tls_root_certificate",
                &self.tls.root_certificate.as_ref().map(|_| "<set>"),
            )
            .field(
                "tls_client_certificate",
                &self.tls.client_identity.as_ref().map(|_| "<redacted>"),
            );
        debug.finish()
    }
}

impl RedisCacheRepository {
    /// A repository for `dsn` with the default settings. The DSN is checked now
    /// ([`Error::InvalidDsn`](crate::Error::InvalidDsn)); nothing is connected until the first
    /// operation.
    pub fn new(dsn: &str) -> Result<Self> {
        Self::builder(dsn).build()
    }

    /// A repository over an existing `redis::Client`, with the default settings.
    pub fn from_client(client: redis::Client) -> Self {
        Self::builder_with_client(client.clone()).finish(client)
    }

    /// Configures a repository for `dsn`.
    pub fn builder(dsn: impl Into<String>) -> RedisCacheRepositoryBuilder {
        RedisCacheRepositoryBuilder::new(Source::Dsn(dsn.into()))
    }

    /// Configures a repository over an existing `redis::Client`.
    pub fn builder_with_client(client: redis::Client) -> RedisCacheRepositoryBuilder {
        RedisCacheRepositoryBuilder::new(Source::Client(Box::new(client)))
    }

    /// The per-operation deadline.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// The server's connection settings: where the near cache's tracking connection goes.
    pub(crate) fn connection_info(&self) -> redis::ConnectionInfo {
        self.inner.client.get_connection_info().clone()
    }

    /// `true` while the circuit breaker fails operations fast.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The current connection, its generation and the runtime that opened it; when there is
    /// none, or when `own_runtime` asks for one of this call's runtime and it is another's, one
    /// is made, by this call. It is connected before anyone else can use it: its driver task
    /// then runs on this call's runtime, the one recorded (a lazy connection ran its driver on
    /// the runtime of whichever call polled it first, which could end while the connection was
    /// recorded as this one's: found by a probe, a write failed with `broken pipe`). Calls in
    /// flight on a connection replaced here finish on it.
    async fn connection(
        &self,
        own_runtime: bool,
    ) -> redis::RedisResult<Opened<MultiplexedConnection>> {
        if let Some(opened) = self.usable(own_runtime) {
            return Ok(opened);
        }
        // Boxed: the connect future is several kilobytes, and every call's future would carry
        // (and move) it inline: +1,200 instructions per `get` (`benches/op-cost.sh 6000 get`,
        // 20,770 against 19,570), nearly all of them `memcpy`.
        Box::pin(self.connect(own_runtime)).await
    }

    /// The current connection, if there is one this call may use.
    fn usable(&self, own_runtime: bool) -> Option<Opened<MultiplexedConnection>> {
        let current = self.inner.current.load();
        current
            .as_ref()
            .filter(|current| !own_runtime || current.runtime == current_runtime())
            .map(|current| Opened {
                generation: current.generation,
                runtime: current.runtime,
                handle: current.connection.clone(),
            })
    }

    /// [`connection`](Self::connection)'s slow path: one connect at a time; those who waited
    /// take the connection it made.
    async fn connect(
        &self,
        own_runtime: bool,
    ) -> redis::RedisResult<Opened<MultiplexedConnection>> {
        let _connecting = self.inner.connecting.lock().await;
        if let Some(opened) = self.usable(own_runtime) {
            return Ok(opened);
        }
        if let Some(refused) = self.inner.refused_login.recent() {
            return Err(refused);
        }
        let connected = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&self.inner.connection_config)
            .await;
        self.inner.refused_login.note(&connected);
        let connection = connected?;
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let here = current_runtime();
        let opened = Opened {
            generation,
            runtime: here,
            handle: connection.clone(),
        };
        let _replacing = self
            .inner
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.current.store(Some(Arc::new(Current {
            generation,
            connection,
            runtime: here,
        })));
        Ok(opened)
    }

    /// Drops connection `generation` (if still current) so that the next operation opens a fresh
    /// one, instead of waiting on a dead socket or a reconnect attempt that already failed.
    fn reset_connection(&self, generation: u64) {
        if generation == 0 {
            return;
        }
        let _replacing = self
            .inner
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.inner.current.load();
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            self.inner.current.store(None);
            tracing::debug!(
                dsn = %self.inner.shown_dsn,
                "impcache: dropping a dead redis connection; the next operation reconnects"
            );
        }
    }

    /// Counts a timeout on connection `generation`; after a few in a row the connection is presumed
    /// dead (a server or route that swallows traffic never resets it) and replaced.
    fn note_timeout(&self, generation: u64) {
        let timeouts = self
            .inner
            .consecutive_timeouts
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if timeouts >= RESET_AFTER_TIMEOUTS {
            self.inner.consecutive_timeouts.store(0, Ordering::Relaxed);
            self.reset_connection(generation);
        }
    }
}

impl fmt::Debug for RedisCacheRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheRepository")
            .field("dsn", &self.inner.shown_dsn)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("deadline", &self.inner.deadline)
            .field("circuit_open", &self.inner.breaker.is_open())
            .field("connected", &self.inner.current.load().is_some())
            .finish()
    }
}

impl RedisCacheRepositoryBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            settings: Settings::default(),
            #[cfg(feature = "tls")]
            tls: TlsSettings::default(),
        }
    }

    /// Trusts `pem` (one or more PEM certificates) as the root certificate authority of a
    /// `rediss://` server, instead of the default (webpki) roots: for a private CA. Certificates
    /// are still verified, host name included. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certificate = Some(pem.into());
        self
    }

    /// A client certificate chain and its private key (both PEM) for servers that require mutual
    /// TLS (`tls-auth-clients yes`). Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    shared_setters!();

    /// Checks the DSN and builds the repository; nothing is connected yet.
    pub fn build(self) -> Result<RedisCacheRepository> {
        let client = match &self.source {
            Source::Dsn(dsn) => dsn::server(dsn)?,
            Source::Client(client) => (**client).clone(),
        };
        self.settings.check(|| match &self.source {
            Source::Dsn(dsn) => dsn::redact(dsn),
            Source::Client(client) => dsn::describe_client(client),
        })?;
        #[cfg(feature = "tls")]
        let client = self.with_tls_certificates(client)?;
        Ok(self.finish(client))
    }

    /// Rebuilds `client` with the custom root and client certificates, when any were given.
    #[cfg(feature = "tls")]
    fn with_tls_certificates(&self, client: redis::Client) -> Result<redis::Client> {
        if self.tls.root_certificate.is_none() && self.tls.client_identity.is_none() {
            return Ok(client);
        }
        let shown_dsn = match &self.source {
            Source::Dsn(dsn) => dsn::redact(dsn),
            Source::Client(client) => dsn::describe_client(client),
        };
        let invalid = |reason: String| crate::Error::InvalidDsn {
            dsn: shown_dsn.clone(),
            reason,
        };
        if !matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ) {
            return Err(invalid(
                "TLS certificates were given, but the DSN is not `rediss://`".to_owned(),
            ));
        }
        let certificates = redis::TlsCertificates {
            client_tls: self.tls.client_identity.as_ref().map(|(cert, key)| {
                redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }
            }),
            root_cert: self.tls.root_certificate.clone(),
        };
        redis::Client::build_with_tls(client.get_connection_info().clone(), certificates)
            .map_err(|e| invalid(format!("unusable TLS certificates: {e}")))
    }

    fn finish(self, client: redis::Client) -> RedisCacheRepository {
        let shown_dsn = match &self.source {
            Source::Dsn(dsn) => dsn::redact(dsn),
            Source::Client(client) => dsn::describe_client(client),
        };
        // No reconnection of its own: a connection that failed is dropped and the next call
        // opens a fresh one, so that the circuit breaker decides how often an unreachable server
        // is tried.
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            // Our own deadline (`tokio::time::timeout` around each call) bounds every response;
            // a second, identical timer inside the connection would only cost time per call.
            .set_response_timeout(None);
        RedisCacheRepository {
            inner: Arc::new(Inner {
                client,
                connection_config,
                current: ArcSwapOption::empty(),
                replacing: Mutex::new(()),
                connecting: tokio::sync::Mutex::new(()),
                generations: AtomicU64::new(0),
                consecutive_timeouts: AtomicU32::new(0),
                unanswered: Unanswered::default(),
                deadline: self.settings.deadline,
                connect_timeout: self.settings.connect_timeout,
                max_value_bytes: self.settings.max_value_bytes,
                breaker: CircuitBreaker::new(self.settings.breaker, "redis", shown_dsn.clone()),
                nx_get: NxGet::default(),
                shown_dsn,
                refused_login: RefusedLogin::default(),
            }),
        }
    }
}
