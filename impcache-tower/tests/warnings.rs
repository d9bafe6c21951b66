//! A server that refuses the layer's cache operations opens no circuit breaker (it answers):
//! the layer goes on without the cache, and says so at `WARN`, at most once a second. Alone in
//! its test binary: the limit is per process, and other tests' failures would take the warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use impcache::{Cache, RedisCacheRepository};
use impcache_tests::logs::Logs;
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

/// A read-only replica (every store refused, `READONLY`), then a login the server refuses
/// (every lookup refused, `NOAUTH`): each is warned of once, the rest of its second at
/// `DEBUG`, and the handler answers every request. Both were logged at `DEBUG` alone: a layer
/// caching nothing said nothing at the default level (found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_the_layer_is_warned_of_once_a_second() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let layer = |redis: &RedisServer| {
        let repository = RedisCacheRepository::new(&redis.url()).unwrap();
        CacheLayer::new(Cache::new(repository)).expire(60)
    };
    let failed = |text: &str, reason: &str| -> (usize, usize) {
        let lines = text
            .lines()
            .filter(|line| line.contains("cache operation failed") && line.contains(reason));
        lines.fold((0, 0), |(warned, all), line| {
            (warned + usize::from(line.contains(" WARN ")), all + 1)
        })
    };

    // A replica of a primary that cannot be reached: reads answer, writes are refused.
    let replica = RedisServer::start();
    let _: () = replica.cmd(&["REPLICAOF", "127.0.0.1", "1"]);
    let (svc, calls) = counting(layer(&replica));
    for i in 0..20 {
        let seen = send(&svc, get(&format!("/refused/{i}"))).await;
        assert_eq!(seen.status, 200);
    }
    assert_eq!(calls.get(), 20);
    // The stores run in the background: wait for their 20 reports.
    let waited = Instant::now();
    while failed(&logs.text(), "READONLY").1 < 20 && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (warned, all) = failed(&logs.text(), "READONLY");
    assert_eq!((warned, all), (1, 20), "{}", logs.text());

    // Past the second, a refused login warns again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let locked = RedisServer::start();
    let _: () = locked.cmd(&["CONFIG", "SET", "requirepass", "s3cret-pw"]);
    let (svc, calls) = counting(layer(&locked));
    for _ in 0..20 {
        assert_eq!(send(&svc, get("/refused")).await.status, 200);
    }
    assert_eq!(calls.get(), 20, "nothing is shared without the cache");
    let text = logs.text();
    let (warned, all) = failed(&text, "lookup");
    assert_eq!(warned, 1, "{text}");
    assert!(all >= 20, "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}
