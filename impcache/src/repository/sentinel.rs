//! The Sentinel repository (feature `sentinel`): asks Redis Sentinel where the primary is, talks
//! to it through a [`RedisCacheRepository`], follows the Sentinels' failover announcements (their
//! pub/sub), and asks again when the primary stops answering or turns out to be a replica.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionInfo, RedisConnectionInfo};

use super::breaker::CircuitBreaker;
use super::call::{self, Attempt, Call, Opened, Target};
use super::dsn;
use super::failure::{Failed, Failure, Waited};
use super::redis::RedisCacheRepository;
use super::settings::{shared_setters, Settings};
use super::{BoxFuture, CacheRepository};
use crate::error::{shown, shown_many, Error, Result};
use crate::expire::Expiry;

/// A Redis primary found through Sentinel (feature `sentinel`).
///
/// - **Lazy**: construction checks the Sentinel addresses; the first operation asks the Sentinels
///   (`SENTINEL MASTERS`, in the order given) for `service_name`'s primary, checks that it is one,
///   and connects to it.
/// - **Follows failovers**: a background task subscribes to a Sentinel's announcements
///   (`+failover-state-wait-promotion`, when Sentinel promotes a replica, and `+switch-master`)
///   and switches to the new primary as soon as it is one, so writes stop going to the old
///   primary, whose writes from then on are lost (see
///   [`follow_announcements`](RedisSentinelCacheRepositoryBuilder::follow_announcements)).
///   When the primary is unreachable, times out, or answers `READONLY` (it was demoted to a
///   replica), the next operation asks the Sentinels again. An operation that failed with
///   `READONLY` or a refused connection (so nothing was applied) is retried once on the new
///   primary, within the same deadline; others fail and the next call uses the new primary. A
///   background check every [`recheck_every`](RedisSentinelCacheRepositoryBuilder::recheck_every)
///   (1 s) also catches a failover whose announcement was missed.
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
    /// The Sentinels' addresses, for the task that follows their announcements.
    sentinel_infos: Vec<ConnectionInfo>,
    /// How to connect to a primary a Sentinel announces (database, credentials, TCP settings).
    node_redis: RedisConnectionInfo,
    follow_announcements: bool,
    /// `true` while the task following the announcements runs (it clears it when it ends, so that
    /// the next operation starts another, for example after the runtime that ran it shut down).
    watching: Arc<AtomicBool>,
    /// Stops that task when the repository is dropped.
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
    }
}

#[derive(Default)]
struct State {
    primary: Option<Primary>,
    stale: bool,
    /// Until then, a lookup naming another server does not replace `primary`, which a Sentinel
    /// announced: the Sentinel asked may not know of the failover yet, and the old primary stays
    /// writable for a while (what it acknowledges then is lost).
    announced_until: Option<Instant>,
}

impl State {
    /// The primary a Sentinel announced, while that announcement outranks lookups.
    fn announced(&self) -> Option<&Primary> {
        let until = self.announced_until?;
        (Instant::now() < until).then_some(self.primary.as_ref()?)
    }
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
    follow_announcements: bool,
}

/// Default interval between background checks of which server Sentinel names as primary.
pub const DEFAULT_RECHECK_EVERY: Duration = Duration::from_secs(1);

impl fmt::Debug for RedisSentinelCacheRepositoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| dsn::redact(s)).collect();
        f.debug_struct("RedisSentinelCacheRepositoryBuilder")
            .field("sentinels", &sentinels)
            .field("service_name", &self.service_name)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("settings", &self.settings)
            .field("recheck_every", &self.recheck_every)
            .field("follow_announcements", &self.follow_announcements)
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
            follow_announcements: true,
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

    /// Asks for a Sentinel lookup before the next operation, unless one already replaced
    /// `generation`. With `demoted` (it answered `READONLY`), an announcement that named it no
    /// longer outranks the lookup.
    fn mark_stale(&self, generation: u64, demoted: bool) {
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
            if demoted {
                state.announced_until = None;
            }
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
        if let Some(announced) = state.announced() {
            if announced.address != address {
                tracing::debug!(
                    service = %self.inner.service_name,
                    named = %address,
                    announced = %announced.address,
                    "impcache: a Sentinel still names the old primary; keeping the announced one"
                );
                let announced = announced.clone();
                state.stale = false;
                return Ok(announced);
            }
        }
        let primary = self.adopt(&mut state, client, address, "Sentinel names a new primary")?;
        state.stale = false;
        Ok(primary)
    }

    /// Makes `client` (at `address`) the primary in use, unless it already is.
    fn adopt(
        &self,
        state: &mut State,
        client: redis::Client,
        address: String,
        why: &'static str,
    ) -> redis::RedisResult<Primary> {
        if let Some(last) = state.primary.as_ref().filter(|p| p.address == address) {
            return Ok(last.clone());
        }
        let last = state.primary.as_ref();
        // From 1: the call policy reads 0 as "no primary".
        let generation = last.map_or(1, |p| p.generation + 1);
        if let Some(last) = last {
            tracing::info!(
                service = %self.inner.service_name,
                from = %last.address,
                to = %address,
                "impcache: {why}"
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
        let primary = Primary {
            generation,
            address,
            repository,
        };
        state.primary = Some(primary.clone());
        Ok(primary)
    }

    /// Starts the task that follows the Sentinels' announcements, unless it runs (or is off).
    fn ensure_watching(&self) {
        if !self.inner.follow_announcements
            || self.inner.watching.load(Ordering::Relaxed)
            || self.inner.watching.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let running = Running(self.inner.watching.clone());
        let task = tokio::spawn(watch(Arc::downgrade(&self.inner), running));
        let mut watcher = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *watcher = Some(task.abort_handle());
    }

    /// Acts on a Sentinel announcement: when it names a new primary of this service, switches to
    /// it as soon as it answers as a primary.
    async fn on_announcement(&self, channel: &str, payload: &str) {
        let words: Vec<&str> = payload.split_whitespace().collect();
        let service = self.inner.service_name.as_str();
        let (host, port) = match (channel, words.as_slice()) {
            // `<name> <old ip> <old port> <new ip> <new port>`
            (SWITCH_MASTER, [name, _, _, host, port]) if *name == service => (*host, *port),
            // `slave <ip>:<port> <ip> <port> @ <name> <primary ip> <primary port>`
            (WAIT_PROMOTION, [_, _, host, port, "@", name, ..]) if *name == service => {
                (*host, *port)
            }
            _ => return,
        };
        let Ok(port) = port.parse::<u16>() else {
            return;
        };
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            host.to_owned(),
            port,
        ))
        .map(|info| info.set_redis_settings(self.inner.node_redis.clone()));
        let Ok(client) = info.and_then(redis::Client::open) else {
            return;
        };
        let address = client.get_connection_info().addr().to_string();
        if self.current().is_some_and(|p| p.address == address) {
            self.renew_announcement(&address);
            return;
        }
        // `SLAVEOF NO ONE` reaches the promoted replica as the announcement reaches us.
        let give_up = Instant::now() + PROMOTION_WAIT;
        while !self.answers_as_primary(&client).await {
            if Instant::now() >= give_up {
                tracing::warn!(
                    service = %self.inner.service_name,
                    announced = %address,
                    "impcache: a Sentinel announced a new primary that does not answer as one"
                );
                return;
            }
            tokio::time::sleep(PROMOTION_POLL).await;
        }
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match self.adopt(
            &mut state,
            client,
            address,
            "Sentinel announces a new primary",
        ) {
            Ok(_) => {
                state.stale = false;
                state.announced_until = Some(Instant::now() + ANNOUNCEMENT_OUTRANKS_LOOKUPS);
            }
            Err(e) => tracing::warn!(
                service = %self.inner.service_name,
                error = %e,
                "impcache: cannot use the primary a Sentinel announced"
            ),
        }
    }

    /// Renews the announcement of the primary in use at `address`.
    fn renew_announcement(&self, address: &str) {
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if state.primary.as_ref().is_some_and(|p| p.address == address) {
            state.announced_until = Some(Instant::now() + ANNOUNCEMENT_OUTRANKS_LOOKUPS);
        }
    }

    /// `true` when the server of `client` answers `ROLE` as a primary within the deadline.
    async fn answers_as_primary(&self, client: &redis::Client) -> bool {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(self.inner.deadline));
        let role = async {
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("ROLE")
                .query_async::<redis::Role>(&mut connection)
                .await
        };
        matches!(
            tokio::time::timeout(self.inner.deadline, role).await,
            Ok(Ok(redis::Role::Primary { .. }))
        )
    }

    /// Runs `request` on the primary under the call policy ([`call::call`], with the hooks
    /// below), and under the deadline when `bounded` (`delete_pattern` bounds each of its round
    /// trips instead).
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        bounded: bool,
        request: F,
    ) -> Result<T>
    where
        F: Fn(RedisCacheRepository) -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let call = Call {
            operation,
            subject,
            idempotent: false,
        };
        let until = bounded.then(|| tokio::time::Instant::now() + self.inner.deadline);
        Ok(call::call(self, call, until, request).await?)
    }
}

/// The Sentinel's hooks of the call policy: an attempt goes to the primary the Sentinels name
/// (asking them when there is none yet, or when an error made it stale). Errors that say the
/// primary moved (it is gone, silent, or answers `READONLY`, being a replica now) ask for a new
/// lookup and count towards the breaker; when nothing can have been applied (`READONLY`, a
/// refused connection), the request runs once more, on the new primary.
impl Target for RedisSentinelCacheRepository {
    type Handle = RedisCacheRepository;
    type Error = Failed;

    fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    fn connect_timeout(&self) -> Option<Duration> {
        Some(self.inner.connect_timeout)
    }

    async fn open(&self, call: &Call<'_>) -> Result<Opened<RedisCacheRepository>, Failed> {
        self.ensure_watching();
        self.maybe_recheck();
        let deadline = self.inner.deadline;
        let asked = Instant::now();
        let primary = tokio::time::timeout(deadline, self.primary())
            .await
            .map_err(|_elapsed| call.timeout(deadline))?
            .map_err(|e| {
                // The Sentinel connections run on the `redis` crate's default timeouts.
                let waited = Waited {
                    waited: asked.elapsed(),
                    deadline,
                    connect_timeout: None,
                };
                Failed::lookup(e, call.operation, (call.subject)(), waited)
            })?;
        Ok(Opened {
            generation: primary.generation,
            runtime: None,
            handle: primary.repository,
        })
    }

    fn retry(&self, attempt: &Attempt<'_>, _call: &Call<'_>) -> bool {
        let failure = attempt.failure.kind;
        if !self.is_outage(failure) {
            return false;
        }
        self.mark_stale(attempt.generation, failure == Failure::ReadOnly);
        !attempt.retried && matches!(failure, Failure::ReadOnly | Failure::Refused)
    }

    fn is_outage(&self, failure: Failure) -> bool {
        failure.is_outage() || failure == Failure::ReadOnly
    }
}

impl CacheRepository for RedisSentinelCacheRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.run("set", &|| shown(key), true, move |r| {
                let value = value.clone();
                async move { r.set_direct(key, value, expiry).await }
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
                async move { r.set_nx_direct(key, value, expiry).await }
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
                r.set_many_direct(entries, expiry).await
            })
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            self.run("get", &|| shown(key), true, move |r| async move {
                r.get_direct(key).await
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
                move |r| async move { r.get_many_direct(keys).await },
            )
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run("delete", &|| shown(key), true, move |r| async move {
                r.delete_direct(key).await
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
                move |r| async move { r.delete_many_direct(keys).await },
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
                move |r| async move { r.delete_pattern_direct(pattern).await },
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

    /// Whether a background task follows the Sentinels' announcements (their pub/sub: one
    /// connection to one Sentinel at a time, in RESP3, so Sentinel 6 or later), switching to a new
    /// primary as soon as Sentinel promotes it (`+failover-state-wait-promotion`, then
    /// `+switch-master`). Default `true`. Without it a forced failover (`SENTINEL FAILOVER`) is
    /// only noticed by the [periodic check](Self::recheck_every), and every write the old primary
    /// acknowledges until then is lost. The task starts with the first operation and ends when
    /// the repository is dropped.
    pub fn follow_announcements(mut self, follow: bool) -> Self {
        self.follow_announcements = follow;
        self
    }

    /// Checks the Sentinel addresses and builds the repository; nothing is connected yet.
    pub fn build(self) -> Result<RedisSentinelCacheRepository> {
        let shown_sentinels: Vec<String> = self.sentinels.iter().map(|s| dsn::redact(s)).collect();
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
        let infos = self
            .sentinels
            .iter()
            .map(|sentinel| dsn::sentinel(sentinel))
            .collect::<Result<Vec<_>>>()?;
        let sentinel_infos = infos
            .iter()
            .map(|info| {
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                info.clone().set_redis_settings(resp3)
            })
            .collect();
        let sentinel = Sentinel::build(infos).map_err(|e| {
            invalid(
                shown_sentinels.join(", "),
                dsn::scrub(&e.to_string(), &self.sentinels),
            )
        })?;
        let mut redis_info = RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let node_info =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info.clone());
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
                sentinel_infos,
                node_redis: redis_info,
                follow_announcements: self.follow_announcements,
                watching: Arc::new(AtomicBool::new(false)),
                watcher: Mutex::new(None),
            }),
        })
    }
}

/// Sentinel's announcement that it made another server the primary.
const SWITCH_MASTER: &str = "+switch-master";
/// Sentinel's announcement that it sent `SLAVEOF NO ONE` to the replica it promotes: from then
/// on, what the old primary acknowledges is lost.
const WAIT_PROMOTION: &str = "+failover-state-wait-promotion";
/// How long an announced replica may take to answer as a primary before the announcement is
/// left to `+switch-master` and the periodic check.
const PROMOTION_WAIT: Duration = Duration::from_secs(2);
/// How often an announced replica is asked whether it is a primary yet.
const PROMOTION_POLL: Duration = Duration::from_millis(5);
/// How long an announced primary outranks the Sentinels' answers to lookups: Sentinels learn of a
/// failover from each other within a few seconds (hello messages every 2 s).
const ANNOUNCEMENT_OUTRANKS_LOOKUPS: Duration = Duration::from_secs(5);
/// How often the subscribed Sentinel is pinged, to notice one that stopped answering.
const SENTINEL_PING_EVERY: Duration = Duration::from_secs(1);
/// The pause after no Sentinel could be subscribed to, before trying them all again.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// Clears the repository's `watching` flag when the task that follows announcements ends, or is
/// dropped with its runtime.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Follows the announcements of one Sentinel at a time, moving to the next one when it fails,
/// until the repository is dropped.
async fn watch(inner: Weak<Inner>, _running: Running) {
    let Some(sentinels) = inner.upgrade().map(|i| i.sentinel_infos.clone()) else {
        return;
    };
    let mut next = 0;
    let mut failed_in_a_row = 0;
    let mut followed_before = false;
    loop {
        let Some(info) = sentinels.get(next % sentinels.len().max(1)) else {
            return;
        };
        next += 1;
        match subscribe(&inner, info).await {
            Some((connection, pushes)) => {
                failed_in_a_row = 0;
                // An announcement may have been missed while no Sentinel was followed.
                if followed_before {
                    if let Some(inner) = inner.upgrade() {
                        let repository = RedisSentinelCacheRepository { inner };
                        let deadline = repository.inner.deadline;
                        let _ = tokio::time::timeout(deadline, repository.lookup(false)).await;
                    }
                }
                followed_before = true;
                listen(&inner, connection, pushes).await;
            }
            None => failed_in_a_row += 1,
        }
        if inner.strong_count() == 0 {
            return;
        }
        if failed_in_a_row >= sentinels.len() {
            failed_in_a_row = 0;
            tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
        }
    }
}

type Pushes = tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>;

/// A RESP3 connection to the Sentinel at `info`, subscribed to the announcements followed.
async fn subscribe(
    inner: &Weak<Inner>,
    info: &ConnectionInfo,
) -> Option<(redis::aio::MultiplexedConnection, Pushes)> {
    let (connect_timeout, deadline, shown) = {
        let inner = inner.upgrade()?;
        (
            inner.connect_timeout,
            inner.deadline,
            inner.service_name.clone(),
        )
    };
    let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(deadline))
        .set_push_sender(sender);
    let subscribed = async {
        let client = redis::Client::open(info.clone())?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        connection
            .subscribe(&[SWITCH_MASTER, WAIT_PROMOTION])
            .await?;
        Ok::<_, redis::RedisError>(connection)
    };
    match tokio::time::timeout(connect_timeout + deadline, subscribed).await {
        Ok(Ok(connection)) => Some((connection, pushes)),
        Ok(Err(e)) => {
            tracing::debug!(service = %shown, sentinel = %info.addr(), error = %e,
                "impcache: cannot follow this Sentinel's announcements");
            None
        }
        Err(_elapsed) => {
            tracing::debug!(service = %shown, sentinel = %info.addr(),
                "impcache: timed out subscribing to this Sentinel's announcements");
            None
        }
    }
}

/// Acts on the announcements until the connection fails, the Sentinel stops answering `PING`,
/// or the repository is dropped.
async fn listen(
    inner: &Weak<Inner>,
    mut connection: redis::aio::MultiplexedConnection,
    mut pushes: Pushes,
) {
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return };
                if push.kind == redis::PushKind::Disconnection {
                    return;
                }
                let Some(message) = redis::Msg::from_push_info(push) else {
                    continue;
                };
                let Some(inner) = inner.upgrade() else { return };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                RedisSentinelCacheRepository { inner }
                    .on_announcement(message.get_channel_name(), &payload)
                    .await;
            }
            () = tokio::time::sleep(SENTINEL_PING_EVERY) => {
                let Some(deadline) = inner.upgrade().map(|i| i.deadline) else { return };
                let ping = redis::cmd("PING");
                let ping = ping.query_async::<()>(&mut connection);
                if !matches!(tokio::time::timeout(deadline, ping).await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}
