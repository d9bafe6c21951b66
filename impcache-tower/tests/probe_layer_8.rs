//! Probe (layer, stale 3): a background revalidation whose handler panics or hangs: later
//! requests must not be stuck serving stale with no refresh; a foreground panic with a stale
//! response at hand (stale-if-error).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use impcache_tower::{CacheLayer, CacheService, StatusHeader};
use support::*;
use tower::{Layer, ServiceExt};

fn cs(seen: &Seen) -> String {
    seen.header("cache-status").unwrap_or_default().to_owned()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// mode: "panic" → call 2 panics; "hang" → call 2 sleeps 60 s.
async fn bg_failure(mode: &'static str) {
    let layer = CacheLayer::new(memory_cache())
        .expire(1)
        .status_header(StatusHeader::Both)
        .lock_timeout(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), move |n, _req: Request<Body>| async move {
        if n == 2 {
            if mode == "panic" {
                panic!("background handler panics");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Response::new(Body::from(format!("call {n}")))
    });
    send(&svc, get("/bgf")).await;
    wait_stored(&layer, "/bgf").await;
    sleep_ms(1200).await;
    let s = send(&svc, get("/bgf")).await;
    assert_eq!(s.body, "call 1", "{}", cs(&s));
    // Within ~3 s the URL must be refreshed by a new call.
    let mut last = String::new();
    for _ in 0..40 {
        sleep_ms(100).await;
        let s = send(&svc, get("/bgf")).await;
        last = format!("{:?} [{}] calls={}", s.body, cs(&s), calls.get());
        if s.body == "call 3" {
            eprintln!("{mode}: refreshed: {last}");
            return;
        }
    }
    panic!("{mode}: stuck after a failed background call: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bg_panic_does_not_stick() {
    bg_failure("panic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bg_hang_is_bounded_by_lock_timeout() {
    bg_failure("hang").await;
}

/// Foreground handler panic with a stale response within stale-if-error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fg_panic_with_stale_at_hand() {
    let layer = CacheLayer::new(memory_cache())
        .expire(1)
        .status_header(StatusHeader::Both)
        .stale_if_error(Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = tower::service_fn(move |_req: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 2 {
                panic!("foreground handler panics");
            }
            Ok::<_, std::convert::Infallible>(Response::new(Body::from(format!("call {n}"))))
        }
    });
    let svc: CacheService<_> = layer.clone().layer(inner);
    let r = svc.clone().oneshot(get("/fgp")).await.unwrap();
    let _ = r.into_body().collect().await;
    wait_stored(&layer, "/fgp").await;
    sleep_ms(1200).await;
    let svc2 = svc.clone();
    let res = tokio::spawn(async move {
        let r = svc2.oneshot(get("/fgp")).await.unwrap();
        let (p, b) = r.into_parts();
        (p.headers.get("cache-status").map(|v| v.to_str().unwrap().to_owned()), b.collect().await.map(|b| b.to_bytes()).ok())
    })
    .await;
    eprintln!("foreground panic with stale at hand: {:?}", res.as_ref().map_err(|e| e.to_string()));
    // Next request after the panic.
    let r = svc.clone().oneshot(get("/fgp")).await.unwrap();
    let (p, b) = r.into_parts();
    eprintln!("next: {:?} {:?} calls {}", p.headers.get("cache-status"), b.collect().await.unwrap().to_bytes(), calls.load(Ordering::SeqCst));
}
