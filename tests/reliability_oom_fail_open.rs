//! `maxmemory` with `noeviction`: writes fail with a clear error, while the `#[cached]` macro and
//! the HTTP layer fail open (the function and the handler still answer, every time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use impcache::{cached, Cache, Error, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use tower::{service_fn, Layer, ServiceExt};

/// A server whose memory is full: no write fits any more, reads still work.
async fn full_server() -> (RedisServer, Cache) {
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    let chunk = "x".repeat(10 * 1024);
    let mut oom = None;
    for i in 0..10_000 {
        if let Err(e) = cache.set(&format!("filler:{i}"), &chunk, 300).await {
            oom = Some(e);
            break;
        }
    }
    match oom {
        Some(Error::Server {
            code: Some(code), ..
        }) => assert_eq!(code, "OOM"),
        other => panic!("expected an OOM error, got {other:?}"),
    }
    (server, cache)
}

static CACHE: OnceLock<Cache> = OnceLock::new();
static CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE.get().unwrap(), expire = 60)]
async fn square(n: u64) -> u64 {
    CALLS.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[tokio::test]
async fn the_macro_and_the_layer_fail_open_when_writes_are_refused() {
    let (_server, cache) = full_server().await;
    assert_eq!(
        cache
            .get::<String>("filler:0")
            .await
            .unwrap()
            .map(|s| s.len()),
        Some(10 * 1024)
    );

    // #[cached]: every call answers; nothing can be stored, so every call runs the body.
    CACHE.set(cache.clone()).unwrap();
    for _ in 0..3 {
        assert_eq!(square(12).await, 144);
    }
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);

    // The HTTP layer: every request gets the handler's answer.
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let service = CacheLayer::new(cache.clone()).expire(60).layer(service_fn(
        move |_req: Request<Full<Bytes>>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            }
        },
    ));
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(
                Request::get("http://example.com/greeting")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        3,
        "nothing could be stored: the handler answered every time"
    );
}
