//! `impcache_http_requests_total` outside an axum router, and without the `axum` feature: requests
//! are counted by outcome, with no `route` label (never the request's path).
//!
//! `scripts/test.sh` runs this file a second time with the crate's default features (no `axum`),
//! the way most users of other frameworks build it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recorded;

use std::convert::Infallible;

use http::{Request, Response};
use impcache::{Cache, MemoryCacheRepository};
use impcache_tower::CacheLayer;
use recorded::{count, requests_total};
use tower::{service_fn, Layer};

#[test]
fn requests_are_counted_by_outcome_without_a_route() {
    let counts = requests_total(|| async {
        let handler = service_fn(|request: Request<String>| async move {
            Ok::<_, Infallible>(Response::new(format!("page {}", request.uri().path())))
        });
        let service = CacheLayer::new(Cache::new(MemoryCacheRepository::new()))
            .expire(60)
            .layer(handler);
        recorded::miss_hit_miss_bypass(service, "/pages/").await;
    });
    assert_eq!(
        counts,
        [
            count("bypass", None, 1),
            count("hit", None, 1),
            count("miss", None, 2)
        ]
    );
}

/// A stale response standing in for a failing handler is counted as `stale`.
#[test]
fn a_stale_response_is_counted_as_stale() {
    let counts = requests_total(|| async {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler = service_fn(move |_: Request<String>| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut response = Response::new("page".to_owned());
                if n > 0 {
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        });
        let layer = CacheLayer::new(Cache::new(MemoryCacheRepository::new()))
            .expire(1)
            .stale_if_error(std::time::Duration::from_secs(60));
        let service = layer.layer(handler);
        let get = || Request::get("/page").body(String::new()).unwrap();
        let first = tower::ServiceExt::oneshot(service.clone(), get()).await;
        assert!(first.unwrap().status().is_success());
        // Past the one-second freshness (no timing is asserted).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let stale = tower::ServiceExt::oneshot(service, get()).await.unwrap();
        assert!(stale.status().is_success(), "the stale response answers");
    });
    assert_eq!(counts, [count("miss", None, 1), count("stale", None, 1)]);
}
