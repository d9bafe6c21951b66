//! The cluster client's own connection (topology discovery, `MOVED`/`ASK` routing) and the call
//! through it: deadline, the client's breaker, reset after repeated failures.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Instant;

use redis::cluster_async::ClusterConnection;

use super::RedisClusterCacheRepository;
use crate::error::{Error, Result};
use crate::repository::breaker::{Admission, ProbeGuard};
use crate::repository::commands::classify;
use crate::repository::redis::{current_runtime, lost_driver};

/// Consecutive outage errors after which the cluster connection is replaced by a fresh one (new
/// topology discovery from the configured nodes): the client can stay stuck after a failover.
const RESET_AFTER_FAILURES: u32 = 3;

impl RedisClusterCacheRepository {
    pub(super) fn current(&self) -> Option<(u64, ClusterConnection, Option<tokio::runtime::Id>)> {
        self.inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The cluster connection, made (topology discovered) on first use and after a reset.
    pub(super) async fn connection(
        &self,
    ) -> redis::RedisResult<(u64, ClusterConnection, Option<tokio::runtime::Id>)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let connection = self.inner.client.get_async_connection().await?;
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        let runtime = current_runtime();
        *self
            .inner
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((generation, connection.clone(), runtime));
        Ok((generation, connection, runtime))
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

    /// Runs `request` on the cluster connection under the deadline and the client's breaker.
    pub(super) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: F,
    ) -> Result<T>
    where
        F: Fn(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let until = Instant::now() + self.inner.deadline;
        self.run_until(until, operation, subject, request).await
    }

    /// Runs `request` on the cluster connection, giving up at `until`, under the client's breaker:
    /// for keys the slot map cannot place (the client's routing follows redirections). When the
    /// connection's driver ended with the runtime that opened it (a `static` cache used from
    /// several runtimes), the connection is replaced and `request` runs once more, within the
    /// same deadline: nothing was sent.
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
        let breaker = &self.inner.client_breaker;
        let admission = breaker.admit();
        if admission == Admission::Rejected {
            return Err(Error::CircuitOpen {
                operation,
                key: subject(),
            });
        }
        let _probe = ProbeGuard {
            breaker,
            admission: &admission,
        };
        let generation = std::sync::Mutex::new(None);
        let attempt = async {
            let mut retried = false;
            loop {
                let (g, connection, opened_on) = self.connection().await?;
                *generation.lock().unwrap_or_else(PoisonError::into_inner) = Some(g);
                match request(connection).await {
                    Err(e) if !retried && lost_driver(opened_on, &e) => {
                        self.drop_connection(g);
                        retried = true;
                    }
                    other => return other,
                }
            }
        };
        let outcome = tokio::time::timeout_at(until.into(), attempt).await;
        let generation = *generation.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(Ok(value)) => {
                breaker.record_success();
                self.inner.consecutive_failures.store(0, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(e)) => {
                let error = classify(e, operation, subject(), self.waited(until));
                if error.is_outage() {
                    breaker.record_failure(&admission);
                    self.record_outage(generation);
                } else {
                    breaker.record_success();
                }
                Err(error)
            }
            Err(_elapsed) => {
                breaker.record_failure(&admission);
                self.record_outage(generation);
                Err(Error::Timeout {
                    operation,
                    key: subject(),
                    deadline: self.inner.deadline,
                })
            }
        }
    }
}
