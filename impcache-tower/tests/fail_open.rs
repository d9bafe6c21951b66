//! Fail open: with Redis killed or frozen, every request is answered by the handler, delayed no
//! more than the repository's deadline (plus generous slack for a loaded CI machine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use http::Response;
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

const DEADLINE: Duration = Duration::from_millis(100);
/// Bound for one request: the deadline, plus slack for a 2-core CI machine.
const BOUND: Duration = Duration::from_millis(100 + 900);

fn redis_layer(redis: &RedisServer) -> CacheLayer {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(DEADLINE)
        .build()
        .unwrap();
    CacheLayer::new(Cache::new(repository)).expire(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_leaves_the_handler_answering() {
    let mut redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (svc, calls) = counting(layer.clone());
    assert_eq!(send(&svc, get("/up")).await.outcome(), "MISS");
    wait_stored(&layer, "/up").await;
    redis.kill();
    for i in 0..5 {
        let started = Instant::now();
        let seen = send(&svc, get("/up")).await;
        assert!(
            started.elapsed() < BOUND,
            "request {i} took {:?}",
            started.elapsed()
        );
        assert_eq!(seen.status, 200);
        assert_eq!(seen.body, format!("call {}", i + 2));
        assert_eq!(seen.outcome(), "MISS");
        assert!(
            seen.header("cache-status")
                .unwrap()
                .ends_with("detail=cache-error"),
            "{:?}",
            seen.header("cache-status")
        );
    }
    assert_eq!(calls.get(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_delays_requests_by_at_most_the_deadline() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        Response::new(Body::from(format!("call {n}")))
    });
    // Connect first, so the freeze hits a live connection (the slow case, not the refused one).
    send(&svc, get("/warm")).await;
    wait_stored(&layer, "/warm").await;
    redis.freeze();
    for uri in ["/warm", "/a", "/b"] {
        let started = Instant::now();
        let seen = send(&svc, get(uri)).await;
        assert!(
            started.elapsed() < BOUND,
            "{uri} took {:?}",
            started.elapsed()
        );
        assert_eq!(seen.status, 200);
        assert!(seen.body.starts_with(b"call "));
    }
    redis.thaw();
    assert_eq!(calls.get(), 4);
}
