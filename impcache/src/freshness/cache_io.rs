//! The [`Cache`] methods of the load protocol: its entry points [`Cache::get_or_set`],
//! [`Cache::try_get_or_set`] and [`Cache::get_raw_with_ttl`], and the crate-private reads and
//! writes that `load.rs` goes through (the key check, the read with the key's TTL, the tagged
//! read judged against the policy, the store, the near cache's fail-safe copy). They live here,
//! next to the protocol, so that `cache.rs` needs nothing of `crate::freshness`.

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::job::{decode_at, Found, Origin};
use super::policy::Freshness;
use super::request::{GetOrSet, TryGetOrSet};
use crate::cache::{observed, Cache};
use crate::error::{Error, Result};
use crate::expire::{Expire, Expiry};
use crate::json;
use crate::near::VerdictSlot;
use crate::observe::metrics::{Operation, Tally};
use crate::observe::polling;
use crate::observe::Observation;
use crate::repository::WithTtl;
use crate::tags::{self, envelope, Tags, Verdict};

// --- Freshness (issue 15): get_or_set, and what its machinery (`crate::freshness`) reads and
// writes through. ---

impl Cache {
    /// The value at `key`, or, when nothing is stored, the value of `loader`, stored for
    /// `expire` and returned.
    ///
    /// `loader` runs once per key per process however many callers miss together (the others
    /// wait for it and decode its value; when it fails, they do not run theirs: see
    /// [`try_get_or_set`](Cache::try_get_or_set)), in a spawned task: a caller that is dropped
    /// cancels nothing, and a loader that panics leaves nothing stuck (its waiters elect one new
    /// leader). Cache errors never fail the call:
    /// with the cache down, `loader` runs and answers (see the
    /// [freshness module docs](crate::freshness)). Set a [`Freshness`](crate::Freshness) policy
    /// (stale-while-revalidate, stale-if-error, timeouts, early refresh) with
    /// [`.freshness(..)`](crate::GetOrSet::freshness) before awaiting.
    ///
    /// Errors: an invalid `expire` or lock lifetime
    /// ([`Error::InvalidExpire`](crate::Error::InvalidExpire)), and a loader that gave no value
    /// (it passed its hard timeout, or was not run under a zero one, panicked, or its runtime
    /// shut down), or the load of another caller this one waited for that gave none, with no
    /// stale value to serve ([`Error::Loader`](crate::Error::Loader)).
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// use std::time::Duration;
    /// use impcache::Freshness;
    ///
    /// let cache = Cache::new(MemoryCacheRepository::new());
    /// let user: String = cache
    ///     .get_or_set("user:1", 60, || async { "Ada".to_owned() })
    ///     .freshness(Freshness::new().stale_while_revalidate(Duration::from_secs(30)))
    ///     .await?;
    /// assert_eq!(user, "Ada");
    /// # Ok(()) }
    /// ```
    #[doc(alias = "get_with")]
    pub fn get_or_set<'a, F>(
        &'a self,
        key: &'a str,
        expire: impl Into<Expire>,
        loader: F,
    ) -> GetOrSet<'a, F> {
        GetOrSet::new(self, key, expire.into(), loader)
    }

    /// [`get_or_set`](Cache::get_or_set) with a fallible loader: its `Err` is returned (or,
    /// within a [`stale_if_error`](crate::Freshness::stale_if_error) window, the stale value
    /// instead) and never stored. The callers that waited for it do not run their loaders (as
    /// moka's `try_get_with`): each gets the stale value its own read found within its window,
    /// else [`Error::Loader`](crate::Error::Loader) naming the key, whose reason says another
    /// caller's load of the key failed and gives that error's text
    /// (`not run: another caller's load of the key failed: {error}`). A caller arriving once
    /// that load has ended runs its loader again. `E: From<impcache::Error>` carries the errors
    /// of [`get_or_set`](Cache::get_or_set) (invalid expire, a loader that gave no value,
    /// another caller's failed load).
    #[doc(alias = "try_get_with")]
    pub fn try_get_or_set<'a, F>(
        &'a self,
        key: &'a str,
        expire: impl Into<Expire>,
        loader: F,
    ) -> TryGetOrSet<'a, F> {
        TryGetOrSet::new(self, key, expire.into(), loader)
    }

    /// The raw bytes at `key` with the key's remaining time to live, in one round trip (on Redis
    /// `GET` + `PTTL` pipelined): for callers that apply a [`Freshness`](crate::Freshness) policy
    /// to raw entries themselves ([`Freshness::state`](crate::Freshness::state)).
    pub async fn get_raw_with_ttl(&self, key: &str) -> Result<Option<WithTtl>> {
        self.read_for_load(key, true).await
    }

    /// Checks a key (and the call's tags) as every operation does; a refusal comes with what
    /// refused it, for the log: `get` (the key: the call's read refuses it) or `tags` (one of
    /// the call's tags).
    pub(crate) fn check_key_for_load(
        &self,
        key: &str,
        tags: &Tags,
    ) -> std::result::Result<(), (&'static str, Error)> {
        self.check_written_key(key)
            .map_err(|error| ("get", error))?;
        // A tag is checked as `set_tagged` and `invalidate_tag` check it: an entry is never
        // stored with a tag that cannot be invalidated.
        tags.as_slice()
            .iter()
            .try_for_each(|tag| self.check_tag(tag))
            .map_err(|error| ("tags", error))
    }

    /// The value at `key` with its remaining TTL when `with_ttl` (else a `GET`, TTL unknown),
    /// counted as a `get`.
    pub(crate) async fn read_for_load(&self, key: &str, with_ttl: bool) -> Result<Option<WithTtl>> {
        observed!(self, Operation::Get, Some(key), async {
            self.check_key(key)?;
            let found = if with_ttl {
                self.shared
                    .backend
                    .get_with_ttl(self.key_parts(key))
                    .await?
            } else {
                self.shared
                    .backend
                    .get(self.key_parts(key))
                    .await?
                    .map(|value| WithTtl::new(value, None))
            };
            let found = match found {
                Some(found) if envelope::is_envelope(&found.value) => self
                    .open_tagged(key, &found.value, Some(self.key_parts(key)), Operation::Get)
                    .await?
                    .map(|value| WithTtl { value, ..found }),
                found => found,
            };
            let tally = Tally::read(found.as_ref().map(|found| found.value.len()));
            Ok((found, tally))
        })
    }

    /// `get_or_set`'s read answered by the near cache alone, without waiting: the local entry
    /// at `key` (for a call with `tags`, one already judged fresh against them: see
    /// [`read_for_load_with_tags`](Cache::read_for_load_with_tags)) as `accept` takes it
    /// (decoded, judged fresh by `policy`), counted as a `get` that found it
    /// locally (stats, metrics, the span and its `tier`), as the full read
    /// ([`read_for_load_tagged`]) counts one. `None` when there is no such entry or `accept`
    /// refuses it, counting nothing: the call's full read follows.
    ///
    /// [`read_for_load_tagged`]: Cache::read_for_load_tagged
    pub(crate) fn read_near_now<T>(
        &self,
        key: &str,
        tags: &Tags,
        policy: &Freshness,
        accept: impl FnOnce(&WithTtl) -> Option<T>,
    ) -> Option<T> {
        let started = Observation::clock();
        let backend = &self.shared.backend;
        let found = backend.near_now(self.key_parts(key), tags, policy.needs_ttl())?;
        let taken = accept(&found)?;
        let observation = Observation::started_at(
            started,
            &self.shared.counters,
            self.shared.record_keys,
            self.shared.near.is_some(),
            Operation::Get,
            Some(key),
        );
        observation.span().in_scope(|| backend.near_hit());
        observation.finish(Ok(&Tally::read(Some(found.value.len()))), |_| {});
        Some(taken)
    }

    /// Stores a loaded value's JSON with an expiry already resolved, in an envelope with its
    /// `tags` and creation time `created` when it has tags; counted as a `set` of the value's
    /// bytes (as [`set_tagged`](Cache::set_tagged) counts them, without the envelope).
    pub(crate) async fn set_for_load(
        &self,
        key: &str,
        value: Bytes,
        tags: &Tags,
        created: u64,
        expiry: Expiry,
    ) -> Result<()> {
        observed!(self, Operation::Set, Some(key), async {
            let tally = Tally::written(value.len());
            let stored = match tags.as_slice() {
                [] => value,
                tags => envelope::wrap(&value, tags, created),
            };
            self.shared
                .backend
                .set(self.key_parts(key), stored, expiry)
                .await?;
            Ok(((), tally))
        })
    }
}

// --- The near cache's fail-safe copy (issue 15) for a `get_or_set` whose read failed. ---

impl Cache {
    /// Keeps a loaded value whose store failed as the near cache's fail-safe copy of `key` (its
    /// JSON, stored for `expiry`), when fail-safe is on
    /// ([`Store::keep_unstored`](crate::near::Store::keep_unstored)).
    pub(crate) fn near_keep_unstored(&self, key: &str, value: &Bytes, expiry: Expiry) {
        if let Some(near) = &self.shared.near {
            near.keep_unstored(&self.make_key(key), value, expiry.as_duration());
        }
    }

    /// The near cache's fail-safe copy of `key` within `policy`'s `stale_if_error` window
    /// (issue 15: [`NearCache::fail_safe`](crate::NearCache::fail_safe)), for a `get_or_set` whose read failed.
    pub(crate) fn near_fail_safe(&self, key: &str, policy: &Freshness) -> Option<Bytes> {
        self.shared
            .near
            .as_ref()?
            .fail_safe(&self.make_key(key), policy)
    }

    /// A watch of `key` in the near cache (`None` without one): woken when Redis reports the key
    /// changed, for the cross-process lock's waiters.
    pub(crate) fn near_watch(&self, key: &str) -> Option<crate::near::Watch> {
        Some(self.shared.near.as_ref()?.watch(&self.make_key(key)))
    }

    /// Counts and logs the near cache's fail-safe copy of `key` served.
    pub(crate) fn near_fail_safe_served(&self, key: &str) {
        if let Some(store) = &self.shared.near {
            store.fail_safe_served(self.logged_key(key).as_deref());
        }
    }
}

// --- Tags (issue 16): the tagged reads of `get_or_set`. ---

impl Cache {
    /// The read of `get_or_set` (every variant, and `#[cached]` with a freshness option, tags or
    /// a lock), counted as a `get`: with the call's `tags`, their state is read with the entry
    /// (one wait); a tagged entry is judged against its tags and the call's. A soft-invalidated
    /// entry comes back with a TTL that makes `policy` see it as stale since the invalidation,
    /// or as a miss past the policy's stale window.
    ///
    /// The entry is decoded as a `V` here: one that does not decode (stored by another type,
    /// such as before a deploy that changed it) is logged (for `origin`) and answered as not
    /// found, and counted as a miss ([`Tally::not_decoded`]): the caller's loader runs and
    /// overwrites it.
    pub(crate) async fn read_for_load_tagged<V: DeserializeOwned>(
        &self,
        key: &str,
        policy: &Freshness,
        tags: &Tags,
        origin: Origin,
    ) -> Result<Option<Found<V>>> {
        let decoded = |found: Option<WithTtl>, tally: &mut Tally| {
            let entry = found?;
            // The lock's polls and a leader's second look (`polling::active`) decode without
            // the warning: the caller's own read gave it, and a wait polls every 5 to 50 ms.
            let value = if polling::active() {
                json::decode(String::new, &entry.value).ok()
            } else {
                decode_at::<V>(origin, self, key, &entry.value)
            };
            match value {
                Some(value) => Some(Found { value, entry }),
                None => {
                    tally.not_decoded();
                    None
                }
            }
        };
        let read = async {
            if tags.is_empty() {
                self.read_for_load_judged(key, policy).await
            } else {
                self.read_for_load_with_tags(key, policy, tags).await
            }
        };
        observed!(self, Operation::Get, Some(key), read, map: decoded, also: |_, _| {})
    }

    /// The read of [`read_for_load_tagged`](Cache::read_for_load_tagged) for a call with tags.
    async fn read_for_load_with_tags(
        &self,
        key: &str,
        policy: &Freshness,
        tags: &Tags,
    ) -> Result<(Option<WithTtl>, Tally)> {
        self.check_key(key)?;
        let parts = self.key_parts(key);
        let backend = &self.shared.backend;
        // Through a near cache: an entry judged fresh against these tags, no tag state
        // having changed since, needs no judging again (`near/store.rs`).
        backend.catch_up().await;
        let slot = match backend.verified(parts, tags, policy.needs_ttl()) {
            Ok(found) => {
                let tally = Tally::read(Some(found.value.len()));
                return Ok((Some(found), tally));
            }
            Err(slot) => slot,
        };
        let keys = tags::state_keys(self.key_prefix(), tags.as_slice());
        let (found, states) = backend
            .get_with_tags(parts, &keys.keys(), policy.needs_ttl())
            .await
            .map_err(self.read_failed_for(Operation::Get, key))?;
        let found = self.judge(key, found, states, tags, policy, slot).await?;
        let tally = Tally::read(found.as_ref().map(|found| found.value.len()));
        Ok((found, tally))
    }

    /// An untagged `get_or_set` read: as [`read_for_load`](Cache::read_for_load), and a tagged
    /// entry found is judged with the policy's stale window.
    async fn read_for_load_judged(
        &self,
        key: &str,
        policy: &Freshness,
    ) -> Result<(Option<WithTtl>, Tally)> {
        self.check_key(key)?;
        let parts = self.key_parts(key);
        let found = if policy.needs_ttl() {
            self.shared.backend.get_with_ttl(parts).await?
        } else {
            self.shared
                .backend
                .get(parts)
                .await?
                .map(|value| WithTtl::new(value, None))
        };
        // Only a tagged entry needs judging: a plain one skips the (async) judge.
        let found = match found {
            Some(found) if envelope::is_envelope(&found.value) => {
                self.judge(key, Some(found), Vec::new(), &Tags::default(), policy, None)
                    .await?
            }
            found => found,
        };
        let tally = Tally::read(found.as_ref().map(|found| found.value.len()));
        Ok((found, tally))
    }

    /// What a `get_or_set` read of `key` found, judged against the tags' `states` (those of
    /// `read`, in order; the state of the entry's other tags is read here, a failure told as
    /// the `get`'s of `key`). With a near cache's `slot` (the local entry looked up before the
    /// states were read), a verdict "fresh" is kept on it for the next read with the same tags.
    ///
    /// A plain entry read by a call that names tags (stored before its function had tags, by a
    /// plain `set`, by the Python library) has no creation time: any invalidation of the call's
    /// tags covers it, as it would an entry created at time 0, so that a function which gains
    /// tags never serves an entry of before an invalidation of them.
    async fn judge(
        &self,
        key: &str,
        found: Option<WithTtl>,
        mut states: Vec<Option<Bytes>>,
        read: &Tags,
        policy: &Freshness,
        slot: Option<VerdictSlot>,
    ) -> Result<Option<WithTtl>> {
        let Some(found) = found else {
            return Ok(None);
        };
        let (created, value) = if envelope::is_envelope(&found.value) {
            let Some(opened) = envelope::open(&found.value) else {
                return Ok(Some(found));
            };
            let others: Vec<&str> = opened
                .tags
                .iter()
                .map(|tag| tag.as_ref())
                .filter(|tag| !read.as_slice().iter().any(|known| known == tag))
                .collect();
            let others = self
                .tag_states(&others)
                .await
                .map_err(self.read_failed_for(Operation::Get, key))?;
            states.extend(others);
            (Some(opened.created), opened.value)
        } else if read.is_empty() {
            return Ok(Some(found));
        } else {
            (None, found.value.clone())
        };
        let verdict = tags::verdict(created.unwrap_or(0), &states, self.shared.tag_clock_skew);
        let ttl = match verdict {
            Verdict::Fresh => {
                // (A plain entry is judged on every read: it has no envelope to keep a verdict
                // for.)
                if let Some(slot) = slot.filter(|_| created.is_some()) {
                    slot.keep(&found.value, read, value.clone());
                }
                found.ttl
            }
            Verdict::Gone => return Ok(None),
            Verdict::Stale { since } => {
                let window = policy.stale_window();
                let past = tags::elapsed_since(since);
                if past >= window {
                    return Ok(None);
                }
                let left = window - past;
                Some(found.ttl.map_or(left, |ttl| ttl.min(left)))
            }
        };
        Ok(Some(WithTtl::new(value, ttl)))
    }
}
