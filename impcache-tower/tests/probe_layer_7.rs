//! Probe (layer, tags 2): UTF-8 tags, Cache-Tag case-insensitivity beyond ASCII, oversized tags
//! and fields, empty fields.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

fn cs(seen: &Seen) -> String {
    seen.header("cache-status").unwrap_or_default().to_owned()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn hit_after_store(svc: &Svc, req: impl Fn() -> Request<Body>) -> Seen {
    send(svc, req()).await;
    for _ in 0..200 {
        let s = send(svc, req()).await;
        if s.outcome() == "HIT" {
            return s;
        }
        sleep_ms(10).await;
    }
    panic!("never a hit");
}

fn field(layer: CacheLayer, name: &'static str, value: Vec<u8>) -> (Svc, Calls) {
    app(layer, move |n, _req| {
        let value = value.clone();
        async move {
            Response::builder()
                .header(name, HeaderValue::from_bytes(&value).unwrap())
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    })
}

fn redis_cache(redis: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::new(repository)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_tags_and_case() {
    let redis = RedisServer::start();
    let mut wrong = Vec::new();
    for (name, value, purge, expect_miss) in [
        ("surrogate-key", "ünï", "ünï", true),
        ("cache-tag", "ünï", "ünï", true),
        ("cache-tag", "ÜSER:1", "üser:1", true),
        ("cache-tag", "üser:1", "ÜSER:1", true),
        ("cache-tag", "USER:1", "user:1", true),
        ("cache-tag", "user:1", "USER:1", true),
        ("cache-tag", "straße", "STRASSE", false),
        ("cache-tag", "İstanbul", "istanbul", false),
        ("cache-tag", "ΣΊΣΥΦΟΣ", "σίσυφος", true),
        ("cache-tag", "σίσυφοσ", "ΣΊΣΥΦΟΣ", false), // final sigma: lower-casing is not case folding (informational)
        ("surrogate-key", "User:1", "user:1", false),
        ("surrogate-key", "user:1", "USER:1", true),
        ("surrogate-key", "ünï", "ÜNÏ", true),
    ] {
        let layer = CacheLayer::new(redis_cache(&redis));
        layer.purge_all().await.unwrap();
        let (svc, _) = field(layer.clone(), name, value.as_bytes().to_vec());
        hit_after_store(&svc, || get("/u")).await;
        layer.purge_tag(purge).await.unwrap();
        let s = send(&svc, get("/u")).await;
        let missed = s.outcome() == "MISS";
        eprintln!("{name}: {value:?} purge {purge:?}: {}", s.outcome());
        if missed != expect_miss {
            wrong.push(format!("{name}: {value:?} purge {purge:?}: {} (expected miss={expect_miss})", s.outcome()));
        }
        sleep_ms(50).await;
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A single tag over the key limit is left out (others stay; response stored); a very large
/// field of many tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_tags() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis));
    let big = "x".repeat(70_000);
    let (svc, calls) = field(layer.clone(), "surrogate-key", format!("small {big} other").into_bytes());
    let first = send(&svc, get("/big")).await;
    eprintln!("first [{}] {}", cs(&first), first.status);
    sleep_ms(200).await;
    let second = send(&svc, get("/big")).await;
    eprintln!("second [{}] calls {}", cs(&second), calls.get());
    layer.purge_tag("other").await.unwrap();
    let third = send(&svc, get("/big")).await;
    eprintln!("after purge other: [{}]", cs(&third));
    assert_eq!(third.outcome(), "MISS", "the other tags of a field with an oversized one");

    // 5000 tags of 20 bytes (100 KB field).
    let layer = CacheLayer::new(redis_cache(&redis)).namespace("many");
    let tags: Vec<String> = (0..5000).map(|i| format!("tag-{i:015}")).collect();
    let (svc, _) = field(layer.clone(), "cache-tag", tags.join(",").into_bytes());
    let t = std::time::Instant::now();
    let s = hit_after_store(&svc, || get("/many")).await;
    eprintln!("5000 tags: hit [{}] after {:?}", cs(&s), t.elapsed());
    layer.purge_tag("tag-000000000004999").await.unwrap();
    let s = send(&svc, get("/many")).await;
    assert_eq!(s.outcome(), "MISS", "{}", cs(&s));
}

/// Empty / whitespace-only fields: stored untagged, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_fields() {
    for v in ["", " ", ",", " , ,", "\t"] {
        let layer = CacheLayer::new(memory_cache());
        let (svc, _) = field(layer.clone(), "cache-tag", v.as_bytes().to_vec());
        let s = hit_after_store(&svc, || get("/e")).await;
        assert_eq!(s.outcome(), "HIT", "{v:?}");
        assert!(s.header("cache-tag").is_none());
    }
}
