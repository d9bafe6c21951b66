//! One cluster node: its own breaker and direct connection, and the call on it under its breaker
//! and the operation's deadline.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ServerErrorKind};

use super::RedisClusterCacheRepository;
use crate::error::{Error, Result};
use crate::repository::breaker::{Admission, CircuitBreaker, ProbeGuard};
use crate::repository::commands::{classify, Waited};
use crate::repository::redis::{current_runtime, lost_driver};

/// One node as the repository sees it: its own circuit breaker and its own direct connection, so
/// that a fault on one node costs nothing for the keys of the others.
///
/// The direct connection is not the cluster client's: that one holds every request while it
/// refreshes its slot map (which asks the nodes one at a time, a frozen one until its timeout)
/// or reconnects, and it answers a redirection of any one command in a pipeline by resending the
/// whole pipeline, which would run the other commands twice.
pub(super) struct Node {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) breaker: CircuitBreaker,
    /// The direct connection and the tokio runtime that opened it (where its driver task runs).
    pub(super) connection: RwLock<Option<(MultiplexedConnection, Option<tokio::runtime::Id>)>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl RedisClusterCacheRepository {
    /// The node at `host:port`, met now or before.
    pub(super) fn node(&self, host: &str, port: u16) -> Arc<Node> {
        let address = (host.to_owned(), port);
        if let Some(node) = self
            .inner
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
        {
            return node.clone();
        }
        self.inner
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(address)
            .or_insert_with(|| {
                Arc::new(Node {
                    host: host.to_owned(),
                    port,
                    breaker: CircuitBreaker::new(self.inner.breaker_config),
                    connection: RwLock::new(None),
                })
            })
            .clone()
    }

    /// The direct connection to `node`, made on first use with the settings of the configured
    /// nodes.
    pub(super) async fn node_connection(
        &self,
        node: &Node,
    ) -> redis::RedisResult<(MultiplexedConnection, Option<tokio::runtime::Id>)> {
        if let Some(connection) = node
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(connection.clone());
        }
        let (host, port) = (node.host.clone(), node.port);
        let addr = match self.inner.seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(self.inner.deadline));
        let connection = redis::Client::open(self.inner.seed.clone().set_addr(addr))?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(node
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert((connection, current_runtime()))
            .clone())
    }

    /// Runs `request` on the direct connection to `node`. When the connection's driver ended with
    /// the runtime that opened it (a `static` cache used from several runtimes), the connection
    /// is dropped and `request` runs once more on a fresh one: nothing was sent.
    pub(super) async fn with_node_connection<T, F, Fut>(
        &self,
        node: &Node,
        request: F,
    ) -> redis::RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut retried = false;
        loop {
            let (connection, opened_on) = self.node_connection(node).await?;
            match request(connection).await {
                Err(e) if !retried && lost_driver(opened_on, &e) => {
                    let mut slot = node
                        .connection
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    // Unless a caller on this runtime replaced it already.
                    if slot.as_ref().is_some_and(|(_, r)| *r == opened_on) {
                        *slot = None;
                    }
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// What an operation that gives up at `until` has waited by now.
    pub(super) fn waited(&self, until: Instant) -> Waited {
        let left = until.saturating_duration_since(Instant::now());
        Waited {
            waited: self.inner.deadline.saturating_sub(left),
            deadline: self.inner.deadline,
            connect_timeout: Some(self.inner.connect_timeout),
        }
    }

    /// Drops the direct connection to `node` after it failed; the next use reconnects.
    pub(super) fn forget_connection(&self, node: &Node) {
        *node
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `request` on the direct connection to `node`, under that node's breaker, giving up
    /// at `until`. A failure counts against this node only, and has the slot map learned again
    /// soon (a replica may be taking over).
    pub(super) async fn on_node<T, F, Fut>(
        &self,
        node: &Node,
        until: Instant,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: F,
    ) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let admission = node.breaker.admit();
        if admission == Admission::Rejected {
            self.refresh_soon();
            return Err(Error::CircuitOpen {
                operation,
                key: subject(),
            });
        }
        let _probe = ProbeGuard {
            breaker: &node.breaker,
            admission: &admission,
        };
        let attempt = self.with_node_connection(node, request);
        match tokio::time::timeout_at(until.into(), attempt).await {
            Ok(Ok(value)) => {
                node.breaker.record_success();
                Ok(value)
            }
            Ok(Err(e)) => {
                let timed_out = e.is_timeout();
                let error = classify(e, operation, subject(), self.waited(until));
                if error.is_outage() {
                    node.breaker.record_failure(&admission);
                    if !timed_out {
                        self.forget_connection(node);
                    }
                    self.refresh_soon();
                } else {
                    node.breaker.record_success();
                }
                Err(error)
            }
            Err(_elapsed) => {
                node.breaker.record_failure(&admission);
                self.refresh_soon();
                Err(Error::Timeout {
                    operation,
                    key: subject(),
                    deadline: self.inner.deadline,
                })
            }
        }
    }
}

/// Replies that mean "not here, or not now": the client's routing handles them (it follows
/// `MOVED`/`ASK` and retries the others).
pub(super) fn is_redirection(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
        )
    )
}
