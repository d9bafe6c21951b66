//! The near cache's tracking connections: one dedicated RESP3 connection per server (per primary
//! on Cluster) subscribed with `CLIENT TRACKING ON BCAST PREFIX {key_prefix}:`, checked with a
//! `PING` every heartbeat. Invalidations pushed on it reach the [`Store`] from the connection's
//! own reader (no channel, no task in between).
//!
//! The task ends with the store (it holds it weakly) or with the runtime that spawned it; a later
//! operation in a runtime starts it again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};

use super::Store;

/// Where the tracking connections go.
#[derive(Debug)]
pub(crate) enum Target {
    /// One server (`RedisCacheRepository`).
    Single(crate::RedisCacheRepository),
    /// The primary Sentinel names (`RedisSentinelCacheRepository`): a change of primary flushes.
    #[cfg(feature = "sentinel")]
    Sentinel(crate::RedisSentinelCacheRepository),
    /// Every primary of the Cluster (`RedisClusterCacheRepository`): a new slot map flushes.
    #[cfg(feature = "cluster")]
    Cluster(crate::RedisClusterCacheRepository),
}

/// Why subscribing failed.
enum Failure {
    /// The server refuses tracking (`CLIENT` renamed, `ERR` on `TRACKING`, no RESP3, an ACL
    /// forbidding it): for good.
    Refused(String),
    /// Unreachable, timed out, reset: try again.
    Transient,
}

impl From<redis::RedisError> for Failure {
    fn from(error: redis::RedisError) -> Failure {
        // The server refusing the commands themselves: `ERR` (an unknown or renamed command or
        // subcommand), `NOPROTO` (no RESP3), `NOPERM` (an ACL forbids them), or a server without
        // `HELLO` at all (the `redis` crate's `RESP3NotSupported`). Anything else (I/O, a
        // timeout, `LOADING`, `MASTERDOWN`, a full client table, ...) may pass.
        let full = error
            .detail()
            .is_some_and(|detail| detail.starts_with("max number of clients"));
        let refused = matches!(error.code(), Some("ERR" | "NOPROTO" | "NOPERM")) && !full;
        if refused || error.kind() == redis::ErrorKind::RESP3NotSupported {
            Failure::Refused(error.to_string())
        } else {
            Failure::Transient
        }
    }
}

impl Target {
    /// The target of a Sentinel or Cluster repository (seen through its `as_any`).
    pub(crate) fn of(repository: Option<&dyn std::any::Any>) -> Option<Target> {
        let _repository = repository?;
        #[cfg(feature = "sentinel")]
        if let Some(sentinel) = _repository.downcast_ref::<crate::RedisSentinelCacheRepository>() {
            return Some(Target::Sentinel(sentinel.clone()));
        }
        #[cfg(feature = "cluster")]
        if let Some(cluster) = _repository.downcast_ref::<crate::RedisClusterCacheRepository>() {
            return Some(Target::Cluster(cluster.clone()));
        }
        None
    }

    /// The deadline of one call to the repository tracked: a read through the near cache,
    /// barrier included, waits no longer (`Store::settle`).
    pub(crate) fn deadline(&self) -> Duration {
        match self {
            Target::Single(repository) => repository.deadline(),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(repository) => repository.deadline(),
            #[cfg(feature = "cluster")]
            Target::Cluster(repository) => repository.deadline(),
        }
    }

    /// The servers to track now, and what identifies them (their addresses; on Cluster also
    /// the slot map's identity): a change of it flushes.
    async fn servers(&self) -> Result<(Vec<ConnectionInfo>, Vec<String>), Failure> {
        let addresses = |servers: &[ConnectionInfo]| -> Vec<String> {
            servers.iter().map(|info| info.addr().to_string()).collect()
        };
        match self {
            Target::Single(repository) => {
                let info = repository.connection_info();
                let identity = addresses(std::slice::from_ref(&info));
                Ok((vec![info], identity))
            }
            #[cfg(feature = "sentinel")]
            Target::Sentinel(repository) => {
                let primary = repository
                    .current_primary()
                    .await
                    .ok_or(Failure::Transient)?;
                let identity = addresses(std::slice::from_ref(&primary));
                Ok((vec![primary], identity))
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(repository) => {
                let (primaries, map) = repository
                    .current_primaries()
                    .await
                    .filter(|(primaries, _)| !primaries.is_empty())
                    .ok_or(Failure::Transient)?;
                let mut identity = addresses(&primaries);
                identity.push(format!("slot map {map:x}"));
                Ok((primaries, identity))
            }
        }
    }

    /// Whether the servers can change under the repository (a failover, a new slot map).
    fn moves(&self) -> bool {
        !matches!(self, Target::Single(_))
    }
}

/// Starts the tracking task for `store` if none runs and a tokio runtime is current.
pub(crate) fn start(store: &Arc<Store>, target: &Arc<Target>, prefix: &Arc<str>) {
    if store.is_unsupported() || store.tracking.load(Ordering::Relaxed) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if store.tracking.swap(true, Ordering::SeqCst) {
        return;
    }
    let one_thread = runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread;
    store.one_thread.store(one_thread, Ordering::Relaxed);
    runtime.spawn(run(
        Arc::downgrade(store),
        Arc::clone(target),
        Arc::clone(prefix),
    ));
}

/// Marks the task gone when it ends (its runtime shut down, or the store dropped): nothing is
/// served locally without it.
struct Running(Weak<Store>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(store) = self.0.upgrade() {
            store.disconnect();
            store.tracking.store(false, Ordering::SeqCst);
        }
    }
}

async fn run(store: Weak<Store>, target: Arc<Target>, prefix: Arc<str>) {
    let _running = Running(store.clone());
    let mut session = 0;
    loop {
        let Some(heartbeat) = store.upgrade().map(|store| store.heartbeat) else {
            return;
        };
        session += 1;
        match subscribe(&store, &target, &prefix, session, heartbeat).await {
            Ok((connections, servers)) => {
                let Some(strong) = store.upgrade() else {
                    return;
                };
                strong.activate(session, connections.clone());
                drop(strong);
                tracing::debug!(target: "impcache", servers = ?servers, "near cache active");
                watch(&store, &target, connections, &servers, heartbeat).await;
                let Some(strong) = store.upgrade() else {
                    return;
                };
                strong.lost(session);
                tracing::debug!(target: "impcache", "near cache tracking lost; flushed");
            }
            Err(Failure::Refused(why)) => {
                if let Some(store) = store.upgrade() {
                    store.unsupported(&format!("CLIENT TRACKING refused: {why}"));
                }
                return;
            }
            Err(Failure::Transient) => {
                if let Some(store) = store.upgrade() {
                    store.handshake_ended();
                }
            }
        }
        tokio::time::sleep(heartbeat.min(Duration::from_millis(200))).await;
    }
}

/// Connects and subscribes one tracking connection per server.
async fn subscribe(
    store: &Weak<Store>,
    target: &Target,
    prefix: &str,
    session: u64,
    timeout: Duration,
) -> Result<(Vec<MultiplexedConnection>, Vec<String>), Failure> {
    let (servers, identity) = target.servers().await?;
    let mut connections = Vec::with_capacity(servers.len());
    for server in servers {
        connections.push(connect(server, store.clone(), prefix, session, timeout).await?);
    }
    Ok((connections, identity))
}

async fn connect(
    server: ConnectionInfo,
    store: Weak<Store>,
    prefix: &str,
    session: u64,
    timeout: Duration,
) -> Result<MultiplexedConnection, Failure> {
    let settings = server
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(server.set_redis_settings(settings))?;
    let pushed = move |push: PushInfo| -> Result<(), ()> {
        if let Some(store) = store.upgrade() {
            on_push(&store, session, push);
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_push_sender(pushed)
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(format!("{prefix}:"))
        .query_async::<()>(&mut connection)
        .await?;
    Ok(connection)
}

/// An invalidation (keys, or null: everything) or the connection's end.
fn on_push(store: &Store, session: u64, push: PushInfo) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    if let Value::BulkString(key) = key {
                        store.invalidated(key);
                    }
                }
            }
            // `FLUSHDB`, `FLUSHALL`, or the server's table overflowing.
            _ => store.flush(),
        },
        PushKind::Disconnection => store.lost(session),
        _ => {}
    }
}

/// Returns when a connection stops answering, the store stops being active (a `Disconnection`
/// push), or the servers changed (failover, new slot map).
async fn watch(
    store: &Weak<Store>,
    target: &Target,
    mut connections: Vec<MultiplexedConnection>,
    servers: &[String],
    heartbeat: Duration,
) {
    loop {
        tokio::time::sleep(heartbeat).await;
        match store.upgrade() {
            Some(store) if store.status() == super::NearCacheStatus::Active => {}
            _ => return,
        }
        for connection in &mut connections {
            let command = redis::cmd("PING");
            let ping = command.query_async::<()>(connection);
            if !matches!(tokio::time::timeout(heartbeat, ping).await, Ok(Ok(()))) {
                return;
            }
        }
        if target.moves() {
            if let Ok((_, now)) = target.servers().await {
                if now != servers {
                    return;
                }
            }
        }
    }
}
