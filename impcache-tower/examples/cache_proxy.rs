//! A caching reverse proxy: every request (any method) is forwarded to an origin, through
//! [`CacheLayer`] over an in-memory [`Cache`]. It is what `scripts/cache-tests.sh` runs the public
//! HTTP cache test suite (`http-cache-tests`) against.
//!
//! ```text
//! cargo run -p impcache-tower --example cache_proxy -- <listen-port> <origin> [default|follow-origin]
//! ```
//!
//! `origin` is `http://host:port`. `follow-origin` builds the layer with
//! [`follow_origin(true)`](CacheLayer::follow_origin) (an RFC 9111 shared cache); `default` keeps
//! the layer's defaults (the server owns its cache). In `follow-origin` mode, `Surrogate-Control` is
//! the layer's [targeted field](CacheLayer::targeted_cache_control), and a stored response answers
//! for an origin that cannot be reached (RFC 9111 §4.2.4: the cache is disconnected), as nginx's
//! `proxy_cache_use_stale error timeout`: the proxy is a tower service whose error is "the origin
//! did not answer" (a refused or closed connection), the layer's
//! [`stale_if_error`](CacheLayer::stale_if_error) window stands a stale response in for that error,
//! and only then is it turned into a `502 Bad Gateway`. The origin's own 5xx responses are passed
//! on (`stale_if_error_statuses` is empty): the origin was reached, and only a response's own
//! `stale-if-error` lets a cache hide them. `must-revalidate`, `proxy-revalidate`, `no-cache` and
//! `s-maxage` responses are never served stale.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test harness: a broken setup must fail loudly

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleError;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderName, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use impcache::{Cache, MemoryCacheRepository};
use impcache_tower::CacheLayer;
use tower::Layer;

#[derive(Clone)]
struct Origin {
    client: Client<HttpConnector, Body>,
    base: String,
}

/// Forwards `request` to the origin, unchanged but for its URI and its `Connection` field. The
/// error: the origin did not answer.
async fn forward(origin: Origin, mut request: Request) -> Result<Response, OriginError> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = match format!("{}{}", origin.base, path_and_query).parse() {
        Ok(uri) => uri,
        Err(_) => return Ok(StatusCode::BAD_REQUEST.into_response()),
    };
    *request.uri_mut() = uri;
    request.headers_mut().remove(http::header::CONNECTION);
    let mut response = origin.client.request(request).await?.map(Body::new);
    // The proxy's own HTTP version, not the origin's (RFC 9110 §6.2): an HTTP/1.0 origin's
    // misses reached HTTP/1.1 clients as `HTTP/1.0 200 OK`, its hits as HTTP/1.1 (found by a
    // probe); the server answers in the version of the client's connection.
    *response.version_mut() = http::Version::default();
    Ok(response)
}

/// The origin did not answer (connection refused, closed before a response, …).
type OriginError = hyper_util::client::legacy::Error;

/// The proxy's answer when the origin did not, and no stale response stood in for it.
async fn bad_gateway(error: OriginError) -> Response {
    (StatusCode::BAD_GATEWAY, error.to_string()).into_response()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: cache_proxy <listen-port> <origin http://host:port> [default|follow-origin]";
    let port: u16 = args.next().expect(usage).parse().expect(usage);
    let base = args.next().expect(usage).trim_end_matches('/').to_owned();
    let mode = args.next().unwrap_or_else(|| "default".to_owned());
    let cache = Cache::new(MemoryCacheRepository::new());
    let layer = match mode.as_str() {
        "default" => CacheLayer::new(cache),
        // Surrogate-Control (W3C Edge Architecture) as this cache's targeted field: the suite
        // tests it as one. Stale responses answer for an unreachable origin for up to a day.
        "follow-origin" => CacheLayer::new(cache)
            .follow_origin(true)
            .targeted_cache_control(HeaderName::from_static("surrogate-control"))
            .stale_if_error(Duration::from_secs(24 * 60 * 60))
            .stale_if_error_statuses([]),
        other => panic!("unknown mode {other}; {usage}"),
    };
    let origin = Origin {
        // Idle connections are dropped before the origin's keep-alive timeout (node's: 5 s) can
        // close one under a request: a request written to a closing connection fails, and one
        // with a body (the suite's setup `PUT`s) is not retried.
        client: Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build_http(),
        base,
    };
    let proxy = tower::service_fn(move |request: Request| forward(origin.clone(), request));
    let app = Router::new().fallback_service(HandleError::new(layer.layer(proxy), bad_gateway));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("cache_proxy ({mode}) listening on http://{addr}");
    axum::serve(listener, app).await.expect("serve");
}
