//! Probe (fix-1 analogue in the HTTP layer): a `Cache` with `tag_clock_skew`, a tag purged
//! just before; 20 concurrent requests for a tagged URL: how many handler calls?
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Response;
use impcache::{Cache, CacheRepository, MemoryCacheRepository};
use impcache_tower::CacheLayer;
use support::*;

async fn calls_for(skew: Duration) -> usize {
    let store = MemoryCacheRepository::new();
    let mk = || {
        let repository: Arc<dyn CacheRepository> = Arc::new(store.clone());
        Cache::builder_shared(repository).tag_clock_skew(skew).build()
    };
    let (cache, other) = (mk(), mk());
    other.invalidate_tag("t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let layer = CacheLayer::new(cache).expire(60);
    let (svc, calls) = app(layer, |n, _req| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Response::builder()
            .header("cache-tag", "t")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let first = tokio::spawn(send(&svc, get("/x")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rest: Vec<_> = (0..19).map(|_| tokio::spawn(send(&svc, get("/x")))).collect();
    let mut bodies = vec![first.await.unwrap().body];
    for r in rest {
        bodies.push(r.await.unwrap().body);
    }
    eprintln!("skew {skew:?}: {} handler calls for 20 requests", calls.get());
    calls.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_waiters_within_the_clock_skew_share_the_call() {
    let zero = calls_for(Duration::ZERO).await;
    let skew = calls_for(Duration::from_secs(30)).await;
    assert_eq!(zero, 1);
    assert!(skew <= 2, "with a clock skew allowance: {skew} handler calls for 20 requests");
}
