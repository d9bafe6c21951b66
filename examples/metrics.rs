//! Metrics of an axum application's cache, scraped by Prometheus at `/metrics`: impcache records
//! through the [`metrics`](https://docs.rs/metrics) facade, and `metrics-exporter-prometheus`
//! renders what it recorded. `/stats` shows `Cache::stats()`, the same counts without a recorder.
//!
//! Run with
//! ```text
//! cargo run -p impcache-examples --example metrics
//! ```
//! By default it sends itself a few requests (a miss, then hits), prints `/metrics` and exits.
//! `IMPCACHE_EXAMPLE_SERVE=1` keeps serving on `127.0.0.1:3000` (or `$PORT`) instead: then
//! `curl localhost:3000/users/1` and `curl localhost:3000/metrics`.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use impcache::{Cache, MemoryCacheRepository};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use tower::ServiceExt;

#[derive(Clone)]
struct AppState {
    cache: Cache,
    prometheus: PrometheusHandle,
}

/// A user's name: from the cache, or "computed" and stored for a minute.
async fn show_user(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<String, StatusCode> {
    let key = format!("user:{id}");
    let cached: Option<String> = state.cache.get(&key).await.map_err(internal)?;
    let name = match cached {
        Some(name) => name,
        None => {
            let name = format!("user number {id}");
            state.cache.set(&key, &name, 60).await.map_err(internal)?;
            name
        }
    };
    Ok(format!("{name}\n"))
}

fn internal(error: impcache::Error) -> StatusCode {
    eprintln!("cache error: {error}");
    StatusCode::INTERNAL_SERVER_ERROR
}

/// The Prometheus text format of everything recorded so far.
async fn metrics(State(state): State<AppState>) -> String {
    state.prometheus.render()
}

/// `Cache::stats()`: hits, misses and errors, without a recorder.
async fn stats(State(state): State<AppState>) -> String {
    let stats = state.cache.stats();
    format!(
        "hits {} misses {} errors {}\n",
        stats.hits, stats.misses, stats.errors
    )
}

/// The process's Prometheus recorder, installed once (a process has one global recorder).
fn prometheus() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    // `# HELP` and units for impcache's metrics.
    impcache::describe_metrics();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn app(cache: Cache, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/users/{id}", get(show_user))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .with_state(AppState { cache, prometheus })
}

/// `GET path` through the router, without a server: the body as text.
async fn fetch(app: &Router, path: &str) -> Result<String, Box<dyn std::error::Error>> {
    let request = Request::get(path).body(Body::empty())?;
    let response = app.clone().oneshot(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(Cache::new(MemoryCacheRepository::new()), prometheus()?);
    if std::env::var_os("IMPCACHE_EXAMPLE_SERVE").is_some() {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
        println!("serving on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        return Ok(());
    }
    for path in ["/users/1", "/users/1", "/users/1", "/users/2"] {
        print!("GET {path}: {}", fetch(&app, path).await?);
    }
    print!("GET /stats: {}", fetch(&app, "/stats").await?);
    println!("GET /metrics:\n{}", fetch(&app, "/metrics").await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `line_start` (the metric and its labels) in `scrape`.
    fn sample(scrape: &str, line_start: &str) -> Option<f64> {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
    }

    #[tokio::test]
    async fn the_metrics_endpoint_shows_the_counters_move() {
        let app = app(
            Cache::new(MemoryCacheRepository::new()),
            prometheus().unwrap(),
        );
        let get = |outcome| {
            format!("impcache_operations_total{{operation=\"get\",outcome=\"{outcome}\"}}")
        };

        fetch(&app, "/users/7").await.unwrap();
        let scrape = fetch(&app, "/metrics").await.unwrap();
        assert_eq!(sample(&scrape, &get("miss")), Some(1.0), "{scrape}");
        assert_eq!(sample(&scrape, &get("hit")), None, "{scrape}");
        assert!(
            scrape.contains("# HELP impcache_operations_total"),
            "{scrape}"
        );

        fetch(&app, "/users/7").await.unwrap();
        fetch(&app, "/users/7").await.unwrap();
        let scrape = fetch(&app, "/metrics").await.unwrap();
        assert_eq!(sample(&scrape, &get("miss")), Some(1.0), "{scrape}");
        assert_eq!(sample(&scrape, &get("hit")), Some(2.0), "{scrape}");
        let set = "impcache_operations_total{operation=\"set\",outcome=\"ok\"}";
        assert_eq!(sample(&scrape, set), Some(1.0), "{scrape}");
        // Three gets and a set, timed: a summary per operation.
        let timed = "impcache_operation_duration_seconds_count{operation=\"get\"}";
        assert_eq!(sample(&scrape, timed), Some(3.0), "{scrape}");
        assert!(sample(&scrape, "impcache_bytes_written_total").is_some_and(|b| b > 0.0));
        assert_eq!(
            fetch(&app, "/stats").await.unwrap(),
            "hits 2 misses 1 errors 0\n"
        );
    }
}
