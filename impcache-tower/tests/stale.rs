//! Stale responses (RFC 5861): `stale_while_revalidate`, `stale_if_error` (handler error, 5xx,
//! timeout), the responses' directives, on the memory repository and a real Redis, and through
//! axum over TCP. Most tests wait past a one-second freshness (they assert no timings); one
//! shows a sub-second `expire` going stale on time; the origin mode's entries are made stale on
//! arrival with `Age`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::{CacheLayer, StatusHeader};
use support::*;
use tower::{Layer, ServiceExt};

/// Past a one-second freshness.
async fn past_freshness() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// The handler's answer to its next call, set by the test.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Status(u16),
    Error,
    Slow,
    /// 300 ms late.
    Late,
    /// A 200 whose body fails after its first chunk.
    BrokenBody,
    /// A 200 declaring its `Content-Length`, whose body never ends after those bytes.
    Endless,
    /// A 200 whose body streams `call {n}`, then 20 more bytes.
    Streamed,
}

/// A body of one chunk that never ends after it (as a stream whose end has not come yet).
struct Endless(Option<Bytes>);

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match self.0.take() {
            Some(data) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// A service answering `call {n}` as `answer` says, counting calls; `Cache-Control` of its
/// responses from `cache_control` (none when empty).
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    answer: Arc<std::sync::Mutex<Answer>>,
    cache_control: &'static str,
}

impl Origin {
    fn new(cache_control: &'static str) -> Self {
        Origin {
            calls: Arc::default(),
            answer: Arc::new(std::sync::Mutex::new(Answer::Ok)),
            cache_control,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = std::io::Error,
        Future = impl Future<Output = Result<Response<Body>, std::io::Error>> + Send,
    > + Clone
           + Send
           + 'static {
        let origin = self.clone();
        tower::service_fn(move |_request: Request<Body>| {
            let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = *origin.answer.lock().unwrap();
            let cache_control = origin.cache_control;
            async move {
                // The revalidation calls take a moment: concurrent requests overlap them.
                if n > 1 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let status = match answer {
                    Answer::Ok => 200,
                    Answer::Status(status) => status,
                    Answer::Error => return Err(std::io::Error::other("handler failed")),
                    Answer::Slow => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        200
                    }
                    Answer::Late => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        200
                    }
                    Answer::BrokenBody => {
                        let body = Body::new(BreaksAfter(Some(Bytes::from("call "))));
                        return Ok(Response::new(body));
                    }
                    Answer::Streamed => {
                        let chunks = vec![
                            Bytes::from(format!("call {n}")),
                            Bytes::from([b'+'; 20].to_vec()),
                        ];
                        let body = Trickle::sending(chunks, Duration::from_millis(20), None);
                        return Ok(Response::new(Body::new(body)));
                    }
                    Answer::Endless => {
                        let data = Bytes::from(format!("call {n}"));
                        let response = Response::builder()
                            .header("content-length", data.len())
                            .body(Body::new(Endless(Some(data))));
                        return Ok(response.unwrap());
                    }
                };
                let mut response = Response::builder().status(status);
                if !cache_control.is_empty() {
                    response = response.header("cache-control", cache_control);
                }
                Ok(response.body(Body::from(format!("call {n}"))).unwrap())
            }
        })
    }
}

/// What a client sees: status, `x-cache`, `Cache-Status`, body (`Err` for a handler error).
async fn call<S>(service: &S, uri: &str) -> Result<(StatusCode, String, String, Bytes), String>
where
    S: tower::Service<Request<Body>, Response = Response<impcache_tower::ResponseBody<Body>>>
        + Clone,
    S::Error: std::fmt::Display,
{
    send_request(service, get(uri)).await
}

/// What a client sees of `request`, as [`call`] says.
async fn send_request<S>(
    service: &S,
    request: Request<Body>,
) -> Result<(StatusCode, String, String, Bytes), String>
where
    S: tower::Service<Request<Body>, Response = Response<impcache_tower::ResponseBody<Body>>>
        + Clone,
    S::Error: std::fmt::Display,
{
    let response = service
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (x_cache, status) = (header("x-cache"), header("cache-status"));
    let code = parts.status;
    let body = body.collect().await.unwrap().to_bytes();
    Ok((code, x_cache, status, body))
}

fn layer(cache: Cache) -> CacheLayer {
    CacheLayer::new(cache)
        .expire(1)
        .status_header(StatusHeader::Both)
}

/// Stale-while-revalidate: 20 concurrent requests for a stale URL are all answered with the
/// stale entry at once, one background handler call refreshes it, and the requests after it get
/// the new response.
async fn while_revalidating_serves_stale_and_calls_the_handler_once(cache: Cache) {
    let origin = Origin::new("");
    let layer = layer(cache).stale_while_revalidate(Duration::from_secs(60));
    let service = layer.clone().layer(origin.service());
    let first = call(&service, "/swr").await.unwrap();
    assert_eq!(
        (first.1.as_str(), first.3.as_ref()),
        ("MISS", &b"call 1"[..])
    );
    wait_stored(&layer, "/swr").await;
    past_freshness().await;

    let requests: Vec<_> = (0..20)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { call(&service, "/swr").await.unwrap() })
        })
        .collect();
    for request in requests {
        let (status, x_cache, cache_status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
        assert!(
            cache_status.starts_with("impcache; hit; fwd=stale; ttl=-")
                && cache_status.ends_with("; detail=revalidating"),
            "{cache_status}"
        );
    }
    // The background call stores `call 2`; then it is a plain hit.
    let mut seen = call(&service, "/swr").await.unwrap();
    for _ in 0..200 {
        if seen.3 == "call 2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = call(&service, "/swr").await.unwrap();
    }
    assert_eq!((seen.1.as_str(), seen.3.as_ref()), ("HIT", &b"call 2"[..]));
    assert_eq!(origin.calls(), 2, "one background handler call");
}

/// Stale-if-error: a stale entry stands in for a 5xx, a handler error and a slow handler; a
/// success replaces it.
async fn if_error_serves_stale_on_5xx_error_and_timeout(cache: Cache) {
    let origin = Origin::new("");
    let layer = layer(cache)
        .stale_if_error(Duration::from_secs(60))
        .handler_timeout(Duration::from_millis(200));
    let service = layer.clone().layer(origin.service());
    call(&service, "/sie").await.unwrap();
    wait_stored(&layer, "/sie").await;
    past_freshness().await;
    // RFC 9211: forwarded, so not a `hit`; `fwd-status` is the status the handler answered.
    for (answer, fwd, detail) in [
        (
            Answer::Status(503),
            "fwd=stale; fwd-status=503",
            "handler-status",
        ),
        (Answer::Error, "fwd=stale", "handler-error"),
        (Answer::Slow, "fwd=stale", "handler-timeout"),
    ] {
        origin.set(answer);
        let (status, x_cache, cache_status, body) = call(&service, "/sie").await.unwrap();
        assert_eq!(
            (status, x_cache.as_str(), body.as_ref()),
            (StatusCode::OK, "STALE", &b"call 1"[..]),
            "{answer:?}"
        );
        assert!(
            cache_status.starts_with(&format!("impcache; {fwd}; ttl=-"))
                && !cache_status.starts_with("impcache; fwd=stale; ttl=-0;")
                && cache_status.ends_with(&format!("; detail={detail}")),
            "{cache_status}"
        );
    }
    // A success replaces it: stored.
    origin.set(Answer::Ok);
    let (status, x_cache, cache_status, body) = call(&service, "/sie").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (StatusCode::OK, "MISS"));
    assert!(cache_status.contains("fwd=stale; stored"), "{cache_status}");
    let stored = format!("call {}", origin.calls());
    assert_eq!(body, stored);
    wait_hit(&service, "/sie", &stored).await;
    past_freshness().await;
    // A status not configured goes through, and replaces the stale response too (RFC 9111
    // §4.3.3), though it is not stored: the next failure finds no stale response to stand in.
    origin.set(Answer::Status(404));
    let (status, x_cache, cache_status, _) = call(&service, "/sie").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (StatusCode::NOT_FOUND, "MISS"));
    assert!(cache_status.contains("fwd=stale"), "{cache_status}");
    origin.set(Answer::Status(503));
    let (status, x_cache, cache_status, _) = call(&service, "/sie").await.unwrap();
    assert_eq!(
        (status, x_cache.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "MISS"),
        "{cache_status}"
    );
    assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");
}

/// Stale-while-revalidate: a background call whose answer the layer does not store (a 404, a
/// 410, `no-store`, `private`, a body over `max_body_size`, known before or after reading it)
/// replaces the stale response all the same (RFC 9111 §4.3.3; RFC 5861 lets a stale response
/// stand in for errors only): the next requests are misses answered by the handler, not the
/// stale `200` with one more background call each.
async fn an_unstorable_refresh_replaces_the_stale_response(cache: Cache) {
    let layer = layer(cache)
        .max_body_size(1000)
        .stale_while_revalidate(Duration::from_secs(3600));
    let later = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers_later = Arc::clone(&later);
    let (service, calls) = app(layer.clone(), move |n, request: Request<Body>| {
        let later = answers_later.load(Ordering::SeqCst);
        let path = request.uri().path().to_owned();
        async move {
            if !later {
                return Response::new(Body::from(format!("old {n}")));
            }
            let big = Bytes::from(format!("new {n} {}", "x".repeat(5000)));
            let response = Response::builder();
            match path.as_str() {
                "/gone" => response.status(404).body(Body::from(format!("new {n}"))),
                "/gone-for-good" => response.status(410).body(Body::from(format!("new {n}"))),
                "/no-store" => response
                    .header("cache-control", "no-store")
                    .body(Body::from(format!("new {n}"))),
                "/private" => response
                    .header("cache-control", "private")
                    .body(Body::from(format!("new {n}"))),
                "/too-large" => response.body(Body::from(big)),
                // Says nothing of its size: the layer learns it is too large only by reading it.
                _ => response.body(Body::new(support::Unsized(Some(big)))),
            }
            .unwrap()
        }
    });
    let uris = [
        "/gone",
        "/gone-for-good",
        "/no-store",
        "/private",
        "/too-large",
        "/too-large-unsized",
    ];
    for uri in uris {
        send(&service, get(uri)).await;
        wait_stored(&layer, uri).await;
    }
    past_freshness().await;
    later.store(true, Ordering::SeqCst);
    for uri in uris {
        let before = calls.get();
        let stale = send(&service, get(uri)).await;
        assert!(stale.body.starts_with(b"old"), "{uri}: not served stale");
        // The background call's answer removes the record (bounded wait).
        let record = format!("{}:v", layer.request_key(&get(uri)));
        for _ in 0..200 {
            let stored = layer.cache().repository().get(&record).await.unwrap();
            if stored.is_none() && calls.get() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let requests = 5;
        for _ in 0..requests {
            let seen = send(&service, get(uri)).await;
            let cache_status = seen.header("cache-status").unwrap_or_default();
            assert!(
                seen.body.starts_with(b"new") && cache_status.contains("fwd=uri-miss"),
                "{uri}: {} {:?} [{cache_status}]",
                seen.status,
                String::from_utf8_lossy(&seen.body[..seen.body.len().min(20)]),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One background call, then one call per miss: none started in the background.
        assert_eq!(calls.get() - before, 1 + requests, "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_refresh_replaces_the_stale_response_on_memory() {
    an_unstorable_refresh_replaces_the_stale_response(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_refresh_replaces_the_stale_response_on_redis() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    an_unstorable_refresh_replaces_the_stale_response(cache).await;
}

/// A background call that fails (a 503, a handler error) leaves the stale response in place, as
/// before, and so does an origin shedding load (a 429: removing the stale response sent every
/// request to it; found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_stale_response() {
    let origin = Origin::new("");
    let layer = layer(memory_cache()).stale_while_revalidate(Duration::from_secs(60));
    let service = layer.clone().layer(origin.service());
    call(&service, "/kept").await.unwrap();
    wait_stored(&layer, "/kept").await;
    past_freshness().await;
    for answer in [Answer::Status(503), Answer::Status(429), Answer::Error] {
        origin.set(answer);
        for _ in 0..2 {
            let before = origin.calls();
            let (_, x_cache, _, body) = call(&service, "/kept").await.unwrap();
            assert_eq!(
                (x_cache.as_str(), body.as_ref()),
                ("STALE", &b"call 1"[..]),
                "{answer:?}"
            );
            until_calls(&origin, before + 1).await;
            // The background call (100 ms) has ended.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// How long the throttle tests throttle: the requests right after a failure are within it on a
/// loaded machine.
const THROTTLE: Duration = Duration::from_secs(2);

/// Polls `uri` until the origin has been called `calls` times (bounded).
async fn until_calls(origin: &Origin, calls: usize) {
    for _ in 0..500 {
        if origin.calls() >= calls {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the origin was never called {calls} times");
}

/// The fail-safe throttle (FusionCache's): after a handler call that failed with a stale
/// response standing in, the next requests of the URL get the stale response without a handler
/// call until the throttle has passed; then the handler is called again, and its success stored.
async fn fail_safe_throttle_leaves_a_failing_handler_alone(cache: Cache) {
    let origin = Origin::new("");
    let layer = layer(cache)
        .stale_if_error(Duration::from_secs(60))
        .fail_safe_throttle(THROTTLE);
    let service = layer.clone().layer(origin.service());
    call(&service, "/throttled").await.unwrap();
    wait_stored(&layer, "/throttled").await;
    past_freshness().await;
    origin.set(Answer::Error);
    let (_, x_cache, cache_status, body) = call(&service, "/throttled").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
    assert!(
        cache_status.ends_with("; detail=handler-error"),
        "{cache_status}"
    );
    assert_eq!(origin.calls(), 2);
    for _ in 0..5 {
        let (status, x_cache, cache_status, body) = call(&service, "/throttled").await.unwrap();
        assert_eq!(
            (status, x_cache.as_str(), body.as_ref()),
            (StatusCode::OK, "STALE", &b"call 1"[..])
        );
        assert!(
            cache_status.ends_with("; detail=fail-safe-throttle"),
            "{cache_status}"
        );
    }
    assert_eq!(origin.calls(), 2, "no handler call while throttled");
    // Past the throttle the handler is called again; its success is stored.
    origin.set(Answer::Ok);
    tokio::time::sleep(THROTTLE).await;
    let (_, x_cache, _, body) = call(&service, "/throttled").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("MISS", &b"call 3"[..]));
}

/// Under stale-while-revalidate, a background revalidation that failed (`failure`: a 5xx, or a
/// body that fails, which did not throttle: found by a probe) throttles the next ones: the stale
/// response answers, and no handler call starts until the throttle has passed.
async fn fail_safe_throttle_after_a_failed_revalidation(cache: Cache, failure: Answer) {
    let origin = Origin::new("");
    let layer = layer(cache)
        .stale_while_revalidate(Duration::from_secs(60))
        .fail_safe_throttle(THROTTLE);
    let service = layer.clone().layer(origin.service());
    call(&service, "/revalidated").await.unwrap();
    wait_stored(&layer, "/revalidated").await;
    past_freshness().await;
    origin.set(failure);
    let (_, x_cache, _, body) = call(&service, "/revalidated").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
    // The background call (100 ms late) fails; the throttle starts right after its answer.
    until_calls(&origin, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let (_, x_cache, cache_status, body) = call(&service, "/revalidated").await.unwrap();
        assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
        assert!(
            cache_status.ends_with("; detail=fail-safe-throttle"),
            "{cache_status}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.calls(), 2, "no revalidation while throttled");
    // Past the throttle a stale request starts a revalidation again.
    origin.set(Answer::Ok);
    tokio::time::sleep(THROTTLE).await;
    let (_, _, cache_status, _) = call(&service, "/revalidated").await.unwrap();
    assert!(
        cache_status.ends_with("; detail=revalidating"),
        "{cache_status}"
    );
    until_calls(&origin, 3).await;
}

/// A background revalidation reads its answer's body as a server sends it: up to its
/// `Content-Length`, where hyper stops, so a body that declares its length and does not end
/// after it is stored at once (found by a probe: only when the `lock_timeout` had passed, 10 s by
/// default, and counted as a failed call, which started the fail-safe throttle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_reads_its_body_up_to_its_content_length() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_while_revalidate(Duration::from_secs(60))
        .fail_safe_throttle(THROTTLE);
    let service = layer.clone().layer(origin.service());
    call(&service, "/declared").await.unwrap();
    wait_stored(&layer, "/declared").await;
    past_freshness().await;
    origin.set(Answer::Endless);
    let (_, x_cache, _, body) = call(&service, "/declared").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
    wait_hit(&service, "/declared", "call 2").await;
}

/// A revalidation's answer whose body streams and then turns out too large to store replaces
/// the stale response, as one whose body is all there does (found by a probe: it was kept, and
/// each stale request started another background call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_too_large_to_store_replaces_the_stale_response() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .max_body_size(10)
        .stale_while_revalidate(Duration::from_secs(60));
    let service = layer.clone().layer(origin.service());
    call(&service, "/grown").await.unwrap();
    wait_stored(&layer, "/grown").await;
    past_freshness().await;
    origin.set(Answer::Streamed);
    let (_, x_cache, _, body) = call(&service, "/grown").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
    let key = format!("{}:v", layer.request_key(&get("/grown")));
    for _ in 0..400 {
        if layer
            .cache()
            .repository()
            .get(&key)
            .await
            .unwrap()
            .is_none()
        {
            let (_, x_cache, _, body) = call(&service, "/grown").await.unwrap();
            assert_eq!(x_cache, "MISS");
            assert_eq!(body.len(), 26);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the stale response was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_throttle_on_memory() {
    fail_safe_throttle_leaves_a_failing_handler_alone(memory_cache()).await;
    for failure in [Answer::Status(503), Answer::BrokenBody] {
        fail_safe_throttle_after_a_failed_revalidation(memory_cache(), failure).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_throttle_on_redis() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    fail_safe_throttle_leaves_a_failing_handler_alone(cache.clone()).await;
    fail_safe_throttle_after_a_failed_revalidation(cache, Answer::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_revalidating_on_memory() {
    while_revalidating_serves_stale_and_calls_the_handler_once(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_revalidating_on_redis() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    while_revalidating_serves_stale_and_calls_the_handler_once(cache).await;
}

#[tokio::test]
async fn if_error_on_memory() {
    if_error_serves_stale_on_5xx_error_and_timeout(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_error_on_redis() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    if_error_serves_stale_on_5xx_error_and_timeout(cache).await;
}

/// Reads `uri` until a hit answers `body`; bounded.
async fn wait_hit<S>(service: &S, uri: &str, body: &str)
where
    S: tower::Service<Request<Body>, Response = Response<impcache_tower::ResponseBody<Body>>>
        + Clone,
    S::Error: std::fmt::Display,
{
    for _ in 0..500 {
        let (_, x_cache, _, seen) = call(service, uri).await.unwrap();
        if x_cache == "HIT" && seen == body {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never a hit with {body}");
}

/// Soft timeout (issue 15): with a stale entry that may stand in, a handler slower than the soft
/// timeout is answered by the stale entry, and its call goes on in the background and stores
/// its response (one handler call); a handler within the soft timeout answers itself.
async fn soft_timeout_serves_stale_and_the_call_stores(cache: Cache) {
    let origin = Origin::new("");
    let layer = layer(cache)
        .stale_if_error(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(50));
    let service = layer.clone().layer(origin.service());
    call(&service, "/soft").await.unwrap();
    wait_stored(&layer, "/soft").await;
    past_freshness().await;
    origin.set(Answer::Late);
    let (status, x_cache, cache_status, body) = call(&service, "/soft").await.unwrap();
    assert_eq!(
        (status, x_cache.as_str(), body.as_ref()),
        (StatusCode::OK, "STALE", &b"call 1"[..])
    );
    assert!(
        cache_status.starts_with("impcache; fwd=stale; ttl=-")
            && cache_status.ends_with("; detail=soft-timeout"),
        "{cache_status}"
    );
    // The late call finishes in the background and is stored.
    wait_hit(&service, "/soft", "call 2").await;
    assert_eq!(origin.calls(), 2, "the late call is the only one");

    // A handler within the soft timeout answers itself, and is stored.
    let patient = layer.soft_timeout(Duration::from_secs(3));
    let service = patient.clone().layer(origin.service());
    past_freshness().await;
    origin.set(Answer::Ok);
    let (status, x_cache, _, body) = call(&service, "/soft").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (StatusCode::OK, "MISS"));
    assert_eq!(body, "call 3");
    wait_hit(&service, "/soft", "call 3").await;
    // And a failure within it is still answered by the stale entry.
    past_freshness().await;
    origin.set(Answer::Status(503));
    let (status, x_cache, cache_status, body) = call(&service, "/soft").await.unwrap();
    assert_eq!(
        (status, x_cache.as_str(), body.as_ref()),
        (StatusCode::OK, "STALE", &b"call 3"[..])
    );
    assert!(
        cache_status.ends_with("; detail=handler-status"),
        "{cache_status}"
    );
}

/// The handler call that goes on past a soft timeout is bounded by the lock timeout: a handler
/// that hangs does not hold the URL's flight, so a later request calls the handler again
/// instead of waiting behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_past_the_soft_timeout_is_dropped_after_the_lock_timeout() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_if_error(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(150))
        .lock_timeout(Duration::from_millis(200));
    let service = layer.clone().layer(origin.service());
    call(&service, "/hang").await.unwrap();
    wait_stored(&layer, "/hang").await;
    past_freshness().await;
    origin.set(Answer::Slow);
    let (_, x_cache, _, body) = call(&service, "/hang").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
    // Past the lock timeout, the hanging call (5 s) has been dropped.
    tokio::time::sleep(Duration::from_millis(400)).await;
    origin.set(Answer::Ok);
    let (_, x_cache, _, body) = call(&service, "/hang").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("MISS", &b"call 3"[..]));
}

/// A handler that panics within the soft timeout: the panic reaches the caller, as without a
/// soft timeout (`stale_if_error`'s docs). The call runs in a task of its own there, and the
/// stale response answered for it at once, marked `detail=soft-timeout` though no timeout had
/// passed (found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_within_the_soft_timeout_reaches_the_caller() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = tower::service_fn({
        let calls = calls.clone();
        move |_: Request<Body>| {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                assert!(call == 1, "the handler panics in call {call}");
                Ok::<_, std::convert::Infallible>(Response::new(Body::from("call 1")))
            }
        }
    });
    let layer = layer(memory_cache())
        .stale_if_error(Duration::from_secs(60))
        .soft_timeout(Duration::from_secs(3));
    let service = layer.clone().layer(handler);
    call(&service, "/panics").await.unwrap();
    wait_stored(&layer, "/panics").await;
    past_freshness().await;
    let answered = tokio::spawn(service.oneshot(get("/panics"))).await;
    assert!(answered.is_err_and(|ended| ended.is_panic()));
}

/// A call past the soft timeout lost with its runtime (shut down mid-call) is a failed call: the
/// stale response answers for it with `detail=handler-error`, not `soft-timeout` before the soft
/// timeout has passed (found by a regression hunt).
#[test]
fn a_call_lost_with_its_runtime_is_answered_stale_as_a_failed_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_if_error(Duration::from_secs(60))
        .soft_timeout(Duration::from_secs(3));
    let service = layer.layer(origin.service());
    runtime.block_on(async {
        call(&service, "/lost").await.unwrap();
        wait_stored(&layer, "/lost").await;
        past_freshness().await;
    });
    origin.set(Answer::Slow);
    // The request polled on this thread, its call spawned on the runtime, shut down meanwhile.
    let handle = runtime.handle().clone();
    let shutdown = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        runtime.shutdown_background();
    });
    let _entered = handle.enter();
    let mut answer = std::pin::pin!(service.oneshot(get("/lost")));
    let waker = std::task::Waker::noop();
    let started = std::time::Instant::now();
    let response = loop {
        let polled = answer
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        if let std::task::Poll::Ready(response) = polled {
            break response.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no answer");
        std::thread::sleep(Duration::from_millis(10));
    };
    shutdown.join().unwrap();
    let status = response.headers()["cache-status"].to_str().unwrap();
    assert!(
        status.contains("fwd=stale") && status.ends_with("detail=handler-error"),
        "{status}"
    );
}

/// A spy of the `tracing` span a handler's future and its body's polls run in.
#[derive(Clone, Default)]
struct Spans(Arc<std::sync::Mutex<Vec<Option<&'static str>>>>);

impl Spans {
    fn record(&self) {
        let span = tracing::Span::current();
        self.0
            .lock()
            .unwrap()
            .push(span.metadata().map(|meta| meta.name()));
    }
}

/// A body of two frames, still being produced when its handler returns (its first poll is
/// `Pending`), recording the span of each poll.
struct SpiedBody {
    polls: usize,
    spans: Spans,
}

impl http_body::Body for SpiedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.spans.record();
        self.polls += 1;
        match self.polls {
            1 => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            2 | 3 => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from("x"))))),
            _ => std::task::Poll::Ready(None),
        }
    }
}

/// The handler calls a client waits for run in its request's `tracing` span (as tower-http's
/// `TraceLayer` makes one), as without the layer: the call past the soft timeout, in a task of
/// its own, and a streamed body read ahead of its client ran in none (found by a probe). A
/// background revalidation runs in none on purpose (OBSERVABILITY.md).
#[tokio::test]
async fn the_calls_a_client_waits_for_run_in_its_requests_span() {
    use tracing::Instrument;
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    // This thread's: a current-thread runtime runs every task on it.
    impcache_tests::logs::keep_callsites_interested();
    let _default = tracing::subscriber::set_default(subscriber);
    let spans = Spans::default();
    let handler = tower::service_fn({
        let spans = spans.clone();
        move |_: Request<Body>| {
            let spans = spans.clone();
            async move {
                spans.record();
                let body = SpiedBody { polls: 0, spans };
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        }
    });
    let layer = layer(memory_cache())
        .stale_if_error(Duration::from_secs(60))
        .soft_timeout(Duration::from_secs(3));
    let service = layer.clone().layer(handler);
    for stale in [false, true] {
        let request = service.clone().oneshot(get("/spans"));
        let response = request.instrument(tracing::info_span!("request")).await;
        let (parts, body) = response.unwrap().into_parts();
        let status = parts.headers["cache-status"].to_str().unwrap().to_owned();
        assert_eq!(status.contains("fwd=stale"), stale, "{status}");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "xx");
        wait_stored(&layer, "/spans").await;
        past_freshness().await;
    }
    let spans = spans.0.lock().unwrap().clone();
    // The handler's future and its body's four polls, twice.
    assert_eq!(spans.len(), 10, "{spans:?}");
    assert!(
        spans.iter().all(|span| *span == Some("request")),
        "{spans:?}"
    );
}

/// A background revalidation asks for the whole response: the client's validators are not
/// forwarded, so an `ETag`-aware handler answers `200`, which is stored, and not
/// a `304` for the client's copy, which could not refresh the entry (nginx does the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_revalidation_does_not_forward_the_clients_validators() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn({
        let calls = calls.clone();
        move |request: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let conditional = request.headers().contains_key("if-none-match");
            async move {
                let response = if conditional {
                    Response::builder().status(304).body(Body::empty())
                } else {
                    Response::builder()
                        .header("etag", format!("\"v{n}\""))
                        .body(Body::from(format!("call {n}")))
                };
                Ok::<_, std::io::Error>(response.unwrap())
            }
        }
    });
    let layer = layer(memory_cache()).stale_while_revalidate(Duration::from_secs(60));
    let service = layer.clone().layer(origin);
    call(&service, "/etag").await.unwrap();
    wait_stored(&layer, "/etag").await;
    past_freshness().await;
    let conditional = request("GET", "/etag", &[("if-none-match", "\"v1\"")]);
    let response = service.clone().oneshot(conditional).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "STALE");
    for _ in 0..400 {
        if calls.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The revalidation's response is stored (a moment after the handler answered): a hit.
    wait_hit(&service, "/etag", "call 2").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A sub-second `expire` with a stale window: stale once that freshness is over (the entry
/// records its TTL to the millisecond), served while one background call refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_second_expire_goes_stale_on_time() {
    let origin = Origin::new("");
    let layer = CacheLayer::new(memory_cache())
        .expire(Duration::from_millis(300))
        .stale_while_revalidate(Duration::from_secs(60))
        .status_header(StatusHeader::Both);
    let service = layer.clone().layer(origin.service());
    call(&service, "/fast").await.unwrap();
    wait_stored(&layer, "/fast").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, x_cache, _, body) = call(&service, "/fast").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));
    wait_hit(&service, "/fast", "call 2").await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_on_memory() {
    soft_timeout_serves_stale_and_the_call_stores(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_on_redis() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    soft_timeout_serves_stale_and_the_call_stores(cache).await;
}

/// Hard timeout (issue 15): a handler slower than it is given up; with no stale entry the layer
/// answers `504` (not stored: the next request calls the handler again), with one within its
/// stale-if-error window the stale entry answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_timeout_gives_up_on_the_handler() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_if_error(Duration::from_secs(60))
        // Well above the 100 ms the origin takes from its second call on (a handler that makes
        // it is not given up), well under the slow answer's 5 s.
        .hard_timeout(Duration::from_millis(600));
    let service = layer.clone().layer(origin.service());
    origin.set(Answer::Slow);
    let started = std::time::Instant::now();
    let (status, x_cache, cache_status, body) = call(&service, "/hard").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "given up");
    assert_eq!(
        (status, x_cache.as_str(), body.as_ref()),
        (StatusCode::GATEWAY_TIMEOUT, "MISS", &b""[..])
    );
    assert!(
        cache_status.ends_with("; detail=handler-timeout"),
        "{cache_status}"
    );
    origin.set(Answer::Ok);
    let (status, x_cache, _, body) = call(&service, "/hard").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (StatusCode::OK, "MISS"));
    assert_eq!(body, "call 2");
    wait_stored(&layer, "/hard").await;
    past_freshness().await;
    origin.set(Answer::Slow);
    let (status, x_cache, cache_status, body) = call(&service, "/hard").await.unwrap();
    assert_eq!(
        (status, x_cache.as_str(), body.as_ref()),
        (StatusCode::OK, "STALE", &b"call 2"[..])
    );
    assert!(
        cache_status.ends_with("; detail=handler-timeout"),
        "{cache_status}"
    );
}

/// The hard timeout bounds a request's whole wait after its lookup, as `get_or_set`'s: requests
/// that waited behind a miss whose handler call timed out have no time left for a call of their
/// own, and answer `504` with it (they each waited one timeout, then made a call of a whole
/// timeout: twice the bound, and a handler call each). Paused clock: the times are exact.
#[tokio::test(start_paused = true)]
async fn waiters_behind_a_timed_out_miss_are_bounded_by_one_hard_timeout() {
    const HARD: Duration = Duration::from_secs(10);
    let layer = layer(memory_cache()).hard_timeout(HARD);
    let (svc, calls) = app(layer, |_, _| std::future::pending::<Response<Body>>());
    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(send(&svc, get("/hangs"))))
        .collect();
    for request in requests {
        let seen = request.await.unwrap();
        assert_eq!(seen.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            seen.header("cache-status")
                .unwrap()
                .ends_with("; detail=handler-timeout"),
            "{:?}",
            seen.header("cache-status")
        );
    }
    assert_eq!(started.elapsed(), HARD, "one hard timeout in all");
    assert_eq!(calls.get(), 1, "the waiters had no time left for a call");
}

/// Requests that waited behind a call that succeeded with a response it does not share
/// (`no-store`) keep their whole hard timeout for their own call: only a wait behind a call that
/// timed out counts in it. (For a while each such waiter got what was left, and answered `504`
/// for a healthy handler.) Paused clock.
#[tokio::test(start_paused = true)]
async fn waiters_behind_an_unshared_success_keep_their_whole_hard_timeout() {
    let layer = layer(memory_cache()).hard_timeout(Duration::from_secs(1));
    let (svc, calls) = app(layer, |_, _| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Response::builder()
            .header("cache-control", "no-store")
            .body(Body::from("fresh"))
            .unwrap()
    });
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(send(&svc, get("/private"))))
        .collect();
    for request in requests {
        let seen = request.await.unwrap();
        assert_eq!(
            (seen.status, seen.body.as_ref()),
            (StatusCode::OK, &b"fresh"[..]),
            "{:?}",
            seen.header("cache-status")
        );
    }
    assert_eq!(calls.get(), 5, "each waiter called the handler itself");
}

/// The hard timeout bounds a HEAD request's handler call too: with nothing stored, the layer
/// answers `504` once it is over, as it does a GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_timeout_gives_up_on_the_handler_of_a_head_request() {
    let origin = Origin::new("");
    let layer = layer(memory_cache()).hard_timeout(Duration::from_millis(300));
    let service = layer.layer(origin.service());
    origin.set(Answer::Slow);
    let started = std::time::Instant::now();
    let response = service
        .oneshot(request("HEAD", "/hard-head", &[]))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "given up");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        response.headers()["cache-status"],
        "impcache; fwd=uri-miss; detail=handler-timeout"
    );
}

/// Within a stale-if-error window a HEAD request is answered as a GET is: the stale response
/// (without its body) stands in for a handler that fails, answers with a stale-if-error status
/// or exceeds the handler timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_gets_the_stale_response_when_the_handler_fails() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_if_error(Duration::from_secs(60))
        .handler_timeout(Duration::from_millis(300));
    let service = layer.clone().layer(origin.service());
    call(&service, "/head-if-error").await.unwrap();
    wait_stored(&layer, "/head-if-error").await;
    past_freshness().await;
    for (answer, why) in [
        (Answer::Status(503), "handler-status"),
        (Answer::Error, "handler-error"),
        (Answer::Slow, "handler-timeout"),
    ] {
        origin.set(answer);
        let head = request("HEAD", "/head-if-error", &[]);
        let response = service.clone().oneshot(head).await.unwrap();
        let (parts, body) = response.into_parts();
        let x_cache = parts.headers["x-cache"].to_str().unwrap();
        assert_eq!(
            (parts.status, x_cache),
            (StatusCode::OK, "STALE"),
            "{answer:?}"
        );
        let cache_status = parts.headers["cache-status"].to_str().unwrap();
        assert!(
            cache_status.ends_with(&format!("; detail={why}")),
            "{cache_status}"
        );
        assert_eq!(parts.headers["content-length"], "6");
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}

/// Stale-while-revalidate for a HEAD: answered with the stale entry without a body, and the URL
/// revalidated in the background with a GET (whose response is stored; nginx's
/// `proxy_cache_convert_head`). It used to be answered without any revalidation.
#[tokio::test]
async fn a_head_request_in_the_stale_window_revalidates_with_a_get() {
    let methods = Arc::new(std::sync::Mutex::new(Vec::new()));
    let origin = {
        let methods = Arc::clone(&methods);
        tower::service_fn(move |request: Request<Body>| {
            let mut methods = methods.lock().unwrap();
            methods.push(request.method().clone());
            let body = format!("call {}", methods.len());
            async move { Ok::<_, std::io::Error>(Response::new(Body::from(body))) }
        })
    };
    let layer = layer(memory_cache()).stale_while_revalidate(Duration::from_secs(60));
    let service = layer.clone().layer(origin);
    call(&service, "/head-swr").await.unwrap();
    wait_stored(&layer, "/head-swr").await;
    past_freshness().await;
    let response = service
        .clone()
        .oneshot(request("HEAD", "/head-swr", &[]))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-cache"], "STALE");
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    for _ in 0..200 {
        if methods.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *methods.lock().unwrap(),
        [http::Method::GET, http::Method::GET]
    );
    wait_hit(&service, "/head-swr", "call 2").await;
}

/// An early refresh is a background handler call: one that failed throttles the next ones, as
/// a failed revalidation does (every fresh hit started one: 90 calls of a failing handler in 100
/// hits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_early_refresh_throttles_the_next_ones() {
    let origin = Origin::new("");
    // A gap far longer than the lifetime: every fresh hit is due for an early refresh.
    let layer = layer(memory_cache())
        .expire(10)
        .stale_if_error(Duration::from_secs(60))
        .early_refresh(Duration::from_secs(60))
        .fail_safe_throttle(THROTTLE);
    let service = layer.clone().layer(origin.service());
    call(&service, "/early-throttled").await.unwrap();
    wait_stored(&layer, "/early-throttled").await;
    origin.set(Answer::Status(503));
    // Each hit refreshes with probability exp(-10 / 60): hits until one has.
    for _ in 0..500 {
        if origin.calls() >= 2 {
            break;
        }
        call(&service, "/early-throttled").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_calls(&origin, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        let (status, x_cache, _, body) = call(&service, "/early-throttled").await.unwrap();
        assert_eq!(
            (status, x_cache.as_str(), body.as_ref()),
            (StatusCode::OK, "HIT", &b"call 1"[..])
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.calls(), 2, "no early refresh while throttled");
}

/// Early refresh (issue 15): hits of a hot URL are served fresh as usual, and one of them starts
/// a background refresh before the entry expires; without it the handler is not called again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_refreshes_a_hot_url_before_it_expires() {
    let origin = Origin::new("");
    // A five-second lifetime and a ten-second gap: each hit refreshes with probability > 0.6.
    let layer = layer(memory_cache())
        .expire(5)
        .early_refresh(Duration::from_secs(10));
    let service = layer.clone().layer(origin.service());
    call(&service, "/early").await.unwrap();
    wait_stored(&layer, "/early").await;
    let plain = layer
        .clone()
        .early_refresh(Duration::ZERO)
        .namespace("plain");
    let plain_service = plain.clone().layer(origin.service());
    call(&plain_service, "/early").await.unwrap();
    wait_stored(&plain, "/early").await;
    assert_eq!(origin.calls(), 2);
    let started = std::time::Instant::now();
    while origin.calls() < 3 {
        // A ceiling for liveness, well before the entry expires (not a timing measurement).
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "never refreshed early"
        );
        let (status, x_cache, ..) = call(&service, "/early").await.unwrap();
        assert_eq!((status, x_cache.as_str()), (StatusCode::OK, "HIT"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_hit(&service, "/early", "call 3").await;
    for _ in 0..20 {
        let (_, x_cache, _, body) = call(&plain_service, "/early").await.unwrap();
        assert_eq!((x_cache.as_str(), body.as_ref()), ("HIT", &b"call 2"[..]));
    }
}

/// Past the stale-while-revalidate window (but within stale-if-error's) the handler answers; past
/// stale-if-error's, its error goes through.
#[tokio::test]
async fn past_the_window_the_handler_answers() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_while_revalidate(Duration::from_secs(1))
        .stale_if_error(Duration::from_secs(1));
    let service = layer.clone().layer(origin.service());
    call(&service, "/over").await.unwrap();
    wait_stored(&layer, "/over").await;
    past_freshness().await;
    past_freshness().await;
    origin.set(Answer::Status(503));
    let (status, x_cache, ..) = call(&service, "/over").await.unwrap();
    assert_eq!(
        (status, x_cache.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "MISS")
    );
    origin.set(Answer::Ok);
    let (status, x_cache, _, body) = call(&service, "/over").await.unwrap();
    assert_eq!((status, x_cache.as_str()), (StatusCode::OK, "MISS"));
    assert_eq!(body, "call 3");
}

/// A response's `stale-while-revalidate` / `stale-if-error` win over the layer's (here: none);
/// `must-revalidate` forbids serving stale whatever the layer says; `stale-if-error=0` turns the
/// layer's window off for that response.
#[tokio::test]
async fn directives_win_over_the_layer() {
    let origin = Origin::new("max-age=1, stale-while-revalidate=30");
    let plain = layer(memory_cache());
    let service = plain.clone().layer(origin.service());
    call(&service, "/d").await.unwrap();
    wait_stored(&plain, "/d").await;
    past_freshness().await;
    let (_, x_cache, _, body) = call(&service, "/d").await.unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 1"[..]));

    for cache_control in ["max-age=1, must-revalidate", "max-age=1, stale-if-error=0"] {
        let origin = Origin::new(cache_control);
        let layer = layer(memory_cache())
            .stale_while_revalidate(Duration::from_secs(60))
            .stale_if_error(Duration::from_secs(60));
        let service = layer.clone().layer(origin.service());
        call(&service, "/f").await.unwrap();
        wait_stored(&layer, "/f").await;
        past_freshness().await;
        origin.set(Answer::Status(503));
        let (status, x_cache, ..) = call(&service, "/f").await.unwrap();
        let expected = if cache_control.contains("must-revalidate") {
            (StatusCode::SERVICE_UNAVAILABLE, "MISS")
        } else {
            // stale-if-error=0, but the layer's stale-while-revalidate still holds.
            (StatusCode::OK, "STALE")
        };
        assert_eq!((status, x_cache.as_str()), expected, "{cache_control}");
    }
}

/// The origin mode: a response stale on arrival (`Age` past `max-age`) with
/// `stale-while-revalidate` is served stale; with `s-maxage` it is not (a shared cache's
/// `proxy-revalidate`).
#[tokio::test]
async fn origin_mode_directives() {
    for (cache_control, stale) in [
        ("max-age=10, stale-while-revalidate=60", true),
        ("s-maxage=10, stale-while-revalidate=60", false),
    ] {
        let layer = CacheLayer::new(memory_cache())
            .follow_origin(true)
            .status_header(StatusHeader::Both);
        let (svc, calls) = app(layer.clone(), move |n, _| async move {
            Response::builder()
                .header("cache-control", cache_control)
                .header("age", "20")
                .header("etag", "\"v\"")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        });
        send(&svc, get("/o")).await;
        wait_stored(&layer, "/o").await;
        let seen = send(&svc, get("/o")).await;
        if stale {
            assert_eq!(seen.header("x-cache"), Some("STALE"));
            assert_eq!(
                seen.header("cache-status"),
                Some("impcache; hit; fwd=stale; ttl=-10; detail=revalidating")
            );
            assert_eq!(seen.body, "call 1");
        } else {
            assert_ne!(seen.header("x-cache"), Some("STALE"), "{cache_control}");
            assert_eq!(calls.get(), 2);
        }
    }
}

/// A honoured request `max-age=N` or `min-fresh=N` without `max-stale` asks for a fresh
/// response (RFC 9111 §5.2.1.1, §5.2.1.3): it is not served stale from a stale-while-revalidate
/// window; the handler answers (`fwd=request`) and its response is stored (found by a probe:
/// `min-fresh=1` got `hit; fwd=stale; detail=revalidating`). Within the stale-if-error window the
/// stale response still answers for a failing handler, and `max-stale` keeps the window open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asking_for_a_fresh_response_is_not_served_stale_while_revalidating() {
    let origin = Origin::new("");
    let layer = layer(memory_cache())
        .stale_while_revalidate(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(60))
        .honor_request_cache_control(true);
    let service = layer.clone().layer(origin.service());
    let asking =
        |cache_control: &'static str| request("GET", "/fresh", &[("cache-control", cache_control)]);
    call(&service, "/fresh").await.unwrap();
    wait_stored(&layer, "/fresh").await;
    past_freshness().await;

    let (status, x_cache, cache_status, body) =
        send_request(&service, asking("min-fresh=1")).await.unwrap();
    assert_eq!(
        (
            status,
            x_cache.as_str(),
            cache_status.as_str(),
            body.as_ref()
        ),
        (
            StatusCode::OK,
            "MISS",
            "impcache; fwd=request; stored",
            &b"call 2"[..]
        )
    );
    wait_hit(&service, "/fresh", "call 2").await;
    past_freshness().await;

    // `max-age`, whatever its value: the handler is called; it fails, and the stale response
    // answers for it (stale-if-error).
    origin.set(Answer::Error);
    let (status, x_cache, cache_status, body) = send_request(&service, asking("max-age=3600"))
        .await
        .unwrap();
    assert_eq!(
        (status, x_cache.as_str(), body.as_ref()),
        (StatusCode::OK, "STALE", &b"call 2"[..])
    );
    assert!(
        cache_status.starts_with("impcache; fwd=stale; ttl=-")
            && cache_status.ends_with("; detail=handler-error"),
        "{cache_status}"
    );
    assert_eq!(origin.calls(), 3, "the handler was called");

    // With `max-stale`, the stale-while-revalidate window is open to it again.
    origin.set(Answer::Ok);
    let (_, x_cache, cache_status, body) =
        send_request(&service, asking("max-age=3600, max-stale"))
            .await
            .unwrap();
    assert_eq!((x_cache.as_str(), body.as_ref()), ("STALE", &b"call 2"[..]));
    assert!(
        cache_status.ends_with("; detail=revalidating"),
        "{cache_status}"
    );
}

/// The same in the origin mode, with a response's own `stale-while-revalidate` (stale on arrival:
/// 10 s past its freshness), and `max-stale` bounding what it accepts (`min-fresh` counting
/// against it, `max-age` still bounding the age).
#[tokio::test]
async fn origin_mode_request_directives_and_a_responses_stale_while_revalidate() {
    for (cache_control, stale) in [
        ("", true),
        ("min-fresh=1", false),
        ("max-age=3600", false),
        ("max-stale", true),
        ("max-stale=5", false),
        ("max-stale=30, min-fresh=5", true),
        ("max-stale=12, min-fresh=5", false),
        ("max-age=15, max-stale", false),
    ] {
        let layer = CacheLayer::new(memory_cache())
            .follow_origin(true)
            .honor_request_cache_control(true)
            .status_header(StatusHeader::Both);
        let (svc, _) = app(layer.clone(), move |n, _| async move {
            Response::builder()
                .header("cache-control", "max-age=10, stale-while-revalidate=60")
                .header("age", "20")
                .header("etag", "\"v\"")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        });
        send(&svc, get("/o")).await;
        wait_stored(&layer, "/o").await;
        let headers: &[(&str, &str)] = if cache_control.is_empty() {
            &[]
        } else {
            &[("cache-control", cache_control)]
        };
        let seen = send(&svc, request("GET", "/o", headers)).await;
        let cache_status = seen.header("cache-status").unwrap_or_default();
        if stale {
            assert_eq!(
                (seen.header("x-cache"), seen.body.as_ref()),
                (Some("STALE"), &b"call 1"[..]),
                "{cache_control}: {cache_status}"
            );
        } else {
            assert_eq!(seen.body, "call 2", "{cache_control}: {cache_status}");
            assert!(
                cache_status.starts_with("impcache; fwd=request"),
                "{cache_control}: {cache_status}"
            );
        }
    }
}

/// Axum over TCP with a real Redis: a stale entry answers for a failing handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_over_tcp_with_redis() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    let layer = layer(cache).stale_if_error(Duration::from_secs(60));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&failing);
    let app = axum::Router::new()
        .route(
            "/page",
            axum::routing::get(move || {
                let failing = flag.load(Ordering::SeqCst);
                async move {
                    if failing {
                        (StatusCode::BAD_GATEWAY, "down")
                    } else {
                        (StatusCode::OK, "page")
                    }
                }
            }),
        )
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let fetch = |client: hyper_util::client::legacy::Client<_, _>| async move {
        let uri = format!("http://{addr}/page");
        let response = client.get(uri.parse().unwrap()).await.unwrap();
        let status = response.status();
        let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, x_cache, body)
    };
    assert_eq!(fetch(client.clone()).await.1, "MISS");
    let request = Request::get(format!("http://{addr}/page"))
        .body(())
        .unwrap();
    let key = format!("{}:v", layer.request_key(&request));
    wait_value(layer.cache(), &key, |value| value.is_some()).await;
    past_freshness().await;
    failing.store(true, Ordering::SeqCst);
    let (status, x_cache, body) = fetch(client.clone()).await;
    assert_eq!(
        (status, x_cache.as_str(), body.as_ref()),
        (StatusCode::OK, "STALE", &b"page"[..])
    );
    server.abort();
}

/// Concurrent requests for a stale URL whose handler fails: one handler call (the flight's
/// leader's), and every request answered with its own stale entry (its variant's: a waiter is
/// never handed another request's answer). A failing origin is not called once per waiting
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_answer_with_their_own_stale_entry_without_calling_the_failing_handler() {
    for answer in [Answer::Status(500), Answer::Error] {
        let origin = Origin::new("");
        let layer = layer(memory_cache()).stale_if_error(Duration::from_secs(60));
        let service = layer.clone().layer(origin.service());
        call(&service, "/w").await.unwrap();
        wait_stored(&layer, "/w").await;
        past_freshness().await;
        origin.set(answer);
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { call(&service, "/w").await.unwrap() })
            })
            .collect();
        for request in requests {
            let (status, x_cache, cache_status, body) = request.await.unwrap();
            assert_eq!(
                (status, x_cache.as_str(), body.as_ref()),
                (StatusCode::OK, "STALE", &b"call 1"[..]),
                "{answer:?}"
            );
            assert!(cache_status.contains("fwd=stale"), "{cache_status}");
        }
        // One call for the 20 (before: one per request, 21 in all); a request that arrives after
        // the flight ended on a loaded machine leads a flight of its own: at most one more.
        assert!(
            origin.calls() <= 1 + 2,
            "one handler call for all: {answer:?}, {} calls",
            origin.calls()
        );
    }
}

/// The same with `Vary`: each waiter answers with the stale entry of its own variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_waiters_keep_their_own_variant() {
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, f) = (Arc::clone(&calls), Arc::clone(&failing));
    let handler = tower::service_fn(move |request: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let failing = f.load(Ordering::SeqCst);
        let language = request
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        async move {
            if failing {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok::<_, std::io::Error>(
                    Response::builder().status(500).body(Body::empty()).unwrap(),
                );
            }
            Ok(Response::builder()
                .header("vary", "accept-language")
                .body(Body::from(format!("{language} {n}")))
                .unwrap())
        }
    });
    let layer = layer(memory_cache()).stale_if_error(Duration::from_secs(60));
    let service = layer.clone().layer(handler);
    let ask = |language: &'static str| {
        let service = service.clone();
        async move {
            let request = Request::get("/v")
                .header("host", "example.com")
                .header("accept-language", language)
                .body(Body::empty())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(ask("en").await.1, "en 1");
    wait_stored(&layer, "/v").await;
    assert_eq!(ask("fr").await.1, "fr 2");
    // Both stored (in the background): hits.
    for _ in 0..400 {
        if ask("fr").await.1 == "fr 2" {
            break;
        }
    }
    assert_eq!(ask("en").await.1, "en 1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    past_freshness().await;
    failing.store(true, Ordering::SeqCst);
    let requests: Vec<_> = (0..20)
        .map(|i| tokio::spawn(ask(if i % 2 == 0 { "en" } else { "fr" })))
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        let expected = if i % 2 == 0 { "en 1" } else { "fr 2" };
        assert_eq!(
            request.await.unwrap(),
            (StatusCode::OK, expected.to_owned())
        );
    }
    // One failing call per URL flight, not one per request.
    assert!(calls.load(Ordering::SeqCst) <= 2 + 2, "{calls:?}");
}

/// A background revalidation is bounded by the hard timeout when that is longer than the lock
/// timeout: a handler slower than a short lock timeout but within its hard timeout refreshes the
/// stale response with one call (found by a probe: a 100 ms lock timeout dropped every refresh of
/// a 200 ms handler, the stale response served for the whole window and the handler called at
/// the rate of the requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_slower_than_the_lock_timeout_lands_within_the_hard_timeout() {
    let layer = CacheLayer::new(memory_cache())
        .expire(1)
        .stale_while_revalidate(Duration::from_secs(60))
        .lock_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(5));
    let (service, calls) = app(layer.clone(), |n, _| async move {
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Response::new(Body::from(format!("call {n}")))
    });
    send(&service, get("/slow")).await;
    wait_stored(&layer, "/slow").await;
    past_freshness().await;
    let stale = send(&service, get("/slow")).await;
    assert_eq!(stale.body, "call 1");
    let key = format!("{}:v", layer.request_key(&get("/slow")));
    wait_value(layer.cache(), &key, |entry| {
        entry.is_some_and(|entry| entry.windows(6).any(|w| w == b"call 2"))
    })
    .await;
    assert_eq!(send(&service, get("/slow")).await.body, "call 2");
    assert_eq!(calls.get(), 2, "one revalidation call");
}

/// An entry of the default mode whose key lost its TTL (another client's `PERSIST`, a copy that
/// drops TTLs) expires with its own freshness, give or take a second for clocks: it was served
/// as a fresh hit for ever (4.5 s after a 1 s store, still `hit`; found by a probe, 2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_key_lost_its_ttl_still_expires() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    let layer = CacheLayer::new(cache).expire(Duration::from_millis(300));
    let (service, calls) = counting(layer.clone());
    send(&service, get("/kept")).await;
    wait_stored(&layer, "/kept").await;
    for key in redis.keys() {
        let _: i64 = redis.cmd(&["PERSIST", &key]);
    }
    assert_eq!(send(&service, get("/kept")).await.outcome(), "HIT");
    // Past its freshness by more than the grace for clocks (a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = send(&service, get("/kept")).await;
    assert_eq!((seen.outcome(), calls.get()), ("MISS", 2), "{seen:?}");
}

/// Moves the stored time of every `CacheLayer` entry on `redis` back by `ms` (as a writer whose
/// clock is behind, or time passing), keeping each key's TTL: the `IHC` 6 header holds the
/// stored time in ms, little-endian, 8 bytes after the magic's end. Returns how many it moved.
fn move_stored_time_back(redis: &RedisServer, ms: u64) -> usize {
    let mut raw = redis.raw();
    let mut moved = 0;
    for key in redis.keys() {
        let mut bytes: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut raw).unwrap();
        let Some(magic) = bytes.windows(4).position(|w| w == b"IHC\x06") else {
            continue;
        };
        let at = magic + 4 + 8;
        let stored = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        bytes[at..at + 8].copy_from_slice(&(stored - ms).to_le_bytes());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(bytes)
            .arg("KEEPTTL")
            .query(&mut raw)
            .unwrap();
        moved += 1;
    }
    moved
}

/// An entry stored by a process whose clock is behind this one's, past its freshness by this
/// process's clock by under a second (the grace), is still a hit: its key is about to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_from_a_writer_whose_clock_is_slightly_behind_is_a_hit() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    let layer = CacheLayer::new(cache).expire(5);
    let (service, calls) = counting(layer.clone());
    send(&service, get("/lagging")).await;
    wait_stored(&layer, "/lagging").await;
    assert_eq!(move_stored_time_back(&redis, 5_500), 1);
    let seen = send(&service, get("/lagging")).await;
    assert_eq!((seen.outcome(), calls.get()), ("HIT", 1), "{seen:?}");
}

/// A layer without a stale window does not serve, as fresh, an entry another layer stored with
/// one (a rolling deploy that turned `stale_while_revalidate` on, another service on the
/// namespace), though its key lives on for that window: it was a `hit` up to twice its
/// freshness, 3 of 3 (the grace was the entry's own TTL; found by a probe, 2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_without_a_window_does_not_serve_a_windowed_entry_past_its_freshness() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&redis.url()).unwrap());
    let windowed = CacheLayer::new(cache.clone())
        .expire(3)
        .stale_while_revalidate(Duration::from_secs(60));
    let (writer, _) = counting(windowed.clone());
    send(&writer, get("/shared")).await;
    wait_stored(&windowed, "/shared").await;
    // 5 s later by the stored time: 2 s past its 3 s freshness, its key has 58 s left.
    assert_eq!(move_stored_time_back(&redis, 5_000), 1);
    let (reader, calls) = counting(CacheLayer::new(cache).expire(3));
    let seen = send(&reader, get("/shared")).await;
    assert_ne!(seen.outcome(), "HIT", "{seen:?}");
    assert_eq!(calls.get(), 1, "the handler answered: {seen:?}");
}
