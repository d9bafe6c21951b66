//! Which keys the tracking connections vouch for.
//!
//! On a single server or through Sentinel one tracking connection vouches for every key. On
//! Cluster each primary's connection vouches for the keys of the slots it serves, and only for
//! those: a primary without one (dead, unreachable, frozen past the heartbeat's `PING`) takes
//! only its own keys out of the near cache, as it fails only its own keys in the repository.
//! Its keys are neither served nor kept locally (nothing vouches for them: a change there would
//! go unseen) and its tracking is tried again at every heartbeat; when it is back, everything
//! local of its slots counts as flushed (the server forgot what it tracked) and its keys join
//! again.
//!
//! [`Shards`] holds, per Cluster slot, the invalidation sequence number from which its entries
//! are vouched for: a local entry of the slot is served, and a reply kept, only if its read's
//! ticket is not older (the race rule's flush mark, per slot), and never while the slot's
//! primary has no tracking connection ([`UNVOUCHED`]). [`Servers`] holds the tracking session's
//! servers, each with its slots and, while subscribed, its connection.

use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::MultiplexedConnection;

/// The mark of a slot whose primary has no tracking connection: no ticket reaches it.
pub(super) const UNVOUCHED: u64 = u64::MAX;

/// The number of Cluster hash slots.
const CLUSTER_SLOTS: u16 = 16384;

/// Per Cluster slot, the sequence number from which its entries are vouched for (Cluster only).
pub(super) struct Shards {
    /// The Cluster slot of a key (CRC16 of its hash tag).
    slot_of: fn(&[u8]) -> u16,
    marks: Box<[AtomicU64]>,
}

impl Shards {
    /// Every slot unvouched; `slot_of` gives a key's slot.
    pub(super) fn new(slot_of: fn(&[u8]) -> u16) -> Shards {
        Shards {
            slot_of,
            marks: (0..CLUSTER_SLOTS)
                .map(|_| AtomicU64::new(UNVOUCHED))
                .collect(),
        }
    }

    /// The Cluster slot of `key`.
    #[inline]
    pub(super) fn shard(&self, key: &[u8]) -> u16 {
        // The mask keeps a wrong `slot_of` within the table.
        (self.slot_of)(key) & (CLUSTER_SLOTS - 1)
    }

    /// Whether an entry of slot `shard` read with ticket `number` is vouched for.
    #[inline]
    pub(super) fn vouches(&self, shard: u16, number: u64) -> bool {
        self.marks[usize::from(shard)].load(Ordering::SeqCst) <= number
    }

    /// Whether a tracking connection vouches for `key` now.
    pub(super) fn covers(&self, key: &[u8]) -> bool {
        self.marks[usize::from(self.shard(key))].load(Ordering::SeqCst) != UNVOUCHED
    }

    /// Sets the mark of each of `slots` (out of range ones are left out).
    pub(super) fn mark(&self, slots: &[u16], mark: u64) {
        for slot in slots {
            if let Some(cell) = self.marks.get(usize::from(*slot)) {
                cell.store(mark, Ordering::SeqCst);
            }
        }
    }

    /// Every slot unvouched (a new session: no primary subscribed yet).
    pub(super) fn unvouch_all(&self) {
        for cell in self.marks.iter() {
            cell.store(UNVOUCHED, Ordering::SeqCst);
        }
    }
}

/// The servers of the tracking session, in the order the tracker lists them.
#[derive(Default)]
pub(super) struct Servers {
    /// The session; 0 once it ended (a loss of every server, a switch): no server of it is
    /// attached or lost any more.
    pub(super) session: u64,
    servers: Vec<Server>,
}

/// One server of the session.
struct Server {
    /// The Cluster slots it serves (empty off Cluster: it vouches for every key).
    slots: Vec<u16>,
    /// Whether its tracking connection is subscribed.
    up: bool,
    /// That connection (`None` only in the store's unit tests, which have no server).
    connection: Option<MultiplexedConnection>,
}

impl Servers {
    /// Session `session` over servers serving `slots` (one list per server), none subscribed.
    pub(super) fn new(session: u64, slots: Vec<Vec<u16>>) -> Servers {
        let servers = slots
            .into_iter()
            .map(|slots| Server {
                slots,
                up: false,
                connection: None,
            })
            .collect();
        Servers { session, servers }
    }

    /// Ends the session: no server is up any more.
    pub(super) fn end(&mut self) {
        self.session = 0;
        self.servers.clear();
    }

    /// Server `index` of `session` subscribed on `connection`: its slots, unless it was up
    /// already or is not of the session.
    pub(super) fn attach(
        &mut self,
        session: u64,
        index: usize,
        connection: Option<MultiplexedConnection>,
    ) -> Option<&[u16]> {
        let server = self
            .servers
            .get_mut(index)
            .filter(|server| session != 0 && session == self.session && !server.up)?;
        server.up = true;
        server.connection = connection;
        Some(&server.slots)
    }

    /// Server `index` of `session` lost its tracking connection: its slots, unless it was down
    /// already or is not of the session.
    pub(super) fn detach(&mut self, session: u64, index: usize) -> Option<&[u16]> {
        let server = self
            .servers
            .get_mut(index)
            .filter(|server| session != 0 && session == self.session && server.up)?;
        server.up = false;
        server.connection = None;
        Some(&server.slots)
    }

    /// The connection of each server of `session` (`None` where it is down); none once the
    /// session ended.
    pub(super) fn connections(&self, session: u64) -> Vec<Option<MultiplexedConnection>> {
        if session == 0 || session != self.session {
            return Vec::new();
        }
        self.servers
            .iter()
            .map(|server| server.connection.clone().filter(|_| server.up))
            .collect()
    }

    /// The connections of the servers up: the reads' barrier `PING`s them.
    pub(super) fn live(&self) -> Vec<MultiplexedConnection> {
        self.servers
            .iter()
            .filter(|server| server.up)
            .filter_map(|server| server.connection.clone())
            .collect()
    }

    /// Whether any server is up.
    pub(super) fn any_up(&self) -> bool {
        self.servers.iter().any(|server| server.up)
    }

    /// Whether every server is up.
    pub(super) fn all_up(&self) -> bool {
        self.servers.iter().all(|server| server.up)
    }
}

// Unit tests: an `assert!` here is the test failing; none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;

    fn first_byte(key: &[u8]) -> u16 {
        key.first().copied().map_or(0, u16::from)
    }

    #[test]
    fn a_slot_is_vouched_for_from_its_mark_and_never_while_unvouched() {
        let shards = Shards::new(first_byte);
        assert!(!shards.covers(b"a"));
        assert!(!shards.vouches(shards.shard(b"a"), u64::MAX - 1));
        shards.mark(&[u16::from(b'a')], 5);
        assert!(shards.covers(b"a"));
        assert!(
            !shards.vouches(shards.shard(b"a"), 4),
            "read before the mark"
        );
        assert!(shards.vouches(shards.shard(b"a"), 5));
        assert!(!shards.covers(b"b"));
        shards.unvouch_all();
        assert!(!shards.covers(b"a"));
    }

    #[test]
    fn servers_attach_and_detach_once_and_only_in_their_session() {
        let mut servers = Servers::new(3, vec![vec![1, 2], vec![3]]);
        assert!(!servers.any_up());
        assert_eq!(servers.attach(2, 0, None), None, "another session");
        assert_eq!(servers.attach(3, 0, None), Some(&[1, 2][..]));
        assert_eq!(servers.attach(3, 0, None), None, "up already");
        assert!(servers.any_up() && !servers.all_up());
        assert_eq!(servers.attach(3, 1, None), Some(&[3][..]));
        assert!(servers.all_up());
        assert_eq!(servers.detach(3, 1), Some(&[3][..]));
        assert_eq!(servers.detach(3, 1), None, "down already");
        assert_eq!(servers.connections(3).len(), 2);
        servers.end();
        assert_eq!(servers.detach(3, 0), None, "the session ended");
        assert!(servers.connections(3).is_empty());
        assert!(!servers.any_up());
    }
}
