//! `impcache_http_requests_total` outside an axum router, and without the `axum` feature: requests
//! are counted by outcome, with no `route` label (never the request's path).
//!
//! `scripts/test.sh` runs this file a second time with the crate's default features (no `axum`),
//! the way most users of other frameworks build it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use http::{Request, Response};
use impcache::{Cache, MemoryCacheRepository};
use impcache_tower::CacheLayer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{service_fn, Layer, ServiceExt};

#[test]
fn requests_are_counted_by_outcome_without_a_route() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let handler = service_fn(|request: Request<String>| async move {
            Ok::<_, Infallible>(Response::new(format!("page {}", request.uri().path())))
        });
        let service = CacheLayer::new(Cache::new(MemoryCacheRepository::new()))
            .expire(60)
            .layer(handler);
        for (method, uri) in [
            ("GET", "/pages/1"),  // miss
            ("GET", "/pages/1"),  // hit
            ("GET", "/pages/2"),  // miss
            ("POST", "/pages/1"), // bypass
        ] {
            let request = Request::builder().method(method).uri(uri);
            let response = service
                .clone()
                .oneshot(request.body(String::new()).unwrap())
                .await
                .unwrap();
            assert!(response.status().is_success());
            // Let the background store finish before the next request.
            tokio::task::yield_now().await;
        }
    });
    let mut counts: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "impcache_http_requests_total")
        .map(|(key, _, _, value)| {
            let labels: Vec<_> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (labels, value)
        })
        .collect();
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    let count = |outcome: &str, n| {
        (
            vec![("outcome".to_owned(), outcome.to_owned())],
            DebugValue::Counter(n),
        )
    };
    assert_eq!(
        counts,
        [count("bypass", 1), count("hit", 1), count("miss", 2)]
    );
}
