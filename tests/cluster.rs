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

fn repository(cluster: &RedisCluster, deadline: Duration) -> RedisClusterCacheRepository {
    RedisClusterCacheRepository::builder(cluster.urls())
        .deadline(deadline)
        .build()
        .unwrap()
}

/// A cache on the shared cluster under a prefix of its own.
fn shared_cache(prefix: &str) -> Cache {
    let repository = repository(RedisCluster::shared(), Duration::from_secs(5));
    Cache::builder(repository).key_prefix(prefix).build()
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

/// A slot half migrated from one primary to another: keys on both sides are read (the client
/// follows `ASK`), and `delete_pattern` removes each key exactly once, wherever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pattern_while_a_slot_migrates() {
    let cluster = RedisCluster::shared();
    // Every key of this prefix lives in the slot of the hash tag `{migrating}`.
    let cache = shared_cache("{migrating}");
    let spread = shared_cache("migrating-spread");
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
    // Replication is asynchronous: wait for the replica to have every write.
    let _: i64 = cluster.cmd(victim, &["WAIT", "1", "2000"]);
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
    let port = impcache_tests::free_port();
    let deadline = Duration::from_millis(200);
    let cache = Cache::builder(
        RedisClusterCacheRepository::builder([format!("redis://127.0.0.1:{port}")])
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
