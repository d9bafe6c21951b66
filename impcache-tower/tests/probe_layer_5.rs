//! Probe (layer, stale edge cases): odd directive values (huge, negative, invalid, duplicated),
//! the origin mode with max-age=0 + swr, a response swr over the layer's expire, purges during a
//! background revalidation and during a soft-timeout call.
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

fn redis_cache(redis: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::new(repository)
}

fn cc_app(layer: CacheLayer, cc: &'static str) -> (Svc, Calls) {
    app(layer, move |n, _req| async move {
        Response::builder()
            .header("cache-control", cc)
            .header("etag", format!("\"e{n}\""))
            .body(Body::from(format!("call {n}")))
            .unwrap()
    })
}

/// Odd directive values: no panic, sensible storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_directive_values() {
    let redis = RedisServer::start();
    for follow in [false, true] {
        for cc in [
            "max-age=1, stale-while-revalidate=99999999999999999999",
            "max-age=1, stale-while-revalidate=18446744073709551615",
            "max-age=1, stale-if-error=9223372036854775807",
            "max-age=1, stale-while-revalidate=-5",
            "max-age=1, stale-while-revalidate=abc",
            "max-age=1, stale-while-revalidate",
            "max-age=1, stale-while-revalidate=\"60\"",
            "max-age=1, stale-while-revalidate=60, stale-while-revalidate=0",
            "max-age=99999999999999999999, stale-while-revalidate=60",
            "s-maxage=99999999999999999999",
            "max-age=1,stale-while-revalidate=60",
            "MAX-AGE=1, STALE-WHILE-REVALIDATE=60",
        ] {
            let layer = CacheLayer::new(redis_cache(&redis))
                .status_header(StatusHeader::Both)
                .follow_origin(follow)
                .namespace(format!("o{follow}"));
            layer.purge_all().await.unwrap();
            let (svc, calls) = cc_app(layer.clone(), cc);
            let first = send(&svc, get("/odd")).await;
            sleep_ms(100).await;
            let record = format!("{}:v", layer.request_key(&get("/odd")));
            let ttl: i64 = redis.cmd(&["PTTL", &record]);
            sleep_ms(1100).await;
            let second = send(&svc, get("/odd")).await;
            eprintln!(
                "follow={follow} {cc:60} first [{}] pttl={ttl} second {:?} [{}] calls={}",
                cs(&first),
                second.body,
                cs(&second),
                calls.get()
            );
        }
    }
}

/// The origin mode: `max-age=0, stale-while-revalidate=60` (RFC 5861's permission).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_mode_max_age_zero_with_swr() {
    for cc in ["max-age=0, stale-while-revalidate=60", "max-age=0, stale-if-error=60"] {
        let layer = CacheLayer::new(memory_cache())
            .status_header(StatusHeader::Both)
            .follow_origin(true);
        let (svc, calls) = app(layer.clone(), move |n, _req| async move {
            Response::builder()
                .header("cache-control", cc)
                .body(Body::from(format!("call {n}")))
                .unwrap()
        });
        let first = send(&svc, get("/z")).await;
        sleep_ms(200).await;
        let second = send(&svc, get("/z")).await;
        eprintln!("{cc}: first [{}] second {:?} [{}] calls={}", cs(&first), second.body, cs(&second), calls.get());
    }
}

/// A response's `stale-while-revalidate=60` without max-age, layer expire(1): stale served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_swr_over_the_layers_expire() {
    let layer = CacheLayer::new(memory_cache())
        .expire(1)
        .status_header(StatusHeader::Both);
    let (svc, calls) = cc_app(layer.clone(), "stale-while-revalidate=60");
    send(&svc, get("/r")).await;
    wait_stored(&layer, "/r").await;
    sleep_ms(1200).await;
    let s = send(&svc, get("/r")).await;
    assert_eq!(s.body, "call 1", "{}", cs(&s));
    assert!(cs(&s).contains("fwd=stale"), "{}", cs(&s));
    sleep_ms(200).await;
    assert_eq!(calls.get(), 2);
}

/// A purge_url while a background revalidation (swr) runs: its response must not be stored
/// (doc: a handler call of what it removes still running in this process stores nothing), so
/// the next request after the purge makes its own call.
async fn purge_during_background(cache: Cache, how: &str) {
    let layer = CacheLayer::new(cache)
        .expire(1)
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60))
        .tag_prefixes(["/bgp/"]);
    let started = Arc::new(Notify::new());
    let answer = Arc::new(Notify::new());
    let (s, a) = (Arc::clone(&started), Arc::clone(&answer));
    let (svc, calls) = app(layer.clone(), move |n, _req: Request<Body>| {
        let (started, answer) = (Arc::clone(&s), Arc::clone(&a));
        async move {
            if n == 2 {
                started.notify_one();
                answer.notified().await;
            }
            Response::builder()
                .header("surrogate-key", "t")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    });
    send(&svc, get("/bgp/1")).await;
    wait_stored(&layer, "/bgp/1").await;
    sleep_ms(1200).await;
    let stale = send(&svc, get("/bgp/1")).await;
    assert_eq!(stale.body, "call 1", "{}", cs(&stale));
    started.notified().await;
    match how {
        "url" => drop(layer.purge_url(Some("example.com"), "/bgp/1").await.unwrap()),
        "url-any" => drop(layer.purge_url(None, "/bgp/1").await.unwrap()),
        "prefix" => drop(layer.purge_prefix(None, "/bgp/").await.unwrap()),
        "tag" => layer.purge_tag("t").await.unwrap(),
        _ => drop(layer.purge_all().await.unwrap()),
    }
    answer.notify_one();
    sleep_ms(300).await;
    let after = send(&svc, get("/bgp/1")).await;
    eprintln!("{how}: after {:?} [{}] calls={}", after.body, cs(&after), calls.get());
    assert_ne!(after.body, "call 2", "{how}: the background call begun before the purge was stored: {}", cs(&after));
    assert_ne!(after.body, "call 1", "{how}: stale served after a hard purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_during_background_memory() {
    for how in ["url", "url-any", "prefix", "tag", "all"] {
        purge_during_background(memory_cache(), how).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_during_background_redis() {
    let redis = RedisServer::start();
    for how in ["url", "url-any", "prefix", "tag", "all"] {
        let cache = Cache::builder(RedisCacheRepository::builder(redis.url()).deadline(Duration::from_secs(2)).build().unwrap())
            .key_prefix(format!("p{how}"))
            .build();
        purge_during_background(cache, how).await;
    }
}

/// A purge_url while a soft-timeout call goes on in the background: not stored after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_during_soft_timeout_call() {
    let layer = CacheLayer::new(memory_cache())
        .expire(1)
        .status_header(StatusHeader::Both)
        .stale_if_error(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100));
    let (svc, calls) = app(layer.clone(), move |n, _req: Request<Body>| async move {
        if n == 2 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        Response::new(Body::from(format!("call {n}")))
    });
    send(&svc, get("/st")).await;
    wait_stored(&layer, "/st").await;
    sleep_ms(1200).await;
    let s = send(&svc, get("/st")).await;
    assert_eq!(s.body, "call 1", "{}", cs(&s));
    assert!(cs(&s).contains("soft-timeout"), "{}", cs(&s));
    layer.purge_url(Some("example.com"), "/st").await.unwrap();
    sleep_ms(800).await;
    let after = send(&svc, get("/st")).await;
    eprintln!("after {:?} [{}] calls={}", after.body, cs(&after), calls.get());
    assert_ne!(after.body, "call 2", "the soft-timeout call begun before the purge was stored");
}

/// Vary + swr: 50 concurrent stale requests over 2 variants → 2 background calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swr_with_variants() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis))
        .expire(1)
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), |n, req: Request<Body>| async move {
        let l = req.headers().get("accept-language").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        if n > 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Response::builder()
            .header("vary", "accept-language")
            .body(Body::from(format!("call {n} {l}")))
            .unwrap()
    });
    for l in ["en", "fr"] {
        send(&svc, request("GET", "/sv", &[("accept-language", l)])).await;
    }
    sleep_ms(200).await;
    sleep_ms(1100).await;
    let reqs: Vec<_> = (0..50)
        .map(|i| {
            let l = if i % 2 == 0 { "en" } else { "fr" };
            tokio::spawn(send(&svc, request("GET", "/sv", &[("accept-language", l)])))
        })
        .collect();
    let mut not_stale = 0;
    for r in reqs {
        let s = r.await.unwrap();
        if !cs(&s).contains("fwd=stale") {
            not_stale += 1;
            eprintln!("not stale: {:?} {}", s.body, cs(&s));
        }
    }
    sleep_ms(600).await;
    eprintln!("calls {}", calls.get());
    assert_eq!(not_stale, 0);
    // Documented: one background call per URL (not per variant); the other variant is refreshed
    // by a later request. Observed 3 calls here.
    assert!(calls.get() >= 3, "at least one background call");
}

/// Origin mode, max-age=0 + swr WITH a validator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_mode_max_age_zero_with_swr_and_etag() {
    let layer = CacheLayer::new(memory_cache())
        .status_header(StatusHeader::Both)
        .follow_origin(true);
    let (svc, calls) = cc_app(layer.clone(), "max-age=0, stale-while-revalidate=60");
    let first = send(&svc, get("/ze")).await;
    sleep_ms(200).await;
    let second = send(&svc, get("/ze")).await;
    sleep_ms(200).await;
    eprintln!("etag: first [{}] second {:?} [{}] calls={}", cs(&first), second.body, cs(&second), calls.get());
}

/// Vary + swr, sequential: after en's background call, does fr get its own?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swr_with_variants_sequential() {
    let layer = CacheLayer::new(memory_cache())
        .expire(1)
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), |n, req: Request<Body>| async move {
        let l = req.headers().get("accept-language").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        if n > 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Response::builder()
            .header("vary", "accept-language")
            .body(Body::from(format!("call {n} {l}")))
            .unwrap()
    });
    for l in ["en", "fr"] {
        send(&svc, request("GET", "/sv", &[("accept-language", l)])).await;
    }
    sleep_ms(1300).await;
    let en = send(&svc, request("GET", "/sv", &[("accept-language", "en")])).await;
    let fr = send(&svc, request("GET", "/sv", &[("accept-language", "fr")])).await;
    eprintln!("en {:?} [{}]\nfr {:?} [{}]", en.body, cs(&en), fr.body, cs(&fr));
    sleep_ms(600).await;
    eprintln!("calls after both stale requests: {}", calls.get());
    for i in 0..5 {
        let en = send(&svc, request("GET", "/sv", &[("accept-language", "en")])).await;
        let fr = send(&svc, request("GET", "/sv", &[("accept-language", "fr")])).await;
        eprintln!("{i}: en {:?} [{}] | fr {:?} [{}] calls={}", en.body, cs(&en), fr.body, cs(&fr), calls.get());
        sleep_ms(300).await;
    }
}
