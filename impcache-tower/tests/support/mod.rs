//! Shared helpers of the impcache-tower integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use impcache::{Cache, MemoryCacheRepository};
use impcache_tower::{CacheLayer, CacheService};
use tower::{Layer, ServiceExt};

/// A response as the client sees it.
#[derive(Debug)]
pub struct Seen {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("")
    }
}

pub fn memory_cache() -> Cache {
    Cache::new(MemoryCacheRepository::new())
}

/// Counts handler calls.
#[derive(Clone, Default, Debug)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

pub type Svc = tower::util::BoxCloneService<
    Request<Body>,
    Response<impcache_tower::ResponseBody<Body>>,
    Infallible,
>;

/// A handler made from an async closure `(call number, request) -> response`, wrapped in `layer`.
pub fn app<F, Fut>(layer: CacheLayer, handler: F) -> (Svc, Calls)
where
    F: Fn(usize, Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let calls = Calls::default();
    let counter = calls.clone();
    let inner = tower::service_fn(move |req: Request<Body>| {
        let n = counter.bump();
        let fut = handler(n, req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let svc: CacheService<_> = layer.layer(inner);
    (tower::util::BoxCloneService::new(svc), calls)
}

/// A plain handler: `200 OK`, body `call {n}`.
pub fn counting(layer: CacheLayer) -> (Svc, Calls) {
    app(layer, |n, _req| async move {
        Response::new(Body::from(format!("call {n}")))
    })
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap()
}

pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "example.com");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

pub fn send(svc: &Svc, req: Request<Body>) -> impl Future<Output = Seen> + Send + 'static {
    let svc = svc.clone();
    async move { send_owned(svc, req).await }
}

async fn send_owned(svc: Svc, req: Request<Body>) -> Seen {
    let response = svc.oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Seen {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Waits (bounded) until the entry of `uri` (no Vary) is in the repository: stores run in the
/// background.
pub async fn wait_stored(layer: &CacheLayer, uri: &str) {
    wait_key(layer, uri, ":v:-").await
}

/// Waits (bounded) until the key `{request key}{suffix}` of `uri` is in the repository.
pub async fn wait_key(layer: &CacheLayer, uri: &str, suffix: &str) {
    let key = format!("{}{suffix}", layer.request_key(&get(uri)));
    for _ in 0..400 {
        if layer
            .cache()
            .repository()
            .get(&key)
            .await
            .unwrap()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} was never stored");
}
