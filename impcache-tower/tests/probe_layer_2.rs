//! Probe (layer, purge): purge_url with Vary variants, query order, percent-encoding, HEAD;
//! purge_prefix exactness (swept and declared), glob characters; soft purge; purges during
//! in-flight handler calls (same process and another process via tags).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::{CacheLayer, StatusHeader};
use support::*;
use tokio::sync::Notify;

fn cs(seen: &Seen) -> String {
    seen.header("cache-status").unwrap_or_default().to_owned()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// `call {n}` varying on accept-language; tagged with the path via Surrogate-Key `p:{path}`.
fn varying(layer: CacheLayer) -> (Svc, Calls) {
    app(layer, |n, req: Request<Body>| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Response::builder()
            .header("vary", "accept-language")
            .body(Body::from(format!("call {n} {lang}")))
            .unwrap()
    })
}

fn lang(uri: &str, l: &str) -> Request<Body> {
    request("GET", uri, &[("accept-language", l)])
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

fn redis_cache(redis: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::new(repository)
}

async fn purge_url_variants_query_head(cache: Cache) {
    let layer = CacheLayer::new(cache);
    let (svc, _calls) = varying(layer.clone());
    let uri = "/v?b=2&a=1";
    for l in ["en", "fr", "de"] {
        hit_after_store(&svc, || lang(uri, l)).await;
    }
    // HEAD is answered from the GET variant.
    let head = send(&svc, request("HEAD", uri, &[("accept-language", "en")])).await;
    assert_eq!(head.outcome(), "HIT", "{}", cs(&head));
    // Purge with the query in another order.
    layer.purge_url(Some("example.com"), "/v?a=1&b=2").await.unwrap();
    for l in ["en", "fr", "de"] {
        let s = send(&svc, lang(uri, l)).await;
        assert_eq!(s.outcome(), "MISS", "{l} variant survived purge_url: {}", cs(&s));
    }
    sleep_ms(100).await;
    layer.purge_url(None, "/v?a=1&b=2").await.unwrap();
    let head = send(&svc, request("HEAD", uri, &[("accept-language", "en")])).await;
    assert_ne!(head.outcome(), "HIT", "HEAD survived purge: {}", cs(&head));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_url_variants_query_head_memory() {
    purge_url_variants_query_head(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_url_variants_query_head_redis() {
    let redis = RedisServer::start();
    purge_url_variants_query_head(redis_cache(&redis)).await;
}

/// Percent-encoding: stored as `/a%20b`; purge_url as sent purges it. Informational: the other
/// spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_url_percent_encoding() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = counting(layer.clone());
    for (stored, purge) in [
        ("/a%20b", "/a%20b"),
        ("/a%20b", "/a b"),
        ("/a%2Fb", "/a%2fb"),
        ("/%7Euser", "/~user"),
        ("/caf%C3%A9", "/café"),
        ("/x?q=a%20b", "/x?q=a+b"),
        ("/x?q=%20", "/x?q=%20"),
        ("/weird:colon", "/weird:colon"),
        ("/star*", "/star*"),
        ("/brack[1]", "/brack[1]"),
    ] {
        hit_after_store(&svc, || get(stored)).await;
        let r = layer.purge_url(Some("example.com"), purge).await;
        let after = send(&svc, get(stored)).await;
        eprintln!("stored {stored:14} purge {purge:14} -> {r:?} after={}", after.outcome());
        if stored == purge {
            assert_eq!(after.outcome(), "MISS", "{stored}");
        }
        layer.purge_all().await.unwrap();
    }
}

/// purge_prefix("/users/") removes exactly that prefix: not /usersX, /users, /users-old,
/// other hosts when a host is given.
async fn purge_prefix_exact(layer: CacheLayer, declared: bool) {
    let (svc, _) = counting(layer.clone());
    let under = ["/users/", "/users/1", "/users/1?x=1", "/users/a/b", "/users/%2A"];
    let outside = ["/users", "/usersX", "/users-old", "/user/1", "/Users/1", "/xusers/1", "/a/users/1"];
    for u in under.iter().chain(outside.iter()) {
        hit_after_store(&svc, || get(u)).await;
    }
    // another host, under the prefix
    let other = || request("GET", "/users/9", &[]).map(|b| b);
    let mut other_req = other();
    other_req.headers_mut().insert("host", "other.com".parse().unwrap());
    send(&svc, other_req).await;
    sleep_ms(100).await;
    let n = layer.purge_prefix(Some("example.com"), "/users/").await.unwrap();
    eprintln!("declared={declared} removed {n}");
    for u in under {
        let s = send(&svc, get(u)).await;
        assert_eq!(s.outcome(), "MISS", "declared={declared}: {u} under the prefix survived: {}", cs(&s));
    }
    for u in outside {
        let s = send(&svc, get(u)).await;
        assert_eq!(s.outcome(), "HIT", "declared={declared}: {u} outside the prefix purged: {}", cs(&s));
    }
    let mut other_req = request("GET", "/users/9", &[]);
    other_req.headers_mut().insert("host", "other.com".parse().unwrap());
    let s = send(&svc, other_req).await;
    assert_eq!(s.outcome(), "HIT", "declared={declared}: other host purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_exact_swept_memory() {
    purge_prefix_exact(CacheLayer::new(memory_cache()), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_exact_declared_memory() {
    purge_prefix_exact(CacheLayer::new(memory_cache()).tag_prefixes(["/users/"]), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_exact_swept_redis() {
    let redis = RedisServer::start();
    purge_prefix_exact(CacheLayer::new(redis_cache(&redis)), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_exact_declared_redis() {
    let redis = RedisServer::start();
    purge_prefix_exact(CacheLayer::new(redis_cache(&redis)).tag_prefixes(["/users/"]), true).await;
}

/// Glob characters in a prefix purge only their literal paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_glob_characters() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis));
    let (svc, _) = counting(layer.clone());
    let paths = ["/a*b/1", "/aXb/1", "/a[b]/1", "/ab/1", "/a%5Bb%5D/1", "/a\\b/1"];
    for p in paths {
        let req = Request::get(p).header("host", "example.com").body(Body::empty());
        let Ok(req) = req else { eprintln!("{p} not a valid URI"); continue };
        let svc2 = svc.clone();
        send(&svc2, req).await;
    }
    sleep_ms(200).await;
    layer.purge_prefix(None, "/a*").await.unwrap();
    layer.purge_prefix(None, "/a[b]").await.unwrap();
    for p in paths {
        let Ok(req) = Request::get(p).header("host", "example.com").body(Body::empty()) else { continue };
        let s = send(&svc, req).await;
        eprintln!("{p}: {}", s.outcome());
        if p == "/aXb/1" || p == "/ab/1" {
            assert_eq!(s.outcome(), "HIT", "{p} purged by a glob prefix");
        }
    }
}

/// A soft purge of a tag while that URL's handler call is running: the response computed before
/// the purge must not be served as fresh after it.
async fn soft_purge_during_in_flight(cache: Cache) {
    let layer = CacheLayer::new(cache)
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60));
    let started = Arc::new(Notify::new());
    let answer = Arc::new(Notify::new());
    let (s, a) = (Arc::clone(&started), Arc::clone(&answer));
    let (svc, calls) = app(layer.clone(), move |n, _req| {
        let (started, answer) = (Arc::clone(&s), Arc::clone(&a));
        async move {
            if n == 1 {
                started.notify_one();
                answer.notified().await;
            }
            Response::builder()
                .header("surrogate-key", "doc")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    });
    let leader = tokio::spawn(send(&svc, get("/sp")));
    started.notified().await;
    layer.soft_purge_tag("doc").await.unwrap();
    sleep_ms(20).await;
    answer.notify_one();
    let first = leader.await.unwrap();
    assert_eq!(first.body, "call 1");
    sleep_ms(200).await;
    let next = send(&svc, get("/sp")).await;
    eprintln!("after soft purge during call: {:?} {} calls={}", next.body, cs(&next), calls.get());
    assert!(
        !(next.body == "call 1" && next.outcome() == "HIT" && !cs(&next).contains("stale")),
        "response computed before the soft purge served as fresh: {}",
        cs(&next)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_during_in_flight_memory() {
    soft_purge_during_in_flight(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_during_in_flight_redis() {
    let redis = RedisServer::start();
    soft_purge_during_in_flight(redis_cache(&redis)).await;
}

/// Soft purge serves stale once (well: stale while one background call runs), then fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_serves_stale_while_one_call_revalidates() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis))
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), |n, _req| async move {
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Response::builder()
            .header("surrogate-key", "doc other")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    hit_after_store(&svc, || get("/sp2")).await;
    layer.soft_purge_tag("doc").await.unwrap();
    let reqs: Vec<_> = (0..30).map(|_| tokio::spawn(send(&svc, get("/sp2")))).collect();
    for r in reqs {
        let s = r.await.unwrap();
        assert_eq!(s.body, "call 1", "{}", cs(&s));
        assert!(cs(&s).contains("fwd=stale"), "{}", cs(&s));
    }
    sleep_ms(600).await;
    let s = send(&svc, get("/sp2")).await;
    assert_eq!((s.outcome(), &s.body[..]), ("HIT", &b"call 2"[..]), "{}", cs(&s));
    assert_eq!(calls.get(), 2);
    // Soft purge without a window (layer has none, response says none): a miss.
    let layer2 = CacheLayer::new(redis_cache(&redis)).namespace("n2");
    let (svc2, calls2) = app(layer2.clone(), |n, _req| async move {
        Response::builder()
            .header("surrogate-key", "t2")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    hit_after_store(&svc2, || get("/sp3")).await;
    layer2.soft_purge_tag("t2").await.unwrap();
    let s = send(&svc2, get("/sp3")).await;
    assert_eq!(s.body, "call 2", "{}", cs(&s));
    assert_eq!(calls2.get(), 2);
}

/// Another process (layer B) is computing a response under a declared prefix; process A
/// purge_prefix()es it (a tag write): B's store must not be served as fresh after the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_prefix_purge_reaches_another_process_in_flight_call() {
    let redis = RedisServer::start();
    let a = CacheLayer::new(redis_cache(&redis)).tag_prefixes(["/p/"]);
    let b = CacheLayer::new(redis_cache(&redis)).tag_prefixes(["/p/"]);
    // The host must be listed first: store something on it.
    let (svc_a, _) = counting(a.clone());
    hit_after_store(&svc_a, || get("/p/warm")).await;
    let started = Arc::new(Notify::new());
    let answer = Arc::new(Notify::new());
    let (s, an) = (Arc::clone(&started), Arc::clone(&answer));
    let (svc_b, _calls_b) = app(b.clone(), move |n, _req| {
        let (started, answer) = (Arc::clone(&s), Arc::clone(&an));
        async move {
            if n == 1 {
                started.notify_one();
                answer.notified().await;
            }
            Response::new(Body::from(format!("b call {n}")))
        }
    });
    let leader = tokio::spawn(send(&svc_b, get("/p/1")));
    started.notified().await;
    a.purge_prefix(None, "/p/").await.unwrap();
    answer.notify_one();
    assert_eq!(leader.await.unwrap().body, "b call 1");
    sleep_ms(300).await;
    let s = send(&svc_a, get("/p/1")).await;
    eprintln!("A after: {:?} {}", s.body, cs(&s));
    assert_ne!(s.body, "b call 1", "A served a response computed before the purge");
    let s = send(&svc_b, get("/p/1")).await;
    eprintln!("B after: {:?} {}", s.body, cs(&s));
    assert_ne!(s.body, "b call 1", "B served a response computed before the purge");
}

/// purge_tag from another process while a soft-purge background revalidation (started before
/// the hard purge) runs: its result must not be fresh after the hard purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_purge_during_background_revalidation() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis))
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60));
    let other = CacheLayer::new(redis_cache(&redis));
    let started = Arc::new(Notify::new());
    let answer = Arc::new(Notify::new());
    let (s, a) = (Arc::clone(&started), Arc::clone(&answer));
    let (svc, calls) = app(layer.clone(), move |n, _req| {
        let (started, answer) = (Arc::clone(&s), Arc::clone(&a));
        async move {
            if n == 2 {
                started.notify_one();
                answer.notified().await;
            }
            Response::builder()
                .header("surrogate-key", "k")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    });
    hit_after_store(&svc, || get("/bgp")).await;
    layer.soft_purge_tag("k").await.unwrap();
    let stale = send(&svc, get("/bgp")).await;
    assert_eq!(stale.body, "call 1");
    started.notified().await;
    other.purge_tag("k").await.unwrap();
    answer.notify_one();
    sleep_ms(300).await;
    let s = send(&svc, get("/bgp")).await;
    eprintln!("after: {:?} {} calls={}", s.body, cs(&s), calls.get());
    assert_ne!(s.body, "call 2", "response of a call started before the hard purge served: {}", cs(&s));
    assert_ne!(s.body, "call 1");
}
