//! Issue 12 item 5: a successful unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`, …) removes the
//! stored responses of its URL and of the same-host URLs in `Location` / `Content-Location`
//! (RFC 9111 §4.4), before its response is sent; an error status removes nothing; the option
//! turns it off; with Redis killed or frozen the response is delayed by at most one deadline; a
//! GET whose handler call began before the write (or a purge) neither answers a request sent
//! after it nor is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use impcache::__private::members::Members;
use impcache::{Cache, NearCache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;
use tokio::sync::Notify;

const DEADLINE: Duration = Duration::from_millis(100);
/// The deadline of the tests of healthy paths ([`redis_layer`]).
const HEALTHY_DEADLINE: Duration = Duration::from_secs(5);
/// Bound for one request: the deadline, plus slack for a 2-core CI machine.
const BOUND: Duration = Duration::from_millis(100 + 900);

/// Everything logged through `tracing` by this test binary, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A handler driven by the request: GET answers `call {n}`, varying on `Accept` except under
/// `/plain` (a URL without `Vary`: its record holds its entry); any other method
/// answers the status in `x-status` (default 200), with the `Location` and `Content-Location`
/// given in `x-location` and `x-content-location`.
fn service(layer: CacheLayer) -> (Svc, Calls) {
    app(layer, |n, req: Request<Body>| async move {
        if req.method() == Method::GET {
            let mut response = Response::builder();
            if !is_plain(req.uri().path()) {
                response = response.header("vary", "accept");
            }
            return response.body(Body::from(format!("call {n}"))).unwrap();
        }
        let header = |name: &str| req.headers().get(name).map(|v| v.to_owned());
        let mut response = Response::builder().status(
            header("x-status")
                .map(|s| s.to_str().unwrap().parse::<u16>().unwrap())
                .unwrap_or(200),
        );
        if let Some(location) = header("x-location") {
            response = response.header("location", location);
        }
        if let Some(location) = header("x-content-location") {
            response = response.header("content-location", location);
        }
        response.body(Body::from(format!("changed {n}"))).unwrap()
    })
}

fn is_plain(uri: &str) -> bool {
    uri.starts_with("/plain")
}

fn html(uri: &str) -> Request<Body> {
    request("GET", uri, &[("accept", "text/html")])
}

fn json(uri: &str) -> Request<Body> {
    request("GET", uri, &[("accept", "application/json")])
}

/// Waits (bounded) until a HEAD with `accept` is a hit: the variant is stored (stores run in the
/// background). A HEAD miss calls the handler but stores nothing.
async fn wait_variant(svc: &Svc, uri: &str, accept: &str) {
    for _ in 0..400 {
        let head = request("HEAD", uri, &[("accept", accept)]);
        if send(svc, head).await.outcome() == "HIT" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{uri} ({accept}) was never stored");
}

/// Stores both variants of each URL (the one entry of a `/plain` URL) and waits until both are
/// hits.
async fn store_all(svc: &Svc, uris: &[&str]) {
    for uri in uris {
        assert_eq!(send(svc, html(uri)).await.outcome(), "MISS", "{uri}");
        if !is_plain(uri) {
            assert_eq!(send(svc, json(uri)).await.outcome(), "MISS", "{uri}");
        }
    }
    for uri in uris {
        wait_variant(svc, uri, "text/html").await;
        wait_variant(svc, uri, "application/json").await;
        assert_eq!(send(svc, html(uri)).await.outcome(), "HIT", "{uri}");
        assert_eq!(send(svc, json(uri)).await.outcome(), "HIT", "{uri}");
    }
}

/// The outcome of a GET of each variant of `uri`. A `/plain` URL has one entry, which the first
/// request may store again for the second: the second repeats the first's outcome.
async fn outcomes(svc: &Svc, uri: &str) -> (&'static str, &'static str) {
    let first = send(svc, html(uri)).await.outcome();
    if is_plain(uri) {
        return (first, first);
    }
    (first, send(svc, json(uri)).await.outcome())
}

/// The POST-then-GET contract, on any cache: the very next GET of the URL is a miss in each
/// variant; another URL (another query) keeps its entries.
async fn a_successful_unsafe_request_invalidates_its_url(base: CacheLayer) {
    for method in ["POST", "PUT", "PATCH", "DELETE", "PURGE"] {
        // A namespace per method: the stores of the previous round's misses run in the background.
        let layer = base.clone().namespace(method);
        let (svc, _) = service(layer.clone());
        let uris = [
            "/items/1",
            "/items/1?tab=a",
            "/items/2",
            "/plain/1",
            "/plain/2",
        ];
        store_all(&svc, &uris).await;
        for changed in ["/items/1", "/plain/1"] {
            let seen = send(&svc, request(method, changed, &[])).await;
            assert_eq!(seen.status, StatusCode::OK);
            assert_eq!(seen.outcome(), "BYPASS", "{method}");
            // Read your own write: no wait between the response and the next request.
            assert_eq!(
                outcomes(&svc, changed).await,
                ("MISS", "MISS"),
                "{method} {changed}"
            );
        }
        for kept in ["/items/1?tab=a", "/items/2", "/plain/2"] {
            assert_eq!(outcomes(&svc, kept).await, ("HIT", "HIT"), "{kept}");
        }
    }
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_its_url_in_memory() {
    a_successful_unsafe_request_invalidates_its_url(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_unsafe_request_invalidates_its_url_on_redis() {
    let redis = RedisServer::start();
    a_successful_unsafe_request_invalidates_its_url(redis_layer(&redis)).await;
    // On the server: the URL's record is gone (its variants, of the record's generation, are
    // unreachable and expire with their TTL), the other URL's keys stay.
    let layer = redis_layer(&redis).namespace("on-the-server");
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1", "/items/2", "/plain/1", "/plain/2"]).await;
    let in_namespace = || {
        let keys = redis.keys();
        keys.into_iter()
            .filter(|k| k.contains(":on-the-server:"))
            .collect::<Vec<_>>()
    };
    assert_eq!(in_namespace().len(), 3 + 3 + 1 + 1);
    send(&svc, request("DELETE", "/items/1", &[])).await;
    send(&svc, request("DELETE", "/plain/1", &[])).await;
    let key = |uri: &str| layer.request_key(&get(uri));
    let keys = in_namespace();
    for gone in ["/items/1", "/plain/1"] {
        assert!(!keys.contains(&format!("{}:v", key(gone))), "{keys:?}");
    }
    assert_eq!(outcomes(&svc, "/items/1").await, ("MISS", "MISS"));
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with(&key("/items/2")))
            .count(),
        3
    );
    assert!(keys.contains(&format!("{}:v", key("/plain/2"))), "{keys:?}");
    // The two unreachable variants of /items/1 are left to expire.
    assert_eq!(keys.len(), 2 + 3 + 1, "{keys:?}");
}

#[tokio::test]
async fn a_redirect_invalidates_and_an_error_status_does_not() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1"]).await;
    for status in ["400", "404", "409", "500", "503"] {
        let failed = send(&svc, request("POST", "/items/1", &[("x-status", status)])).await;
        assert_eq!(failed.status.as_str(), status);
        assert_eq!(outcomes(&svc, "/items/1").await, ("HIT", "HIT"), "{status}");
    }
    for status in ["201", "204", "303"] {
        let layer = layer.clone().namespace(status);
        let (svc, _) = service(layer.clone());
        store_all(&svc, &["/items/1"]).await;
        send(&svc, request("POST", "/items/1", &[("x-status", status)])).await;
        assert_eq!(
            outcomes(&svc, "/items/1").await,
            ("MISS", "MISS"),
            "{status}"
        );
    }
}

#[tokio::test]
async fn turned_off_nothing_is_invalidated() {
    let layer = CacheLayer::new(memory_cache()).invalidate_on_unsafe_methods(false);
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1"]).await;
    for method in ["POST", "DELETE"] {
        assert_eq!(
            send(&svc, request(method, "/items/1", &[])).await.status,
            200
        );
        assert_eq!(outcomes(&svc, "/items/1").await, ("HIT", "HIT"), "{method}");
    }
}

#[tokio::test]
async fn safe_methods_and_stored_methods_invalidate_nothing() {
    let layer = CacheLayer::new(memory_cache())
        .methods([Method::GET, Method::from_bytes(b"QUERY").unwrap()]);
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1"]).await;
    for method in ["HEAD", "OPTIONS", "TRACE", "QUERY"] {
        send(&svc, request(method, "/items/1", &[])).await;
        assert_eq!(outcomes(&svc, "/items/1").await, ("HIT", "HIT"), "{method}");
    }
}

#[tokio::test]
async fn location_and_content_location_on_the_same_host_are_invalidated() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = service(layer.clone());
    let other_host = || {
        Request::get("/items/3")
            .header("host", "other.example")
            .body(Body::empty())
            .unwrap()
    };
    store_all(
        &svc,
        &["/items", "/items/1", "/items/2", "/items/5?x=1", "/items/6"],
    )
    .await;
    assert_eq!(send(&svc, other_host()).await.outcome(), "MISS");
    let other_key = format!("{}:v", layer.request_key(&other_host()));
    wait_value(layer.cache(), &other_key, |v| v.is_some()).await;
    let post = |location: &'static str, content_location: &'static str| {
        request(
            "POST",
            "/items",
            &[
                ("x-status", "201"),
                ("x-location", location),
                ("x-content-location", content_location),
            ],
        )
    };
    // Absolute path and absolute URL on the request's host.
    send(&svc, post("/items/1", "http://EXAMPLE.com/items/2")).await;
    assert_eq!(outcomes(&svc, "/items").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/items/1").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/items/2").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/items/6").await, ("HIT", "HIT"));
    // Relative references resolve against the request's URL (`/items`: `items/5` is a sibling
    // of `items`).
    send(&svc, post("items/5?x=1#top", "./items/6")).await;
    assert_eq!(outcomes(&svc, "/items/5?x=1").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/items/6").await, ("MISS", "MISS"));
    // A URL without `Vary` (its record is its entry).
    store_all(&svc, &["/plain/3"]).await;
    send(&svc, post("/plain/3", "/plain/3")).await;
    assert_eq!(outcomes(&svc, "/plain/3").await, ("MISS", "MISS"));
    // Another host's entries stay.
    assert_eq!(send(&svc, other_host()).await.outcome(), "HIT");
    send(
        &svc,
        post("http://other.example/items/3", "//other.example/items/3"),
    )
    .await;
    assert_eq!(send(&svc, other_host()).await.outcome(), "HIT");
}

/// A `Location` / `Content-Location` that names a stored URL as its client spells it
/// invalidates it, also when `url` percent-encodes some of its characters as it resolves the
/// reference (`'` in a query, `{ } "` in a path): keys are made of the request target as sent.
/// References already encoded, or relative ones, are invalidated as before.
#[tokio::test]
async fn location_spelled_as_the_stored_url_invalidates_it() {
    let cases = [
        ("/s?name=O'Brien", "/s?name=O'Brien"),
        ("/a{b}", "/a{b}"),
        ("/q\"x", "/q\"x"),
        ("/plain/{c}?q='1'", "plain/{c}?q='1'"),
        ("/a{b}/d", "http://example.com/a{b}/./d"),
        ("/s?q=a%20b", "/s?q=a%20b"),
        ("/p/%7Bid%7D", "/p/%7Bid%7D"),
    ];
    for (round, (stored, reference)) in cases.into_iter().enumerate() {
        for field in ["x-location", "x-content-location"] {
            // A namespace per round: the stores of the previous round's misses run in the
            // background.
            let layer = CacheLayer::new(memory_cache()).namespace(format!("{round}{field}"));
            let (svc, _) = service(layer.clone());
            store_all(&svc, &[stored, "/a{b}c"]).await;
            let headers = [("x-status", "201"), (field, reference)];
            send(&svc, request("POST", "/collection", &headers)).await;
            assert_eq!(
                outcomes(&svc, stored).await,
                ("MISS", "MISS"),
                "{field}: {reference}"
            );
            assert_eq!(
                outcomes(&svc, "/a{b}c").await,
                ("HIT", "HIT"),
                "{reference}"
            );
        }
    }
}

/// A layer over `redis` for the healthy paths: a deadline no loaded CI machine reaches, so a slow
/// moment fails no request (those tests count misses and calls, not time).
fn redis_layer(redis: &RedisServer) -> CacheLayer {
    redis_layer_with(redis, HEALTHY_DEADLINE)
}

/// A layer over `redis` whose calls give up after `deadline`.
fn redis_layer_with(redis: &RedisServer, deadline: Duration) -> CacheLayer {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(deadline)
        .build()
        .unwrap();
    CacheLayer::new(Cache::new(repository)).expire(60)
}

/// [`redis_layer`] over a near-cached `Cache` (issue 14), once its near cache is active: hits
/// are served from process memory, so an invalidation that skipped the near cache would leave
/// the next request of this process a hit.
async fn near_layer(redis: &RedisServer) -> CacheLayer {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(HEALTHY_DEADLINE)
        .build()
        .unwrap();
    let cache = Cache::builder(repository)
        .near_cache(NearCache::new())
        .build();
    let started = Instant::now();
    while !cache.is_near_cache_active() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "near cache not active"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    CacheLayer::new(cache).expire(60)
}

/// Sends a POST that invalidates three URLs (its own, `Location`, `Content-Location`); checks
/// that it is answered by the handler within [`BOUND`] and returns how long it took.
async fn timed_post(svc: &Svc) -> Duration {
    let started = Instant::now();
    let seen = send(
        svc,
        request(
            "POST",
            "/items",
            &[
                ("x-status", "201"),
                ("x-location", "/items/1"),
                ("x-content-location", "/items/2"),
            ],
        ),
    )
    .await;
    let took = started.elapsed();
    assert!(took < BOUND, "the POST took {took:?}");
    assert_eq!(seen.status, StatusCode::CREATED);
    assert!(seen.body.starts_with(b"changed "));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_unsafe_request_invalidates_its_url_through_a_near_cache() {
    let redis = RedisServer::start();
    let layer = near_layer(&redis).await;
    let near = layer.cache().clone();
    a_successful_unsafe_request_invalidates_its_url(layer).await;
    assert!(
        near.near_cache_stats().hits > 0,
        "{:?}",
        near.near_cache_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_does_not_fail_or_hold_up_an_unsafe_request() {
    let captured = captured_logs();
    let mut redis = RedisServer::start();
    let layer = redis_layer_with(&redis, DEADLINE);
    let (svc, calls) = service(layer.clone());
    store_all(&svc, &["/items"]).await;
    let before = calls.get();
    redis.kill();
    for _ in 0..3 {
        let took = timed_post(&svc).await;
        println!("POST with Redis killed: {took:?}");
    }
    assert_eq!(calls.get(), before + 3);
    // The failure is logged, without the path (a key: logged only when the cache records keys)
    // and never with the query (which may carry a secret).
    let seen = send(&svc, request("POST", "/items/9?token=t0p-s3cret", &[])).await;
    assert_eq!(seen.status, StatusCode::OK);
    let logs = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("WARN") && logs.contains("invalidation after an unsafe request failed"),
        "{logs}"
    );
    assert!(!logs.contains("/items/9"), "{logs}");
    assert!(!logs.contains("t0p-s3cret"), "{logs}");
    // With keys recorded: the path, still not the query.
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let recording = Cache::builder(repository).record_keys(true).build();
    let (svc, _) = service(CacheLayer::new(recording).expire(60));
    let seen = send(&svc, request("POST", "/items/10?token=t0p-s3cret", &[])).await;
    assert_eq!(seen.status, StatusCode::OK);
    let logs = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("/items/10"), "{logs}");
    assert!(!logs.contains("t0p-s3cret"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_delays_an_unsafe_request_by_at_most_one_deadline() {
    let redis = RedisServer::start();
    let layer = redis_layer_with(&redis, DEADLINE);
    let (svc, calls) = service(layer.clone());
    // Connected first, so the freeze hits a live connection (the slow case, not the refused one).
    store_all(&svc, &["/items"]).await;
    let before = calls.get();
    redis.freeze();
    for _ in 0..3 {
        let took = timed_post(&svc).await;
        println!("POST with Redis frozen: {took:?} (deadline {DEADLINE:?})");
    }
    redis.thaw();
    assert_eq!(calls.get(), before + 3);
}

/// The cost of an invalidation on Redis, by the number of other keys on the server. Prints the
/// time of a POST that invalidates three URLs (its own, `Location`, `Content-Location`): without
/// `Vary` (the records are read, then removed: two round trips), and with `Vary` (a
/// `delete_pattern` sweep per URL: `SCAN` of the whole keyspace, 1,000 keys per round trip). Run
/// with `cargo test -p impcache-tower --test invalidation cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures, asserts nothing about them"]
async fn cost_of_an_invalidation_by_keyspace_size() {
    let redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url()).build().unwrap();
    let layer = CacheLayer::new(Cache::new(repository));
    let (svc, _) = service(layer.clone());
    for keys in [10_000, 100_000, 1_000_000] {
        let _: () = redis.cmd(&["DEBUG", "POPULATE", &keys.to_string(), "other"]);
        for prefix in ["/plain", "/items"] {
            let mut times = Vec::new();
            for round in 0..3 {
                // A fresh URL each round: the misses of the last one are stored again.
                let uri = format!("{prefix}/{keys}/{round}");
                store_all(&svc, &[&uri]).await;
                let started = Instant::now();
                let seen = send(
                    &svc,
                    request(
                        "POST",
                        &uri,
                        &[
                            ("x-status", "201"),
                            ("x-location", &format!("{prefix}/1")),
                            ("x-content-location", &format!("{prefix}/2")),
                        ],
                    ),
                )
                .await;
                times.push(started.elapsed());
                assert_eq!(seen.status, StatusCode::CREATED);
                assert_eq!(outcomes(&svc, &uri).await.0, "MISS");
            }
            println!("POST under {prefix} with {keys} other keys on the server: {times:?}");
        }
    }
}

/// The server's `SCAN` statistics line (empty before the first `SCAN`).
fn scans(redis: &RedisServer) -> String {
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    stats
        .lines()
        .find(|line| line.starts_with("cmdstat_scan:"))
        .unwrap_or_default()
        .to_owned()
}

/// A URL with variants on a large database: removing its record is enough (its variants are of
/// the record's generation), so nothing sweeps the 2,000,000 keys and the response is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_with_variants_on_a_large_database_is_invalidated_without_a_sweep() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis).namespace("large");
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1", "/items/2"]).await;
    let _: () = redis.cmd(&["DEBUG", "POPULATE", "2000000", "other"]);
    let before = scans(&redis);
    let started = Instant::now();
    let seen = send(&svc, request("POST", "/items/1", &[])).await;
    let took = started.elapsed();
    assert_eq!(seen.status, StatusCode::OK);
    assert!(took < BOUND, "the POST took {took:?}");
    assert_eq!(scans(&redis), before, "no SCAN");
    assert_eq!(outcomes(&svc, "/items/1").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/items/2").await, ("HIT", "HIT"));
}

/// `purge_url` of one URL on a host: its records go (two round trips), its variants are misses at
/// once, another URL keeps its entries; on Redis nothing scans, even among 200,000 other keys.
async fn purge_url_without_a_scan(layer: CacheLayer) {
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1", "/items/2", "/plain/1"]).await;
    assert_eq!(
        layer
            .purge_url(Some("example.com"), "/items/1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        layer
            .purge_url(Some("example.com"), "/plain/1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(outcomes(&svc, "/items/1").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/plain/1").await.0, "MISS");
    assert_eq!(outcomes(&svc, "/items/2").await, ("HIT", "HIT"));
    // Stored again by those misses, the URL's variants are served under a new generation.
    wait_variant(&svc, "/items/1", "text/html").await;
    wait_variant(&svc, "/items/1", "application/json").await;
    assert_eq!(outcomes(&svc, "/items/1").await, ("HIT", "HIT"));
}

#[tokio::test]
async fn purge_url_without_a_scan_in_memory() {
    purge_url_without_a_scan(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_url_without_a_scan_on_redis() {
    let redis = RedisServer::start();
    let _: () = redis.cmd(&["DEBUG", "POPULATE", "200000", "other"]);
    let before = scans(&redis);
    purge_url_without_a_scan(redis_layer(&redis)).await;
    assert_eq!(scans(&redis), before, "no SCAN");
}

/// `purge_url` through a near cache: the purged URL is a miss at once in this process. It does
/// not discriminate a purge that skips the near cache (on loopback Redis's invalidation wins the
/// race here); `a_successful_unsafe_request_invalidates_its_url_through_a_near_cache`, on the
/// same removal code, does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_url_through_a_near_cache() {
    let redis = RedisServer::start();
    let layer = near_layer(&redis).await;
    let near = layer.cache().clone();
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1", "/plain/1"]).await;
    // Read from Redis and kept, then served from process memory.
    for _ in 0..2 {
        assert_eq!(outcomes(&svc, "/items/1").await, ("HIT", "HIT"));
        assert_eq!(outcomes(&svc, "/plain/1").await.0, "HIT");
    }
    let hits = near.near_cache_stats().hits;
    assert_eq!(outcomes(&svc, "/plain/1").await.0, "HIT");
    assert!(
        near.near_cache_stats().hits > hits,
        "{:?}",
        near.near_cache_stats()
    );
    for url in ["/items/1", "/plain/1"] {
        assert_eq!(layer.purge_url(Some("example.com"), url).await.unwrap(), 1);
    }
    // No wait: this process's copies went with the records.
    assert_eq!(outcomes(&svc, "/items/1").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/plain/1").await.0, "MISS");
}

/// `purge_url` of one URL among 200,000 and 1,000,000 other keys: by host (the records), on any
/// host (the list of hosts, then the records), and the sweep every `purge_url` did before (a
/// `delete_pattern` of the URL's pattern on any host). Prints the figures of BENCHMARKS.md
/// "Issue 16: purge_url without a scan"; asserts nothing about them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures, asserts nothing about them"]
async fn cost_of_purge_url_by_keyspace_size() {
    let redis = RedisServer::start();
    // A deadline the sweep's batches fit in on a large keyspace.
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let layer = CacheLayer::new(Cache::new(repository))
        .expire(60)
        .tag_prefixes(["/items/"]);
    let (svc, _) = service(layer.clone());
    for keys in ["200000", "1000000"] {
        let _: () = redis.cmd(&["DEBUG", "POPULATE", keys, "other"]);
        let (mut by_host, mut any_host, mut sweep) = (Vec::new(), Vec::new(), Vec::new());
        let (mut prefix_by_tag, mut prefix_sweep) = (Vec::new(), Vec::new());
        for round in 0..5 {
            let uri = format!("/items/{keys}-{round}");
            store_all(&svc, &[&uri]).await;
            let started = Instant::now();
            layer.purge_url(Some("example.com"), &uri).await.unwrap();
            by_host.push(started.elapsed());
            store_all(&svc, &[&uri]).await;
            let started = Instant::now();
            layer.purge_url(None, &uri).await.unwrap();
            any_host.push(started.elapsed());
            store_all(&svc, &[&uri]).await;
            let started = Instant::now();
            let pattern = layer.url_pattern(None, &uri);
            layer.cache().delete_pattern(&pattern).await.unwrap();
            sweep.push(started.elapsed());
            // `purge_prefix` of a declared prefix on any host (the list, one tag write), and the
            // sweep of the same prefix.
            store_all(&svc, &[&uri]).await;
            let started = Instant::now();
            layer.purge_prefix(None, "/items/").await.unwrap();
            prefix_by_tag.push(started.elapsed());
            store_all(&svc, &[&uri]).await;
            let started = Instant::now();
            let pattern = layer.prefix_pattern(None, "/items/");
            layer.cache().delete_pattern(&pattern).await.unwrap();
            prefix_sweep.push(started.elapsed());
        }
        for purge in [
            &mut by_host,
            &mut any_host,
            &mut sweep,
            &mut prefix_by_tag,
            &mut prefix_sweep,
        ] {
            purge.sort();
        }
        println!(
            "purge_url among {keys} keys, median of 5: by host {:?}, any host {:?}, \
             the sweep (SCAN) {:?}; purge_prefix of a declared prefix on any host {:?}, \
             the sweep of that prefix {:?}",
            by_host[2], any_host[2], sweep[2], prefix_by_tag[2], prefix_sweep[2]
        );
    }
}

/// A GET of `uri` on `host` (none: no `Host` at all), accepting HTML.
fn on_host(host: Option<&str>, uri: &str) -> Request<Body> {
    let mut builder = Request::builder().uri(uri).header("accept", "text/html");
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    builder.body(Body::empty()).unwrap()
}

/// Sends a GET of `uri` on `host` and waits until its URL's record is in the repository
/// (stores run in the background: a response delivered in this process is a hit before its
/// store lands).
async fn stored_on(layer: &CacheLayer, svc: &Svc, host: Option<&str>, uri: &str) {
    let record = format!("{}:v", layer.request_key(&on_host(host, uri)));
    send(svc, on_host(host, uri)).await;
    for _ in 0..400 {
        if layer
            .cache()
            .repository()
            .get(&record)
            .await
            .unwrap()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{uri} on {host:?} was never stored");
}

const HOSTS: [Option<&str>; 3] = [Some("a.example"), Some("B.example:8080"), None];

/// A purge given a path as written (`/café`, `/a b`) names the requests sent for it, which
/// carry it percent-encoded as clients send it (`/caf%C3%A9`): it removed nothing and said
/// `Ok(0)` (found by a probe). `purge_prefix` too.
#[tokio::test]
async fn a_purge_of_a_path_as_written_reaches_its_encoded_requests() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = service(layer.clone());
    for uri in ["/caf%C3%A9", "/a%20b?q=x%20y", "/docs/%C3%BCber/1"] {
        stored_on(&layer, &svc, None, uri).await;
    }
    assert_eq!(layer.purge_url(None, "/café").await.unwrap(), 1);
    assert_eq!(layer.purge_url(None, "/a b?q=x y").await.unwrap(), 1);
    // The record and its variant (this handler varies on `Accept`).
    assert_eq!(layer.purge_prefix(None, "/docs/über/").await.unwrap(), 2);
    for uri in ["/caf%C3%A9", "/a%20b?q=x%20y", "/docs/%C3%BCber/1"] {
        assert_eq!(
            send(&svc, on_host(None, uri)).await.outcome(),
            "MISS",
            "{uri}"
        );
    }
}

/// `purge_url` of a URL on any host, keys by host (the default): each store lists its host in
/// the namespace's list of hosts, so the purge reads the list and removes every host's records
/// (three round trips, no scan), a URL with `Vary` and one without; another URL keeps its
/// entries.
async fn purge_url_on_any_host_without_a_scan(layer: CacheLayer) {
    let (svc, _) = service(layer.clone());
    for host in HOSTS {
        for uri in ["/plain/1", "/items/1", "/plain/2"] {
            stored_on(&layer, &svc, host, uri).await;
        }
    }
    assert_eq!(layer.purge_url(None, "/plain/1").await.unwrap(), 3);
    assert_eq!(layer.purge_url(None, "/items/1").await.unwrap(), 3);
    for host in HOSTS {
        for (uri, outcome) in [
            ("/plain/1", "MISS"),
            ("/items/1", "MISS"),
            ("/plain/2", "HIT"),
        ] {
            let seen = send(&svc, on_host(host, uri)).await;
            assert_eq!(seen.outcome(), outcome, "{uri} on {host:?}");
        }
    }
    // Stored again, and purged again.
    for host in HOSTS {
        stored_on(&layer, &svc, host, "/plain/1").await;
    }
    assert_eq!(layer.purge_url(None, "/plain/1").await.unwrap(), 3);
    // A URL never stored: nothing to remove, nothing scanned.
    assert_eq!(layer.purge_url(None, "/never").await.unwrap(), 0);
}

/// `purge_all` removes the list of hosts with everything else; the next stores list their hosts
/// again, and a purge on any host finds them.
async fn after_purge_all_stores_list_their_hosts_again(layer: CacheLayer) {
    let (svc, _) = service(layer.clone());
    stored_on(&layer, &svc, Some("old.example"), "/plain/1").await;
    layer.purge_all().await.unwrap();
    let list = impcache::__private::members::read(layer.cache(), "__impcache_hosts:http");
    assert_eq!(list.await.unwrap(), Members::Listed(Vec::new()));
    for host in HOSTS {
        stored_on(&layer, &svc, host, "/plain/1").await;
    }
    assert_eq!(layer.purge_url(None, "/plain/1").await.unwrap(), 3);
}

#[tokio::test]
async fn after_purge_all_stores_list_their_hosts_again_in_memory() {
    after_purge_all_stores_list_their_hosts_again(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_purge_all_stores_list_their_hosts_again_on_redis() {
    let redis = RedisServer::start();
    after_purge_all_stores_list_their_hosts_again(redis_layer(&redis)).await;
}

#[tokio::test]
async fn purge_url_on_any_host_without_a_scan_in_memory() {
    purge_url_on_any_host_without_a_scan(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_url_on_any_host_without_a_scan_on_redis() {
    let redis = RedisServer::start();
    let _: () = redis.cmd(&["DEBUG", "POPULATE", "200000", "other"]);
    let before = scans(&redis);
    purge_url_on_any_host_without_a_scan(redis_layer(&redis)).await;
    assert_eq!(scans(&redis), before, "no SCAN");
}

/// Past 64 hosts the list stops growing and a purge on any host sweeps, removing them all.
#[tokio::test]
async fn purge_url_on_more_hosts_than_listed_sweeps() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = service(layer.clone());
    for i in 0..70 {
        stored_on(&layer, &svc, Some(&format!("h{i}.example")), "/plain/1").await;
    }
    assert_eq!(layer.purge_url(None, "/plain/1").await.unwrap(), 70);
    for i in [0, 69] {
        let seen = send(&svc, on_host(Some(&format!("h{i}.example")), "/plain/1")).await;
        assert_eq!(seen.outcome(), "MISS");
    }
}

/// With the host out of the keys there is no list to write: a store is one key.
#[tokio::test]
async fn without_keys_by_host_no_list_is_written() {
    let cache = memory_cache();
    let layer = CacheLayer::new(cache.clone()).key_by_host(false);
    let (svc, _) = service(layer.clone());
    stored_on(&layer, &svc, Some("a.example"), "/plain/1").await;
    let lists = cache.delete_pattern("__impcache_hosts:*").await.unwrap();
    assert_eq!(lists, 0);
    assert_eq!(layer.purge_url(None, "/plain/1").await.unwrap(), 1);
}

/// Scripts denied (an ACL without `EVAL`): the list of hosts cannot be added to, so it is marked
/// as holding too many hosts, the response is stored all the same, and a purge on any host
/// sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_scripts_denied_responses_are_stored_and_purges_sweep() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    let (svc, _) = service(layer.clone());
    let () = redis.cmd(&["ACL", "SETUSER", "default", "-eval"]);
    stored_on(&layer, &svc, Some("a.example"), "/plain/1").await;
    let list = format!(
        "{}:__impcache_hosts:http",
        layer.cache().make_key("").trim_end_matches(':')
    );
    let listed: String = redis.cmd(&["GET", &list]);
    assert_eq!(listed, "*\n");
    assert_eq!(
        send(&svc, on_host(Some("a.example"), "/plain/1"))
            .await
            .outcome(),
        "HIT"
    );
    let before = scans(&redis);
    assert_eq!(layer.purge_url(None, "/plain/1").await.unwrap(), 1);
    assert_ne!(scans(&redis), before, "a sweep");
    assert_eq!(
        send(&svc, on_host(Some("a.example"), "/plain/1"))
            .await
            .outcome(),
        "MISS"
    );
}

/// Sends GETs of `uri` on `host` until one is a hit (bounded): the response stored since the
/// last purge has landed.
async fn hit_again(svc: &Svc, host: Option<&str>, uri: &str) {
    for _ in 0..400 {
        if send(svc, on_host(host, uri)).await.outcome() == "HIT" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{uri} on {host:?} was never a hit again");
}

/// `purge_prefix` of a prefix declared with `tag_prefixes`: one tag invalidation hides every
/// response under it, on one host or on every listed host, whatever its query or `Vary` variant;
/// other paths and hosts keep theirs; nothing is removed (it counts 0), and what is stored after
/// the purge is served.
async fn purge_prefix_of_a_declared_prefix_by_tag(layer: CacheLayer) {
    let layer = layer.tag_prefixes(["/plain/users/", "/items/"]);
    let (svc, _) = service(layer.clone());
    let users = ["/plain/users/1", "/plain/users/2?tab=a"];
    for host in HOSTS {
        for uri in users.iter().chain(&["/plain/other/1"]) {
            stored_on(&layer, &svc, host, uri).await;
        }
    }
    store_all(&svc, &["/items/1", "/items/2?x=1"]).await;

    // On one host.
    let purged = layer.purge_prefix(Some("A.example"), "/plain/users/");
    assert_eq!(purged.await.unwrap(), 0);
    for host in HOSTS {
        let expected = if host == Some("a.example") {
            "MISS"
        } else {
            "HIT"
        };
        for uri in users {
            let seen = send(&svc, on_host(host, uri)).await;
            assert_eq!(seen.outcome(), expected, "{uri} on {host:?}");
        }
    }

    // On any host (the hosts listed by the stores), and a prefix of URLs with `Vary`.
    assert_eq!(layer.purge_prefix(None, "/plain/users/").await.unwrap(), 0);
    assert_eq!(layer.purge_prefix(None, "/items/").await.unwrap(), 0);
    for host in HOSTS {
        for uri in users {
            let seen = send(&svc, on_host(host, uri)).await;
            assert_eq!(seen.outcome(), "MISS", "{uri} on {host:?}");
        }
        let seen = send(&svc, on_host(host, "/plain/other/1")).await;
        assert_eq!(seen.outcome(), "HIT", "/plain/other/1 on {host:?}");
    }
    assert_eq!(outcomes(&svc, "/items/1").await, ("MISS", "MISS"));
    assert_eq!(outcomes(&svc, "/items/2?x=1").await, ("MISS", "MISS"));

    // Stored again by those misses, served again.
    for host in HOSTS {
        hit_again(&svc, host, users[0]).await;
    }
    wait_variant(&svc, "/items/1", "text/html").await;
}

#[tokio::test]
async fn purge_prefix_of_a_declared_prefix_by_tag_in_memory() {
    purge_prefix_of_a_declared_prefix_by_tag(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_of_a_declared_prefix_by_tag_on_redis_without_a_scan() {
    let redis = RedisServer::start();
    let _: () = redis.cmd(&["DEBUG", "POPULATE", "200000", "other"]);
    let before = scans(&redis);
    purge_prefix_of_a_declared_prefix_by_tag(redis_layer(&redis)).await;
    assert_eq!(scans(&redis), before, "no SCAN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_of_a_declared_prefix_by_tag_through_a_near_cache() {
    let redis = RedisServer::start();
    purge_prefix_of_a_declared_prefix_by_tag(near_layer(&redis).await).await;
}

/// `soft_purge_prefix` of a declared prefix marks its responses stale rather than hiding them:
/// within the stale-while-revalidate window one is served at once (`fwd=stale`) while one
/// background handler call refreshes it, then the new response is a hit; other paths stay fresh.
/// A prefix not declared cannot be marked: it is swept, and counted, as `purge_prefix` sweeps it.
async fn soft_purge_prefix_marks_a_declared_prefix_stale(layer: CacheLayer) {
    let layer = layer
        .tag_prefixes(["/plain/users/"])
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = service(layer.clone());
    let host = Some("a.example");
    stored_on(&layer, &svc, host, "/plain/users/1").await;
    stored_on(&layer, &svc, host, "/plain/other/1").await;
    assert_eq!(calls.get(), 2);

    let purged = layer
        .soft_purge_prefix(None, "/plain/users/")
        .await
        .unwrap();
    assert_eq!(purged, 0, "nothing removed");
    let seen = send(&svc, on_host(host, "/plain/users/1")).await;
    assert_eq!(seen.body, "call 1", "the stale response, at once");
    let status = seen.header("cache-status").unwrap();
    assert!(status.starts_with("impcache; hit; fwd=stale"), "{status}");
    let mut seen = send(&svc, on_host(host, "/plain/users/1")).await;
    for _ in 0..400 {
        if seen.body == "call 3" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen = send(&svc, on_host(host, "/plain/users/1")).await;
    }
    assert_eq!((seen.outcome(), &seen.body[..]), ("HIT", &b"call 3"[..]));
    assert_eq!(calls.get(), 3, "one background handler call");
    let other = send(&svc, on_host(host, "/plain/other/1")).await;
    let status = other.header("cache-status").unwrap();
    assert!(status.starts_with("impcache; hit; ttl="), "{status}");

    // Not declared: the sweep.
    let swept = layer
        .soft_purge_prefix(None, "/plain/other/")
        .await
        .unwrap();
    assert_eq!(swept, 1);
    let other = send(&svc, on_host(host, "/plain/other/1")).await;
    assert_eq!(other.outcome(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_prefix_marks_a_declared_prefix_stale_in_memory() {
    soft_purge_prefix_marks_a_declared_prefix_stale(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_prefix_marks_a_declared_prefix_stale_on_redis() {
    let redis = RedisServer::start();
    soft_purge_prefix_marks_a_declared_prefix_stale(redis_layer(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_prefix_marks_a_declared_prefix_stale_through_a_near_cache() {
    let redis = RedisServer::start();
    soft_purge_prefix_marks_a_declared_prefix_stale(near_layer(&redis).await).await;
}

/// An entry stored before its prefix was declared carries no prefix tag, so no purge by tag can
/// reach it: a layer declaring the prefix treats it as a miss and stores the response again, with
/// the tag. A prefix not declared (or with the hosts unknown) is swept and counted as before.
#[tokio::test]
async fn entries_stored_before_a_prefix_was_declared_are_misses() {
    let cache = memory_cache();
    let undeclared = CacheLayer::new(cache.clone());
    let (svc, _) = service(undeclared.clone());
    let host = Some("a.example");
    for uri in ["/plain/users/1", "/plain/other/1"] {
        stored_on(&undeclared, &svc, host, uri).await;
        assert_eq!(send(&svc, on_host(host, uri)).await.outcome(), "HIT");
    }

    let layer = CacheLayer::new(cache.clone()).tag_prefixes(["/plain/users/"]);
    let (svc, calls) = service(layer.clone());
    assert_eq!(
        send(&svc, on_host(host, "/plain/users/1")).await.outcome(),
        "MISS"
    );
    assert_eq!(calls.get(), 1);
    hit_again(&svc, host, "/plain/users/1").await;
    assert_eq!(
        send(&svc, on_host(host, "/plain/other/1")).await.outcome(),
        "HIT"
    );
    assert_eq!(layer.purge_prefix(None, "/plain/users/").await.unwrap(), 0);
    assert_eq!(
        send(&svc, on_host(host, "/plain/users/1")).await.outcome(),
        "MISS"
    );
    // Not declared: the sweep.
    assert_eq!(layer.purge_prefix(None, "/plain/other/").await.unwrap(), 1);
    assert_eq!(
        send(&svc, on_host(host, "/plain/other/1")).await.outcome(),
        "MISS"
    );
    // Declared, but the hosts unknown (their list gone): the sweep. The list removed once the
    // stores in progress have landed (each lists its host before it writes its record, and a
    // purge waits for them before it reads the list): those of `/plain/users/1` and
    // `/plain/other/1` began before that of `/plain/users/2`, whose record is written last.
    stored_on(&layer, &svc, host, "/plain/users/2").await;
    cache.delete("__impcache_hosts:http").await.unwrap();
    assert_eq!(layer.purge_prefix(None, "/plain/users/").await.unwrap(), 2);
}

/// A purge issued once the client has its response: the response's store may still be under
/// way (it runs in the background), and the purge must not let it land after it (a purged
/// response served until it expires). Each purge waits for this process's stores of what it
/// removes (`landing.rs`). Every kind of purge, and an unsafe method, right after the GET whose
/// response it removes; the next GET of the URL is a miss. `purge_tag` is stamped with its
/// handler call's start and needs no wait (`tags.rs`).
async fn a_purge_right_after_a_delivered_response_is_not_lost(layer: CacheLayer) {
    let (svc, calls) = service(layer.clone());
    for round in 0..10 {
        for purge in ["url", "url on any host", "prefix", "all", "POST"] {
            let uri = format!("/plain/{round}/{}", purge.replace(' ', "-"));
            let before = calls.get();
            assert_eq!(send(&svc, get(&uri)).await.outcome(), "MISS", "{uri}");
            match purge {
                "url" => drop(layer.purge_url(Some("example.com"), &uri).await.unwrap()),
                "url on any host" => drop(layer.purge_url(None, &uri).await.unwrap()),
                "prefix" => drop(layer.purge_prefix(None, "/plain/").await.unwrap()),
                "all" => drop(layer.purge_all().await.unwrap()),
                _ => {
                    let post = send(&svc, request("POST", &uri, &[])).await;
                    assert_eq!(post.status, StatusCode::OK);
                }
            }
            let after = send(&svc, get(&uri)).await;
            assert_eq!(
                after.outcome(),
                "MISS",
                "{uri}: served after the purge ({purge}), {:?}",
                after.header("cache-status")
            );
            // The GET, the POST when there was one, and the GET after the purge.
            let posted = usize::from(purge == "POST");
            assert_eq!(calls.get(), before + 2 + posted, "{uri}");
        }
    }
}

#[tokio::test]
async fn a_purge_right_after_a_delivered_response_is_not_lost_in_memory() {
    a_purge_right_after_a_delivered_response_is_not_lost(CacheLayer::new(memory_cache())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_right_after_a_delivered_response_is_not_lost_on_redis() {
    let redis = RedisServer::start();
    a_purge_right_after_a_delivered_response_is_not_lost(redis_layer(&redis)).await;
}

/// A document with a version: a GET reads it, then (with `x-delay: {ms}`, once it has told
/// `started`) takes that long to answer `version {n}`, varying on `Accept` except under `/plain`;
/// any other method writes a new version. Returns the service, its calls, the version and
/// `started`.
fn versioned(layer: CacheLayer) -> (Svc, Calls, Arc<AtomicUsize>, Arc<Notify>) {
    let version = Arc::new(AtomicUsize::new(1));
    let started = Arc::new(Notify::new());
    let (v, s) = (version.clone(), started.clone());
    let (svc, calls) = app(layer, move |_, req: Request<Body>| {
        let (version, started) = (v.clone(), s.clone());
        async move {
            if req.method() != Method::GET {
                version.fetch_add(1, Ordering::SeqCst);
                return Response::new(Body::from("written"));
            }
            let seen = version.load(Ordering::SeqCst);
            let delay = req.headers().get("x-delay");
            if let Some(delay) = delay.map(|d| d.to_str().unwrap().parse().unwrap()) {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut response = Response::builder();
            if !is_plain(req.uri().path()) {
                response = response.header("vary", "accept");
            }
            response
                .body(Body::from(format!("version {seen}")))
                .unwrap()
        }
    });
    (svc, calls, version, started)
}

/// `request` whose handler takes `ms` (see [`versioned`]).
fn delayed(mut request: Request<Body>, ms: u64) -> Request<Body> {
    let delay = http::HeaderValue::from(ms);
    request.headers_mut().insert("x-delay", delay);
    request
}

/// RFC 9111 §4.4 against a read already under way: a GET whose handler read the document before
/// a write is still running when the write's response goes out (an unsafe method's, or a purge's
/// after the data changed). The next GET does not join that GET's flight (its own handler call
/// reads the new version), and the older response, still the answer of the GET that asked before
/// the write, is never stored: the GETs after are hits of the new version. Every purge that
/// removes records or sweeps, and an unsafe method.
async fn a_read_begun_before_a_write_is_neither_joined_nor_stored_after_it(layer: CacheLayer) {
    let (svc, calls, version, started) = versioned(layer.clone());
    let writes = ["POST", "url", "url on any host", "prefix", "all"];
    for (round, write) in writes.into_iter().enumerate() {
        let uri = format!("/plain/{round}");
        let (old, before) = (version.load(Ordering::SeqCst), calls.get());
        let slow = tokio::spawn(send(&svc, delayed(get(&uri), 300)));
        started.notified().await;
        if write == "POST" {
            let post = send(&svc, request("POST", &uri, &[])).await;
            assert_eq!(post.status, StatusCode::OK);
        } else {
            version.fetch_add(1, Ordering::SeqCst);
            let purged = match write {
                "url" => layer.purge_url(Some("example.com"), &uri).await,
                "url on any host" => layer.purge_url(None, &uri).await,
                "prefix" => layer.purge_prefix(None, "/plain/").await,
                _ => layer.purge_all().await,
            };
            purged.unwrap();
        }
        let new = format!("version {}", old + 1);
        let mine = send(&svc, get(&uri)).await;
        assert_eq!(
            mine.body, new,
            "{write}: the read after the write joined the read before it"
        );
        let slow = slow.await.unwrap();
        assert_eq!(slow.body, format!("version {old}"), "{write}");
        let status = slow.header("cache-status").unwrap();
        assert!(!status.contains("stored"), "{write}: {status}");
        let later = send(&svc, get(&uri)).await;
        assert_eq!(
            (later.outcome(), later.body),
            ("HIT", new.into()),
            "{write}"
        );
        // The slow GET, the POST when there was one, the GET after the write.
        let posted = usize::from(write == "POST");
        assert_eq!(calls.get(), before + 2 + posted, "{write}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_begun_before_a_write_is_neither_joined_nor_stored_after_it_in_memory() {
    let layer = CacheLayer::new(memory_cache());
    a_read_begun_before_a_write_is_neither_joined_nor_stored_after_it(layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_begun_before_a_write_is_neither_joined_nor_stored_after_it_on_redis() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    a_read_begun_before_a_write_is_neither_joined_nor_stored_after_it(layer.clone()).await;
    // Another process (a layer of its own over the same Redis) reads the new version too: of
    // the last round's URL (the earlier rounds' were purged since), five writes later.
    let (other, calls) = counting(CacheLayer::new(layer.cache().clone()));
    let read = send(&other, get("/plain/4")).await;
    assert_eq!((read.outcome(), read.body), ("HIT", "version 6".into()));
    assert_eq!(calls.get(), 0);
}

/// The same race on a `Vary` variant's flight: a json GET begun before the write runs on its
/// variant's flight. After the write, an html GET leads the URL's flight and a json GET waits
/// for it, then, handed the html variant, joins its own variant's flight: not the one begun
/// before the write (its own handler call). The json response of before the write is stored
/// nowhere reachable: the GETs after are hits of the new version.
async fn a_variant_read_begun_before_a_write_is_not_joined_after_it(layer: CacheLayer) {
    let (svc, calls, _, started) = versioned(layer);
    let uri = "/items/doc";
    // The URL's `Vary` names are known (its html variant stored): a json miss is its variant's
    // flight.
    assert_eq!(send(&svc, html(uri)).await.body, "version 1");
    wait_variant(&svc, uri, "text/html").await;
    let slow = tokio::spawn(send(&svc, delayed(json(uri), 300)));
    started.notified().await;
    let post = send(&svc, request("POST", uri, &[])).await;
    assert_eq!(post.status, StatusCode::OK);
    let html_after = tokio::spawn(send(&svc, delayed(html(uri), 100)));
    started.notified().await;
    let json_after = send(&svc, json(uri)).await;
    assert_eq!(
        json_after.body, "version 2",
        "the json read after the write joined the one before it"
    );
    assert_eq!(html_after.await.unwrap().body, "version 2");
    assert_eq!(slow.await.unwrap().body, "version 1");
    // The html GETs, the json GETs, the POST.
    assert_eq!(calls.get(), 5);
    for read in [json(uri), html(uri)] {
        let seen = send(&svc, read).await;
        assert_eq!((seen.outcome(), seen.body), ("HIT", "version 2".into()));
    }
    assert_eq!(calls.get(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_read_begun_before_a_write_is_not_joined_after_it_in_memory() {
    a_variant_read_begun_before_a_write_is_not_joined_after_it(CacheLayer::new(memory_cache()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_read_begun_before_a_write_is_not_joined_after_it_on_redis() {
    let redis = RedisServer::start();
    a_variant_read_begun_before_a_write_is_not_joined_after_it(redis_layer(&redis)).await;
}

/// Whether the namespace's list of hosts exists and names `host` (as its key segment).
async fn listed(layer: &CacheLayer, host: &str) -> bool {
    let list = impcache::__private::members::read(layer.cache(), "__impcache_hosts:http");
    match list.await.unwrap() {
        Members::Listed(hosts) => hosts.iter().any(|listed| listed == host),
        other => panic!("no list of hosts: {other:?}"),
    }
}

/// A purge on any host reaches, in this process, the handler call of a URL on a host that is not
/// in the namespace's list of hosts yet (a host is listed at its first store, once its handler
/// call has returned), while another host is listed: the first GET of each round, on a host of
/// its own, begun before `purge_url(None, ..)` or before `purge_prefix` of a prefix declared with
/// `tag_prefixes` (a tag write, on any host or on that host). The GET after the purge does not
/// join it (its own handler call reads the new version), and its older response is not stored:
/// the GET after that is a hit of the new version.
async fn a_purge_on_any_host_reaches_a_read_on_a_host_not_listed_yet(layer: CacheLayer) {
    let layer = layer.tag_prefixes(["/plain/declared/"]);
    let (svc, calls, version, started) = versioned(layer.clone());
    stored_on(&layer, &svc, Some("a.example"), "/plain/declared/a").await;
    let purges = ["url", "declared prefix", "declared prefix on the host"];
    for (round, purge) in purges.into_iter().enumerate() {
        let uri = format!("/plain/declared/{round}");
        let host = format!("b{round}.example");
        let read = || on_host(Some(&host), &uri);
        let (old, before) = (version.load(Ordering::SeqCst), calls.get());
        let slow = tokio::spawn(send(&svc, delayed(read(), 300)));
        started.notified().await;
        assert!(listed(&layer, "a.example").await && !listed(&layer, &host).await);
        version.fetch_add(1, Ordering::SeqCst);
        let purged = match purge {
            "url" => layer.purge_url(None, &uri).await,
            "declared prefix" => layer.purge_prefix(None, "/plain/declared/").await,
            _ => layer.purge_prefix(Some(&host), "/plain/declared/").await,
        };
        purged.unwrap();
        let new = format!("version {}", old + 1);
        let mine = send(&svc, read()).await;
        assert_eq!(
            mine.body, new,
            "{purge}: the read after the purge joined the read before it"
        );
        let slow = slow.await.unwrap();
        assert_eq!(slow.body, format!("version {old}"), "{purge}");
        let status = slow.header("cache-status").unwrap();
        assert!(!status.contains("stored"), "{purge}: {status}");
        let later = send(&svc, read()).await;
        assert_eq!(
            (later.outcome(), later.body),
            ("HIT", new.into()),
            "{purge}"
        );
        // The slow GET and the GET after the purge.
        assert_eq!(calls.get(), before + 2, "{purge}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_any_host_reaches_a_read_on_a_host_not_listed_yet_in_memory() {
    let layer = CacheLayer::new(memory_cache());
    a_purge_on_any_host_reaches_a_read_on_a_host_not_listed_yet(layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_any_host_reaches_a_read_on_a_host_not_listed_yet_on_redis() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    a_purge_on_any_host_reaches_a_read_on_a_host_not_listed_yet(layer).await;
}

/// A purge on any host right after the first response on a host not listed yet was delivered:
/// its store, still under way, lists the host before it writes the record, so the purge waits
/// for it before it reads the list of hosts, and removes (or, for a declared prefix, hides) that
/// host's record too: the next GET is a miss.
async fn a_purge_on_any_host_right_after_a_first_response_on_a_host_is_not_lost(layer: CacheLayer) {
    let layer = layer.tag_prefixes(["/plain/declared/"]);
    let (svc, calls) = service(layer.clone());
    stored_on(&layer, &svc, Some("a.example"), "/plain/declared/a").await;
    for round in 0..10 {
        for purge in ["url", "declared prefix"] {
            let uri = format!("/plain/declared/{round}/{}", purge.replace(' ', "-"));
            let host = format!("b{round}-{}.example", purge.replace(' ', "-"));
            let before = calls.get();
            let first = send(&svc, on_host(Some(&host), &uri)).await;
            assert_eq!(first.outcome(), "MISS", "{uri} on {host}");
            match purge {
                "url" => drop(layer.purge_url(None, &uri).await.unwrap()),
                _ => drop(layer.purge_prefix(None, "/plain/declared/").await.unwrap()),
            }
            let after = send(&svc, on_host(Some(&host), &uri)).await;
            assert_eq!(
                after.outcome(),
                "MISS",
                "{uri} on {host}: served after the purge ({purge}), {:?}",
                after.header("cache-status")
            );
            assert_eq!(calls.get(), before + 2, "{uri} on {host}");
        }
    }
}

#[tokio::test]
async fn a_purge_on_any_host_right_after_a_first_response_on_a_host_is_not_lost_in_memory() {
    let layer = CacheLayer::new(memory_cache());
    a_purge_on_any_host_right_after_a_first_response_on_a_host_is_not_lost(layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_any_host_right_after_a_first_response_on_a_host_is_not_lost_on_redis() {
    let redis = RedisServer::start();
    let layer = redis_layer(&redis);
    a_purge_on_any_host_right_after_a_first_response_on_a_host_is_not_lost(layer).await;
}

/// A memory repository whose sweeps fail after removing what they matched, as a sweep cut off
/// by an outage does: [`impcache::Error::Interrupted`] with the count.
#[derive(Debug)]
struct FailingSweeps(impcache::MemoryCacheRepository);

impl impcache::CacheRepository for FailingSweeps {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        self.0.set(key, value, expiry)
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<bool>> {
        self.0.set_nx(key, value, expiry)
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, bytes::Bytes)],
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        self.0.set_many(entries, expiry)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<Option<bytes::Bytes>>> {
        self.0.get(key)
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<Vec<Option<bytes::Bytes>>>> {
        self.0.get_many(keys)
    }

    fn delete<'a>(&'a self, key: &'a str) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete(key)
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        self.0.delete_many(keys)
    }

    fn delete_pattern<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        Box::pin(async move {
            let removed = self.0.delete_pattern(pattern).await?;
            Err(impcache::Error::Interrupted {
                removed,
                source: Box::new(impcache::Error::Unavailable {
                    operation: "delete_pattern",
                    key: pattern.to_owned(),
                    source: "connection reset".into(),
                }),
            })
        })
    }
}

/// Issue 17 (found reviewing a probe's find): a `purge_url` whose sweep (of a record of an
/// earlier format's variants) fails after the URL's record was removed returns
/// [`impcache::Error::Interrupted`] counting everything the purge removed: the record and what
/// the sweep removed before failing. Before, the record's count was dropped with the `?`.
#[tokio::test]
async fn a_purge_url_whose_sweep_fails_counts_what_it_removed_before() {
    let cache = Cache::new(FailingSweeps(impcache::MemoryCacheRepository::new()));
    let layer = CacheLayer::new(cache.clone()).expire(60);
    // A record of an earlier format (its variants carry no generation: swept) and two variants.
    let url_key = layer.request_key(&request("GET", "/old", &[]));
    let url_key = url_key.strip_prefix(&cache.make_key("")).unwrap();
    for suffix in [":v", ":v:1", ":v:2"] {
        let key = format!("{url_key}{suffix}");
        cache
            .set_raw(&key, bytes::Bytes::from_static(b"earlier format"), 60)
            .await
            .unwrap();
    }
    let error = layer
        .purge_url(Some("example.com"), "/old")
        .await
        .unwrap_err();
    assert!(error.is_backend_failure(), "{error}");
    assert_eq!(error.removed_before_failure(), Some(3), "{error}");
}

/// The records of a purge are read through the cache, which refuses keys past its limit: a URL
/// too long for the cache (nothing of it can be stored) is left out of the read, not an error
/// that would keep the other URLs' records from being removed.
#[tokio::test]
async fn a_url_too_long_for_the_cache_is_purged_as_nothing() {
    let cache = Cache::builder(impcache::MemoryCacheRepository::new())
        .max_key_bytes(200)
        .build();
    let layer = CacheLayer::new(cache).expire(60);
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/items/1"]).await;
    let long = format!("/items/{}", "x".repeat(300));
    assert_eq!(
        layer.purge_url(Some("example.com"), &long).await.unwrap(),
        0
    );
    // A write to it invalidates what its `Location` names, a URL the cache holds.
    let seen = send(&svc, request("POST", &long, &[("x-location", "/items/1")])).await;
    assert_eq!(seen.status, StatusCode::OK);
    // Removed by the write's invalidation: nothing left to purge.
    assert_eq!(
        layer
            .purge_url(Some("example.com"), "/items/1")
            .await
            .unwrap(),
        0
    );
}

/// `purge_url` given a URL in absolute form (RFC 9112 §3.2.2, as Fastly-style purge-by-URL tools
/// send it) purges what a request for that URL is keyed by: its authority is the host (the
/// `Host: example.com` of the requests, and of a request with that absolute-form target), its
/// path and query the rest; the scheme is in no key. Another host's URL purges nothing here.
#[tokio::test]
async fn purge_url_takes_a_url_in_absolute_form() {
    let layer = CacheLayer::new(memory_cache()).expire(60);
    let (svc, _) = service(layer.clone());
    store_all(&svc, &["/plain/abs?b=2&a=1", "/plain/tls", "/plain/kept"]).await;
    // A request with the absolute-form target is keyed as the same URL on that host.
    let absolute = Request::get("http://example.com/plain/kept")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&svc, absolute).await.outcome(), "HIT");
    let purged = layer
        .purge_url(None, "http://other.example/plain/kept")
        .await
        .unwrap();
    assert_eq!(purged, 0, "another host's URL");
    let purged = layer
        .purge_url(None, "http://example.com/plain/abs?a=1&b=2")
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let purged = layer
        .purge_url(Some("example.com"), "https://EXAMPLE.com/plain/tls")
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(outcomes(&svc, "/plain/abs?b=2&a=1").await.0, "MISS");
    assert_eq!(outcomes(&svc, "/plain/tls").await.0, "MISS");
    assert_eq!(outcomes(&svc, "/plain/kept").await.0, "HIT");
    assert_eq!(
        layer.url_pattern(None, "http://example.com/plain/kept"),
        layer.url_pattern(Some("example.com"), "/plain/kept")
    );
    // Userinfo names no other host (it made the purge match nothing: found by a probe). A
    // request's target with userinfo is bypassed: left out of the key, it reached the handler's
    // URI, which a handler may reflect, stored for every client (found by a probe, 2026-12-07).
    let purged = layer
        .purge_url(None, "http://user:pw@example.com/plain/kept")
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(outcomes(&svc, "/plain/kept").await.0, "MISS");
    let with_userinfo = Request::get("http://user@example.com/plain/kept")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&svc, with_userinfo).await.outcome(), "BYPASS");
}

/// An absolute-form target's default port is the same as none (RFC 9110 §4.2.3):
/// `http://example.com:80/..` and `https://example.com:443/..` name `example.com`'s entry, and
/// so does such a URL given to `purge_url` (found by a probe). A port in a `Host` field is kept
/// as sent: a handler may build links or redirects from it, and a request naming `:80` must not
/// store its response for every client of `example.com`. Another port is another host.
#[tokio::test]
async fn an_absolute_targets_default_port_is_the_same_as_none() {
    let layer = CacheLayer::new(memory_cache()).expire(60);
    let (svc, calls) = service(layer.clone());
    let on = |host: &str| on_host(Some(host), "/plain/port");
    let target = |url: &str| Request::get(url).body(Body::empty()).unwrap();
    stored_on(&layer, &svc, Some("example.com"), "/plain/port").await;
    for url in [
        "http://example.com:80/plain/port",
        "https://example.com:443/plain/port",
    ] {
        assert_eq!(send(&svc, target(url)).await.outcome(), "HIT", "{url}");
    }
    assert_eq!(calls.get(), 1, "one entry");
    for other in [
        "example.com:80",
        "example.com:8080",
        "example.com:443",
        "example.com.",
    ] {
        assert_ne!(
            layer.request_key(&on(other)),
            layer.request_key(&on("example.com")),
            "{other}"
        );
    }
    let purged = layer
        .purge_url(None, "https://example.com:443/plain/port")
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(send(&svc, on("example.com")).await.outcome(), "MISS");
}

/// The purges of a namespace leave a namespace it is the start of alone: `api`'s `purge_all`
/// and `purge_prefix` on any host removed `api:v2`'s responses, whose keys started `api:v2:`
/// (found by a probe). A namespace's `:` is written `%3A` in its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_of_a_namespace_leave_one_it_starts_alone() {
    let cache = memory_cache();
    let api = CacheLayer::new(cache.clone()).namespace("api");
    let api_v2 = CacheLayer::new(cache).namespace("api:v2");
    assert!(
        api_v2.request_key(&get("/users/1")).contains(":api%3Av2:"),
        "{}",
        api_v2.request_key(&get("/users/1"))
    );
    let (in_api, _) = counting(api.clone());
    let (in_v2, v2_calls) = counting(api_v2.clone());
    for round in 0..3 {
        send(&in_api, get("/users/1")).await;
        send(&in_v2, get("/users/1")).await;
        wait_stored(&api, "/users/1").await;
        wait_stored(&api_v2, "/users/1").await;
        let removed = match round {
            0 => api.purge_all().await.unwrap(),
            1 => api.purge_prefix(None, "/users/").await.unwrap(),
            _ => api.purge_url(None, "/users/1").await.unwrap(),
        };
        assert!(removed >= 1, "round {round}: {removed}");
        let seen = send(&in_v2, get("/users/1")).await;
        assert_eq!(seen.outcome(), "HIT", "round {round}");
    }
    assert_eq!(v2_calls.get(), 1);
}

/// With the cache down, the failed invalidations of unsafe requests warn at most once a second
/// (the breaker's opening is its own warning; the requests it turns away are logged at `DEBUG`):
/// each request warned, thousands a second (found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_down_unsafe_requests_do_not_warn_each() {
    let captured = captured_logs();
    let mut redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let recording = Cache::builder(repository).record_keys(true).build();
    let (svc, calls) = service(CacheLayer::new(recording).expire(60));
    redis.kill();
    for _ in 0..40 {
        let seen = send(&svc, request("POST", "/warned-once", &[])).await;
        assert_eq!(seen.status, StatusCode::OK);
    }
    assert_eq!(calls.get(), 40);
    let logs = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("/warned-once") && line.contains("unsafe request"))
        .collect();
    let warned = ours.iter().filter(|line| line.contains(" WARN ")).count();
    assert!(warned <= 2, "{warned} warnings:\n{}", ours.join("\n"));
    assert_eq!(ours.len(), 40, "each logged at DEBUG or WARN:\n{logs}");
}
