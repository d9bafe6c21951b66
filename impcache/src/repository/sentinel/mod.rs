//! The Sentinel repository (feature `sentinel`): asks Redis Sentinel where the primary is, talks
//! to it through a [`RedisCacheRepository`], follows the Sentinels' failover announcements (their
//! pub/sub), and asks again when the primary stops answering or turns out to be a replica.
//!
//! One file per job: this one (the repository, its builder, its operations), `resolve.rs`
//! (finding the primary; the call policy's hooks), `announcements.rs` (following failovers).

mod announcements;
mod resolve;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionInfo, RedisConnectionInfo};

use super::breaker::CircuitBreaker;
use super::call::{self, Call, Unanswered};
use super::dsn;
use super::failure::Failed;
use super::redis::RedisCacheRepository;
use super::settings::{shared_setters, Settings};
use super::switches::{SwitchListener, SwitchListeners};
use super::{BoxFuture, CacheRepository, SetNxOrGet, TagInvalidation, WithTtl};
use crate::error::{shown, shown_many, Error, Result};
use crate::expire::Expiry;
use crate::progress::{DeleteProgress, Sweep};

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
    /// A call its caller abandoned, counted as an outage once its deadline has passed (see
    /// [`Unanswered`]; the primary's repository counts it against its connection).
    unanswered: Unanswered,
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
    /// Told of each switch to another primary (near caches): see [`SwitchListener`].
    switch_listeners: SwitchListeners,
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
        S: AsRef<str>,
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
        S: AsRef<str>,
    {
        RedisSentinelCacheRepositoryBuilder {
            sentinels: sentinels
                .into_iter()
                .map(|dsn| dsn.as_ref().to_owned())
                .collect(),
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
        let call = Call::new(operation, subject);
        let until = bounded.then(|| tokio::time::Instant::now() + self.inner.deadline);
        call::call(self, call, until, request)
            .await
            .map_err(Failed::into_error)
    }
}

impl CacheRepository for RedisSentinelCacheRepository {
    /// Itself: a near cache finds the servers to track through it (issue 14).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

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

    /// As [`RedisCacheRepository`]'s, on the primary (whose repository remembers a refusal of
    /// `SET .. NX GET`; a new primary is asked again).
    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        Box::pin(async move {
            self.run("set_nx", &|| shown(key), true, move |r| {
                let value = value.clone();
                async move { r.set_nx_or_get_direct(key, value, expiry).await }
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

    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<WithTtl>>> {
        Box::pin(async move {
            self.run("get", &|| shown(key), true, move |r| async move {
                r.get_with_ttl_direct(key).await
            })
            .await
        })
    }

    fn delete_if_equal<'a>(&'a self, key: &'a str, expected: Bytes) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.run("delete", &|| shown(key), true, move |r| {
                let expected = expected.clone();
                async move { r.delete_if_equal_direct(key, &expected).await }
            })
            .await
        })
    }

    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.run("set_nx", &|| shown(key), true, move |r| {
                let (expected, value) = (expected.clone(), value.clone());
                async move { r.set_if_equal_direct(key, &expected, value, expiry).await }
            })
            .await
        })
    }

    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a str,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.run("set", &|| shown(key), true, move |r| async move {
                r.add_member_direct(key, member, expiry).await
            })
            .await
        })
    }

    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: TagInvalidation,
        at: Bytes,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.run("set", &|| shown(key), true, move |r| {
                let at = at.clone();
                async move { r.mark_tags_direct(&[key], kind, &at).await }
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

    fn get_many_with_ttl<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> Option<BoxFuture<'a, Result<Vec<Option<WithTtl>>>>> {
        Some(Box::pin(async move {
            self.run(
                "get_many",
                &|| shown_many(keys),
                true,
                move |r| async move { r.get_many_with_ttl_direct(keys).await },
            )
            .await
        }))
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
            self.delete_pattern_with_progress(pattern, &mut |_| {})
                .await
        })
    }

    /// As [`RedisCacheRepository`]'s; a sweep sent again to a new primary adds to the same count.
    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sweep = &Sweep::new(progress);
            self.run(
                "delete_pattern",
                &|| shown(pattern),
                false,
                move |r| async move { r.delete_pattern_direct(pattern, sweep).await },
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

    /// The username for the primary (the Sentinels' own credentials go in their URLs); without a
    /// [password](Self::password) it logs in with the empty one, as redis-py does.
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
    /// this interval. Calls start the check, and so does a near cache following the repository,
    /// whose local hits call nothing. Default 1 s; `None` only looks up again after errors.
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
        self.settings.check(|| shown_sentinels.join(", "))?;
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
        let redis_info = dsn::log_in_as_named_user(redis_info);
        let node_info =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info.clone());
        let breaker_target = format!("{} via {}", self.service_name, shown_sentinels.join(","));
        Ok(RedisSentinelCacheRepository {
            inner: Arc::new(Inner {
                sentinel: tokio::sync::Mutex::new(sentinel),
                service_name: self.service_name,
                node_info,
                state: RwLock::new(State::default()),
                deadline: self.settings.deadline,
                connect_timeout: self.settings.connect_timeout,
                max_value_bytes: self.settings.max_value_bytes,
                breaker: CircuitBreaker::new(self.settings.breaker, "sentinel", breaker_target),
                unanswered: Unanswered::default(),
                shown_sentinels,
                recheck_every: self.recheck_every,
                epoch: Instant::now(),
                last_lookup_ms: AtomicU64::new(0),
                sentinel_infos,
                node_redis: redis_info,
                follow_announcements: self.follow_announcements,
                watching: Arc::new(AtomicBool::new(false)),
                watcher: Mutex::new(None),
                switch_listeners: SwitchListeners::default(),
            }),
        })
    }
}

// --- Near cache (issue 14). ---

impl RedisSentinelCacheRepository {
    /// The primary's connection settings now (asking Sentinel when none is known): where a near
    /// cache's tracking connection goes; a change of it flushes the near cache.
    pub(crate) async fn current_primary(&self) -> Option<ConnectionInfo> {
        let primary = tokio::time::timeout(self.inner.deadline, self.primary()).await;
        Some(primary.ok()?.ok()?.repository.connection_info())
    }

    /// Tells `listener` of every switch to another primary from now on, while it lives
    /// ([`SwitchListener`]).
    pub(crate) fn on_switch(&self, listener: Weak<dyn SwitchListener>) {
        self.inner.switch_listeners.add(listener);
    }

    /// Tells the listeners that the repository switched to another primary (its state locked by
    /// the caller).
    fn switched(&self) {
        self.inner.switch_listeners.switched();
    }
}
