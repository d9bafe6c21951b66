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
