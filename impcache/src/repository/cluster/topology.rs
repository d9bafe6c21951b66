//! The slot map: which primary serves which slot, learned with `CLUSTER SLOTS`, kept fresh while
//! a node fails; a key's slot (CRC16 of its hash tag, as Redis computes it); the primaries of
//! `CLUSTER NODES`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::RedisError;
use tokio::task::JoinSet;

use super::node::Node;
use super::{RedisClusterCacheRepository, NODE_EVENTS};

/// While a node fails, the slot map is learned again in the background at most this often, so
/// that a replica promoted in its place is found without waiting for a `MOVED`.
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

impl RedisClusterCacheRepository {
    /// The slot map, learned if none is known (one `CLUSTER SLOTS` at a time).
    pub(super) async fn slot_map(&self) -> redis::RedisResult<Arc<SlotMap>> {
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
    /// nothing while another answers). A map that says something else than the last one learned
    /// tells the near caches (`switch_listeners`), whoever learned it: an operation that failed
    /// on a node, the background refresh, a near cache's heartbeat.
    pub(super) async fn learn_slot_map(&self) -> redis::RedisResult<Arc<SlotMap>> {
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
            // A configured node that is no primary (a replica, a dead node) is asked through its
            // own connection, kept, without a breaker: only the map's primaries have breakers
            // and their metrics. (A connection made for each learning was one more connection
            // to each replica at every near-cache heartbeat and sweep; a regression hunt.)
            let node = self
                .known_node(&host, port)
                .unwrap_or_else(|| self.other_node(&host, port));
            let this = self.clone();
            tasks.spawn(async move {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("SLOTS");
                let cmd = &cmd;
                let reply = this
                    .with_node_connection(&node, |mut connection| async move {
                        connection.send_packed_command(cmd).await
                    })
                    .await;
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
            self.forget_nodes_outside(&map);
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
            // Not 0, which stands for "none yet".
            let fingerprint = map.fingerprint().max(1);
            let before = self.inner.fingerprint.swap(fingerprint, Ordering::AcqRel);
            if before != 0 && before != fingerprint {
                self.inner.switch_listeners.switched();
            }
            return Ok(map);
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((
                redis::ErrorKind::ClusterConnectionNotFound,
                "no cluster node answered CLUSTER SLOTS",
            ))
        }))
    }

    /// The configured node at `host:port` that is no primary, made on first use (see
    /// `Inner::others`).
    fn other_node(&self, host: &str, port: u16) -> Arc<Node> {
        self.inner
            .others
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((host.to_owned(), port))
            .or_insert_with(|| Arc::new(self.new_node(host, port, None)))
            .clone()
    }

    /// Forgets the nodes that are no primaries of `map`: a primary replaced by a failover, a
    /// node removed from the cluster. Their breakers are retired (the state gauge of a dead
    /// primary's breaker said "open" for ever after its replica took over, and every address
    /// ever met stayed a label; found by a probe), and their direct connections close with the
    /// last handle. A node met again (it came back as a primary, a `MOVED` names it) is made
    /// anew.
    fn forget_nodes_outside(&self, map: &SlotMap) {
        self.inner
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|address, node| {
                let kept = map.nodes.contains(address);
                if !kept {
                    node.breaker.retire();
                }
                kept
            });
    }

    /// Learns the slot map again in the background, at most once per [`REFRESH_INTERVAL`]: a
    /// node failed, and a replica may be taking over its slots.
    pub(super) fn refresh_soon(&self) {
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

    /// Drops `stale` (unless a newer map replaced it already), after a `MOVED`: the next
    /// operation learns the map again. A near cache is told at once (before the redirected
    /// command is sent again): the slot's new owner may be a node none of its tracking
    /// connections is on.
    pub(super) fn forget_slot_map(&self, stale: &Arc<SlotMap>) {
        let forgotten = {
            let mut map = self
                .inner
                .slot_map
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let current = map.as_ref().is_some_and(|m| Arc::ptr_eq(m, stale));
            if current {
                *map = None;
            }
            current
        };
        if forgotten {
            self.inner.switch_listeners.switched();
        }
    }
}

/// Which primary serves which slot: `owners[slot]` is an index in `nodes`, or [`NO_OWNER`] for a
/// slot no known primary serves (its keys go through the client's routing).
#[derive(Debug)]
pub(super) struct SlotMap {
    pub(super) nodes: Vec<(String, u16)>,
    pub(super) owners: Box<[u16]>,
    /// The repository's handle of each of `nodes` (same order), with its breaker and connection.
    pub(super) handles: Vec<Arc<Node>>,
}

impl SlotMap {
    /// What the map says (its primaries and which serves each slot), as one number: two maps
    /// that say the same have the same fingerprint, so a re-read that changed nothing does not
    /// flush a near cache (the map's address would: each read makes a new map).
    pub(super) fn fingerprint(&self) -> u64 {
        std::hash::BuildHasher::hash_one(
            &std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default(),
            (&self.nodes, &self.owners),
        )
    }

    /// The handle of the primary serving `slot`, if known.
    pub(super) fn node_for(&self, slot: u16) -> Option<&Arc<Node>> {
        self.handles.get(self.owner(slot)?)
    }

    /// The index in `nodes` of the primary serving `slot`, if known.
    pub(super) fn owner(&self, slot: u16) -> Option<usize> {
        match self.owners.get(usize::from(slot)) {
            Some(&NO_OWNER) | None => None,
            Some(&node) => Some(usize::from(node)),
        }
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..], replicas..], ..]`.
    /// Ranges whose primary has no usable address (empty, `?`) are left out.
    pub(super) fn parse(reply: &redis::Value) -> Self {
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
pub(super) const SLOTS: u16 = 16384;
/// A slot no known primary serves, in [`SlotMap::owners`].
const NO_OWNER: u16 = u16::MAX;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and the next
/// `}`, if not empty) or of the whole key, modulo 16384, as Redis computes it.
pub(super) fn key_slot(key: &[u8]) -> u16 {
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
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// The one slot of every key a glob `pattern` matches, when it has one: when the pattern's start
/// before any glob character (`*`, `?`, `[`, `\`) holds a whole, non-empty hash tag, every key
/// it matches starts with that text, so has that hash tag (a cache whose prefix is `{app}`).
pub(super) fn pattern_slot(pattern: &[u8]) -> Option<u16> {
    let literal = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .map_or(pattern, |glob| &pattern[..glob]);
    let open = literal.iter().position(|&b| b == b'{')?;
    let close = literal[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| key_slot(literal))
}

/// Whether the node that answered `CLUSTER NODES` with `nodes` serves `slot` and is neither
/// migrating nor importing it: its own line (flagged `myself`) lists the slot in its ranges, and
/// no `[slot->-id]` or `[slot-<-id]` entry for it.
pub(super) fn serves_whole_slot(nodes: &str, slot: u16) -> bool {
    let Some(own) = nodes.lines().find(|line| {
        line.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|flag| flag == "myself"))
    }) else {
        return false;
    };
    let mut serves = false;
    for spec in own.split(' ').skip(8) {
        if let Some(moving) = spec.strip_prefix('[') {
            let number = moving.split(['-', ']']).next().unwrap_or_default();
            if number.parse() == Ok(slot) {
                return false;
            }
            continue;
        }
        let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
        if let (Ok(first), Ok(last)) = (first.parse::<u16>(), last.parse::<u16>()) {
            serves |= (first..=last).contains(&slot);
        }
    }
    serves
}

/// The primaries of a `CLUSTER NODES` reply that may hold keys: flagged `master`, not failed,
/// with an address. Lines look like
/// `<id> <ip:port@cport[,hostname]> <flags> <master-id> <ping> <pong> <epoch> <link> <slot>...`.
pub(super) fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
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
    fn key_slots_match_the_redis_crate_for_hash_tags_and_braces() {
        // Our slot function against `redis`'s own (`Slot::for_key`), for keys with hash tags,
        // empty tags, nested and unbalanced braces, and bytes that are not UTF-8.
        let shapes: [fn(usize) -> Vec<u8>; 16] = [
            |i| format!("cache:1:k{i}").into_bytes(),
            |i| format!("{{user{i}}}:profile").into_bytes(),
            |i| format!("cache:1:{{user{i}}}:k").into_bytes(),
            |i| format!("{{}}{i}").into_bytes(),
            |i| format!("a{{}}{{u{i}}}").into_bytes(),
            |i| format!("{{{{{i}}}}}").into_bytes(),
            |i| format!("{{a{{{i}}}b}}").into_bytes(),
            |i| format!("k{i}{{").into_bytes(),
            |i| format!("{{k{i}").into_bytes(),
            |i| format!("}}k{i}{{").into_bytes(),
            |i| format!("}}{{t{i}}}").into_bytes(),
            |i| format!("k{i}}}").into_bytes(),
            |i| format!("x{{{i}}}}}y").into_bytes(),
            |i| format!("{{{i}").into_bytes(),
            |i| vec![b'{', 0xff, (i % 256) as u8, b'}', 0xfe],
            |i| vec![0xc3, (i % 256) as u8, b'{', b'}', b'{'],
        ];
        let mut checked = 0;
        for shape in shapes {
            for i in 0..500 {
                let key = shape(i);
                assert_eq!(
                    Slot::new(key_slot(&key)),
                    Some(Slot::for_key(&key)),
                    "{:?}",
                    String::from_utf8_lossy(&key)
                );
                checked += 1;
            }
        }
        for key in [
            "", "{", "}", "{}", "}{", "{{}}", "{}{}", "{a", "a}", "{a}{b}", "a{b}c{d}",
        ] {
            assert_eq!(
                Slot::new(key_slot(key.as_bytes())),
                Some(Slot::for_key(key)),
                "{key}"
            );
        }
        assert_eq!(checked, 8000);
    }

    #[test]
    fn a_pattern_has_a_slot_when_a_whole_hash_tag_comes_before_any_glob_character() {
        let pinned = key_slot(b"app");
        for pattern in [
            "{app}:1:*",
            "x{app}y:1:k?",
            "{app}",
            "{app}[ab]",
            "{app}\\*",
            "{app}{b*",
        ] {
            assert_eq!(
                pattern_slot(pattern.as_bytes()),
                Some(key_slot(pattern.as_bytes()))
            );
            assert_eq!(key_slot(pattern.as_bytes()), pinned, "{pattern}");
        }
        // No tag, an empty one, or one that a glob character may change.
        for pattern in [
            "app:1:*",
            "{}app:*",
            "*{app}:1:*",
            "{a*p}:1",
            "{ap?}",
            "{app",
            "[{]app}",
            "\\{app}",
        ] {
            assert_eq!(pattern_slot(pattern.as_bytes()), None, "{pattern}");
        }
    }

    #[test]
    fn a_node_holds_a_slot_it_serves_and_does_not_move() {
        let nodes = "07c3 127.0.0.1:30004@31004 master - 0 1 4 connected\n\
                     e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 6000 [5461-<-292f] [7000->-07c3]\n\
                     292f 127.0.0.1:30002@31002 master - 0 1 2 connected 5461-10922\n";
        assert!(serves_whole_slot(nodes, 0));
        assert!(serves_whole_slot(nodes, 5460));
        assert!(serves_whole_slot(nodes, 6000));
        // Not its own: another node's range, an importing slot, a migrating one, none at all.
        assert!(!serves_whole_slot(nodes, 5461));
        assert!(!serves_whole_slot(nodes, 7000));
        assert!(!serves_whole_slot(nodes, 10000));
        let moving = nodes.replace("[7000->-07c3]", "[6000->-07c3]");
        assert!(!serves_whole_slot(&moving, 6000));
        assert!(!serves_whole_slot("", 0));
        assert!(!serves_whole_slot(&nodes.replace("myself,", ""), 0));
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
        // Read again, the same map has the same fingerprint; a moved range changes it.
        assert_eq!(SlotMap::parse(&reply).fingerprint(), map.fingerprint());
        let moved = Array(vec![
            Array(vec![Int(0), Int(5460), node("10.0.0.1", 7000)]),
            Array(vec![Int(5461), Int(10923), node("10.0.0.2", 7000)]),
            Array(vec![Int(10924), Int(16000), node("10.0.0.1", 7000)]),
        ]);
        assert_ne!(SlotMap::parse(&moved).fingerprint(), map.fingerprint());
    }
}
