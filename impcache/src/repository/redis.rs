//! The Redis repository: one multiplexed, auto-reconnecting connection (the `redis` crate's
//! `ConnectionManager`), a deadline on every call and a circuit breaker.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};

use super::breaker::CircuitBreaker;
use super::call::{self, current_runtime, Attempt, Call, Limits, Opened, Target};
use super::commands::{check_value_size, key_command, keys_command, scan_command, set_command};
use super::dsn;
use super::failure::{Failed, Failure};
use super::settings::{shared_setters, Settings};
pub use super::settings::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_MAX_VALUE_BYTES};
use super::{BoxFuture, CacheRepository};
use crate::error::{shown, shown_many, Result};
use crate::expire::Expiry;

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
///   reconnecting included ([`Error::Timeout`](crate::Error::Timeout)). A timed-out write may still be applied by the
///   server later: a timeout is not a cancellation.
/// - **Self-healing**: a connection that failed (refused, reset, a protocol error) or timed out 3
///   times in a row (a half-open connection, a black-holed route) is dropped, and the next
///   operation opens a fresh one: recovery needs no restart of the application.
/// - **Circuit breaker**: after 5 consecutive outage errors, operations fail at once with
///   [`Error::CircuitOpen`](crate::Error::CircuitOpen) for 500 ms, then one probe goes through; see
///   [`RedisCacheRepositoryBuilder::circuit_breaker`].
///
/// DSNs: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (feature `tls`; certificates
/// are verified), `unix:///path/to/redis.sock[?db=N]` and `redis+unix://...`.
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
#[derive(Clone)]
pub struct RedisCacheRepository {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    /// The current connection; `None` until the first operation and after a connection was
    /// found dead. Read on every call without a lock (`arc-swap`: no atomic write to a line that
    /// both cores share), replaced under `replacing`.
    manager: ArcSwapOption<Current>,
    replacing: Mutex<()>,
    generations: AtomicU64,
    consecutive_timeouts: AtomicU32,
    deadline: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    breaker: CircuitBreaker,
    /// The DSN with its password replaced: the only form that is ever printed.
    shown_dsn: String,
}

/// A connection and its generation (which tells a dead connection's replacement apart from it).
struct Current {
    generation: u64,
    manager: ConnectionManager,
    /// The tokio runtime that opened the connection, where its driver task runs (`None` outside
    /// one). When that runtime ends, the driver ends with it: see [`RedisCacheRepository::driver_gone`].
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
    /// ([`Error::InvalidDsn`](crate::Error::InvalidDsn)); nothing is connected until the first operation.
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

    /// `true` while the circuit breaker fails operations fast.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The current connection (made lazily: it connects on first use), its generation and the
    /// runtime that opened it.
    fn connection(&self) -> redis::RedisResult<Opened<ConnectionManager>> {
        let opened = |current: &Current| Opened {
            generation: current.generation,
            runtime: current.runtime,
            handle: current.manager.clone(),
        };
        if let Some(current) = &*self.inner.manager.load() {
            return Ok(opened(current));
        }
        let _replacing = self
            .inner
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = &*self.inner.manager.load() {
            return Ok(opened(current));
        }
        let manager = ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            self.inner.manager_config.clone(),
        )?;
        let current = Current {
            generation: self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1,
            manager,
            runtime: current_runtime(),
        };
        let connection = opened(&current);
        self.inner.manager.store(Some(Arc::new(current)));
        Ok(connection)
    }

    /// `true` while connection `generation` is the one in use.
    fn is_current(&self, generation: u64) -> bool {
        let current = self.inner.manager.load();
        current.as_ref().is_some_and(|c| c.generation == generation)
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
        let current = self.inner.manager.load();
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            self.inner.manager.store(None);
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

    /// Sends one command or pipeline under the call policy ([`call::call`]): the deadline and
    /// the breaker, and the hooks of [`Target`] below.
    async fn query<T: FromRedisValue>(
        &self,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: Request<'_>,
    ) -> Result<T, Failed> {
        let call = Call {
            idempotent: matches!(request, Request::Read(_)),
            ..Call::new(operation, subject)
        };
        let until = tokio::time::Instant::now() + self.inner.deadline;
        call::call(self, call, Some(until), |mut connection| async move {
            match request {
                Request::Read(cmd) | Request::Cmd(cmd) => cmd.query_async(&mut connection).await,
                Request::Pipe(pipe) => pipe.query_async(&mut connection).await,
            }
        })
        .await
    }

    fn check_size(&self, key: &str, value: &Bytes) -> Result<(), Failed> {
        check_value_size(key, value.len(), self.inner.max_value_bytes).map_err(Failed::invalid)
    }
}

/// What [`RedisCacheRepository::query`] sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// A read: safe to send twice.
    Read(&'a redis::Cmd),
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// The single node's hooks of the call policy: a connection that failed (refused, reset, a
/// protocol error) or timed out [`RESET_AFTER_TIMEOUTS`] times in a row is dropped, and the
/// next operation opens a fresh one. A request is sent once more, within the same deadline,
/// when the connection turned out to be dropped and the request is a read (an idle connection
/// closed by the server, a `CLIENT KILL`), and whatever it is when the connection's driver ended
/// with the runtime that opened it.
impl Target for RedisCacheRepository {
    type Handle = ConnectionManager;
    type Error = RedisError;

    fn limits(&self) -> Limits<'_> {
        Limits {
            breaker: &self.inner.breaker,
            deadline: self.inner.deadline,
            connect_timeout: Some(self.inner.connect_timeout),
        }
    }

    async fn open(&self, _call: &Call<'_>) -> redis::RedisResult<Opened<ConnectionManager>> {
        self.connection()
    }

    fn retry(&self, attempt: &Attempt<'_>, call: &Call<'_>) -> bool {
        let retry = !attempt.retried
            && ((call.idempotent && attempt.failure.kind == Failure::Dropped)
                || (attempt.driver_gone && self.is_current(attempt.generation)));
        if retry {
            self.reset_connection(attempt.generation);
        }
        retry
    }

    fn succeeded(&self) {
        // Read before writing: a store on every call would bounce the cache line between cores
        // on the hot path.
        if self.inner.consecutive_timeouts.load(Ordering::Relaxed) != 0 {
            self.inner.consecutive_timeouts.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, generation: Option<u64>, failure: Failure) {
        let Some(generation) = generation else { return };
        match failure {
            Failure::Timeout => self.note_timeout(generation),
            // Redis closes the connection after a protocol error (a value beyond its
            // `proto-max-bulk-len`): don't let the next call find it dead.
            Failure::GaveUp
            | Failure::Refused
            | Failure::Dropped
            | Failure::Broken
            | Failure::Protocol => self.reset_connection(generation),
            _ => {}
        }
    }
}

/// The operations as plain `async fn`s: the trait boxes them, and [`Cache`](crate::Cache)
/// awaits them directly (no allocation for the boxed future).
impl RedisCacheRepository {
    pub(crate) async fn set_direct(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<(), Failed> {
        self.check_size(key, &value)?;
        let cmd = set_command(key, &value, expiry, false);
        self.query("set", &|| shown(key), Request::Cmd(&cmd)).await
    }

    pub(crate) async fn set_nx_direct(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<bool, Failed> {
        self.check_size(key, &value)?;
        let cmd = set_command(key, &value, expiry, true);
        let reply: redis::Value = self
            .query("set_nx", &|| shown(key), Request::Cmd(&cmd))
            .await?;
        Ok(!matches!(reply, redis::Value::Nil))
    }

    pub(crate) async fn set_many_direct(
        &self,
        entries: &[(&str, Bytes)],
        expiry: Expiry,
    ) -> Result<(), Failed> {
        if entries.is_empty() {
            return Ok(());
        }
        // Sized up front, and no command `ignore()`d: redis-rs keeps ignored indices in a
        // hash set (a hash per command, and another per reply); the `OK`s are dropped as a
        // whole instead. Error replies still fail the call.
        let mut pipe = redis::Pipeline::with_capacity(entries.len());
        for (key, value) in entries {
            self.check_size(key, value)?;
            pipe.add_command(set_command(key, value, expiry, false));
        }
        let keys = || {
            let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
            shown_many(&keys)
        };
        self.query("set_many", &keys, Request::Pipe(&pipe)).await
    }

    pub(crate) async fn get_direct(&self, key: &str) -> Result<Option<Bytes>, Failed> {
        let cmd = key_command("GET", key);
        self.query("get", &|| shown(key), Request::Read(&cmd)).await
    }

    pub(crate) async fn get_many_direct(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<Bytes>>, Failed> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = keys_command("MGET", keys);
        self.query("get_many", &|| shown_many(keys), Request::Read(&cmd))
            .await
    }

    pub(crate) async fn delete_direct(&self, key: &str) -> Result<u64, Failed> {
        let cmd = key_command("UNLINK", key);
        self.query("delete", &|| shown(key), Request::Cmd(&cmd))
            .await
    }

    pub(crate) async fn delete_many_direct(&self, keys: &[&str]) -> Result<u64, Failed> {
        if keys.is_empty() {
            return Ok(0);
        }
        let cmd = keys_command("UNLINK", keys);
        self.query("delete_many", &|| shown_many(keys), Request::Cmd(&cmd))
            .await
    }

    /// `SCAN MATCH` in batches of 1,000 and `UNLINK` of each batch; the `UNLINK` of one batch
    /// travels in the same round trip as the `SCAN` for the next. The deadline applies to each
    /// round trip, not to the whole sweep.
    pub(crate) async fn delete_pattern_direct(&self, pattern: &str) -> Result<u64, Failed> {
        let subject = || shown(pattern);
        let (mut cursor, mut keys): (u64, Vec<Vec<u8>>) = self
            .query(
                "delete_pattern",
                &subject,
                Request::Read(&scan_command(0, pattern)),
            )
            .await?;
        let mut removed = 0;
        loop {
            match (cursor, keys.is_empty()) {
                (0, true) => return Ok(removed),
                (0, false) => {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(&keys);
                    let n: u64 = self
                        .query("delete_pattern", &subject, Request::Cmd(&unlink))
                        .await?;
                    return Ok(removed + n);
                }
                (_, true) => {
                    (cursor, keys) = self
                        .query(
                            "delete_pattern",
                            &subject,
                            Request::Read(&scan_command(cursor, pattern)),
                        )
                        .await?;
                }
                (_, false) => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("UNLINK").arg(&keys);
                    pipe.add_command(scan_command(cursor, pattern));
                    let (n, (next, next_keys)): (u64, (u64, Vec<Vec<u8>>)) = self
                        .query("delete_pattern", &subject, Request::Pipe(&pipe))
                        .await?;
                    removed += n;
                    (cursor, keys) = (next, next_keys);
                }
            }
        }
    }
}

impl CacheRepository for RedisCacheRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_direct(key, value, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.set_nx_direct(key, value, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_many_direct(entries, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { self.get_direct(key).await.map_err(Failed::into_error) })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(async move { self.get_many_direct(keys).await.map_err(Failed::into_error) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.delete_direct(key).await.map_err(Failed::into_error) })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.delete_many_direct(keys)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.delete_pattern_direct(pattern)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl fmt::Debug for RedisCacheRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheRepository")
            .field("dsn", &self.inner.shown_dsn)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("deadline", &self.inner.deadline)
            .field("circuit_open", &self.inner.breaker.is_open())
            .field("connected", &self.inner.manager.load().is_some())
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
        let invalid = |reason: String| crate::error::Error::InvalidDsn {
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
        // One reconnect attempt per failing call: the circuit breaker, not the connection
        // manager's backoff, decides how often an unreachable server is tried.
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(self.settings.connect_timeout))
            // Our own deadline (`tokio::time::timeout` around each call) bounds every response;
            // a second, identical timer inside the connection would only cost time per call.
            .set_response_timeout(None);
        RedisCacheRepository {
            inner: Arc::new(Inner {
                client,
                manager_config,
                manager: ArcSwapOption::empty(),
                replacing: Mutex::new(()),
                generations: AtomicU64::new(0),
                consecutive_timeouts: AtomicU32::new(0),
                deadline: self.settings.deadline,
                connect_timeout: self.settings.connect_timeout,
                max_value_bytes: self.settings.max_value_bytes,
                breaker: CircuitBreaker::new(self.settings.breaker),
                shown_dsn,
            }),
        }
    }
}
