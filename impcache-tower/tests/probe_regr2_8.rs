//! Regression probe after 2be0d11 (absolute-form default port left out of the key, a Host
//! field's port kept): a POST whose response's `Location` names the same URL with the default
//! port, for requests whose Host field carries that port (and without), must still remove the
//! stored GET responses (RFC 9111 §4.4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use impcache_tower::CacheLayer;
use support::*;

fn req(method: &str, uri: &str, host: &str) -> Request<Body> {
    Request::builder().method(method).uri(uri).header("host", host).body(Body::empty()).unwrap()
}

async fn case(host: &str, location: &str) -> (usize, usize) {
    let layer = CacheLayer::new(memory_cache());
    let loc = location.to_owned();
    let (svc, calls) = app(layer.clone(), move |n, r: Request<Body>| {
        let loc = loc.clone();
        async move {
            if r.method() == http::Method::POST {
                Response::builder().status(StatusCode::CREATED).header("location", loc).body(Body::empty()).unwrap()
            } else {
                Response::new(Body::from(format!("call {n}")))
            }
        }
    });
    send(&svc, req("GET", "/x", host)).await;
    wait_stored_host(&layer, host).await;
    send(&svc, req("GET", "/x", host)).await;
    let before = calls.get();
    send(&svc, req("POST", "/y", host)).await;
    send(&svc, req("GET", "/x", host)).await;
    (before, calls.get())
}

async fn wait_stored_host(_layer: &CacheLayer, _host: &str) {
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_with_default_port_purges() {
    let mut bad = Vec::new();
    for (host, loc) in [
        ("example.com:443", "https://example.com:443/x"),
        ("example.com:80", "http://example.com:80/x"),
        ("example.com", "https://example.com:443/x"),
        ("example.com", "http://example.com:80/x"),
        ("example.com:443", "/x"),
        ("example.com", "/x"),
        ("example.com:443", "http://example.com:443/x"),
        ("example.com:8080", "https://example.com:8080/x"),
        ("example.com:8080", "http://example.com:8080/x"),
    ] {
        let (before, after) = case(host, loc).await;
        // before: GET (call 1), GET hit, then POST = +1; GET after must call the handler again.
        let purged = after == before + 2;
        eprintln!("Host {host}, Location {loc}: calls before POST {before}, after {after}: purged={purged}");
        if !purged {
            bad.push((host, loc));
        }
    }
    assert!(bad.is_empty(), "not purged: {bad:?}");
}
