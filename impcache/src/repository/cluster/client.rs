//! The cluster client's own connection (topology discovery, `MOVED`/`ASK` routing) and the call
//! through it: the call policy's hooks for the client (its breaker, reset after repeated
//! failures).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use redis::cluster_async::ClusterConnection;
use redis::RedisError;

use super::{Inner, RedisClusterCacheRepository};
use crate::error::Result;
use crate::repository::call::{
    self, current_runtime, Attempt, Call, Limits, Opened, Target, Unanswered,
};
use crate::repository::failure::{Failed, Failure};

/// Consecutive outage errors after which the cluster connection is replaced by a fresh one (new
/// topology discovery from the configured nodes): the client can stay stuck after a failover.
const RESET_AFTER_FAILURES: u32 = 3;

impl RedisClusterCacheRepository {
    pub(super) fn current(&self) -> Option<(u64, ClusterConnection, Option<tokio::runtime::Id>)> {
        current(&self.inner)
    }

    /// The cluster connection, made (topology discovered) on first use and after a reset, in a
    /// task of its own ([`call::open_in_background`]): discovery asks every configured node, and
    /// with one frozen it takes about 500 ms, as long as the default deadline. Cut short by each
    /// call, it never ended, and every key routed through the client (a redirected one) failed
    /// while a node it does not live on was frozen.
    /// With `own_runtime` (a second attempt), a connection of this call's runtime, replacing
    /// another runtime's (which may have ended, or be ending: parallel tests end about together).
    pub(super) async fn connection(
        &self,
        own_runtime: bool,
    ) -> redis::RedisResult<Opened<ClusterConnection>> {
        let opened = |(generation, handle, runtime)| Opened {
            generation,
            runtime,
            handle,
        };
        let here = own_runtime.then(current_runtime);
        if let Some(current) = self
            .current()
            .filter(|(.., runtime)| usable(here, *runtime))
        {
            return Ok(opened(current));
        }
        call::open_in_background(connect(Arc::clone(&self.inner), here))
            .await
            .map(opened)
    }

    /// Drops the cluster connection `generation` if it is still the current one; `true` if it
    /// was. The next operation connects afresh.
    pub(super) fn drop_connection(&self, generation: u64) -> bool {
        let mut slot = self
            .inner
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|(g, ..)| *g == generation) {
            *slot = None;
            return true;
        }
        false
    }

    /// Counts an outage; after a few in a row, drops the connection `generation` so that the
    /// next operation connects afresh.
    pub(super) fn record_outage(&self, generation: Option<u64>) {
        let failures = self
            .inner
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        // A node may be gone or replaced.
        self.refresh_soon();
        let Some(generation) = generation else { return };
        if failures >= RESET_AFTER_FAILURES && self.drop_connection(generation) {
            self.inner.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::info!(
                failures,
                "impcache: replacing the cluster connection after repeated failures"
            );
        }
    }

    /// Runs `request` on the cluster connection, giving up at `until`, under the client's breaker
    /// (the call policy, [`call::call`], with the hooks below): for keys the slot map cannot
    /// place (the client's routing follows redirections).
    pub(super) async fn run_until<T, F, Fut>(
        &self,
        until: Instant,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: F,
    ) -> Result<T>
    where
        F: Fn(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let call = Call::new(operation, subject);
        call::call(self, call, Some(until.into()), request)
            .await
            .map_err(Failed::into_error)
    }
}

/// The current cluster connection of `inner`, if any.
fn current(inner: &Inner) -> Option<(u64, ClusterConnection, Option<tokio::runtime::Id>)> {
    inner
        .connection
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Whether a connection opened on `runtime` will do for a call that needs one of runtime
/// `here` (`None`: any will do).
fn usable(here: Option<Option<tokio::runtime::Id>>, runtime: Option<tokio::runtime::Id>) -> bool {
    here.is_none_or(|here| here == runtime)
}

/// Makes the cluster connection of `inner` unless another connect made it meanwhile (one
/// connect at a time; one of runtime `here` when that is given), and keeps it as the current
/// one.
async fn connect(
    inner: Arc<Inner>,
    here: Option<Option<tokio::runtime::Id>>,
) -> redis::RedisResult<(u64, ClusterConnection, Option<tokio::runtime::Id>)> {
    let _connecting = inner.connecting.lock().await;
    if let Some(current) = current(&inner).filter(|(.., runtime)| usable(here, *runtime)) {
        return Ok(current);
    }
    let connection = inner.client.get_async_connection().await?;
    // From 1: the call policy reads 0 as "no connection".
    let generation = inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
    let current = (generation, connection, current_runtime());
    *inner
        .connection
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
    Ok(current)
}

/// The cluster client's hooks of the call policy: an outage counts towards replacing the cluster
/// connection (after [`RESET_AFTER_FAILURES`] in a row) and has the slot map learned again soon.
/// When the connection's driver ended with the runtime that opened it (a `static` cache used
/// from several runtimes), the connection is replaced and the request runs once more, within the
/// same deadline: nothing was sent.
impl Target for RedisClusterCacheRepository {
    type Handle = ClusterConnection;
    type Error = RedisError;

    fn limits(&self) -> Limits<'_> {
        Limits {
            breaker: &self.inner.client_breaker,
            deadline: self.inner.deadline,
            connect_timeout: Some(self.inner.connect_timeout),
        }
    }

    /// A second attempt runs on a connection of the call's own runtime.
    async fn open(
        &self,
        _call: &Call<'_>,
        again: bool,
    ) -> redis::RedisResult<Opened<ClusterConnection>> {
        self.connection(again).await
    }

    fn retry(&self, attempt: &Attempt<'_>, _call: &Call<'_>) -> bool {
        let retry = !attempt.retried && attempt.driver_gone;
        if retry {
            self.drop_connection(attempt.generation);
        }
        retry
    }

    fn succeeded(&self) {
        self.inner.consecutive_failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, generation: Option<u64>, failure: Failure) {
        if failure.is_outage() {
            self.record_outage(generation);
        }
    }

    fn unanswered(&self) -> Option<&Unanswered> {
        Some(&self.inner.client_unanswered)
    }
}
