//! One cluster node: its own breaker and direct connection, and the call policy's hooks for it.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, RedisError, ServerErrorKind};

use super::RedisClusterCacheRepository;
use crate::error::Result;
use crate::repository::breaker::CircuitBreaker;
use crate::repository::call::{
    self, current_runtime, Attempt, Call, Limits, Opened, Target, Unanswered,
};
use crate::repository::failure::{Failed, Failure, RefusedLogin, Waited};

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
    /// A call to this node its caller abandoned, counted as an outage once its deadline has
    /// passed (see [`Unanswered`]).
    pub(super) unanswered: Unanswered,
    /// The direct connection and the tokio runtime that opened it (where its driver task runs).
    pub(super) connection: RwLock<Option<(MultiplexedConnection, Option<tokio::runtime::Id>)>>,
    /// A login the node refused lately: not tried again at every call.
    pub(super) refused_login: RefusedLogin,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl RedisClusterCacheRepository {
    /// The connection settings of the node at `host:port`: the first configured node's
    /// (credentials, TLS, protocol) with its address.
    pub(super) fn node_info(&self, host: String, port: u16) -> redis::ConnectionInfo {
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
        self.inner.seed.clone().set_addr(addr)
    }

    /// The node at `host:port`, met now or before.
    pub(super) fn node(&self, host: &str, port: u16) -> Arc<Node> {
        if let Some(node) = self.known_node(host, port) {
            return node;
        }
        self.inner
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((host.to_owned(), port))
            .or_insert_with(|| Arc::new(self.new_node(host, port, self.inner.breaker_config)))
            .clone()
    }

    /// The node at `host:port` if it is known (a primary of the slot map, or met since).
    pub(super) fn known_node(&self, host: &str, port: u16) -> Option<Arc<Node>> {
        self.inner
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(host.to_owned(), port))
            .cloned()
    }

    /// A node at `host:port` with a breaker of `breaker` (`None`: none, and no metrics).
    pub(super) fn new_node(
        &self,
        host: &str,
        port: u16,
        breaker: Option<crate::CircuitBreakerConfig>,
    ) -> Node {
        Node {
            host: host.to_owned(),
            port,
            breaker: CircuitBreaker::new(breaker, "cluster", format!("{host}:{port}")),
            unanswered: Unanswered::default(),
            connection: RwLock::new(None),
            refused_login: RefusedLogin::default(),
        }
    }

    /// The direct connection to `node`, made on first use with the settings of the configured
    /// nodes; with `own_runtime` (a second attempt), one of this call's runtime, replacing
    /// another runtime's (which may have ended, or be ending: parallel tests end about together).
    pub(super) async fn node_connection(
        &self,
        node: &Node,
        own_runtime: bool,
    ) -> redis::RedisResult<(MultiplexedConnection, Option<tokio::runtime::Id>)> {
        let usable = |(_, runtime): &(MultiplexedConnection, Option<tokio::runtime::Id>)| {
            !own_runtime || *runtime == current_runtime()
        };
        if let Some(connection) = node
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|connection| usable(connection))
        {
            return Ok(connection.clone());
        }
        let info = self.node_info(node.host.clone(), node.port);
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(self.inner.deadline));
        if let Some(refused) = node.refused_login.recent() {
            return Err(refused);
        }
        let connected = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        node.refused_login.note(&connected);
        let connection = connected?;
        let mut slot = node
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref().filter(|connection| usable(connection)) {
            Some(made_meanwhile) => Ok(made_meanwhile.clone()),
            None => Ok(slot.insert((connection, current_runtime())).clone()),
        }
    }

    /// Runs `request` on the direct connection to `node`, outside any breaker (learning the slot
    /// map). When the connection's driver ended with the runtime that opened it (a `static` cache
    /// used from several runtimes), the connection is dropped and `request` runs once more on a
    /// fresh one: nothing was sent.
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
            let (connection, opened_on) = self.node_connection(node, retried).await?;
            match request(connection).await {
                Err(e)
                    if !retried
                        && e.is_connection_dropped()
                        && !e.is_connection_refusal()
                        && !e.is_timeout()
                        && opened_on.is_some()
                        && opened_on != current_runtime() =>
                {
                    node.drop_connection_of(opened_on);
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
    /// at `until` (the call policy, [`call::call`], with the hooks of [`OnNode`]).
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
        let target = OnNode {
            repository: self,
            node,
        };
        let call = Call::new(operation, subject);
        call::call(&target, call, Some(until.into()), request)
            .await
            .map_err(Failed::into_error)
    }
}

impl Node {
    /// Drops the direct connection opened on runtime `opened_on`, unless a caller on this
    /// runtime replaced it already.
    fn drop_connection_of(&self, opened_on: Option<tokio::runtime::Id>) {
        let mut slot = self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|(_, r)| *r == opened_on) {
            *slot = None;
        }
    }
}

/// One node's hooks of the call policy: a failure counts against this node only, and has the
/// slot map learned again soon (a replica may be taking over); a connection that failed other
/// than by a timeout is dropped. When the connection's driver ended with the runtime that opened
/// it, the connection is dropped and the request runs once more on a fresh one: nothing was sent.
struct OnNode<'a> {
    repository: &'a RedisClusterCacheRepository,
    node: &'a Node,
}

impl Target for OnNode<'_> {
    type Handle = MultiplexedConnection;
    type Error = RedisError;

    fn limits(&self) -> Limits<'_> {
        Limits {
            breaker: &self.node.breaker,
            deadline: self.repository.inner.deadline,
            connect_timeout: Some(self.repository.inner.connect_timeout),
        }
    }

    /// A second attempt runs on a connection of the call's own runtime.
    async fn open(
        &self,
        _call: &Call<'_>,
        again: bool,
    ) -> redis::RedisResult<Opened<MultiplexedConnection>> {
        let (handle, runtime) = self.repository.node_connection(self.node, again).await?;
        // A node's connection has no generations: the hooks below act on the node.
        Ok(Opened {
            generation: 1,
            runtime,
            handle,
        })
    }

    fn retry(&self, attempt: &Attempt<'_>, _call: &Call<'_>) -> bool {
        let retry = !attempt.retried && attempt.driver_gone;
        if retry {
            self.node.drop_connection_of(attempt.runtime);
        }
        retry
    }

    fn failed(&self, _generation: Option<u64>, failure: Failure) {
        if failure.is_outage() {
            if !matches!(failure, Failure::Timeout | Failure::GaveUp) {
                self.repository.forget_connection(self.node);
            }
            self.repository.refresh_soon();
        }
    }

    fn rejected(&self) {
        self.repository.refresh_soon();
    }

    fn unanswered(&self) -> Option<&Unanswered> {
        Some(&self.node.unanswered)
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
