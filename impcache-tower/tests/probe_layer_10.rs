//! Probe (layer, soft purge 2): windows counted from the purge, the response's own swr, a
//! must-revalidate response, stale-if-error after a soft purge, soft purge across two processes
//! with the lock (one background call), soft then hard then soft.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use impcache::{Cache, Lock, RedisCacheRepository};
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

fn tagged(layer: CacheLayer, cc: &'static str, status: Arc<AtomicU16>) -> (Svc, Calls) {
    app(layer, move |n, _req| {
        let st = status.load(Ordering::SeqCst);
        async move {
            let mut b = Response::builder().status(st).header("surrogate-key", "s");
            if !cc.is_empty() {
                b = b.header("cache-control", cc);
            }
            b.body(Body::from(format!("call {n}"))).unwrap()
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_variants() {
    // (layer swr, layer sie, cc, handler status after purge, wait after purge ms, expect stale body)
    let cases: &[(u64, u64, &'static str, u16, u64, bool, &str)] = &[
        (1, 0, "", 200, 1300, false, "layer swr 1 s counted from the purge: over"),
        (0, 0, "max-age=60, stale-while-revalidate=30", 200, 0, true, "the response's own swr"),
        (60, 0, "max-age=60, must-revalidate", 200, 0, false, "must-revalidate forbids"),
        (0, 60, "", 503, 0, true, "sie only: a 503 after a soft purge"),
        (0, 0, "max-age=60, stale-if-error=60", 503, 0, true, "response sie: a 503 after a soft purge"),
        (0, 0, "", 200, 0, false, "no window: a miss"),
    ];
    let mut wrong = Vec::new();
    for &(swr, sie, cc, status_after, wait, expect_stale, what) in cases {
        let layer = CacheLayer::new(memory_cache())
            .status_header(StatusHeader::Both)
            .stale_while_revalidate(Duration::from_secs(swr))
            .stale_if_error(Duration::from_secs(sie));
        let status = Arc::new(AtomicU16::new(200));
        let (svc, calls) = tagged(layer.clone(), cc, status.clone());
        hit_after_store(&svc, || get("/s")).await;
        layer.soft_purge_tag("s").await.unwrap();
        sleep_ms(wait).await;
        status.store(status_after, Ordering::SeqCst);
        let s = send(&svc, get("/s")).await;
        let stale = s.body == "call 1";
        let line = format!("{what}: {} {:?} [{}] calls={}", s.status, s.body, cs(&s), calls.get());
        eprintln!("{line}");
        if stale != expect_stale {
            wrong.push(line);
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Soft purge, two processes with the lock: stale everywhere, one background call in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_two_processes_one_call() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let mk = |calls: Arc<AtomicUsize>| {
        let layer = CacheLayer::new(redis_cache(&redis))
            .status_header(StatusHeader::Both)
            .stale_while_revalidate(Duration::from_secs(60))
            .lock(Lock::new().wait(Duration::from_secs(5)));
        let l2 = layer.clone();
        let svc = app(layer, move |_, _req| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n > 1 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Response::builder()
                    .header("surrogate-key", "s")
                    .body(Body::from(format!("call {n}")))
                    .unwrap()
            }
        })
        .0;
        (l2, svc)
    };
    let (la, a) = mk(calls.clone());
    let (_lb, b) = mk(calls.clone());
    hit_after_store(&a, || get("/sp")).await;
    hit_after_store(&b, || get("/sp")).await;
    la.soft_purge_tag("s").await.unwrap();
    let reqs: Vec<_> = (0..40)
        .map(|i| tokio::spawn(send(if i % 2 == 0 { &a } else { &b }, get("/sp"))))
        .collect();
    let mut not_stale = Vec::new();
    for r in reqs {
        let s = r.await.unwrap();
        if s.body != "call 1" {
            not_stale.push(format!("{:?} {}", s.body, cs(&s)));
        }
    }
    sleep_ms(800).await;
    let sa = send(&a, get("/sp")).await;
    let sb = send(&b, get("/sp")).await;
    eprintln!("after: a {:?} [{}] b {:?} [{}] calls={}", sa.body, cs(&sa), sb.body, cs(&sb), calls.load(Ordering::SeqCst));
    assert!(not_stale.is_empty(), "{not_stale:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one background call across both processes");
}

/// soft, hard, soft in a row: the entry stays a miss (the hard purge is not undone by the later
/// soft one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_hard_soft() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis))
        .status_header(StatusHeader::Both)
        .stale_while_revalidate(Duration::from_secs(60));
    let status = Arc::new(AtomicU16::new(200));
    let (svc, calls) = tagged(layer.clone(), "", status);
    hit_after_store(&svc, || get("/shs")).await;
    layer.soft_purge_tag("s").await.unwrap();
    layer.purge_tag("s").await.unwrap();
    layer.soft_purge_tag("s").await.unwrap();
    let s = send(&svc, get("/shs")).await;
    eprintln!("{:?} [{}] calls {}", s.body, cs(&s), calls.get());
    assert_ne!(s.body, "call 1", "a hard purge undone by a later soft purge: {}", cs(&s));
}
