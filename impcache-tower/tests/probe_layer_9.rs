//! Probe (layer, purge 2): hosts with case, ports, trailing dots; declared prefixes on those
//! hosts; purge on any host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use axum::body::Body;
use http::Request;
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn on(host: &str, uri: &str) -> Request<Body> {
    Request::get(uri).header("host", host).body(Body::empty()).unwrap()
}

fn redis_cache(redis: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::new(repository)
}

async fn store(svc: &Svc, host: &str, uri: &str) {
    send(svc, on(host, uri)).await;
    for _ in 0..200 {
        if send(svc, on(host, uri)).await.outcome() == "HIT" {
            return;
        }
        sleep_ms(10).await;
    }
    panic!("{host}{uri} never a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_case_port() {
    let redis = RedisServer::start();
    let mut report = Vec::new();
    for declared in [false, true] {
        for (req_host, purge_host, how) in [
            ("Example.COM:8080", Some("example.com:8080"), "url"),
            ("Example.COM:8080", Some("EXAMPLE.com:8080"), "url"),
            ("Example.COM:8080", None, "url"),
            ("Example.COM:8080", Some("example.com:8080"), "prefix"),
            ("Example.COM:8080", None, "prefix"),
            ("Example.COM:8080", None, "soft-prefix"),
            ("example.com", Some("EXAMPLE.COM"), "prefix"),
            ("example.com:80", Some("example.com"), "url"),
            ("example.com.", Some("example.com"), "url"),
        ] {
            let mut layer = CacheLayer::new(redis_cache(&redis)).namespace(format!("h{declared}"));
            if declared {
                layer = layer.tag_prefixes(["/p/"]);
            }
            layer.purge_all().await.unwrap();
            let (svc, _) = counting(layer.clone());
            store(&svc, req_host, "/p/1").await;
            let r = match how {
                "url" => layer.purge_url(purge_host, "/p/1").await,
                "prefix" => layer.purge_prefix(purge_host, "/p/").await,
                _ => layer.soft_purge_prefix(purge_host, "/p/").await,
            };
            let s = send(&svc, on(req_host, "/p/1")).await;
            let line = format!("declared={declared} stored on {req_host:18} {how:11} host={purge_host:?}: {r:?} -> {}", s.outcome());
            eprintln!("{line}");
            let same_host = req_host.trim_end_matches('.').eq_ignore_ascii_case(purge_host.unwrap_or(req_host)) ;
            if same_host && s.outcome() == "HIT" {
                report.push(line);
            }
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}
