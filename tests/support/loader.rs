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
