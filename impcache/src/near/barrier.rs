//! The barrier on the tracking connections, shared by concurrent reads (a group commit).
//!
//! A read through the near cache may keep or return its reply only once every invalidation Redis
//! sent before that reply has been applied; a round of `PING`s on the tracking connections,
//! *begun after the reply arrived*, proves it (see [`Store::settle`](super::Store::settle)).
//! Any such round will do, so concurrent reads share them: a read waits for the first round
//! begun after it asked, and begins one itself when none is running. Under load one round
//! answers many misses; alone, a miss costs what it did before (one round).
//!
//! Rounds are numbered; a read that asks while round `n` runs needs round `n + 1` or later. A
//! round's outcome is published on a `watch` channel; a reader that sees a later round than its
//! own took the later one's outcome, which began after it asked too. A round whose driver is
//! dropped mid-way ends as failed (the replies it vouched for are not kept), so no reader waits
//! on a round nobody drives.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// The rounds of one near cache's barrier.
pub(super) struct Barrier {
    rounds: Mutex<Rounds>,
    /// The last round to end, and whether it passed.
    ended: watch::Sender<Ended>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Rounds {
    /// Rounds begun so far (the number of the last one).
    begun: u64,
    /// Whether round `begun` is still running.
    running: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Ended {
    round: u64,
    passed: bool,
}

/// What a reader does next.
enum Step {
    /// A round begun after it asked has ended: its outcome.
    Done(bool),
    /// No round runs: drive this one.
    Drive(u64),
    /// A round runs that may have begun before it asked: wait for the next end.
    Wait(watch::Receiver<Ended>),
}

impl Barrier {
    pub(super) fn new() -> Barrier {
        Barrier {
            rounds: Mutex::new(Rounds::default()),
            ended: watch::Sender::new(Ended::default()),
        }
    }

    /// Waits for a round begun after this call and returns whether it passed; `round` runs one
    /// (the `PING`s) when this caller has to drive it. `patience` bounds each wait for another
    /// caller's round (a round's own `PING`s are bounded by `round`): past it, `false`.
    pub(super) async fn pass<F, Fut>(&self, patience: Duration, round: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let needed = self.lock().begun + 1;
        loop {
            match self.next_step(needed) {
                Step::Done(passed) => return passed,
                Step::Drive(number) => {
                    let guard = Driving {
                        barrier: self,
                        round: number,
                    };
                    let passed = round().await;
                    guard.end(passed);
                }
                Step::Wait(mut ended) => {
                    if !matches!(
                        tokio::time::timeout(patience, ended.changed()).await,
                        Ok(Ok(()))
                    ) {
                        return false;
                    }
                }
            }
        }
    }

    fn next_step(&self, needed: u64) -> Step {
        let mut rounds = self.lock();
        let ended = *self.ended.borrow();
        if ended.round >= needed {
            return Step::Done(ended.passed);
        }
        if rounds.running {
            // Subscribed under the lock: the end of the running round cannot slip between.
            return Step::Wait(self.ended.subscribe());
        }
        rounds.begun += 1;
        rounds.running = true;
        Step::Drive(rounds.begun)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds> {
        // Two integers, always consistent between statements: a panic elsewhere leaves them usable.
        self.rounds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn end(&self, round: u64, passed: bool) {
        let mut rounds = self.lock();
        rounds.running = false;
        self.ended.send_replace(Ended { round, passed });
    }
}

/// The round a caller drives: ended as failed if the caller is dropped before it ends it.
struct Driving<'a> {
    barrier: &'a Barrier,
    round: u64,
}

impl Driving<'_> {
    fn end(self, passed: bool) {
        self.barrier.end(self.round, passed);
        std::mem::forget(self);
    }
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        self.barrier.end(self.round, false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn concurrent_callers_share_rounds_and_each_waits_for_one_begun_after_it_asked() {
        let barrier = Barrier::new();
        let rounds = AtomicUsize::new(0);
        let round = || async {
            rounds.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            true
        };
        // 50 callers at once: the first drives round 1, the other 49 asked while it ran and
        // share round 2.
        let calls = (0..50).map(|_| barrier.pass(PATIENCE, round));
        let passed = futures_join_all(calls).await;
        assert!(passed.iter().all(|&p| p));
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        // Alone, a caller drives its own round.
        assert!(barrier.pass(PATIENCE, round).await);
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_round_fails_its_waiters_and_the_next_caller_starts_afresh() {
        let barrier = Arc::new(Barrier::new());
        // Round 1 hangs; a second caller waits for round 2; the first is dropped mid-round.
        let driver = {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move { barrier.pass(PATIENCE, std::future::pending::<bool>).await })
        };
        tokio::task::yield_now().await;
        let waiter = {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move { barrier.pass(PATIENCE, || async { false }).await })
        };
        tokio::task::yield_now().await;
        driver.abort();
        // Round 1 ended as failed by the drop; the waiter needed round 2, drives it, and it fails.
        assert!(!waiter.await.unwrap());
        // The next caller is not stuck behind either: round 3 passes.
        assert!(barrier.pass(PATIENCE, || async { true }).await);
    }

    /// `join_all` without the `futures` crate: spawned on the test's runtime would need `'static`.
    async fn futures_join_all<F: Future<Output = bool>>(
        calls: impl Iterator<Item = F>,
    ) -> Vec<bool> {
        let mut calls: Vec<_> = calls.map(Box::pin).collect();
        let mut results = vec![None; calls.len()];
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (call, result) in calls.iter_mut().zip(results.iter_mut()) {
                if result.is_none() {
                    match call.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *result = Some(value),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        results.into_iter().map(|r| r.unwrap_or(false)).collect()
    }
}
