//! Case 5: HTTP requests per second through axum over loopback, with an in-process hyper client:
//! cached hits through `impcache_tower::CacheLayer` (Redis) against a handler that does one raw
//! Redis `GET` and returns the bytes, and against an uncached handler with 2 ms of work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use impcache_benches::{side_by_side, Contender, Small};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use redis::aio::ConnectionManager;

use crate::cases::{leaked_cache, raw_connection};
use crate::{count, Config, Results};

const KEYS: u64 = 1_000;

/// Responses of the cached route that were not hits once warmed up.
static NOT_HIT: AtomicU64 = AtomicU64::new(0);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn body_of(id: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&Small::new(id)).expect("encode"))
}

async fn origin(Path(id): Path<u64>) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    ([(CONTENT_TYPE, "application/json")], body_of(id))
}

async fn slow(Path(id): Path<u64>) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    tokio::time::sleep(Duration::from_millis(2)).await;
    ([(CONTENT_TYPE, "application/json")], body_of(id))
}

async fn raw_get(
    State(conn): State<ConnectionManager>,
    Path(id): Path<u64>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Bytes), axum::http::StatusCode> {
    let mut conn = conn;
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("http:{id}"))
        .query_async(&mut conn)
        .await
        .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
    match value {
        Some(bytes) => Ok(([(CONTENT_TYPE, "application/json")], Bytes::from(bytes))),
        None => Err(axum::http::StatusCode::NOT_FOUND),
    }
}

async fn fetch(client: &HttpClient, uri: hyper::Uri, expect_hit: bool) -> Result<usize, String> {
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    if expect_hit
        && response
            .headers()
            .get(impcache_tower::CACHE_STATUS)
            .is_none_or(|v| !v.as_bytes().starts_with(b"impcache; hit"))
    {
        NOT_HIT.fetch_add(1, Ordering::Relaxed);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().len())
}

pub(crate) async fn http(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 5: HTTP through axum (CacheLayer hits vs raw GET handler vs 2 ms handler)");
    let cache = leaked_cache(server).clone();
    let raw = raw_connection(server).await;
    {
        let mut conn = raw.clone();
        let mut pipe = redis::pipe();
        for id in 0..KEYS {
            pipe.cmd("SET")
                .arg(format!("http:{id}"))
                .arg(body_of(id).to_vec())
                .arg("EX")
                .arg(300)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("populate");
    }
    // The same layer without the optional response headers: no status headers, no computed ETag.
    let lean = CacheLayer::new(cache.clone())
        .expire(300)
        .namespace("lean")
        .status_header(impcache_tower::StatusHeader::None)
        .compute_etag(false);
    let app = Router::new()
        .route("/cached/{id}", get(origin))
        .route_layer(CacheLayer::new(cache).expire(300))
        .merge(
            Router::new()
                .route("/lean/{id}", get(origin))
                .route_layer(lean),
        )
        .merge(
            Router::new()
                .route("/raw/{id}", get(raw_get))
                .route("/slow/{id}", get(slow))
                .with_state(raw),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let uris = |route: &str| -> Arc<Vec<hyper::Uri>> {
        Arc::new(
            (0..KEYS)
                .map(|id| format!("http://{addr}/{route}/{id}").parse().expect("uri"))
                .collect(),
        )
    };
    let (cached_uris, raw_uris, slow_uris) = (uris("cached"), uris("raw"), uris("slow"));
    let lean_uris = uris("lean");
    // Warm the cached routes: every URL once (misses, stored in the background).
    for uri in cached_uris.iter().chain(lean_uris.iter()) {
        fetch(&client, uri.clone(), false).await.expect("warm up");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pick = |task: usize, i: u64| ((task as u64 * 7_919 + i * 13) % KEYS) as usize;
    let contender = |name: &str, uris: Arc<Vec<hyper::Uri>>, expect_hit: bool| {
        let client = client.clone();
        Contender {
            name: name.to_owned(),
            op: Arc::new(move |task: usize, i: u64| {
                let client = client.clone();
                let uri = uris[pick(task, i)].clone();
                async move { count(fetch(&client, uri, expect_hit).await) }
            }),
        }
    };
    let cached = contender("CacheLayer hit", cached_uris, true);
    let raw = contender("raw GET handler", Arc::clone(&raw_uris), false);
    let raw_again = contender("raw GET handler, again", raw_uris, false);
    let slow = contender("2 ms handler", slow_uris, false);
    // No `Cache-Status` on these responses: they are not counted as hits or misses.
    let lean = contender("CacheLayer hit, no optional headers", lean_uris, false);
    let before = NOT_HIT.load(Ordering::Relaxed);
    for c in [16, 64, 256] {
        results
            .add(side_by_side("http GET 100B", c, config.timing, &cached, &raw, Some(0.9)).await);
        results.add(side_by_side("http GET 100B", c, config.timing, &cached, &slow, None).await);
        let case = "http GET 100B (layer without status headers and ETag)";
        results.add(side_by_side(case, c, config.timing, &lean, &raw, None).await);
        let case = "http GET 100B (A/A: raw GET handler against itself)";
        results.add(side_by_side(case, c, config.timing, &raw, &raw_again, None).await);
    }
    let not_hit = NOT_HIT.load(Ordering::Relaxed) - before;
    if not_hit > 0 {
        results.note(format!(
            "http: {not_hit} responses of the cached route were not HITs"
        ));
    }
    server_task.abort();
}
