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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use impcache::{BoxFuture, Cache, CacheRepository, Expiry, MemoryCacheRepository};
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

    /// `HIT`, `MISS` or `BYPASS`, from this cache's `Cache-Status` member (the default status
    /// header); empty without one.
    pub fn outcome(&self) -> &'static str {
        let Some(member) = self
            .headers
            .get_all("cache-status")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .rfind(|v| v.starts_with("impcache"))
        else {
            return "";
        };
        if member.starts_with("impcache; hit") {
            "HIT"
        } else if member.contains("fwd=bypass") || member.contains("fwd=method") {
            "BYPASS"
        } else {
            "MISS"
        }
    }
}

pub fn memory_cache() -> Cache {
    Cache::new(MemoryCacheRepository::new())
}

/// A [`MemoryCacheRepository`] that records the keys each read asks for (one list per call).
#[derive(Debug, Clone, Default)]
pub struct CountingRepository {
    inner: Arc<MemoryCacheRepository>,
    reads: Arc<Mutex<Vec<Vec<String>>>>,
}

impl CountingRepository {
    /// The reads since the last call, each with the keys it asked for.
    pub fn take_reads(&self) -> Vec<Vec<String>> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }

    fn record(&self, keys: Vec<String>) {
        self.reads.lock().unwrap().push(keys);
    }
}

impl CacheRepository for CountingRepository {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.inner.set(key, value, expiry)
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<bool>> {
        self.inner.set_nx(key, value, expiry)
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.inner.set_many(entries, expiry)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<Option<Bytes>>> {
        self.record(vec![key.to_owned()]);
        self.inner.get(key)
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, impcache::Result<Vec<Option<Bytes>>>> {
        self.record(keys.iter().map(|key| (*key).to_owned()).collect());
        self.inner.get_many(keys)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete(key)
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_many(keys)
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_pattern(pattern)
    }
}

/// Waits (bounded) until the repository value at the full key `key` satisfies `ready`.
pub async fn wait_value(cache: &Cache, key: &str, ready: impl Fn(Option<&Bytes>) -> bool) {
    for _ in 0..400 {
        if ready(cache.repository().get(key).await.unwrap().as_ref()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} never reached the expected value");
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

/// Waits (bounded) until the record of `uri` (its entry when the response has no Vary) is in the
/// repository: stores run in the background.
pub async fn wait_stored(layer: &CacheLayer, uri: &str) {
    wait_key(layer, uri, ":v").await
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

/// A body of one chunk that says nothing of its size, as a stream's: a server sends it chunked,
/// and the layer learns its length only by reading it.
pub struct Unsized(pub Option<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }
}

/// A body whose chunks arrive from a channel, as `Body::from_stream`'s: it never says it has
/// ended before its `None`, and declares an exact size only when given one (`exact`, which
/// does not shrink as it is read, as some bodies' hints do not).
pub struct Trickle {
    pub rx: tokio::sync::mpsc::Receiver<Bytes>,
    pub exact: Option<u64>,
}

impl Trickle {
    /// A body of `chunks`: the first ready at once, the others sent `gap` apart by a task, then
    /// ended (the channel closed).
    pub fn sending(chunks: Vec<Bytes>, gap: Duration, exact: Option<u64>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut chunks = chunks.into_iter();
        if let Some(first) = chunks.next() {
            tx.try_send(first).unwrap();
        }
        tokio::spawn(async move {
            for chunk in chunks {
                tokio::time::sleep(gap).await;
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        Trickle { rx, exact }
    }
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(http_body::Frame::data(data))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.exact.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

/// A body that fails after its one chunk (ready at once), with no size hint.
pub struct BreaksAfter(pub Option<Bytes>);

impl http_body::Body for BreaksAfter {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(data) => Ok(http_body::Frame::data(data)),
            None => Err(std::io::Error::other("the body broke")),
        }))
    }
}
