//! Runs `n` cache hits of [`CacheLayer`] for counting their CPU instructions with callgrind
//! (deterministic, unlike timings on a busy machine). Run it at `n = 0` and `n = N` and divide the
//! difference by `N`:
//!
//! ```text
//! cargo build --release -p impcache-tower --example hit_cost
//! for n in 0 10000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/hit_cost memory $n 2>&1 | grep Collected; done
//! ```
//!
//! Cases: `memory` and `redis` (a throwaway `redis-server`, not traced) hit a URL whose response
//! has no `Vary`; `memory-vary` and `redis-vary` one whose response varies on `Accept-Language`;
//! `redis-raw` is the baseline of the HTTP benchmark without the layer: a handler that does one
//! raw redis-rs `GET` and returns the bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring harness: a broken setup must fail loudly

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use tower::{Service, ServiceExt};

const CASES: &[&str] = &["memory", "redis", "memory-vary", "redis-vary", "redis-raw"];

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_default();
    if !CASES.contains(&case.as_str()) {
        println!("usage: hit_cost <{}> <n>", CASES.join("|"));
        return;
    }
    let n: u64 = args.next().map_or(1_000, |n| n.parse().expect("n"));
    let vary = case.ends_with("-vary");
    let server = case.starts_with("redis").then(RedisServer::start);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if case == "redis-raw" {
        let url = server.as_ref().map(RedisServer::url).unwrap_or_default();
        rt.block_on(raw(&url, n));
        return;
    }
    rt.block_on(async {
        let cache = match &server {
            Some(server) => Cache::new(RedisCacheRepository::new(&server.url()).unwrap()),
            None => Cache::new(MemoryCacheRepository::new()),
        };
        let layer = CacheLayer::new(cache).expire(300);
        let handler = tower::service_fn(move |_: Request<()>| async move {
            let mut response = Response::builder().header("content-type", "application/json");
            if vary {
                response = response.header("vary", "accept-language");
            }
            Ok::<_, Infallible>(
                response
                    .body(Full::new(Bytes::from_static(&[b'x'; 100])))
                    .unwrap(),
            )
        });
        let mut svc = tower::Layer::layer(&layer, handler);
        let request = || {
            Request::get("/users/1")
                .header("host", "example.com")
                .header("accept", "application/json")
                .header("accept-language", "en")
                .header("user-agent", "hit-cost/1")
                .body(())
                .unwrap()
        };
        // Warm-up: the miss, its background store, connections, lazily built tables.
        for _ in 0..200 {
            let response = svc.ready().await.unwrap().call(request()).await.unwrap();
            std::hint::black_box(response.into_body().collect().await.unwrap());
            tokio::task::yield_now().await;
        }
        let response = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert!(response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("impcache; hit"));
        for _ in 0..n {
            let response = svc.ready().await.unwrap().call(request()).await.unwrap();
            std::hint::black_box(response.into_body().collect().await.unwrap());
        }
    });
}

/// The baseline: one raw `GET` per request, its bytes returned with a content type.
async fn raw(url: &str, n: u64) {
    let client = redis::Client::open(url).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let mut setup = connection.clone();
    let () = redis::cmd("SET")
        .arg("http:1")
        .arg(&[b'x'; 100][..])
        .query_async(&mut setup)
        .await
        .unwrap();
    let handler = tower::service_fn(move |_: Request<()>| {
        let mut connection = connection.clone();
        async move {
            let body: Vec<u8> = redis::cmd("GET")
                .arg("http:1")
                .query_async(&mut connection)
                .await
                .unwrap();
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    let mut svc = handler;
    for i in 0..200 + n {
        let request = Request::get("/users/1")
            .header("host", "example.com")
            .header("accept", "application/json")
            .header("accept-language", "en")
            .header("user-agent", "hit-cost/1")
            .body(())
            .unwrap();
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        std::hint::black_box(response.into_body().collect().await.unwrap());
        std::hint::black_box(i);
    }
}
