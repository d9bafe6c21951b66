//! `impcache_http_requests_total{outcome, route}`: requests counted by outcome and by the route
//! axum matched (the `axum` feature), never by the raw path. The recorder is local to the test's
//! thread, which runs a current-thread runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::Request;
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_tower::CacheLayer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::ServiceExt;

async fn show_user(Path(id): Path<u64>) -> String {
    format!("user {id}")
}

#[test]
fn requests_are_counted_by_outcome_and_matched_route() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app: Router = Router::new()
            .route("/users/{id}", get(show_user).post(show_user))
            .layer(CacheLayer::new(Cache::new(MemoryCacheRepository::new())).expire(60));
        for (method, uri) in [
            ("GET", "/users/1"),  // miss
            ("GET", "/users/1"),  // hit
            ("GET", "/users/2"),  // miss
            ("POST", "/users/1"), // bypass
        ] {
            let request = Request::builder().method(method).uri(uri);
            let response = app
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(response.status().is_success());
            // Let the background store finish before the next request.
            tokio::task::yield_now().await;
        }
    });
    let mut counts: Vec<(Vec<(String, String)>, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "impcache_http_requests_total")
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let DebugValue::Counter(n) = value else {
                panic!("a counter")
            };
            (labels, n)
        })
        .collect();
    counts.sort();
    let count = |outcome: &str, n| {
        (
            vec![
                ("outcome".to_owned(), outcome.to_owned()),
                ("route".to_owned(), "/users/{id}".to_owned()),
            ],
            n,
        )
    };
    assert_eq!(
        counts,
        [count("bypass", 1), count("hit", 1), count("miss", 2)]
    );
}

/// A lookup that fails (nothing listens where the cache's Redis should be) is counted as `error`,
/// and the handler still answers (fail open); the request after it is counted the same way.
#[test]
fn a_failed_lookup_is_counted_as_an_error_and_the_handler_answers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A port nothing listens on: bound, read, and closed again. (This test is packaged with
        // the crate, so it cannot use the workspace's unpublished test harness.)
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = format!("redis://127.0.0.1:{port}/0");
        let repository = RedisCacheRepository::builder(nowhere)
            .deadline(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let app: Router = Router::new()
            .route("/users/{id}", get(show_user))
            .layer(CacheLayer::new(Cache::new(repository)).expire(60));
        for _ in 0..2 {
            let request = Request::get("/users/7").body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert!(response.status().is_success(), "the handler answers");
        }
    });
    let errors: Vec<_> = snapshotter
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
    let labels = vec![
        ("outcome".to_owned(), "error".to_owned()),
        ("route".to_owned(), "/users/{id}".to_owned()),
    ];
    assert_eq!(errors, [(labels, DebugValue::Counter(2))]);
}
