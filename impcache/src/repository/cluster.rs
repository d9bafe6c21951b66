//! The Redis Cluster repository (feature `cluster`): the `redis` crate's async cluster client, with
//! the same deadline, circuit breaker and fail-open behaviour as [`RedisCacheRepository`].
//!
//! [`RedisCacheRepository`]: crate::RedisCacheRepository

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, RedisError, ServerErrorKind};
use tokio::task::JoinSet;

use super::breaker::{Admission, CircuitBreaker, CircuitBreakerConfig, ProbeGuard};
use super::commands::{check_value_size, classify, key_command, scan_command, set_command};
use super::redis::redact_dsn;
use super::settings::{shared_setters, Settings};
use super::{BoxFuture, CacheRepository};
use crate::error::{shown, shown_many, Error, Result};
use crate::expire::Expiry;

/// Keys per `SCAN` batch in `delete_pattern`, per primary.
/// Retries of the cluster client for one request (redirections, a node being replaced), all
/// within the deadline.
const CLUSTER_RETRIES: u32 = 3;
/// Consecutive outage errors after which the cluster connection is replaced by a fresh one (new
/// topology discovery from the configured nodes): the client can stay stuck after a failover.
const RESET_AFTER_FAILURES: u32 = 3;
/// While a node fails, the slot map is learned again in the background at most this often, so
/// that a replica promoted in its place is found without waiting for a `MOVED`.
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// The Redis Cluster repository (feature `cluster`).
///
/// Built from one or more node addresses (`redis://host:port`; any reachable node is enough, the
/// client discovers the rest from the cluster). It behaves like
/// [`RedisCacheRepository`](crate::RedisCacheRepository):
///
/// - **Lazy**: construction only checks the addresses; the first operation connects, and a
///   failed connect is retried by the next operation.
/// - **Bounded**: every operation (redirections and retries included) gives up after its
///   [deadline](RedisClusterCacheRepositoryBuilder::deadline) with [`Error::Timeout`]; the
///   client's per-node response timeout is set to the same value.
/// - **One circuit breaker per primary**: an operation finds its key's primary first (from a slot
///   map learned with `CLUSTER SLOTS`), then checks that primary's breaker and uses a direct
///   connection to it, so a primary that is down or frozen fails only its own keys and costs
///   nothing for the others'. Keys the map cannot place, or whose primary redirects them, go
///   through the `redis` crate's cluster client (which follows `MOVED`/`ASK`), under a breaker of
///   its own. While a primary fails, the slot map is learned again in the background (at most
///   every 200 ms), so a replica promoted in its place is used as soon as the cluster says so.
///
/// Multi-key operations cross slots freely, one round trip per node:
/// - `set_many`, `get_many` and `delete_many` group the keys by the primary serving their slot
///   (a slot map learned with `CLUSTER SLOTS` on first use) and send each primary one pipeline
///   (`SET ... EX` per key; `MGET` or `UNLINK` per slot), all in parallel over a direct connection
///   to each primary; `get_many` returns the values in the caller's order. `set_many` is not
///   atomic (neither is it on a single server);
/// - while a slot migrates (`ASK`, `TRYAGAIN`), its keys are sent again in a further round, one
///   command per key, with `ASKING` in front on the importing node; a key whose node answers
///   `MOVED` (the slot moved since the map was learned) is sent again on its own through the
///   cluster client's routing, which follows redirections, and the map is learned again on the
///   next call, so results never depend on the map being fresh;
/// - if a primary fails (unreachable, timed out, breaker open), the parts for the other primaries
///   are done all the same (`set_many` and `delete_many` write and delete there), then the call
///   fails with [`Error::Unavailable`] whose source names each failed node and its error;
/// - `delete_pattern` sweeps the primaries of a freshly learned slot map with `SCAN`, in
///   parallel, and `UNLINK`s what it finds on each; it returns the sum, or, if a primary could not
///   be swept, the others are swept all the same and the error names it.
///
/// Key layout: keys are `{prefix}:{version}:{key}`, spread over slots by their hash. Braces in a
/// prefix or key make a *hash tag* (`{user42}:...`): every key with the same tag lands in the same
/// slot, on the same node. See `SCALING.md`.
///
/// ```
/// use std::time::Duration;
/// use impcache::RedisClusterCacheRepository;
///
/// let repository = RedisClusterCacheRepository::builder(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .deadline(Duration::from_millis(200))
///     .build()?;
/// assert!(RedisClusterCacheRepository::new(["unix:///tmp/redis.sock"]).is_err());
/// # Ok::<(), impcache::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisClusterCacheRepository {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClusterClient,
    /// The connection and its generation; `None` until the first operation and after a reset.
    connection: RwLock<Option<(u64, ClusterConnection)>>,
    /// Held while connecting, so that one connect is in flight at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Which primary serves which slot, learned from `CLUSTER SLOTS`; `None` until the first
    /// operation and after a `MOVED` (learned again by the next operation); replaced in the
    /// background while a node fails.
    slot_map: RwLock<Option<Arc<SlotMap>>>,
    /// Held while an operation learns the slot map, so that the others wait for that one.
    learning: tokio::sync::Mutex<()>,
    /// The first configured node's settings (credentials, TLS, protocol): the template of the
    /// direct connections to the primaries.
    seed: redis::ConnectionInfo,
    /// The configured node addresses: where the slot map is learned first.
    seeds: Vec<(String, u16)>,
    /// Every node met so far (configured, or in a slot map), by address, each with its own
    /// breaker and direct connection. Kept across slot maps, so that a node's breaker outlives a
    /// relearned map.
    nodes: RwLock<HashMap<(String, u16), Arc<Node>>>,
    /// When the slot map was last learned in the background (milliseconds since `epoch`).
    last_refresh_ms: AtomicU64,
    epoch: Instant,
    generations: AtomicU64,
    consecutive_failures: AtomicU32,
    deadline: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    /// The settings of every node's breaker.
    breaker_config: Option<CircuitBreakerConfig>,
    /// The breaker of the requests that go through the cluster client's own routing (keys of a
    /// slot the map does not know or that moved, and [`RedisClusterCacheRepository::primaries`]).
    client_breaker: CircuitBreaker,
    /// The node addresses with passwords replaced: the only form that is ever printed.
    shown_nodes: Vec<String>,
}

/// One node as the repository sees it: its own circuit breaker and its own direct connection, so
/// that a fault on one node costs nothing for the keys of the others.
///
/// The direct connection is not the cluster client's: that one holds every request while it
/// refreshes its slot map (which asks the nodes one at a time, a frozen one until its timeout)
/// or reconnects, and it answers a redirection of any one command in a pipeline by resending the
/// whole pipeline, which would run the other commands twice.
struct Node {
    host: String,
    port: u16,
    breaker: CircuitBreaker,
    connection: RwLock<Option<MultiplexedConnection>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Configures a [`RedisClusterCacheRepository`].
#[must_use]
pub struct RedisClusterCacheRepositoryBuilder {
    nodes: Vec<String>,
    settings: Settings,
}

impl fmt::Debug for RedisClusterCacheRepositoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| redact_dsn(n)).collect();
        f.debug_struct("RedisClusterCacheRepositoryBuilder")
            .field("nodes", &nodes)
            .field("settings", &self.settings)
            .finish()
    }
}

impl fmt::Debug for RedisClusterCacheRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterCacheRepository")
            .field("nodes", &self.inner.shown_nodes)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("deadline", &self.inner.deadline)
            .field("circuit_open", &self.is_circuit_open())
            .field("connected", &self.current().is_some())
            .finish()
    }
}

impl RedisClusterCacheRepository {
    /// A repository for the cluster reachable at `nodes`, with the default settings. The addresses
    /// are checked now ([`Error::InvalidDsn`]); nothing is connected until the first operation.
    pub fn new<I, S>(nodes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(nodes).build()
    }

    /// Configures a repository for the cluster reachable at `nodes`.
    pub fn builder<I, S>(nodes: I) -> RedisClusterCacheRepositoryBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisClusterCacheRepositoryBuilder {
            nodes: nodes.into_iter().map(Into::into).collect(),
            settings: Settings::default(),
        }
    }

    /// The per-operation deadline.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// `true` while the circuit breaker of at least one node fails that node's operations fast
    /// (each primary has its own breaker; keys of the other primaries are not affected).
    pub fn is_circuit_open(&self) -> bool {
        self.inner.client_breaker.is_open()
            || self
                .inner
                .nodes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .any(|node| node.breaker.is_open())
    }

    /// The primaries holding slots, as `(host, port)`, read from `CLUSTER NODES` (failed nodes
    /// left out). Bounded by the deadline like any operation.
    pub async fn primaries(&self) -> Result<Vec<(String, u16)>> {
        self.run("primaries", &String::new, |mut connection| async move {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("NODES");
            let reply = connection
                .route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await?;
            let text: String = redis::from_redis_value(reply)?;
            Ok::<_, RedisError>(parse_primaries(&text))
        })
        .await
    }

    fn current(&self) -> Option<(u64, ClusterConnection)> {
        self.inner
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The cluster connection, made (topology discovered) on first use and after a reset.
    async fn connection(&self) -> redis::RedisResult<(u64, ClusterConnection)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let connection = self.inner.client.get_async_connection().await?;
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        *self
            .inner
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Counts an outage; after a few in a row, drops the connection `generation` so that the
    /// next operation connects afresh.
    fn record_outage(&self, generation: Option<u64>) {
        let failures = self
            .inner
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        // A node may be gone or replaced.
        self.refresh_soon();
        let Some(generation) = generation else { return };
        if failures >= RESET_AFTER_FAILURES {
            let mut slot = self
                .inner
                .connection
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                *slot = None;
                self.inner.consecutive_failures.store(0, Ordering::Relaxed);
                tracing::info!(
                    failures,
                    "impcache: replacing the cluster connection after repeated failures"
                );
            }
        }
    }

    /// Runs `request` on the cluster connection under the deadline and the client's breaker.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: F,
    ) -> Result<T>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let until = Instant::now() + self.inner.deadline;
        self.run_until(until, operation, subject, request).await
    }

    /// Runs `request` on the cluster connection, giving up at `until`, under the client's breaker:
    /// for keys the slot map cannot place (the client's routing follows redirections).
    async fn run_until<T, F, Fut>(
        &self,
        until: Instant,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: F,
    ) -> Result<T>
    where
        F: FnOnce(ClusterConnection) -> Fut,
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
            let (g, connection) = self.connection().await?;
            *generation.lock().unwrap_or_else(PoisonError::into_inner) = Some(g);
            request(connection).await
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
                let error = classify(e, operation, subject(), self.inner.deadline);
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

    /// The slot map, learned if none is known (one `CLUSTER SLOTS` at a time).
    async fn slot_map(&self) -> redis::RedisResult<Arc<SlotMap>> {
        let known = || {
            self.inner
                .slot_map
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        if let Some(map) = known() {
            return Ok(map);
        }
        let _learning = self.inner.learning.lock().await;
        if let Some(map) = known() {
            return Ok(map);
        }
        self.learn_slot_map().await
    }

    /// Learns the slot map: `CLUSTER SLOTS` sent to every known node and configured address at
    /// once, over the direct connections; the first answer wins (a frozen or dead node costs
    /// nothing while another answers).
    async fn learn_slot_map(&self) -> redis::RedisResult<Arc<SlotMap>> {
        let mut candidates: Vec<(String, u16)> = self.inner.seeds.clone();
        candidates.extend(
            self.inner
                .nodes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned(),
        );
        candidates.sort();
        candidates.dedup();
        let mut tasks = JoinSet::new();
        for (host, port) in candidates {
            let node = self.node(&host, port);
            let this = self.clone();
            tasks.spawn(async move {
                let mut connection = this.node_connection(&node).await?;
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("SLOTS");
                let reply = connection.send_packed_command(&cmd).await;
                if reply.as_ref().is_err_and(|e| !e.is_timeout()) {
                    this.forget_connection(&node);
                }
                reply?.extract_error()
            });
        }
        let mut last_error = None;
        while let Some(joined) = tasks.join_next().await {
            let reply = match joined {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => continue,
            };
            let mut map = SlotMap::parse(&reply);
            if map.nodes.is_empty() {
                continue;
            }
            map.handles = map.nodes.iter().map(|(h, p)| self.node(h, *p)).collect();
            let map = Arc::new(map);
            tracing::debug!(
                target: NODE_EVENTS,
                event = "learned",
                primaries = map.nodes.len(),
                "impcache: learned the cluster slot map"
            );
            *self
                .inner
                .slot_map
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(map.clone());
            return Ok(map);
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "no cluster node answered CLUSTER SLOTS",
            ))
        }))
    }

    /// Learns the slot map again in the background, at most once per [`REFRESH_INTERVAL`]: a
    /// node failed, and a replica may be taking over its slots.
    fn refresh_soon(&self) {
        let now = u64::try_from(self.inner.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.inner.last_refresh_ms.load(Ordering::Acquire);
        let interval = u64::try_from(REFRESH_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now < last.saturating_add(interval) {
            return;
        }
        if self
            .inner
            .last_refresh_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            match tokio::time::timeout(this.inner.deadline, this.learn_slot_map()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "impcache: CLUSTER SLOTS failed"),
                Err(_) => tracing::debug!("impcache: CLUSTER SLOTS timed out"),
            }
        });
    }

    /// Drops `stale` (unless a newer map replaced it already): the next multi-key operation
    /// learns the map again.
    fn forget_slot_map(&self, stale: &Arc<SlotMap>) {
        let mut map = self
            .inner
            .slot_map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if map.as_ref().is_some_and(|m| Arc::ptr_eq(m, stale)) {
            *map = None;
        }
    }

    /// The node at `host:port`, met now or before.
    fn node(&self, host: &str, port: u16) -> Arc<Node> {
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
    async fn node_connection(&self, node: &Node) -> redis::RedisResult<MultiplexedConnection> {
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
            .get_or_insert(connection)
            .clone())
    }

    /// Drops the direct connection to `node` after it failed; the next use reconnects.
    fn forget_connection(&self, node: &Node) {
        *node
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `request` on the direct connection to `node`, under that node's breaker, giving up
    /// at `until`. A failure counts against this node only, and has the slot map learned again
    /// soon (a replica may be taking over).
    async fn on_node<T, F, Fut>(
        &self,
        node: &Node,
        until: Instant,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: F,
    ) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
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
        let attempt = async { request(self.node_connection(node).await?).await };
        match tokio::time::timeout_at(until.into(), attempt).await {
            Ok(Ok(value)) => {
                node.breaker.record_success();
                Ok(value)
            }
            Ok(Err(e)) => {
                let timed_out = e.is_timeout();
                let error = classify(e, operation, subject(), self.inner.deadline);
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

    /// Runs the one-key command `cmd` on the primary serving `key`'s slot, over its direct
    /// connection and under its own breaker. A key the slot map cannot place, or whose node
    /// redirects (`MOVED`, `ASK`, a migration or failover in progress), goes through the cluster
    /// client's routing instead, within the same deadline.
    async fn keyed<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        key: &str,
        cmd: redis::Cmd,
    ) -> Result<T> {
        let subject = || shown(key);
        let until = Instant::now() + self.inner.deadline;
        let through_client = |cmd: redis::Cmd| {
            self.run_until(until, operation, &subject, |mut c| async move {
                cmd.query_async(&mut c).await
            })
        };
        let map = match tokio::time::timeout_at(until.into(), self.slot_map()).await {
            Ok(Ok(map)) => map,
            // The client's routing may still work without the map.
            Ok(Err(_)) => return through_client(cmd).await,
            Err(_) => {
                return Err(Error::Timeout {
                    operation,
                    key: subject(),
                    deadline: self.inner.deadline,
                })
            }
        };
        let Some(node) = map.node_for(key_slot(key.as_bytes())) else {
            return through_client(cmd).await;
        };
        let sent = &cmd;
        let reply = self
            .on_node(node, until, operation, &subject, |mut c| async move {
                c.send_packed_command(sent).await
            })
            .await?;
        if let redis::Value::ServerError(error) = &reply {
            if is_redirection(error.kind()) {
                if error.kind() == Some(ServerErrorKind::Moved) {
                    self.forget_slot_map(&map);
                }
                return through_client(cmd).await;
            }
        }
        reply
            .extract_error()
            .and_then(|value| Ok(redis::from_redis_value(value)?))
            .map_err(|e| classify(e, operation, subject(), self.inner.deadline))
    }

    /// Sends the commands for `keys` grouped per node: one pipeline per primary of the slot map,
    /// all in parallel (one round trip per node). `command` builds one command for the keys at the
    /// given indices of `keys`: with `per_slot`, one command per slot (`MGET`, `UNLINK`: all its
    /// keys are in one slot), else one per key.
    ///
    /// While a slot migrates, its node answers `ASK` (the keys are on the importing node) or, for a
    /// command on several keys of which only some moved, `TRYAGAIN`: those commands are sent again
    /// in a further round, split per key, and with `ASKING` in front on the importing node (in one
    /// pipeline, so that no other request can take the `ASKING`; the cluster client sends them
    /// apart). A few rounds at most.
    ///
    /// Each node's part runs under that node's breaker and gives up at `until`; a node that fails
    /// (unreachable, timed out, breaker open) fails its own part only: the other nodes' parts are
    /// done, and the failure is returned in [`PerNode::failures`], naming the node.
    ///
    /// Returns each command's reply with the indices it covers, and the indices the map could not
    /// serve: slot unknown to the map, `MOVED` (the map is stale: it is learned again on the next
    /// call) or a cluster-state error. Those are for the caller to send through the cluster
    /// client's own routing, which follows redirections.
    async fn send_per_node(
        &self,
        operation: &'static str,
        keys: &[&str],
        per_slot: bool,
        until: Instant,
        command: impl Fn(&[usize]) -> redis::Cmd,
    ) -> Result<PerNode> {
        let mut outcome = PerNode {
            replies: Vec::new(),
            fallback: Vec::new(),
            failures: Vec::new(),
        };
        let map = match tokio::time::timeout_at(until.into(), self.slot_map()).await {
            Ok(Ok(map)) => map,
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    operation,
                    key: shown_many(keys),
                    deadline: self.inner.deadline,
                })
            }
            Ok(Err(e)) => {
                // The client's routing still works without the map.
                tracing::debug!(error = %e, "impcache: CLUSTER SLOTS failed; routing per slot");
                outcome.fallback = (0..keys.len()).collect();
                return Ok(outcome);
            }
        };
        // node -> slot -> indices, in the caller's order within each slot.
        let mut by_node: HashMap<usize, HashMap<u16, Vec<usize>>> = HashMap::new();
        for (index, key) in keys.iter().enumerate() {
            let slot = key_slot(key.as_bytes());
            match map.owner(slot) {
                Some(node) => by_node
                    .entry(node)
                    .or_default()
                    .entry(slot)
                    .or_default()
                    .push(index),
                None => outcome.fallback.push(index),
            }
        }
        let mut work: HashMap<(String, u16), Vec<Unit>> = HashMap::new();
        for (node, slots) in by_node {
            let units = work.entry(map.nodes[node].clone()).or_default();
            for indices in slots.into_values() {
                if per_slot {
                    units.push(Unit {
                        indices,
                        asking: false,
                    });
                } else {
                    units.extend(indices.into_iter().map(|index| Unit {
                        indices: vec![index],
                        asking: false,
                    }));
                }
            }
        }
        let mut stale = false;
        for round in 0..MIGRATION_ROUNDS {
            if work.is_empty() {
                break;
            }
            let last = round + 1 == MIGRATION_ROUNDS;
            let mut tasks = JoinSet::new();
            for ((host, port), units) in work.drain() {
                let mut pipe = redis::pipe();
                let mut count = 0;
                let mut positions = Vec::with_capacity(units.len());
                for unit in &units {
                    if unit.asking {
                        pipe.cmd("ASKING");
                        count += 1;
                    }
                    positions.push(count);
                    pipe.add_command(command(&unit.indices));
                    count += 1;
                }
                let part: Vec<&str> = units
                    .iter()
                    .flat_map(|u| u.indices.iter().map(|&index| keys[index]))
                    .collect();
                let part = shown_many(&part);
                let node = self.node(&host, port);
                let this = self.clone();
                tasks.spawn(async move {
                    let commands = units.len();
                    let label = format!("{host}:{port}");
                    let sent = this
                        .on_node(
                            &node,
                            until,
                            operation,
                            &|| part.clone(),
                            |mut c| async move {
                                tracing::debug!(
                                    target: NODE_EVENTS,
                                    event = "pipeline",
                                    node = %label,
                                    commands,
                                    round,
                                    "impcache: one pipeline to one cluster node"
                                );
                                c.send_packed_commands(&pipe, 0, count).await
                            },
                        )
                        .await;
                    ((host, port), units, positions, sent)
                });
            }
            while let Some(joined) = tasks.join_next().await {
                let (node, units, positions, sent) = match joined {
                    Ok(done) => done,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => continue,
                };
                let mut replies = match sent {
                    Ok(replies) => replies,
                    // This node's part only: the others go on.
                    Err(error) => {
                        outcome.failures.push(NodeFailure {
                            node: format!("{}:{}", node.0, node.1),
                            error,
                        });
                        continue;
                    }
                };
                for (unit, position) in units.into_iter().zip(positions) {
                    let reply = replies
                        .get_mut(position)
                        .map_or(redis::Value::Nil, std::mem::take);
                    let redis::Value::ServerError(error) = reply else {
                        outcome.replies.push((unit.indices, reply));
                        continue;
                    };
                    match error.kind() {
                        Some(ServerErrorKind::Ask) if !last => {
                            let target =
                                RedisError::from(error)
                                    .redirect_node()
                                    .and_then(|(address, _)| {
                                        let (host, port) = address.rsplit_once(':')?;
                                        Some((host.to_owned(), port.parse::<u16>().ok()?))
                                    });
                            match target {
                                // Per key: the keys of one slot may be on either side.
                                Some(target) => {
                                    work.entry(target).or_default().extend(
                                        unit.indices.into_iter().map(|index| Unit {
                                            indices: vec![index],
                                            asking: true,
                                        }),
                                    );
                                }
                                None => outcome.fallback.extend(unit.indices),
                            }
                        }
                        Some(ServerErrorKind::TryAgain) if !last && unit.indices.len() > 1 => {
                            work.entry(node.clone()).or_default().extend(
                                unit.indices.into_iter().map(|index| Unit {
                                    indices: vec![index],
                                    asking: unit.asking,
                                }),
                            );
                        }
                        kind if is_redirection(kind) => {
                            stale |= kind == Some(ServerErrorKind::Moved);
                            outcome.fallback.extend(unit.indices);
                        }
                        _ => outcome
                            .replies
                            .push((unit.indices, redis::Value::ServerError(error))),
                    }
                }
            }
        }
        if stale {
            self.forget_slot_map(&map);
        }
        if !outcome.fallback.is_empty() {
            tracing::debug!(
                target: NODE_EVENTS,
                event = "fallback",
                keys = outcome.fallback.len(),
                "impcache: keys routed per slot by the cluster client (stale slot map)"
            );
        }
        outcome.fallback.sort_unstable();
        Ok(outcome)
    }

    fn check_size(&self, key: &str, value: &Bytes) -> Result<()> {
        check_value_size(key, value.len(), self.inner.max_value_bytes)
    }

    /// Sweeps one primary: `SCAN` it, `UNLINK` each batch on it; keys that moved away meanwhile
    /// are unlinked through the client's routing (one already gone counts 0). Each round trip is
    /// bounded by the deadline and counts against this node's breaker only.
    async fn sweep(&self, node: &Node, pattern: &str) -> Result<u64> {
        let subject = || shown(pattern);
        let deadline = self.inner.deadline;
        let scan = |cursor: u64| async move {
            let cmd = scan_command(cursor, pattern);
            let cmd = &cmd;
            let until = Instant::now() + deadline;
            self.on_node(
                node,
                until,
                "delete_pattern",
                &subject,
                |mut c| async move {
                    let reply = c.send_packed_command(cmd).await?.extract_error()?;
                    Ok(redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(reply)?)
                },
            )
            .await
        };
        // The keys a SCAN of this node found are on this node: one pipeline of `ASKING` +
        // `UNLINK key` pairs, sent to it. `ASKING` lets the node delete keys of a slot it is
        // importing (a migration in progress) and is a no-op otherwise; in one pipeline, nothing
        // can slip between the two. Keys that moved away since the SCAN come back as MOVED/ASK
        // and are deleted through the client's routing instead.
        let unlink = |keys: Vec<Vec<u8>>| async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("ASKING").cmd("UNLINK").arg(key);
            }
            let (pipe, count) = (&pipe, keys.len() * 2);
            let until = Instant::now() + deadline;
            let replies = self
                .on_node(
                    node,
                    until,
                    "delete_pattern",
                    &subject,
                    |mut c| async move { c.send_packed_commands(pipe, 0, count).await },
                )
                .await?;
            let mut removed = 0;
            let mut moved = Vec::new();
            for (key, reply) in keys.into_iter().zip(replies.into_iter().skip(1).step_by(2)) {
                match reply {
                    redis::Value::Int(n) => removed += u64::try_from(n).unwrap_or(0),
                    _ => moved.push(key),
                }
            }
            if moved.is_empty() {
                return Ok(removed);
            }
            let elsewhere = self
                .run("delete_pattern", &subject, |connection| async move {
                    let mut tasks = JoinSet::new();
                    for key in moved {
                        let mut connection = connection.clone();
                        tasks.spawn(async move {
                            let mut cmd = redis::cmd("UNLINK");
                            cmd.arg(key);
                            cmd.query_async::<u64>(&mut connection).await
                        });
                    }
                    Ok(join_set(tasks).await?.into_iter().sum::<u64>())
                })
                .await?;
            Ok(removed + elsewhere)
        };
        let (mut cursor, mut keys) = scan(0).await?;
        let mut removed = 0;
        while cursor != 0 {
            // The UNLINK of this batch and the SCAN for the next one travel together.
            let (n, next) = tokio::join!(unlink(std::mem::take(&mut keys)), scan(cursor));
            removed += n?;
            (cursor, keys) = next?;
        }
        Ok(removed + unlink(keys).await?)
    }
}

/// The `tracing` target of the per-node events, at `DEBUG` level: `learned` (a slot map),
/// `pipeline` (one sent to one node: one round trip), `fallback` (keys the map could not serve).
const NODE_EVENTS: &str = "impcache::cluster";

/// Which primary serves which slot: `owners[slot]` is an index in `nodes`, or [`NO_OWNER`] for a
/// slot no known primary serves (its keys go through the client's routing).
#[derive(Debug)]
struct SlotMap {
    nodes: Vec<(String, u16)>,
    owners: Box<[u16]>,
    /// The repository's handle of each of `nodes` (same order), with its breaker and connection.
    handles: Vec<Arc<Node>>,
}

impl SlotMap {
    /// The handle of the primary serving `slot`, if known.
    fn node_for(&self, slot: u16) -> Option<&Arc<Node>> {
        self.handles.get(self.owner(slot)?)
    }

    /// The index in `nodes` of the primary serving `slot`, if known.
    fn owner(&self, slot: u16) -> Option<usize> {
        match self.owners.get(usize::from(slot)) {
            Some(&NO_OWNER) | None => None,
            Some(&node) => Some(usize::from(node)),
        }
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..], replicas..], ..]`.
    /// Ranges whose primary has no usable address (empty, `?`) are left out.
    fn parse(reply: &redis::Value) -> Self {
        let mut map = SlotMap {
            nodes: Vec::new(),
            owners: vec![NO_OWNER; usize::from(SLOTS)].into_boxed_slice(),
            handles: Vec::new(),
        };
        let redis::Value::Array(ranges) = reply else {
            return map;
        };
        for range in ranges {
            let redis::Value::Array(range) = range else {
                continue;
            };
            let [redis::Value::Int(start), redis::Value::Int(end), redis::Value::Array(primary), ..] =
                &range[..]
            else {
                continue;
            };
            let [redis::Value::BulkString(host), redis::Value::Int(port), ..] = &primary[..] else {
                continue;
            };
            let host = String::from_utf8_lossy(host).into_owned();
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            if host.is_empty() || host == "?" || port == 0 {
                continue;
            }
            let node = match map.nodes.iter().position(|n| n.0 == host && n.1 == port) {
                Some(node) => node,
                None => {
                    map.nodes.push((host, port));
                    map.nodes.len() - 1
                }
            };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
                continue;
            };
            let Ok(node) = u16::try_from(node) else {
                continue;
            };
            for slot in start..=end.min(SLOTS - 1) {
                map.owners[usize::from(slot)] = node;
            }
        }
        map
    }
}

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;
/// A slot no known primary serves, in [`SlotMap::owners`].
const NO_OWNER: u16 = u16::MAX;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and the next
/// `}`, if not empty) or of the whole key, modulo 16384, as Redis computes it.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            Some(&rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum of Redis Cluster.
fn crc16(data: &[u8]) -> u16 {
    const TABLE: [u16; 256] = {
        let mut table = [0u16; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u16) << 8;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    data.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

/// Rounds of per-node pipelines for one multi-key call: the first, then while a slot migrates
/// one with the `TRYAGAIN` commands split per key, and one after `ASK` on the importing node.
const MIGRATION_ROUNDS: usize = 4;

/// One command of a per-node pipeline: the indices (in the caller's keys) it covers, and whether
/// `ASKING` goes in front of it (it follows an `ASK` redirection).
struct Unit {
    indices: Vec<usize>,
    asking: bool,
}

/// What [`RedisClusterCacheRepository::send_per_node`] got back.
struct PerNode {
    /// Each command's reply, with the indices (in the caller's keys) it covers.
    replies: Vec<(Vec<usize>, redis::Value)>,
    /// Indices to send through the cluster client's routing, ascending.
    fallback: Vec<usize>,
    /// The nodes whose part failed.
    failures: Vec<NodeFailure>,
}

/// A node whose part of a multi-key operation failed, and how (the error names its keys).
#[derive(Debug)]
struct NodeFailure {
    node: String,
    error: Error,
}

/// The source of the [`Error::Unavailable`] of a multi-key operation whose part on one or more
/// nodes failed (the parts on the other nodes were done): names each node and what happened.
#[derive(Debug)]
struct NodeFailures(Vec<NodeFailure>);

impl fmt::Display for NodeFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "cluster node {}: {}", failure.node, failure.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for NodeFailures {}

/// `Ok` if every node's part of a multi-key operation succeeded, else [`Error::Unavailable`]
/// naming the nodes that failed.
fn check_nodes(
    operation: &'static str,
    subject: &dyn Fn() -> String,
    failures: Vec<NodeFailure>,
) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    Err(Error::Unavailable {
        operation,
        key: subject(),
        source: Box::new(NodeFailures(failures)),
    })
}

/// Replies that mean "not here, or not now": the client's routing handles them (it follows
/// `MOVED`/`ASK` and retries the others).
fn is_redirection(kind: Option<ServerErrorKind>) -> bool {
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

/// The primaries of a `CLUSTER NODES` reply that may hold keys: flagged `master`, not failed,
/// with an address. Lines look like
/// `<id> <ip:port@cport[,hostname]> <flags> <master-id> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
    let mut primaries = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [_, address, flags, ..] = fields[..] else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
        {
            continue;
        }
        let address = address.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = address.rsplit_once(':') else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match port.parse::<u16>() {
            Ok(port) if !host.is_empty() && port != 0 => primaries.push((host.to_owned(), port)),
            _ => {}
        }
    }
    primaries.sort();
    primaries.dedup();
    primaries
}

/// Waits for every task; the first error wins (the others are aborted when the set is dropped).
async fn join_set<T: 'static, E: 'static>(
    mut tasks: JoinSet<std::result::Result<T, E>>,
) -> std::result::Result<Vec<T>, E> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the set itself is shutting down.
            Err(_) => {}
        }
    }
    Ok(results)
}

impl CacheRepository for RedisClusterCacheRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check_size(key, &value)?;
            let cmd = set_command(key, &value, expiry, false);
            self.keyed("set", key, cmd).await
        })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check_size(key, &value)?;
            let cmd = set_command(key, &value, expiry, true);
            let reply: redis::Value = self.keyed("set_nx", key, cmd).await?;
            Ok(!matches!(reply, redis::Value::Nil))
        })
    }

    /// One pipeline of `SET`s per node, all sent in parallel; not atomic. Keys whose node
    /// redirected (a stale slot map) are set again through the client's routing. If a node
    /// fails, the keys of the other nodes are set all the same, and the error names the node.
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            for (key, value) in entries {
                self.check_size(key, value)?;
            }
            let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
            let shown_keys = || shown_many(&keys);
            let until = Instant::now() + self.inner.deadline;
            let set = |indices: &[usize]| {
                let (key, value) = &entries[indices[0]];
                set_command(key, value, expiry, false)
            };
            let sent = self
                .send_per_node("set_many", &keys, false, until, set)
                .await?;
            for (_, reply) in sent.replies {
                reply
                    .extract_error()
                    .map_err(|e| classify(e, "set_many", shown_keys(), self.inner.deadline))?;
            }
            if !sent.fallback.is_empty() {
                let fallback = sent.fallback;
                self.run_until(until, "set_many", &shown_keys, |connection| async move {
                    let mut tasks = JoinSet::new();
                    for index in fallback {
                        let cmd = set(&[index]);
                        let mut connection = connection.clone();
                        tasks.spawn(async move { cmd.query_async::<()>(&mut connection).await });
                    }
                    join_set(tasks).await.map(drop)
                })
                .await?;
            }
            check_nodes("set_many", &shown_keys, sent.failures)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { self.keyed("get", key, key_command("GET", key)).await })
    }

    /// One pipeline per node of one `MGET` per slot, all sent in parallel, reassembled in the
    /// order of `keys`. Keys whose node redirected (a stale slot map) are read again through the
    /// client's routing. If a node fails, the call fails with an error naming it.
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let shown_keys = || shown_many(keys);
            let until = Instant::now() + self.inner.deadline;
            let mget = |indices: &[usize]| {
                let mut cmd = redis::cmd("MGET");
                for &index in indices {
                    cmd.arg(keys[index]);
                }
                cmd
            };
            let sent = self
                .send_per_node("get_many", keys, true, until, mget)
                .await?;
            check_nodes("get_many", &shown_keys, sent.failures)?;
            let mut values: Vec<Option<Bytes>> = vec![None; keys.len()];
            for (indices, reply) in sent.replies {
                let got: Vec<Option<Bytes>> = reply
                    .extract_error()
                    .and_then(|value| Ok(redis::from_redis_value(value)?))
                    .map_err(|e| classify(e, "get_many", shown_keys(), self.inner.deadline))?;
                for (index, value) in indices.into_iter().zip(got) {
                    values[index] = value;
                }
            }
            if !sent.fallback.is_empty() {
                let fallback = sent.fallback;
                // One key per command: the client follows each key's redirection on its own
                // (a multi-key command in a migrating slot would get `TRYAGAIN`).
                let read = self
                    .run_until(until, "get_many", &shown_keys, |connection| async move {
                        let mut tasks = JoinSet::new();
                        for index in fallback {
                            let cmd = mget(&[index]);
                            let mut connection = connection.clone();
                            tasks.spawn(async move {
                                let got: Vec<Option<Bytes>> =
                                    cmd.query_async(&mut connection).await?;
                                Ok::<_, RedisError>((index, got.into_iter().next().flatten()))
                            });
                        }
                        join_set(tasks).await
                    })
                    .await?;
                for (index, value) in read {
                    values[index] = value;
                }
            }
            Ok(values)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.keyed("delete", key, key_command("UNLINK", key)).await })
    }

    /// One pipeline per node of one `UNLINK` per slot, all sent in parallel; the counts are
    /// summed. Keys whose node redirected (a stale slot map) are unlinked again through the
    /// client's routing. If a node fails, the keys of the other nodes are deleted all the same,
    /// and the error names the node.
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let shown_keys = || shown_many(keys);
            let until = Instant::now() + self.inner.deadline;
            let unlink = |indices: &[usize]| {
                let mut cmd = redis::cmd("UNLINK");
                for &index in indices {
                    cmd.arg(keys[index]);
                }
                cmd
            };
            let sent = self
                .send_per_node("delete_many", keys, true, until, unlink)
                .await?;
            let mut removed = 0;
            for (_, reply) in sent.replies {
                removed += reply
                    .extract_error()
                    .and_then(|value| Ok(redis::from_redis_value::<u64>(value)?))
                    .map_err(|e| classify(e, "delete_many", shown_keys(), self.inner.deadline))?;
            }
            if !sent.fallback.is_empty() {
                let fallback = sent.fallback;
                // One key per command, as in `get_many`.
                removed += self
                    .run_until(until, "delete_many", &shown_keys, |connection| async move {
                        let mut tasks = JoinSet::new();
                        for index in fallback {
                            let cmd = unlink(&[index]);
                            let mut connection = connection.clone();
                            tasks.spawn(
                                async move { cmd.query_async::<u64>(&mut connection).await },
                            );
                        }
                        Ok(join_set(tasks).await?.into_iter().sum::<u64>())
                    })
                    .await?;
            }
            check_nodes("delete_many", &shown_keys, sent.failures)?;
            Ok(removed)
        })
    }

    /// Sweeps every primary of a freshly learned slot map in parallel (`SCAN MATCH` in batches
    /// of 1,000, `UNLINK` per batch) and returns the total removed. The deadline applies to each
    /// round trip. If a primary fails, the others are swept all the same, and the error names it.
    ///
    /// While slots migrate, a key that moves is deleted where it now lives (the `UNLINK` is routed
    /// by slot) and one already gone counts 0, so the total never counts a key twice. As with
    /// `SCAN` on one server, a key written (or migrated) while the sweep runs may be missed.
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let subject = || shown(pattern);
            // A fresh map: the primaries of right now (a replica may just have been promoted).
            let map = match tokio::time::timeout(self.inner.deadline, self.learn_slot_map()).await {
                Ok(Ok(map)) => map,
                Ok(Err(e)) => {
                    return Err(classify(
                        e,
                        "delete_pattern",
                        subject(),
                        self.inner.deadline,
                    ))
                }
                Err(_elapsed) => {
                    return Err(Error::Timeout {
                        operation: "delete_pattern",
                        key: subject(),
                        deadline: self.inner.deadline,
                    })
                }
            };
            let mut tasks = JoinSet::new();
            for node in &map.handles {
                let this = self.clone();
                let node = node.clone();
                let pattern = pattern.to_owned();
                tasks.spawn(async move {
                    let swept = this.sweep(&node, &pattern).await;
                    (format!("{}:{}", node.host, node.port), swept)
                });
            }
            let mut removed = 0;
            let mut failures = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((_, Ok(n))) => removed += n,
                    Ok((node, Err(error))) => failures.push(NodeFailure { node, error }),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => {}
                }
            }
            check_nodes("delete_pattern", &subject, failures)?;
            Ok(removed)
        })
    }
}

impl RedisClusterCacheRepositoryBuilder {
    shared_setters!();

    /// Checks the node addresses and builds the repository; nothing is connected yet.
    pub fn build(self) -> Result<RedisClusterCacheRepository> {
        if self.nodes.is_empty() {
            return Err(Error::InvalidDsn {
                dsn: String::new(),
                reason: "no cluster node address given".to_owned(),
            });
        }
        let mut infos = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            infos.push(check_node(node)?);
        }
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let seed = infos[0].clone().set_tcp_settings(tcp.clone());
        let seeds = infos
            .iter()
            .filter_map(|info| match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect();
        let client = ClusterClientBuilder::new(infos)
            .connection_timeout(self.settings.connect_timeout)
            .response_timeout(self.settings.deadline)
            .overall_response_timeout(Some(self.settings.deadline))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .retry_wait_formula(10, 2)
            .tcp_settings(tcp)
            .build()
            .map_err(|e| Error::InvalidDsn {
                dsn: self
                    .nodes
                    .iter()
                    .map(|n| redact_dsn(n))
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: scrub_all(&e.to_string(), &self.nodes),
            })?;
        Ok(RedisClusterCacheRepository {
            inner: Arc::new(Inner {
                client,
                connection: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                slot_map: RwLock::new(None),
                learning: tokio::sync::Mutex::new(()),
                seed,
                seeds,
                nodes: RwLock::new(HashMap::new()),
                last_refresh_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                generations: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                deadline: self.settings.deadline,
                connect_timeout: self.settings.connect_timeout,
                max_value_bytes: self.settings.max_value_bytes,
                breaker_config: self.settings.breaker,
                client_breaker: CircuitBreaker::new(self.settings.breaker),
                shown_nodes: self.nodes.iter().map(|n| redact_dsn(n)).collect(),
            }),
        })
    }
}

/// Checks one node address: `redis://` or `rediss://` (feature `tls`), with a host.
fn check_node(node: &str) -> Result<redis::ConnectionInfo> {
    let invalid = |reason: String| Error::InvalidDsn {
        dsn: redact_dsn(node),
        reason,
    };
    if node.trim().is_empty() {
        return Err(invalid("the node address is empty".to_owned()));
    }
    let url = url::Url::parse(node).map_err(|e| {
        invalid(format!(
            "not a URL ({e}); expected redis://host:port for each cluster node"
        ))
    })?;
    match url.scheme() {
        "redis" | "valkey" => {}
        "rediss" | "valkeys" if cfg!(feature = "tls") => {}
        "rediss" | "valkeys" => {
            return Err(invalid(format!(
                "`{}://` needs the `tls` feature of impcache",
                url.scheme()
            )))
        }
        "unix" | "redis+unix" => {
            return Err(invalid(
                "cluster nodes are reached over TCP; expected redis://host:port".to_owned(),
            ))
        }
        other => {
            return Err(invalid(format!(
                "unsupported scheme `{other}`; expected redis or rediss"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing".to_owned()));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db != "0" {
        return Err(invalid(format!(
            "a cluster has only database 0, not `{db}`"
        )));
    }
    redis::IntoConnectionInfo::into_connection_info(node)
        .map_err(|e| invalid(scrub_all(&e.to_string(), &[node.to_owned()])))
}

/// Removes every node's password from a message, in case a library echoed it.
fn scrub_all(message: &str, nodes: &[String]) -> String {
    let mut message = message.to_owned();
    for node in nodes {
        if let Ok(url) = url::Url::parse(node) {
            if let Some(password) = url.password().filter(|p| !p.is_empty()) {
                message = message.replace(password, "***");
            }
        }
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn primaries_come_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host-b master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@31005 master,fail - 1426238316232 1426238316232 5 disconnected
824f :0@0 master,noaddr - 0 0 0 disconnected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            parse_primaries(nodes),
            [
                ("127.0.0.1".to_owned(), 30001),
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003)
            ]
        );
    }

    #[test]
    fn key_slots_match_the_redis_crate() {
        // Redis's own examples, then keys with and without hash tags against `redis`'s routing.
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        let mut keys: Vec<String> = (0..5000).map(|i| format!("cache:1:k{i}")).collect();
        keys.extend(["{}x", "a{b}c", "{a}{b}", "x{", "}{y}", "", "{", "{{}}"].map(String::from));
        for key in &keys {
            assert_eq!(
                Slot::new(key_slot(key.as_bytes())),
                Some(Slot::for_key(key.as_bytes())),
                "{key}"
            );
        }
    }

    #[test]
    fn slot_map_comes_from_cluster_slots() {
        use redis::Value::{Array, BulkString, Int};
        let node = |host: &str, port: i64| {
            Array(vec![
                BulkString(host.into()),
                Int(port),
                BulkString(b"id".to_vec()),
            ])
        };
        let reply = Array(vec![
            Array(vec![
                Int(0),
                Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7000),
            ]),
            Array(vec![Int(5461), Int(10922), node("10.0.0.2", 7000)]),
            Array(vec![Int(10923), Int(16000), node("10.0.0.1", 7000)]),
            Array(vec![Int(16001), Int(16383), node("?", 7000)]),
            Int(3),
        ]);
        let map = SlotMap::parse(&reply);
        assert_eq!(
            map.nodes,
            [("10.0.0.1".to_owned(), 7000), ("10.0.0.2".to_owned(), 7000)]
        );
        assert_eq!(map.owner(0), Some(0));
        assert_eq!(map.owner(5461), Some(1));
        assert_eq!(map.owner(16000), Some(0));
        assert_eq!(map.owner(16001), None);
        assert_eq!(map.owner(16383), None);
        assert_eq!(SlotMap::parse(&redis::Value::Nil).owner(0), None);
    }

    #[test]
    fn node_addresses_are_checked() {
        for bad in [
            "",
            "http://h:1",
            "unix:///tmp/s.sock",
            "redis://h:1/3",
            "redis://",
        ] {
            let err = RedisClusterCacheRepository::new([bad]).unwrap_err();
            assert!(matches!(err, Error::InvalidDsn { .. }), "{bad}: {err}");
        }
        assert!(RedisClusterCacheRepository::new(Vec::<String>::new()).is_err());
        let err = RedisClusterCacheRepository::new(["redis://:s3cret@h:1/9"]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(RedisClusterCacheRepository::new(["redis://h:1", "redis://h:2/0"]).is_ok());
    }
}
