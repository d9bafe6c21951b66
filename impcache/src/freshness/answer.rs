//! How one `get_or_set` call was answered, for `#[cached]`'s per-function counts
//! (`impcache_cached_calls_total`, `impcache_single_flight_waits_total`): from the cache, by
//! this caller's loader run, by another caller's, or without the cache. Recorded in the caller's
//! task only (a task-local set by [`scope`]): a background reload, which runs in its own task,
//! never changes the answer of the call that started it. Outside a [`scope`] (a plain
//! `Cache::get_or_set`) nothing is recorded.

use std::cell::Cell;
use std::future::Future;

use tokio::time::Instant;

/// How a call was answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Answer {
    /// By the cache (a fresh value, or a stale one served while a background reload runs).
    #[default]
    Hit,
    /// By this caller's loader run (it led the key's flight).
    Ran,
    /// By another caller's run, waited for since then (or by its own run after that one
    /// failed).
    Waited(Instant),
    /// Without the cache: the key was refused or the read failed.
    Bypass,
}

tokio::task_local! {
    static ANSWER: Cell<Answer>;
}

/// Runs `call`, a `get_or_set`, and says how it was answered.
pub(crate) async fn scope<T>(call: impl Future<Output = T>) -> (T, Answer) {
    ANSWER
        .scope(Cell::new(Answer::Hit), async {
            let done = call.await;
            (done, ANSWER.with(Cell::get))
        })
        .await
}

/// Records how the current call is answered. A call that went without the cache stays so (a
/// caller whose read failed and then waited for another caller's run is a bypass, as the
/// plain `#[cached]` path counts it).
pub(super) fn record(answer: Answer) {
    let _ = ANSWER.try_with(|current| {
        if current.get() != Answer::Bypass {
            current.set(answer);
        }
    });
}
