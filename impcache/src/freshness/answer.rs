//! How one `get_or_set` call was answered, for `#[cached]`'s per-function counts
//! (`impcache_cached_calls_total`, `impcache_single_flight_waits_total`): from the cache, by
//! this caller's loader run, by another caller's, or without the cache. Recorded in the caller's
//! task only (a task-local set by [`scope`]): a background reload, which runs in its own task,
//! never changes the answer of the call that started it. Outside a [`scope`] (a plain
//! `Cache::get_or_set`) nothing is recorded.

use std::cell::Cell;
use std::future::Future;

use crate::observe::hooks::FlightWait;

/// How a call was answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Answer {
    /// By the cache (a fresh value, or a stale one served while a background reload runs).
    #[default]
    Hit,
    /// By this caller's loader run (it led the key's flight).
    Ran,
    /// By another caller's run (or by its own run after that one failed).
    Waited,
    /// Without the cache: the key was refused or the read failed.
    Bypass,
}

/// How a call was answered, and its wait for other callers' runs (one however many leaders it
/// waited for, whether it then ran its own or not: as the plain `#[cached]` path counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Answered {
    pub(crate) answer: Answer,
    pub(crate) wait: FlightWait,
}

tokio::task_local! {
    static ANSWER: Cell<Answered>;
}

/// Runs `call`, a `get_or_set`, and says how it was answered.
pub(crate) async fn scope<T>(call: impl Future<Output = T>) -> (T, Answered) {
    ANSWER
        .scope(Cell::new(Answered::default()), async {
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
        let mut answered = current.get();
        if answered.answer != Answer::Bypass {
            answered.answer = answer;
            current.set(answered);
        }
    });
}

/// Records that the current call's wait for another caller's run begins
/// ([`FlightWait::begins`]) or ends ([`FlightWait::ends`]).
pub(super) fn wait(change: fn(&mut FlightWait)) {
    let _ = ANSWER.try_with(|current| {
        let mut answered = current.get();
        change(&mut answered.wait);
        current.set(answered);
    });
}
