//! The near cache's tracking connections: one dedicated RESP3 connection per server (per primary
//! on Cluster) subscribed with `CLIENT TRACKING ON BCAST PREFIX {key_prefix}:`, checked with a
//! `PING` every heartbeat. Invalidations pushed on it reach the [`Store`] from the connection's
//! own reader (no channel, no task in between).
//!
//! The task ends with the store (it holds it weakly) or with the runtime that spawned it; a later
//! operation in a runtime starts it again.
//!
//! A server refusing what tracking needs (`CLIENT TRACKING`, the `PING`s) turns the near cache
//! off for good ([`Store::unsupported`], one `warn!`). Any other failure to connect (unreachable,
//! a full client table, a login refused after a password change) is tried again, the pause
//! doubling with each failure in a row ([`Failures`]); the fifth in a row is logged once, and so
//! is the connection's return.

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

/// The pause before reconnecting after a lost connection or a first failure: the heartbeat, at
/// most this.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two attempts to connect, however many failed in a row.
const LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// The failures in a row after which they are logged (once, `warn!`).
const WARN_AFTER: u32 = 5;

/// Why subscribing failed.
enum Failure {
    /// The server refuses tracking (`CLIENT` renamed, `ERR` on `TRACKING`, no RESP3, an ACL
    /// forbidding `CLIENT` or `PING`): for good.
    Refused(String),
    /// Unreachable, timed out, reset, a full client table, a login refused (`WRONGPASS`,
    /// `NOAUTH`: a password can be fixed on the server): try again. Why, for the log.
    Transient(String),
}

impl From<redis::RedisError> for Failure {
    fn from(error: redis::RedisError) -> Failure {
        match refusal(&error) {
            Some(why) => Failure::Refused(why),
            None => Failure::Transient(error.to_string()),
        }
    }
}

/// Why `error` means the server refuses for good a command tracking needs (`CLIENT TRACKING`,
/// `PING`): `ERR` (an unknown or renamed command or subcommand), `NOPROTO` (no RESP3), `NOPERM`
/// (an ACL forbids it), or a server without `HELLO` at all (the `redis` crate's
/// `RESP3NotSupported`). `None` for anything else (I/O, a timeout, `LOADING`, `MASTERDOWN`, a
/// full client table, a refused login, ...), which may pass.
pub(super) fn refusal(error: &redis::RedisError) -> Option<String> {
    let full = error
        .detail()
        .is_some_and(|detail| detail.starts_with("max number of clients"));
    let refused = matches!(error.code(), Some("ERR" | "NOPROTO" | "NOPERM")) && !full;
    (refused || error.kind() == redis::ErrorKind::RESP3NotSupported).then(|| error.to_string())
}

/// The failures in a row to connect the tracking connection(s): the pause before the next
/// attempt doubles with each (from the heartbeat, at most [`FIRST_PAUSE`], up to
/// [`LONGEST_PAUSE`]); the [`WARN_AFTER`]th is logged once (`warn!`, with its cause), and the
/// connection's return after it (`info!`).
#[derive(Debug, Default)]
struct Failures {
    in_a_row: u32,
    warned: bool,
}

impl Failures {
    /// An attempt failed, because of `why`.
    fn failed(&mut self, why: &str) {
        self.in_a_row = self.in_a_row.saturating_add(1);
        if self.in_a_row == WARN_AFTER {
            self.warned = true;
            tracing::warn!(
                target: "impcache",
                attempts = self.in_a_row,
                cause = why,
                "near cache tracking connection keeps failing: nothing is served locally until it is back"
            );
        }
    }

    /// An attempt succeeded: the count starts again.
    fn succeeded(&mut self) {
        if self.warned {
            tracing::info!(
                target: "impcache",
                failed_attempts = self.in_a_row,
                "near cache tracking connection back"
            );
        }
        *self = Failures::default();
    }

    /// The pause before the next attempt.
    fn pause(&self, heartbeat: Duration) -> Duration {
        let doublings = self.in_a_row.saturating_sub(1).min(16);
        heartbeat
            .min(FIRST_PAUSE)
            .saturating_mul(1 << doublings)
            .min(LONGEST_PAUSE)
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
                let primary = repository.current_primary().await.ok_or_else(|| {
                    Failure::Transient("no primary known to the Sentinels".to_owned())
                })?;
                let identity = addresses(std::slice::from_ref(&primary));
                Ok((vec![primary], identity))
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(repository) => {
                let (primaries, map) = repository
                    .current_primaries()
                    .await
                    .filter(|(primaries, _)| !primaries.is_empty())
                    .ok_or_else(|| Failure::Transient("no Cluster slot map known".to_owned()))?;
                let mut identity = addresses(&primaries);
                identity.push(format!("slot map {map:x}"));
                Ok((primaries, identity))
            }
        }
    }

    /// Has the repository tell `store` of each switch to another primary as it makes it
    /// (Sentinel): the store stops serving locally at once and wakes the tracker, which
    /// subscribes again on the new primary. Without it the tracker noticed the new primary at
    /// its next heartbeat, and until then local hits served values already changed on the new
    /// primary by other clients (the old one, still writable, sends no invalidation for them).
    pub(crate) fn follow_switches(&self, _store: &Arc<Store>) {
        #[cfg(feature = "sentinel")]
        if let Target::Sentinel(repository) = self {
            let listener: Weak<Store> = Arc::downgrade(_store);
            repository.on_primary_switch(listener);
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
    let Some(switched) = store.upgrade().map(|store| Arc::clone(&store.switched)) else {
        return;
    };
    let mut session = 0;
    let mut failures = Failures::default();
    loop {
        // Gone, or turned off for good (a `PING` refused while it was active).
        let Some(heartbeat) = store
            .upgrade()
            .filter(|store| !store.is_unsupported())
            .map(|store| store.heartbeat)
        else {
            return;
        };
        session += 1;
        match subscribe(&store, &target, &prefix, session, heartbeat).await {
            Ok((connections, servers)) => {
                failures.succeeded();
                let Some(strong) = store.upgrade() else {
                    return;
                };
                strong.activate(session, connections.clone());
                drop(strong);
                tracing::debug!(target: "impcache", servers = ?servers, "near cache active");
                let ended = watch(&store, &target, connections, &servers, heartbeat, &switched);
                let ended = ended.await;
                let Some(strong) = store.upgrade() else {
                    return;
                };
                strong.lost(session);
                tracing::debug!(target: "impcache", "near cache tracking lost; flushed");
                // Subscribed again at once, on the new primary: nothing is served locally
                // until then.
                if ended == Ended::Switched {
                    continue;
                }
            }
            Err(Failure::Refused(why)) => {
                if let Some(store) = store.upgrade() {
                    store.unsupported(&format!("tracking refused: {why}"));
                }
                return;
            }
            Err(Failure::Transient(why)) => {
                tracing::debug!(target: "impcache", cause = why, "near cache tracking connection failed");
                if let Some(store) = store.upgrade() {
                    store.handshake_ended();
                }
                failures.failed(&why);
            }
        }
        // A switch of primary ends the pause: the new one is tracked at once (the pause after
        // failures to reach the dead primary grows to 5 s).
        tokio::select! {
            () = switched.notified() => {}
            () = tokio::time::sleep(failures.pause(heartbeat)) => {}
        }
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
    // The heartbeat and the reads' barrier need `PING`: an ACL forbidding it (`NOPERM`) is a
    // refusal, found here rather than by a flush at every heartbeat.
    redis::cmd("PING")
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

/// A `PING` on a tracking connection (the heartbeat's, or a read's barrier): whether it was
/// answered within `within`. One the server refuses for good (an ACL changed to forbid it) turns
/// the near cache off ([`Store::unsupported`]); the tracking task then ends.
pub(super) async fn pinged(
    store: &Store,
    connection: &mut MultiplexedConnection,
    within: Duration,
) -> bool {
    let command = redis::cmd("PING");
    match tokio::time::timeout(within, command.query_async::<()>(connection)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            if let Some(why) = refusal(&error) {
                store.unsupported(&format!("PING refused on the tracking connection: {why}"));
            }
            false
        }
        Err(_) => false,
    }
}

/// Why [`watch`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// At a heartbeat: a connection stopped answering, the store stopped being active, or the
    /// servers changed.
    AtHeartbeat,
    /// The repository switched to another primary (it told the store, which stopped serving
    /// locally then).
    Switched,
}

/// Returns when a connection stops answering, the store stops being active (a `Disconnection`
/// push), or the servers changed: at once when the repository tells of its switch to another
/// primary (`switched`, see [`Target::follow_switches`]), else at the heartbeat's check (a
/// failover, a new slot map).
async fn watch(
    store: &Weak<Store>,
    target: &Target,
    mut connections: Vec<MultiplexedConnection>,
    servers: &[String],
    heartbeat: Duration,
    switched: &tokio::sync::Notify,
) -> Ended {
    loop {
        tokio::select! {
            biased;
            () = switched.notified() => {
                // Unless the tracker subscribed to the new primary already (the switch came
                // while it was not watching, and left its notice): no second flush for it.
                match target.servers().await {
                    Ok((_, now)) if now == servers => continue,
                    _ => return Ended::Switched,
                }
            }
            () = tokio::time::sleep(heartbeat) => {}
        }
        // Held only through this round of `PING`s (each within a heartbeat).
        let Some(strong) = store
            .upgrade()
            .filter(|store| store.status() == super::NearCacheStatus::Active)
        else {
            return Ended::AtHeartbeat;
        };
        for connection in &mut connections {
            if !pinged(&strong, connection, heartbeat).await {
                return Ended::AtHeartbeat;
            }
        }
        drop(strong);
        if target.moves() {
            if let Ok((_, now)) = target.servers().await {
                if now != servers {
                    return Ended::AtHeartbeat;
                }
            }
        }
    }
}
