//! The near cache's local entries and its race rule.
//!
//! Entries live in a moka cache bounded by bytes (key + value), each served for its own lifetime,
//! `min(max_ttl, PTTL − round trip)`, checked on every lookup ([`Entry::alive`]).
//!
//! **The race rule.** A read takes a ticket (the invalidation sequence number now) before its
//! request is sent. Every invalidation bumps the sequence and records the new number in its key's
//! slot (4096 slots by key hash); every flush records it for all slots at once. A reply is kept
//! only if neither its slot nor the flush mark moved past its ticket, checked again after the
//! insert (an invalidation between the check and the insert would otherwise find nothing to
//! remove and leave a stale entry behind).
//!
//! **Tag states (issue 16)** are kept like any key, and so is their *absence* (most tags were
//! never invalidated): an absent state is an entry marked `absent`, never served by
//! [`Store::get`]. Creating the tag key is a change under the tracked prefix like any other, so
//! its invalidation drops the absence, and the race rule holds for it as for a value: a `nil`
//! reply that raced with the key's creation is not kept.
//!
//! **Verified tagged entries.** Judging a tagged entry takes a lookup per tag state, the
//! envelope's parse and the verdict (about half of a near-cached tagged hit: BENCHMARKS.md,
//! "Issue 16: verified tagged entries"). A tagged entry judged fresh against a call's tags keeps
//! that verdict ([`VerdictSlot::keep`]) with the *tag sequence* read before its states were: a
//! number bumped by every invalidation of a tag state key (from Redis or this cache's own
//! invalidation) and every flush. The next read with the same tags is served from the verdict
//! while the tag sequence has not moved ([`Store::verified`]): a tag invalidated anywhere, or a
//! lost tracking connection, moves it, and the entry is judged again from its tags' states.
//! The verdict holds a copy of the call's tags: the entry is weighed for the largest copy it may
//! keep, that of its own tags, and a call whose tags take more keeps none ([`VerdictCell`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;

use super::barrier::Barrier;
use super::coverage::{Servers, Shards, UNVOUCHED};
use super::echo::Echoes;
use super::fail_safe::FailSafe;
use super::watch::{Watch, Watches};
use super::weight;
use super::{NearCache, NearCacheStats, NearCacheStatus};
use crate::freshness::Freshness;
use crate::key::{LocalKeyHasher, TAG_KEY_PART};
use crate::observe::hooks::{near_lookups, Tier};
use crate::observe::StripedCounter;
use crate::repository::WithTtl;
use crate::tags::{self, envelope, Tags};

/// The longest a read waits for an own write of its key still in flight
/// ([`Store::after_own_write`]): a write on a healthy connection returns well within it (a
/// round trip); past it the read goes out at once and is not kept, as before the wait.
const OWN_WRITE_WAIT: Duration = Duration::from_millis(5);

/// The longest a read of a new cache waits for its first tracking handshake (a connection,
/// `HELLO 3` and `CLIENT TRACKING`: about 1 ms on loopback) before it goes on without the near
/// cache ([`Store::first_handshake`]).
pub(crate) const FIRST_HANDSHAKE_WAIT: Duration = Duration::from_millis(250);

/// Slots of the invalidation log: a power of two.
const SLOTS: usize = 4096;

/// Taken off every local lifetime read from `PTTL` (see [`Store::keep`]).
const PTTL_MARGIN: Duration = Duration::from_millis(2);

const CONNECTING: u8 = 0;
const ACTIVE: u8 = 1;
const UNSUPPORTED: u8 = 2;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    /// When the local lifetime ends: the entry is not served from then on.
    until: Instant,
    /// When the key expires in Redis (`None`: no expiry).
    redis_expires: Option<Instant>,
    /// A tag state known to be absent (`value` is empty): served by [`Store::get_state`] only.
    absent: bool,
    /// For a tagged entry (a well-formed envelope), its last verdict "fresh"
    /// ([`VerdictSlot::keep`]); shared by the clones moka hands out. `None` for other entries.
    verified: Option<Arc<VerdictCell>>,
    /// The read it was kept from: served only while no invalidation of its slot (nor a flush)
    /// came after that read's ticket ([`Store::vouches`]).
    read: Read,
}

/// The ticket number of the read an entry was kept from, its key's slot, and on Cluster its
/// key's Cluster slot (`coverage.rs`).
#[derive(Clone, Copy)]
struct Read {
    number: u64,
    slot: u16,
    shard: u16,
}

/// Where a tagged entry keeps its last verdict "fresh", and how much a verdict's copy of the
/// call's tags may take.
struct VerdictCell {
    /// The heap a copy of the entry's own tags takes (`tags::heap_bytes`), weighed with the
    /// entry (`weight.rs`): a verdict is kept only for a call whose tags take no more, so that
    /// the byte bound holds whatever tags the entry is read with.
    budget: usize,
    kept: ArcSwapOption<Verified>,
}

impl VerdictCell {
    /// The cell of the tagged entry `value`; `None` when it is no (well-formed) envelope: no
    /// verdict is ever kept on such an entry.
    fn of(value: &Bytes) -> Option<Arc<VerdictCell>> {
        // The prefix first: a plain value is never parsed.
        let opened = envelope::is_envelope(value)
            .then(|| envelope::open(value))
            .flatten()?;
        Some(Arc::new(VerdictCell {
            budget: tags::heap_bytes(&opened.tags),
            kept: ArcSwapOption::empty(),
        }))
    }
}

/// A tagged entry judged fresh: against which call's tags, from states read after which tag
/// sequence, and the envelope's value (a slice of the entry's bytes).
struct Verified {
    tags: Tags,
    sequence: u64,
    value: Bytes,
}

/// Where a new verdict on a local tagged entry is kept ([`Store::verified`] found none valid).
pub(crate) struct VerdictSlot {
    cell: Arc<VerdictCell>,
    /// The entry's bytes, to tell them from another entry's.
    bytes: Bytes,
    /// The tag sequence when the entry was looked up, before its states were read.
    sequence: u64,
}

impl VerdictSlot {
    /// Keeps the verdict "fresh" on the entry whose bytes `stored` were judged against `tags`;
    /// `value` is the envelope's value. Nothing is kept when `stored` are not this entry's bytes
    /// (the entry was replaced between the lookup and the read), nor when a copy of `tags` would
    /// take more heap than the entry's own tags (its weight counts no more): a call reading
    /// with more tags than the entry carries is judged on every read.
    pub(crate) fn keep(self, stored: &Bytes, tags: &Tags, value: Bytes) {
        // The same bytes, not equal ones: the verdict belongs to this entry.
        let same = self.bytes.as_ptr() == stored.as_ptr() && self.bytes.len() == stored.len();
        if same && tags::heap_bytes(tags.as_slice()) <= self.cell.budget {
            self.cell.kept.store(Some(Arc::new(Verified {
                tags: tags.clone(),
                sequence: self.sequence,
                value,
            })));
        }
    }
}

impl Entry {
    /// Whether the local lifetime still runs at `now`. Checked on every lookup rather than left
    /// to moka's per-entry expiry: with it, moka's `get` of a near hit counted 1,237
    /// instructions, without it 978, and the whole `Cache::get` 6,680 against 6,458 with this
    /// check (BENCHMARKS.md, "Run I"). moka's `time_to_live(max_ttl)` reclaims what nothing reads
    /// again, and Redis's invalidation of an expired key removes it before that.
    fn alive(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// An own write in flight ([`Store::writing`]). Dropped without
/// [`written`](OwnWrite::written) (the write's future was cancelled, the write may or may not
/// have landed), it expects no echo and drops its keys locally.
#[must_use = "call `written` when the write returns"]
pub(crate) struct OwnWrite<'a> {
    store: &'a Store,
    keys: Vec<&'a [u8]>,
    returned: bool,
}

impl OwnWrite<'_> {
    /// The write returned; `changed`: it succeeded and changed its keys.
    pub(crate) fn written(mut self, changed: bool) {
        self.returned = true;
        for key in &self.keys {
            self.store.written(key, changed);
        }
    }
}

impl Drop for OwnWrite<'_> {
    fn drop(&mut self) {
        if !self.returned {
            for key in &self.keys {
                self.store.written(key, false);
            }
        }
    }
}

/// Flushes its store when dropped ([`Store::flush_when_dropped`]).
pub(crate) struct FlushWhenDropped<'a>(&'a Store);

impl Drop for FlushWhenDropped<'_> {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// A read in flight: its ticket and when it was sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    number: u64,
    sent: Instant,
}

/// The local entries of one [`Cache`](crate::Cache)'s near cache.
pub(crate) struct Store {
    entries: moka::sync::Cache<String, Entry, LocalKeyHasher>,
    /// The invalidation sequence: bumped by every invalidation and flush.
    sequence: AtomicU64,
    /// Per slot, the sequence number of its last invalidation.
    slots: Box<[AtomicU64]>,
    /// The sequence number of the last flush.
    flushed: AtomicU64,
    /// Bumped by every invalidation of a tag state key and every flush: a verdict on a tagged
    /// entry holds while it stands still ([`Store::verified`]).
    tag_sequence: AtomicU64,
    /// When an invalidation of a tag state key last arrived or was made here
    /// ([`tags::stamp_micros`](crate::tags::stamp_micros); 0: none): what a waiter that cannot
    /// read the tags' state knows of other processes' invalidations ([`Store::tag_changed_since`]).
    tag_changed_at: AtomicU64,
    /// What the cache's tag state keys start with, `{prefix}:__impcache_tag:`.
    tag_keys: Box<str>,
    state: AtomicU8,
    /// Whether every server of the tracking session is subscribed (else, on Cluster, the status
    /// is [`NearCacheStatus::Partial`] while the store is active).
    complete: AtomicBool,
    /// On Cluster, which slots the tracking connections vouch for (`coverage.rs`); `None`
    /// elsewhere (the one tracking connection vouches for every key).
    shards: Option<Shards>,
    /// The tracking session's servers and their connections (`coverage.rs`).
    servers: Mutex<Servers>,
    /// Whether a tracker task runs for this store.
    pub(super) tracking: AtomicBool,
    /// The tracking session whose loss flushes the store (see [`Store::lost`]).
    connection: AtomicU64,
    /// The subscribed tracking connections, for [`Store::barrier`]; `None` unless active.
    tracking_connections: ArcSwapOption<Vec<MultiplexedConnection>>,
    /// The barrier's rounds, shared by concurrent reads.
    barrier: Barrier,
    /// This cache's own writes whose invalidation Redis has yet to echo.
    echoes: Echoes,
    /// When a read last gave its thread back ([`Store::catch_up`]), in [`catch_up_clock`] units.
    caught_up: AtomicU64,
    /// Whether the tracker runs on a one-thread runtime (set when it starts): only there can a
    /// blocked thread keep it from reading its connection's end ([`Store::catch_up`]).
    pub(super) one_thread: AtomicBool,
    /// Whether the first tracking handshake ended (active, refused, or failed once), and the
    /// reads waiting for it ([`Store::first_handshake`]).
    handshake_ended: AtomicBool,
    handshake: tokio::sync::Notify,
    /// One `warn!` for an unsupported repository or server.
    warned: Mutex<bool>,
    max_ttl: Duration,
    /// The repository's deadline for one call: bounds a read's barrier ([`Store::passed`]).
    read_deadline: Duration,
    max_value_bytes: usize,
    pub(super) heartbeat: Duration,
    /// Striped (`observe/striped.rs`), as every local hit counts; `misses` and `bypassed` too,
    /// since one line of `count_remote` picks either.
    hits: StripedCounter,
    misses: StripedCounter,
    bypassed: StripedCounter,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    /// The fail-safe copies ([`NearCache::fail_safe`]); `None` when off.
    fail_safe: Option<FailSafe>,
    fail_safe_served: AtomicU64,
    /// The keys a process waits on to change (the cross-process lock's waiters).
    watches: Arc<Watches>,
    /// Wakes the tracker when the repository switched to other servers (a Sentinel failover, a
    /// new Cluster slot map; see `impl SwitchListener for Store`): it subscribes again at once,
    /// on the new servers. Also when the store is dropped: the tracker then ends at once.
    pub(super) switched: Arc<tokio::sync::Notify>,
}

impl Drop for Store {
    /// The cache is gone: its tracker ends now, not at its next heartbeat, and drops the
    /// repository it holds, connections included. With the heartbeat's wait (500 ms), a `Cache`
    /// with a near cache built per request left a connection per request open meanwhile (313
    /// file descriptors for 300 builds in 0.46 s; found by a probe, 2026-12-07).
    fn drop(&mut self) {
        self.switched.notify_one();
    }
}

impl Store {
    /// A store for `config`, whose reads' barrier waits at most `read_deadline`; `slot_of`: on
    /// Cluster, a key's slot (each primary's tracking connection vouches for its own slots).
    pub(crate) fn new(
        config: &NearCache,
        read_deadline: Duration,
        slot_of: Option<fn(&[u8]) -> u16>,
        prefix: &str,
    ) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_capacity_bytes)
            .weigher(|key: &String, entry: &Entry| {
                weight::of(
                    key,
                    &entry.value,
                    entry.verified.as_ref().map(|cell| cell.budget),
                )
            })
            .time_to_live(config.max_ttl)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(LocalKeyHasher::default());
        Store {
            entries,
            sequence: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            flushed: AtomicU64::new(0),
            tag_sequence: AtomicU64::new(0),
            tag_changed_at: AtomicU64::new(0),
            tag_keys: format!("{prefix}:{TAG_KEY_PART}").into(),
            state: AtomicU8::new(CONNECTING),
            complete: AtomicBool::new(false),
            shards: slot_of.map(Shards::new),
            servers: Mutex::default(),
            tracking: AtomicBool::new(false),
            connection: AtomicU64::new(0),
            tracking_connections: ArcSwapOption::empty(),
            barrier: Barrier::new(),
            echoes: Echoes::default(),
            caught_up: AtomicU64::new(0),
            one_thread: AtomicBool::new(false),
            handshake_ended: AtomicBool::new(false),
            handshake: tokio::sync::Notify::new(),
            warned: Mutex::new(false),
            max_ttl: config.max_ttl,
            read_deadline,
            // moka weighs entries with a u32.
            max_value_bytes: config
                .max_value_bytes
                .min(usize::try_from(config.max_capacity_bytes).unwrap_or(usize::MAX)),
            heartbeat: config.heartbeat,
            hits: StripedCounter::default(),
            misses: StripedCounter::default(),
            bypassed: StripedCounter::default(),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fail_safe: config
                .fail_safe
                .then(|| FailSafe::new(config.max_capacity_bytes)),
            fail_safe_served: AtomicU64::new(0),
            watches: Arc::default(),
            switched: Arc::default(),
        }
    }

    pub(crate) fn status(&self) -> NearCacheStatus {
        match self.state.load(Ordering::Acquire) {
            ACTIVE if self.complete.load(Ordering::Acquire) => NearCacheStatus::Active,
            ACTIVE => NearCacheStatus::Partial,
            UNSUPPORTED => NearCacheStatus::Unsupported,
            _ => NearCacheStatus::Connecting,
        }
    }

    /// Whether reads are kept (and served) now, of every key ([`NearCacheStatus::Active`]) or,
    /// on Cluster, of the keys whose primary's tracking connection is up
    /// ([`NearCacheStatus::Partial`]).
    pub(crate) fn active(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ACTIVE
    }

    /// Before a local lookup, on a one-thread runtime: if no read of this store gave its thread
    /// back for a while (about 1 ms), gives it back for a few turns (`yield_now`, which tokio
    /// resumes after polling its I/O driver), so that a tracking connection's end or an
    /// invalidation already waiting on its socket is read first. Without it, on a one-thread runtime whose thread was blocked (a
    /// synchronous restart of Redis, a synchronous write through another client), the next
    /// read was served the local entry the lost connection could no longer vouch for
    /// (`tests/near_cache.rs`, `redis_restarted_with_the_key_changed_on_one_thread`). A loop
    /// of local hits yields about once per millisecond (three turns: a few µs per ms); each read
    /// reads the clock once.
    pub(crate) async fn catch_up(&self) {
        if let Some(now) = self.behind() {
            self.caught_up.store(now, Ordering::Relaxed);
            // Three turns: the connection's driver needs two to report its end once its socket
            // is read (one turn was not enough in the test; two were, every run); one more as
            // margin.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Whether a local lookup may be made now without [`catch_up`](Store::catch_up) giving the
    /// thread back first (for a read that cannot wait: `get_or_set`'s answer from the near
    /// cache alone).
    pub(crate) fn caught_up(&self) -> bool {
        self.behind().is_none()
    }

    /// The [`catch_up_clock`] now, when a lookup must give the thread back first (on a
    /// one-thread runtime, once per tick of that clock).
    fn behind(&self) -> Option<u64> {
        // On a multi-thread runtime the tracker's connection is read by another worker; there
        // the clock and the turns cost a task alone on its worker 10-25 % (BENCHMARKS, Run G).
        if !self.one_thread.load(Ordering::Relaxed) {
            return None;
        }
        let now = catch_up_clock();
        (now != self.caught_up.load(Ordering::Relaxed)).then_some(now)
    }

    /// Until the first tracking handshake has ended (the store active, tracking refused, or the
    /// first attempt failed), waits for it, at most [`FIRST_HANDSHAKE_WAIT`]; then returns at
    /// once. A new cache's first reads are thus kept (a read made before tracking is active is
    /// not), as with rueidis, whose connections track from their first command.
    pub(crate) async fn first_handshake(&self) {
        if self.handshake_ended.load(Ordering::Acquire) {
            return;
        }
        let ended = self.handshake.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        // Timers need a tokio runtime; without one (no tracker either), no wait.
        if self.handshake_ended.load(Ordering::Acquire)
            || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(FIRST_HANDSHAKE_WAIT, ended).await;
    }

    /// The first tracking handshake ended: the reads waiting for it go on.
    pub(super) fn handshake_ended(&self) {
        if !self.handshake_ended.swap(true, Ordering::AcqRel) {
            self.handshake.notify_waiters();
        }
    }

    pub(crate) fn stats(&self) -> NearCacheStats {
        // Evictions pending in moka's queues: the size reported is the size kept.
        self.entries.run_pending_tasks();
        NearCacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            bypassed: self.bypassed.get(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            fail_safe_served: self.fail_safe_served.load(Ordering::Relaxed),
        }
    }

    /// The local value at `key`, when the near cache is active and holds it.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.get_entry(key, Instant::now()).map(|entry| entry.value)
    }

    /// The local value at `key` with its remaining Redis TTL.
    pub(crate) fn get_with_ttl(&self, key: &str) -> Option<WithTtl> {
        let found = self.peek_with_ttl(key)?;
        self.count_hit();
        Some(found)
    }

    /// [`get_with_ttl`](Store::get_with_ttl) without counting a hit: for a caller that judges
    /// the entry first and counts it ([`count_hit`](Store::count_hit)) only if it answers with
    /// it (`get_or_set`'s answer from the near cache alone).
    pub(crate) fn peek_with_ttl(&self, key: &str) -> Option<WithTtl> {
        let now = Instant::now();
        let entry = self.live_entry_now(key, now)?;
        let ttl = entry
            .redis_expires
            .map(|at| at.saturating_duration_since(now));
        Some(WithTtl::new(entry.value, ttl))
    }

    /// The entry at `key` while its local lifetime runs at `now` and the store vouches for it.
    /// One whose lifetime ended (or that raced an invalidation) is removed: it would otherwise
    /// keep its weight and, read again and again, its place in the LRU order until Redis's
    /// invalidation of the expired key or `max_ttl` removed it.
    fn live_entry(&self, key: &str, now: Instant) -> Option<Entry> {
        let entry = self.entries.get(key)?;
        // Vouched for: a reply kept after an invalidation it raced with (`insert`) is not served
        // in the moment before it is removed.
        if entry.alive(now) && self.vouches(entry.read) {
            return Some(entry);
        }
        // Racing a new insert of `key`, this removes a live entry: a miss, never a stale read.
        self.entries.invalidate(key);
        None
    }

    fn get_entry(&self, key: &str, now: Instant) -> Option<Entry> {
        let entry = self.live_entry_now(key, now)?;
        self.count_hit();
        Some(entry)
    }

    /// The entry at `key` the store serves at `now` (active, live, vouched for, a value), not
    /// counted.
    fn live_entry_now(&self, key: &str, now: Instant) -> Option<Entry> {
        if !self.active() {
            return None;
        }
        self.live_entry(key, now).filter(|entry| !entry.absent)
    }

    /// Counts one local hit (on the current operation's span too: its `tier`).
    pub(crate) fn count_hit(&self) {
        self.hits.add(1);
        near_lookups(Tier::Near, 1);
    }

    /// The value of the tagged entry at `key` when it was judged fresh against `tags` and no
    /// tag state changed (nor anything was flushed) since the states were read; with its
    /// remaining Redis TTL when `with_ttl`; not counted (the caller counts it,
    /// [`count_hit`](Store::count_hit), when it answers with it). Otherwise, for a local
    /// tagged entry, `Err(Some(slot))`: where a new verdict on it is kept ([`VerdictSlot::keep`]),
    /// stamped with the tag sequence read now, before its states are.
    pub(crate) fn verified(
        &self,
        key: &str,
        tags: &Tags,
        with_ttl: bool,
    ) -> Result<WithTtl, Option<VerdictSlot>> {
        // Not while a Cluster primary has no tracking connection: a tag state of its slots may
        // change unseen, and a verdict holds only while no tag state changes. (Its loss and its
        // return move the tag sequence: a verdict made before either is not served after.)
        if !self.active() || !self.complete.load(Ordering::SeqCst) {
            return Err(None);
        }
        let now = Instant::now();
        let entry = self.live_entry(key, now).ok_or(None)?;
        let cell = entry.verified.as_ref().ok_or(None)?;
        let sequence = self.tag_sequence.load(Ordering::SeqCst);
        let kept = cell.kept.load();
        let Some(verified) = kept
            .as_ref()
            .filter(|verified| verified.sequence == sequence && verified.tags == *tags)
        else {
            return Err(Some(VerdictSlot {
                cell: Arc::clone(cell),
                bytes: entry.value.clone(),
                sequence,
            }));
        };
        let ttl = entry
            .redis_expires
            .filter(|_| with_ttl)
            .map(|at| at.saturating_duration_since(now));
        Ok(WithTtl::new(verified.value.clone(), ttl))
    }

    /// The local state of the tag key `key`: `Some(None)` when it is known to be absent, `None`
    /// when nothing is known locally (or the near cache is not active).
    pub(crate) fn get_state(&self, key: &str) -> Option<Option<Bytes>> {
        if !self.active() {
            return None;
        }
        let entry = self.live_entry(key, Instant::now())?;
        self.count_hit();
        Some((!entry.absent).then_some(entry.value))
    }

    /// [`ticket`](Store::ticket) for one read of `count` keys.
    pub(crate) fn ticket_for(&self, count: usize) -> Option<Ticket> {
        let active = self.active();
        self.count_remote(count, active);
        active.then(|| Ticket {
            number: self.sequence.load(Ordering::SeqCst),
            sent: Instant::now(),
        })
    }

    /// A ticket for a read of `key` about to be sent; `None` when the near cache is not active,
    /// or, on Cluster, no tracking connection vouches for `key` now (its primary's is down): the
    /// reply will not be kept, and the read is counted as bypassing the near cache.
    pub(crate) fn ticket(&self, key: &str) -> Option<Ticket> {
        if self.active() && !self.covers(key.as_bytes()) {
            self.count_remote(1, false);
            return None;
        }
        self.ticket_for(1)
    }

    /// Counts `count` keys read from the remote, as misses if `kept` (their replies may be kept)
    /// else as bypassing the near cache.
    fn count_remote(&self, count: usize, kept: bool) {
        let counter = if kept { &self.misses } else { &self.bypassed };
        counter.add(count as u64);
        near_lookups(Tier::Remote, count as u64);
    }

    /// Whether a tracking connection vouches for `key` (a full key) now: on Cluster, whether its
    /// slot's primary has one; elsewhere always (the store may still not be active).
    fn covers(&self, key: &[u8]) -> bool {
        self.shards.as_ref().is_none_or(|shards| shards.covers(key))
    }

    /// The read of `key` made with `ticket`, as its entry records it.
    fn read_of(&self, ticket: Ticket, key: &str) -> Read {
        Read {
            number: ticket.number,
            // `SLOTS` (4096) fits.
            slot: u16::try_from(slot_of(key)).unwrap_or(0),
            shard: self
                .shards
                .as_ref()
                .map_or(0, |shards| shards.shard(key.as_bytes())),
        }
    }

    /// Whether the near cache is active and [`vouches`](Store::vouches) for `read`.
    fn still_valid(&self, read: Read) -> bool {
        self.active() && self.vouches(read)
    }

    /// Whether nothing invalidated the key of `read` (its slot), nor flushed everything, since
    /// its ticket, and, on Cluster, its primary's tracking connection vouches for it: up since
    /// before its ticket.
    fn vouches(&self, read: Read) -> bool {
        self.flushed.load(Ordering::SeqCst) <= read.number
            && self.slots[usize::from(read.slot)].load(Ordering::SeqCst) <= read.number
            && self
                .shards
                .as_ref()
                .is_none_or(|shards| shards.vouches(read.shard, read.number))
    }

    /// Settles a read sent with `ticket`: waits for the barrier, then keeps the reply (if any) if
    /// no invalidation of its key arrived since and it is small enough; its lifetime is
    /// `min(max_ttl, PTTL − round trip)`.
    ///
    /// The data and tracking connections are not ordered with each other: an invalidation Redis
    /// sent before it answered this read may still be on its way. So a `PING` goes over every
    /// tracking connection first (the barrier): its answer comes after every invalidation Redis
    /// sent before it. Without it, a reply read before a write could be kept after the write's
    /// invalidation was sent; and a reader that just read a new value from Redis could next be
    /// served an older local value whose invalidation had not arrived yet. The barrier is passed
    /// before the reply is returned, whether it is kept or not, within what is left of the
    /// read's deadline (see [`passed`](Store::passed)).
    pub(crate) async fn settle(&self, ticket: Option<Ticket>, key: &str, found: Option<&WithTtl>) {
        self.replied(key);
        let Some(ticket) = self.passed(ticket).await else {
            return;
        };
        if let Some(found) = found {
            self.keep(ticket, key, found);
        }
    }

    /// A reply of `key` was read from Redis: its fail-safe copy is dropped, and made again only
    /// if the reply is kept (`insert`). The copy is older than what the reader has now seen, and
    /// must not answer after it (a reader never goes back to an older value), when the reply is
    /// not kept (absent, too large, read while the near cache was not active, not vouched for);
    /// nor replaced then by it: a reply not vouched for may itself be older than a copy kept
    /// meanwhile.
    pub(crate) fn replied(&self, key: &str) {
        if let Some(fail_safe) = &self.fail_safe {
            fail_safe.invalidate(key);
        }
    }

    /// `ticket` once the barrier is passed; `None` when the read took no ticket or the barrier
    /// could not be passed. The barrier is given what is left of the read's deadline, counted
    /// from the ticket: a read through the near cache waits no longer than one without it (its
    /// `PING`s alone are bounded by the heartbeat, which may be longer).
    ///
    /// A barrier not passed keeps nothing of the read and drops every local entry: the store
    /// can no longer vouch that the invalidations sent before this reply were applied, so an
    /// older local copy of the value this reader returns could otherwise be served next. The
    /// tracker notices a lost connection on its own; this covers the moment before.
    async fn passed(&self, ticket: Option<Ticket>) -> Option<Ticket> {
        let ticket = ticket?;
        let left = ticket
            .sent
            .checked_add(self.read_deadline)
            .map_or(Duration::MAX, |until| {
                until.saturating_duration_since(Instant::now())
            });
        if matches!(tokio::time::timeout(left, self.barrier()).await, Ok(true)) {
            return Some(ticket);
        }
        // A flush, counted (`NearCacheStats::flushes`): a link too slow for the barrier within
        // the deadline shows as flushes, not as a near cache that silently keeps nothing. Not
        // when tracking was lost meanwhile: that loss dropped everything, and counted once.
        if self.active() {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.drop_live();
        }
        None
    }

    /// [`settle`](Store::settle) for a tagged read sent with `ticket`: the entry's reply (when
    /// `entry` is `Some((key, reply))`) and the tag states read (`states[i]` at `state_keys[i]`,
    /// `None` for an absent key: kept as absent), behind one barrier.
    pub(crate) async fn settle_tagged(
        &self,
        ticket: Option<Ticket>,
        entry: Option<(&str, Option<&WithTtl>)>,
        state_keys: &[&str],
        states: &[Option<Bytes>],
    ) {
        if let Some((key, _)) = entry {
            self.replied(key);
        }
        let Some(ticket) = self.passed(ticket).await else {
            return;
        };
        if let Some((key, Some(found))) = entry {
            self.keep(ticket, key, found);
        }
        for (key, state) in state_keys.iter().zip(states) {
            self.keep_state(ticket, key, state.as_ref());
        }
    }

    /// [`settle`](Store::settle) for the replies of one read of several keys (`found[i]` at
    /// `keys[i]`), behind one barrier.
    pub(crate) async fn settle_each(
        &self,
        ticket: Option<Ticket>,
        keys: &[&str],
        found: &[Option<WithTtl>],
    ) {
        keys.iter().for_each(|key| self.replied(key));
        let Some(ticket) = self.passed(ticket).await else {
            return;
        };
        for (key, found) in keys.iter().zip(found) {
            if let Some(found) = found {
                self.keep(ticket, key, found);
            }
        }
    }

    /// [`settle`](Store::settle) for replies that are not kept (an `MGET` of `keys`): the
    /// barrier, and their fail-safe copies dropped.
    pub(crate) async fn settle_many(&self, ticket: Option<Ticket>, keys: &[&str]) {
        keys.iter().for_each(|key| self.replied(key));
        let _ = self.passed(ticket).await;
    }

    /// Two `PING`s answered in turn on every tracking connection (each within a heartbeat), in
    /// a round begun after this call (concurrent reads share rounds: `barrier.rs`): every
    /// invalidation of a write Redis ran before now has been applied.
    ///
    /// Two, because in BCAST mode Redis does not send an invalidation when the write runs: it
    /// collects the keys and sends them once per event-loop turn, after the turn's commands. A
    /// write run in the same turn as the first `PING`, before it, has its invalidation written
    /// *after* that `PONG`; the second `PING` is sent once the first `PONG` is here, so it runs
    /// in a later turn, and its `PONG` follows that invalidation. One `PING` let a reader go back
    /// to an older value now and then (`tests/near_cache.rs`,
    /// `readers_never_go_back_while_another_client_writes`, failed in CI).
    async fn barrier(&self) -> bool {
        let Some(connections) = self.tracking_connections.load_full() else {
            return false;
        };
        // The longest a round takes (each `PING` within a heartbeat), and a heartbeat more.
        let rounds = u32::try_from(2 * connections.len() + 1).unwrap_or(u32::MAX);
        let patience = self.heartbeat.saturating_mul(rounds);
        self.barrier.pass(patience, || self.ping_round()).await
    }

    /// One round of the barrier: two `PING`s in turn on every tracking connection subscribed
    /// now.
    async fn ping_round(&self) -> bool {
        let Some(connections) = self.tracking_connections.load_full() else {
            return false;
        };
        for connection in connections.iter() {
            for _ in 0..2 {
                let mut connection = connection.clone();
                if !super::tracker::pinged(self, &mut connection, self.heartbeat).await {
                    return false;
                }
            }
        }
        true
    }

    /// Keeps the reply of a read sent with `ticket` (its barrier passed).
    fn keep(&self, ticket: Ticket, key: &str, found: &WithTtl) {
        if found.value.len() > self.max_value_bytes {
            return;
        }
        let now = Instant::now();
        let round_trip = now.saturating_duration_since(ticket.sent);
        let ttl = match found.ttl {
            None => self.max_ttl,
            // `PTTL` is whole milliseconds rounded down at the server: one more off, and one of
            // margin.
            Some(redis_ttl) => self
                .max_ttl
                .min(redis_ttl.saturating_sub(round_trip + PTTL_MARGIN)),
        };
        if ttl.is_zero() {
            return;
        }
        let entry = Entry {
            value: found.value.clone(),
            until: now + ttl,
            // The TTL was read after `sent`: counting from `sent` errs on the early side.
            redis_expires: found.ttl.map(|redis_ttl| ticket.sent + redis_ttl),
            absent: false,
            verified: VerdictCell::of(&found.value),
            read: self.read_of(ticket, key),
        };
        self.insert(entry, key);
    }

    /// Keeps a tag state read with `ticket` (its barrier passed): its value, or its absence.
    /// Tag keys have no Redis TTL (or one that only ends once nothing they judge is alive):
    /// `max_ttl` bounds the local lifetime.
    fn keep_state(&self, ticket: Ticket, key: &str, state: Option<&Bytes>) {
        let value = state.cloned().unwrap_or_default();
        if value.len() > self.max_value_bytes || self.max_ttl.is_zero() {
            return;
        }
        let entry = Entry {
            value,
            until: Instant::now() + self.max_ttl,
            redis_expires: None,
            absent: state.is_none(),
            verified: None,
            read: self.read_of(ticket, key),
        };
        self.insert(entry, key);
    }

    /// Inserts `entry` at `key` unless an invalidation of its slot (or a flush) came after the
    /// ticket of the read it was kept from, checked before and after the insert. Between the
    /// two, a reply read before an invalidation may replace a newer entry kept since; lookups
    /// do not serve it ([`Store::vouches`]), and the second check removes it.
    fn insert(&self, entry: Entry, key: &str) {
        let read = entry.read;
        if !self.still_valid(read) {
            return;
        }
        let fail_safe = self.fail_safe.as_ref().filter(|_| !entry.absent);
        if let Some(fail_safe) = fail_safe {
            fail_safe.keep(key, &entry.value, entry.until, entry.redis_expires);
        }
        self.entries.insert(key.to_owned(), entry);
        // An invalidation between the check and the insert found nothing to remove.
        if !self.still_valid(read) {
            self.entries.invalidate(key);
            if let Some(fail_safe) = fail_safe {
                fail_safe.invalidate(key);
            }
        }
    }

    /// An own write of `keys` (full keys) is about to be sent (see `echo.rs`): call
    /// [`OwnWrite::written`] when it returns.
    pub(crate) fn writing<'a>(&'a self, keys: Vec<&'a [u8]>) -> OwnWrite<'a> {
        // Echoes come only while tracking is on (turning it on or off clears them), and on
        // Cluster from the key's primary's tracking connection: none is registered otherwise,
        // so that nothing waits for one that never comes.
        if self.active() {
            for key in keys.iter().filter(|key| self.covers(key)) {
                self.echoes.sending(key);
            }
        }
        // Dropped now as well as when the write returns: a caller may be answered once the
        // write is sent (`get_or_set` answers as soon as its store is), and its next read
        // must not be the entry the write replaces. (Not counted: the return counts it.)
        for key in &keys {
            self.drop_key(key);
        }
        OwnWrite {
            store: self,
            keys,
            returned: false,
        }
    }

    /// Before a read of `key` (a full key) is sent: while an own write of the key is in flight
    /// (`get_or_set` and `#[cached]` answer once their store is sent), waits for it to return,
    /// at most [`OWN_WRITE_WAIT`] (or a tenth of the repository's deadline when that is
    /// shorter: an outage still costs a read no more than its deadline and slack). The read
    /// then takes its ticket after the write's return and is sent after it: its reply is kept,
    /// the write's echo dropping nothing (`echo.rs`). Sent while the write was in flight, it was
    /// dropped by the write's return: the first read after a load was never kept, and with
    /// fail-safe on no copy was made.
    pub(crate) async fn after_own_write(&self, key: &str) {
        let key_bytes = key.as_bytes();
        if !self.echoes.in_flight(key_bytes) {
            return;
        }
        let until = Instant::now().checked_add(OWN_WRITE_WAIT.min(self.read_deadline / 10));
        // Watched before the write is looked at again: its return wakes the watch (`written`
        // drops the key), also when it comes between the two.
        let watch = self.watch(key);
        while self.echoes.in_flight(key_bytes) {
            let left = until.map_or(Duration::MAX, |until| {
                until.saturating_duration_since(Instant::now())
            });
            if left.is_zero() || !watch.changed_within(left).await {
                return;
            }
        }
    }

    /// The own write of `key` returned (`changed`: it succeeded and changed the key): the key is
    /// dropped locally at once (rule 5), and Redis's echo of the write, if it comes next, drops
    /// no read sent since (see `echo.rs`).
    fn written(&self, key: &[u8], changed: bool) {
        // An invalidation that arrived while the write was in flight was counted then: the
        // write's own drop is not counted again (one per key, as the stats say).
        if self.echoes.returned(key, changed) {
            self.drop_key(key);
        } else {
            self.invalidate(key);
        }
    }

    /// An invalidation of `key` from Redis.
    pub(super) fn invalidated(&self, key: &[u8]) {
        // The echo of an own write is that write's invalidation, counted when it returned.
        if !self.echoes.arrived(key) {
            self.invalidate(key);
        }
    }

    /// Drops `key`, counted: Redis said it changed, or this cache wrote it.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.drop_key(key);
    }

    /// Drops `key` (not counted).
    fn drop_key(&self, key: &[u8]) {
        let number = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.slots[slot_of_bytes(key)].fetch_max(number, Ordering::SeqCst);
        let key = std::str::from_utf8(key);
        // Before the state is dropped: no verdict made from it is served from then on.
        // The cache's tag state keys only: an entry's key may hold `__impcache_tag:` (the key
        // `__impcache_tag:x` of version 1 is `cache:1:__impcache_tag:x`), and each change of it
        // sent every waiter of a tagged load to its own loader while Redis was down (found by a
        // regression hunt, 2026-12-07).
        if key.map_or(true, |key| key.starts_with(&*self.tag_keys)) {
            self.tag_sequence.fetch_add(1, Ordering::SeqCst);
            self.tag_changed_at
                .fetch_max(crate::tags::stamp_micros(), Ordering::Relaxed);
        }
        if let Ok(key) = key {
            self.entries.invalidate(key);
            if let Some(fail_safe) = &self.fail_safe {
                fail_safe.invalidate(key);
            }
            self.watches.changed(key);
        }
    }

    /// Whether a tag state key was invalidated (by Redis's report, or an own write) at or after
    /// `since` ([`tags::stamp_micros`](crate::tags::stamp_micros)). Not a flush, which tells of no
    /// change, only that nothing more is known.
    pub(crate) fn tag_changed_since(&self, since: u64) -> bool {
        self.tag_changed_at.load(Ordering::Relaxed) >= since
    }

    /// A watch of `key` (a full key): woken when Redis reports it changed, or on a flush.
    pub(crate) fn watch(&self, key: &str) -> Watch {
        self.watches.watch(key)
    }

    /// Drops every entry (and fail-safe copy), and every reply in flight: a flush (`FLUSHDB`,
    /// `delete_pattern`, a new slot map), counted.
    pub(crate) fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.drop_all();
    }

    /// A [`flush`](Self::flush) when the returned guard is dropped: after a sweep, whether it
    /// ended or its future was dropped midway.
    pub(crate) fn flush_when_dropped(&self) -> FlushWhenDropped<'_> {
        FlushWhenDropped(self)
    }

    /// Drops every entry (and fail-safe copy), and every reply in flight.
    fn drop_all(&self) {
        self.drop_live();
        if let Some(fail_safe) = &self.fail_safe {
            fail_safe.flush();
        }
    }

    /// Drops every live entry, and every reply in flight (the fail-safe copies stay).
    fn drop_live(&self) {
        self.echoes.clear();
        let number = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.flushed.fetch_max(number, Ordering::SeqCst);
        self.tag_sequence.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        self.watches.all_changed();
    }

    fn servers(&self) -> MutexGuard<'_, Servers> {
        // A list of servers and connections: a panic while it was held leaves it usable.
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Begins tracking session `session` over the servers serving `slots` (one list per server;
    /// an empty one off Cluster, where the one server vouches for every key), none subscribed
    /// yet: nothing is served locally until one is ([`Store::attach`]), and everything from
    /// before is dropped (not counted as a flush: the loss that ended the last session was). A
    /// switch of the repository to other servers ends it (`SwitchListener::switched`): the
    /// servers it has not subscribed yet are not attached.
    pub(super) fn begin(&self, session: u64, slots: Vec<Vec<u16>>) {
        let mut servers = self.servers();
        *servers = Servers::new(session, slots);
        self.connection.store(session, Ordering::SeqCst);
        self.tracking_connections.store(None);
        self.complete.store(false, Ordering::SeqCst);
        let _ = self
            .state
            .compare_exchange(ACTIVE, CONNECTING, Ordering::SeqCst, Ordering::SeqCst);
        if let Some(shards) = &self.shards {
            shards.unvouch_all();
        }
        self.drop_live();
    }

    /// Server `index` of session `session` is subscribed on `connection`: its keys are served
    /// locally from now on (the store is active once one server is), everything local of them
    /// from before dropped (the server forgot what it tracked). `false` when it was up already or
    /// the session ended (a switch, the loss of every server).
    pub(super) fn attach(
        &self,
        session: u64,
        index: usize,
        connection: MultiplexedConnection,
    ) -> bool {
        self.attach_server(session, index, Some(connection))
    }

    /// [`attach`](Store::attach); `connection` is `None` only in unit tests.
    fn attach_server(
        &self,
        session: u64,
        index: usize,
        connection: Option<MultiplexedConnection>,
    ) -> bool {
        let mut servers = self.servers();
        if self.is_unsupported() {
            return false;
        }
        let Some(slots) = servers
            .attach(session, index, connection)
            .map(<[u16]>::to_vec)
        else {
            return false;
        };
        // The reads' barrier `PING`s it before any read whose reply it vouches for is kept: a
        // ticket at or past the mark below is taken after this.
        self.tracking_connections
            .store(Some(Arc::new(servers.live())));
        match &self.shards {
            // Replies in flight of its slots were read with older tickets; a verdict on a
            // tagged entry judged meanwhile may rest on a state of its slots read while nothing
            // reported its changes.
            Some(shards) => {
                let mark = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
                shards.mark(&slots, mark);
                self.tag_sequence.fetch_add(1, Ordering::SeqCst);
            }
            None => self.drop_live(),
        }
        self.complete.store(servers.all_up(), Ordering::SeqCst);
        let _ = self
            .state
            .compare_exchange(CONNECTING, ACTIVE, Ordering::SeqCst, Ordering::SeqCst);
        drop(servers);
        self.handshake_ended();
        true
    }

    /// Server `index` of session `session` lost its tracking connection (its end read, its
    /// heartbeat `PING` unanswered): nothing of its keys is served locally from now on, or
    /// nothing at all when no other server is up ([`Store::disconnect`]). Counted as a flush.
    /// `false` when it was down already or the session ended.
    pub(super) fn detach(&self, session: u64, index: usize) -> bool {
        let mut servers = self.servers();
        let Some(slots) = servers.detach(session, index).map(<[u16]>::to_vec) else {
            return false;
        };
        let Some(shards) = self.shards.as_ref().filter(|_| servers.any_up()) else {
            drop(servers);
            self.disconnect();
            return true;
        };
        shards.mark(&slots, UNVOUCHED);
        self.tracking_connections
            .store(Some(Arc::new(servers.live())));
        self.complete.store(false, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        // What a flush drops besides its entries: the echoes expected (none comes from a lost
        // connection), the verdicts on tagged entries (judged from tag states that may be of
        // its slots), and the waits on keys (woken to read again).
        self.echoes.clear();
        self.tag_sequence.fetch_add(1, Ordering::SeqCst);
        drop(servers);
        self.watches.all_changed();
        if let Some(fail_safe) = &self.fail_safe {
            fail_safe.lost(|key| !shards.covers(key.as_bytes()));
        }
        true
    }

    /// The tracking connection of each server of session `session` (`None` where it is down);
    /// none once the session ended.
    pub(super) fn connections(&self, session: u64) -> Vec<Option<MultiplexedConnection>> {
        self.servers().connections(session)
    }

    /// The tracking session `session` is over (if it is still the current one): nothing is
    /// served locally until another one subscribes a server.
    pub(super) fn lost(&self, session: u64) {
        if self.connection.load(Ordering::SeqCst) == session {
            self.disconnect();
        }
    }

    /// Stops serving locally and drops everything; the fail-safe copies stay, no longer
    /// vouched for. Counted as a flush once per loss (it may be noticed twice: the connection's
    /// end and its driver's disconnection notice).
    pub(super) fn disconnect(&self) {
        self.stop_serving();
        if let Some(fail_safe) = &self.fail_safe {
            fail_safe.lost(|_| true);
        }
    }

    /// Stops serving locally, ends the tracking session and drops the live entries: a few
    /// atomic stores (moka's `invalidate_all` marks a time), whatever the number of entries.
    fn stop_serving(&self) {
        self.servers().end();
        self.tracking_connections.store(None);
        let was_active = self
            .state
            .compare_exchange(ACTIVE, CONNECTING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if was_active {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        self.drop_live();
    }

    /// The fail-safe copy of `key` (a full key) within `policy`'s `stale_if_error` window, for
    /// a `get_or_set` whose read failed; `None` when fail-safe is off or no copy qualifies.
    pub(crate) fn fail_safe(&self, key: &str, policy: &Freshness) -> Option<Bytes> {
        self.fail_safe.as_ref()?.get(key, policy)
    }

    /// A value this cache loaded (`get_or_set`) but could not store (Redis unreachable, timed out
    /// or refusing the write) becomes the fail-safe copy of `key` (a full key), vouched for as
    /// long as the stored entry would have been kept locally (`lifetime`: the TTL it was stored
    /// with): a loader failing next, Redis still down, is answered with it, as FusionCache's L1
    /// keeps the last value loaded.
    /// The store's own write had dropped the copy read before (older than this value), and
    /// nothing took its place: every failing loader from then on got its error (found by a
    /// probe). A read from Redis once it is back drops it, as any copy ([`replied`](Store::replied)).
    pub(crate) fn keep_unstored(&self, key: &str, value: &Bytes, lifetime: Option<Duration>) {
        let Some(fail_safe) = &self.fail_safe else {
            return;
        };
        if value.len() > self.max_value_bytes {
            return;
        }
        let now = Instant::now();
        let redis_expires = lifetime.and_then(|lifetime| now.checked_add(lifetime));
        let local_end = now.checked_add(self.max_ttl);
        let vouched_until = [redis_expires, local_end]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        fail_safe.keep(key, value, vouched_until, redis_expires);
    }

    /// Counts and logs a fail-safe copy served in place of a failed loader (`key`: the caller's
    /// key, when the cache records keys).
    pub(crate) fn fail_safe_served(&self, key: Option<&str>) {
        self.fail_safe_served.fetch_add(1, Ordering::Relaxed);
        near_lookups(Tier::FailSafe, 1);
        crate::observe::limited::limited_warn!(
            target: "impcache",
            key,
            "Redis and the loader failed: serving the near cache's fail-safe copy (not vouched for)"
        );
    }

    /// For good: the repository or server cannot track keys. Logged once.
    pub(crate) fn unsupported(&self, why: &str) {
        self.state.store(UNSUPPORTED, Ordering::SeqCst);
        // The tracking connections are closed (on Cluster, those of the primaries that did
        // not refuse).
        self.servers().end();
        self.tracking_connections.store(None);
        self.drop_all();
        {
            let mut warned = self
                .warned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !*warned {
                *warned = true;
                tracing::warn!(
                    target: "impcache",
                    reason = why,
                    "near cache unsupported: every read goes to the repository"
                );
            }
        }
        // After the warning: a read released by the end of the handshake finds it logged.
        self.handshake_ended();
    }

    pub(super) fn is_unsupported(&self) -> bool {
        self.state.load(Ordering::SeqCst) == UNSUPPORTED
    }
}

/// A repository's switch to other servers: a Sentinel failover, a new Cluster slot map (a
/// replica promoted, a slot moved, a `MOVED`). The tracking connections are on the old servers,
/// which send no invalidation for writes made on the new ones.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
impl crate::repository::switches::SwitchListener for Store {
    /// As for a lost connection, nothing is served locally from now on and everything is
    /// dropped (counted as a flush); the tracker is woken to subscribe again, on the new
    /// servers. Called by the repository as it switches, before any operation can use the new
    /// servers.
    fn switched(&self) {
        // Not `disconnect`: the repository's state may be locked meanwhile, and marking the
        // fail-safe copies walks them all (1.6 s for 200,000 copies, every operation on the
        // repository waiting). The tracker does it, woken below (`lost`), in its own task.
        self.stop_serving();
        // A permit if the tracker is not waiting (it is subscribing): it subscribes again once
        // it has.
        self.switched.notify_one();
    }
}

/// The clock of [`Store::catch_up`]: units of 2^20 ns (about 1 ms) since the first call.
fn catch_up_clock() -> u64 {
    static ORIGIN: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    u64::try_from(ORIGIN.elapsed().as_nanos() >> 20).unwrap_or(u64::MAX)
}

/// The invalidation-log slot of `key`: FNV-1a of its bytes.
#[inline]
fn slot_of(key: &str) -> usize {
    slot_of_bytes(key.as_bytes())
}

#[inline]
fn slot_of_bytes(key: &[u8]) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize & (SLOTS - 1)
}

// Unit tests: an `unwrap`, `expect` or `panic!` here is the test failing (clippy.toml allows
// them in tests).
#[cfg(test)]
mod tests {
    use super::*;

    fn found(value: &'static [u8]) -> WithTtl {
        WithTtl::new(Bytes::from_static(value), Some(Duration::from_secs(60)))
    }

    /// `store` active: one server (which vouches for every key), subscribed.
    fn activate(store: &Store) {
        store.begin(1, vec![Vec::new()]);
        assert!(store.attach_server(1, 0, None));
    }

    fn active() -> Store {
        let store = Store::new(&NearCache::new(), Duration::MAX, None, "cache");
        activate(&store);
        store
    }

    #[test]
    fn a_cancelled_own_write_expects_no_echo() {
        let store = active();
        // Returned, changed: its echo is expected.
        store.writing(vec![b"k"]).written(true);
        assert!(store.echoes.arrived(b"k"));
        // Dropped unfinished (its future cancelled): nothing is left expected or in flight.
        drop(store.writing(vec![b"k", b"j"]));
        assert!(!store.echoes.arrived(b"k"));
        assert!(!store.echoes.arrived(b"j"));
        store.writing(vec![b"k"]).written(true);
        assert!(store.echoes.arrived(b"k"), "a later write is not spoiled");
    }

    #[test]
    fn no_echo_is_expected_unless_tracking_is_on() {
        let store = Store::new(&NearCache::new(), Duration::MAX, None, "cache");
        store.writing(vec![b"k"]).written(true);
        store.unsupported("test");
        store.writing(vec![b"j"]).written(true);
        assert_eq!(store.echoes.len.load(Ordering::Acquire), 0);
    }

    /// A ticket, or the test's error: an active store always hands one out.
    const NO_TICKET: &str = "an active store hands out tickets";

    #[test]
    fn a_reply_that_raced_with_an_invalidation_is_not_kept() -> Result<(), &'static str> {
        let store = active();
        let ticket = store.ticket("k").ok_or(NO_TICKET)?;
        store.invalidate(b"p:1:k");
        store.keep(ticket, "p:1:k", &found(b"old"));
        assert_eq!(store.get("p:1:k"), None);
        let ticket = store.ticket("k").ok_or(NO_TICKET)?;
        store.keep(ticket, "p:1:k", &found(b"new"));
        assert_eq!(store.get("p:1:k").as_deref(), Some(&b"new"[..]));
        Ok(())
    }

    #[test]
    fn a_flush_drops_replies_in_flight_and_nothing_is_served_while_connecting(
    ) -> Result<(), &'static str> {
        let store = active();
        let ticket = store.ticket("k").ok_or(NO_TICKET)?;
        store.flush();
        store.keep(ticket, "k", &found(b"v"));
        assert_eq!(store.get("k"), None);
        let ticket = store.ticket("k").ok_or(NO_TICKET)?;
        store.keep(ticket, "k", &found(b"v"));
        assert!(store.get("k").is_some());
        store.lost(2); // not the current connection
        assert!(store.get("k").is_some());
        store.lost(1);
        assert_eq!(store.status(), NearCacheStatus::Connecting);
        assert_eq!(store.get("k"), None);
        assert!(store.ticket("k").is_none());
        Ok(())
    }

    /// On Cluster each primary's tracking connection vouches for its own slots: with one of two
    /// primaries subscribed (status `Partial`), the other's keys are neither kept nor served,
    /// the first's are; when a primary's connection is lost its entries stop being served at
    /// once (the other's stay), and when it is back they count as flushed.
    #[test]
    fn each_cluster_primary_vouches_for_its_own_slots_only() -> Result<(), &'static str> {
        // The "slot" of a key: its first byte ('a' on primary 0, 'b' on primary 1).
        let store = Store::new(
            &NearCache::new(),
            Duration::MAX,
            Some(|key| key.first().map_or(0, |byte| (*byte).into())),
            "cache",
        );
        store.begin(1, vec![vec![u16::from(b'a')], vec![u16::from(b'b')]]);
        assert!(store.attach_server(1, 0, None));
        assert_eq!(store.status(), NearCacheStatus::Partial);
        store.keep(store.ticket("a1").ok_or(NO_TICKET)?, "a1", &found(b"1"));
        assert_eq!(store.get("a1").as_deref(), Some(&b"1"[..]));
        // Nothing vouches for primary 1's keys: its read bypasses, a reply is not kept.
        assert!(store.ticket("b1").is_none());
        store.keep(store.ticket_for(1).ok_or(NO_TICKET)?, "b1", &found(b"1"));
        assert_eq!(store.get("b1"), None);
        // No verdict on a tagged entry while a primary is not tracked.
        assert!(matches!(
            store.verified("a1", &Tags::default(), false),
            Err(None)
        ));

        let before = store.ticket_for(1).ok_or(NO_TICKET)?;
        assert!(store.attach_server(1, 1, None));
        assert_eq!(store.status(), NearCacheStatus::Active);
        // A reply read before primary 1 was subscribed is not kept; one read after is.
        store.keep(before, "b1", &found(b"1"));
        assert_eq!(store.get("b1"), None);
        store.keep(store.ticket("b1").ok_or(NO_TICKET)?, "b1", &found(b"2"));
        assert_eq!(store.get("b1").as_deref(), Some(&b"2"[..]));

        let flushes = store.stats().flushes;
        let in_flight = store.ticket("a2").ok_or(NO_TICKET)?;
        assert!(store.detach(1, 0));
        assert!(!store.detach(1, 0), "lost once");
        assert_eq!(store.status(), NearCacheStatus::Partial);
        assert_eq!(store.stats().flushes, flushes + 1);
        assert_eq!(store.get("a1"), None);
        assert_eq!(store.get("b1").as_deref(), Some(&b"2"[..]));
        store.keep(in_flight, "a2", &found(b"1"));
        assert_eq!(store.get("a2"), None);
        // Back: what was kept of its slots before counts as flushed.
        assert!(store.attach_server(1, 0, None));
        assert_eq!(store.get("a1"), None);
        store.keep(store.ticket("a1").ok_or(NO_TICKET)?, "a1", &found(b"3"));
        assert_eq!(store.get("a1").as_deref(), Some(&b"3"[..]));
        // The last one lost: nothing is served.
        assert!(store.detach(1, 0) && store.detach(1, 1));
        assert_eq!(store.status(), NearCacheStatus::Connecting);
        assert_eq!(store.get("b1"), None);
        assert!(!store.attach_server(1, 0, None), "the session ended");
        Ok(())
    }

    #[test]
    fn a_tag_state_and_its_absence_are_kept_until_invalidated() -> Result<(), &'static str> {
        let store = active();
        let ticket = store.ticket_for(2).ok_or(NO_TICKET)?;
        store.keep_state(ticket, "p:1:__impcache_tag:hard:a", None);
        store.keep_state(ticket, "p:1:__impcache_tag:soft:a", Some(&Bytes::from("7")));
        assert_eq!(store.get_state("p:1:__impcache_tag:hard:a"), Some(None));
        assert_eq!(
            store.get_state("p:1:__impcache_tag:soft:a"),
            Some(Some(Bytes::from("7")))
        );
        // An absence is never a value for a plain read.
        assert_eq!(store.get("p:1:__impcache_tag:hard:a"), None);
        // The key's creation (its invalidation) drops the absence ...
        store.invalidate(b"p:1:__impcache_tag:hard:a");
        assert_eq!(store.get_state("p:1:__impcache_tag:hard:a"), None);
        // ... and a `nil` reply that raced with it is not kept.
        store.keep_state(ticket, "p:1:__impcache_tag:hard:a", None);
        assert_eq!(store.get_state("p:1:__impcache_tag:hard:a"), None);
        Ok(())
    }

    /// Two reads of a key, one sent before another client's write and one after its
    /// invalidation: the older reply passed its first check before the invalidation and lands
    /// after the newer one was kept (the window between `insert`'s two checks, seen as a reader
    /// going back in `tests/near_cache.rs`, `readers_never_go_back_while_another_client_writes`).
    /// It is never served, and the next lookup removes it.
    #[test]
    fn a_reply_that_raced_an_invalidation_is_never_served() -> Result<(), &'static str> {
        let store = active();
        let older = store.ticket("k").ok_or(NO_TICKET)?;
        store.invalidate(b"k");
        let newer = store.ticket("k").ok_or(NO_TICKET)?;
        store.keep(newer, "k", &found(b"new"));
        assert_eq!(store.get("k"), Some(Bytes::from_static(b"new")));
        // The older reply's insert, past its first check.
        let stale = Entry {
            value: Bytes::from_static(b"old"),
            until: Instant::now() + Duration::from_secs(60),
            redis_expires: None,
            absent: false,
            verified: None,
            read: store.read_of(older, "k"),
        };
        store.entries.insert("k".to_owned(), stale);
        assert_eq!(store.get("k"), None);
        store.entries.run_pending_tasks();
        assert_eq!(store.entries.entry_count(), 0, "removed by the lookup");
        Ok(())
    }

    #[test]
    fn lifetimes_are_capped_and_large_values_skipped() -> Result<(), &'static str> {
        let store = Store::new(
            &NearCache::new().max_value_bytes(4),
            Duration::MAX,
            None,
            "cache",
        );
        activate(&store);
        store.keep(
            store.ticket("big").ok_or(NO_TICKET)?,
            "big",
            &found(b"12345"),
        );
        assert_eq!(store.get("big"), None);
        let expired = WithTtl::new(Bytes::from_static(b"1"), Some(Duration::ZERO));
        store.keep(store.ticket("gone").ok_or(NO_TICKET)?, "gone", &expired);
        assert_eq!(store.get("gone"), None);
        Ok(())
    }

    #[test]
    fn an_entry_past_its_deadline_is_not_served_and_is_removed() -> Result<(), &'static str> {
        let store = active();
        // 2 ms of margin and the round trip come off the Redis TTL: about 1 s locally.
        let short = WithTtl::new(Bytes::from_static(b"1"), Some(Duration::from_millis(1002)));
        store.keep(store.ticket("k").ok_or(NO_TICKET)?, "k", &short);
        store.keep_state(store.ticket("t").ok_or(NO_TICKET)?, "t", None);
        assert!(store.get("k").is_some());
        std::thread::sleep(Duration::from_millis(1010));
        assert_eq!(store.get("k"), None);
        // Removed, not left to weigh (moka's own lifetime for it is `max_ttl`, 300 s).
        store.entries.run_pending_tasks();
        assert_eq!(store.entries.entry_count(), 1, "only the tag state is left");
        Ok(())
    }
}
