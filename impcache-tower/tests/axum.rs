//! The layer in real stacks: `axum::Router::layer` / `route_layer` (a compile test as much as a
//! behaviour test), a plain hyper 1 server, and one end-to-end run over TCP with a real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::{CacheLayer, StatusHeader};
use support::memory_cache;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

async fn show_user(State(hits): State<Hits>, Path(id): Path<u64>) -> String {
    let n = hits.0.fetch_add(1, Ordering::SeqCst) + 1;
    format!("user {id} (call {n})")
}

/// Defect of tower-http-cache 0.6.1: it did not compile as `Router::layer` (it needed a `Sync`
/// body and returned `BoxError`). This compiles, keeps `Path` and `State`, and serves hits.
#[tokio::test]
async fn defect_not_compiling_as_axum_router_layer() {
    let hits = Hits::default();
    let app: Router = Router::new()
        .route("/users/{id}", get(show_user))
        .layer(
            CacheLayer::new(memory_cache())
                .expire(60)
                .status_header(StatusHeader::XCache),
        )
        .with_state(hits.clone());
    let call = |uri: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (x_cache, body)
        }
    };
    assert_eq!(
        call("/users/7").await,
        ("MISS".to_owned(), Bytes::from("user 7 (call 1)"))
    );
    assert_eq!(
        call("/users/7").await,
        ("HIT".to_owned(), Bytes::from("user 7 (call 1)"))
    );
    assert_eq!(call("/users/8").await.1, "user 8 (call 2)");
    assert_eq!(hits.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn fits_route_layer_on_some_routes_only() {
    let hits = Hits::default();
    let app: Router = Router::new()
        .route("/users/{id}", get(show_user))
        .route_layer(CacheLayer::new(memory_cache()))
        .route("/live/{id}", get(show_user))
        .route("/users", post(|| async { "created" }))
        .with_state(hits.clone());
    for uri in ["/users/1", "/users/1", "/live/1", "/live/1"] {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        hits.0.load(Ordering::SeqCst),
        3,
        "only /users/{{id}} is cached"
    );
}

/// A plain hyper 1 server (no axum): `Incoming` request bodies, `Full<Bytes>` responses.
#[tokio::test]
async fn fits_a_plain_hyper_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("call {n}"))))) }
    });
    let service = tower::Layer::layer(&CacheLayer::new(memory_cache()), handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    let first = fetch(addr, "GET", "/x").await;
    let second = fetch(addr, "GET", "/x").await;
    assert_eq!((first.0.as_str(), second.0.as_str()), ("MISS", "HIT"));
    assert_eq!(
        (first.1, second.1),
        (Bytes::from("call 1"), Bytes::from("call 1"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// tower-http's `TimeoutLayer`, `CorsLayer` and `ValidateRequestHeaderLayer` answer some
/// requests themselves with `ResBody::default()`: above a `CacheLayer` in one `ServiceBuilder`
/// they need its response body to be `Default` (found by a probe: it did not compile).
#[tokio::test]
async fn the_response_body_has_an_empty_default_for_middleware_above() {
    fn answers_itself<S, ReqBody, ResBody>(_: &S)
    where
        S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Default,
    {
    }
    let handler = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("x"))))
    });
    answers_itself(&tower::Layer::layer(
        &CacheLayer::new(memory_cache()),
        handler,
    ));
    let empty = impcache_tower::ResponseBody::<Body>::default();
    assert!(http_body::Body::is_end_stream(&empty));
    assert_eq!(empty.collect().await.unwrap().to_bytes(), "");
}

async fn fetch(addr: SocketAddr, method: &str, path: &str) -> (String, Bytes, http::HeaderMap) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let seen = support::Seen {
        status: response.status(),
        headers: response.headers().clone(),
        body: Bytes::new(),
    };
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (seen.outcome().to_owned(), body, seen.headers)
}

/// A HEAD that misses says what the GET says of its length, over a real axum server: the layer
/// drops the handler's body, and axum's router writes a `Content-Length` above the layer from the
/// body's size, so the empty body must not pass for a length of 0 (a regression found by a probe:
/// `content-length: 0` for an 11-byte page, and for a streamed one of unknown length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_miss_over_axum_keeps_the_gets_content_length() {
    let app: Router = Router::new()
        .route("/page", get(|| async { "hello world" }))
        .route(
            "/streamed",
            get(|| async { Body::new(support::Unsized(Some(Bytes::from("abcdef")))) }),
        )
        .layer(CacheLayer::new(memory_cache()).expire(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let length = |headers: &http::HeaderMap| {
        headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (outcome, body, headers) = fetch(addr, "HEAD", "/page").await;
    assert_eq!((outcome.as_str(), body.len()), ("MISS", 0));
    assert_eq!(length(&headers).as_deref(), Some("11"));
    let (_, body, get_headers) = fetch(addr, "GET", "/page").await;
    assert_eq!(body, "hello world");
    assert_eq!(length(&get_headers).as_deref(), Some("11"));
    // A body of unknown length: no length at all, as the GET (chunked) has none.
    let (outcome, _, headers) = fetch(addr, "HEAD", "/streamed").await;
    assert_eq!(outcome, "MISS");
    assert_ne!(length(&headers).as_deref(), Some("0"), "{headers:?}");
    server.abort();
}

/// A HEAD hit has no `Content-Length` where the GET has none: a stored 204, and a 304 to a
/// conditional HEAD. axum's router writes one from the body's exact size, and the layer's empty
/// body made it `0` (found by a probe; RFC 9110 §8.6: never in a 204, and in a 304 only the
/// 200's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_hit_has_no_content_length_where_the_get_has_none() {
    let app: Router = Router::new()
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route("/page", get(|| async { "hello world" }))
        .layer(
            CacheLayer::new(memory_cache())
                .expire(60)
                .statuses([StatusCode::OK, StatusCode::NO_CONTENT]),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |method: &str, path: &str, etag: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        client.request(request.body(Full::new(Bytes::new())).unwrap())
    };
    let (_, _, headers) = fetch(addr, "GET", "/empty").await;
    assert!(!headers.contains_key("content-length"), "{headers:?}");
    let hit = send("HEAD", "/empty", None).await.unwrap();
    assert_eq!(hit.status(), StatusCode::NO_CONTENT);
    assert!(hit.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert!(!hit.headers().contains_key("content-length"), "{hit:?}");

    let (_, _, headers) = fetch(addr, "GET", "/page").await;
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let head = send("HEAD", "/page", None).await.unwrap();
    assert_eq!(head.headers()["content-length"], "11");
    let not_modified = send("HEAD", "/page", Some(&etag)).await.unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert!(
        not_modified
            .headers()
            .get("content-length")
            .is_none_or(|v| v == "11"),
        "{not_modified:?}"
    );
    server.abort();
}

/// A streamed body of declared length (a `Content-Length` field, or an exact size hint from
/// which hyper writes one) is stored over a real server: hyper stops polling a body once it has
/// written that length and drops it before its `None` (as `Body::from_stream` and tower-http's
/// `ServeDir` bodies never say they have ended), which the layer took for a client gone mid-body,
/// storing nothing; concurrent clients then made one handler call each, one after another
/// (a regression found by a probe: 20 clients, 20 calls). The hint does not shrink and the first
/// chunk is ready when the handler returns: the layer's body once added the chunk it had read to
/// the hint, and hyper wrote `Content-Length: 1100` (every client failed, found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_of_declared_length_is_stored_over_tcp() {
    let chunks: Vec<Bytes> = (0..10u8)
        .map(|i| Bytes::from(vec![b'a' + i; 100]))
        .collect();
    let whole: Bytes = chunks.concat().into();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = |declared_by_header: bool| {
        let (chunks, calls) = (chunks.clone(), calls.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let exact = (!declared_by_header).then_some(1000);
            let body = support::Trickle::sending(chunks, Duration::from_millis(5), exact);
            let mut response = Response::new(Body::new(body));
            if declared_by_header {
                response
                    .headers_mut()
                    .insert("content-length", http::HeaderValue::from_static("1000"));
            }
            response
        }
    };
    let app: Router = Router::new()
        .route("/header", get(handler(true)))
        .route("/hint", get(handler(false)))
        .layer(CacheLayer::new(memory_cache()).expire(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for path in ["/header", "/hint"] {
        calls.store(0, Ordering::SeqCst);
        let clients: Vec<_> = (0..10)
            .map(|_| tokio::spawn(async move { fetch(addr, "GET", path).await }))
            .collect();
        for client in clients {
            assert_eq!(client.await.unwrap().1, whole, "{path}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{path}: one call for 10 clients"
        );
        let (outcome, body, headers) = fetch(addr, "GET", path).await;
        assert_eq!((outcome.as_str(), body), ("HIT", whole.clone()), "{path}");
        assert_eq!(headers["content-length"], "1000", "{path}");
    }
    server.abort();
}

/// A slow first client does not hold up the requests waiting for its response: the layer reads
/// a streamed cacheable body at the handler's pace, not the client's (as nginx reads an upstream
/// into its cache). The first client here reads nothing (a 4 KiB receive buffer, an 8 MiB body):
/// the copy was read only as fast as it read, so the second request waited its `lock_timeout`
/// (5 s) and then called the handler itself. It is answered from the one call now, and the first
/// client still gets the whole body once it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_client_does_not_hold_up_the_requests_waiting_for_its_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let chunks: Vec<Bytes> = (0..128u8)
        .map(|i| Bytes::from(vec![i; 64 * 1024]))
        .collect();
    let whole: Bytes = chunks.concat().into();
    let length = whole.len().to_string();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (chunks, calls) = (chunks.clone(), calls.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let body = support::Trickle::sending(chunks, Duration::ZERO, None);
            let mut response = Response::new(Body::new(body));
            let length = http::HeaderValue::from_str(&length).unwrap();
            response.headers_mut().insert("content-length", length);
            response
        }
    };
    let layer = CacheLayer::new(memory_cache())
        .expire(60)
        .max_body_size(16 << 20)
        .lock_timeout(Duration::from_secs(5));
    let app: Router = Router::new().route("/large", get(handler)).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    let head = format!("GET /large HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    slow.write_all(head.as_bytes()).await.unwrap();
    // The first request leads: its handler call has begun.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, body, _) = fetch(addr, "GET", "/large").await;
    assert!(body == whole, "the waiter got {} bytes", body.len());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the waiter called the handler"
    );

    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).await.unwrap();
    assert!(
        raw.ends_with(&whole),
        "the slow client got {} bytes",
        raw.len()
    );
    let (outcome, _, _) = fetch(addr, "GET", "/large").await;
    assert_eq!(outcome, "HIT");
    server.abort();
}

/// A body of 1-byte frames, `left` of them, always ready but for its first poll when
/// `pending_first`; counts its polls.
struct TinyFrames {
    left: usize,
    polls: Arc<AtomicUsize>,
    pending_first: bool,
}

impl http_body::Body for TinyFrames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.polls.fetch_add(1, Ordering::SeqCst) == 0 && self.pending_first {
            // Still being produced when the handler returns: the layer streams it.
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
    }
}

/// Reading a streamed body ahead of its client (see the test above) stops a bounded number of
/// frames ahead of a client that reads none, and lets the runtime's other tasks run meanwhile: a
/// body of 1-byte frames, always ready, was read on to the size limit whatever the client did,
/// keeping a current-thread server busy (it answered another request after 0.9 s), and the frames
/// read ahead held about 100 bytes each (107 MiB for a 1 MiB body; found by a probe). The first
/// check held before the bound too; the second failed without it (201,089 frames read ahead).
#[tokio::test]
async fn a_body_read_ahead_stops_a_bounded_number_of_frames_ahead_of_a_client_reading_none() {
    let polls = Arc::new(AtomicUsize::new(0));
    let frames = 1 << 20;
    let handler = {
        let polls = polls.clone();
        tower::service_fn(move |_: Request<Body>| {
            let polls = polls.clone();
            async move {
                Ok::<_, Infallible>(Response::new(TinyFrames {
                    left: frames,
                    polls,
                    pending_first: true,
                }))
            }
        })
    };
    let layer = CacheLayer::new(memory_cache())
        .expire(60)
        .max_body_size(2 << 20);
    let service = tower::Layer::layer(&layer, handler);
    let request = Request::get("http://x/tiny").body(Body::empty()).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let read_at_another_tasks_turn = tokio::spawn({
        let polls = polls.clone();
        async move { polls.load(Ordering::SeqCst) }
    })
    .await
    .unwrap();
    assert!(
        read_at_another_tasks_turn < 1000,
        "{read_at_another_tasks_turn} frames read before another task's turn"
    );
    // Long enough for the reading to go as far as it goes without the client.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read_ahead = polls.load(Ordering::SeqCst);
    assert!(read_ahead < 5000, "{read_ahead} frames read ahead");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), frames);
    // Its copy (small frames are copied together) was stored whole.
    let request = Request::get("http://x/tiny").body(Body::empty()).unwrap();
    let hit = service.oneshot(request).await.unwrap();
    let cache_status = hit.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(cache_status.contains("hit"), "{cache_status}");
    let body = hit.into_body().collect().await.unwrap().to_bytes();
    assert!(body.len() == frames && body.iter().all(|b| *b == b'x'));
}

/// A body larger than the size limit, all of it ready when the handler returns, reaches its
/// client whole, with the frames read before the layer knew it too large copied together: each
/// was kept as the handler's frame, about 100 bytes apiece for 1-byte frames (the same class as
/// the read-ahead's copy, above). The client got 8,192 frames here before, 4,096 now (one for
/// the 4,097 bytes read, then the rest as the handler sends it).
#[tokio::test]
async fn a_too_large_body_of_tiny_ready_frames_is_replayed_with_what_was_read_copied_together() {
    let frames = 8192;
    let handler = tower::service_fn(move |_: Request<Body>| async move {
        Ok::<_, Infallible>(Response::new(TinyFrames {
            left: frames,
            polls: Arc::default(),
            pending_first: false,
        }))
    });
    let layer = CacheLayer::new(memory_cache())
        .expire(60)
        .max_body_size(4096);
    let service = tower::Layer::layer(&layer, handler);
    let request = Request::get("http://x/tiny").body(Body::empty()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache_status.contains("detail=too-large"), "{cache_status}");
    let mut body = response.into_body();
    let (mut received, mut bytes) = (0, 0);
    while let Some(frame) = body.frame().await {
        received += 1;
        bytes += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(bytes, frames);
    assert!(received <= frames - 4096, "{received} frames");
}

/// A body of unknown length that fails after a chunk ready at once reaches an HTTP client as a
/// failure, as it does without the layer: the layer's body once declared the exact length of
/// the chunk it had read, so hyper sent `Content-Length: 4`, stopped before the error, and the
/// client got a complete, truncated 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_after_its_first_chunk_fails_for_the_client_over_tcp() {
    let app: Router = Router::new()
        .route(
            "/broken",
            get(|| async { Body::new(support::BreaksAfter(Some(Bytes::from("part")))) }),
        )
        .layer(CacheLayer::new(memory_cache()).expire(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..2 {
        let request = Request::get(format!("http://{addr}/broken"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        // The failure shows in the response's head or in its body, as hyper writes them.
        if let Ok(response) = client.request(request).await {
            let read = response.into_body().collect().await.map(|b| b.to_bytes());
            assert!(read.is_err(), "a complete body: {read:?}");
        }
    }
    server.abort();
}

/// End to end: axum over TCP, a real HTTP client, a real Redis. Stored → the next request is a
/// HIT read back from Redis (not from process memory), HEAD from the GET entry, purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_tcp_with_redis() {
    let redis = RedisServer::start();
    let cache = Cache::builder(RedisCacheRepository::new(&redis.url()).unwrap())
        .key_prefix("e2e")
        .version(3)
        .build();
    let layer = CacheLayer::new(cache.clone()).expire(30);
    let hits = Hits::default();
    let app: Router = Router::new()
        .route("/users/{id}", get(show_user))
        .layer(layer.clone())
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (x1, b1, h1) = fetch(addr, "GET", "/users/1?b=2&a=1").await;
    assert_eq!(
        (x1.as_str(), b1.as_ref()),
        ("MISS", &b"user 1 (call 1)"[..])
    );
    assert!(h1.get("etag").is_some());
    // Wait for the background store to reach Redis.
    let key = layer.request_key(
        &Request::get("/users/1?a=1&b=2")
            .header("host", addr.to_string())
            .body(())
            .unwrap(),
    );
    assert!(key.starts_with("e2e:3:http:127.0.0.1%3A"), "{key}");
    for _ in 0..400 {
        if redis.keys().contains(&format!("{key}:v")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One key for the response: the URL's record holds the entry (the response has no Vary).
    // Beside it, the namespace's list of the hosts that stored responses (for `purge_url` on
    // any host).
    let hosts_list = "e2e:3:__impcache_hosts:http";
    let mut keys = redis.keys();
    keys.sort();
    assert_eq!(keys, [hosts_list.to_owned(), format!("{key}:v")]);
    let hosts: String = redis.cmd(&["GET", hosts_list]);
    assert_eq!(hosts, format!("{}\n", addr.to_string().replace(':', "%3A")));
    let ttl: i64 = redis.cmd(&["TTL", &format!("{key}:v")]);
    assert!((1..=30).contains(&ttl), "{ttl}");
    // A new layer (no in-process state) over the same Redis: the entry is read back, with one
    // GET of one key.
    let () = redis.cmd(&["CONFIG", "RESETSTAT"]);
    let (x2, b2, h2) = fetch(addr, "GET", "/users/1?a=1&b=2").await;
    assert_eq!((x2.as_str(), b2.as_ref()), ("HIT", &b"user 1 (call 1)"[..]));
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    let reads: Vec<&str> = stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_get:") || line.starts_with("cmdstat_mget:"))
        .collect();
    assert_eq!(reads.len(), 1, "{stats}");
    assert!(reads[0].starts_with("cmdstat_get:calls=1,"), "{stats}");
    assert!(h2.get("age").is_some());
    assert_eq!(h2.get("etag"), h1.get("etag"));
    let (x3, b3, h3) = fetch(addr, "HEAD", "/users/1?a=1&b=2").await;
    assert_eq!((x3.as_str(), b3.len()), ("HIT", 0));
    assert_eq!(h3.get("content-length").unwrap(), "15");

    let fresh_app: Router = Router::new()
        .route("/users/{id}", get(show_user))
        .layer(CacheLayer::new(cache.clone()))
        .with_state(hits.clone());
    let response = fresh_app
        .oneshot(
            Request::get("/users/1?a=1&b=2")
                .header("host", addr.to_string())
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let cache_status = response.headers()["cache-status"].to_str().unwrap();
    assert!(cache_status.starts_with("impcache; hit"), "{cache_status}");

    // Purge every URL under /users/ on any host.
    assert_eq!(layer.purge_prefix(None, "/users/").await.unwrap(), 1);
    assert_eq!(redis.keys(), [hosts_list]);
    let (x4, b4, _) = fetch(addr, "GET", "/users/1?a=1&b=2").await;
    assert_eq!(
        (x4.as_str(), b4.as_ref()),
        ("MISS", &b"user 1 (call 2)"[..])
    );
    // Everything of the namespace, the list of hosts included.
    for _ in 0..400 {
        if redis.keys().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(layer.purge_all().await.unwrap(), 1);
    assert!(redis.keys().is_empty(), "{:?}", redis.keys());
    server.abort();
}

/// A GET through `app`, with a host: (body, `Cache-Status`).
#[cfg(feature = "axum")]
async fn nested_get(app: &Router, method: &str, uri: &str) -> (Bytes, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (body, cache_status)
}

/// A router `nest`ed under a prefix hands its layers the path without the prefix: with the `axum`
/// feature the keys are made of the URL the client sent, so one layer on two nested routers with
/// the same route keeps `/a/x` and `/b/x` apart.
#[cfg(feature = "axum")]
#[tokio::test]
async fn nested_routers_sharing_a_layer_keep_their_urls_apart() {
    let layer = CacheLayer::new(memory_cache());
    let nested = |body: &'static str| {
        Router::new()
            .route("/x", get(move || async move { body }))
            .layer(layer.clone())
    };
    let app: Router = Router::new()
        .nest("/a", nested("from a"))
        .nest("/b", nested("from b"));
    // Until `/a/x` is a hit: its response is stored (in the background).
    for _ in 0..400 {
        let (body, cache_status) = nested_get(&app, "GET", "/a/x").await;
        assert_eq!(body, "from a");
        if cache_status.starts_with("impcache; hit") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (body, cache_status) = nested_get(&app, "GET", "/b/x").await;
    assert_eq!(body, "from b", "{cache_status}");
}

/// Only a stripped prefix is put back from the `OriginalUri`: a middleware inside the router
/// that rewrites the URL (here its query, from a header) changes what the handler answers, and
/// so the key. Keyed by the `OriginalUri` whole, the request without the header was served the
/// rewritten request's response.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_url_rewritten_inside_the_router_is_keyed_as_the_handler_sees_it() {
    let layer = CacheLayer::new(memory_cache());
    let greet = |axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
        format!("query={}", query.unwrap_or_default())
    };
    let language_to_query = |mut request: Request<Body>| async move {
        if let Some(language) = request.headers().get("x-lang").cloned() {
            let rewritten = format!(
                "{}?lang={}",
                request.uri().path(),
                language.to_str().unwrap()
            );
            *request.uri_mut() = rewritten.parse().unwrap();
        }
        request
    };
    let app: Router = Router::new().nest(
        "/api",
        Router::new()
            .route("/greet", get(greet))
            .layer(layer.clone())
            .layer(axum::middleware::map_request(language_to_query)),
    );
    let french = || {
        Request::get("/api/greet")
            .header("host", "example.com")
            .header("x-lang", "fr")
            .body(Body::empty())
            .unwrap()
    };
    // Until the rewritten request is a hit: its response is stored (in the background).
    for _ in 0..400 {
        let response = app.clone().oneshot(french()).await.unwrap();
        let hit = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("impcache; hit");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "query=lang=fr");
        if hit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (body, cache_status) = nested_get(&app, "GET", "/api/greet").await;
    assert_eq!(body, "query=", "{cache_status}");
}

/// Outside a nested router, a path rewritten before the cache is keyed as the handler sees it,
/// also a rewrite to `/` or to a suffix of the path: taken for a nest's stripped prefix, it was
/// keyed by the path the client sent, so `X-Original-URL: /` stored `/`'s response for every
/// client of `/static/app.js` (found by a probe).
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_path_rewritten_to_a_suffix_outside_a_nest_is_keyed_as_rewritten() {
    let layer = CacheLayer::new(memory_cache());
    let echo = |uri: http::Uri| async move { format!("path={}", uri.path()) };
    let original_url = |mut request: Request<Body>| async move {
        if let Some(url) = request.headers().get("x-original-url").cloned() {
            *request.uri_mut() = url.to_str().unwrap().parse().unwrap();
        }
        request
    };
    let app: Router = Router::new()
        .fallback(echo)
        .layer(layer.clone())
        .layer(axum::middleware::map_request(original_url));
    for (uri, rewritten) in [("/static/app.js", "/"), ("/en/admin", "/admin")] {
        let poisoned = || {
            Request::get(uri)
                .header("host", "example.com")
                .header("x-original-url", rewritten)
                .body(Body::empty())
                .unwrap()
        };
        // Until the rewritten request is a hit: its response is stored (in the background).
        for _ in 0..400 {
            let response = app.clone().oneshot(poisoned()).await.unwrap();
            let hit = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .starts_with("impcache; hit");
            if hit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (body, cache_status) = nested_get(&app, "GET", uri).await;
        assert_eq!(body, format!("path={uri}"), "{cache_status}");
    }
}

/// Inside a nested router, the URL the client sent is the one stored: `request_key` names its
/// key, `purge_url` removes it, and an unsafe request to it invalidates it.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_nested_url_is_keyed_purged_and_invalidated_as_the_client_sent_it() {
    let layer = CacheLayer::new(memory_cache());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { format!("call {n}") }
    };
    let api = Router::new()
        .route("/x", get(handler).post(|| async { "posted" }))
        .layer(layer.clone());
    let app: Router = Router::new().nest("/api", api);
    let stored = || async {
        let request = Request::get("/api/x").header("host", "example.com");
        let key = format!("{}:v", layer.request_key(&request.body(()).unwrap()));
        support::wait_value(layer.cache(), &key, |value| value.is_some()).await;
    };
    assert_eq!(nested_get(&app, "GET", "/api/x").await.0, "call 1");
    stored().await;
    let (body, cache_status) = nested_get(&app, "GET", "/api/x").await;
    assert_eq!(
        (body.as_ref(), cache_status.as_str()),
        (&b"call 1"[..], "impcache; hit; ttl=60")
    );
    layer
        .purge_url(Some("example.com"), "/api/x")
        .await
        .unwrap();
    assert_eq!(nested_get(&app, "GET", "/api/x").await.0, "call 2");
    stored().await;
    nested_get(&app, "POST", "/api/x").await;
    assert_eq!(nested_get(&app, "GET", "/api/x").await.0, "call 3");
}
