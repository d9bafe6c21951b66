//! `delete_pattern` reports its progress and loses nothing: the totals after each batch (memory,
//! Redis, a user repository without progress of its own), the `tracing` events of a long sweep,
//! and the count of keys removed when the server is killed or frozen mid-sweep.
//! (A primary killed mid-sweep on Redis Cluster: `tests/cluster.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use impcache::{
    BoxFuture, Cache, CacheRepository, DeleteProgress, Error, Expiry, MemoryCacheRepository,
    RedisCacheRepository,
};
use impcache_tests::logs::Logs;
use impcache_tests::{current_thread_runtime, RedisServer};
use tracing::Instrument;

/// Keys `DEBUG POPULATE` writes in the Redis tests: 20 batches of `SCAN`.
const POPULATED: u64 = 20_000;

/// Checks what a sweep reported: totals that only grow, one batch at a time, ending on the
/// count returned.
fn check_reports(reports: &[DeleteProgress], removed: u64) {
    let last = reports.last().expect("at least one report");
    assert_eq!(last.removed, removed, "{last:?}");
    assert_eq!(last.batches, reports.len() as u64);
    for pair in reports.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert!(after.matched > before.matched, "{pair:?}");
        assert!(after.removed >= before.removed, "{pair:?}");
        assert_eq!(after.batches, before.batches + 1, "{pair:?}");
    }
    assert!(reports.iter().all(|p| p.removed <= p.matched));
}

#[tokio::test]
async fn memory_reports_each_batch_of_1000() {
    let cache = Cache::builder(MemoryCacheRepository::new()).build();
    cache
        .set_many((0..2500).map(|i| (format!("k{i}"), i)), 60)
        .await
        .unwrap();
    cache.set("other", &1, 60).await.unwrap();
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("k*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(removed, 2500);
    check_reports(&reports, removed);
    let batches: Vec<(u64, u64)> = reports.iter().map(|p| (p.matched, p.batches)).collect();
    assert_eq!(batches, [(1000, 1), (2000, 2), (2500, 3)]);
    // Nothing matches: no batch, no report.
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("k*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!((removed, reports.len()), (0, 0));
    assert_eq!(cache.get::<i32>("other").await.unwrap(), Some(1));
}

/// A user repository written before progress existed: only `delete_pattern`.
#[derive(Debug)]
struct Delegating(MemoryCacheRepository);

impl CacheRepository for Delegating {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.0.set(key, value, expiry)
    }
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<bool>> {
        self.0.set_nx(key, value, expiry)
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.0.set_many(entries, expiry)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<Option<Bytes>>> {
        self.0.get(key)
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, impcache::Result<Vec<Option<Bytes>>>> {
        self.0.get_many(keys)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete(key)
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete_many(keys)
    }
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete_pattern(pattern)
    }
}

#[tokio::test]
async fn a_repository_without_progress_reports_once_at_the_end() {
    let cache = Cache::builder(Delegating(MemoryCacheRepository::new())).build();
    cache
        .set_many((0..2500).map(|i| (format!("k{i}"), i)), 60)
        .await
        .unwrap();
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(removed, 2500);
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].matched, reports[0].removed, reports[0].batches),
        (2500, 2500, 1)
    );
}

#[test]
fn a_long_sweep_is_a_debug_event_every_10_batches() {
    // A global subscriber: a thread-local one (`with_default`) lost this event now and then when
    // other tests' threads registered its callsite meanwhile (tracing-core caches interest per
    // callsite, process-wide). Other tests' sweeps log into the same buffer, so this one's lines
    // are told apart by their span.
    let logs = global_debug_logs();
    current_thread_runtime().block_on(
        async {
            let cache = Cache::builder(MemoryCacheRepository::new()).build();
            cache
                .set_many((0..21_500).map(|i| (format!("k{i}"), i)), 60)
                .await
                .unwrap();
            // No callback: the events all the same.
            assert_eq!(cache.delete_pattern("*").await.unwrap(), 21_500);
        }
        .instrument(tracing::info_span!("long_sweep_test")),
    );
    let logs = logs.text();
    let events: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("long_sweep_test") && line.contains("sweep in progress"))
        .collect();
    assert_eq!(events.len(), 2, "{logs}");
    assert!(events[0].contains("DEBUG"), "{logs}");
    assert!(
        events[0].contains(
            " impcache: delete_pattern: sweep in progress matched=10000 removed=10000 batches=10"
        ),
        "{logs}"
    );
    assert!(events[1].contains("batches=20"), "{logs}");
}

/// The log of this binary's one global subscriber (`DEBUG` and up), set on first use.
fn global_debug_logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

/// A cache over a server holding [`POPULATED`] keys `p:1:k:{n}` (`k:*` for the cache).
fn populated(server: &RedisServer, deadline: Duration) -> Cache {
    let _: () = server.cmd(&["DEBUG", "POPULATE", &POPULATED.to_string(), "p:1:k"]);
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(deadline)
        .connect_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    Cache::builder(repository)
        .key_prefix("p")
        .version(1)
        .build()
}

fn db_size(server: &RedisServer) -> u64 {
    server.cmd(&["DBSIZE"])
}

#[tokio::test]
async fn redis_reports_each_scan_batch() {
    let server = RedisServer::start();
    let cache = populated(&server, Duration::from_secs(5));
    let _: () = server.cmd(&["SET", "p:1:other", "1"]);
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("k:*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(removed, POPULATED);
    check_reports(&reports, removed);
    assert_eq!(reports.last().unwrap().matched, POPULATED);
    // `SCAN COUNT 1000`: about 1,000 keys a batch.
    assert!(
        (15..=30).contains(&reports.len()),
        "{} batches",
        reports.len()
    );
    assert_eq!(server.keys(), ["p:1:other"]);
}

#[tokio::test]
async fn a_server_killed_mid_sweep_leaves_the_count_removed_in_the_error() {
    let mut server = RedisServer::start();
    let cache = populated(&server, Duration::from_secs(5));
    let mut last = DeleteProgress::default();
    let error = cache
        .delete_pattern_with_progress("k:*", |p| {
            last = p;
            if p.batches == 3 {
                server.kill();
            }
        })
        .await
        .unwrap_err();
    assert!(last.removed >= 2000, "{last:?}");
    assert_eq!(
        error.removed_before_failure(),
        Some(last.removed),
        "{error:?}"
    );
    assert!(error.is_outage(), "{error:?}");
    assert_eq!(error.subject(), "p:1:k:*");
    let Error::Interrupted { source, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(matches!(**source, Error::Unavailable { .. }), "{source:?}");
    let message = error.to_string();
    assert!(
        message.ends_with(&format!(
            "({} keys removed before the failure)",
            last.removed
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_server_frozen_mid_sweep_times_out_with_the_count_and_a_second_sweep_finishes() {
    let server = RedisServer::start();
    let cache = populated(&server, Duration::from_millis(200));
    let mut last = DeleteProgress::default();
    let error = cache
        .delete_pattern_with_progress("k:*", |p| {
            last = p;
            if p.batches == 5 {
                server.freeze();
            }
        })
        .await
        .unwrap_err();
    server.thaw();
    let Error::Interrupted { removed, source } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*removed, last.removed);
    assert!(matches!(**source, Error::Timeout { .. }), "{source:?}");
    // Confirmed removed: gone. The `UNLINK` that timed out may have been applied after the thaw.
    let left = db_size(&server);
    assert!(
        left <= POPULATED - removed,
        "{left} left, {removed} removed"
    );
    assert!(
        left >= POPULATED - removed - 2000,
        "{left} left, {removed} removed"
    );
    // Running it again finishes the work.
    assert_eq!(cache.delete_pattern("k:*").await.unwrap(), left);
    assert_eq!(db_size(&server), 0);
}

#[tokio::test]
async fn a_sweep_that_fails_before_removing_anything_returns_the_failure_itself() {
    let mut server = RedisServer::start();
    let cache = populated(&server, Duration::from_secs(5));
    server.kill();
    let error = cache.delete_pattern("k:*").await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert_eq!(error.removed_before_failure(), None);
}
