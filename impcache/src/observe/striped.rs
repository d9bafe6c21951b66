//! [`StripedCounter`]: a counter that many threads add to at once, for the counters every hit
//! touches ([`Counters`](super::Counters), the near cache's hits and misses).
//!
//! One shared `AtomicU64` moves its cache line from core to core on every hit. The near cache
//! and the memory repository serve a hit in well under a microsecond, so that cost shows: a
//! near-cached `Cache::get` at 64 tasks on two cores ran about 10 % faster once its two
//! counters were striped (BENCHMARKS.md, "Run N": 2.11–2.19 M/s before, 2.31–2.40 after).
//! Java's `LongAdder`, which Caffeine's statistics use, answers this with stripes: each thread
//! adds to a stripe of its own, on its own cache line, and a read sums the stripes. Each counter
//! weighs 1 KiB (5 KiB for a `Cache`'s stats, 3 KiB more for its near cache's). Written here
//! rather than taken from a crate: it is an array and a thread-local index; `crossbeam-utils`
//! (built for moka already) has only the padding.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter: more than the cores of most machines a cache runs on. Threads share a
/// stripe beyond that, which is still correct, only slower.
const STRIPES: usize = 8;

/// One stripe, alone on 128 bytes: x86-64 fetches cache lines in pairs, so a stripe on the
/// line next to another's would still be shared (the size crossbeam's `CachePadded` uses).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A counter of relaxed additions whose total is read rarely (a stats snapshot). The total is
/// exact once the additions are visible to the reader (as with one relaxed atomic).
#[derive(Default)]
pub(crate) struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

/// The total, not the stripes.
impl fmt::Debug for StripedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StripedCounter").field(&self.get()).finish()
    }
}

impl StripedCounter {
    /// Adds `n` to the calling thread's stripe.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe_of_this_thread()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The total of every stripe.
    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// The calling thread's stripe: threads take the stripes in turn as they first count.
#[inline]
fn stripe_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    // A thread whose thread-locals are being destroyed (a count from another thread-local's
    // destructor) shares the first stripe.
    STRIPE.try_with(|stripe| *stripe).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_total_is_every_threads_additions() {
        let counter = Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..(2 * STRIPES as u64))
            .map(|thread| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        counter.add(thread + 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok(), "a counting thread panicked");
        }
        let threads = 2 * STRIPES as u64;
        let total = 1_000 * threads * (threads + 1) / 2;
        assert_eq!(counter.get(), total);
        assert_eq!(format!("{counter:?}"), format!("StripedCounter({total})"));
    }

    #[test]
    fn stripes_live_on_cache_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<Stripe>(), 128);
        assert_eq!(std::mem::size_of::<StripedCounter>(), 128 * STRIPES);
    }
}
