//! Probe (layer, lock): the cross-process lock with several layers ("processes") on one Redis:
//! many concurrent misses → one handler call; handler error / 500 under the lock; a leader whose
//! handler panics; a leader whose client disconnects (axum over TCP) — others not stranded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use impcache::{Cache, Lock, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::{CacheLayer, CacheService, StatusHeader};
use support::*;
use tokio::io::AsyncWriteExt;
use tower::Layer;

fn locked(redis: &RedisServer) -> CacheLayer {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    CacheLayer::new(Cache::new(repository))
        .status_header(StatusHeader::Both)
        .lock(Lock::new().wait(Duration::from_secs(5)))
}

fn cs(seen: &Seen) -> String {
    seen.header("cache-status").unwrap_or_default().to_owned()
}

/// `what(n)` decides the answer of call n (shared counter across processes).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Ok,
    Status500,
    Err,
    Panic,
}

type ESvc = tower::util::BoxCloneService<
    Request<Body>,
    Response<impcache_tower::ResponseBody<Body>>,
    std::io::Error,
>;

fn process(layer: CacheLayer, calls: Arc<AtomicUsize>, delay_ms: u64, act: fn(usize) -> Act) -> ESvc {
    let inner = tower::service_fn(move |_req: Request<Body>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            match act(n) {
                Act::Ok => Ok(Response::new(Body::from(format!("call {n}")))),
                Act::Status500 => Ok(Response::builder().status(500).body(Body::from(format!("fail {n}"))).unwrap()),
                Act::Err => Err(std::io::Error::other(format!("err {n}"))),
                Act::Panic => panic!("handler panics on call {n}"),
            }
        }
    });
    let svc: CacheService<_> = layer.layer(inner);
    tower::util::BoxCloneService::new(svc)
}

async fn esend(svc: ESvc, req: Request<Body>) -> Result<Seen, String> {
    use tower::ServiceExt;
    let response = svc.oneshot(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Seen { status: parts.status, headers: parts.headers, body })
}

/// 5 processes × 20 concurrent misses → one handler call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_hundred_misses_one_call() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let procs: Vec<ESvc> = (0..5).map(|_| process(locked(&redis), calls.clone(), 300, |_| Act::Ok)).collect();
    let t = Instant::now();
    let reqs: Vec<_> = (0..100)
        .map(|i| {
            let svc = procs[i % 5].clone();
            tokio::spawn(async move { esend(svc, get("/burst")).await })
        })
        .collect();
    let mut bodies = std::collections::BTreeMap::<String, usize>::new();
    for r in reqs {
        let s = r.await.unwrap().unwrap();
        *bodies.entry(String::from_utf8_lossy(&s.body).into_owned()).or_default() += 1;
    }
    eprintln!("bodies {bodies:?} calls {} in {:?}", calls.load(Ordering::SeqCst), t.elapsed());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{bodies:?}");
}

/// Errors under the lock: a 500 and a handler error. Documented: processes call in turn
/// (N processes → N calls). Check bounded time and that nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_under_the_lock() {
    for act in [Act::Status500, Act::Err] {
        let redis = RedisServer::start();
        let calls = Arc::new(AtomicUsize::new(0));
        let f: fn(usize) -> Act = if act == Act::Status500 { |_| Act::Status500 } else { |_| Act::Err };
        let procs: Vec<ESvc> = (0..3).map(|_| process(locked(&redis), calls.clone(), 200, f)).collect();
        let t = Instant::now();
        let reqs: Vec<_> = (0..30)
            .map(|i| {
                let svc = procs[i % 3].clone();
                tokio::spawn(async move { esend(svc, get("/err")).await })
            })
            .collect();
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for r in reqs {
            let key = match r.await.unwrap() {
                Ok(s) => format!("{} {}", s.status, cs(&s)),
                Err(e) => format!("Err {e}"),
            };
            *outcomes.entry(key).or_default() += 1;
        }
        let took = t.elapsed();
        eprintln!("{act:?}: calls {} in {took:?}: {outcomes:#?}", calls.load(Ordering::SeqCst));
        assert!(took < Duration::from_secs(5), "{act:?}: {took:?}");
        // Each request of a process whose leader failed... at most one call per request.
        assert!(calls.load(Ordering::SeqCst) <= 30);
    }
}

/// A leader whose handler panics under the lock: the other process (waiting on the lock) is not
/// stranded for the lock's wait; this process's waiters hand over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_leader_under_the_lock() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let act: fn(usize) -> Act = |n| if n == 1 { Act::Panic } else { Act::Ok };
    let a = process(locked(&redis), calls.clone(), 300, act);
    let b = process(locked(&redis), calls.clone(), 300, act);
    let t = Instant::now();
    let a1 = tokio::spawn({ let a = a.clone(); async move { esend(a, get("/panic")).await } });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a2 = tokio::spawn({ let a = a.clone(); async move { let r = esend(a, get("/panic")).await; (r, t.elapsed()) } });
    let b1 = tokio::spawn({ let b = b.clone(); async move { let r = esend(b, get("/panic")).await; (r, t.elapsed()) } });
    let a1 = a1.await;
    eprintln!("a1: {:?}", a1.as_ref().map(|r| r.as_ref().map(|s| (s.status, s.body.clone()))).map_err(|e| e.to_string()));
    let (a2, a2t) = a2.await.unwrap();
    let (b1, b1t) = b1.await.unwrap();
    let show = |r: &Result<Seen, String>| match r {
        Ok(s) => format!("{} {:?} {}", s.status, s.body, cs(s)),
        Err(e) => format!("Err {e}"),
    };
    eprintln!("a2 {} after {a2t:?}\nb1 {} after {b1t:?}\ncalls {}", show(&a2), show(&b1), calls.load(Ordering::SeqCst));
    assert!(b1t < Duration::from_secs(3), "the other process was stranded {b1t:?}");
    assert!(a2t < Duration::from_secs(3), "the same process's waiter was stranded {a2t:?}");
    assert!(b1.is_ok() && a2.is_ok());
}

/// A leader whose client disconnects (axum over TCP): the other process's request is not
/// stranded for the lock's wait (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_leader_over_tcp() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let mk = |layer: CacheLayer, calls: Arc<AtomicUsize>| {
        let handler = move || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(800)).await;
                format!("call {n}")
            }
        };
        axum::Router::new()
            .route("/slow", axum::routing::get(handler))
            .layer(layer)
    };
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let app = mk(locked(&redis), calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        servers.push(tokio::spawn(async move { axum::serve(listener, app).await }));
    }
    let t = Instant::now();
    // Client 1 on A: sends, then disconnects after 100 ms.
    let mut raw = tokio::net::TcpStream::connect(addrs[0]).await.unwrap();
    raw.write_all(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Client 2 on A (joins A's flight), client 3 on B (waits on the lock).
    let fetch = |addr: std::net::SocketAddr| async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::get(format!("http://{addr}/slow"))
            .header("host", "example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.headers().get("cache-status").map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (body, status, t.elapsed())
    };
    let c2 = tokio::spawn(fetch(addrs[0]));
    let c3 = tokio::spawn(fetch(addrs[1]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(raw);
    let c2 = c2.await.unwrap();
    let c3 = c3.await.unwrap();
    eprintln!("c2 (A) {c2:?}\nc3 (B) {c3:?}\ncalls {}", calls.load(Ordering::SeqCst));
    assert!(c2.2 < Duration::from_secs(3), "A's waiter stranded: {:?}", c2.2);
    assert!(c3.2 < Duration::from_secs(3), "B stranded behind a cancelled leader: {:?}", c3.2);
    for s in servers {
        s.abort();
    }
}

/// Same, all in one process via oneshot: the leader's future is dropped (cancelled) while the
/// other process waits on the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_leader_future_other_process_waiting() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let a = process(locked(&redis), calls.clone(), 800, |_| Act::Ok);
    let b = process(locked(&redis), calls.clone(), 800, |_| Act::Ok);
    let t = Instant::now();
    let a1 = tokio::spawn({ let a = a.clone(); async move { esend(a, get("/cancel")).await } });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b1 = tokio::spawn({ let b = b.clone(); async move { let r = esend(b, get("/cancel")).await; (r.map(|s| (cs(&s), s.body)), t.elapsed()) } });
    tokio::time::sleep(Duration::from_millis(50)).await;
    a1.abort();
    let _ = a1.await;
    let (b1, b1t) = b1.await.unwrap();
    eprintln!("b1 {b1:?} after {b1t:?}, calls {}", calls.load(Ordering::SeqCst));
    assert!(b1t < Duration::from_secs(3), "stranded {b1t:?}");
    let _: Option<Infallible> = None;
    let _ = StatusCode::OK;
}

/// Uncacheable answers under the lock: per-request latency and call counts, one process and
/// three, with and without the lock.
async fn uncacheable_burst(redis: &RedisServer, procs_n: usize, per: usize, with_lock: bool, act: Act) -> (usize, Duration, Duration) {
    let calls = Arc::new(AtomicUsize::new(0));
    let f: fn(usize) -> Act = match act {
        Act::Status500 => |_| Act::Status500,
        _ => |_| Act::Err,
    };
    let ns = format!("u{procs_n}{per}{with_lock}{act:?}");
    let procs: Vec<ESvc> = (0..procs_n)
        .map(|_| {
            let layer = if with_lock {
                locked(redis)
            } else {
                let repository = RedisCacheRepository::builder(redis.url()).deadline(Duration::from_millis(500)).build().unwrap();
                CacheLayer::new(Cache::new(repository))
            };
            process(layer.namespace(ns.clone()), calls.clone(), 200, f)
        })
        .collect();
    let t = Instant::now();
    let reqs: Vec<_> = (0..procs_n * per)
        .map(|i| {
            let svc = procs[i % procs_n].clone();
            tokio::spawn(async move {
                let _ = esend(svc, get("/u")).await;
                t.elapsed()
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for r in reqs {
        worst = worst.max(r.await.unwrap());
    }
    (calls.load(Ordering::SeqCst), t.elapsed(), worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_bursts_table() {
    let redis = RedisServer::start();
    for act in [Act::Status500, Act::Err] {
        for (procs_n, per) in [(1, 10), (3, 1), (3, 10)] {
            for with_lock in [false, true] {
                let (calls, total, worst) = uncacheable_burst(&redis, procs_n, per, with_lock, act).await;
                eprintln!("{act:?} procs={procs_n} per={per} lock={with_lock}: calls={calls} total={total:?} worst={worst:?}");
            }
        }
    }
}

/// One process, 50 concurrent requests of a URL answering 500 (200 ms), lock wait 5 s,
/// lock_timeout default (10 s): how long does the last request wait?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_fifty_errors_under_the_lock() {
    let redis = RedisServer::start();
    let (calls, total, worst) = uncacheable_burst(&redis, 1, 50, true, Act::Status500).await;
    eprintln!("1 process, 50 requests, lock: calls={calls} total={total:?} worst={worst:?}");
    let (calls2, total2, worst2) = uncacheable_burst(&redis, 1, 50, false, Act::Status500).await;
    eprintln!("1 process, 50 requests, no lock: calls={calls2} total={total2:?} worst={worst2:?}");
    assert!(
        worst < Duration::from_secs(2),
        "one process: the lock serialized {calls} handler calls of an uncacheable URL: a request waited {worst:?}; without the lock {worst2:?} ({calls2} calls)"
    );
}
