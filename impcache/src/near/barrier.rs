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
//! dropped mid-way (its read's deadline ran out, or its caller went away) ends abandoned, so no
//! reader waits on a round nobody drives: the readers waiting for it begin another one rather
//! than take the abandoned one's failure for theirs.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// The rounds of one near cache's barrier.
pub(super) struct Barrier {
    /// Rounds begun so far (the number of the last one). Round `begun` is running while the
    /// last round to end is an earlier one.
    begun: Mutex<u64>,
    /// The last round to end, and whether it passed.
    ended: watch::Sender<Ended>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Ended {
    round: u64,
    /// Whether it passed; `None` when its driver was dropped mid-round (abandoned).
    outcome: Option<bool>,
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
            begun: Mutex::new(0),
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
        let needed = *self.lock() + 1;
        loop {
            match self.next_step(needed) {
                Step::Done(passed) => return passed,
                Step::Drive(number) => {
                    let mut driving = Driving {
                        barrier: self,
                        round: number,
                        passed: None,
                    };
                    driving.passed = Some(round().await);
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
        let mut begun = self.lock();
        let ended = *self.ended.borrow();
        if let Some(passed) = ended.outcome.filter(|_| ended.round >= needed) {
            return Step::Done(passed);
        }
        if ended.round < *begun {
            // Round `begun` runs. Subscribed under the lock: its end cannot slip between.
            return Step::Wait(self.ended.subscribe());
        }
        *begun += 1;
        Step::Drive(*begun)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // One integer: a panic elsewhere cannot leave it half-written.
        self.begun.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The round a caller drives, ended with its outcome when dropped: abandoned unless the caller
/// got as far as setting it (a caller dropped mid-round leaves no one waiting on it).
struct Driving<'a> {
    barrier: &'a Barrier,
    round: u64,
    /// `None` until the round has run.
    passed: Option<bool>,
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        // Under the lock, as the readers subscribe (see `Barrier::next_step`).
        let _begun = self.barrier.lock();
        self.barrier.ended.send_replace(Ended {
            round: self.round,
            outcome: self.passed,
        });
    }
}

// Unit tests: an `assert!` here is the test failing (clippy.toml allows the panicking macros in
// tests); none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn concurrent_callers_share_rounds_and_each_waits_for_one_begun_after_it_asked() {
        let barrier = Arc::new(Barrier::new());
        let rounds = Arc::new(AtomicUsize::new(0));
        let call = || {
            let (barrier, rounds) = (Arc::clone(&barrier), Arc::clone(&rounds));
            tokio::spawn(async move {
                let round = || async {
                    rounds.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    true
                };
                barrier.pass(PATIENCE, round).await
            })
        };
        // 50 callers at once: the first drives round 1, the other 49 asked while it ran and
        // share round 2.
        let calls: Vec<_> = (0..50).map(|_| call()).collect();
        for call in calls {
            assert!(matches!(call.await, Ok(true)));
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        // Alone, a caller drives its own round.
        assert!(matches!(call().await, Ok(true)));
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_abandoned_round_strands_no_one() {
        let barrier = Arc::new(Barrier::new());
        // Round 1 hangs; a second caller asks while it runs, so it needs round 2; the first
        // caller is dropped mid-round.
        let driver = {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move { barrier.pass(PATIENCE, std::future::pending::<bool>).await })
        };
        tokio::task::yield_now().await;
        let waiter = {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move { barrier.pass(PATIENCE, || async { true }).await })
        };
        tokio::task::yield_now().await;
        driver.abort();
        // The drop ended round 1 (abandoned): the waiter drives round 2 well within its
        // patience, and gets that round's outcome.
        let waited = tokio::time::timeout(PATIENCE / 2, waiter).await;
        assert!(
            matches!(waited, Ok(Ok(true))),
            "the waiter was stranded or failed: {waited:?}"
        );
        // A failing round's outcome is its callers': the next caller drives round 3.
        assert!(!barrier.pass(PATIENCE, || async { false }).await);
    }

    #[tokio::test]
    async fn the_waiters_of_an_abandoned_round_begin_another() {
        // Round 1 runs; two callers ask meanwhile and need round 2, each with a round that takes
        // 200 ms. One gives up after 50 ms (its deadline); when it drives round 2, it abandons
        // it. Which one drives is the scheduler's choice: ten times over, the patient caller
        // never takes an abandoned round's failure for its own.
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            true
        };
        for _ in 0..10 {
            let barrier = Arc::new(Barrier::new());
            let first = {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    let quick = || async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        true
                    };
                    barrier.pass(PATIENCE, quick).await
                })
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            let impatient = {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    let pass = barrier.pass(PATIENCE, slow);
                    tokio::time::timeout(Duration::from_millis(50), pass).await
                })
            };
            let patient = {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move { barrier.pass(PATIENCE, slow).await })
            };
            assert!(matches!(first.await, Ok(true)));
            assert!(
                matches!(impatient.await, Ok(Err(_))),
                "its deadline ran out"
            );
            assert!(matches!(patient.await, Ok(true)));
        }
    }
}
