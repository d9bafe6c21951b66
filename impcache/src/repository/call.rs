//! The call policy of every Redis-backed repository, written once: the circuit breaker's
//! admission, the half-open probe guard, the deadline, the classification of failures
//! ([`Failure`]), one more attempt when nothing can have been applied, and what the outcome tells
//! the breaker. What differs per backend (how a connection or a primary is found, what a failure
//! does to it: a reset, a new Sentinel lookup, a slot map learned again) are the hooks of a
//! [`Target`]: the single node, the Sentinel primary, the cluster client and each cluster node.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::RedisError;
use tokio::time::Instant;

use super::breaker::{Admission, CircuitBreaker, ProbeGuard};
use super::failure::{Failed, Failure, Waited};
use crate::error::Error;

/// One call as errors report it: the operation, the key (or keys, or pattern) it is about, and
/// whether sending it twice is harmless.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) operation: &'static str,
    pub(crate) subject: &'a (dyn Fn() -> String + Sync),
    /// Safe to send twice: a read, or a write that leaves the same state when applied twice.
    pub(crate) idempotent: bool,
}

impl<'a> Call<'a> {
    /// A call that is not safe to send twice.
    pub(crate) fn new(operation: &'static str, subject: &'a (dyn Fn() -> String + Sync)) -> Self {
        Call {
            operation,
            subject,
            idempotent: false,
        }
    }

    /// The deadline passed before the call finished.
    pub(crate) fn timeout(&self, deadline: Duration) -> Failed {
        Failed::timeout(self.operation, (self.subject)(), deadline)
    }
}

/// What a [`Target`]'s calls run under.
pub(crate) struct Limits<'a> {
    /// The breaker that admits the calls.
    pub(crate) breaker: &'a CircuitBreaker,
    /// The most a call waits.
    pub(crate) deadline: Duration,
    /// The connect timeout named when the client gives up early.
    pub(crate) connect_timeout: Option<Duration>,
}

/// What one attempt is given: a connection (or a primary's repository), the generation that
/// tells it apart from its replacement (never 0), and the tokio runtime that opened it, where
/// its driver task runs (`None` when it has none of its own).
pub(crate) struct Opened<H> {
    pub(crate) generation: u64,
    pub(crate) runtime: Option<tokio::runtime::Id>,
    pub(crate) handle: H,
}

/// A failed attempt, as the retry hook sees it.
pub(crate) struct Attempt<'a> {
    /// The generation of the connection it used.
    pub(crate) generation: u64,
    /// The runtime that opened that connection.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) runtime: Option<tokio::runtime::Id>,
    pub(crate) failure: &'a Failed,
    /// A dropped connection opened by another runtime than the call's: its driver task ended
    /// (or is ending) with that runtime (a `static` cache used from several `#[tokio::test]`s,
    /// each with its own runtime). The `redis` crate then fails every request at once: those
    /// sent after it ended were not sent at all, but those in flight when it ended may have
    /// been applied.
    pub(crate) driver_gone: bool,
    /// Whether this was already the second attempt.
    pub(crate) retried: bool,
}

/// An error of one attempt, and how it becomes a [`Failed`].
pub(crate) trait AttemptError {
    fn into_failed(self, call: &Call<'_>, waited: Waited) -> Failed;
}

impl AttemptError for RedisError {
    fn into_failed(self, call: &Call<'_>, waited: Waited) -> Failed {
        Failed::classify(self, call.operation, (call.subject)(), waited)
    }
}

impl AttemptError for Failed {
    fn into_failed(self, _: &Call<'_>, _: Waited) -> Failed {
        self
    }
}

/// Where a Redis-backed repository sends its calls, and what their outcomes do to it. The
/// hooks' defaults do nothing.
pub(crate) trait Target: Sync {
    /// What an attempt sends its request on.
    type Handle;
    /// How an attempt fails.
    type Error: AttemptError;

    /// The breaker and limits the calls run under.
    fn limits(&self) -> Limits<'_>;

    /// The connection (or primary) for the next attempt; `again` for the second one, which the
    /// retry hook asked for.
    fn open(
        &self,
        call: &Call<'_>,
        again: bool,
    ) -> impl Future<Output = Result<Opened<Self::Handle>, Self::Error>> + Send;

    /// After each failed attempt: whether to send the request once more (after dropping what
    /// failed, so that the next attempt gets a fresh one).
    fn retry(&self, _attempt: &Attempt<'_>, _call: &Call<'_>) -> bool {
        false
    }

    /// The call succeeded.
    fn succeeded(&self) {}

    /// The server answered the call with an error reply (not an outage): by default as a
    /// success, for the connection's health.
    fn answered(&self) {
        self.succeeded();
    }

    /// The call failed (for good), on the connection `generation` when one was opened.
    fn failed(&self, _generation: Option<u64>, _failure: Failure) {}

    /// The breaker turned the call away.
    fn rejected(&self) {}

    /// Whether `failure` counts towards the breaker.
    fn is_outage(&self, failure: Failure) -> bool {
        failure.is_outage()
    }

    /// Where the calls its callers abandoned are remembered ([`Unanswered`]); `None`: they are
    /// not counted.
    fn unanswered(&self) -> Option<&Unanswered> {
        None
    }
}

/// The earliest call of a [`Target`] that its caller abandoned (dropped its future: a `timeout`
/// around it shorter than the deadline, a request timeout, a disconnected client) before it had
/// an outcome, with nothing answered since. Such a call never reaches its deadline, so it never
/// counts as a timeout: without this, callers that all give up first would keep a half-open
/// connection forever (it is replaced after a few timeouts) and keep the breaker closed while the
/// server is frozen. Once that call's deadline has passed with no success since, the next call
/// counts it as the timeout it would have been ([`call`]): once per deadline at most, however
/// many calls were abandoned meanwhile. Any answer (a success, an error reply) clears it: a
/// multiplexed connection answers in order.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    /// Whether `earliest` holds a call: the one load on a call's path.
    marked: AtomicBool,
    /// The generation of the connection that call used (0: none yet) and its deadline.
    earliest: Mutex<Option<(u64, Instant)>>,
}

impl Unanswered {
    /// A call on connection `generation`, which would have timed out at `until`, was abandoned.
    fn abandoned(&self, generation: u64, until: Instant) {
        let mut earliest = self.earliest.lock().unwrap_or_else(PoisonError::into_inner);
        if earliest.is_none_or(|(_, earlier)| until < earlier) {
            *earliest = Some((generation, until));
        }
        self.marked.store(true, Ordering::Release);
    }

    /// The server answered a call.
    fn answered(&self) {
        if self.marked.load(Ordering::Relaxed) {
            self.clear(|_| true);
        }
    }

    /// The generation of the connection of the abandoned call whose deadline has passed by
    /// `now` (0: it had none), forgotten now.
    fn overdue(&self, now: Instant) -> Option<u64> {
        if !self.marked.load(Ordering::Acquire) {
            return None;
        }
        self.clear(|until| until <= now)
    }

    /// Forgets the call remembered if its deadline passes `due`; its generation.
    #[cold]
    fn clear(&self, due: impl Fn(Instant) -> bool) -> Option<u64> {
        let mut earliest = self.earliest.lock().unwrap_or_else(PoisonError::into_inner);
        let (generation, until) = (*earliest)?;
        if !due(until) {
            return None;
        }
        *earliest = None;
        self.marked.store(false, Ordering::Release);
        Some(generation)
    }
}

/// Tells a [`Target`]'s [`Unanswered`] when the call is dropped while armed: after admission,
/// before the outcome.
struct Abandon<'a> {
    unanswered: Option<&'a Unanswered>,
    /// The generation of the connection in use (0: none yet).
    used: &'a AtomicU64,
    /// The call's deadline; `None` (unbounded) or disarmed: nothing to tell.
    until: Option<Instant>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let (Some(unanswered), Some(until)) = (self.unanswered, self.until) {
            unanswered.abandoned(self.used.load(Ordering::Relaxed), until);
        }
    }
}

/// Runs `request` on `target` under its breaker, giving up at `until` (`None`: the request
/// bounds each of its own round trips), with one more attempt when the target's retry hook asks
/// for it. Outside a tokio runtime, [`Failed::no_runtime`] at once: the deadline's timer and the
/// connection's driver task need one (tokio's timer panics without), and the breaker is not told.
pub(crate) async fn call<G, T, F, Fut>(
    target: &G,
    call: Call<'_>,
    until: Option<Instant>,
    request: F,
) -> Result<T, Failed>
where
    G: Target,
    F: Fn(G::Handle) -> Fut,
    Fut: Future<Output = Result<T, G::Error>>,
{
    require_runtime(call.operation, call.subject)?;
    let Limits {
        breaker,
        deadline,
        connect_timeout,
    } = target.limits();
    let unanswered = target.unanswered();
    // A call abandoned by its caller that would have timed out by now counts as that timeout,
    // before this call's admission: as an operation admitted while closed (a probe of its own
    // freed its slot when dropped), so that it may open the breaker and turn this call away.
    if let Some(generation) = unanswered.and_then(|u| u.overdue(Instant::now())) {
        tracing::debug!(
            ?deadline,
            "impcache: a call abandoned by its caller had no answer within the deadline; \
             counted as a timeout"
        );
        let failed = call.timeout(deadline);
        target.failed((generation != 0).then_some(generation), failed.kind);
        if target.is_outage(failed.kind) {
            breaker.record_failure(&Admission::Allowed, &Cause(&failed));
        }
    }
    let admission = breaker.admit();
    if admission == Admission::Rejected {
        target.rejected();
        let last_failure = breaker.last_failure();
        return Err(Failed::circuit_open(
            call.operation,
            (call.subject)(),
            last_failure,
        ));
    }
    // Frees the half-open probe slot even when the caller drops this future mid-flight.
    let _probe = ProbeGuard {
        breaker,
        admission: &admission,
    };
    // An unbounded call's attempts fail with errors already classified (Sentinel's
    // `delete_pattern`, whose primary bounds each round trip): the time waited does not matter.
    let waited = || {
        let left = until.map_or(deadline, |until| {
            until.saturating_duration_since(Instant::now())
        });
        Waited {
            waited: deadline.saturating_sub(left),
            deadline,
            connect_timeout,
        }
    };
    // The generation of the connection the attempt used, readable after a timeout dropped it.
    let used = AtomicU64::new(0);
    let attempt = async {
        let mut retried = false;
        loop {
            let opened = target
                .open(&call, retried)
                .await
                .map_err(|e| e.into_failed(&call, waited()))?;
            used.store(opened.generation, Ordering::Relaxed);
            let failure = match request(opened.handle).await {
                Ok(value) => return Ok(value),
                Err(e) => e.into_failed(&call, waited()),
            };
            let attempt = Attempt {
                generation: opened.generation,
                runtime: opened.runtime,
                driver_gone: failure.kind == Failure::Dropped
                    && opened.runtime.is_some()
                    && opened.runtime != current_runtime(),
                failure: &failure,
                retried,
            };
            if !target.retry(&attempt, &call) {
                return Err(failure);
            }
            retried = true;
        }
    };
    // Armed until the outcome: the caller dropping this future before then abandons the call.
    let mut abandon = Abandon {
        unanswered,
        used: &used,
        until,
    };
    let outcome = match until {
        Some(until) => tokio::time::timeout_at(until, attempt)
            .await
            .unwrap_or_else(|_elapsed| Err(call.timeout(deadline))),
        None => attempt.await,
    };
    abandon.until = None;
    match outcome {
        Ok(value) => {
            target.succeeded();
            breaker.record_success();
            if let Some(unanswered) = unanswered {
                unanswered.answered();
            }
            Ok(value)
        }
        Err(failed) => {
            let generation = used.load(Ordering::Relaxed);
            target.failed((generation != 0).then_some(generation), failed.kind);
            if matches!(failed.kind, Failure::Timeout | Failure::GaveUp) {
                warn_of_a_paused_clock(deadline);
            }
            if target.is_outage(failed.kind) {
                breaker.record_failure(&admission, &Cause(&failed));
            } else {
                // The server answered (an error reply): the connection is alive, so its count of
                // timeouts in a row starts again too (a dropped call counted as one, then an
                // error reply, thrice, replaced a healthy connection: found by a probe).
                target.answered();
                breaker.record_success();
                if let Some(unanswered) = unanswered {
                    unanswered.answered();
                }
            }
            Err(failed)
        }
    }
}

/// Warns, once per process, when a call timed out because tokio's clock ran ahead of the real one
/// by half its deadline or more: a paused test clock (`#[tokio::test(start_paused = true)]`,
/// `tokio::time::pause`), whose auto-advance fires every call's deadline while the runtime waits
/// on the socket, so that every Redis call fails at once, the breaker opens, and the cache fails
/// open and stores nothing, with errors that read as a server down (found by a probe; reqwest
/// users know it as "requests always time out when tokio time is paused").
fn warn_of_a_paused_clock(deadline: Duration) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let ahead = Instant::now()
        .into_std()
        .saturating_duration_since(std::time::Instant::now());
    if ahead >= deadline / 2 && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: "impcache",
            ?ahead,
            "impcache: tokio's clock is ahead of the real one (a paused test clock: start_paused, \
             tokio::time::pause): its auto-advance fires a Redis call's deadline while the call \
             waits on the socket, so Redis calls time out at once and the cache fails open; test \
             with a real clock or the memory repository"
        );
    }
}

/// The longest a connection or a Sentinel lookup runs in the background
/// ([`open_in_background`]): well past the `redis` crate's own timeouts (about a second), so
/// that it ends on its own, yet it cannot hold its lock forever.
#[cfg(any(feature = "cluster", feature = "sentinel"))]
pub(crate) const BACKGROUND_OPEN_LIMIT: Duration = Duration::from_secs(10);

/// Runs `open` (making the cluster client's connection, finding the Sentinels' primary) in a task
/// of its own, which the caller's deadline does not cut short: when it takes longer than one
/// call's deadline (a frozen node or Sentinel costs the `redis` crate's own timeouts, about as
/// long as the default deadline), a call cut short each time would start it again from scratch
/// and it would never end. The caller may time out; the task goes on, bounded by
/// [`BACKGROUND_OPEN_LIMIT`], and a later call finds what it made. Without a runtime, in place.
#[cfg(any(feature = "cluster", feature = "sentinel"))]
pub(crate) async fn open_in_background<T, Fut>(open: Fut) -> redis::RedisResult<T>
where
    T: Send + 'static,
    Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
{
    let bounded = async move {
        tokio::time::timeout(BACKGROUND_OPEN_LIMIT, open)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection within the background limit",
                )))
            })
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return bounded.await;
    };
    match runtime.spawn(bounded).await {
        Ok(opened) => opened,
        // The task panicked or its runtime shut down: nothing opened.
        Err(error) => Err(RedisError::from(std::io::Error::other(error.to_string()))),
    }
}

/// Outside a tokio runtime, [`Failed::no_runtime`]: the check at the entry of every call of a
/// Redis-backed repository ([`call`], and the Cluster's operations, which ask for the slot map
/// under the deadline first), so that such a call is an error rather than tokio's panic.
pub(crate) fn require_runtime(
    operation: &'static str,
    subject: &(dyn Fn() -> String + Sync),
) -> Result<(), Failed> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(Failed::no_runtime(operation, subject())),
    }
}

/// The tokio runtime this code runs on, if any.
pub(crate) fn current_runtime() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|handle| handle.id())
}

/// What a failure ended in, without the key it was about: the underlying error (`Connection
/// refused (os error 111)`), the deadline that passed (`timed out after 250ms`), else the kind of
/// failure. Named by the breaker's warning and by the calls it turns away. The warning is
/// logged whatever the cache's `record_keys`, and named the key (`last_error=cache backend
/// unavailable during set of `cache:1:user:alice@example.com``: CI caught it, 2026-12-06).
struct Cause<'a>(&'a Failed);

impl std::fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Error::Timeout { deadline, .. } = &self.0.error {
            return write!(f, "timed out after {deadline:?}");
        }
        match std::error::Error::source(&self.0.error) {
            Some(source) => std::fmt::Display::fmt(source, f),
            None => write!(f, "{:?}", self.0.kind),
        }
    }
}

// Unit tests: an `assert!` here is the test failing (clippy.toml allows the panicking macros in
// tests); none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;

    /// The earliest abandoned call is kept, counted only once its deadline has passed, and
    /// forgotten by an answer or once counted.
    #[test]
    fn an_abandoned_call_counts_once_after_its_deadline_unless_answered() {
        let unanswered = Unanswered::default();
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(unanswered.overdue(now + ms(1000)), None);
        unanswered.abandoned(7, now + ms(500));
        unanswered.abandoned(8, now + ms(600));
        unanswered.abandoned(6, now + ms(400));
        assert_eq!(unanswered.overdue(now + ms(399)), None, "not due yet");
        assert_eq!(unanswered.overdue(now + ms(400)), Some(6), "the earliest");
        assert_eq!(unanswered.overdue(now + ms(1000)), None, "counted once");

        unanswered.abandoned(9, now + ms(500));
        unanswered.answered();
        assert_eq!(unanswered.overdue(now + ms(1000)), None, "answered since");
    }
}
