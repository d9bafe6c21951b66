//! `impcache_http_requests_total{outcome, route}`: requests counted by outcome and by the route
//! axum matched (the `axum` feature), never by the raw path. The recorder is local to the test's
//! thread, which runs a current-thread runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recorded;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_tower::CacheLayer;
use recorded::{count, requests_total};
use tower::ServiceExt;

const ROUTE: Option<&str> = Some("/users/{id}");

async fn show_user(Path(id): Path<u64>) -> String {
    format!("user {id}")
}

#[test]
fn requests_are_counted_by_outcome_and_matched_route() {
    let counts = requests_total(|| async {
        let app: Router = Router::new()
            .route("/users/{id}", get(show_user).post(show_user))
            .layer(CacheLayer::new(Cache::new(MemoryCacheRepository::new())).expire(60));
        recorded::miss_hit_miss_bypass::<_, Body, _>(app, "/users/").await;
    });
    assert_eq!(
        counts,
        [
            count("bypass", ROUTE, 1),
            count("hit", ROUTE, 1),
            count("miss", ROUTE, 2)
        ]
    );
}

/// A lookup that fails (nothing listens where the cache's Redis should be) is counted as `error`,
/// and the handler still answers (fail open); the request after it is counted the same way.
#[test]
fn a_failed_lookup_is_counted_as_an_error_and_the_handler_answers() {
    let counts = requests_total(|| async {
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
    assert_eq!(counts, [count("error", ROUTE, 2)]);
}

/// 10 concurrent requests for a new URL: one handler call, 9 requests answered by the
/// leader's response, whose `Cache-Status` says `hit`: counted so (they were all `miss`).
#[test]
fn coalesced_requests_are_counted_as_hits() {
    let counts = requests_total(|| async {
        let app: Router = Router::new()
            .route(
                "/users/{id}",
                get(|Path(id): Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    format!("user {id}")
                }),
            )
            .layer(CacheLayer::new(Cache::new(MemoryCacheRepository::new())).expire(60));
        let requests: Vec<_> = (0..10)
            .map(|_| {
                let request = Request::get("/users/7").body(Body::empty()).unwrap();
                tokio::spawn(app.clone().oneshot(request))
            })
            .collect();
        for request in requests {
            let response = request.await.unwrap().unwrap();
            assert!(response.status().is_success());
        }
    });
    assert_eq!(counts, [count("hit", ROUTE, 9), count("miss", ROUTE, 1)]);
}

/// A request whose client goes away while it waits, coalesced behind another request's handler
/// call, is counted once, as `cancelled` (a probe's find: it was not counted at all, 1 request of
/// 6 counted). A request counted before its client went away (a hit whose response is dropped
/// unread) is not counted again.
#[test]
fn coalesced_requests_dropped_while_waiting_are_counted_as_cancelled() {
    let counts = requests_total(|| async {
        let app: Router = Router::new()
            .route(
                "/users/{id}",
                get(|Path(id): Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    format!("user {id}")
                }),
            )
            .layer(CacheLayer::new(Cache::new(MemoryCacheRepository::new())).expire(60));
        let get = || Request::get("/users/7").body(Body::empty()).unwrap();
        let leader = tokio::spawn(app.clone().oneshot(get()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..3 {
            let waiter =
                tokio::time::timeout(Duration::from_millis(30), app.clone().oneshot(get()));
            assert!(
                waiter.await.is_err(),
                "answered while the leader's call runs"
            );
        }
        let response = leader.await.unwrap().unwrap();
        assert!(response.status().is_success());
        response.into_body().collect().await.unwrap();
        // Until the store lands.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // A hit, dropped with its body unread.
        let hit = app.clone().oneshot(get()).await.unwrap();
        let status = hit.headers()["cache-status"].to_str().unwrap();
        assert!(status.starts_with("impcache; hit"), "{status}");
        drop(hit);
    });
    assert_eq!(
        counts,
        [
            count("cancelled", ROUTE, 3),
            count("hit", ROUTE, 1),
            count("miss", ROUTE, 1)
        ]
    );
}

/// A request whose client goes away while its handler runs with a stale response that could
/// stand in for it (stale-if-error: counted once the handler has answered) is counted once, as
/// `cancelled`, with a soft timeout too (a probe's find: it was not counted at all). A miss with
/// no stale response, counted before its handler runs, is counted once, as `miss`.
#[test]
fn a_request_dropped_while_a_stale_response_could_stand_in_is_counted_as_cancelled() {
    let counts = requests_total(|| async {
        let slow = Arc::new(AtomicBool::new(false));
        let app = |layer: CacheLayer| -> Router {
            let slow = Arc::clone(&slow);
            Router::new()
                .route(
                    "/users/{id}",
                    get(move |Path(id): Path<u64>| {
                        let slow = slow.load(Ordering::SeqCst);
                        async move {
                            if slow {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            format!("user {id}")
                        }
                    }),
                )
                .layer(layer)
        };
        let layer = || {
            CacheLayer::new(Cache::new(MemoryCacheRepository::new()))
                .expire(1)
                .stale_if_error(Duration::from_secs(60))
        };
        let plain = app(layer());
        let soft = app(layer().soft_timeout(Duration::from_secs(1)));
        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        for app in [&plain, &soft] {
            let response = app.clone().oneshot(get("/users/1")).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // Past the one-second freshness: stale, within the stale-if-error window.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        slow.store(true, Ordering::SeqCst);
        for (app, uri) in [
            (&plain, "/users/1"),
            (&soft, "/users/1"),
            (&plain, "/users/2"),
        ] {
            let request = app.clone().oneshot(get(uri));
            let dropped = tokio::time::timeout(Duration::from_millis(100), request).await;
            assert!(dropped.is_err(), "{uri} answered while its handler runs");
        }
    });
    assert_eq!(
        counts,
        [count("cancelled", ROUTE, 2), count("miss", ROUTE, 3)]
    );
}

/// Issue 17 (a probe's find): `purge_url` reads the URL's records through the cache, counted as
/// a `get_many` as any other read (it read them from the repository directly, uncounted), and
/// removes them with a `delete_many`.
#[test]
fn purge_url_counts_its_reads_and_removals() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = CacheLayer::new(Cache::new(MemoryCacheRepository::new())).expire(60);
        let app: Router = Router::new()
            .route("/users/{id}", get(show_user))
            .layer(layer.clone());
        let request = Request::get("http://example.com/users/1")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert!(response.status().is_success());
        // Until the background store lands.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        snapshotter.snapshot();
        let removed = layer.purge_url(Some("example.com"), "/users/1").await;
        assert_eq!(removed.unwrap(), 1);
        let operations: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "impcache_operations_total")
            .filter_map(|(key, _, _, value)| {
                let labels: Vec<String> =
                    key.key().labels().map(|l| l.value().to_owned()).collect();
                match value {
                    metrics_util::debugging::DebugValue::Counter(n) => Some((labels.join(" "), n)),
                    _ => None,
                }
            })
            .collect();
        assert!(
            operations.contains(&("get_many ok".to_owned(), 1)),
            "{operations:?}"
        );
        assert!(
            operations.contains(&("delete_many ok".to_owned(), 1)),
            "{operations:?}"
        );
    });
}
