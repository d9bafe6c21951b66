//! Regression probe after 2be0d11 (CacheLayer under `lock`: requests released by a leader whose
//! response is not stored call the handler side by side without the lock). (a) a burst of
//! misses of a cacheable URL across 2 processes: still 1 handler call. (b) a leader whose
//! response is a 500 (transient) then a healthy cacheable 200: how many handler calls do the
//! waiters make, and what do they get? Compare `#[cached]`/`get_or_set` under lock (RELIABILITY
//! row 11: one waiter runs once more through the lock for the others).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Response, StatusCode};
use impcache::{Cache, Lock, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

fn locked_layer(redis: &RedisServer) -> CacheLayer {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    CacheLayer::new(Cache::new(repository)).lock(Lock::new().wait(Duration::from_secs(5)))
}

async fn burst(services: &[&Svc], uri: &str, n: usize) -> Vec<Seen> {
    let requests: Vec<_> = (0..n)
        .map(|i| tokio::spawn(send(services[i % services.len()], get(uri))))
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}

fn handler(calls: Arc<AtomicUsize>, fail_first: usize) -> impl Fn(usize, http::Request<Body>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> + Clone + Send + Sync + 'static {
    move |_, _req| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if n <= fail_first {
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::from(format!("down {n}")))
                    .unwrap()
            } else {
                Response::new(Body::from(format!("call {n}")))
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cacheable_misses_across_two_processes_call_once() {
    let redis = RedisServer::start();
    let mut bad = Vec::new();
    for url in 0..5 {
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, _) = app(locked_layer(&redis), handler(calls.clone(), 0));
        let (b, _) = app(locked_layer(&redis), handler(calls.clone(), 0));
        let uri = format!("/r{url}");
        let answers = burst(&[&a, &b], &uri, 50).await;
        let ok = answers.iter().all(|s| s.status == StatusCode::OK && s.body == "call 1");
        let n = calls.load(Ordering::SeqCst);
        if n != 1 || !ok {
            bad.push((uri, n, ok));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// One process, 30 concurrent requests; the first handler call answers 500, the rest 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_500_then_200_one_process() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, _) = app(locked_layer(&redis), handler(calls.clone(), 1));
    let started = Instant::now();
    let answers = burst(&[&a], "/t", 30).await;
    let took = started.elapsed();
    let n500 = answers.iter().filter(|s| s.status == StatusCode::INTERNAL_SERVER_ERROR).count();
    let n200 = answers.iter().filter(|s| s.status == StatusCode::OK).count();
    let calls = calls.load(Ordering::SeqCst);
    eprintln!("one process: calls={calls} 500s={n500} 200s={n200} took={took:?}");
    assert!(calls <= 3, "{calls} handler calls for 30 requests after one transient 500");
}

/// Two processes, 30 concurrent requests each; the first handler call answers 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_500_then_200_two_processes() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, _) = app(locked_layer(&redis), handler(calls.clone(), 1));
    let (b, _) = app(locked_layer(&redis), handler(calls.clone(), 1));
    let started = Instant::now();
    let answers = burst(&[&a, &b], "/t2", 60).await;
    let took = started.elapsed();
    let n500 = answers.iter().filter(|s| s.status == StatusCode::INTERNAL_SERVER_ERROR).count();
    let n200 = answers.iter().filter(|s| s.status == StatusCode::OK).count();
    let calls = calls.load(Ordering::SeqCst);
    eprintln!("two processes: calls={calls} 500s={n500} 200s={n200} took={took:?}");
    assert!(calls <= 4, "{calls} handler calls for 60 requests after one transient 500");
}

/// A persistent 500: waiters answered, nothing stuck, bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_500_two_processes_bounded() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, _) = app(locked_layer(&redis), handler(calls.clone(), usize::MAX));
    let (b, _) = app(locked_layer(&redis), handler(calls.clone(), usize::MAX));
    let started = Instant::now();
    let answers = tokio::time::timeout(Duration::from_secs(20), burst(&[&a, &b], "/p", 60))
        .await
        .expect("stuck");
    let took = started.elapsed();
    assert!(answers.iter().all(|s| s.status == StatusCode::INTERNAL_SERVER_ERROR));
    eprintln!("persistent 500: calls={} took={took:?}", calls.load(Ordering::SeqCst));
    assert!(took < Duration::from_secs(3), "{took:?}");
}
