//! An axum application whose user pages are cached by `impcache_tower::CacheLayer`, with an admin
//! route that purges them (`Cache::delete_pattern` underneath).
//!
//! Run with
//! ```text
//! cargo run -p impcache-examples --example axum_app
//! ```
//! By default it serves on a free port, requests itself (MISS, HIT, HEAD, purge, MISS), prints what
//! it saw and exits. `IMPCACHE_EXAMPLE_SERVE=1` keeps serving on `127.0.0.1:3000` (or `$PORT`)
//! instead. The cache is in memory unless `REDIS_URL` is set (`redis://127.0.0.1:6379/0`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_tower::CacheLayer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
struct AppState {
    renders: Arc<AtomicU64>,
    /// Kept to purge: the layer (cheap to clone) knows the key layout.
    cache_layer: CacheLayer,
    admin_token: String,
}

async fn show_user(State(state): State<AppState>, Path(id): Path<u64>) -> String {
    let n = state.renders.fetch_add(1, Ordering::SeqCst) + 1;
    format!("user {id} (render #{n})\n")
}

/// `POST /admin/purge?prefix=/users/` or `?url=/users/42`: removes the stored responses.
async fn purge(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> (StatusCode, String) {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(state.admin_token.as_str());
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n".to_owned());
    }
    let query = query.unwrap_or_default();
    let result = match query.split_once('=') {
        Some(("prefix", prefix)) => state.cache_layer.purge_prefix(None, prefix).await,
        Some(("url", url)) => state.cache_layer.purge_url(None, url).await,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "use ?prefix=/path/ or ?url=/path\n".to_owned(),
            )
        }
    };
    match result {
        Ok(removed) => (StatusCode::OK, format!("purged {removed} keys\n")),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("purge failed: {error}\n"),
        ),
    }
}

fn cache() -> Result<Cache, impcache::Error> {
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("cache: Redis at {url}");
            Cache::builder(
                RedisCacheRepository::builder(url)
                    .deadline(Duration::from_millis(200))
                    .build()?,
            )
        }
        Err(_) => {
            println!("cache: in memory (set REDIS_URL to use Redis)");
            Cache::builder(MemoryCacheRepository::new())
        }
    };
    Ok(builder.key_prefix("axum-example").version(1).build())
}

fn app(cache: Cache) -> Router {
    let cache_layer = CacheLayer::new(cache).expire(60);
    let state = AppState {
        renders: Arc::new(AtomicU64::new(0)),
        cache_layer: cache_layer.clone(),
        admin_token: std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| "example-token".to_owned()),
    };
    Router::new()
        .route("/users/{id}", get(show_user))
        // Only the routes above are cached; the admin route below is not.
        .route_layer(cache_layer)
        .route("/admin/purge", post(purge))
        .with_state(state)
}

/// One HTTP/1.1 request over a raw TCP connection; returns the status line, the `Cache-Status`
/// header (with the `Age`, on a hit) and the body.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> std::io::Result<(String, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    };
    let cache_status = match header("age").as_str() {
        "" => header("cache-status"),
        age => format!("{} (age {age})", header("cache-status")),
    };
    Ok((status, cache_status, body.trim_end().to_owned()))
}

async fn self_test(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let mut seen = Vec::new();
    let steps: [(&str, &str, &str); 5] = [
        ("GET", "/users/42", ""),
        ("GET", "/users/42", ""),
        ("HEAD", "/users/42", ""),
        (
            "POST",
            "/admin/purge?prefix=/users/",
            "Authorization: Bearer example-token\r\n",
        ),
        ("GET", "/users/42", ""),
    ];
    for (i, (method, path, extra)) in steps.into_iter().enumerate() {
        if method == "POST" {
            // Stores run in the background; give the MISS's write a moment to land first.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, cache_status, body) = request(addr, method, path, extra).await?;
        println!(
            "{}. {method} {path} -> {status} | cache-status: {cache_status} | {body}",
            i + 1
        );
        let outcome = if cache_status.is_empty() {
            ""
        } else if cache_status.starts_with("impcache; hit") {
            "HIT"
        } else {
            "MISS"
        };
        seen.push(outcome);
    }
    let expected = ["MISS", "HIT", "HIT", "", "MISS"];
    if seen != expected {
        return Err(format!("expected {expected:?}, saw {seen:?}").into());
    }
    println!("self-test passed: MISS, HIT, HEAD from the GET entry, purge, MISS");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(cache()?);
    if std::env::var("IMPCACHE_EXAMPLE_SERVE").is_ok_and(|v| v == "1") {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
        println!("serving on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let result = self_test(addr).await;
    server.abort();
    result
}
