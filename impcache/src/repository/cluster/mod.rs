//! The Redis Cluster repository (feature `cluster`): the `redis` crate's async cluster client, with
//! the same deadline, circuit breaker and fail-open behaviour as [`RedisCacheRepository`].
//!
//! [`RedisCacheRepository`]: crate::RedisCacheRepository
//!
//! One file per job: `topology.rs` (the slot map, a key's slot), `node.rs` (one node's breaker,
//! connection and call), `client.rs` (the call through the cluster client's routing),
//! `fan_out.rs` (multi-key commands per node), `sweep.rs` (`delete_pattern`); the node addresses are checked in
//! `repository/dsn.rs`.

mod client;
mod fan_out;
mod node;
mod sweep;
mod topology;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, RedisError, ServerErrorKind};

use self::node::{is_redirection, Node};
use self::topology::{key_slot, parse_primaries, SlotMap, SLOTS};
use super::breaker::{CircuitBreaker, CircuitBreakerConfig};
use super::call::{require_runtime, Unanswered};
use super::commands::{
    add_member_command, check_value_size, delete_if_equal_command, key_command, mark_tag_command,
    set_command, set_if_equal_command, set_nx_get_command, NxGet,
};
use super::dsn;
use super::failure::{classify, Failed};
use super::settings::{shared_setters, Settings};
use super::switches::{SwitchListener, SwitchListeners};
use super::{set_nx_then_get, BoxFuture, CacheRepository, SetNxOrGet, TagInvalidation, WithTtl};
use crate::error::{shown, Error, Result};
use crate::expire::Expiry;
use crate::progress::DeleteProgress;

/// Retries of the cluster client for one request (redirections, a node being replaced), all
/// within the deadline.
const CLUSTER_RETRIES: u32 = 3;

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
///   nothing for the others'. A key of a migrating slot that its primary sends on (`ASK`) is
///   asked for on the importing primary's direct connection, `ASKING` pipelined with the command.
///   Keys the map cannot place, or whose primary redirects them otherwise, go through the `redis`
///   crate's cluster client (which follows `MOVED`), under a breaker of its own. While a primary
///   fails, the slot map is learned again in the background (at most every 200 ms), so a replica
///   promoted in its place is used as soon as the cluster says so.
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
    /// The connection, its generation and the tokio runtime that opened it (where its driver
    /// task runs); `None` until the first operation and after a reset.
    connection: RwLock<Option<(u64, ClusterConnection, Option<tokio::runtime::Id>)>>,
    /// Held while connecting, so that one connect is in flight at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Which primary serves which slot, learned from `CLUSTER SLOTS`; `None` until the first
    /// operation and after a `MOVED` (learned again by the next operation); replaced in the
    /// background while a node fails.
    slot_map: RwLock<Option<Arc<SlotMap>>>,
    /// Held while an operation learns the slot map, so that the others wait for that one.
    learning: tokio::sync::Mutex<()>,
    /// The [`SlotMap::fingerprint`] of the last map learned (0: none yet): a map learned that
    /// says something else tells `switch_listeners`.
    fingerprint: AtomicU64,
    /// Told of each new slot map (near caches): see [`SwitchListener`].
    switch_listeners: SwitchListeners,
    /// The first configured node's settings (credentials, TLS, protocol): the template of the
    /// direct connections to the primaries.
    seed: redis::ConnectionInfo,
    /// The configured node addresses: where the slot map is learned first.
    seeds: Vec<(String, u16)>,
    /// The primaries of the current slot map (and nodes a redirection named since), by
    /// address, each with its own breaker and direct connection. A node stays across slot maps
    /// while it is a primary, so that its breaker outlives a relearned map.
    nodes: RwLock<HashMap<(String, u16), Arc<Node>>>,
    /// The configured nodes that are no primaries (replicas, dead nodes), asked for the slot
    /// map: each with its direct connection, without a breaker (nor its metrics).
    others: RwLock<HashMap<(String, u16), Arc<Node>>>,
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
    /// A call through the cluster client its caller abandoned, counted as an outage once its
    /// deadline has passed (see [`Unanswered`]).
    client_unanswered: Unanswered,
    /// Whether the servers take `SET .. NX GET` (`set_nx_or_get`): learned from their reply.
    nx_get: NxGet,
    /// The node addresses with passwords replaced: the only form that is ever printed.
    shown_nodes: Vec<String>,
}

/// Configures a [`RedisClusterCacheRepository`].
#[must_use]
pub struct RedisClusterCacheRepositoryBuilder {
    nodes: Vec<String>,
    settings: Settings,
}

impl fmt::Debug for RedisClusterCacheRepositoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| dsn::redact(n)).collect();
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
        S: AsRef<str>,
    {
        Self::builder(nodes).build()
    }

    /// Configures a repository for the cluster reachable at `nodes`.
    pub fn builder<I, S>(nodes: I) -> RedisClusterCacheRepositoryBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RedisClusterCacheRepositoryBuilder {
            nodes: nodes
                .into_iter()
                .map(|dsn| dsn.as_ref().to_owned())
                .collect(),
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
        let until = Instant::now() + self.inner.deadline;
        self.run_until(
            until,
            "primaries",
            &String::new,
            |mut connection| async move {
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
            },
        )
        .await
    }
    /// Runs the one-key command `cmd` on the primary serving `key`'s slot, over its direct
    /// connection and under its own breaker. A key of a migrating slot that its node sends on
    /// (`ASK`) is asked for on the importing node the same way ([`asking`](Self::asking)). A key
    /// the slot map cannot place, or whose node redirects otherwise (`MOVED`, `TRYAGAIN`, a
    /// failover in progress), goes through the cluster client's routing instead, within the same
    /// deadline.
    async fn keyed<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        key: &str,
        cmd: redis::Cmd,
    ) -> Result<T> {
        let subject = || shown(key);
        require_runtime(operation, &subject).map_err(Failed::into_error)?;
        let until = Instant::now() + self.inner.deadline;
        let through_client = |cmd: redis::Cmd| async move {
            let cmd = &cmd;
            self.run_until(until, operation, &subject, |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await
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
        let reply = match reply {
            // A key of a migrating slot not on its old node: asked for on the importing node.
            redis::Value::ServerError(error) if error.kind() == Some(ServerErrorKind::Ask) => {
                self.asking(error, sent, until, operation, &subject).await?
            }
            reply => reply,
        };
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
            .map_err(|e| classify(e, operation, subject(), self.waited(until)))
    }

    /// The reply to `cmd` sent with `ASKING` in front, in one pipeline over the direct
    /// connection of the node an `ASK` reply (`error`) names; the `ASK` itself when it names
    /// none. The cluster client sends the two apart on its shared connection, where another
    /// request can take the `ASKING` first, and the node answers `MOVED` back to the old one:
    /// half of 16 concurrent calls on a migrating slot failed (redis 1.8; found by a probe).
    async fn asking(
        &self,
        error: redis::ServerError,
        cmd: &redis::Cmd,
        until: Instant,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
    ) -> Result<redis::Value> {
        let Some((host, port)) = fan_out::ask_target(error.clone()) else {
            return Ok(redis::Value::ServerError(error));
        };
        let node = self.node(&host, port);
        let mut pipe = redis::Pipeline::with_capacity(2);
        pipe.add_command(redis::cmd("ASKING"))
            .add_command(cmd.clone());
        let pipe = &pipe;
        let replies = self
            .on_node(&node, until, operation, subject, |mut c| async move {
                // The command's reply only, after `ASKING`'s `OK`.
                c.send_packed_commands(pipe, 1, 1).await
            })
            .await?;
        Ok(replies
            .into_iter()
            .next()
            .unwrap_or(redis::Value::ServerError(error)))
    }

    fn check_size(&self, key: &str, value: &Bytes) -> Result<()> {
        check_value_size(key, value.len(), self.inner.max_value_bytes)
    }
}

/// The `tracing` target of the per-node events, at `DEBUG` level: `learned` (a slot map),
/// `pipeline` (one sent to one node: one round trip), `fallback` (keys the map could not serve).
const NODE_EVENTS: &str = "impcache::cluster";

/// The script of [`RedisClusterCacheRepository::get_with_ttl`]: `nil` for a missing key (a Lua
/// table cannot hold one), else `{value, pttl}`.
const GET_WITH_TTL_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if v then return {v, redis.call('PTTL', KEYS[1])} end return false";

impl CacheRepository for RedisClusterCacheRepository {
    /// Itself: a near cache finds the servers to track through it (issue 14).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

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

    /// One `SET .. NX GET`, routed by the key (one key, one slot); on servers that refuse it
    /// (before Redis 7.0: remembered, see `NxGet`), the trait's two calls.
    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        Box::pin(async move {
            self.check_size(key, &value)?;
            let nx_get = &self.inner.nx_get;
            if !nx_get.refused() {
                let cmd = set_nx_get_command(key, &value, expiry);
                match self.keyed::<Option<Bytes>>("set_nx", key, cmd).await {
                    Ok(None) => return Ok(SetNxOrGet::Stored),
                    Ok(found) => return Ok(SetNxOrGet::Taken(found)),
                    Err(error) if nx_get.refuses(&error, &self.inner.shown_nodes.join(",")) => {}
                    Err(error) => return Err(error),
                }
            }
            set_nx_then_get(self, key, value, expiry).await
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
        Box::pin(self.set_many_per_node(entries, expiry))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { self.keyed("get", key, key_command("GET", key)).await })
    }

    /// `GET` and `PTTL` in one command routed by the key: a script (`EVAL`), since the
    /// cluster's keyed path sends one command per call. Atomic, so the TTL is the value's.
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<WithTtl>>> {
        Box::pin(async move {
            let mut cmd = redis::Cmd::with_capacity(4, GET_WITH_TTL_SCRIPT.len() + key.len() + 8);
            cmd.arg("EVAL").arg(GET_WITH_TTL_SCRIPT).arg(1).arg(key);
            let found: Option<(Bytes, i64)> = self.keyed("get", key, cmd).await?;
            Ok(found.map(|(value, pttl)| WithTtl::from_pttl(value, pttl)))
        })
    }

    /// One pipeline per node of one `MGET` per slot, all sent in parallel, reassembled in the
    /// order of `keys`. Keys whose node redirected (a stale slot map) are read again through the
    /// client's routing. If a node fails, the call fails with an error naming it.
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(self.get_many_per_node(keys))
    }

    /// One script per slot (`GET` and `PTTL` of each key), per node in parallel.
    fn get_many_with_ttl<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> Option<BoxFuture<'a, Result<Vec<Option<WithTtl>>>>> {
        Some(Box::pin(self.get_many_with_ttl_per_node(keys)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.keyed("delete", key, key_command("UNLINK", key)).await })
    }

    /// The compare-and-delete script (`EVAL`), routed by the key: one key, one slot.
    fn delete_if_equal<'a>(&'a self, key: &'a str, expected: Bytes) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = delete_if_equal_command(key, &expected);
            let removed: u64 = self.keyed("delete", key, cmd).await?;
            Ok(removed > 0)
        })
    }

    /// The compare-and-set script (`EVAL`), routed by the key: one key, one slot.
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check_size(key, &value)?;
            let cmd = set_if_equal_command(key, &expected, &value, expiry);
            let stored: u64 = self.keyed("set_nx", key, cmd).await?;
            Ok(stored > 0)
        })
    }

    /// The member-list script (`EVAL`), routed by the key: one key, one slot.
    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a str,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _: u64 = self
                .keyed("set", key, add_member_command(key, member, expiry))
                .await?;
            Ok(())
        })
    }

    /// The tag-invalidation script (`EVAL`), routed by the key: one key, one slot.
    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: TagInvalidation,
        at: Bytes,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _: u64 = self
                .keyed("set", key, mark_tag_command(key, kind, &at))
                .await?;
            Ok(())
        })
    }

    /// One pipeline per node of one `UNLINK` per slot, all sent in parallel; the counts are
    /// summed. Keys whose node redirected (a stale slot map) are unlinked again through the
    /// client's routing. If a node fails, the keys of the other nodes are deleted all the same,
    /// and the error names the node.
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.delete_many_per_node(keys))
    }

    /// Sweeps every primary of a freshly learned slot map in parallel (`SCAN MATCH` in batches
    /// of 1,000, `UNLINK` per batch) and returns the total removed. The deadline applies to each
    /// round trip. If a primary fails, the others are swept all the same, and the error names it.
    ///
    /// While slots migrate, a key that moves is deleted where it now lives (the `UNLINK` is routed
    /// by slot) and one already gone counts 0, so the total never counts a key twice. As with
    /// `SCAN` on one server, a key written (or migrated) while the sweep runs may be missed.
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.sweep_primaries(pattern, &mut |_| {}).await })
    }

    /// As `delete_pattern`, the batches of every primary added up as they come.
    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.sweep_primaries(pattern, progress))
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
            infos.push(dsn::cluster_node(node)?);
        }
        self.settings.check(|| dsn::redact_all(&self.nodes))?;
        // The operating system's TCP defaults, as for a single node (BENCHMARKS.md case 1b).
        let tcp = redis::io::tcp::TcpSettings::default();
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
                dsn: dsn::redact_all(&self.nodes),
                reason: dsn::scrub(&e.to_string(), &self.nodes),
            })?;
        let shown_nodes: Vec<String> = self.nodes.iter().map(|n| dsn::redact(n)).collect();
        Ok(RedisClusterCacheRepository {
            inner: Arc::new(Inner {
                client,
                connection: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                slot_map: RwLock::new(None),
                learning: tokio::sync::Mutex::new(()),
                fingerprint: AtomicU64::new(0),
                switch_listeners: SwitchListeners::default(),
                seed,
                seeds,
                nodes: RwLock::new(HashMap::new()),
                others: RwLock::new(HashMap::new()),
                last_refresh_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                generations: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                deadline: self.settings.deadline,
                connect_timeout: self.settings.connect_timeout,
                max_value_bytes: self.settings.max_value_bytes,
                breaker_config: self.settings.breaker,
                client_breaker: CircuitBreaker::new(
                    self.settings.breaker,
                    "cluster",
                    shown_nodes.join(","),
                ),
                client_unanswered: Unanswered::default(),
                nx_get: NxGet::default(),
                shown_nodes,
            }),
        })
    }
}

// --- Near cache (issue 14). ---

impl RedisClusterCacheRepository {
    /// Every primary of the slot map as the Cluster tells it now, each with its connection
    /// settings and the slots it serves, and the map's fingerprint: where a near cache's tracking
    /// connections go, and which keys each vouches for; a map that says something else flushes
    /// the near cache. Asked afresh (`CLUSTER SLOTS`, on each of the near cache's heartbeats),
    /// not read from the map in use: a slot moved to a node this repository was never redirected
    /// to (a node added, then resharded to) changes nothing in that map while reads are served
    /// locally, and the new owner's writes, which no tracking connection sees, went unnoticed
    /// until the local entries' lifetime ended.
    pub(crate) async fn current_primaries(
        &self,
    ) -> Option<(Vec<(redis::ConnectionInfo, Vec<u16>)>, u64)> {
        let learned = async {
            let _learning = self.inner.learning.lock().await;
            self.learn_slot_map().await
        };
        let map = tokio::time::timeout(self.inner.deadline, learned)
            .await
            .ok()?
            .ok()?;
        let mut primaries: Vec<_> = map
            .nodes
            .iter()
            .map(|(host, port)| (self.node_info(host.clone(), *port), Vec::new()))
            .collect();
        for slot in 0..SLOTS {
            if let Some((_, slots)) = map.owner(slot).and_then(|owner| primaries.get_mut(owner)) {
                slots.push(slot);
            }
        }
        Some((primaries, map.fingerprint()))
    }

    /// Tells `listener` of every new slot map from now on, while it lives ([`SwitchListener`]):
    /// one learned that says something else than the one before (a replica promoted, a slot
    /// moved), or a `MOVED` reply that shows the map in use is stale.
    pub(crate) fn on_switch(&self, listener: Weak<dyn SwitchListener>) {
        self.inner.switch_listeners.add(listener);
    }

    /// The Cluster slot of `key` (CRC16 of its hash tag, modulo 16384), as Redis computes it.
    pub(crate) fn slot_of(key: &[u8]) -> u16 {
        key_slot(key)
    }
}
