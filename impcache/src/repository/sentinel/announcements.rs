//! Following the Sentinels' failover announcements (their pub/sub): a background task
//! subscribed to one Sentinel at a time switches to a new primary as soon as Sentinel promotes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use redis::ConnectionInfo;

use super::{Inner, RedisSentinelCacheRepository};

impl RedisSentinelCacheRepository {
    /// Starts the task that follows the Sentinels' announcements, unless it runs (or is off).
    pub(super) fn ensure_watching(&self) {
        if !self.inner.follow_announcements
            || self.inner.watching.load(Ordering::Relaxed)
            || self.inner.watching.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let running = Running(self.inner.watching.clone());
        let task = tokio::spawn(watch(Arc::downgrade(&self.inner), running));
        let mut watcher = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *watcher = Some(task.abort_handle());
    }

    /// Acts on a Sentinel announcement: when it names a new primary of this service, switches to
    /// it as soon as it answers as a primary.
    async fn on_announcement(&self, channel: &str, payload: &str) {
        let words: Vec<&str> = payload.split_whitespace().collect();
        let service = self.inner.service_name.as_str();
        let (host, port) = match (channel, words.as_slice()) {
            // `<name> <old ip> <old port> <new ip> <new port>`
            (SWITCH_MASTER, [name, _, _, host, port]) if *name == service => (*host, *port),
            // `slave <ip>:<port> <ip> <port> @ <name> <primary ip> <primary port>`
            (WAIT_PROMOTION, [_, _, host, port, "@", name, ..]) if *name == service => {
                (*host, *port)
            }
            _ => return,
        };
        let Ok(port) = port.parse::<u16>() else {
            return;
        };
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            host.to_owned(),
            port,
        ))
        .map(|info| info.set_redis_settings(self.inner.node_redis.clone()));
        let Ok(client) = info.and_then(redis::Client::open) else {
            return;
        };
        let address = client.get_connection_info().addr().to_string();
        if self.current().is_some_and(|p| p.address == address) {
            self.renew_announcement(&address);
            return;
        }
        // `SLAVEOF NO ONE` reaches the promoted replica as the announcement reaches us.
        let give_up = Instant::now() + PROMOTION_WAIT;
        while !self.answers_as_primary(&client).await {
            if Instant::now() >= give_up {
                tracing::warn!(
                    service = %self.inner.service_name,
                    announced = %address,
                    "impcache: a Sentinel announced a new primary that does not answer as one"
                );
                return;
            }
            tokio::time::sleep(PROMOTION_POLL).await;
        }
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match self.adopt(
            &mut state,
            client,
            address,
            "Sentinel announces a new primary",
        ) {
            Ok(_) => {
                state.stale = false;
                state.announced_until = Some(Instant::now() + ANNOUNCEMENT_OUTRANKS_LOOKUPS);
            }
            Err(e) => tracing::warn!(
                service = %self.inner.service_name,
                error = %e,
                "impcache: cannot use the primary a Sentinel announced"
            ),
        }
    }

    /// Renews the announcement of the primary in use at `address`.
    fn renew_announcement(&self, address: &str) {
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if state.primary.as_ref().is_some_and(|p| p.address == address) {
            state.announced_until = Some(Instant::now() + ANNOUNCEMENT_OUTRANKS_LOOKUPS);
        }
    }

    /// `true` when the server of `client` answers `ROLE` as a primary within the deadline.
    async fn answers_as_primary(&self, client: &redis::Client) -> bool {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(self.inner.deadline));
        let role = async {
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("ROLE")
                .query_async::<redis::Role>(&mut connection)
                .await
        };
        matches!(
            tokio::time::timeout(self.inner.deadline, role).await,
            Ok(Ok(redis::Role::Primary { .. }))
        )
    }
}

/// Sentinel's announcement that it made another server the primary.
const SWITCH_MASTER: &str = "+switch-master";
/// Sentinel's announcement that it sent `SLAVEOF NO ONE` to the replica it promotes: from then
/// on, what the old primary acknowledges is lost.
const WAIT_PROMOTION: &str = "+failover-state-wait-promotion";
/// How long an announced replica may take to answer as a primary before the announcement is
/// left to `+switch-master` and the periodic check.
const PROMOTION_WAIT: Duration = Duration::from_secs(2);
/// How often an announced replica is asked whether it is a primary yet.
const PROMOTION_POLL: Duration = Duration::from_millis(5);
/// How long an announced primary outranks the Sentinels' answers to lookups: Sentinels learn of a
/// failover from each other within a few seconds (hello messages every 2 s).
const ANNOUNCEMENT_OUTRANKS_LOOKUPS: Duration = Duration::from_secs(5);
/// How often the subscribed Sentinel is pinged, to notice one that stopped answering.
const SENTINEL_PING_EVERY: Duration = Duration::from_secs(1);
/// The pause after no Sentinel could be subscribed to, before trying them all again.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// Clears the repository's `watching` flag when the task that follows announcements ends, or is
/// dropped with its runtime.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Follows the announcements of one Sentinel at a time, moving to the next one when it fails,
/// until the repository is dropped.
async fn watch(inner: Weak<Inner>, _running: Running) {
    let Some(sentinels) = inner.upgrade().map(|i| i.sentinel_infos.clone()) else {
        return;
    };
    let mut next = 0;
    let mut failed_in_a_row = 0;
    let mut followed_before = false;
    loop {
        let Some(info) = sentinels.get(next % sentinels.len().max(1)) else {
            return;
        };
        next += 1;
        match subscribe(&inner, info).await {
            Some((connection, pushes)) => {
                failed_in_a_row = 0;
                // An announcement may have been missed while no Sentinel was followed.
                if followed_before {
                    if let Some(inner) = inner.upgrade() {
                        let repository = RedisSentinelCacheRepository { inner };
                        let deadline = repository.inner.deadline;
                        let _ = tokio::time::timeout(deadline, repository.lookup(false)).await;
                    }
                }
                followed_before = true;
                listen(&inner, connection, pushes).await;
            }
            None => failed_in_a_row += 1,
        }
        if inner.strong_count() == 0 {
            return;
        }
        if failed_in_a_row >= sentinels.len() {
            failed_in_a_row = 0;
            tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
        }
    }
}

type Pushes = tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>;

/// A RESP3 connection to the Sentinel at `info`, subscribed to the announcements followed.
async fn subscribe(
    inner: &Weak<Inner>,
    info: &ConnectionInfo,
) -> Option<(redis::aio::MultiplexedConnection, Pushes)> {
    let (connect_timeout, deadline, shown) = {
        let inner = inner.upgrade()?;
        (
            inner.connect_timeout,
            inner.deadline,
            inner.service_name.clone(),
        )
    };
    let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(deadline))
        .set_push_sender(sender);
    let subscribed = async {
        let client = redis::Client::open(info.clone())?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        connection
            .subscribe(&[SWITCH_MASTER, WAIT_PROMOTION])
            .await?;
        Ok::<_, redis::RedisError>(connection)
    };
    match tokio::time::timeout(connect_timeout.saturating_add(deadline), subscribed).await {
        Ok(Ok(connection)) => Some((connection, pushes)),
        Ok(Err(e)) => {
            tracing::debug!(service = %shown, sentinel = %info.addr(), error = %e,
                "impcache: cannot follow this Sentinel's announcements");
            None
        }
        Err(_elapsed) => {
            tracing::debug!(service = %shown, sentinel = %info.addr(),
                "impcache: timed out subscribing to this Sentinel's announcements");
            None
        }
    }
}

/// Acts on the announcements until the connection fails, the Sentinel stops answering `PING`,
/// or the repository is dropped.
async fn listen(
    inner: &Weak<Inner>,
    mut connection: redis::aio::MultiplexedConnection,
    mut pushes: Pushes,
) {
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return };
                if push.kind == redis::PushKind::Disconnection {
                    return;
                }
                let Some(message) = redis::Msg::from_push_info(push) else {
                    continue;
                };
                let Some(inner) = inner.upgrade() else { return };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                RedisSentinelCacheRepository { inner }
                    .on_announcement(message.get_channel_name(), &payload)
                    .await;
            }
            () = tokio::time::sleep(SENTINEL_PING_EVERY) => {
                let Some(deadline) = inner.upgrade().map(|i| i.deadline) else { return };
                let ping = redis::cmd("PING");
                let ping = ping.query_async::<()>(&mut connection);
                if !matches!(tokio::time::timeout(deadline, ping).await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}
