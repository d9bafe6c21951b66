//! Throwaway Redis Cluster and Sentinel topologies on loopback, for the cluster and Sentinel tests.
//!
//! - [`RedisCluster`]: `N` primaries with `R` replicas each, started with `--cluster-enabled yes`
//!   and joined by `redis-cli --cluster create`. [`RedisCluster::shared`] gives one cluster per
//!   test binary; its processes die with the test binary (each node runs under a tiny `sh`
//!   watchdog that kills it once the test process is gone), since statics are never dropped.
//! - [`SentinelGroup`]: a primary, a replica and one Sentinel monitoring them.
//! - [`NamespacedRepository`]: isolates tests sharing one server by prefixing every key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use impcache::{
    escape_pattern, BoxFuture, CacheRepository, DeleteProgress, Expiry, Result, SetNxOrGet,
};

use crate::{free_port, redis_server_bin, RedisServer};

/// The `redis-cli` binary: `$REDIS_CLI_BIN`, else `redis-cli` on the `PATH`.
pub fn redis_cli_bin() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".to_owned())
}

/// `cluster-node-timeout` of the test clusters: how long a silent primary takes to be declared
/// failed (its replica is promoted shortly after).
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A Redis Cluster started by this test binary, on free loopback ports.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

#[derive(Debug)]
struct ClusterNode {
    port: u16,
    /// The `redis-server` process id (from `INFO`), to kill it.
    pid: u32,
    /// The `sh` watchdog running it.
    watchdog: Child,
}

static SHARED: OnceLock<RedisCluster> = OnceLock::new();
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

impl RedisCluster {
    /// The cluster shared by every test of this binary (3 primaries, 1 replica each), started on
    /// first use. Tests sharing it isolate themselves with [`NamespacedRepository`] and must not
    /// kill its nodes.
    pub fn shared() -> &'static RedisCluster {
        SHARED.get_or_init(|| RedisCluster::start(3, 1))
    }

    /// Starts `primaries` primaries with `replicas` replicas each and waits until the cluster is
    /// `ok` and every replica is in sync.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "impcache-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster temp dir");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..primaries * (1 + replicas) {
            let node = cluster.spawn_node();
            cluster.nodes.push(node);
        }
        let mut create = Command::new(redis_cli_bin());
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn_node(&self) -> ClusterNode {
        let mut last_error = String::new();
        for _ in 0..10 {
            let (port, bus_port) = (free_port(), free_port());
            if port == bus_port {
                continue;
            }
            let args = [
                format!("--port {port}"),
                format!("--cluster-port {bus_port}"),
                "--bind 127.0.0.1".to_owned(),
                "--daemonize no".to_owned(),
                "--save ''".to_owned(),
                "--appendonly no".to_owned(),
                "--cluster-enabled yes".to_owned(),
                format!("--cluster-config-file nodes-{port}.conf"),
                format!("--cluster-node-timeout {NODE_TIMEOUT_MS}"),
                // Let a replica take over however long it was cut off: this is a cache.
                "--cluster-replica-validity-factor 0".to_owned(),
                // The other slots keep answering while one primary is down.
                "--cluster-require-full-coverage no".to_owned(),
                "--enable-debug-command local".to_owned(),
                format!("--dir {}", self.dir.display()),
                format!(
                    "--logfile {}",
                    self.dir.join(format!("{port}.log")).display()
                ),
            ]
            .join(" ");
            let script = format!(
                "{bin} {args} & pid=$!; \
                 while kill -0 {test} 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done; \
                 kill -9 $pid 2>/dev/null",
                bin = redis_server_bin(),
                test = std::process::id(),
            );
            let mut watchdog = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run sh");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = watchdog.try_wait() {
                    break;
                }
                if let Ok(pid) = info_field(port, "server", "process_id") {
                    return ClusterNode {
                        port,
                        pid: pid.parse().expect("process_id"),
                        watchdog,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            last_error = std::fs::read_to_string(self.dir.join(format!("{port}.log")))
                .unwrap_or_else(|_| "no log".to_owned());
        }
        panic!("could not start a cluster node: {last_error}");
    }

    /// Waits until every live node says `cluster_state:ok` with all slots served, knows every
    /// live node, and every replica's link to its primary is up.
    pub fn wait_until_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.health() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cluster not healthy: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn health(&self) -> std::result::Result<(), String> {
        let live = self.live_ports();
        for &port in &live {
            let info: String = self
                .try_cmd(port, &["CLUSTER", "INFO"])
                .map_err(|e| e.to_string())?;
            for needed in ["cluster_state:ok", "cluster_slots_ok:16384"] {
                if !info.lines().any(|l| l.trim() == needed) {
                    return Err(format!("{port}: no {needed}"));
                }
            }
            let role = info_field(port, "replication", "role").map_err(|e| e.to_string())?;
            if role == "slave"
                && info_field(port, "replication", "master_link_status").as_deref() != Ok("up")
            {
                return Err(format!("{port}: replica link down"));
            }
        }
        Ok(())
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| process_alive(n.pid))
            .map(|n| n.port)
            .collect()
    }

    /// `redis://127.0.0.1:{port}` for every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the live primaries serving slots, from a live node's `CLUSTER NODES`, sorted.
    pub fn primaries(&self) -> Vec<u16> {
        let mut primaries: Vec<u16> = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| {
                n.flags.contains(&"master".to_owned()) && !n.flags.contains(&"fail".to_owned())
            })
            .filter(|n| n.has_slots)
            .map(|n| n.port)
            .collect();
        primaries.sort_unstable();
        primaries
    }

    /// The port of a replica of the primary at `primary`.
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        // The primary's own word (`slave0:ip=…,port=…,state=…`), not another node's `CLUSTER
        // NODES`: a node's view of who replicates whom can lag, and a failover test once wrote
        // on a node another node named as the replica while the real one took the slots.
        let replica = info_field(primary, "replication", "slave0").ok()?;
        replica
            .split(',')
            .find_map(|field| field.strip_prefix("port="))?
            .parse()
            .ok()
    }

    fn cluster_nodes(&self) -> Vec<NodeLine> {
        let port = *self.live_ports().first().expect("no live cluster node");
        let text: String = self.cmd(port, &["CLUSTER", "NODES"]);
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse()
                    .ok()?;
                Some(NodeLine {
                    port,
                    flags: f.get(2)?.split(',').map(str::to_owned).collect(),
                    has_slots: f.len() > 8,
                })
            })
            .collect()
    }

    /// The port of the primary serving `key`'s slot.
    pub fn primary_for(&self, key: &str) -> u16 {
        let port = *self.live_ports().first().expect("no live cluster node");
        let slot: i64 = self.cmd(port, &["CLUSTER", "KEYSLOT", key]);
        let slots: Vec<(i64, i64, (String, u16))> = {
            let value: redis::Value = self.cmd(port, &["CLUSTER", "SLOTS"]);
            let redis::Value::Array(ranges) = value else {
                panic!("CLUSTER SLOTS: {value:?}")
            };
            ranges
                .into_iter()
                .map(|range| {
                    let redis::Value::Array(mut parts) = range else {
                        panic!("CLUSTER SLOTS entry")
                    };
                    parts.truncate(3);
                    let node: Vec<redis::Value> = match parts.pop() {
                        Some(redis::Value::Array(node)) => node,
                        other => panic!("CLUSTER SLOTS node: {other:?}"),
                    };
                    let end: i64 = redis::from_redis_value(parts.pop().unwrap()).unwrap();
                    let start: i64 = redis::from_redis_value(parts.pop().unwrap()).unwrap();
                    let host: String = redis::from_redis_value(node[0].clone()).unwrap();
                    let port: u16 = redis::from_redis_value(node[1].clone()).unwrap();
                    (start, end, (host, port))
                })
                .collect()
        };
        slots
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, (_, port))| port)
            .expect("slot served")
    }

    /// Runs a raw command on the node at `port`.
    pub fn cmd<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        self.try_cmd(port, args)
            .unwrap_or_else(|e| panic!("{args:?} on {port} failed: {e}"))
    }

    /// Runs a raw command on the node at `port`, returning the error.
    pub fn try_cmd<T: redis::FromRedisValue>(
        &self,
        port: u16,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        node_cmd(port, args)
    }

    /// Every key on every live primary, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for port in self.primaries() {
            let mut found: Vec<String> = self.cmd(port, &["KEYS", "*"]);
            keys.append(&mut found);
        }
        keys.sort();
        keys
    }

    /// SIGKILLs the node at `port` (a crash).
    pub fn kill_node(&self, port: u16) {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .expect("no such node");
        let _ = Command::new("kill")
            .args(["-9", &node.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(node.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGSTOPs the node at `port`: the kernel still accepts connections, nothing answers (its
    /// replica takes over after [`NODE_TIMEOUT_MS`] or so). The guard SIGCONTs it when dropped,
    /// also when the test fails. While a node is frozen, ask the harness only about other nodes
    /// (its own queries to the frozen node would wait for their read timeout).
    pub fn freeze_node(&self, port: u16) -> FrozenNode<'_> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .expect("no such node");
        let status = Command::new("kill")
            .args(["-STOP", &node.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -STOP {} failed", node.pid);
        FrozenNode {
            pid: node.pid,
            cluster: std::marker::PhantomData,
        }
    }

    /// Starts moving `slot` from the primary at `from` to the one at `to`, the way
    /// `redis-cli --cluster reshard` does: `SETSLOT IMPORTING` on `to`, `MIGRATING` on `from`.
    /// Until [`finish_migration`](Self::finish_migration), keys still on `from` are served there
    /// and the others get `ASK` redirections to `to`.
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let slot = slot.to_string();
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        self.cmd::<()>(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        self.cmd::<()>(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    }

    /// `MIGRATE`s up to `count` keys of `slot` from `from` to `to`; the number moved.
    pub fn migrate_keys(&self, slot: u16, from: u16, to: u16, count: usize) -> usize {
        let keys: Vec<String> = self.cmd(
            from,
            &[
                "CLUSTER",
                "GETKEYSINSLOT",
                &slot.to_string(),
                &count.to_string(),
            ],
        );
        if keys.is_empty() {
            return 0;
        }
        let to = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        self.cmd::<()>(from, &args);
        keys.len()
    }

    /// Moves the remaining keys and gives `slot` to `to` (`SETSLOT NODE` on every primary).
    pub fn finish_migration(&self, slot: u16, from: u16, to: u16) {
        while self.migrate_keys(slot, from, to, 100) > 0 {}
        let to_id = self.node_id(to);
        let slot = slot.to_string();
        for port in [to, from] {
            self.cmd::<()>(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        for port in self.primaries() {
            if port != to && port != from {
                let _ = self.try_cmd::<()>(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
    }

    fn node_id(&self, port: u16) -> String {
        self.cmd(port, &["CLUSTER", "MYID"])
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = *self.live_ports().first().expect("no live cluster node");
        self.cmd(port, &["CLUSTER", "KEYSLOT", key])
    }
}

/// A node frozen by [`RedisCluster::freeze_node`]; SIGCONT when dropped.
#[derive(Debug)]
#[must_use = "the node is thawed when the guard is dropped"]
pub struct FrozenNode<'a> {
    pid: u32,
    cluster: std::marker::PhantomData<&'a RedisCluster>,
}

impl Drop for FrozenNode<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

#[derive(Debug)]
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    has_slots: bool,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = Command::new("kill")
                .args(["-9", &node.pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = node.watchdog.kill();
            let _ = node.watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is `Z`.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn node_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    connection.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection)
}

/// One `field` of `INFO section` on the server at `port`.
fn info_field(port: u16, section: &str, field: &str) -> redis::RedisResult<String> {
    let info: String = node_cmd(port, &["INFO", section])?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "INFO field missing",
                field.to_owned(),
            ))
        })
}

/// A primary, one replica of it and one Sentinel monitoring them as `mymaster`.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The initial primary.
    pub primary: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    sentinel: Child,
    sentinel_port: u16,
    dir: PathBuf,
}

/// The name the Sentinel of a [`SentinelGroup`] monitors.
pub const SENTINEL_SERVICE: &str = "mymaster";

impl SentinelGroup {
    /// Starts the primary and the replica, waits until the replica applies the primary's writes,
    /// then starts the Sentinel (`down-after-milliseconds` 1000, quorum 1) and waits until it
    /// knows the replica.
    pub fn start() -> Self {
        // Both sync a replica at once: Redis waits 5 s by default for more replicas to share a
        // diskless sync, which made each group take 5 s to start.
        let no_sync_delay = ["--repl-diskless-sync-delay", "0"];
        let primary = RedisServer::start_with(&no_sync_delay);
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &primary.port().to_string(),
            "--replica-priority",
            "100",
            no_sync_delay[0],
            no_sync_delay[1],
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while info_field(replica.port(), "replication", "master_link_status").as_deref() != Ok("up")
        {
            assert!(Instant::now() < deadline, "replica did not sync");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A link `up` is not yet a stream of writes: after a diskless sync the primary sends the
        // replica the writes that follow only once it has acknowledged the snapshot, up to a
        // second later, and a write promoted away before that is lost (a failover test lost all
        // its writes so).
        primary.wait_replicated();
        let dir = std::env::temp_dir().join(format!(
            "impcache-sentinel-{}-{}",
            std::process::id(),
            primary.port()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut last_error = String::new();
        for _ in 0..10 {
            let port = free_port();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                    dir = dir.display(),
                    primary = primary.port(),
                ),
            )
            .expect("write sentinel.conf");
            let mut sentinel = Command::new(redis_server_bin())
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server --sentinel");
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut ready = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = sentinel.try_wait() {
                    break;
                }
                // Known, connected, and seen in sync: a candidate for promotion.
                let replicas: redis::RedisResult<Vec<HashMap<String, String>>> =
                    node_cmd(port, &["SENTINEL", "REPLICAS", SENTINEL_SERVICE]);
                let good = |r: &HashMap<String, String>| {
                    r.get("flags").map(String::as_str) == Some("slave")
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                };
                if replicas.is_ok_and(|r| r.iter().any(good)) {
                    ready = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if ready {
                return SentinelGroup {
                    primary,
                    replica,
                    sentinel,
                    sentinel_port: port,
                    dir,
                };
            }
            let _ = sentinel.kill();
            let _ = sentinel.wait();
            last_error = std::fs::read_to_string(dir.join("sentinel.log")).unwrap_or_default();
        }
        panic!("could not start the Sentinel: {last_error}");
    }

    /// `redis://127.0.0.1:{port}` of the Sentinel.
    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// Runs a command on the Sentinel.
    pub fn sentinel_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        node_cmd(self.sentinel_port, args).unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// The port of the primary according to the Sentinel.
    pub fn primary_port(&self) -> u16 {
        let (_, port): (String, u16) =
            self.sentinel_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE]);
        port
    }

    /// The `role` (`master` or `slave`) of the server at `port`.
    pub fn role(port: u16) -> String {
        info_field(port, "replication", "role").unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A repository that prefixes every key (and pattern) with a namespace, so that tests sharing one
/// server (the [shared cluster](RedisCluster::shared)) cannot see each other's keys. The namespace
/// should hold no `{`/`}` (it would become a hash tag and put every key in one slot).
#[derive(Debug)]
pub struct NamespacedRepository {
    inner: Arc<dyn CacheRepository>,
    namespace: String,
}

static NAMESPACES: AtomicU64 = AtomicU64::new(0);

impl NamespacedRepository {
    /// Wraps `inner` under a namespace unique in this process (`t{n}:`).
    pub fn unique(inner: Arc<dyn CacheRepository>) -> Self {
        let namespace = format!("t{}:", NAMESPACES.fetch_add(1, Ordering::Relaxed));
        NamespacedRepository { inner, namespace }
    }

    /// The namespace (`t{n}:`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn keys(&self, keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| self.key(k)).collect()
    }
}

impl CacheRepository for NamespacedRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.inner.set(&self.key(key), value, expiry).await })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.inner.set_nx(&self.key(key), value, expiry).await })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let keys: Vec<String> = entries.iter().map(|(k, _)| self.key(k)).collect();
            let entries: Vec<(&str, Bytes)> = keys
                .iter()
                .zip(entries)
                .map(|(k, (_, v))| (k.as_str(), v.clone()))
                .collect();
            self.inner.set_many(&entries, expiry).await
        })
    }

    /// Forwarded (not the trait's default `set_nx` then `get`): the inner repository's own
    /// `SET .. NX GET` is the one under test.
    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        Box::pin(async move {
            self.inner
                .set_nx_or_get(&self.key(key), value, expiry)
                .await
        })
    }

    /// Forwarded (not the trait's default, which refuses): the inner repository's own
    /// compare-and-set, a script on Cluster, is the one under test.
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.inner
                .set_if_equal(&self.key(key), expected, value, expiry)
                .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { self.inner.get(&self.key(key)).await })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(async move {
            let keys = self.keys(keys);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.inner.get_many(&keys).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.inner.delete(&self.key(key)).await })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let keys = self.keys(keys);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.inner.delete_many(&keys).await
        })
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let pattern = format!("{}{pattern}", escape_pattern(&self.namespace));
            self.inner.delete_pattern(&pattern).await
        })
    }

    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let pattern = format!("{}{pattern}", escape_pattern(&self.namespace));
            self.inner
                .delete_pattern_with_progress(&pattern, progress)
                .await
        })
    }
}
