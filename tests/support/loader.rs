//! Loaders for `get_or_set` tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// A loader counting its runs, held at `gate` until the test lets it through.
pub fn counted(
    runs: &Arc<AtomicUsize>,
    gate: &Arc<Semaphore>,
    value: &'static str,
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + 'static {
    let (runs, gate) = (Arc::clone(runs), Arc::clone(gate));
    move || {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _permit = gate.acquire().await.unwrap();
            value.to_owned()
        })
    }
}

/// Waits (at most 5 s) until `key` holds the string `value`.
pub async fn until_stored(cache: &impcache::Cache, key: &str, value: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while cache.get::<String>(key).await.unwrap().as_deref() != Some(value) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("`{key}` never became {value:?}"));
}

/// Stores `value` at `key` through `get_or_set` with `policy`, fresh for `fresh`, and waits
/// until it is stale.
pub async fn stale_entry(
    cache: &impcache::Cache,
    key: &str,
    value: &str,
    fresh: std::time::Duration,
    policy: impcache::Freshness,
) {
    let value = value.to_owned();
    let stored: String = cache
        .get_or_set(key, fresh, move || async move { value })
        .freshness(policy)
        .await
        .unwrap();
    until_stored(cache, key, &stored).await;
    tokio::time::sleep(fresh + std::time::Duration::from_millis(50)).await;
}

/// A cycle of loads through the lock across processes (`policy` has one): a's load holds a's
/// lock and, 50 ms in, calls b, whose loader calls a; a is deleted 10 ms in, so that this call
/// starts a second load of a, which finds a's lock held by the first load, waiting for it.
/// Returns the first load's answer (`first a over b over second a` when the second load ran).
pub async fn cycle_through_the_lock(
    cache: &impcache::Cache,
    policy: impcache::Freshness,
) -> impcache::Result<String> {
    let (in_a, in_b) = (cache.clone(), cache.clone());
    let first = tokio::spawn(async move {
        in_a.get_or_set("a", 60, move || async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let b: String = in_b
                .clone()
                .get_or_set("b", 60, move || async move {
                    let a: String = in_b
                        .get_or_set("a", 60, || async { "second a".to_owned() })
                        .freshness(policy)
                        .await
                        .unwrap();
                    format!("b over {a}")
                })
                .freshness(policy)
                .await
                .unwrap();
            format!("first a over {b}")
        })
        .freshness(policy)
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    cache.delete("a").await?;
    first.await.unwrap()
}

/// A loader of `b` calling `x` back: after `pause`, `get_or_set` of `x` under `policy`, whose own
/// loader (counted in `inner_runs`) answers `x alone`; answers `b over {x}`.
pub fn calling_x_back(
    cache: &impcache::Cache,
    pause: std::time::Duration,
    policy: impcache::Freshness,
    inner_runs: &Arc<AtomicUsize>,
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + 'static {
    let (cache, inner_runs) = (cache.clone(), Arc::clone(inner_runs));
    move || {
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            let x: String = cache
                .get_or_set("x", 60, move || async move {
                    inner_runs.fetch_add(1, Ordering::SeqCst);
                    "x alone".to_owned()
                })
                .freshness(policy)
                .await
                .unwrap();
            format!("b over {x}")
        })
    }
}
