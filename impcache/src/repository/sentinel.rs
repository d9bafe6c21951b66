//! The Sentinel repository (feature `sentinel`): asks Redis Sentinel where the primary is, talks
//! to it through a [`RedisCacheRepository`], and asks again when the primary stops answering or
//! turns out to be a replica (after a failover).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::RedisConnectionInfo;

use super::breaker::{Admission, CircuitBreaker, ProbeGuard};
use super::redis::{redact_dsn, RedisCacheRepository};
use super::settings::{shared_setters, Settings};
use super::{BoxFuture, CacheRepository};
use crate::error::{shown, shown_many, BoxError, Error, Result};
use crate::expire::Expiry;

/// A Redis primary found through Sentinel (feature `sentinel`).
///
/// - **Lazy**: construction checks the Sentinel addresses; the first operation asks the Sentinels
///   (`SENTINEL MASTERS`, in the order given) for `service_name`'s primary, checks that it is one,
///   and connects to it.
/// - **Follows failovers**: when the primary is unreachable, times out, or answers `READONLY`
///   (it was demoted to a replica), the next operation asks the Sentinels again. An operation that
///   failed with `READONLY` or a refused connection (so nothing was applied) is retried once on
///   the new primary, within the same deadline; others fail and the next call uses the new primary.
///   A background check every [`recheck_every`](RedisSentinelCacheRepositoryBuilder::recheck_every)
///   (1 s) also catches a failover that leaves the old primary answering for a while.
/// - **Bounded**: every operation, the Sentinel lookup included, gives up after the
///   [deadline](RedisSentinelCacheRepositoryBuilder::deadline); the circuit breaker works as for
///   [`RedisCacheRepository`].
///
/// ```
/// use impcache::RedisSentinelCacheRepository;
///
/// let repository = RedisSentinelCacheRepository::builder(
///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"],
///     "mymaster",
/// )
/// .db(2)
/// .build()?;
/// # Ok::<(), impcache::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisSentinelCacheRepository {
    inner: Arc<Inner>,
}

struct Inner {
    sentinel: tokio::sync::Mutex<Sentinel>,
    service_name: String,
    node_info: SentinelNodeConnectionInfo,
    /// The primary in use, and whether an error since asked for a new lookup.
    state: RwLock<State>,
    deadline: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    breaker: CircuitBreaker,
    shown_sentinels: Vec<String>,
    recheck_every: Option<Duration>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last lookup (or recheck).
    last_lookup_ms: AtomicU64,
}

#[derive(Default)]
struct State {
    primary: Option<Primary>,
    stale: bool,
}

#[derive(Clone)]
struct Primary {
    /// Bumped each time the Sentinels name another primary.
    generation: u64,
    address: String,
    repository: RedisCacheRepository,
}

/// Configures a [`RedisSentinelCacheRepository`].
#[must_use]
pub struct RedisSentinelCacheRepositoryBuilder {
    sentinels: Vec<String>,
    service_name: String,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    settings: Settings,
    recheck_every: Option<Duration>,
}

/// Default interval between background checks of which server Sentinel names as primary.
pub const DEFAULT_RECHECK_EVERY: Duration = Duration::from_secs(1);

impl fmt::Debug for RedisSentinelCacheRepositoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| redact_dsn(s)).collect();
        f.debug_struct("RedisSentinelCacheRepositoryBuilder")
            .field("sentinels", &sentinels)
            .field("service_name", &self.service_name)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("settings", &self.settings)
            .field("recheck_every", &self.recheck_every)
            .finish()
    }
}

impl fmt::Debug for RedisSentinelCacheRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let primary = self.current().map(|p| p.address);
        f.debug_struct("RedisSentinelCacheRepository")
            .field("sentinels", &self.inner.shown_sentinels)
            .field("service_name", &self.inner.service_name)
            .field("primary", &primary)
            .field("deadline", &self.inner.deadline)
            .field("circuit_open", &self.inner.breaker.is_open())
            .finish()
    }
}

impl RedisSentinelCacheRepository {
    /// A repository for the primary named `service_name` by the Sentinels at `sentinels`
    /// (`redis://host:26379`), with the default settings. Nothing is connected until the first
    /// operation.
    pub fn new<I, S>(sentinels: I, service_name: impl Into<String>) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(sentinels, service_name).build()
    }

    /// Configures a repository for the primary named `service_name` by the Sentinels at `sentinels`.
    pub fn builder<I, S>(
        sentinels: I,
        service_name: impl Into<String>,
    ) -> RedisSentinelCacheRepositoryBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisSentinelCacheRepositoryBuilder {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            service_name: service_name.into(),
            db: 0,
            username: None,
            password: None,
            settings: Settings::default(),
            recheck_every: Some(DEFAULT_RECHECK_EVERY),
        }
    }

    /// The per-operation deadline.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// `true` while the circuit breaker fails operations fast.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The address (`host:port`) of the primary in use, if one has been found yet.
    pub fn primary_address(&self) -> Option<String> {
        self.current().map(|p| p.address)
    }

    fn current(&self) -> Option<Primary> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .primary
            .clone()
    }

    /// The primary in use, unless an error asked for a new lookup.
    fn fresh(&self) -> Option<Primary> {
        let state = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if state.stale {
            return None;
        }
        state.primary.clone()
    }

    /// Asks for a Sentinel lookup before the next operation, unless one already replaced `generation`.
    fn mark_stale(&self, generation: u64) {
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if state
            .primary
            .as_ref()
            .is_some_and(|p| p.generation == generation)
        {
            state.stale = true;
        }
    }

    /// The primary to use: the current one, or the Sentinels' answer when there is none or an
    /// error made it stale. One lookup at a time; callers waiting meanwhile take its answer. When
    /// no Sentinel answers, the last known primary is used again.
    async fn primary(&self) -> redis::RedisResult<Primary> {
        if let Some(primary) = self.fresh() {
            return Ok(primary);
        }
        self.lookup(true).await
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Every `recheck_every`, asks the Sentinels again in a background task: a forced failover
    /// (`SENTINEL FAILOVER`) leaves the old primary writable for a while, so no error would tell.
    fn maybe_recheck(&self) {
        let Some(every) = self.inner.recheck_every else {
            return;
        };
        let now = self.now_ms();
        let last = self.inner.last_lookup_ms.load(Ordering::Relaxed);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every || self.current().is_none() {
            return;
        }
        if self
            .inner
            .last_lookup_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(this.inner.deadline, this.lookup(false)).await;
        });
    }

    /// Asks the Sentinels for the primary and switches to it when it changed. With `only_if_stale`,
    /// a lookup finished by another caller meanwhile is taken as is.
    async fn lookup(&self, only_if_stale: bool) -> redis::RedisResult<Primary> {
        let mut sentinel = self.inner.sentinel.lock().await;
        if only_if_stale {
            if let Some(primary) = self.fresh() {
                return Ok(primary);
            }
        }
        self.inner
            .last_lookup_ms
            .store(self.now_ms(), Ordering::Relaxed);
        let found = sentinel
            .async_master_for(&self.inner.service_name, Some(&self.inner.node_info))
            .await;
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let client = match (found, state.primary.as_ref()) {
            (Ok(client), _) => client,
            (Err(e), Some(last)) => {
                let last = last.clone();
                tracing::warn!(
                    service = %self.inner.service_name,
                    primary = %last.address,
                    error = %e,
                    "impcache: no Sentinel answered; keeping the last known primary"
                );
                state.stale = false;
                return Ok(last);
            }
            (Err(e), None) => return Err(e),
        };
        let address = client.get_connection_info().addr().to_string();
        let primary = match state.primary.as_ref() {
            Some(last) if last.address == address => last.clone(),
            last => {
                let generation = last.map_or(0, |p| p.generation + 1);
                if let Some(last) = last {
                    tracing::info!(
                        service = %self.inner.service_name,
                        from = %last.address,
                        to = %address,
                        "impcache: Sentinel names a new primary"
                    );
                }
                // Not a DSN: a client is always accepted.
                let repository = RedisCacheRepository::builder_with_client(client)
                    .deadline(self.inner.deadline)
                    .connect_timeout(self.inner.connect_timeout)
                    .max_value_bytes(self.inner.max_value_bytes)
                    .without_circuit_breaker()
                    .build()
                    .map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "cannot use the primary named by Sentinel",
                            e.to_string(),
                        ))
                    })?;
                Primary {
                    generation,
                    address,
                    repository,
                }
            }
        };
        state.primary = Some(primary.clone());
        state.stale = false;
        Ok(primary)
    }

    /// Runs `request` on the primary under the breaker, and under the deadline when `bounded`
    /// (`delete_pattern` bounds each of its round trips instead). Errors that say the primary
    /// moved ask for a new lookup; when nothing can have been applied, `request` runs once more.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        bounded: bool,
        request: F,
    ) -> Result<T>
    where
        F: Fn(RedisCacheRepository) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let admission = self.inner.breaker.admit();
        if admission == Admission::Rejected {
            return Err(Error::CircuitOpen {
                operation,
                key: subject(),
            });
        }
        let _probe = ProbeGuard {
            breaker: &self.inner.breaker,
            admission: &admission,
        };
        let deadline = self.inner.deadline;
        self.maybe_recheck();
        let attempt = async {
            let mut retried = false;
            loop {
                let primary = tokio::time::timeout(deadline, self.primary())
                    .await
                    .map_err(|_| Error::Timeout {
                        operation,
                        key: subject(),
                        deadline,
                    })?
                    .map_err(|e| lookup_error(e, operation, subject(), deadline))?;
                match request(primary.repository.clone()).await {
                    Err(e) if primary_moved(&e) => {
                        self.mark_stale(primary.generation);
                        if !retried && nothing_applied(&e) {
                            retried = true;
                            continue;
                        }
                        return Err(e);
                    }
                    other => return other,
                }
            }
        };
        let outcome = if bounded {
            match tokio::time::timeout(deadline, attempt).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(Error::Timeout {
                    operation,
                    key: subject(),
                    deadline,
                }),
            }
        } else {
            attempt.await
        };
        match &outcome {
            Err(e) if e.is_outage() || is_readonly(e) => {
                self.inner.breaker.record_failure(&admission)
            }
            _ => self.inner.breaker.record_success(),
        }
        outcome
    }
}

fn is_readonly(e: &Error) -> bool {
    matches!(e, Error::Server { code: Some(code), .. } if code == "READONLY")
}

/// The primary is gone, silent, or now a replica: ask Sentinel again.
fn primary_moved(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. } | Error::Timeout { .. }) || is_readonly(e)
}

/// The request certainly did not reach a primary: a `READONLY` refusal or a refused connection.
fn nothing_applied(e: &Error) -> bool {
    match e {
        Error::Unavailable { source, .. } => source
            .downcast_ref::<redis::RedisError>()
            .is_some_and(redis::RedisError::is_connection_refusal),
        _ => is_readonly(e),
    }
}

fn lookup_error(
    e: redis::RedisError,
    operation: &'static str,
    key: String,
    deadline: Duration,
) -> Error {
    if e.is_timeout() {
        Error::Timeout {
            operation,
            key,
            deadline,
        }
    } else {
        Error::Unavailable {
            operation,
            key,
            source: Box::new(e) as BoxError,
        }
    }
}

impl CacheRepository for RedisSentinelCacheRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.run("set", &|| shown(key), true, move |r| {
                let value = value.clone();
                async move { r.set(key, value, expiry).await }
            })
            .await
        })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.run("set_nx", &|| shown(key), true, move |r| {
                let value = value.clone();
                async move { r.set_nx(key, value, expiry).await }
            })
            .await
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let keys = || {
                let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
                shown_many(&keys)
            };
            self.run("set_many", &keys, true, move |r| async move {
                r.set_many(entries, expiry).await
            })
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            self.run("get", &|| shown(key), true, move |r| async move {
                r.get(key).await
            })
            .await
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(async move {
            self.run(
                "get_many",
                &|| shown_many(keys),
                true,
                move |r| async move { r.get_many(keys).await },
            )
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run("delete", &|| shown(key), true, move |r| async move {
                r.delete(key).await
            })
            .await
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run(
                "delete_many",
                &|| shown_many(keys),
                true,
                move |r| async move { r.delete_many(keys).await },
            )
            .await
        })
    }

    /// As [`RedisCacheRepository`]'s: the deadline bounds each round trip of the sweep.
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run(
                "delete_pattern",
                &|| shown(pattern),
                false,
                move |r| async move { r.delete_pattern(pattern).await },
            )
            .await
        })
    }
}

impl RedisSentinelCacheRepositoryBuilder {
    /// The database on the primary. Default 0.
    pub fn db(mut self, db: u16) -> Self {
        self.db = i64::from(db);
        self
    }

    /// The username for the primary (the Sentinels' own credentials go in their URLs).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password for the primary (the Sentinels' own credentials go in their URLs).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    shared_setters!();

    /// How often a background task asks the Sentinels whether the primary changed, so that a
    /// failover that leaves the old primary answering (`SENTINEL FAILOVER`) is noticed within
    /// this interval. Default 1 s; `None` only looks up again after errors.
    pub fn recheck_every(mut self, every: Option<Duration>) -> Self {
        self.recheck_every = every;
        self
    }

    /// Checks the Sentinel addresses and builds the repository; nothing is connected yet.
    pub fn build(self) -> Result<RedisSentinelCacheRepository> {
        let shown_sentinels: Vec<String> = self.sentinels.iter().map(|s| redact_dsn(s)).collect();
        let invalid = |dsn: String, reason: String| Error::InvalidDsn { dsn, reason };
        if self.sentinels.is_empty() {
            return Err(invalid(
                String::new(),
                "no Sentinel address given".to_owned(),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid(
                shown_sentinels.join(", "),
                "the service (master) name is empty".to_owned(),
            ));
        }
        let mut infos = Vec::with_capacity(self.sentinels.len());
        for (sentinel, shown) in self.sentinels.iter().zip(&shown_sentinels) {
            let url = url::Url::parse(sentinel).map_err(|e| {
                invalid(
                    shown.clone(),
                    format!("not a URL ({e}); expected redis://host:26379 for each Sentinel"),
                )
            })?;
            if !matches!(url.scheme(), "redis" | "rediss")
                || url.host_str().is_none_or(str::is_empty)
            {
                return Err(invalid(
                    shown.clone(),
                    "expected redis://host:port (or rediss://) for each Sentinel".to_owned(),
                ));
            }
            let info = redis::IntoConnectionInfo::into_connection_info(sentinel.as_str())
                .map_err(|e| invalid(shown.clone(), scrub(&e.to_string(), &url)))?;
            let tcp = info.tcp_settings().clone().set_nodelay(true);
            infos.push(info.set_tcp_settings(tcp));
        }
        let sentinel = Sentinel::build(infos)
            .map_err(|e| invalid(shown_sentinels.join(", "), e.to_string()))?;
        let mut redis_info = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let node_info = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(redis_info)
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        Ok(RedisSentinelCacheRepository {
            inner: Arc::new(Inner {
                sentinel: tokio::sync::Mutex::new(sentinel),
                service_name: self.service_name,
                node_info,
                state: RwLock::new(State::default()),
                deadline: self.settings.deadline,
                connect_timeout: self.settings.connect_timeout,
                max_value_bytes: self.settings.max_value_bytes,
                breaker: CircuitBreaker::new(self.settings.breaker),
                shown_sentinels,
                recheck_every: self.recheck_every,
                epoch: Instant::now(),
                last_lookup_ms: AtomicU64::new(0),
            }),
        })
    }
}

/// Removes the password from a message, in case a library echoed it.
fn scrub(message: &str, url: &url::Url) -> String {
    match url.password() {
        Some(password) if !password.is_empty() => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses_are_checked() -> Result<()> {
        for bad in ["", "http://h:1", "unix:///tmp/s.sock", "redis://"] {
            let err = RedisSentinelCacheRepository::new([bad], "mymaster").unwrap_err();
            assert!(matches!(err, Error::InvalidDsn { .. }), "{bad}: {err}");
        }
        assert!(RedisSentinelCacheRepository::new(Vec::<String>::new(), "m").is_err());
        assert!(RedisSentinelCacheRepository::new(["redis://h:26379"], " ").is_err());
        let repository = RedisSentinelCacheRepository::builder(["redis://:s3cret@h:26379"], "m")
            .password("p4ss")
            .build()?;
        let shown = format!("{repository:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p4ss"),
            "{shown}"
        );
        Ok(())
    }
}
