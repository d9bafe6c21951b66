//! The metrics tests' scaffolding: run requests under a local `metrics` recorder and read back
//! `impcache_http_requests_total`. Packaged with the crate (no workspace test harness here).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

use std::future::Future;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// One counter of `impcache_http_requests_total`: its labels (sorted by name) and its count.
pub type Count = (Vec<(String, String)>, u64);

/// Runs `requests` on a current-thread runtime with a recorder local to this thread, and returns
/// the counts of `impcache_http_requests_total`, sorted by labels.
pub fn requests_total<F: Future>(requests: impl FnOnce() -> F) -> Vec<Count> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(requests());
    let mut counts: Vec<Count> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "impcache_http_requests_total")
        .map(|(key, _, _, value)| {
            let mut labels: Vec<_> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let DebugValue::Counter(n) = value else {
                panic!("impcache_http_requests_total is a counter")
            };
            (labels, n)
        })
        .collect();
    counts.sort();
    counts
}

/// The expected counter of `outcome` (with `route` when given), counted `n` times.
pub fn count(outcome: &str, route: Option<&str>, n: u64) -> Count {
    let mut labels = vec![("outcome".to_owned(), outcome.to_owned())];
    if let Some(route) = route {
        labels.push(("route".to_owned(), route.to_owned()));
    }
    (labels, n)
}

/// Sends a miss, a hit, a second miss and a bypass: `GET {base}1`, `GET {base}1`, `GET {base}2`,
/// `POST {base}1`, one at a time, each with an empty body, checking each succeeds.
pub async fn miss_hit_miss_bypass<S, B, R>(service: S, base: &str)
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone,
    S::Error: std::fmt::Debug,
    B: Default,
{
    use tower::ServiceExt;
    for (method, n) in [("GET", 1), ("GET", 1), ("GET", 2), ("POST", 1)] {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{base}{n}"))
            .body(B::default())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_success());
        // Let the background store finish before the next request.
        tokio::task::yield_now().await;
    }
}
