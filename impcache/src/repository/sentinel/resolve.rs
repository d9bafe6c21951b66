//! Finding the primary: the Sentinel lookup (one at a time, callers waiting meanwhile take its
//! answer), the periodic recheck, switching to a new primary, and the call policy's hooks that
//! send each attempt to the primary and ask again when it moved.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError};

use super::{Primary, RedisSentinelCacheRepository, State};
use crate::repository::call::{self, Attempt, Call, Limits, Opened, Target, Unanswered};
use crate::repository::failure::{Failed, Failure, Waited};
use crate::repository::redis::RedisCacheRepository;

impl RedisSentinelCacheRepository {
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
    ///
    /// The lookup runs in a task of its own ([`call::open_in_background`]): the `redis` crate
    /// asks the Sentinels at once but takes their answers in the configured order, so one that
    /// accepts connections and never answers holds the others' answers for about a second,
    /// longer than the default deadline. Cut short by each call, the lookup never ended and no
    /// call reached the primary.
    pub(super) async fn primary(&self) -> redis::RedisResult<Primary> {
        if let Some(primary) = self.fresh() {
            return Ok(primary);
        }
        let this = self.clone();
        call::open_in_background(async move { this.lookup(true).await }).await
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
        // Not cut short by the deadline either (see `primary`), but bounded.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(call::BACKGROUND_OPEN_LIMIT, this.lookup(false)).await;
        });
    }

    /// The periodic check for a caller other than an operation: a near cache's tracker, whose
    /// reads may all be local hits that never call the repository (so [`Self::maybe_recheck`],
    /// run by each operation, would never run and a missed announcement would go unnoticed).
    /// Runs the check when it is due, and returns how long until the next one is; `None`
    /// without `recheck_every`. A switch it finds tells the near cache as any other does
    /// (`on_switch`).
    pub(crate) fn recheck(&self) -> Option<Duration> {
        let every = self.inner.recheck_every?;
        self.maybe_recheck();
        let last = self.inner.last_lookup_ms.load(Ordering::Relaxed);
        let since = Duration::from_millis(self.now_ms().saturating_sub(last));
        Some(every.saturating_sub(since))
    }

    /// Asks the Sentinels for the primary and switches to it when it changed. With `only_if_stale`,
    /// a lookup finished by another caller meanwhile is taken as is.
    pub(super) async fn lookup(&self, only_if_stale: bool) -> redis::RedisResult<Primary> {
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

    /// A failed lookup in words that name the service and the Sentinels asked, where the `redis`
    /// crate's name neither (`Master with given name not found in sentinel`, `Address does not
    /// point to a sentinel node`: found by a probe); its kind is kept. Any other error as it is.
    fn explained(&self, e: RedisError) -> RedisError {
        let service = &self.inner.service_name;
        let sentinels = self
            .inner
            .shown_sentinels
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let detail = match e.kind() {
            ErrorKind::MasterNameNotFoundBySentinel => format!(
                "no primary named `{service}` is known and up at the Sentinels {sentinels} (a \
                 wrong service name, or the primary is down)"
            ),
            // The `redis` crate's words, matched as text: the one thing it keeps.
            ErrorKind::InvalidClientConfig
                if e.to_string().contains("does not point to a sentinel") =>
            {
                format!(
                    "a server given as a Sentinel ({sentinels}) is not one (a plain Redis \
                     server?), so the primary of `{service}` cannot be found"
                )
            }
            ErrorKind::InvalidClientConfig => {
                format!("{e}, asking the Sentinels {sentinels} for the primary of `{service}`")
            }
            _ => return e,
        };
        RedisError::from((e.kind(), "Sentinel lookup failed", detail))
    }

    /// Makes `client` (at `address`) the primary in use, unless it already is.
    pub(super) fn adopt(
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
        let switched = state.primary.replace(primary.clone()).is_some();
        // Before any operation can use the new primary (the caller holds the state's lock): a
        // near cache stops serving what the old primary's tracking connection vouched for.
        if switched {
            self.switched();
        }
        Ok(primary)
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

    fn limits(&self) -> Limits<'_> {
        Limits {
            breaker: &self.inner.breaker,
            deadline: self.inner.deadline,
            connect_timeout: Some(self.inner.connect_timeout),
        }
    }

    async fn open(
        &self,
        call: &Call<'_>,
        _again: bool,
    ) -> Result<Opened<RedisCacheRepository>, Failed> {
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
                let kind = Failure::of(&e, waited).or_outage();
                Failed::of(
                    kind,
                    self.explained(e),
                    call.operation,
                    (call.subject)(),
                    waited,
                )
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

    fn unanswered(&self) -> Option<&Unanswered> {
        Some(&self.inner.unanswered)
    }
}
