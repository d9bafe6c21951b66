//! [`CacheStats`]: counters kept by every [`Cache`](crate::Cache), for users without a metrics
//! recorder.

use super::{Ended, StripedCounter};

/// A snapshot of a cache's counters, from [`Cache::stats`](crate::Cache::stats).
///
/// The counters belong to the cache as built: its clones and its
/// [`with_version`](crate::Cache::with_version) copies count into the same ones (they share the
/// repository, whose hit ratio this measures). Two caches built separately over one repository
/// count separately. The counters only grow; subtract two snapshots for a rate.
///
/// ```
/// # use impcache::{Cache, MemoryCacheRepository};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
/// let cache = Cache::new(MemoryCacheRepository::new());
/// cache.set("a", &1, 60).await?;
/// cache.get::<i64>("a").await?;
/// cache.with_version(2).get::<i64>("a").await?;
/// let stats = cache.stats();
/// assert_eq!((stats.hits, stats.misses, stats.errors), (1, 1, 0));
/// assert_eq!(stats.hit_ratio(), Some(0.5));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Keys found by `get`, `get_raw` and `get_many` (each key of a batch counts).
    pub hits: u64,
    /// Keys looked up and not found.
    pub misses: u64,
    /// Operations that returned an error (bad input included; see the `impcache_errors_total`
    /// metric for the kinds).
    pub errors: u64,
    /// Values served past their expiry by [`get_or_set`](crate::Cache::get_or_set) and
    /// `#[cached]` under a [`Freshness`](crate::Freshness) policy (stale-while-revalidate,
    /// stale-if-error, soft timeout, fail-safe throttle; the `impcache_stale_served_total` metric
    /// has the reasons).
    /// Such a read counts as a hit too, except a near cache's fail-safe copy: it stands in for a
    /// read that failed (counted in `errors`).
    pub stale: u64,
    /// Operations whose future was dropped before they ended: the caller gave up on them (a
    /// timeout around the call, a dropped request), or they panicked. Not errors, nor lookups
    /// (a cancelled `get` is no hit and no miss); the `cancelled` outcome of the
    /// `impcache_operations_total` metric.
    pub cancelled: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// The live counters behind [`CacheStats`]: relaxed additions, as a snapshot needs no ordering
/// with the operations themselves; striped, as every hit counts (`striped.rs`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: StripedCounter,
    misses: StripedCounter,
    errors: StripedCounter,
    stale: StripedCounter,
    cancelled: StripedCounter,
}

impl Counters {
    /// Counts an ended operation.
    #[inline(always)]
    pub(crate) fn count(&self, ended: Ended<'_>) {
        match ended {
            Ended::Done(tally) => {
                if tally.hits > 0 {
                    self.hits.add(tally.hits);
                }
                if tally.misses > 0 {
                    self.misses.add(tally.misses);
                }
            }
            Ended::Failed(_) => self.errors.add(1),
            Ended::Cancelled => self.cancelled.add(1),
        }
    }

    /// Counts a value served past its expiry.
    pub(crate) fn served_stale(&self) {
        self.stale.add(1);
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            errors: self.errors.get(),
            stale: self.stale.get(),
            cancelled: self.cancelled.get(),
        }
    }
}
