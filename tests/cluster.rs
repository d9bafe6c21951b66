//! Redis Cluster: operations across slots, `delete_pattern` over every primary (also while a slot
//! migrates), and a primary killed under load. The contract suite runs on the cluster too
//! (`tests/contract.rs`, module `cluster`).
//!
//! Every test but the failover one shares one 6-node cluster (`RedisCluster::shared`), each under
//! its own key prefix; the failover test kills a node, so it starts a cluster of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use impcache::{Cache, CacheRepository, Error, RedisClusterCacheRepository};
use impcache_tests::cluster::{NamespacedRepository, RedisCluster, NODE_TIMEOUT_MS};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};

/// The metrics of every test of this binary (a recorder installed once, for the process).
fn global_metrics() -> &'static Snapshotter {
    static METRICS: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        snapshotter
    })
}

fn repository(cluster: &RedisCluster, deadline: Duration) -> RedisClusterCacheRepository {
    RedisClusterCacheRepository::builder(cluster.urls())
        .deadline(deadline)
        .build()
        .unwrap()
}

/// A cache on the shared cluster under a prefix of its own.
fn shared_cache(prefix: &str) -> Cache {
    cache_on(RedisCluster::shared(), prefix)
}

/// A cache on `cluster` under `prefix` (deadline 5 s).
fn cache_on(cluster: &RedisCluster, prefix: &str) -> Cache {
    Cache::builder(repository(cluster, Duration::from_secs(5)))
        .key_prefix(prefix)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_operations_cross_slots_and_keep_order() {
    let cluster = RedisCluster::shared();
    let cache = shared_cache("xslot");
    let keys: Vec<String> = (0..600).map(|i| format!("k{i}")).collect();
    cache
        .set_many(keys.iter().enumerate().map(|(i, k)| (k, i)), 100)
        .await
        .unwrap();

    // The keys really are spread over every primary.
    let mut owners = BTreeSet::new();
    for key in keys.iter().take(50) {
        owners.insert(cluster.primary_for(&cache.make_key(key)));
    }
    assert_eq!(owners.len(), 3, "keys on {owners:?}");
    let stored: Vec<String> = cluster
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("xslot:1:"))
        .collect();
    assert_eq!(stored.len(), 600);

    let mut asked: Vec<String> = keys.iter().rev().cloned().collect();
    asked.insert(300, "absent".into());
    let got: Vec<Option<usize>> = cache.get_many(&asked).await.unwrap();
    let expected: Vec<Option<usize>> = asked
        .iter()
        .map(|k| k.strip_prefix('k').map(|n| n.parse().unwrap()))
        .collect();
    assert_eq!(got, expected);

    let mut doomed: Vec<&str> = keys.iter().step_by(2).map(String::as_str).collect();
    doomed.push("absent");
    assert_eq!(cache.delete_many(&doomed).await.unwrap(), 300);
    let left: Vec<Option<usize>> = cache.get_many(&keys).await.unwrap();
    assert_eq!(left.iter().filter(|v| v.is_some()).count(), 300);
    assert!(left.iter().step_by(2).all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tags_put_a_prefix_in_one_slot() {
    let cluster = RedisCluster::shared();
    let cache = shared_cache("{tagged}");
    cache
        .set_many((0..100).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    let owners: BTreeSet<u16> = (0..100)
        .map(|i| cluster.slot_of(&cache.make_key(&format!("k{i}"))))
        .collect();
    assert_eq!(owners.len(), 1, "one slot for the whole prefix");
    let got: Vec<Option<i32>> = cache
        .get_many((0..100).map(|i| format!("k{i}")))
        .await
        .unwrap();
    assert_eq!(got, (0..100).map(Some).collect::<Vec<_>>());
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pattern_sweeps_every_primary() {
    let cluster = RedisCluster::shared();
    let cache = shared_cache("sweep");
    let other = shared_cache("sweeper");
    // More than a SCAN batch (1,000) per primary on at least one of them.
    cache
        .set_many((0..4000).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    cache
        .set_many((0..50).map(|i| (format!("other{i}"), i)), 100)
        .await
        .unwrap();
    other.set_many([("k1", 1), ("k2", 2)], 100).await.unwrap();
    assert_eq!(cache.delete_pattern("k*").await.unwrap(), 4000);
    let left: Vec<String> = cluster
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("sweep:1:"))
        .collect();
    assert_eq!(left.len(), 50, "only the other* keys are left");
    assert_eq!(
        other.get_many(["k1", "k2"]).await.unwrap(),
        [Some(1), Some(2)]
    );
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 50);
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 0);
}

/// The batches of every primary add up, as they come, to the total removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pattern_reports_the_batches_of_every_primary() {
    let cache = shared_cache("progress");
    cache
        .set_many((0..4000).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("k*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(removed, 4000);
    let last = reports.last().unwrap();
    assert_eq!((last.matched, last.removed), (4000, 4000));
    assert_eq!(last.batches, reports.len() as u64);
    // At least one batch per primary.
    assert!(reports.len() >= 3, "{reports:?}");
    assert!(reports.windows(2).all(|w| w[1].removed >= w[0].removed));
}

/// A slot half migrated from one primary to another: keys on both sides are read (the client
/// follows `ASK`), and `delete_pattern` removes each key exactly once, wherever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pattern_while_a_slot_migrates() {
    // A cluster of its own: a migration moves every key of its slot, and other tests' keys live
    // there (`progress:1:k801`, of delete_pattern_reports_the_batches_of_every_primary, is in
    // slot 7346, `{migrating}`'s), under their sweeps.
    let cluster = &RedisCluster::start(3, 0);
    // Every key of this prefix lives in the slot of the hash tag `{migrating}`.
    let cache = cache_on(cluster, "{migrating}");
    let spread = cache_on(cluster, "migrating-spread");
    cache
        .set_many((0..200).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    spread
        .set_many((0..100).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    let slot = cluster.slot_of("{migrating}");
    let from = cluster.primary_for("{migrating}");
    let to = *cluster.primaries().iter().find(|p| **p != from).unwrap();

    cluster.begin_migration(slot, from, to);
    assert_eq!(cluster.migrate_keys(slot, from, to, 80), 80);
    for i in [0, 57, 199] {
        assert_eq!(cache.get::<i32>(&format!("k{i}")).await.unwrap(), Some(i));
    }
    cache.set("new", &1, 100).await.unwrap();
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 201);
    assert_eq!(spread.delete_pattern("*").await.unwrap(), 100);
    cluster.finish_migration(slot, from, to);

    assert_eq!(cluster.primary_for("{migrating}"), to);
    let left: Vec<String> = cluster
        .keys()
        .into_iter()
        .filter(|k| k.contains("migrating"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The moved slot is served from its new primary.
    cache.set("after", &2, 100).await.unwrap();
    assert_eq!(cache.get::<i32>("after").await.unwrap(), Some(2));
}

/// Single-key calls on a slot being migrated, many at once: a key no longer on the old node is
/// asked for on the importing node with `ASKING` in the same pipeline. Through the cluster
/// client, which sends `ASKING` apart on its shared connection, about half of 16 concurrent calls
/// failed with `MOVED` (another request took the `ASKING` first) and the fallback's breaker
/// opened (found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_key_calls_on_a_migrating_slot_all_answer() {
    // A cluster of its own, as delete_pattern_while_a_slot_migrates.
    let cluster = &RedisCluster::start(3, 0);
    // Every key of this prefix lives in the slot of the hash tag `{asking}`.
    let cache = cache_on(cluster, "{asking}");
    cache.set("warm", &0, 100).await.unwrap();
    let slot = cluster.slot_of("{asking}");
    let from = cluster.primary_for("{asking}");
    let to = *cluster.primaries().iter().find(|p| **p != from).unwrap();
    cluster.begin_migration(slot, from, to);
    for round in 0..3 {
        // Keys new to the slot: each `set` and `get` is sent to the importing node on `ASK`.
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let key = format!("k{round}-{i}");
                    cache.set(&key, &i, 100).await?;
                    cache.get::<i32>(&key).await
                })
            })
            .collect();
        for (i, call) in (0..).zip(calls) {
            assert_eq!(call.await.unwrap().unwrap(), Some(i), "round {round}");
        }
    }
    cluster.finish_migration(slot, from, to);
    assert_eq!(cache.get::<i32>("k2-15").await.unwrap(), Some(15));
    cache.delete_pattern("*").await.unwrap();
}

/// The contract's isolation wrapper on the cluster: one namespace cannot see another's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_isolate_tests_sharing_the_cluster() {
    let repository: Arc<dyn CacheRepository> =
        Arc::new(repository(RedisCluster::shared(), Duration::from_secs(5)));
    let a = Cache::builder(NamespacedRepository::unique(repository.clone())).build();
    let b = Cache::builder(NamespacedRepository::unique(repository)).build();
    a.set("k", &1, 100).await.unwrap();
    assert_eq!(b.get::<i32>("k").await.unwrap(), None);
    assert_eq!(b.delete_pattern("*").await.unwrap(), 0);
    assert_eq!(a.get::<i32>("k").await.unwrap(), Some(1));
}

/// Kill a primary: operations on its slots fail with typed errors within the deadline, the others
/// keep working, and once its replica has taken over everything works again, without restarting
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_open_then_its_replica_takes_over() {
    let metrics = global_metrics();
    let cluster = RedisCluster::start(3, 1);
    let deadline = Duration::from_millis(300);
    let cache = Cache::builder(repository(&cluster, deadline))
        .key_prefix("failover")
        .build();
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    cache
        .set_many(keys.iter().map(|k| (k, k)), 100)
        .await
        .unwrap();
    let victim = cluster.primary_for(&cache.make_key("k0"));
    let heir = cluster.replica_of(victim).expect("a replica");
    // Replication is asynchronous: wait for the replica to have every write. (`WAIT` from the
    // harness's own connection would not do: it waits only for that connection's writes.)
    let written: i64 = cluster.cmd(victim, &["DBSIZE"]);
    let synced = Instant::now();
    while cluster.cmd::<i64>(heir, &["DBSIZE"]) < written {
        assert!(
            synced.elapsed() < Duration::from_secs(5),
            "replica not in sync"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let survivor_key = keys
        .iter()
        .find(|k| cluster.primary_for(&cache.make_key(k)) != victim)
        .unwrap()
        .clone();

    let killed = Instant::now();
    cluster.kill_node(victim);
    let mut failures = 0;
    let mut slowest = Duration::ZERO;
    let recovered = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no recovery after {:?} ({failures} failures)",
            killed.elapsed()
        );
        let started = Instant::now();
        let outcome = cache.get::<String>("k0").await;
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < deadline + Duration::from_millis(700),
            "an operation took {took:?}"
        );
        match outcome {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some("k0"), "the replica has the data");
                break killed.elapsed();
            }
            Err(e) => {
                assert!(e.is_backend_failure(), "{e}");
                assert!(
                    matches!(
                        e,
                        Error::Timeout { .. }
                            | Error::Unavailable { .. }
                            | Error::CircuitOpen { .. }
                    ),
                    "{e}"
                );
                failures += 1;
            }
        }
        // Keys on the other primaries do not wait for the failover (the breaker may be open).
        if failures == 3 {
            match cache.get::<String>(&survivor_key).await {
                Ok(v) => assert_eq!(v.as_deref(), Some(survivor_key.as_str())),
                Err(e) => assert!(e.is_backend_failure(), "{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "failover: node timeout {NODE_TIMEOUT_MS} ms, first success on the promoted replica after \
         {recovered:?}, {failures} failed reads, slowest call {slowest:?} (deadline {deadline:?})"
    );
    cluster.wait_until_healthy(Duration::from_secs(10));
    assert!(
        cluster.primaries().contains(&heir),
        "the replica was promoted"
    );
    // The dead primary is no node of the slot map any more: its breaker, opened by the failed
    // reads, is in no state (its gauge said "open" for ever; found by a probe).
    let target = format!("127.0.0.1:{victim}");
    let open = metrics
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let ours = key.name() == "impcache_circuit_breaker_state"
                && labels.contains(&("target", target.as_str()))
                && labels.contains(&("state", "open"));
            match value {
                metrics_util::debugging::DebugValue::Gauge(v) if ours => Some(v.into_inner()),
                _ => None,
            }
        });
    assert_ne!(
        open,
        Some(1.0),
        "the dead primary's breaker still says open"
    );
    // Writes and multi-key operations work again on every slot.
    // Right after the failover the cluster client can still time out on every node for a few
    // calls (redis-rs 1.8); after 3 consecutive failures the repository replaces its connection.
    let mut attempts = 0;
    while let Err(e) = cache.set_many(keys.iter().map(|k| (k, "again")), 100).await {
        attempts += 1;
        assert!(attempts < 30 && e.is_backend_failure(), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: Vec<Option<String>> = cache.get_many(&keys).await.unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some("again")));
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 60);
    eprintln!("after the failover: set_many needed {attempts} retries");
}

#[tokio::test]
async fn an_unreachable_cluster_fails_within_the_deadline() {
    // Nothing listens there: the lazy connect fails, typed, and the next call tries again.
    let deadline = Duration::from_millis(200);
    let cache = Cache::builder(
        RedisClusterCacheRepository::builder([impcache_tests::NO_SERVER_URL])
            .deadline(deadline)
            .build()
            .unwrap(),
    )
    .build();
    for _ in 0..3 {
        let started = Instant::now();
        let err = cache.get::<i32>("k").await.unwrap_err();
        assert!(err.is_backend_failure(), "{err}");
        assert!(err.to_string().contains("cache:1:k"), "{err}");
        assert!(started.elapsed() < deadline + Duration::from_millis(500));
    }
}

/// What the repository reported on the `impcache::cluster` tracing target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NodeEvent {
    event: String,
    node: String,
    commands: u64,
    keys: u64,
    round: u64,
}

impl tracing::field::Visit for NodeEvent {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "event" {
            self.event = value.to_owned();
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "commands" => self.commands = value,
            "keys" => self.keys = value,
            "round" => self.round = value,
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "node" => self.node = format!("{value:?}"),
            "event" => self.event = format!("{value:?}").trim_matches('"').to_owned(),
            _ => {}
        }
    }
}

/// A `tracing` subscriber that records the repository's per-node events. Installed with
/// `set_default` on a current-thread runtime, it sees every task of the test (they all run on
/// this thread) and nothing from the tests running on other threads.
#[derive(Debug, Clone, Default)]
struct NodeEvents(Arc<std::sync::Mutex<Vec<NodeEvent>>>);

impl NodeEvents {
    fn take(&self) -> Vec<NodeEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl tracing::Subscriber for NodeEvents {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Ask each time: other threads have no subscriber.
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "impcache::cluster"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut seen = NodeEvent::default();
        event.record(&mut seen);
        self.0.lock().unwrap().push(seen);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// `calls` of `cmdstat_{command}` and `count` of `errorstat_{error}` in `INFO` on one node.
fn command_calls(cluster: &RedisCluster, port: u16, command: &str) -> u64 {
    let info: String = cluster.cmd(port, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn redirections(cluster: &RedisCluster, port: u16) -> Vec<String> {
    let info: String = cluster.cmd(port, &["INFO", "errorstats"]);
    info.lines()
        .filter(|l| l.starts_with("errorstat_MOVED") || l.starts_with("errorstat_ASK"))
        .map(str::to_owned)
        .collect()
}

fn pipelines(events: &[NodeEvent]) -> Vec<(String, u64)> {
    let mut sent: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.event == "pipeline")
        .map(|e| (e.node.clone(), e.commands))
        .collect();
    sent.sort();
    sent
}

/// One round trip per node for `set_many`, `get_many` and `delete_many` across slots.
///
/// What proves it, honestly: a round trip is one pipeline written to one node's connection and
/// its replies read back. The repository reports each such send as a `pipeline` event on the
/// `impcache::cluster` tracing target (emitted by the one function that calls `route_pipeline`),
/// so counting those events counts the round trips: exactly one per primary, each to a distinct
/// primary. The servers confirm it from their side: after `CONFIG RESETSTAT`, each primary's
/// `INFO commandstats` shows exactly the commands of the pipeline reported for it (no command
/// went anywhere else), and `INFO errorstats` shows no `MOVED`/`ASK` (no redirection, which would
/// be a second round trip). The cluster is this test's own, so no other test adds commands.
#[tokio::test]
async fn multi_key_operations_take_one_round_trip_per_node() {
    let cluster = RedisCluster::start(3, 0);
    let events = NodeEvents::default();
    impcache_tests::logs::keep_callsites_interested();
    let _subscriber = tracing::subscriber::set_default(events.clone());
    let cache = cache_on(&cluster, "trips");
    let primaries = cluster.primaries();
    let nodes: BTreeSet<String> = primaries.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let reset = || {
        for &port in &primaries {
            cluster.cmd::<()>(port, &["CONFIG", "RESETSTAT"]);
        }
    };
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();

    // set_many: the slot map is learned once (one `CLUSTER SLOTS`), then one pipeline per node.
    reset();
    cache
        .set_many(keys.iter().enumerate().map(|(i, k)| (k, i)), 100)
        .await
        .unwrap();
    let seen = events.take();
    assert_eq!(seen.iter().filter(|e| e.event == "learned").count(), 1);
    assert!(seen.iter().all(|e| e.event != "fallback"), "{seen:?}");
    let sent = pipelines(&seen);
    assert_eq!(sent.len(), 3, "one pipeline per primary: {sent:?}");
    assert_eq!(
        sent.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>(),
        nodes
    );
    assert_eq!(sent.iter().map(|(_, c)| c).sum::<u64>(), 300);
    for (node, commands) in &sent {
        let port: u16 = node.rsplit_once(':').unwrap().1.parse().unwrap();
        assert_eq!(command_calls(&cluster, port, "set"), *commands, "{node}");
        assert!(redirections(&cluster, port).is_empty(), "{node}");
    }

    // get_many, in the caller's order across nodes: one pipeline of per-slot MGETs per node;
    // the map is not learned again.
    reset();
    let mut asked: Vec<String> = keys.iter().rev().cloned().collect();
    asked.insert(150, "absent".into());
    let got: Vec<Option<usize>> = cache.get_many(&asked).await.unwrap();
    let expected: Vec<Option<usize>> = asked
        .iter()
        .map(|k| k.strip_prefix('k').map(|n| n.parse().unwrap()))
        .collect();
    assert_eq!(got, expected);
    let seen = events.take();
    assert!(seen.iter().all(|e| e.event == "pipeline"), "{seen:?}");
    let sent = pipelines(&seen);
    assert_eq!(sent.len(), 3, "{sent:?}");
    for (node, commands) in &sent {
        let port: u16 = node.rsplit_once(':').unwrap().1.parse().unwrap();
        assert_eq!(command_calls(&cluster, port, "mget"), *commands, "{node}");
        assert_eq!(command_calls(&cluster, port, "get"), 0, "{node}");
        assert!(redirections(&cluster, port).is_empty(), "{node}");
    }

    // delete_many: one pipeline of per-slot UNLINKs per node.
    reset();
    let doomed: Vec<&String> = keys.iter().step_by(2).collect();
    assert_eq!(cache.delete_many(&doomed).await.unwrap(), 150);
    let seen = events.take();
    let sent = pipelines(&seen);
    assert_eq!(sent.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|e| e.event == "pipeline"), "{seen:?}");
    for (node, commands) in &sent {
        let port: u16 = node.rsplit_once(':').unwrap().1.parse().unwrap();
        assert_eq!(command_calls(&cluster, port, "unlink"), *commands, "{node}");
    }
    let left: Vec<Option<usize>> = cache.get_many(&keys).await.unwrap();
    assert!(left.iter().step_by(2).all(Option::is_none));
    assert!(left.iter().skip(1).step_by(2).all(Option::is_some));
}

/// A slot moves after the repository learned the slot map: its node answers `MOVED`, those keys
/// (only) go through the client's routing, the map is learned again, and the next call is back to
/// one pipeline per node. Then a slot half migrated (`ASK`). Results stay right, in the caller's
/// order, and each deleted key is counted once throughout.
#[tokio::test]
async fn a_stale_slot_map_falls_back_then_is_relearned() {
    let cluster = RedisCluster::start(3, 0);
    let events = NodeEvents::default();
    impcache_tests::logs::keep_callsites_interested();
    let _subscriber = tracing::subscriber::set_default(events.clone());
    let cache = Cache::builder(repository(&cluster, Duration::from_secs(5))).build();
    // 20 keys in the slot of `{moving}`, 100 spread over every node.
    let keys: Vec<String> = (0..20)
        .map(|i| format!("{{moving}}{i}"))
        .chain((0..100).map(|i| format!("k{i}")))
        .collect();
    cache
        .set_many(keys.iter().map(|k| (k, k)), 100)
        .await
        .unwrap();
    events.take();

    let slot = cluster.slot_of(&cache.make_key("{moving}0"));
    let from = cluster.primary_for(&cache.make_key("{moving}0"));
    let to = *cluster.primaries().iter().find(|p| **p != from).unwrap();
    cluster.begin_migration(slot, from, to);
    cluster.finish_migration(slot, from, to);
    assert_eq!(cluster.primary_for(&cache.make_key("{moving}0")), to);

    let asked: Vec<String> = keys.iter().rev().cloned().collect();
    let got: Vec<Option<String>> = cache.get_many(&asked).await.unwrap();
    assert_eq!(got, asked.iter().cloned().map(Some).collect::<Vec<_>>());
    let seen = events.take();
    let fallback: Vec<&NodeEvent> = seen.iter().filter(|e| e.event == "fallback").collect();
    assert_eq!(fallback.len(), 1, "{seen:?}");
    assert_eq!(fallback[0].keys, 20, "only the moved slot's keys: {seen:?}");
    assert!(
        !redirections(&cluster, from).is_empty(),
        "the old owner said MOVED"
    );

    // Relearned on the next call; no fallback any more.
    cache
        .set_many(keys.iter().map(|k| (k, "again")), 100)
        .await
        .unwrap();
    let seen = events.take();
    assert_eq!(
        seen.iter().filter(|e| e.event == "learned").count(),
        1,
        "{seen:?}"
    );
    assert!(seen.iter().all(|e| e.event != "fallback"), "{seen:?}");
    assert_eq!(pipelines(&seen).len(), 3, "{seen:?}");
    let got: Vec<Option<String>> = cache.get_many(&asked).await.unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some("again")), "{got:?}");
    assert_eq!(cache.delete_many(&keys).await.unwrap(), 120);

    // A slot half migrated: for the keys already moved, the old owner answers `TRYAGAIN` to the
    // slot's `MGET` (some keys are here, some not), then `ASK` per key; those keys are read from
    // the importing node (with `ASKING`) in further rounds, and deleted there, each once.
    let half: Vec<String> = (0..30)
        .map(|i| format!("{{half}}{i}"))
        .chain((0..30).map(|i| format!("s{i}")))
        .collect();
    cache
        .set_many(half.iter().map(|k| (k, k)), 100)
        .await
        .unwrap();
    let slot = cluster.slot_of(&cache.make_key("{half}0"));
    let from = cluster.primary_for(&cache.make_key("{half}0"));
    let to = *cluster.primaries().iter().find(|p| **p != from).unwrap();
    cluster.begin_migration(slot, from, to);
    assert_eq!(cluster.migrate_keys(slot, from, to, 10), 10);
    events.take();
    let asked: Vec<String> = half.iter().rev().cloned().collect();
    let got: Vec<Option<String>> = cache.get_many(&asked).await.unwrap();
    assert_eq!(got, asked.iter().cloned().map(Some).collect::<Vec<_>>());
    let seen = events.take();
    assert!(seen.iter().all(|e| e.event == "pipeline"), "{seen:?}");
    assert_eq!(seen.iter().filter(|e| e.round == 0).count(), 3, "{seen:?}");
    let asked_on_importing: u64 = seen
        .iter()
        .filter(|e| e.round > 0 && e.node == format!("127.0.0.1:{to}"))
        .map(|e| e.commands)
        .sum();
    assert_eq!(
        asked_on_importing, 10,
        "the moved keys, after ASK: {seen:?}"
    );
    // Writes land where each key lives; a new key of the slot goes to the importing node.
    let mut written = half.clone();
    written.push("{half}new".to_owned());
    cache
        .set_many(written.iter().map(|k| (k, "w")), 100)
        .await
        .unwrap();
    let got: Vec<Option<String>> = cache.get_many(&written).await.unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some("w")), "{got:?}");
    assert_eq!(
        cluster.primary_for(&cache.make_key("{half}new")),
        from,
        "still migrating"
    );
    let on_importing: i64 = cluster.cmd(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
    assert_eq!(on_importing, 11, "the 10 moved keys and the new one");
    assert_eq!(cache.delete_many(&written).await.unwrap(), 61);
    let got: Vec<Option<String>> = cache.get_many(&half).await.unwrap();
    assert!(got.iter().all(Option::is_none), "{got:?}");
    cluster.finish_migration(slot, from, to);
}

/// What the busy tasks of [`busy`] saw on one group of keys.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: u64,
    failed: u64,
    circuit_open: u64,
    slowest: Duration,
    /// The first few errors, for the report.
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.circuit_open += other.circuit_open;
        self.slowest = self.slowest.max(other.slowest);
        self.errors.extend(other.errors);
        self.errors.truncate(3);
    }

    fn success(&self) -> f64 {
        self.ok as f64 / (self.ok + self.failed).max(1) as f64
    }
}

/// The busy tasks of the fault tests.
const BUSY_TASKS: usize = 16;
/// The deadline of the fault tests' repositories.
const BUSY_DEADLINE: Duration = Duration::from_millis(300);

/// [`BUSY_TASKS`] tasks reading every key in turn (each from its own starting point) for
/// `window`; every 8th call of a task is a `get_many` over three keys of the healthy primaries.
/// Every value read must be the key itself. Returns the tallies of the healthy keys (single and
/// multi-key calls) and of the victim's keys.
async fn busy(cache: &Cache, keys: &[(String, bool)], window: Duration) -> (Tally, Tally) {
    let healthy: Vec<String> = keys
        .iter()
        .filter(|(_, on_victim)| !on_victim)
        .map(|(k, _)| k.clone())
        .collect();
    let keys: Arc<Vec<(String, bool)>> = Arc::new(keys.to_vec());
    let healthy = Arc::new(healthy);
    let until = Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..BUSY_TASKS {
        let (cache, keys, healthy) = (cache.clone(), keys.clone(), healthy.clone());
        tasks.spawn(async move {
            let (mut on_healthy, mut on_victim) = (Tally::default(), Tally::default());
            let mut i = task * 7;
            while Instant::now() < until {
                i += 1;
                let started = Instant::now();
                let (outcome, tally) = if i % 8 == 0 {
                    let asked: Vec<&String> = (0..3)
                        .map(|j| &healthy[(i + j * 5) % healthy.len()])
                        .collect();
                    let outcome = cache.get_many::<String>(&asked).await.map(|got| {
                        let expected: Vec<Option<String>> =
                            asked.iter().map(|k| Some((*k).clone())).collect();
                        assert_eq!(got, expected);
                    });
                    (outcome, &mut on_healthy)
                } else {
                    let (key, on_the_victim) = &keys[i % keys.len()];
                    let outcome = cache
                        .get::<String>(key)
                        .await
                        .map(|got| assert_eq!(got.as_deref(), Some(key.as_str())));
                    let tally = if *on_the_victim {
                        &mut on_victim
                    } else {
                        &mut on_healthy
                    };
                    (outcome, tally)
                };
                let took = started.elapsed();
                tally.slowest = tally.slowest.max(took);
                match outcome {
                    Ok(()) => tally.ok += 1,
                    Err(e) => {
                        assert!(e.is_backend_failure(), "{e}");
                        tally.failed += 1;
                        if tally.errors.len() < 3 {
                            tally.errors.push(e.to_string());
                        }
                        if matches!(e, Error::CircuitOpen { .. }) {
                            tally.circuit_open += 1;
                        }
                    }
                }
            }
            (on_healthy, on_victim)
        });
    }
    let (mut on_healthy, mut on_victim) = (Tally::default(), Tally::default());
    while let Some(done) = tasks.join_next().await {
        let (h, v) = done.unwrap();
        on_healthy.add(h);
        on_victim.add(v);
    }
    (on_healthy, on_victim)
}

/// A cluster of its own (3 primaries, 1 replica each), a cache with the busy tests' deadline, 60
/// keys written (each holding its own name), and the primary of `k0` as the victim. Returns the
/// keys with whether each is on the victim.
async fn fault_setup(prefix: &str) -> (RedisCluster, Cache, Vec<(String, bool)>, u16) {
    let cluster = RedisCluster::start(3, 1);
    let cache = Cache::builder(repository(&cluster, BUSY_DEADLINE))
        .key_prefix(prefix)
        .build();
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    cache
        .set_many(keys.iter().map(|k| (k, k)), 300)
        .await
        .unwrap();
    let victim = cluster.primary_for(&cache.make_key("k0"));
    let keys: Vec<(String, bool)> = keys
        .into_iter()
        .map(|k| {
            let on_victim = cluster.primary_for(&cache.make_key(&k)) == victim;
            (k, on_victim)
        })
        .collect();
    (cluster, cache, keys, victim)
}

/// Prints what the busy tasks saw, then checks that no call took much longer than a deadline
/// (generous: a bound, not a speed).
fn report(what: &str, window: Duration, on_healthy: &Tally, on_victim: &Tally) {
    let rate = |t: &Tally| t.ok as f64 / window.as_secs_f64();
    eprintln!(
        "{what}: healthy keys {}/{} ok ({:.1} %, {:.0} ok/s, {} circuit open, slowest {:?}); \
         victim's keys {}/{} ok ({} circuit open, slowest {:?})",
        on_healthy.ok,
        on_healthy.ok + on_healthy.failed,
        on_healthy.success() * 100.0,
        rate(on_healthy),
        on_healthy.circuit_open,
        on_healthy.slowest,
        on_victim.ok,
        on_victim.ok + on_victim.failed,
        on_victim.circuit_open,
        on_victim.slowest,
    );
    if !on_healthy.errors.is_empty() {
        eprintln!(
            "{what}: healthy keys' first errors: {:?}",
            on_healthy.errors
        );
    }
    for tally in [on_healthy, on_victim] {
        assert!(
            tally.slowest < BUSY_DEADLINE + Duration::from_secs(1),
            "{what}: a call took {:?}",
            tally.slowest
        );
    }
}

/// The load window after a fault: about the time a replica takes to be promoted.
const FAULT_WINDOW: Duration = Duration::from_millis(2500);

/// Kill one primary of three under 16 busy tasks: calls on keys of the two others keep
/// succeeding (each primary has its own circuit breaker, and its own connection); a multi-key
/// call that needs the dead primary fails naming it, after doing its part on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_costs_nothing_on_the_others() {
    let (cluster, cache, keys, victim) = fault_setup("killed").await;
    let (on_healthy, on_victim) = busy(&cache, &keys, Duration::from_secs(1)).await;
    report(
        "before the kill",
        Duration::from_secs(1),
        &on_healthy,
        &on_victim,
    );
    assert_eq!(on_healthy.failed + on_victim.failed, 0);
    cache
        .set_many((0..30).map(|i| (format!("p{i}"), i)), 300)
        .await
        .unwrap();
    let on_the_victim = (0..30)
        .filter(|i| cluster.primary_for(&cache.make_key(&format!("p{i}"))) == victim)
        .count() as u64;

    cluster.kill_node(victim);
    // Right after the kill (no failover can happen before the node timeout): a multi-key call
    // that needs the dead primary fails with an error naming it, and its parts on the healthy
    // primaries are done.
    let everything: Vec<&String> = keys.iter().map(|(k, _)| k).collect();
    let err = cache
        .set_many(everything.iter().map(|k| (k, "new")), 300)
        .await
        .unwrap_err();
    assert!(err.is_backend_failure(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{victim}")),
        "{err}"
    );
    let err = cache.get_many::<String>(&everything).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{victim}")),
        "{err}"
    );
    let err = cache.delete_pattern("p*").await.unwrap_err();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{victim}")),
        "{err}"
    );
    // The keys of the healthy primaries were removed, and the error says how many.
    assert_eq!(
        err.removed_before_failure(),
        Some(30 - on_the_victim),
        "{err:?}"
    );
    let healthy: Vec<&String> = keys.iter().filter(|(_, v)| !v).map(|(k, _)| k).collect();
    let got: Vec<Option<String>> = cache.get_many(&healthy).await.unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some("new")), "{got:?}");
    let left: Vec<String> = cluster
        .primaries()
        .into_iter()
        .filter(|&p| p != victim)
        .flat_map(|p| cluster.cmd::<Vec<String>>(p, &["KEYS", "killed:1:p*"]))
        .collect();
    assert!(left.is_empty(), "swept on the healthy primaries: {left:?}");
    cache
        .set_many(healthy.iter().map(|k| (k, k)), 300)
        .await
        .unwrap();

    let (on_healthy, on_victim) = busy(&cache, &keys, FAULT_WINDOW).await;
    report("after the kill", FAULT_WINDOW, &on_healthy, &on_victim);
    assert!(
        on_healthy.success() >= 0.95,
        "healthy keys: {on_healthy:?}, the victim's: {on_victim:?}"
    );
}

/// Freeze one primary of three (SIGSTOP: connections are accepted, nothing answers) under 16
/// busy tasks: calls on keys of the two others keep succeeding, as often as before (the cluster
/// client is not on their path: the frozen node's slot-map refreshes and reconnections cannot
/// hold them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_costs_nothing_on_the_others() {
    let (cluster, cache, keys, victim) = fault_setup("frozen").await;
    let (on_healthy, on_victim) = busy(&cache, &keys, Duration::from_secs(1)).await;
    report(
        "before the freeze",
        Duration::from_secs(1),
        &on_healthy,
        &on_victim,
    );
    assert_eq!(on_healthy.failed + on_victim.failed, 0);

    let frozen = cluster.freeze_node(victim);
    let (on_healthy, on_victim) = busy(&cache, &keys, FAULT_WINDOW).await;
    report("frozen", FAULT_WINDOW, &on_healthy, &on_victim);
    assert!(
        on_healthy.success() >= 0.95,
        "healthy keys: {on_healthy:?}, the victim's: {on_victim:?}"
    );
    // Still frozen: its replica takes over, and the victim's keys are served again (the slot map
    // is learned again while the frozen node's breaker is open).
    let started = Instant::now();
    loop {
        match cache.get::<String>("k0").await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some("k0"));
                break;
            }
            Err(e) => assert!(e.is_backend_failure(), "{e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the victim's keys were not served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "frozen: the victim's keys served again {:?} after the window",
        started.elapsed()
    );
    drop(frozen);
}

/// A `static` cache used from several `#[tokio::test]`s, each on its own runtime: the driver tasks
/// of the cluster client's connection and of the direct connections to the primaries die with the
/// runtime that opened them. Each call from a later runtime reconnects and goes through, writes
/// included (issue 12, item 11).
#[test]
fn connections_left_by_a_finished_runtime_are_replaced_transparently() {
    let repository = repository(RedisCluster::shared(), Duration::from_secs(2));
    let cache = Cache::builder(repository.clone())
        .key_prefix("runtimes")
        .build();
    let current_thread = impcache_tests::current_thread_runtime;
    let multi_thread = impcache_tests::multi_thread_runtime;
    // The first runtime opens the direct connections (the slot map) and the client's connection.
    current_thread().block_on(async {
        cache.set("k", &1, 60).await.unwrap();
        assert_eq!(repository.primaries().await.unwrap().len(), 3);
    });
    // Each runtime below starts with connections its predecessors opened, now driverless.
    current_thread()
        .block_on(cache.set("k", &2, 60))
        .expect("a set from a second runtime");
    multi_thread()
        .block_on(cache.set_many([("a", 1), ("b", 2), ("c", 3)], 60))
        .expect("a set_many from a third runtime");
    let primaries = current_thread()
        .block_on(repository.primaries())
        .expect("the cluster client's routing from a fourth runtime");
    assert_eq!(primaries.len(), 3);
    let got: Vec<Option<i32>> = multi_thread()
        .block_on(cache.get_many(["a", "b", "c", "k"]))
        .expect("a get_many from a fifth runtime");
    assert_eq!(got, [Some(1), Some(2), Some(3), Some(2)]);
    let removed = current_thread()
        .block_on(cache.delete("a"))
        .expect("a delete from a sixth runtime");
    assert_eq!(removed, 1);
    let removed = multi_thread()
        .block_on(cache.delete_pattern("*"))
        .expect("a delete_pattern from a seventh runtime");
    assert_eq!(removed, 3);
    let got = current_thread()
        .block_on(cache.get::<i32>("k"))
        .expect("a get from an eighth runtime");
    assert_eq!(got, None);
}

/// Parallel `#[tokio::test]`s sharing a `static` cache, as on a single node
/// (`reliability_faults::runtimes_ending_while_others_share_the_cache_fail_no_call`): every call
/// in flight when a runtime ends is sent once more, on connections of its own runtime (found by
/// a probe: a second attempt on a connection yet another ending runtime had made failed).
#[test]
fn runtimes_ending_while_others_share_the_cache_fail_no_call() {
    let repository = repository(RedisCluster::shared(), Duration::from_millis(500));
    let cache = Cache::builder(repository)
        .key_prefix("parallel-runtimes")
        .build();
    let failures = impcache_tests::share_across_ending_runtimes(&cache);
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
}

/// An error the client returns before the deadline (here the connect timeout of a node that
/// accepts connections but never answers the handshake) names its cause and the time waited, not
/// "timed out after <deadline>" (issue 12, item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_client_error_names_its_cause_and_the_time_waited() {
    let proxy = impcache_tests::FaultProxy::start(impcache_tests::free_port()).await;
    proxy.blackhole();
    // A password: the handshake sends `AUTH`, which the black hole never answers.
    let deadline = Duration::from_secs(3);
    let repository = RedisClusterCacheRepository::builder([format!(
        "redis://:secret@127.0.0.1:{}",
        proxy.port()
    )])
    .deadline(deadline)
    .connect_timeout(Duration::from_millis(100))
    .build()
    .unwrap();
    let cache = Cache::builder(repository).build();
    // `delete_pattern` learns the slot map first, over a direct connection to the node.
    let started = Instant::now();
    let error = cache.delete_pattern("*").await.unwrap_err();
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(error.is_outage(), "{error:?}");
    assert!(!message.contains("timed out after 3s"), "{message}");
    assert!(message.contains("gave up after"), "{message}");
    assert!(message.contains("connect timeout 100ms"), "{message}");
    assert!(elapsed < deadline, "{elapsed:?}");
    // A one-key call: the slot map cannot be learned, the client's routing cannot connect.
    for operation in ["get", "set"] {
        let started = Instant::now();
        let error = match operation {
            "get" => cache.get::<i32>("k").await.unwrap_err(),
            _ => cache.set("k", &1, 60).await.unwrap_err(),
        };
        let elapsed = started.elapsed();
        let message = error.to_string();
        assert!(error.is_outage(), "{operation}: {error:?}");
        assert!(
            !message.contains("timed out after 3s"),
            "{operation}: {message}"
        );
        assert!(elapsed < deadline, "{operation}: {elapsed:?}");
    }
}

/// A key being migrated between two healthy primaries (answered with `ASK`, so routed through the
/// cluster client) is served while a third, unrelated primary is frozen. The client's connection
/// (its topology discovery, about 500 ms with a node frozen) was made inside each call's deadline
/// (500 ms): cut short every time, it never ended, and 0 of 20 calls in 6 s succeeded. It is now
/// made in a task of its own: a first call may time out, a later one finds it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_key_is_served_while_an_unrelated_primary_is_frozen() {
    let cluster = RedisCluster::start(3, 0);
    let cache = Cache::builder(repository(&cluster, Duration::from_millis(500)))
        .key_prefix("{ask}")
        .build();
    cache.set("k", &1, 100).await.unwrap();
    let slot = cluster.slot_of("{ask}");
    let from = cluster.primary_for("{ask}");
    let others: Vec<u16> = cluster
        .primaries()
        .into_iter()
        .filter(|port| *port != from)
        .collect();
    let (to, unrelated) = (others[0], others[1]);
    cluster.begin_migration(slot, from, to);
    assert_eq!(cluster.migrate_keys(slot, from, to, 10), 1);
    let _frozen = cluster.freeze_node(unrelated);
    let started = Instant::now();
    loop {
        match cache.get::<i32>("k").await {
            Ok(found) => {
                assert_eq!(found, Some(1));
                break;
            }
            Err(error) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "never served: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cache pinned to one slot by its prefix (`{pin}`: every key on one primary) sweeps with
/// `delete_pattern` while another primary, which can hold none of its keys, is frozen or killed:
/// the sweep succeeds (it failed with `Unavailable`, all its keys removed, and so did the
/// `CacheLayer` purges on it; found by a probe, 2026-12-07). With the pinned primary frozen it
/// still fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_cache_sweeps_while_a_primary_holding_none_of_its_keys_is_down() {
    let cluster = RedisCluster::start(3, 0);
    let cache = Cache::builder(repository(&cluster, Duration::from_millis(500)))
        .key_prefix("{pin}")
        .build();
    let home = cluster.primary_for("{pin}");
    let unrelated = cluster
        .primaries()
        .into_iter()
        .find(|port| *port != home)
        .unwrap();
    let keys = || (0..50).map(|i| format!("k{i}"));
    cache.set_many(keys().map(|k| (k, 1)), 100).await.unwrap();

    let frozen = cluster.freeze_node(home);
    let failed = cache.delete_pattern("k4*").await;
    assert!(
        matches!(
            failed,
            Err(Error::Timeout { .. } | Error::Unavailable { .. })
        ),
        "{failed:?}"
    );
    drop(frozen);

    let frozen = cluster.freeze_node(unrelated);
    assert_eq!(cache.delete_pattern("k1*").await.unwrap(), 11);
    drop(frozen);
    cluster.kill_node(unrelated);
    assert_eq!(cache.delete_pattern("*").await.unwrap(), 39);
    let left: Vec<Option<i32>> = cache.get_many(keys()).await.unwrap();
    assert!(left.iter().all(Option::is_none), "{left:?}");
}

/// The same while the pinned slot is half migrated to a primary that is then frozen: keys of the
/// cache are on it, so the sweep fails (a first version forgave every primary the slot map did
/// not name for the slot, the importing one too, and answered `Ok(50)` leaving 50 keys served;
/// found by a regression hunt). The slot's primary vouches for the whole slot or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_cache_sweep_fails_while_its_slot_is_half_moved_to_a_frozen_primary() {
    let cluster = RedisCluster::start(3, 0);
    let cache = Cache::builder(repository(&cluster, Duration::from_millis(500)))
        .key_prefix("{pin}")
        .build();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    cache
        .set_many(keys.iter().map(|k| (k, 1)), 100)
        .await
        .unwrap();
    let slot = cluster.slot_of("{pin}");
    let home = cluster.primary_for("{pin}");
    let importing = cluster
        .primaries()
        .into_iter()
        .find(|port| *port != home)
        .unwrap();
    cluster.begin_migration(slot, home, importing);
    assert_eq!(cluster.migrate_keys(slot, home, importing, 50), 50);
    let frozen = cluster.freeze_node(importing);
    let swept = cache.delete_pattern("*").await;
    drop(frozen);
    assert!(swept.is_err(), "{swept:?}");
    let left: Vec<Option<i32>> = cache.get_many(&keys).await.unwrap();
    assert_eq!(left.iter().flatten().count(), 50);
}

/// A `CacheLayer` (keys by host, the default) on a cluster cache, its handler answering
/// `hello`: the tests of its list of hosts, one key on one primary.
struct HostsApp {
    cache: Cache,
    layer: impcache_tower::CacheLayer,
}

impl HostsApp {
    /// The list of hosts' key (under the cache's prefix and version).
    const LIST: &'static str = "__impcache_hosts:http";

    fn new(cluster: &RedisCluster, prefix: &str) -> Self {
        let cache = Cache::builder(repository(cluster, Duration::from_millis(300)))
            .key_prefix(prefix)
            .build();
        let layer = impcache_tower::CacheLayer::new(cache.clone()).expire(60);
        HostsApp { cache, layer }
    }

    /// The record key of `path` on `example.com`.
    fn record(path: &str) -> String {
        format!("http:example.com:{path}:-:GET:v")
    }

    /// The primary holding the list of hosts.
    fn list_primary(&self, cluster: &RedisCluster) -> u16 {
        cluster.primary_for(&self.cache.make_key(Self::LIST))
    }

    /// Paths on `example.com` whose records live on another primary than `victim`.
    fn paths_off(&self, cluster: &RedisCluster, victim: u16) -> Vec<String> {
        (0..12)
            .map(|i| format!("/page-{i:02}"))
            .filter(|path| cluster.primary_for(&self.cache.make_key(&Self::record(path))) != victim)
            .collect()
    }

    /// Requests `path` on `example.com`, then whether its response is stored within `within`,
    /// its record read from the cache (the store runs in the background, and a request meanwhile
    /// may be served by its flight).
    async fn becomes_stored(&self, path: &str, within: Duration) -> bool {
        use std::convert::Infallible;

        use bytes::Bytes;
        use http::{Request, Response};
        use http_body_util::Full;
        use tower::{service_fn, Layer, ServiceExt};

        let service = self
            .layer
            .clone()
            .layer(service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            }));
        let request = Request::get(format!("http://example.com{path}"))
            .body(Full::default())
            .unwrap();
        service.oneshot(request).await.unwrap();
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.cache.get_raw(&Self::record(path)).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// `CacheLayer` (keys by host) on a Cluster: each store first lists its host in the namespace's
/// list of hosts, one key on one primary. While that primary is frozen, responses whose records
/// live on the other primaries are still stored once this process has listed their host, and
/// only then: after this layer's `purge_all` (which removes the list) a store whose listing
/// fails stores nothing until the host is listed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layer_stores_while_the_primary_of_its_list_of_hosts_is_frozen() {
    let cluster = RedisCluster::start(3, 0);
    let app = HostsApp::new(&cluster, "hosts");
    let victim = app.list_primary(&cluster);
    let on_others = app.paths_off(&cluster, victim);
    assert!(on_others.len() >= 4, "{on_others:?}");

    assert!(app.becomes_stored("/seed", Duration::from_secs(5)).await);
    app.layer.purge_all().await.unwrap();
    {
        let _frozen = cluster.freeze_node(victim);
        // Not listed since the purge: stores nothing.
        assert!(
            !app.becomes_stored(&on_others[0], Duration::from_millis(1500))
                .await
        );
    }
    // Listed again by a store, then frozen: every response of the other primaries is stored.
    assert!(app.becomes_stored("/seed", Duration::from_secs(10)).await);
    let _frozen = cluster.freeze_node(victim);
    for path in &on_others {
        assert!(
            app.becomes_stored(path, Duration::from_secs(5)).await,
            "{path} was not stored"
        );
    }
}

/// `CacheLayer` (keys by host) on a Cluster whose list of hosts lost this process's host (as
/// another process's `purge_all` removes it): a store whose listing the list's primary refuses
/// (`OOM`: the addition is known not to have landed) stores nothing; one whose listing meets an
/// outage of that primary is stored, and the listing is retried in the background, so that
/// once the replica has taken over the list names the host again and `purge_url` on any host
/// removes the record (the addition sent to the dead primary was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layer_lists_its_host_again_after_an_outage_of_the_list() {
    let cluster = RedisCluster::start(3, 1);
    let app = HostsApp::new(&cluster, "relist");
    let victim = app.list_primary(&cluster);
    let on_others = app.paths_off(&cluster, victim);
    assert!(on_others.len() >= 2, "{on_others:?}");

    assert!(app.becomes_stored("/seed", Duration::from_secs(5)).await);
    app.cache.delete(HostsApp::LIST).await.unwrap();
    cluster.cmd::<()>(victim, &["CONFIG", "SET", "maxmemory", "1"]);
    let refused = app
        .becomes_stored(&on_others[0], Duration::from_millis(1500))
        .await;
    cluster.cmd::<()>(victim, &["CONFIG", "SET", "maxmemory", "0"]);
    assert!(!refused, "stored, though its listing was refused");

    // The list's deletion replicated, the primary dies: the store's listing fails.
    let heir = cluster.replica_of(victim).expect("a replica");
    let synced = Instant::now();
    while cluster.cmd::<i64>(heir, &["DBSIZE"]) != cluster.cmd::<i64>(victim, &["DBSIZE"]) {
        assert!(
            synced.elapsed() < Duration::from_secs(5),
            "replica not in sync"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.kill_node(victim);
    let path = &on_others[1];
    assert!(app.becomes_stored(path, Duration::from_secs(5)).await);
    let listed_again = Instant::now();
    loop {
        let listed = app.cache.get_raw(HostsApp::LIST).await.ok().flatten();
        if listed.is_some_and(|hosts| hosts.as_ref() == b"example.com\n") {
            break;
        }
        assert!(
            listed_again.elapsed() < Duration::from_secs(20),
            "the host was not listed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("listed again after {:?}", listed_again.elapsed());
    assert_eq!(app.layer.purge_url(None, path).await.unwrap(), 1);
}

/// The configured nodes that are no primaries (here the replicas) are asked for the slot map
/// through connections that are kept: each `delete_pattern` learns the map, and each made a new
/// connection to every replica (found by a regression hunt: 49-50 connections per replica for
/// 50 sweeps, and two a second per replica with a near cache's heartbeat). On a cluster of its
/// own: the count is the server's, and the other tests' connections to a shared cluster's
/// replicas made it 12 once (CI, 2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_keep_their_connections_to_the_replicas() {
    let cluster = &RedisCluster::start(3, 1);
    let cache = Cache::builder(repository(cluster, Duration::from_secs(2)))
        .key_prefix("replica-connections")
        .build();
    let replicas: Vec<u16> = cluster
        .primaries()
        .into_iter()
        .filter_map(|primary| cluster.replica_of(primary))
        .collect();
    assert!(!replicas.is_empty());
    let connections = |port: u16| -> u64 {
        let info: String = cluster.cmd(port, &["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    cache.delete_pattern("*").await.unwrap();
    let before: Vec<u64> = replicas.iter().map(|port| connections(*port)).collect();
    for _ in 0..20 {
        cache.delete_pattern("*").await.unwrap();
    }
    for (port, before) in replicas.iter().zip(before) {
        // One for the reading of the count, and a margin for the cluster client's own (20 or
        // more when each sweep connected anew).
        let made = connections(*port) - before;
        assert!(
            made <= 10,
            "{made} new connections to replica {port} for 20 sweeps"
        );
    }
}
