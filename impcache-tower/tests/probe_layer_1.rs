//! Probe (layer, stale): stale-while-revalidate / stale-if-error from the response's
//! Cache-Control vs the layer's defaults, max-age=0 + swr, s-maxage precedence, no-store/private
//! with swr, 100 concurrent stale requests → one background call, failed background
//! revalidations, windows over, handler_timeout with the response's own window.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Response, StatusCode};
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::{CacheLayer, StatusHeader};
use support::*;

fn base(cache: Cache) -> CacheLayer {
    CacheLayer::new(cache)
        .expire(60)
        .status_header(StatusHeader::Both)
}

/// A handler answering `status` (shared, settable) with `cache-control` `cc`; `call {n}`;
/// calls after the first take `delay_ms`.
fn origin(layer: CacheLayer, cc: &'static str, status: Arc<AtomicU16>, delay_ms: u64) -> (Svc, Calls) {
    app(layer, move |n, _req| {
        let status = status.load(Ordering::SeqCst);
        async move {
            if n > 1 && delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            if status == 999 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let status = if status == 999 { 200 } else { status };
            let mut b = Response::builder().status(status);
            if !cc.is_empty() {
                b = b.header("cache-control", cc);
            }
            b.body(Body::from(format!("call {n}"))).unwrap()
        }
    })
}

fn cs(seen: &Seen) -> String {
    seen.header("cache-status").unwrap_or_default().to_owned()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn wait_calls(calls: &Calls, n: usize) {
    for _ in 0..300 {
        if calls.get() >= n {
            return;
        }
        sleep_ms(10).await;
    }
}

/// The response's swr (layer has none) serves stale and calls once in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swr_from_the_response_header_without_a_layer_window() {
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(layer.clone(), "max-age=1, stale-while-revalidate=60", status, 100);
    send(&svc, get("/h")).await;
    wait_stored(&layer, "/h").await;
    sleep_ms(1200).await;
    let seen = send(&svc, get("/h")).await;
    assert_eq!(seen.body, "call 1", "{}", cs(&seen));
    assert!(cs(&seen).contains("fwd=stale") && cs(&seen).contains("revalidating"), "{}", cs(&seen));
    wait_calls(&calls, 2).await;
    sleep_ms(300).await;
    let seen = send(&svc, get("/h")).await;
    assert_eq!(seen.body, "call 2", "{}", cs(&seen));
    assert_eq!(calls.get(), 2);
}

/// `max-age=0, stale-while-revalidate=60`: what happens on the next request? (Fastly / RFC 5861:
/// stored, stale at once, served while one background call refreshes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_zero_with_swr() {
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(layer.clone(), "max-age=0, stale-while-revalidate=60", status, 100);
    let first = send(&svc, get("/z")).await;
    eprintln!("first: {} {}", first.status, cs(&first));
    sleep_ms(300).await;
    let stored = layer
        .cache()
        .repository()
        .get(&format!("{}:v", layer.request_key(&get("/z"))))
        .await
        .unwrap()
        .is_some();
    let second = send(&svc, get("/z")).await;
    eprintln!(
        "stored={stored} second: {} {:?} {} calls={}",
        second.status,
        second.body,
        cs(&second),
        calls.get()
    );
    sleep_ms(400).await;
    eprintln!("calls after={}", calls.get());
    // Expectation (RFC 5861 / Fastly): served stale from the window.
    assert_eq!(second.body, "call 1", "max-age=0+swr not served stale: {}", cs(&second));
}

/// Layer swr with a `max-age=0` response: the layer window should apply the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_zero_with_layer_swr() {
    let layer = base(memory_cache()).stale_while_revalidate(Duration::from_secs(60));
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(layer.clone(), "max-age=0", status, 100);
    let first = send(&svc, get("/z2")).await;
    sleep_ms(300).await;
    let second = send(&svc, get("/z2")).await;
    eprintln!(
        "first {} | second: {} {:?} {} calls={}",
        cs(&first),
        second.status,
        second.body,
        cs(&second),
        calls.get()
    );
}

/// s-maxage wins over max-age (lowering the TTL) in the default mode; and over a longer max-age
/// for swr counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_maxage_takes_precedence_over_max_age() {
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(layer.clone(), "max-age=100, s-maxage=1", status, 0);
    send(&svc, get("/s")).await;
    wait_stored(&layer, "/s").await;
    let hit = send(&svc, get("/s")).await;
    assert_eq!(hit.outcome(), "HIT");
    sleep_ms(1200).await;
    let after = send(&svc, get("/s")).await;
    assert_eq!(after.body, "call 2", "s-maxage=1 ignored: {}", cs(&after));
    assert_eq!(calls.get(), 2);

    // Reverse order in the header: the same.
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, _) = origin(layer.clone(), "s-maxage=1, max-age=100", status, 0);
    send(&svc, get("/s2")).await;
    wait_stored(&layer, "/s2").await;
    sleep_ms(1200).await;
    let after = send(&svc, get("/s2")).await;
    assert_eq!(after.body, "call 2", "{}", cs(&after));
    // s-maxage=100, max-age=1 → fresh after 1.2 s
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, _) = origin(layer.clone(), "s-maxage=100, max-age=1", status, 0);
    send(&svc, get("/s3")).await;
    wait_stored(&layer, "/s3").await;
    sleep_ms(1200).await;
    let after = send(&svc, get("/s3")).await;
    assert_eq!(after.body, "call 1", "s-maxage=100 should win over max-age=1: {}", cs(&after));
}

/// no-store / private responses are never stored, swr or not (layer window and header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_private_never_stored_even_with_swr() {
    for cc in [
        "no-store, stale-while-revalidate=60",
        "private, max-age=60, stale-while-revalidate=60",
        "max-age=60, stale-while-revalidate=60, no-store",
        "public, max-age=60, private=\"set-cookie\"",
        "No-Store",
        "max-age=60, stale-if-error=60, private",
    ] {
        let layer = base(memory_cache())
            .stale_while_revalidate(Duration::from_secs(60))
            .stale_if_error(Duration::from_secs(60));
        let status = Arc::new(AtomicU16::new(200));
        let (svc, calls) = origin(layer.clone(), cc, status, 0);
        for _ in 0..3 {
            send(&svc, get("/ns")).await;
            sleep_ms(50).await;
        }
        eprintln!("{cc}: calls {}", calls.get());
        if cc.starts_with("public") {
            // private="set-cookie" is a qualified private: RFC 9111 lets a shared cache store
            // the rest; nginx treats any `private` as uncacheable. Informational.
            continue;
        }
        assert_eq!(calls.get(), 3, "{cc}: stored");
    }
}

/// 100 concurrent requests of a stale URL (Redis): all served stale, one background call.
async fn hundred_stale(cache: Cache, layer_window: bool) {
    let mut layer = base(cache).expire(1);
    let cc = if layer_window {
        layer = layer.stale_while_revalidate(Duration::from_secs(60));
        ""
    } else {
        "max-age=1, stale-while-revalidate=60"
    };
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(layer.clone(), cc, status, 300);
    send(&svc, get("/hot")).await;
    wait_stored(&layer, "/hot").await;
    sleep_ms(1200).await;
    let reqs: Vec<_> = (0..100).map(|_| tokio::spawn(send(&svc, get("/hot")))).collect();
    let mut bad = Vec::new();
    for r in reqs {
        let seen = r.await.unwrap();
        if seen.body != "call 1" {
            bad.push(format!("{:?} {}", seen.body, cs(&seen)));
        }
    }
    sleep_ms(800).await;
    assert!(bad.is_empty(), "not stale: {} {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert_eq!(calls.get(), 2, "one background call for 100 stale requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_stale_requests_one_call_memory_layer() {
    hundred_stale(memory_cache(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_stale_requests_one_call_redis_header() {
    let redis = RedisServer::start();
    let repo = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    hundred_stale(Cache::new(repo), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_stale_requests_one_call_redis_layer() {
    let redis = RedisServer::start();
    let repo = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    hundred_stale(Cache::new(repo), true).await;
}

/// A background revalidation answered with 500 (response's own stale-if-error): the stale one
/// stays; the next request is stale again. With a response-only swr (no layer sie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_background_revalidation_keeps_stale_with_header_windows() {
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(
        layer.clone(),
        "max-age=1, stale-while-revalidate=60",
        Arc::clone(&status),
        50,
    );
    send(&svc, get("/bg")).await;
    wait_stored(&layer, "/bg").await;
    sleep_ms(1200).await;
    status.store(500, Ordering::SeqCst);
    for i in 0..3 {
        let before = calls.get();
        let seen = send(&svc, get("/bg")).await;
        eprintln!("{i}: {} {:?} {}", seen.status, seen.body, cs(&seen));
        assert_eq!((seen.status, &seen.body[..]), (StatusCode::OK, &b"call 1"[..]), "{}", cs(&seen));
        wait_calls(&calls, before + 1).await;
        sleep_ms(200).await;
    }
}

/// Response's own stale-if-error: a 500 answered with the stale one, Cache-Status says
/// fwd=stale; window over → error passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_stale_if_error_then_window_over() {
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, _calls) = origin(layer.clone(), "max-age=1, stale-if-error=1", Arc::clone(&status), 0);
    send(&svc, get("/e")).await;
    wait_stored(&layer, "/e").await;
    sleep_ms(1200).await;
    status.store(500, Ordering::SeqCst);
    let seen = send(&svc, get("/e")).await;
    assert_eq!((seen.status, &seen.body[..]), (StatusCode::OK, &b"call 1"[..]), "{}", cs(&seen));
    assert!(cs(&seen).contains("fwd=stale") && cs(&seen).contains("fwd-status=500") && !cs(&seen).contains("hit"), "{}", cs(&seen));
    // 502 with the response's own directive: also stands in.
    status.store(502, Ordering::SeqCst);
    let seen = send(&svc, get("/e")).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", cs(&seen));
    sleep_ms(1000).await;
    status.store(500, Ordering::SeqCst);
    let seen = send(&svc, get("/e")).await;
    assert_eq!(seen.status, StatusCode::INTERNAL_SERVER_ERROR, "past window: {}", cs(&seen));
}

/// handler_timeout with the response's own stale-if-error (no layer window): stale served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_timeout_with_the_responses_own_window() {
    let layer = base(memory_cache()).handler_timeout(Duration::from_millis(200));
    let status = Arc::new(AtomicU16::new(200));
    let (svc, _calls) = origin(layer.clone(), "max-age=1, stale-if-error=60", Arc::clone(&status), 0);
    send(&svc, get("/t")).await;
    wait_stored(&layer, "/t").await;
    sleep_ms(1200).await;
    status.store(999, Ordering::SeqCst);
    let start = std::time::Instant::now();
    let seen = send(&svc, get("/t")).await;
    let took = start.elapsed();
    assert_eq!((seen.status, &seen.body[..]), (StatusCode::OK, &b"call 1"[..]), "{}", cs(&seen));
    assert!(cs(&seen).contains("handler-timeout"), "{}", cs(&seen));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// The layer's stale_if_error with a 5xx not in the default list (e.g. 501 / 599) passes it;
/// a configured 429 list... informational.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_statuses() {
    let layer = base(memory_cache())
        .expire(1)
        .stale_if_error(Duration::from_secs(60))
        .stale_if_error_statuses([StatusCode::from_u16(500).unwrap(), StatusCode::from_u16(429).unwrap()]);
    let status = Arc::new(AtomicU16::new(200));
    let (svc, _calls) = origin(layer.clone(), "", Arc::clone(&status), 0);
    send(&svc, get("/c")).await;
    wait_stored(&layer, "/c").await;
    sleep_ms(1200).await;
    status.store(503, Ordering::SeqCst);
    let seen = send(&svc, get("/c")).await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE, "503 not configured: {}", cs(&seen));
    // The 503 is an error: the stale one stays (documented: only an error leaves it).
    status.store(429, Ordering::SeqCst);
    let seen = send(&svc, get("/c")).await;
    assert_eq!(seen.status, StatusCode::OK, "429 configured: {}", cs(&seen));
    status.store(500, Ordering::SeqCst);
    let seen = send(&svc, get("/c")).await;
    assert_eq!(seen.status, StatusCode::OK, "500 configured: {}", cs(&seen));
}

/// swr window over (response swr=1): the next request is a foreground miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swr_window_over_is_a_miss() {
    let layer = base(memory_cache());
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = origin(layer.clone(), "max-age=1, stale-while-revalidate=1", status, 0);
    send(&svc, get("/w")).await;
    wait_stored(&layer, "/w").await;
    sleep_ms(2300).await;
    let seen = send(&svc, get("/w")).await;
    assert_eq!(seen.body, "call 2", "{}", cs(&seen));
    assert_eq!(calls.get(), 2);
}
