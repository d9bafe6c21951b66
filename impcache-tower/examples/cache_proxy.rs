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
//! the layer's [targeted field](CacheLayer::targeted_cache_control).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test harness: a broken setup must fail loudly

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderName, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use impcache::{Cache, MemoryCacheRepository};
use impcache_tower::CacheLayer;

#[derive(Clone)]
struct Origin {
    client: Client<HttpConnector, Body>,
    base: String,
}

/// Forwards `request` to the origin, unchanged but for its URI (and the hop-by-hop fields).
async fn forward(State(origin): State<Origin>, mut request: Request) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = match format!("{}{}", origin.base, path_and_query).parse() {
        Ok(uri) => uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    *request.uri_mut() = uri;
    request.headers_mut().remove(http::header::CONNECTION);
    match origin.client.request(request).await {
        Ok(response) => response.map(Body::new),
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
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
        // tests it as one.
        "follow-origin" => CacheLayer::new(cache)
            .follow_origin(true)
            .targeted_cache_control(HeaderName::from_static("surrogate-control")),
        other => panic!("unknown mode {other}; {usage}"),
    };
    let origin = Origin {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base,
    };
    let app = Router::new()
        .fallback(forward)
        .with_state(origin)
        .layer(layer);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("cache_proxy ({mode}) listening on http://{addr}");
    axum::serve(listener, app).await.expect("serve");
}
