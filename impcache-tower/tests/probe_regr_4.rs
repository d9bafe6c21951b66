//! Probe (regression hunt after 36761be): `CacheLayer`'s single-flight — a request right after
//! a response, after `purge_url` / `purge_tag` / an unsafe method, or after an uncacheable
//! answer (5xx), must not be handed the previous handler result. 500 rounds, multi-thread
//! runtime with 2 workers, memory and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{Response, StatusCode};
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

fn handler_app(layer: CacheLayer) -> (Svc, Calls) {
    app(layer, |n, req| async move {
        let fail = req.headers().contains_key("x-fail");
        let tag = req.uri().path().trim_start_matches('/').replace('/', "-");
        if fail {
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::from(format!("fail {n}")))
                .unwrap();
        }
        Response::builder()
            .header("cache-tag", tag)
            .body(Body::from(format!("call {n}")))
            .unwrap()
    })
}

async fn rounds(layer: CacheLayer, n: usize) -> Vec<String> {
    let (svc, calls) = handler_app(layer.clone());
    let mut wrong = Vec::new();
    for i in 0..n {
        // 1. response, then purge_url, then again
        let uri = format!("/pu/{i}");
        let first = send(&svc, get(&uri)).await;
        assert_eq!(first.status, StatusCode::OK);
        layer.purge_url(Some("example.com"), &uri).await.unwrap();
        let before = calls.get();
        let second = send(&svc, get(&uri)).await;
        if second.body == first.body || calls.get() != before + 1 {
            wrong.push(format!("after purge_url {uri}: {:?} {:?}", second.body, second.header("cache-status")));
        }
        // 2. response, then purge_tag, then again
        let uri = format!("/pt/{i}");
        let first = send(&svc, get(&uri)).await;
        layer.purge_tag(&format!("pt-{i}")).await.unwrap();
        let before = calls.get();
        let second = send(&svc, get(&uri)).await;
        if second.body == first.body || calls.get() != before + 1 {
            wrong.push(format!("after purge_tag {uri}: {:?} {:?}", second.body, second.header("cache-status")));
        }
        // 3. response, then DELETE of the URL (unsafe method invalidation), then again
        let uri = format!("/del/{i}");
        let first = send(&svc, get(&uri)).await;
        let _ = send(&svc, request("DELETE", &uri, &[])).await;
        let before = calls.get();
        let second = send(&svc, get(&uri)).await;
        if second.body == first.body || calls.get() != before + 1 {
            wrong.push(format!("after DELETE {uri}: {:?} {:?}", second.body, second.header("cache-status")));
        }
        // 4. a 500 (not stored, not shared), then again
        let uri = format!("/f/{i}");
        let first = send(&svc, request("GET", &uri, &[("x-fail", "1")])).await;
        assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
        let before = calls.get();
        let second = send(&svc, get(&uri)).await;
        if second.status != StatusCode::OK || calls.get() != before + 1 {
            wrong.push(format!("after 500 {uri}: {} {:?}", second.status, second.body));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_request_after_response_purge_or_error() {
    let layer = CacheLayer::new(memory_cache()).expire(60);
    let wrong = rounds(layer, 500).await;
    eprintln!("memory wrong: {}", wrong.len());
    assert!(wrong.is_empty(), "{} wrong: {:?}", wrong.len(), &wrong[..wrong.len().min(8)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_request_after_response_purge_or_error() {
    let redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let layer = CacheLayer::new(Cache::new(repository)).expire(60);
    let wrong = rounds(layer, 500).await;
    eprintln!("redis wrong: {}", wrong.len());
    assert!(wrong.is_empty(), "{} wrong: {:?}", wrong.len(), &wrong[..wrong.len().min(8)]);
}
