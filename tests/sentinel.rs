//! Redis Sentinel: the repository finds the primary through Sentinel and follows two failovers,
//! a forced one (`SENTINEL FAILOVER`: the old primary is demoted and answers `READONLY`) and a
//! crash (the primary is killed; Sentinel promotes the replica after `down-after-milliseconds`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use impcache::{Cache, RedisSentinelCacheRepository};
use impcache_tests::cluster::{SentinelGroup, SENTINEL_SERVICE};

/// Writes and reads until both succeed on the primary at `expected`; returns how long it took and
/// how many calls failed. Every failure must be a typed backend failure, returned within the
/// deadline (plus slack for a loaded CI machine).
async fn until_served_by(
    cache: &Cache,
    repository: &RedisSentinelCacheRepository,
    expected: u16,
    deadline: Duration,
) -> (Duration, usize) {
    let started = Instant::now();
    let mut failures = 0;
    let mut n = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not served by {expected} after {:?} ({failures} failures, primary {:?})",
            started.elapsed(),
            repository.primary_address()
        );
        n += 1;
        let call = Instant::now();
        let outcome = async {
            cache.set("counter", &n, 100).await?;
            cache.get::<i32>("counter").await
        }
        .await;
        // Two calls, each bounded by the deadline (a call may include one Sentinel lookup and
        // one retry, both inside that deadline).
        assert!(
            call.elapsed() < 2 * deadline + Duration::from_millis(700),
            "took {:?}",
            call.elapsed()
        );
        match outcome {
            Ok(Some(v))
                if v == n
                    && repository.primary_address() == Some(format!("127.0.0.1:{expected}")) =>
            {
                return (started.elapsed(), failures);
            }
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_backend_failure(), "{e}");
                failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_forced_failover_and_a_crashed_primary() {
    let mut group = SentinelGroup::start();
    let (first, second) = (group.primary.port(), group.replica.port());
    let deadline = Duration::from_millis(500);
    // The first Sentinel listed is down: the lookup moves on to the next one.
    let dead_sentinel = format!("redis://127.0.0.1:{}", impcache_tests::free_port());
    let repository = RedisSentinelCacheRepository::builder(
        [dead_sentinel, group.sentinel_url()],
        SENTINEL_SERVICE,
    )
    .deadline(deadline)
    .build()
    .unwrap();
    let cache = Cache::builder(repository.clone()).key_prefix("s").build();

    cache.set("k", &1, 100).await.unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
    assert_eq!(
        repository.primary_address(),
        Some(format!("127.0.0.1:{first}"))
    );
    assert_eq!(group.primary.keys(), ["s:1:k"]);
    // Replication is asynchronous: let the replica have it before promoting it.
    let _: i64 = group.primary.cmd(&["WAIT", "1", "2000"]);

    // 1. Forced failover: the replica is promoted, the old primary becomes its replica.
    let forced = Instant::now();
    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    let (took, failures) = until_served_by(&cache, &repository, second, deadline).await;
    eprintln!(
        "SENTINEL FAILOVER: served by the new primary {took:?} after the command \
         ({failures} failed calls; Sentinel switched after {:?})",
        forced.elapsed()
    );
    assert_eq!(group.primary_port(), second);
    assert_eq!(SentinelGroup::role(second), "master");
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1), "replicated");

    // 2. Crash: kill the new primary; Sentinel promotes the old one (now its replica) once it is
    //    down for `down-after-milliseconds` (1 s).
    let deadline_wait = Instant::now() + Duration::from_secs(10);
    while SentinelGroup::role(first) != "slave"
        || group.primary.cmd::<String>(&["GET", "s:1:k"]) != "1"
    {
        assert!(
            Instant::now() < deadline_wait,
            "old primary did not rejoin as a replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Instant::now();
    group.replica.kill();
    let (took, failures) = until_served_by(&cache, &repository, first, deadline).await;
    eprintln!(
        "primary killed: served by the promoted replica after {took:?} ({failures} failed calls, \
         down-after-milliseconds 1000); kill to recovery {:?}",
        killed.elapsed()
    );
    assert_eq!(group.primary_port(), first);
}

#[tokio::test]
async fn no_reachable_sentinel_is_a_typed_failure_within_the_deadline() {
    let deadline = Duration::from_millis(200);
    let repository = RedisSentinelCacheRepository::builder(
        [format!("redis://127.0.0.1:{}", impcache_tests::free_port())],
        "mymaster",
    )
    .deadline(deadline)
    .build()
    .unwrap();
    let cache = Cache::builder(repository).build();
    for _ in 0..3 {
        let started = Instant::now();
        let err = cache.get::<i32>("k").await.unwrap_err();
        assert!(err.is_backend_failure(), "{err}");
        assert!(err.to_string().contains("cache:1:k"), "{err}");
        assert!(started.elapsed() < deadline + Duration::from_millis(500));
    }
}
