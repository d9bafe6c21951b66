//! The coherent near cache (issue 14): hot entries kept in process memory and invalidated by Redis
//! itself (server-assisted client-side caching, `CLIENT TRACKING`).
//!
//! - [`NearCache`]: the settings given to [`CacheBuilder::near_cache`](crate::CacheBuilder::near_cache).
//! - `store.rs`: the local entries (moka, bounded by bytes) and the race rule (a ticket per read,
//!   an invalidation log per slot).
//! - `tracker.rs`: the dedicated RESP3 tracking connection(s) that feed the store its
//!   invalidations and tell it when it can no longer vouch for its entries.
//! - `coverage.rs`: which keys those connections vouch for (on Cluster, each primary's its own
//!   slots).
//! - `barrier.rs`: the rounds of `PING`s on those connections that a read waits for before its
//!   reply is kept, shared by concurrent reads.
//! - `echo.rs`: Redis's invalidations of this cache's own writes, which must not drop the reads
//!   sent after those writes returned.
//!
//! The one dispatch point (`repository/backend.rs`) reads through it: its `Near` arm.

mod barrier;
mod coverage;
mod echo;
mod fail_safe;
mod store;
mod tracker;
mod watch;
mod weight;

pub(crate) use watch::Watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use self::store::{Store, VerdictSlot};
pub(crate) use self::tracker::Target;

/// The default bound of a near cache's memory: 64 MiB of keys and values.
pub const DEFAULT_NEAR_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// The default longest local lifetime of an entry: 5 minutes (also capped by the key's Redis TTL).
pub const DEFAULT_NEAR_MAX_TTL: Duration = Duration::from_secs(300);
/// The default largest value kept locally: 64 KiB (larger values are read from Redis every time).
pub const DEFAULT_NEAR_MAX_VALUE_BYTES: usize = 64 * 1024;
/// The default interval of the tracking connection's `PING`: 500 ms.
pub const DEFAULT_NEAR_HEARTBEAT: Duration = Duration::from_millis(500);

/// A near cache: hot values kept in process memory, in front of a Redis repository, and kept
/// coherent by Redis itself.
///
/// Given to [`CacheBuilder::near_cache`](crate::CacheBuilder::near_cache). Works with
/// [`RedisCacheRepository`](crate::RedisCacheRepository) and the Sentinel and Cluster
/// repositories; any other repository runs without it
/// ([`NearCacheStatus::Unsupported`], logged once).
///
/// ```no_run
/// # fn run() -> impcache::Result<()> {
/// use impcache::{Cache, NearCache, RedisCacheRepository};
///
/// let cache = Cache::builder(RedisCacheRepository::new("redis://127.0.0.1:6379/0")?)
///     .near_cache(NearCache::new().max_capacity_bytes(64 * 1024 * 1024))
///     .build();
/// # let _ = cache; Ok(()) }
/// ```
///
/// # How it stays coherent
/// A dedicated RESP3 connection per server (per primary on Cluster) runs
/// `CLIENT TRACKING ON BCAST PREFIX {key_prefix}:`: Redis pushes on it the name of every key under
/// the cache's prefix that changes, by any client (another process, the Python library,
/// `redis-cli`, expiry, eviction), and a "flush everything" on `FLUSHDB`/`FLUSHALL`.
///
/// *Why BCAST* (the only mode offered): in the default mode Redis remembers every key each
/// client read (server memory per key, `tracking-table-max-keys`), and every connection that
/// reads must itself have tracking on (`REDIRECT` to the connection receiving invalidations),
/// re-enabled on each reconnect, before its first read; BCAST costs the server nothing per key,
/// lets the tracking connection be separate from the data connections (which stay as they are),
/// and a cache owns its whole prefix anyway. Its cost is an invalidation message for every write
/// under the prefix, read locally or not.
///
/// - A read takes a ticket before it is sent; its reply is kept only if no invalidation of its
///   slot arrived since (a reply that raced with a change is never kept).
/// - A local entry lives at most `min(max_ttl, PTTL − round trip)`: the `PTTL` is read in the
///   same pipeline as the `GET`.
/// - This cache's own writes and deletes remove the local entry at once. A read of a key while
///   such a write of it is in flight (`get_or_set` and `#[cached]` answer once their store is
///   sent) waits for the write to return, at most 5 ms (a tenth of the repository's deadline
///   when that is shorter), before it is sent: its reply is then kept, as the first read after
///   a `set` is. What a write stores is not kept without that read: Redis announces another
///   client's write run in the same event-loop turn with the same invalidation as this one's.
/// - Tags (issue 16): a tag's state, or its absence, is kept like any key, so a tagged hit can
///   be served without a round trip, and a tag invalidated anywhere reaches every process with
///   Redis's invalidation. A tagged entry judged fresh keeps that verdict for the next read with
///   the same tags until any tag state changes or everything is flushed.
/// - A lost or replaced tracking connection, a Sentinel failover or a new Cluster slot map
///   flushes everything; until the tracking connection is back and subscribed, nothing is served
///   locally ([`NearCacheStatus::Connecting`]). A failover or a new slot map flushes as soon as
///   the repository switches to it (a Sentinel announcement, or its once-a-second check, which
///   the near cache keeps running while every read is local; a slot map it learned that says
///   something else, a `MOVED`), and on Cluster the heartbeat asks for the slot map afresh, at
///   the same time as its `PING`s: a replica promoted in place of a frozen primary flushes at
///   the first heartbeat after the promotion, whatever the `PING` of the frozen one waits for.
/// - On Cluster each primary's tracking connection vouches for its own slots only: a primary
///   without one (dead, unreachable, its `PING` unanswered) takes only its own keys out of the
///   near cache ([`NearCacheStatus::Partial`]), as it fails only its own keys in the repository.
///   Its keys are then read from Redis and never kept; its tracking is tried again at every
///   heartbeat, and when it is back everything local of its slots counts as flushed (the server
///   forgot what it tracked) and its keys join again.
/// - A server that refuses `CLIENT TRACKING` or the tracking connection's `PING`s (`CLIENT`
///   renamed, `CLIENT` or `PING` forbidden by an ACL: `NOPERM`, a server without RESP3, a managed
///   service) turns the near cache off for good ([`NearCacheStatus::Unsupported`], one `warn!`).
/// - A tracking connection that cannot connect (the server unreachable or full, a login refused
///   after a password change) is tried again, the pause doubling from the heartbeat (at most
///   200 ms) up to 5 s; the fifth failure in a row is logged (one `warn!` naming its cause), as
///   is its return (`info!`). Meanwhile the status stays [`NearCacheStatus::Connecting`].
#[derive(Clone, Debug)]
#[must_use]
pub struct NearCache {
    pub(crate) max_capacity_bytes: u64,
    pub(crate) max_ttl: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) fail_safe: bool,
}

impl Default for NearCache {
    fn default() -> Self {
        NearCache {
            max_capacity_bytes: DEFAULT_NEAR_CAPACITY_BYTES,
            max_ttl: DEFAULT_NEAR_MAX_TTL,
            max_value_bytes: DEFAULT_NEAR_MAX_VALUE_BYTES,
            heartbeat: DEFAULT_NEAR_HEARTBEAT,
            fail_safe: false,
        }
    }
}

impl NearCache {
    /// The defaults: 64 MiB, entries kept at most 5 minutes, values up to 64 KiB, a heartbeat
    /// every 500 ms.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most bytes kept locally; the least recently used entries are evicted beyond it. Each
    /// entry weighs its full key, its value and about 384 bytes of bookkeeping (measured: moka's
    /// entry and the near entry's lifetime), and a tagged entry also its kept verdict (128 bytes
    /// and its tags' size: the most the verdict's copy of a call's tags may take), so the bound
    /// holds for the process's memory, small entries included. The fail-safe copies
    /// ([`fail_safe`](NearCache::fail_safe)) have a bound of the same size of their own.
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.max_capacity_bytes = bytes;
        self
    }

    /// The longest an entry is kept locally (it is also never kept past its Redis TTL): whole
    /// seconds or a [`Duration`], as every lifetime of the crate; [`Expire::NEVER`](crate::Expire::NEVER)
    /// leaves only the Redis TTL (as does anything longer than [`MAX_EXPIRE`](crate::MAX_EXPIRE)).
    /// Zero (or a negative number) keeps nothing.
    pub fn max_ttl(mut self, max_ttl: impl Into<crate::Expire>) -> Self {
        self.max_ttl = max_ttl.into().as_bound();
        self
    }

    /// The largest value kept locally; larger values are read from Redis every time.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// How often the tracking connection is checked with a `PING` (at least 10 ms); a `PING`
    /// unanswered within this interval, or within the repository's deadline if that is shorter,
    /// counts as a lost connection (everything it vouched for is flushed). On Cluster the same
    /// heartbeat also asks for the slot map, at the same time as the `PING`s (a new one flushes),
    /// and tries again to connect the tracking connections of primaries that have none.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = crate::expire::capped(heartbeat).max(Duration::from_millis(10));
        self
    }

    /// Fail-safe (FusionCache's): keep a copy of local entries past the moment the near cache
    /// stops vouching for them (their local lifetime ends, the tracking connection is lost), for
    /// one use only: a [`get_or_set`](crate::Cache::get_or_set) /
    /// [`try_get_or_set`](crate::Cache::try_get_or_set) with a
    /// [`stale_if_error`](crate::Freshness::stale_if_error) window whose Redis read **failed**
    /// (an error, the breaker open, the deadline) and whose loader then failed or timed out too
    /// (its hard timeout, or its soft timeout while it keeps running).
    /// The copy answers if its age past the earlier of its expiry and the end of its vouching
    /// is within that window. Off by default: meanwhile the copy may no longer be what Redis
    /// holds (coherence is lost, bounded by the window). Never served by `get`, nor when Redis
    /// answered; counted in [`NearCacheStats::fail_safe_served`] and logged (`warn!`).
    ///
    /// A switch, not a duration: the call's `stale_if_error` window is the bound. The copies
    /// share the live entries' values and are bounded by the same byte count (separately);
    /// each lives at most until its key's Redis expiry. A change seen by Redis, this cache's own
    /// write or delete, `FLUSHDB` and `delete_pattern` drop them, and so does a read of the key
    /// from Redis whose reply is not kept locally (absent, too large, read while reconnecting):
    /// a copy never answers with a value older than one this process has read since. A value a
    /// `get_or_set` loads whose store fails (Redis unreachable, timed out or refusing the write)
    /// becomes the key's copy (untagged entries), in place of the one its write dropped.
    pub fn fail_safe(mut self, on: bool) -> Self {
        self.fail_safe = on;
        self
    }

    /// The `CLIENT TRACKING` mode. [`TrackingMode::Broadcast`] is the only one offered (see
    /// "Why BCAST" above), so this setting says what the near cache does rather than changing
    /// it; it is here so that a mode added later is chosen where the others are.
    ///
    /// ```
    /// use impcache::{NearCache, TrackingMode};
    ///
    /// let near = NearCache::new().tracking_mode(TrackingMode::Broadcast);
    /// assert_eq!(near.tracking_mode_used(), TrackingMode::Broadcast);
    /// ```
    pub fn tracking_mode(self, mode: TrackingMode) -> Self {
        match mode {
            TrackingMode::Broadcast => self,
        }
    }

    /// The `CLIENT TRACKING` mode: [`TrackingMode::Broadcast`].
    pub fn tracking_mode_used(&self) -> TrackingMode {
        TrackingMode::Broadcast
    }
}

/// How Redis tells a near cache which keys changed ([`NearCache::tracking_mode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackingMode {
    /// `CLIENT TRACKING ON BCAST PREFIX {key_prefix}:` on a dedicated connection: every change
    /// under the cache's prefix, whoever reads it; nothing kept per key on the server.
    #[default]
    Broadcast,
}

/// Whether a cache's near cache serves reads ([`Cache::near_cache_status`](crate::Cache::near_cache_status)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NearCacheStatus {
    /// No near cache was configured.
    Off,
    /// A near cache was configured, but the repository or the server cannot track keys (the
    /// memory repository, a custom one, `CLIENT TRACKING` refused): every read goes to the
    /// repository.
    Unsupported,
    /// The tracking connection is not (yet, or no longer) established and subscribed: every read
    /// goes to Redis, nothing is kept locally.
    Connecting,
    /// Reads are served locally when they can be.
    Active,
    /// Cluster only: the tracking connections of some primaries are subscribed, not all (a
    /// primary dead, unreachable, or not answering its heartbeat `PING`). The keys of the
    /// primaries tracked are served locally as when [`Active`](NearCacheStatus::Active); those
    /// of the others go to Redis and are not kept (nothing vouches for them), and their tracking
    /// is tried again at every heartbeat. A tagged entry's verdict is not kept meanwhile (its
    /// tags' states are judged on every read). [`Cache::is_near_cache_active`](crate::Cache::is_near_cache_active)
    /// is `false` in this state: it answers whether every key can be served locally.
    Partial,
}

/// A near cache's counters ([`Cache::near_cache_stats`](crate::Cache::near_cache_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Keys served from process memory (a tagged entry's tag state keys included).
    pub hits: u64,
    /// Keys looked up locally and read from Redis (found there or not).
    pub misses: u64,
    /// Keys read from Redis without keeping their replies: the near cache was not active, or (on
    /// Cluster, [`NearCacheStatus::Partial`]) the key's primary had no tracking connection.
    pub bypassed: u64,
    /// Invalidations received from Redis or made by this cache's own writes (one per key; the
    /// echo Redis sends of an own write is not counted again). Approximate while writes of one
    /// key overlap: Redis may send one invalidation for several of them.
    pub invalidations: u64,
    /// Times everything local was dropped: the tracking connection lost (once per loss, a
    /// failover included), a new Cluster slot map, `FLUSHDB` / `FLUSHALL`, `delete_pattern`, a
    /// read's barrier not passed within its deadline (a link too slow for the near cache shows
    /// here: it keeps nothing while its status stays `Active`); and on Cluster, times everything
    /// of one primary's slots was dropped (its tracking connection lost while others stay).
    pub flushes: u64,
    /// Entries held now (approximate: moka's count). One whose local lifetime ended is no longer
    /// served but counts until Redis's invalidation of the expired key, a new read of it, or
    /// `max_ttl` replaces or removes it.
    pub entries: u64,
    /// Bytes held now as weighed against [`NearCache::max_capacity_bytes`]: keys, values and
    /// each entry's bookkeeping (approximate: moka's weighted size).
    pub bytes: u64,
    /// Fail-safe copies served in place of a failed loader while Redis failed
    /// ([`NearCache::fail_safe`]).
    pub fail_safe_served: u64,
}

/// A near cache in front of a remote backend: what the dispatch point's `Near` arm holds
/// (`Near<Backend>`: generic so that this module need not know the dispatch point).
pub(crate) struct Near<R> {
    /// The repository behind it (the single-node Redis arm or the trait).
    pub(crate) remote: R,
    pub(crate) store: Arc<Store>,
    target: Arc<Target>,
    prefix: Arc<str>,
}

impl<R: fmt::Debug> fmt::Debug for Near<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Near")
            .field("remote", &self.remote)
            .field("status", &self.store.status())
            .finish()
    }
}

impl<R> Near<R> {
    /// `remote` behind a near cache whose tracking connections go to `target`.
    pub(crate) fn new(remote: R, store: Arc<Store>, target: Target, prefix: &str) -> Near<R> {
        target.follow_switches(&store);
        let near = Near {
            remote,
            store,
            target: Arc::new(target),
            prefix: Arc::from(prefix),
        };
        near.track();
        near
    }

    /// Makes sure the tracking task runs (it starts in the first runtime it meets, and again
    /// after that runtime ended). One relaxed load when it runs.
    #[inline]
    pub(crate) fn track(&self) {
        tracker::start(&self.store, &self.target, &self.prefix);
    }

    /// [`track`](Self::track), then, for a read about to go to the remote, the wait for the
    /// first tracking handshake ([`Store::first_handshake`]; one atomic load once it ended).
    pub(crate) async fn ready(&self) {
        self.track();
        self.store.first_handshake().await;
    }
}

// Unit tests: an `assert!` here is the test failing; none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_ttl_takes_seconds_or_a_duration_as_every_lifetime() {
        assert_eq!(
            NearCache::new().max_ttl(30).max_ttl,
            Duration::from_secs(30)
        );
        assert_eq!(
            NearCache::new().max_ttl(Duration::from_millis(50)).max_ttl,
            Duration::from_millis(50)
        );
        assert_eq!(NearCache::new().max_ttl(0).max_ttl, Duration::ZERO);
        assert_eq!(
            NearCache::new().max_ttl(crate::Expire::NEVER).max_ttl,
            crate::MAX_EXPIRE
        );
    }
}
