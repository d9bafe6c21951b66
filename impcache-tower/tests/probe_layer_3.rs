//! Probe (layer, tags): Surrogate-Key with many / duplicate / odd keys, multiple field lines,
//! stripping on every path a response can take (hit, stale, 304, HEAD, bypass, unsafe method,
//! not stored, error, Redis down), keep_tag_headers, tags_from.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::{CacheLayer, StatusHeader};
use support::*;

fn cs(seen: &Seen) -> String {
    seen.header("cache-status").unwrap_or_default().to_owned()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn redis_cache(redis: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::new(repository)
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

/// A handler whose Surrogate-Key value is `keys`.
fn keyed(layer: CacheLayer, keys: String) -> (Svc, Calls) {
    app(layer, move |n, _req| {
        let keys = keys.clone();
        async move {
            Response::builder()
                .header("surrogate-key", keys)
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    })
}

async fn many_keys(cache: Cache) {
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let layer = CacheLayer::new(cache);
    let (svc, calls) = keyed(layer.clone(), keys.join(" "));
    hit_after_store(&svc, || get("/many")).await;
    // Hits stay hits (many tags to check).
    let t = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(send(&svc, get("/many")).await.outcome(), "HIT");
    }
    eprintln!("20 hits with 1000 tags: {:?}", t.elapsed());
    layer.purge_tag("k999").await.unwrap();
    let s = send(&svc, get("/many")).await;
    assert_eq!(s.outcome(), "MISS", "purge of the last of 1000 keys: {}", cs(&s));
    hit_after_store(&svc, || get("/many")).await;
    layer.purge_tag("k500").await.unwrap();
    let s = send(&svc, get("/many")).await;
    assert_eq!(s.outcome(), "MISS", "purge of the 501st of 1000 keys: {}", cs(&s));
    eprintln!("calls {}", calls.get());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_memory() {
    many_keys(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_redis() {
    let redis = RedisServer::start();
    many_keys(redis_cache(&redis)).await;
}

/// Duplicates, extra whitespace, tabs, odd characters: each tag purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_odd_keys() {
    let redis = RedisServer::start();
    for (value, purge) in [
        ("a a a", "a"),
        ("  lead   trail  ", "trail"),
        ("tab\tsep", "sep"),
        ("tab\tsep", "tab"),
        ("x*y", "x*y"),
        ("q?r", "q?r"),
        ("[br]", "[br]"),
        ("user:1", "user:1"),
        ("back\\slash", "back\\slash"),
        ("per%20cent", "per%20cent"),
        ("semi;colon", "semi;colon"),
        ("comma,sep", "comma"),
        ("comma,sep", "sep"),
        ("comma,sep", "comma,sep"),
        ("\"quoted\"", "\"quoted\""),
    ] {
        let layer = CacheLayer::new(redis_cache(&redis)).namespace(format!("n{}", value.len()));
        layer.purge_all().await.unwrap();
        let (svc, _calls) = keyed(layer.clone(), value.to_owned());
        let uri = "/odd";
        hit_after_store(&svc, || get(uri)).await;
        layer.purge_tag(purge).await.unwrap();
        let s = send(&svc, get(uri)).await;
        eprintln!("Surrogate-Key {value:?} purge {purge:?}: {}", s.outcome());
        // Surrogate-Key is space-separated: a comma is part of the tag (Fastly).
        let expect_miss = value != "comma,sep" || purge != "comma,sep"; // the layer splits Surrogate-Key on commas too (documented in tag_headers)
        if expect_miss {
            assert_eq!(s.outcome(), "MISS", "{value:?} / {purge:?}");
        }
        layer.purge_all().await.unwrap();
    }
}

/// Two Surrogate-Key field lines: both carry tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_surrogate_key_lines() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = app(layer.clone(), |n, _req| async move {
        Response::builder()
            .header("surrogate-key", "one")
            .header("surrogate-key", "two")
            .header("cache-tag", "three")
            .header("cache-tag", "four")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    for tag in ["one", "two", "three", "four"] {
        hit_after_store(&svc, || get("/lines")).await;
        layer.purge_tag(tag).await.unwrap();
        let s = send(&svc, get("/lines")).await;
        assert_eq!(s.outcome(), "MISS", "tag {tag} of a second field line: {}", cs(&s));
    }
}

/// Tag fields never reach the client by default, whichever path the response takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_fields_stripped_on_every_path() {
    let redis = RedisServer::start();
    let failing = Arc::new(Mutex::new(0u16));
    let f = Arc::clone(&failing);
    let layer = CacheLayer::new(redis_cache(&redis))
        .expire(1)
        .status_header(StatusHeader::Both)
        .stale_if_error(Duration::from_secs(60))
        .stale_while_revalidate(Duration::ZERO);
    let (svc, _calls) = app(layer.clone(), move |n, req: Request<Body>| {
        let status = *f.lock().unwrap();
        async move {
            let mut b = Response::builder()
                .status(if status == 0 { 200 } else { status })
                .header("surrogate-key", "secret-a secret-b")
                .header("cache-tag", "secret-c")
                .header("etag", "\"e1\"");
            if req.uri().path() == "/nostore" {
                b = b.header("cache-control", "no-store");
            }
            if req.uri().path() == "/private" {
                b = b.header("cache-control", "private");
            }
            b.body(Body::from(format!("call {n}"))).unwrap()
        }
    });
    let mut leaks = Vec::new();
    let mut check = |what: &str, s: &Seen| {
        if s.headers.contains_key("surrogate-key") || s.headers.contains_key("cache-tag") {
            leaks.push(format!("{what}: {} {}", s.status, cs(s)));
        }
        eprintln!("{what}: {} {}", s.status, cs(s));
    };
    let miss = send(&svc, get("/p")).await;
    check("miss", &miss);
    let hit = hit_after_store(&svc, || get("/p")).await;
    check("hit", &hit);
    check("304", &send(&svc, request("GET", "/p", &[("if-none-match", "\"e1\"")])).await);
    check("head hit", &send(&svc, request("HEAD", "/p", &[])).await);
    check("head miss", &send(&svc, request("HEAD", "/p-head", &[])).await);
    check("authorization bypass", &send(&svc, request("GET", "/p", &[("authorization", "Bearer x")])).await);
    check("cookie bypass", &send(&svc, request("GET", "/p", &[("cookie", "a=b")])).await);
    check("range bypass", &send(&svc, request("GET", "/p", &[("range", "bytes=0-1")])).await);
    check("post", &send(&svc, request("POST", "/p2", &[])).await);
    check("options", &send(&svc, request("OPTIONS", "/p2", &[])).await);
    check("no-store", &send(&svc, get("/nostore")).await);
    check("private", &send(&svc, get("/private")).await);
    check("query-content", &send(&svc, {
        let mut r = Request::builder().method("POST").uri("/p3").header("host", "example.com").header("content-length", "1").body(Body::from("x")).unwrap();
        let _ = &mut r;
        r
    }).await);
    sleep_ms(1200).await;
    *failing.lock().unwrap() = 503;
    check("stale-if-error 503", &send(&svc, get("/p")).await);
    check("503 miss", &send(&svc, get("/fresh-miss-503")).await);
    *failing.lock().unwrap() = 0;
    // Redis down
    let mut redis = redis;
    redis.kill();
    check("redis down", &send(&svc, get("/down")).await);
    assert!(leaks.is_empty(), "tag fields reached the client: {leaks:#?}");
}

/// keep_tag_headers(true): kept on miss, hit, 304?, HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_fields_kept_when_configured() {
    let layer = CacheLayer::new(memory_cache()).keep_tag_headers(true);
    let (svc, _) = keyed(layer.clone(), "k1 k2".into());
    let miss = send(&svc, get("/k")).await;
    assert_eq!(miss.header("surrogate-key"), Some("k1 k2"));
    let hit = hit_after_store(&svc, || get("/k")).await;
    assert_eq!(hit.header("surrogate-key"), Some("k1 k2"));
    let head = send(&svc, request("HEAD", "/k", &[])).await;
    assert_eq!(head.header("surrogate-key"), Some("k1 k2"), "HEAD hit");
}

/// tags_from the request; called once per handler call; purge by that tag; custom tag_headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_from_request_and_custom_headers() {
    let redis = RedisServer::start();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = Arc::clone(&counter);
    let layer = CacheLayer::new(redis_cache(&redis))
        .tag_headers([http::HeaderName::from_static("x-tags")])
        .tags_from(move |parts| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            vec![format!("path:{}", parts.uri.path()), format!("q:{}", parts.uri.query().unwrap_or(""))]
        });
    let (svc, calls) = app(layer.clone(), |n, _req| async move {
        Response::builder()
            .header("x-tags", "xt1 xt2")
            .header("surrogate-key", "sk")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let miss = send(&svc, get("/tf?a=1")).await;
    assert_eq!(miss.header("x-tags"), None, "custom tag header reached the client");
    eprintln!("surrogate-key with custom tag_headers: {:?}", miss.header("surrogate-key"));
    hit_after_store(&svc, || get("/tf?a=1")).await;
    for _ in 0..10 {
        send(&svc, get("/tf?a=1")).await;
    }
    eprintln!("tags_from called {} times for {} handler calls", counter.load(std::sync::atomic::Ordering::SeqCst), calls.get());
    for tag in ["path:/tf", "q:a=1", "xt2"] {
        layer.purge_tag(tag).await.unwrap();
        let s = send(&svc, get("/tf?a=1")).await;
        assert_eq!(s.outcome(), "MISS", "{tag}: {}", cs(&s));
        hit_after_store(&svc, || get("/tf?a=1")).await;
    }
    // Surrogate-Key is not a tag header any more.
    layer.purge_tag("sk").await.unwrap();
    let s = send(&svc, get("/tf?a=1")).await;
    assert_eq!(s.outcome(), "HIT", "sk: {}", cs(&s));
    // A tag from another layer (process) hides it too.
    let other = CacheLayer::new(redis_cache(&redis));
    other.purge_tag("path:/tf").await.unwrap();
    let s = send(&svc, get("/tf?a=1")).await;
    assert_eq!(s.outcome(), "MISS", "purge from another process: {}", cs(&s));
    let _ = StatusCode::OK;
}
