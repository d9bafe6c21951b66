//! Redis Sentinel: the repository finds the primary through Sentinel and follows two failovers,
//! a forced one (`SENTINEL FAILOVER`) and a crash (the primary is killed; Sentinel promotes the
//! replica after `down-after-milliseconds`), through the Sentinel's announcements; how many
//! acknowledged writes a forced failover loses; and `READONLY` from a demoted primary.

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
    let dead_sentinel = impcache_tests::NO_SERVER_URL.to_owned();
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
    group.primary.wait_replicated();

    // 1. Forced failover: the replica is promoted, the old primary becomes its replica.
    let forced = Instant::now();
    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    let (took, failures) = until_served_by(&cache, &repository, second, deadline).await;
    // The repository follows the promotion itself, which comes before Sentinel's `+switch-master`.
    wait_for("Sentinel names the replica", || {
        group.primary_port() == second
    })
    .await;
    eprintln!(
        "SENTINEL FAILOVER: served by the new primary {took:?} after the command \
         ({failures} failed calls; Sentinel named it {:?} after the command)",
        forced.elapsed()
    );
    assert_eq!(SentinelGroup::role(second), "master");
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1), "replicated");

    // 2. Crash: kill the new primary; Sentinel promotes the old one (now its replica) once it is
    //    down for `down-after-milliseconds` (1 s).
    // Sentinel converts it 10 s after `+switch-master` (`sentinel_publish_period` * 4 + 2 s).
    let deadline_wait = Instant::now() + Duration::from_secs(20);
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
    wait_for("Sentinel names the old primary", || {
        group.primary_port() == first
    })
    .await;
}

#[tokio::test]
async fn no_reachable_sentinel_is_a_typed_failure_within_the_deadline() {
    let deadline = Duration::from_millis(200);
    let repository =
        RedisSentinelCacheRepository::builder([impcache_tests::NO_SERVER_URL], "mymaster")
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

/// What [`writes_through_a_forced_failover`] saw.
#[derive(Debug)]
struct FailoverWrites {
    /// Writes the repository acknowledged.
    acknowledged: usize,
    /// Acknowledged writes missing on the new primary afterwards.
    lost: usize,
    /// Calls that failed (typed backend failures).
    failed: usize,
    /// How long the tasks wrote.
    writing: Duration,
    /// From the first to the last acknowledged write that was lost.
    lost_span: Duration,
    /// From the replica reporting `role:master` to the repository naming it as its primary.
    switch_delay: Duration,
    /// Milliseconds from the replica reporting `role:master` to the first and the last lost write.
    lost_from_promotion_ms: (f64, f64),
}

/// 8 tasks write distinct keys through `repository` while `SENTINEL FAILOVER` promotes the
/// replica; then counts the acknowledged writes the new primary does not have. (A write
/// acknowledged by the old primary after the promotion is lost: replication is asynchronous and
/// the old primary later resynchronises from the new one.)
async fn writes_through_a_forced_failover(
    group: &SentinelGroup,
    repository: &RedisSentinelCacheRepository,
) -> FailoverWrites {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let second = group.replica.port();
    let new_primary = format!("127.0.0.1:{second}");
    let cache = Cache::builder(repository.clone()).key_prefix("w").build();
    cache.set("warm", &0, 100).await.unwrap();
    group.primary.wait_replicated();

    // Observer (a thread: its checks are blocking): when the replica reports `role:master`, and
    // when the repository names it.
    let stop_observer = Arc::new(AtomicBool::new(false));
    let promoted_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let switched_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let observer = {
        let (stop, promoted_at, switched_at) = (
            stop_observer.clone(),
            promoted_at.clone(),
            switched_at.clone(),
        );
        let repository = repository.clone();
        let new_primary = new_primary.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if switched_at.lock().unwrap().is_none()
                    && repository.primary_address().as_deref() == Some(new_primary.as_str())
                {
                    *switched_at.lock().unwrap() = Some(now);
                }
                if promoted_at.lock().unwrap().is_none() && SentinelGroup::role(second) == "master"
                {
                    *promoted_at.lock().unwrap() = Some(now);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|task| {
            let (cache, stop) = (cache.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acknowledged, mut failed) = (Vec::new(), 0);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("t{task}-{i}");
                    match cache.set(&key, &i, 300).await {
                        Ok(()) => acknowledged.push((key, Instant::now())),
                        Err(e) => {
                            assert!(e.is_backend_failure(), "{e}");
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    // Write on until the repository uses the new primary, and a little longer.
    let limit = Instant::now() + Duration::from_secs(10);
    while switched_at.lock().unwrap().is_none() || promoted_at.lock().unwrap().is_none() {
        assert!(
            Instant::now() < limit,
            "no switch to {new_primary} within 10 s (primary {:?})",
            repository.primary_address()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let writing = started.elapsed();
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    for writer in writers {
        let (a, f) = writer.await.unwrap();
        acknowledged.extend(a);
        failed += f;
    }
    stop_observer.store(true, Ordering::Relaxed);
    observer.join().unwrap();
    let promoted_at = promoted_at.lock().unwrap().unwrap();
    let switched_at = switched_at.lock().unwrap().unwrap();

    let limit = Instant::now() + Duration::from_secs(10);
    while group.primary_port() != second {
        assert!(Instant::now() < limit, "Sentinel did not name {second}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let present: HashSet<String> = group.replica.keys().into_iter().collect();
    let lost: Vec<Instant> = acknowledged
        .iter()
        .filter(|(key, _)| !present.contains(&format!("w:1:{key}")))
        .map(|(_, at)| *at)
        .collect();
    let lost_span = match (lost.iter().min(), lost.iter().max()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    let since_promotion = |at: &Instant| {
        if *at >= promoted_at {
            (*at - promoted_at).as_secs_f64() * 1e3
        } else {
            -(promoted_at - *at).as_secs_f64() * 1e3
        }
    };
    let lost_from_promotion_ms = (
        lost.iter().min().map_or(0.0, since_promotion),
        lost.iter().max().map_or(0.0, since_promotion),
    );
    FailoverWrites {
        acknowledged: acknowledged.len(),
        lost: lost.len(),
        failed,
        writing,
        lost_span,
        switch_delay: switched_at.saturating_duration_since(promoted_at),
        lost_from_promotion_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_loses_few_acknowledged_writes() {
    let group = SentinelGroup::start();
    let repository =
        RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
            .deadline(Duration::from_millis(500))
            .build()
            .unwrap();
    let seen = writes_through_a_forced_failover(&group, &repository).await;
    let per_second = seen.acknowledged as f64 / seen.writing.as_secs_f64();
    // The loss as time: how long the writes lost would have taken at the measured rate.
    let lost_time = Duration::from_secs_f64(seen.lost as f64 / per_second);
    eprintln!(
        "SENTINEL FAILOVER under 8 writing tasks: {} acknowledged writes in {:?} ({per_second:.0}/s), \
         {} lost (≈{lost_time:?} of writes, spread over {:?}), {} failed calls; the repository \
         switched {:?} after the replica reported role:master (lost writes from {:.0} to {:.0} ms \
         after it)",
        seen.acknowledged,
        seen.writing,
        seen.lost,
        seen.lost_span,
        seen.failed,
        seen.switch_delay,
        seen.lost_from_promotion_ms.0,
        seen.lost_from_promotion_ms.1,
    );
    // Before the switch followed Sentinel's announcements, every write from the promotion until
    // the next once-a-second check was lost (≈0.5-2 s of writes).
    assert!(
        lost_time < Duration::from_millis(300),
        "{} of {} acknowledged writes lost (≈{lost_time:?} of writes)",
        seen.lost,
        seen.acknowledged
    );
    assert!(
        seen.switch_delay < Duration::from_millis(500),
        "switched {:?} after the promotion",
        seen.switch_delay
    );
}

/// The ids of the Sentinel's clients subscribed to at least one channel.
fn subscribers(group: &SentinelGroup) -> Vec<String> {
    let clients: String = group.sentinel_cmd(&["CLIENT", "LIST"]);
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(name).map(str::to_owned))
    };
    clients
        .lines()
        .filter(|line| field(line, "sub=").is_some_and(|n| n != "0"))
        .filter_map(|line| field(line, "id="))
        .collect()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < limit, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_are_followed_until_the_repository_is_dropped_and_readonly_still_re_resolves()
{
    let group = SentinelGroup::start();
    let (first, second) = (group.primary.port(), group.replica.port());

    // 1. The first operation starts the task that follows the announcements; dropping the last
    //    handle on the repository ends it (its subscription closes).
    let repository =
        RedisSentinelCacheRepository::new([group.sentinel_url()], SENTINEL_SERVICE).unwrap();
    let cache = Cache::builder(repository.clone()).build();
    assert!(subscribers(&group).is_empty());
    cache.set("k", &1, 100).await.unwrap();
    wait_for("subscribed to the Sentinel", || {
        subscribers(&group).len() == 1
    })
    .await;
    // The same connection stays subscribed across the pings that check the Sentinel.
    let subscribed = subscribers(&group);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(subscribers(&group), subscribed);
    drop((cache, repository));
    wait_for("subscription closed after the drop", || {
        subscribers(&group).is_empty()
    })
    .await;

    // 2. Without announcements (and without the periodic check), a primary demoted to a replica
    //    answers READONLY: the write is retried on the primary Sentinel names, and succeeds.
    let repository =
        RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
            .follow_announcements(false)
            .recheck_every(None)
            .build()
            .unwrap();
    let cache = Cache::builder(repository.clone()).build();
    cache.set("k", &2, 100).await.unwrap();
    assert!(
        subscribers(&group).is_empty(),
        "follow_announcements(false)"
    );
    group.primary.wait_replicated();
    let _: () = group.sentinel_cmd(&["SENTINEL", "FAILOVER", SENTINEL_SERVICE]);
    // `SENTINEL MASTERS`, which a lookup reads, names it after `+switch-master` (a little after
    // `GET-MASTER-ADDR-BY-NAME` does).
    wait_for("Sentinel names the replica", || {
        let primary: std::collections::HashMap<String, String> =
            group.sentinel_cmd(&["SENTINEL", "MASTER", SENTINEL_SERVICE]);
        primary.get("port") == Some(&second.to_string())
    })
    .await;
    assert_eq!(
        repository.primary_address(),
        Some(format!("127.0.0.1:{first}")),
        "nothing told the repository yet"
    );
    // What Sentinel does to the old primary about 10 s later.
    let _: () = group
        .primary
        .cmd(&["REPLICAOF", "127.0.0.1", &second.to_string()]);
    wait_for("old primary is a replica", || {
        SentinelGroup::role(first) == "slave"
    })
    .await;
    cache.set("k", &3, 100).await.unwrap();
    assert_eq!(
        repository.primary_address(),
        Some(format!("127.0.0.1:{second}"))
    );
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(3));
}

/// An error the client returns before the deadline (here a Sentinel that accepts connections but
/// never answers: the `redis` crate's Sentinel connections time out after 1 s, within the 3 s
/// deadline) names its cause and the time waited, not "timed out after <deadline>" (issue 12,
/// item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_sentinel_error_names_its_cause_and_the_time_waited() {
    let proxy = impcache_tests::FaultProxy::start(impcache_tests::free_port()).await;
    proxy.blackhole();
    let deadline = Duration::from_secs(3);
    let repository = RedisSentinelCacheRepository::builder(
        [format!("redis://127.0.0.1:{}", proxy.port())],
        "mymaster",
    )
    .deadline(deadline)
    .follow_announcements(false)
    .build()
    .unwrap();
    let cache = Cache::builder(repository).build();
    let started = Instant::now();
    let error = cache.get::<i32>("k").await.unwrap_err();
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(
        matches!(error, impcache::Error::Unavailable { .. }),
        "{error:?}"
    );
    assert!(error.is_outage(), "{error:?}");
    assert!(!message.contains("timed out after 3s"), "{message}");
    assert!(message.contains("gave up after"), "{message}");
    assert!(elapsed < deadline, "{elapsed:?}");
}

/// A `static` cache used from several `#[tokio::test]`s, each on its own runtime: the connections
/// opened by one runtime (to the Sentinel, to the primary) and the task following the
/// announcements end with it. Each call from a later runtime goes through, writes included
/// (issue 12, item 11).
#[test]
fn a_finished_runtime_leaves_nothing_that_fails_a_call() {
    let group = SentinelGroup::start();
    let repository =
        RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap();
    let cache = Cache::builder(repository).build();
    let current_thread = impcache_tests::current_thread_runtime;
    let multi_thread = impcache_tests::multi_thread_runtime;
    current_thread().block_on(async { cache.set("k", &1, 60).await.unwrap() });
    current_thread()
        .block_on(cache.set("k", &2, 60))
        .expect("a set from a second runtime");
    multi_thread()
        .block_on(cache.set_many([("a", 1), ("b", 2)], 60))
        .expect("a set_many from a third runtime");
    let removed = current_thread()
        .block_on(cache.delete("a"))
        .expect("a delete from a fourth runtime");
    assert_eq!(removed, 1);
    let got = multi_thread()
        .block_on(cache.get::<i32>("k"))
        .expect("a get from a fifth runtime");
    assert_eq!(got, Some(2));
}

/// Parallel `#[tokio::test]`s sharing a `static` cache, as on a single node
/// (`reliability_faults::runtimes_ending_while_others_share_the_cache_fail_no_call`): the primary's
/// repository sends every call in flight when a runtime ends once more.
#[test]
fn runtimes_ending_while_others_share_the_cache_fail_no_call() {
    let group = SentinelGroup::start();
    let repository =
        RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
            .deadline(Duration::from_millis(500))
            .build()
            .unwrap();
    let cache = Cache::builder(repository).build();
    let failures = impcache_tests::share_across_ending_runtimes(&cache);
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
}

/// A first Sentinel that accepts connections and never answers (a powered-off host, dropped
/// packets) does not keep the healthy second one's answer from the calls. The `redis` crate takes
/// the Sentinels' answers in order, so a lookup waits out the silent one's timeout (about a
/// second): cut short by each call's deadline (500 ms by default), it never ended, and no call
/// reached the primary (12 timeouts, then the breaker open, for 10 s). It now runs in a task of
/// its own: a first call may time out, a later one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_first_sentinel_does_not_keep_the_second_ones_answer_from_the_calls() {
    let group = SentinelGroup::start();
    let silent = impcache_tests::FaultProxy::start(impcache_tests::free_port()).await;
    silent.blackhole();
    let repository = RedisSentinelCacheRepository::builder(
        [
            format!("redis://127.0.0.1:{}", silent.port()),
            group.sentinel_url(),
        ],
        SENTINEL_SERVICE,
    )
    .build()
    .unwrap();
    let cache = Cache::new(repository);
    let started = Instant::now();
    while let Err(error) = cache.set("k", &1, 100).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never served through the second Sentinel: {error}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
}

/// A service name the Sentinels do not know (the `redis` crate says the same when the primary
/// is flagged down): an outage, as before, but the message names the service and the Sentinels
/// asked. It named neither (`Master with given name not found in sentinel`: found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_service_name_is_named_in_the_error() {
    let group = SentinelGroup::start();
    let repository = RedisSentinelCacheRepository::builder([group.sentinel_url()], "nosuchmaster")
        .deadline(Duration::from_millis(500))
        .follow_announcements(false)
        .build()
        .unwrap();
    let cache = Cache::builder(repository).build();
    let error = cache.get::<i32>("k").await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, impcache::Error::Unavailable { .. }),
        "{error:?}"
    );
    assert!(message.contains("cache:1:k"), "{message}");
    assert!(
        message.contains("no primary named `nosuchmaster`"),
        "{message}"
    );
    assert!(message.contains(&group.sentinel_url()), "{message}");
}

/// A plain Redis server given as the Sentinel is a configuration error, not an outage: every
/// call says so, naming the address (`Error::Server`, as for a refused login), and the breaker
/// stays closed. It was an outage (`Address does not point to a sentinel node`, naming no
/// address), and after 5 calls every error was `CircuitOpen` (found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_redis_given_as_the_sentinel_is_a_configuration_error() {
    let server = impcache_tests::RedisServer::start();
    let repository = RedisSentinelCacheRepository::builder([server.url()], "mymaster")
        .deadline(Duration::from_millis(500))
        .follow_announcements(false)
        .build()
        .unwrap();
    let cache = Cache::builder(repository.clone()).build();
    for _ in 0..8 {
        let error = cache.get::<i32>("k").await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, impcache::Error::Server { .. }), "{error:?}");
        assert!(!error.is_outage(), "{error:?}");
        assert!(
            message.contains(&format!(
                "a server given as a Sentinel (`{}`) is not one",
                server.url()
            )),
            "{message}"
        );
        assert!(message.contains("`mymaster`"), "{message}");
    }
    assert!(!repository.is_circuit_open());
}
