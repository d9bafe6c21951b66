//! `CacheLayer` driven by a plain executor (no tokio runtime) over the memory repository, which
//! needs none: what needs tokio's timers is not done there (README, "Outside a tokio runtime"),
//! and nothing panics. It panicked with "there is no reactor running" with a `hard_timeout`, a
//! `handler_timeout` over a stale entry, and a busy lock (found by a probe, 2026-12-07).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use impcache::{Cache, CacheRepository, Lock, MemoryCacheRepository};
use impcache_tests::block_on;
use impcache_tower::CacheLayer;
use tower::{Layer, Service, ServiceExt};

/// Sends a `GET` of `path` through `service` on this thread, outside any runtime: its status.
fn get<S, B>(service: &mut S, path: &str) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    block_on(async {
        let request = Request::get(format!("http://example.com{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        service.ready().await.unwrap().call(request).await.unwrap()
    })
    .status()
}

/// A handler answering `200` once, then `503`, counting its calls.
fn handler(
    calls: &Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let calls = Arc::clone(calls);
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = if call == 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut response = Response::new(Full::new(Bytes::from("hello")));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[test]
fn the_timeouts_are_not_applied_and_nothing_panics() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new(Cache::new(MemoryCacheRepository::new()))
        .expire(Duration::from_millis(200))
        .hard_timeout(Duration::from_secs(1))
        .handler_timeout(Duration::from_secs(1))
        .stale_if_error(Duration::from_secs(60));
    let mut service = layer.layer(handler(&calls));
    assert_eq!(get(&mut service, "/x"), StatusCode::OK);
    assert_eq!(get(&mut service, "/x"), StatusCode::OK, "a hit");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    std::thread::sleep(Duration::from_millis(300));
    // Stale: the handler's `503` is answered with the stale response (stale-if-error).
    assert_eq!(get(&mut service, "/x"), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Two layers standing for two processes on one repository: the second finds the first's lock
/// held, and loads without it (there are no timers to wait with), as `get_or_set` does.
#[test]
fn a_busy_lock_is_not_waited_for() {
    let repository: Arc<dyn CacheRepository> = Arc::new(MemoryCacheRepository::new());
    let layer = |repository: &Arc<dyn CacheRepository>| {
        CacheLayer::new(Cache::builder_shared(Arc::clone(repository)).build())
            .expire(60)
            .lock(Lock::new())
    };
    let (started, handler_started) = mpsc::channel();
    let (go, handler_go) = mpsc::channel::<()>();
    let first_layer = layer(&repository);
    let first = std::thread::spawn(move || {
        let handler_go = Arc::new(std::sync::Mutex::new(handler_go));
        let slow = tower::service_fn(move |_: Request<Full<Bytes>>| {
            // Holds the lock until the second request has been answered (this thread only).
            started.send(()).unwrap();
            handler_go.lock().unwrap().recv().unwrap();
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("first")))) }
        });
        get(&mut first_layer.layer(slow), "/locked")
    });
    handler_started.recv().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut second = layer(&repository).layer(handler(&calls));
    assert_eq!(get(&mut second, "/locked"), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "loaded without the lock");
    go.send(()).unwrap();
    assert_eq!(first.join().unwrap(), StatusCode::OK);
}
