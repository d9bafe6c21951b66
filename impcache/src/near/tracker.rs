//! The near cache's tracking connections: one dedicated RESP3 connection per server (per primary
//! on Cluster) subscribed with `CLIENT TRACKING ON BCAST PREFIX {key_prefix}:`, checked with a
//! `PING` every heartbeat. Invalidations pushed on it reach the [`Store`] from the connection's
//! own reader (no channel, no task in between).
//!
//! A tracking session is one set of servers, as the repository names them (`CLUSTER SLOTS` on
//! Cluster). Each server's connection is handed to the store as it is subscribed, and taken back
//! when it is lost (its end read, its heartbeat `PING` unanswered): on Cluster each vouches for
//! its primary's slots only (`coverage.rs`), so one primary without a connection takes only its
//! own keys out of the near cache, and the heartbeat tries it again. The session ends when no
//! server is left, or when the servers change (a switch the repository tells of as it makes it,
//! or one the heartbeat finds); the next one begins at once after a change, after a pause after
//! a loss.
//!
//! The task ends with the store (it holds it weakly) or with the runtime that spawned it; a later
//! operation in a runtime starts it again.
//!
//! A server refusing what tracking needs (`CLIENT TRACKING`, the `PING`s) turns the near cache
//! off for good ([`Store::unsupported`], one `warn!`). Any other failure to connect (unreachable,
//! a full client table, a login refused after a password change) is tried again, the pause
//! doubling with each failure in a row ([`Failures`]); the fifth in a row is logged once, and so
//! is the connection's return. On Cluster, a primary left without a connection while others have
//! theirs is logged once (`warn!`), and so is its return (`info!`).

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
/// The shortest pause between two asks whether the repository's periodic recheck is due (one
/// not started, as when another caller's lookup is under way, is asked for again this soon).
#[cfg(feature = "sentinel")]
const SHORTEST_RECHECK_PAUSE: Duration = Duration::from_millis(20);
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

/// A server to track: its connection settings and, on Cluster, the slots it serves (its tracking
/// connection vouches for their keys only; elsewhere, for every key).
#[derive(Debug)]
struct Server {
    info: ConnectionInfo,
    slots: Vec<u16>,
}

/// The servers the repository names now, and what identifies them (their addresses; on
/// Cluster also the slot map's fingerprint): a change of it flushes.
#[derive(Debug)]
struct Named {
    servers: Vec<Server>,
    identity: Vec<String>,
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
    /// barrier included, waits no longer (`Store::settle`), and a heartbeat `PING` unanswered
    /// within it (if shorter than the heartbeat) counts as a lost connection.
    pub(crate) fn deadline(&self) -> Duration {
        match self {
            Target::Single(repository) => repository.deadline(),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(repository) => repository.deadline(),
            #[cfg(feature = "cluster")]
            Target::Cluster(repository) => repository.deadline(),
        }
    }

    /// On Cluster, a key's slot: each primary's tracking connection vouches for the keys of its
    /// own slots (`coverage.rs`). `None` elsewhere.
    pub(crate) fn slot_of(&self) -> Option<fn(&[u8]) -> u16> {
        match self {
            #[cfg(feature = "cluster")]
            Target::Cluster(_) => Some(crate::RedisClusterCacheRepository::slot_of),
            _ => None,
        }
    }

    /// The servers to track now.
    async fn servers(&self) -> Result<Named, Failure> {
        let whole = |info: ConnectionInfo| Server {
            info,
            slots: Vec::new(),
        };
        let named = |servers: Vec<Server>| {
            let identity = servers
                .iter()
                .map(|server| server.info.addr().to_string())
                .collect();
            Named { servers, identity }
        };
        match self {
            Target::Single(repository) => Ok(named(vec![whole(repository.connection_info())])),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(repository) => {
                let primary = repository.current_primary().await.ok_or_else(|| {
                    Failure::Transient("no primary known to the Sentinels".to_owned())
                })?;
                Ok(named(vec![whole(primary)]))
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(repository) => {
                let (primaries, map) = repository
                    .current_primaries()
                    .await
                    .filter(|(primaries, _)| !primaries.is_empty())
                    .ok_or_else(|| Failure::Transient("no Cluster slot map known".to_owned()))?;
                let servers = primaries
                    .into_iter()
                    .map(|(info, slots)| Server { info, slots })
                    .collect();
                let mut named = named(servers);
                named.identity.push(format!("slot map {map:x}"));
                Ok(named)
            }
        }
    }

    /// Has the repository tell `store` of each switch to other servers as it makes it (a
    /// Sentinel failover; on Cluster, a slot map learned that says something else, or a
    /// `MOVED`): the store stops serving locally at once and wakes the tracker, which subscribes
    /// again on the new servers. Without it the tracker noticed the new servers at its next
    /// heartbeat, and until then local hits served values already changed on them by other
    /// clients (the old servers send no invalidation for them).
    pub(crate) fn follow_switches(&self, _store: &Arc<Store>) {
        #[cfg(any(feature = "sentinel", feature = "cluster"))]
        let listener = || -> Weak<dyn crate::repository::switches::SwitchListener> {
            let listener: Weak<Store> = Arc::downgrade(_store);
            listener
        };
        match self {
            #[cfg(feature = "sentinel")]
            Target::Sentinel(repository) => repository.on_switch(listener()),
            #[cfg(feature = "cluster")]
            Target::Cluster(repository) => repository.on_switch(listener()),
            Target::Single(_) => {}
        }
    }

    /// Runs the repository's periodic check of where its servers are, for as long as it is
    /// polled (the tracker's session): Sentinel's recheck (`recheck_every`), which otherwise runs
    /// only when an operation calls the repository. Local hits call nothing, so a failover whose
    /// announcement was missed (announcements off, a Sentinel that cannot be subscribed to, the
    /// subscription lost) went unnoticed while every read was local: the old value was served
    /// until Sentinel demoted the old primary (found by a probe: 8 to 11 s with a 5 s
    /// heartbeat). A switch it finds flushes through [`Target::follow_switches`]. Ends only once
    /// `store` is dropped (the `Cache` is gone: no lookup more, rather than until the tracker's
    /// next heartbeat, which may be long); without a recheck (`recheck_every(None)`, another
    /// repository) it does nothing.
    async fn rechecks(&self, store: &Weak<Store>) {
        #[cfg(feature = "sentinel")]
        if let Target::Sentinel(repository) = self {
            loop {
                if store.strong_count() == 0 {
                    return;
                }
                let Some(due) = repository.recheck() else {
                    break;
                };
                tokio::time::sleep(due.max(SHORTEST_RECHECK_PAUSE)).await;
            }
        }
        let _ = store;
        std::future::pending().await
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
            Ok(Some(named)) => {
                failures.succeeded();
                tracing::debug!(target: "impcache", servers = ?named.identity, "near cache active");
                let watched = watch(&store, &target, &prefix, session, &named, heartbeat);
                // The repository's own check of its servers runs meanwhile, whatever the reads.
                let ended = tokio::select! {
                    ended = watched => ended,
                    // Only once the store is gone.
                    () = target.rechecks(&store) => return,
                };
                let Some(strong) = store.upgrade() else {
                    return;
                };
                strong.lost(session);
                tracing::debug!(target: "impcache", "near cache tracking lost; flushed");
                // Subscribed again at once, on the new servers: nothing is served locally
                // until then.
                if ended == Ended::Switched {
                    continue;
                }
            }
            // The session ended while it subscribed (a switch, whose notice ends the pause
            // below at once; or the loss of what it had subscribed).
            Ok(None) => {}
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
        // A switch of servers ends the pause: the new ones are tracked at once (the pause after
        // failures to reach a dead primary grows to 5 s); so does the store's drop, after which
        // the loop ends.
        tokio::select! {
            () = switched.notified() => {}
            () = tokio::time::sleep(failures.pause(heartbeat)) => {}
        }
    }
}

/// Begins tracking session `session` on the servers the repository names now, and connects
/// and subscribes their tracking connections, all at once (each within `timeout`): the store
/// serves the keys of each from the moment it is subscribed. `None` when the session ended
/// meanwhile (a switch to other servers); a failure when no server could be subscribed, or one
/// refuses tracking. On Cluster, primaries that could not be subscribed while others were are
/// left to the heartbeat, which tries them again ([`watch`]).
async fn subscribe(
    store: &Weak<Store>,
    target: &Target,
    prefix: &Arc<str>,
    session: u64,
    timeout: Duration,
) -> Result<Option<Named>, Failure> {
    let named = target.servers().await?;
    let Some(strong) = store.upgrade() else {
        return Ok(None);
    };
    let slots = named.servers.iter().map(|server| server.slots.clone());
    strong.begin(session, slots.collect());
    drop(strong);
    let attached = named.servers.iter().enumerate().map(|(index, server)| {
        let store = store.clone();
        let info = server.info.clone();
        attach(store, info, Arc::clone(prefix), session, index, timeout)
    });
    let attached = futures_util::future::join_all(attached).await;
    let mut failure = None;
    for (server, outcome) in named.servers.iter().zip(attached) {
        match outcome {
            Ok(_) => {}
            Err(Failure::Refused(why)) => return Err(Failure::Refused(why)),
            Err(Failure::Transient(why)) => {
                tracing::debug!(target: "impcache", server = %server.info.addr(), cause = why, "near cache tracking connection failed");
                failure.get_or_insert(why);
            }
        }
    }
    let Some(strong) = store.upgrade() else {
        return Ok(None);
    };
    let connections = strong.connections(session);
    if connections.is_empty() {
        return Ok(None);
    }
    if !strong.active() {
        return Err(Failure::Transient(failure.unwrap_or_default()));
    }
    for (server, connection) in named.servers.iter().zip(&connections) {
        if connection.is_none() {
            untracked(server);
        }
    }
    Ok(Some(named))
}

/// Connects and subscribes the tracking connection of server `index` of session `session` and
/// hands it to the store, which serves the server's keys from then on: whether it took it (not
/// when the session ended meanwhile, or the server was up already).
async fn attach(
    store: Weak<Store>,
    server: ConnectionInfo,
    prefix: Arc<str>,
    session: u64,
    index: usize,
    timeout: Duration,
) -> Result<bool, Failure> {
    let pushed = store.clone();
    let connection = connect(server, pushed, &prefix, session, index, timeout).await?;
    Ok(store
        .upgrade()
        .is_some_and(|store| store.attach(session, index, connection)))
}

/// Logged when a server is left without a tracking connection while others have theirs (a
/// Cluster primary dead, unreachable or silent).
fn untracked(server: &Server) {
    tracing::warn!(
        target: "impcache",
        server = %server.info.addr(),
        "near cache: no tracking connection to this Cluster primary; its keys are read from Redis until it is back (tried at every heartbeat)"
    );
}

async fn connect(
    server: ConnectionInfo,
    store: Weak<Store>,
    prefix: &str,
    session: u64,
    index: usize,
    timeout: Duration,
) -> Result<MultiplexedConnection, Failure> {
    let settings = server
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(server.set_redis_settings(settings))?;
    let pushed = move |push: PushInfo| -> Result<(), ()> {
        if let Some(store) = store.upgrade() {
            on_push(&store, session, index, push);
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

/// An invalidation (keys, or null: everything), or the end of the tracking connection of server
/// `index` of session `session`.
fn on_push(store: &Store, session: u64, index: usize, push: PushInfo) {
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
        PushKind::Disconnection => {
            store.detach(session, index);
        }
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
    /// At a heartbeat: no server's tracking connection is left, or the store stopped being
    /// active.
    AtHeartbeat,
    /// The servers changed: the repository switched to others (it told the store, which
    /// stopped serving locally then), or the heartbeat found them changed (a failover, a new
    /// slot map).
    Switched,
}

/// Watches session `session` on `named`'s servers until its servers change or none is left:
/// at once when the repository tells of its switch to other servers (the `switched` notice, see
/// [`Target::follow_switches`]), else at a heartbeat. Each heartbeat, all at once: a `PING` on
/// each server's tracking connection (one unanswered within the heartbeat, or the repository's
/// deadline if shorter, takes that server's keys out of the near cache at once: `Store::detach`),
/// a new connection tried for each server that has none (on Cluster, while others have theirs),
/// and the servers asked afresh (on Cluster, the slot map). The `PING`s do not hold up the
/// question: a frozen primary's unanswered `PING` delayed the slot map's check by a whole
/// heartbeat, while its promoted replica took writes the near cache did not see.
async fn watch(
    store: &Weak<Store>,
    target: &Target,
    prefix: &Arc<str>,
    session: u64,
    named: &Named,
    heartbeat: Duration,
) -> Ended {
    let within = heartbeat.min(target.deadline());
    let Some(switched) = store.upgrade().map(|store| Arc::clone(&store.switched)) else {
        return Ended::AtHeartbeat;
    };
    loop {
        tokio::select! {
            biased;
            () = switched.notified() => {
                // The store dropped (`impl Drop for Store`): the session ends with it.
                if store.strong_count() == 0 {
                    return Ended::AtHeartbeat;
                }
                // Unless the store still serves the servers the tracker subscribed to (a notice
                // left while it subscribed, of the switch it subscribed after): no second flush.
                let serving = store.upgrade().is_some_and(|store| store.active());
                match target.servers().await {
                    Ok(now) if serving && now.identity == named.identity => continue,
                    _ => return Ended::Switched,
                }
            }
            () = tokio::time::sleep(heartbeat) => {}
        }
        // Held only through this heartbeat's checks (each within a heartbeat).
        let Some(strong) = store.upgrade().filter(|store| store.active()) else {
            return Ended::AtHeartbeat;
        };
        let connections = strong.connections(session);
        let mut pings = Vec::new();
        for ((index, server), connection) in named.servers.iter().enumerate().zip(connections) {
            match connection {
                Some(connection) => {
                    pings.push(check(&strong, session, index, server, connection, within))
                }
                None => retry(store, server, prefix, session, index, heartbeat),
            }
        }
        let changed = async {
            target.moves()
                && matches!(target.servers().await, Ok(now) if now.identity != named.identity)
        };
        let pings = futures_util::future::join_all(pings);
        let (_, changed) = futures_util::future::join(pings, changed).await;
        if changed {
            return Ended::Switched;
        }
        if !strong.active() {
            return Ended::AtHeartbeat;
        }
    }
}

/// A heartbeat's `PING` on the tracking connection of server `index`: unanswered within
/// `within`, the server's keys stop being served locally ([`Store::detach`]).
async fn check(
    store: &Store,
    session: u64,
    index: usize,
    server: &Server,
    mut connection: MultiplexedConnection,
    within: Duration,
) {
    if !pinged(store, &mut connection, within).await
        && store.detach(session, index)
        && store.active()
    {
        untracked(server);
    }
}

/// Tries again, in the background, to connect and subscribe the tracking connection of server
/// `index` (within `timeout`, the heartbeat, so one attempt ends before the next heartbeat's
/// starts): once it is, the server's keys join the near cache again.
fn retry(
    store: &Weak<Store>,
    server: &Server,
    prefix: &Arc<str>,
    session: u64,
    index: usize,
    timeout: Duration,
) {
    let (store, info, prefix) = (store.clone(), server.info.clone(), Arc::clone(prefix));
    let address = info.addr().to_string();
    tokio::spawn(async move {
        match attach(store.clone(), info, prefix, session, index, timeout).await {
            Ok(true) => tracing::info!(
                target: "impcache",
                server = address,
                "near cache tracking connection back: this Cluster primary's keys are served locally again"
            ),
            Ok(false) => {}
            Err(Failure::Refused(why)) => {
                if let Some(store) = store.upgrade() {
                    store.unsupported(&format!("tracking refused: {why}"));
                }
            }
            Err(Failure::Transient(why)) => {
                tracing::debug!(target: "impcache", server = address, cause = why, "near cache tracking connection failed");
            }
        }
    });
}
