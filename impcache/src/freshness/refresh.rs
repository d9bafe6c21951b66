//! Background reloads (stale-while-revalidate, early refresh): a spawned task holding the key's
//! flight, so one reload per key per process; bounded by the hard timeout, its store by the
//! repository's deadline.

use std::future::Future;

use serde::Serialize;

use super::load::{run, Job, LoadError, FLIGHTS, TARGET};
use crate::flight::{Join, Leader};

/// Starts a background reload of `job`'s key unless one is under way (then `loader` is dropped
/// unrun). Outside a tokio runtime nothing is started: the stale value is served, and a caller
/// past the stale-while-revalidate window loads.
pub(super) fn spawn<V, E, F, Fut>(job: Job, loader: F)
where
    V: Serialize + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(target: TARGET, key = job.key, "no tokio runtime: no background reload");
        return;
    };
    match FLIGHTS.join(&job.flight(), FLIGHTS.ticket()) {
        // A load of this key is under way: its value will be stored.
        Join::Waiter(_) => {}
        Join::Leader(Leader { guard, .. }) => {
            tracing::debug!(target: TARGET, key = job.key, "reloading in the background");
            runtime.spawn(run::<V, E, F, Fut>(job, None, loader, Some(guard), None));
        }
    }
}
