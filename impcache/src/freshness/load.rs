//! One `get_or_set` call: the read, the classification of what it found, and the load through
//! the single-flight of [`crate::flight`] (a leader's load runs in a spawned task, so that a
//! dropped caller neither cancels it nor strands its waiters).

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use super::lock::{self, Turn};
use super::policy::{Freshness, LoadSettings, State};
use crate::error::{shown, Error};
use crate::flight::{self, FlightGuard, Flights, Join, Leader, Ticket, Wait, Waiter};
use crate::json;
use crate::observe::hooks::FlightWait;
use crate::observe::polling::polled;
use crate::observe::stale::StaleReason;
use crate::tags::{self, envelope, LoadedTags, Tags};
use crate::Cache;

use super::answer::{self, Answer};
use super::job::{decode, load_event, report, FlightKey, Found, Job, Origin};
use super::throttle;
use super::waits::{self, Load};

/// The loads in flight in this process, publishing the value.
pub(super) static FLIGHTS: LazyLock<Arc<Flights<FlightKey, Shared>>> =
    LazyLock::new(flight::keyed_by_repository);

/// A leader's handle on its flight.
pub(super) type Guard = FlightGuard<FlightKey, Shared>;

/// What a flight's leader hands its waiters: a value, or the failure of its loader.
#[derive(Clone, Debug)]
pub(super) enum Shared {
    /// A value, loaded or read from the cache.
    Value(Value),
    /// The leader's loader failed (an `Err`, the hard timeout). A waiter whose own read found a
    /// stale value within its `stale_if_error` window answers with it; the others get an error
    /// naming this failure (the text here), without running their loaders (moka's
    /// `try_get_with`), unless it is not for sharing (`None`: a `#[cached]` body's `Err` or
    /// `None`, see [`LoadError::shared`]): then each runs its own. With tags, a waiter that
    /// asked after a hard invalidation that came after the load began loads its own value
    /// rather than get the failure of a load obsolete for it ([`Holds::holds_for`]).
    Failed(Option<Arc<str>>, Holds),
    /// The leader's loader panicked with a stale value at hand (without one it abandons the
    /// flight). A waiter whose own read found a stale value within its `stale_if_error` window
    /// answers with it; the others join the key's flight again once this one has ended, as
    /// behind an abandoned flight: one of them leads the next run, the others wait for it.
    Panicked,
}

/// A value a flight's leader hands its waiters: its JSON and, when the leader's call has tags,
/// the time (a tag stamp) from which the value holds against their invalidations (taken before
/// its loader ran, or before the read that found it).
#[derive(Clone, Debug)]
pub(super) struct Value {
    json: Bytes,
    holds: Holds,
}

/// When what a flight's leader hands its waiters (a value, a failure) holds from against the
/// invalidations of its call's tags.
#[derive(Clone, Debug)]
pub(super) struct Holds {
    /// The time (a tag stamp) and the tags; `None` for a call without tags.
    since: Option<(u64, Tags)>,
    /// Read from the cache for a call whose loader chooses tags (`tags_from`): the entry may
    /// carry tags the call does not know, whose state a waiter could not check.
    tags_unknown: bool,
}

impl Shared {
    /// A value that holds since `since` for a call with `tags`.
    fn new(json: Bytes, since: u64, tags: &Tags) -> Shared {
        Shared::Value(Value {
            json,
            holds: Holds::since(since, tags),
        })
    }

    /// A value the leader read from the cache at `since` for `job` (rather than loaded): as
    /// [`new`](Shared::new), but when the job's loader chooses tags, the entry's may be others
    /// than the call's, so a waiter that joined after the read does not take it (it reads the
    /// entry itself, and judges all its tags).
    fn read(json: Bytes, since: u64, job: &Job) -> Shared {
        let since =
            (!job.tags.is_empty() || job.loaded_tags.is_some()).then(|| (since, job.tags.clone()));
        Shared::Value(Value {
            json,
            holds: Holds {
                since,
                tags_unknown: job.loaded_tags.is_some(),
            },
        })
    }
}

impl Holds {
    /// What was computed from `since` (taken before its loader ran) for a call with `tags`.
    fn since(since: u64, tags: &Tags) -> Holds {
        Holds {
            since: (!tags.is_empty()).then(|| (since, tags.clone())),
            tags_unknown: false,
        }
    }

    /// Whether a waiter that joined the flight at `joined` takes the leader's answer, a value or
    /// a failure (`judged`):
    ///
    /// - A **value** computed (or read) before the waiter asked may have been invalidated in
    ///   between (`invalidate_tag` from any process): its tags' state is read again, and it is
    ///   taken only if none was invalidated since. A waiter that asked before it was computed
    ///   takes it, as the leader's own caller does.
    /// - A **failure** is taken unless the waiter asked after a hard invalidation of one of the
    ///   tags that came after the load began (that load was obsolete for it before it asked: it
    ///   loads its own value). A caller that asked before the invalidation takes it, as without
    ///   tags (and its stale value, if it has one: one loader run, not one per waiter, while the
    ///   origin fails); so does one after a soft invalidation, which the stale value covers.
    ///   Only the latest hard time of each tag is known: a hard invalidation before `joined`
    ///   followed by another after it counts as after.
    ///
    /// With the state unreadable (the waiter's own read failed, `reread` is `Never`, or this
    /// one does) only this cache's own invalidations are known (by the same rules: any since
    /// the value's time; a hard one between the load's start and the join for a failure, its
    /// soft ones leaving it shared: 20 waiters ran 21 loaders against a failing origin after
    /// one, found by a probe), and for a value, those of other processes its near cache was
    /// told of (of any tag: it was handed the older value, found by a chaos fuzz, 2026-12-07).
    /// Others it cannot see while the cache fails, and a load per waiter would fall on the
    /// loader's source exactly then (one loader run per key). Not reading it after a failed
    /// read keeps the call within one deadline.
    async fn holds_for(&self, job: &Job, joined: u64, reread: Reread, judged: Judged) -> bool {
        let Some((since, tags)) = &self.since else {
            return true;
        };
        if *since > joined {
            return true;
        }
        if self.tags_unknown {
            return false;
        }
        let cache = &job.cache;
        let sent = &cache.shared.invalidations_sent;
        // Another process's invalidation that the near cache was told of (it cannot say which
        // tag, nor hard or soft: any counts for a value).
        let told = || {
            cache
                .shared
                .near
                .as_ref()
                .is_some_and(|near| near.tag_changed_since(*since))
        };
        let unseen = || match judged {
            Judged::Value => !sent.any_since(*since) && !told(),
            // (The latest hard time only is kept: one after the join hides one before.)
            Judged::Failure => {
                let hard = sent.latest_hard();
                !(*since <= hard && hard < joined)
            }
        };
        if reread == Reread::Never {
            return unseen();
        }
        match cache.tag_states(tags.as_slice()).await {
            Ok(states) => {
                let verdict = |from| tags::verdict(from, &states, cache.shared.tag_clock_skew);
                match judged {
                    Judged::Value => verdict(*since) == tags::Verdict::Fresh,
                    // Gone since the load began, and not since the join (a soft invalidation
                    // after it changes nothing: the hard and soft times are kept apart).
                    Judged::Failure => {
                        verdict(*since) != tags::Verdict::Gone
                            || verdict(joined) == tags::Verdict::Gone
                    }
                }
            }
            Err(error) => {
                let (key, error) = (cache.logged_key(&job.key), cache.logged_error(&error));
                let taken = unseen();
                load_event!(job.origin, debug, key, %error, taken, ?judged, "tag state unreadable; the shared answer is taken unless this cache's own invalidations say otherwise");
                taken
            }
        }
    }
}

/// What a waiter judges by [`Holds::holds_for`]: the leader's value, or its failure.
#[derive(Clone, Copy, Debug)]
enum Judged {
    Value,
    Failure,
}

/// What the machinery needs of a loader's error type: to carry the cache's own errors (an
/// invalid expire, the hard timeout, another caller's failed load) and a panic of the loader.
pub(crate) trait LoadError: Display + Send + 'static + Sized {
    /// A cache error.
    fn from_cache(error: Error) -> Self;
    /// The loader of `key` panicked with `payload`.
    fn from_panic(key: &str, payload: Box<dyn Any + Send>) -> Self;
    /// Whether the waiters of a flight whose leader failed with this error get an error naming
    /// it ([`Error::Loader`], through [`from_cache`](LoadError::from_cache)) rather than run
    /// their own loaders.
    fn shared(&self) -> bool;
}

/// Any `E: From<impcache::Error>`: a panic becomes [`Error::Loader`] (its payload is dropped),
/// and every failure is shared with the flight's waiters, as moka's `try_get_with` shares its
/// loader's `Err`.
impl<E: From<Error> + Display + Send + 'static> LoadError for E {
    fn from_cache(error: Error) -> Self {
        E::from(error)
    }

    fn from_panic(key: &str, _payload: Box<dyn Any + Send>) -> Self {
        E::from(loader_error(key, "panicked"))
    }

    fn shared(&self) -> bool {
        true
    }
}

/// One call of [`Cache::get_or_set`] / [`Cache::try_get_or_set`], or of a `#[cached]` function
/// with freshness options, tags or a lock (`origin`: whom it is for, which names the target of
/// its events).
pub(crate) async fn get_or_set<V, E, F, Fut>(
    cache: &Cache,
    key: &str,
    expire: crate::Expire,
    policy: Freshness,
    (tags, loaded_tags): (Tags, Option<LoadedTags>),
    origin: Origin,
    loader: F,
) -> Result<V, E>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    // Bad input is the caller's: an invalid expire is an error (nothing is loaded), a key or a
    // tag the cache refuses (too long) runs the loader uncached, as any other cache error does.
    let LoadSettings { expiry, lock } = policy.load_settings(expire, key).map_err(E::from_cache)?;
    if let Err((operation, error)) = cache.check_key_for_load(key, &tags) {
        report(origin, cache, operation, key, &error);
        answer::record(Answer::Bypass);
        return loader().await;
    }
    let ticket = FLIGHTS.ticket();
    // The job (a clone of the cache, the key copied) is made only past a fresh hit.
    let job = || Job {
        cache: cache.clone(),
        key: key.to_owned(),
        expiry,
        policy,
        lock,
        tags: tags.clone(),
        loaded_tags: loaded_tags.clone(),
        fail_safe: false,
        replaces: None,
        waited: Duration::ZERO,
        origin,
    };
    // A value of another type (the read counts it as a miss) reads as none: loaded and
    // overwritten.
    let read = cache.read_for_load_tagged(key, &policy, &tags, origin);
    let (job, stale, loader, reread) = match read.await {
        Ok(Some(found)) => match serve(cache, key, &policy, &job, ticket, found, loader) {
            Served::Value(value) => return Ok(value),
            Served::Load { stale, loader } => (job(), stale, loader, Reread::IfAFlightEnded),
        },
        Ok(None) => (job(), None, loader, Reread::IfAFlightEnded),
        Err(error) => {
            report(origin, cache, "get", key, &error);
            answer::record(Answer::Bypass);
            // The near cache's fail-safe copy (off by default), for the loader's failure only.
            // Not with tags: their state cannot be read while Redis fails.
            let stale = if tags.is_empty() {
                cache
                    .near_fail_safe(key, &policy)
                    .filter(|copy| !envelope::is_envelope(copy))
            } else {
                None
            };
            let job = Job {
                lock: None,
                fail_safe: stale.is_some(),
                ..job()
            };
            // Within the fail-safe throttle the copy answers without a loader run, as a stale
            // value read from Redis does (`serve`).
            if stale.is_some() && throttled(cache, key, &policy) {
                if let Some(value) = serve_stale(&job, stale.as_ref(), StaleReason::Throttled) {
                    return Ok(value);
                }
            }
            // The read failed: another one would most likely wait a second deadline.
            (job, stale, loader, Reread::Never)
        }
    };
    // Boxed: the load's future (the loader's, the store's, the lock's) is several times the
    // read's, and inline it made every hit's future that large (7.7 KB against 2.4 KB in a
    // debug build), paid in the `Box::pin` of `GetOrSet::into_future` and its copy: 2 % of a
    // Redis hit's instructions, 7–10 % of a near-cached one's (BENCHMARKS.md, Run L).
    Box::pin(load(job, ticket, stale, loader, reread)).await
}

/// A call answered by the near cache alone, without waiting (the near-cached hit of issue 15,
/// which thus neither allocates nor builds the call's future): the local value at `key` when
/// the call is due for no early refresh and the value, fresh under `policy`, decodes as a `V`;
/// for a call with tags, a tagged entry already judged fresh against them and no tag state
/// changed since. [`serve`] answers such a value as it is, with nothing else to do. `None` for
/// anything else, counting nothing: the call goes its full way ([`get_or_set`]), which also
/// reports what it refuses (an invalid setting, key or tag).
pub(crate) fn near_fresh_hit<V: DeserializeOwned>(
    cache: &Cache,
    key: &str,
    expire: crate::Expire,
    policy: &Freshness,
    (tags, loaded_tags): (&Tags, Option<&LoadedTags>),
) -> Option<V> {
    // Tags chosen by the loader may be others than the call's (its entry's are judged on the
    // full way); an early refresh throws its coin in `serve` (thrown here too, the refresh would
    // be less likely than configured).
    if cache.shared.near.is_none() || loaded_tags.is_some() || policy.early_refresh_gap().is_some()
    {
        return None;
    }
    policy.load_settings(expire, key).ok()?;
    cache.check_key_for_load(key, tags).ok()?;
    cache.read_near_now(key, tags, policy, |found| {
        // (A tagged entry read without tags is judged on the full way.)
        if tags.is_empty() && envelope::is_envelope(&found.value) {
            return None;
        }
        match policy.state(found.ttl) {
            State::Fresh { .. } => json::from_slice(&found.value).ok(),
            State::Stale { .. } => None,
        }
    })
}

/// Whether a caller that becomes a flight's leader reads the key again first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reread {
    /// When a flight of the key ended since the caller's read: its value may be stored now.
    IfAFlightEnded,
    /// Not at all: the caller's read failed, and a call waits at most one deadline.
    Never,
}

/// What a read found, and what to do next.
enum Served<V, F> {
    /// Answer with it (a background reload may have been started).
    Value(V),
    /// Load, with this stale value at hand for errors and the soft timeout.
    Load { stale: Option<Bytes>, loader: F },
}

/// What to do with the value a call's read `found`: answer with it (fresh, or stale within a
/// window that allows it), or load.
fn serve<V, E, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Freshness,
    job: &dyn Fn() -> Job,
    ticket: Ticket,
    found: Found<V>,
    loader: F,
) -> Served<V, F>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    let Found {
        value,
        entry: found,
    } = found;
    match policy.state(found.ttl) {
        State::Fresh { left } => {
            // An early refresh is a background reload: not while the key's loader is throttled.
            if policy.refresh_early(left) && !throttled(cache, key, policy) {
                let replaces = left.map(|left| Instant::now() + left);
                spawn_refresh(Job { replaces, ..job() }, ticket, loader);
            }
            Served::Value(value)
        }
        State::Stale { past } if policy.serves_while_revalidating(past) => {
            if throttled(cache, key, policy) {
                cache.served_stale(key, StaleReason::Throttled);
            } else {
                cache.served_stale(key, StaleReason::Revalidating);
                spawn_refresh(job(), ticket, loader);
            }
            Served::Value(value)
        }
        State::Stale { past } if policy.serves_if_error(past) && throttled(cache, key, policy) => {
            cache.served_stale(key, StaleReason::Throttled);
            Served::Value(value)
        }
        State::Stale { past } => Served::Load {
            stale: policy.serves_if_error(past).then_some(found.value),
            loader,
        },
    }
}

/// Whether `key`'s loader failed within the policy's fail-safe throttle (checked only for a
/// value that may answer: a stale one, or a fresh one due for an early refresh).
fn throttled(cache: &Cache, key: &str, policy: &Freshness) -> bool {
    policy.fail_safe_throttle_duration().is_some() && throttle::holds(cache, key)
}

/// A load through the key's flight: lead it, or wait for its leader.
async fn load<V, E, F, Fut>(
    job: Job,
    ticket: Ticket,
    stale: Option<Bytes>,
    loader: F,
    reread: Reread,
) -> Result<V, E>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    let flight = job.flight();
    // Since this caller first joined another caller's flight: a caller that joins again (its
    // leader panicked, or its value was invalidated since under a lock), and then waits, leads
    // or loads on its own, has what is left of its allowance: it stays within one allowance in
    // all. A caller that leads at once has all of it.
    let mut waiting_since = None;
    // Whether this caller joined again once already after a leader with nothing to share.
    let mut retried_unshared = false;
    // Whether this caller joined again once already after a value or failure that no longer
    // held for it (without a lock).
    let mut rejoined = false;
    let mut first_joined = None;
    loop {
        match FLIGHTS.join(&flight, ticket) {
            Join::Leader(Leader { guard, recheck }) => {
                let spent = waiting_since.map_or(Duration::ZERO, |since: Instant| since.elapsed());
                let job = job.having_spent(spent);
                if recheck && reread == Reread::IfAFlightEnded {
                    // A flight of this key ended since our read: its value may be stored now.
                    if let Some((value, shared, _)) = second_look(&job).await {
                        guard.publish(shared);
                        return Ok(value);
                    }
                }
                answer::record(Answer::Ran);
                return lead(job, stale, loader, guard).await;
            }
            Join::Waiter(waiter) => {
                // A wait that would close a cycle of loads (a loader calling its own key,
                // directly or not) is not made (see `waits`).
                let Ok(_waiting) = waits::wait_for(Load::Flight(waiter.flight())) else {
                    load_event!(
                        job.origin,
                        warn,
                        key = job.cache.logged_key(&job.key),
                        "called from within its own load: its loader runs without the single flight"
                    );
                    answer::record(Answer::Ran);
                    // Nor with the lock across processes, which this load may hold.
                    return alone(Job { lock: None, ..job }, stale, loader).await;
                };
                let waiting_since = *waiting_since.get_or_insert_with(Instant::now);
                answer::record(Answer::Waited);
                answer::wait(FlightWait::begins);
                // When this caller first joined: a value whose load began after it holds for it
                // (as for the leader's own caller), whichever turn it waits in.
                let joined = *first_joined.get_or_insert_with(tags::stamp_micros);
                let soft = stale.as_ref().and(job.policy.soft_timeout_duration());
                // (To wait for this flight's end when its leader panicked: see below.)
                let this_flight = waiter.clone();
                let waited = match (soft, job.policy.hard_timeout_duration()) {
                    (Some(soft), _) => waiter.wait(soft).await,
                    // The leader's own hard timeout ends its flight first, unless its task is
                    // not run (its runtime is no longer driven): then this one. Under a lock,
                    // the leader may first wait up to the lock's `wait` for another process.
                    (None, Some(hard)) => {
                        let allowance = hard.saturating_add(lock_wait(&job));
                        waiter
                            .wait(allowance.saturating_sub(waiting_since.elapsed()))
                            .await
                    }
                    (None, None) => waiter.wait_unbounded().await,
                };
                answer::wait(FlightWait::ends);
                match waited {
                    // The leader's loader failed: this caller's loader does not run (one loader
                    // run per key per process, failing or not). Answered with the stale value its
                    // own read found within its window, else with an error naming the leader's.
                    // (Not when the load was made obsolete by an invalidation of its tags since
                    // this caller asked: then as behind a value that no longer holds.)
                    Wait::Published(Shared::Failed(shared, holds)) => {
                        if !holds.holds_for(&job, joined, reread, Judged::Failure).await {
                            if rejoins_after_invalidation(
                                &job,
                                &this_flight,
                                waiting_since,
                                &mut rejoined,
                            )
                            .await
                            {
                                continue;
                            }
                        } else {
                            if let Some(value) =
                                serve_stale(&job, stale.as_ref(), StaleReason::Error)
                            {
                                return Ok(value);
                            }
                            if let Some(failure) = shared {
                                let reason = format!(
                                    "not run: another caller's load of the key failed: {failure}"
                                );
                                return Err(E::from_cache(loader_error(&job.key, &reason)));
                            }
                            // Not for sharing (a `#[cached]` body's `Err` or `None`): as
                            // `NotShared`.
                            if once_more(&job, waiting_since, &mut retried_unshared) {
                                this_flight.ended(Duration::MAX).await;
                                continue;
                            }
                        }
                    }
                    // The leader's loader panicked, with a stale value at hand: answered with
                    // the stale value this caller's own read found within its window, else as
                    // behind an abandoned flight (`Wait::Abandoned`: one new leader, within what
                    // is left of the allowance), once this flight has ended (joined before, it
                    // would hand the same answer back at once). Not bounded: the leader's task
                    // ends it right after publishing this, in the same poll.
                    Wait::Published(Shared::Panicked) => {
                        if let Some(value) = serve_stale(&job, stale.as_ref(), StaleReason::Error) {
                            return Ok(value);
                        }
                        this_flight.ended(Duration::MAX).await;
                        continue;
                    }
                    Wait::Published(Shared::Value(shared)) => {
                        if !shared
                            .holds
                            .holds_for(&job, joined, reread, Judged::Value)
                            .await
                        {
                            if rejoins_after_invalidation(
                                &job,
                                &this_flight,
                                waiting_since,
                                &mut rejoined,
                            )
                            .await
                            {
                                continue;
                            }
                        } else if let Some(value) = decode(&job, &shared.json) {
                            return Ok(value);
                        }
                    }
                    // The soft timeout passed with a stale value at hand.
                    Wait::TimedOut if soft.is_some() => {
                        if let Some(value) =
                            serve_stale(&job, stale.as_ref(), StaleReason::SoftTimeout)
                        {
                            return Ok(value);
                        }
                    }
                    Wait::Abandoned => continue,
                    Wait::NotShared if once_more(&job, waiting_since, &mut retried_unshared) => {
                        this_flight.ended(Duration::MAX).await;
                        continue;
                    }
                    // (Past the hard timeout: left to `alone`, which has no time left to load.)
                    Wait::NotShared | Wait::TimedOut => {}
                }
                // The leader's loader ran and had nothing to share (its value could not be
                // encoded, or its `#[cached]` body returned a value that is not cached), twice
                // under a lock, or nothing that holds for this caller (invalidated since, past
                // the lock's `wait`): load on our own, unshared, within what is left of the
                // allowance, and not through the lock (see `once_more`).
                let job = job.having_spent(waiting_since.elapsed());
                return alone(job, stale, loader).await;
            }
        }
    }
}

/// Whether a waiter handed what a tag's invalidation made obsolete since it joined (a value, or
/// the failure of a load that started before it) joins the key's flight again: the next turn,
/// one caller loading for the others, once the flight that published it has ended (joined
/// while it still stores, it would hand the same answer back at once). Under a lock
/// ([`joins_again`]) while its `wait` lasts, through the lock. Without one, once (`rejoined`),
/// with a `tag_clock_skew` allowance, within which every load after an invalidation is obsolete
/// for its waiters: each loaded on its own, 50 runs for 50 callers of a key (found by a probe);
/// the flight's end is bounded by its store's deadline. The next leader's load begins after
/// they first joined: its value holds for them, as the leader's does for its own caller. Else
/// (an invalidation during a load, without an allowance) it loads on its own at once, not
/// waiting for the leader's store.
async fn rejoins_after_invalidation(
    job: &Job,
    published: &Waiter<Shared>,
    waiting_since: Instant,
    rejoined: &mut bool,
) -> bool {
    let bound = if joins_again(job, waiting_since) {
        lock_wait(job).saturating_sub(waiting_since.elapsed())
    } else if job.lock.is_none()
        && !job.cache.shared.tag_clock_skew.is_zero()
        && !std::mem::replace(rejoined, true)
    {
        Duration::MAX
    } else {
        return false;
    };
    published.clone().ended(bound).await;
    true
}

/// Whether a waiter whose leader's value was invalidated since it joined joins the key's flight
/// again rather than loading on its own: under a cross-process lock, while the lock's `wait`
/// lasts. One of the waiters then leads the next attempt, through the lock, and the others wait
/// for it: a value invalidated since they joined does not turn every waiter loose on the origin
/// at once, unlocked. Past the `wait`, each loads on its own, as a process does that waited that
/// long for another's lock. (After a leader with nothing to share, once only: [`once_more`].)
fn joins_again(job: &Job, waiting_since: Instant) -> bool {
    waiting_since.elapsed() < lock_wait(job)
}

/// Whether a waiter whose leader had nothing to share (a `#[cached]` body's `Err` or `None`, a
/// value that could not be encoded) joins the key's flight again: under a cross-process lock,
/// once (`retried`), once that flight has ended (not bounded: the leader's task ends it right
/// after its answer, in the same poll; joined before, it would hand the same answer back at
/// once, and the waiter, its turn spent, would run its own: 20 callers, up to 20 runs after one
/// failure). One of the waiters then runs the loader again through the lock and the
/// others wait for it, so that a failure that passes (the origin back) costs one more run, not
/// one per waiter (4 processes × 50 callers, a body failing once: 2 runs; 51 when every waiter
/// ran its own at once). If that run has nothing to share either, each waiter runs its own
/// loader at once, not through the lock: taking turns through it, the last of N callers of a
/// body that keeps failing waited N runs (20 callers of a 100 ms body: 2 s; 0.3 s now).
fn once_more(job: &Job, waiting_since: Instant, retried: &mut bool) -> bool {
    if *retried || !joins_again(job, waiting_since) {
        return false;
    }
    *retried = true;
    true
}

/// The lock's `wait` (zero without a lock): how long a leader may wait for another process's
/// value before its loader runs, on top of its hard timeout.
fn lock_wait(job: &Job) -> Duration {
    job.lock
        .as_ref()
        .map_or(Duration::ZERO, |(lock, _)| lock.wait_duration())
}

/// A leader's second look at its key (told to [`recheck`](Leader::recheck): a flight of the
/// key's group ended since its read, and may have stored a value): the value when it is fresh
/// now, with what the flight's waiters are handed and its time left.
async fn second_look<V: DeserializeOwned>(job: &Job) -> Option<(V, Shared, Option<Duration>)> {
    let since = tags::stamp_micros();
    let read = job
        .cache
        .read_for_load_tagged(&job.key, &job.policy, &job.tags, job.origin);
    // A `get` operation, but not another lookup: the caller's was its first read (and a
    // background reload's look is no caller's).
    let Found { value, entry } = polled(read).await.ok()??;
    let State::Fresh { left } = job.policy.state(entry.ttl) else {
        return None;
    };
    Some((value, Shared::read(entry.value, since, job), left))
}

/// `loader`, run in the caller's `tracing` span although its task is spawned, as it would be in
/// place. The loader alone: the span then closes once the caller and its loader are done, not
/// when the store after them is (an exporter timing a request by its span would count it).
/// A background reload has no caller waiting for it, and runs in no caller's span.
fn in_callers_span<F, Fut>(loader: F) -> impl FnOnce() -> tracing::instrument::Instrumented<Fut>
where
    F: FnOnce() -> Fut,
{
    let span = tracing::Span::current();
    move || loader().instrument(span)
}

/// The leader's load: the loader runs in a spawned task (which holds the flight, publishes,
/// stores, and then ends the flight); the caller waits for its answer, at most the soft timeout
/// when a stale value is at hand.
async fn lead<V, E, F, Fut>(job: Job, stale: Option<Bytes>, loader: F, guard: Guard) -> Result<V, E>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let load = Load::Flight(guard.flight());
    let task = run(
        job.clone(),
        stale.clone(),
        in_callers_span(loader),
        Some(guard),
        Some(tx),
    );
    // This caller's wait for the load, recorded before its task starts (whose loader may wait
    // for this caller's own load: see `waits`).
    let _waiting = waits::waiting_for_own(load);
    let task = waits::loading(load, task);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to spawn on (nor timers): in place.
        task.await;
        return answer(&job, stale.as_ref(), rx.await);
    };
    runtime.spawn(task);
    let mut rx = rx;
    // An answer within the soft timeout is the answer: the receiver, once complete, must not be
    // awaited again (it panics: "called after complete").
    let answered = match (&stale, job.policy.soft_timeout_duration()) {
        (Some(stale), Some(soft)) => match tokio::time::timeout(soft, &mut rx).await {
            Ok(answered) => answered,
            Err(_) => {
                if let Some(value) = serve_stale(&job, Some(stale), StaleReason::SoftTimeout) {
                    load_event!(job.origin, debug, key = job.cache.logged_key(&job.key), ?soft, "soft timeout: answering with the stale value; the loader goes on in the background");
                    return Ok(value);
                }
                rx.await
            }
        },
        _ => rx.await,
    };
    answer(&job, stale.as_ref(), answered)
}

/// The caller's answer from what the leader's task sent: its value, else the stale value, else
/// its error (`Err(RecvError)`: the loader panicked, or the runtime shut down).
fn answer<V, E>(
    job: &Job,
    stale: Option<&Bytes>,
    answered: Result<Result<V, E>, oneshot::error::RecvError>,
) -> Result<V, E>
where
    V: DeserializeOwned,
    E: LoadError,
{
    let failed = match answered {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => error,
        // The task was dropped unfinished: its runtime shut down.
        Err(_) => E::from_cache(loader_error(
            &job.key,
            "was cancelled (its runtime shut down)",
        )),
    };
    serve_stale(job, stale, StaleReason::Error).ok_or(failed)
}

/// The stale value at hand as the caller's answer, counted as served for `reason`, when there
/// is one, it decodes, and it may answer now ([`stale_allowed`]).
fn serve_stale<V: DeserializeOwned>(
    job: &Job,
    stale: Option<&Bytes>,
    reason: StaleReason,
) -> Option<V> {
    let value = decode(job, stale?)?;
    if !stale_allowed(job) {
        return None;
    }
    job.cache.served_stale(&job.key, reason);
    Some(value)
}

/// Whether the stale value at hand may answer the caller now. The near cache's fail-safe copy
/// is checked again (its window may have passed while the loader ran; a change may have dropped
/// it), and counted and logged when it answers.
fn stale_allowed(job: &Job) -> bool {
    if !job.fail_safe {
        return true;
    }
    if job.cache.near_fail_safe(&job.key, &job.policy).is_none() {
        return false;
    }
    job.cache.near_fail_safe_served(&job.key);
    true
}

/// A waiter's own load, when its leader had nothing to share: not single-flight.
async fn alone<V, E, F, Fut>(job: Job, stale: Option<Bytes>, loader: F) -> Result<V, E>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let task = run(
        job.clone(),
        stale.clone(),
        in_callers_span(loader),
        None,
        Some(tx),
    );
    // The answer comes as soon as the loader has one; the store goes on in the task (stores
    // never delay an answer). A caller dropped before its answer stops its loader, as when it
    // ran in place: no flight holds this load for anyone else.
    let load = Load::alone();
    let _waiting = waits::waiting_for_own(load);
    let task = waits::loading(load, task);
    let mut abort = None;
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            abort = Some(AbortOnDrop(Some(runtime.spawn(task).abort_handle())));
        }
        Err(_) => task.await,
    }
    let answered = rx.await;
    if let Some(abort) = abort {
        abort.disarm();
    }
    answer(&job, stale.as_ref(), answered)
}

/// Aborts a task when dropped, unless [`disarmed`](AbortOnDrop::disarm). Written here: it is
/// tokio-util's `AbortOnDropHandle`, and tokio-util is not a dependency of this crate for
/// anything else.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    /// Lets the task be: its handle is dropped, not aborted. (Not `mem::forget`: a handle never
    /// dropped keeps its task's memory for ever, 12 KB per load in a release build; found by a
    /// probe.)
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Runs the loader (bounded by the hard timeout), sends its result to `answer` as soon as it
/// has one, then publishes and stores the value (or, on failure, publishes the stale value, or
/// nothing) and ends the flight by dropping `guard`. The store is bounded by the repository's
/// deadline; its failure is logged.
pub(super) async fn run<V, E, F, Fut>(
    job: Job,
    stale: Option<Bytes>,
    loader: F,
    guard: Option<Guard>,
    answer: Option<oneshot::Sender<Result<V, E>>>,
) where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    // Across processes (a flight's leader only, with a lock): take the lock, or serve the value
    // another process stored while this one waited. Outside a tokio runtime (no timers to wait
    // with) the lock is not taken (`lock::take_polling`): the loader runs without it.
    // A throttle is the time a value stands in for a failed loader (a stale one, or the one a
    // background reload would replace), as FusionCache's is set on the stale entry: a failed
    // miss had none, and starts none (nor takes a place in its table, 10,000 keys, from a key
    // whose throttle answers).
    let throttles = stale.is_some() || answer.is_none();
    let held = match (job.lock, &guard) {
        (Some((lock, lifetime)), Some(_)) => {
            // (Before another process's value is read: what its waiters' checks count from.)
            let since = tags::stamp_micros();
            match lock::take(&job, lock, lifetime, answer.is_some()).await {
                Turn::Owner(held) => Some(held),
                Turn::Open => None,
                // A background reload: another process reloads (the flight is abandoned, and
                // any caller of this process waiting on it joins again).
                Turn::Busy => return,
                Turn::Loaded((value, bytes)) => {
                    if let Some(answer) = answer {
                        let _ = answer.send(Ok(value));
                    }
                    if let Some(guard) = guard {
                        guard.publish(Shared::read(bytes, since, &job));
                    }
                    return;
                }
            }
        }
        _ => None,
    };
    // Tags: the entry's creation time is taken before its loader runs, so that an invalidation
    // landing during the computation hides it; after the wait for the lock, which is no part of
    // the computation (an invalidation during the wait would hide the value loaded after it).
    let created = tags::stamp_micros();
    // A panic is caught here and becomes the loader's error: the caller is answered (the stale
    // value or `Error::Loader`). With a stale value at hand, the waiters with one of their own
    // answer with it, the others elect a new leader (`Shared::Panicked`); without one, the
    // flight is abandoned and they all elect a new leader (see below).
    // The loader is called in the first poll, inside the `catch_unwind`: one that panics before
    // returning its future is caught too.
    let mut loading = Box::pin(async move { loader().await });
    let loading = std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| loading.as_mut().poll(cx))) {
            Ok(Poll::Ready(loaded)) => Poll::Ready(Ok(loaded)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    });
    // What went wrong when it is this crate's to say (its error names the key): for the log.
    let mut failure = None;
    let caught = match job.policy.hard_timeout_duration() {
        Some(hard) => {
            // With nothing left (a zero hard timeout, or a caller that waited its whole hard
            // timeout for another caller's load), the loader is not started: polled once, it
            // would start its work only to be dropped. That needs no timer: outside a tokio
            // runtime too (it ran the loader there, found by a probe, 2026-12-07), where a
            // non-zero hard timeout cannot be timed and the loader runs unbounded (README).
            let left = hard.saturating_sub(job.waited);
            let within = if left.is_zero() {
                None
            } else if tokio::runtime::Handle::try_current().is_ok() {
                tokio::time::timeout(left, loading).await.ok()
            } else {
                Some(loading.await)
            };
            match within {
                Some(caught) => caught,
                None => {
                    let reason = timed_out(hard, job.waited);
                    let error = E::from_cache(loader_error(&job.key, &reason));
                    failure = Some(reason);
                    Ok(Err(error))
                }
            }
        }
        None => loading.await,
    };
    let panicked = caught.is_err();
    // A failure the waiters are handed (set below), or `None`.
    let mut shared_failure = None;
    let loaded = caught.unwrap_or_else(|payload| {
        failure = Some("panicked".to_owned());
        Err(E::from_panic(&job.key, payload))
    });
    let encoded = match &loaded {
        // (A `Serialize` that panics is an encoding error: the value answers, unstored.)
        Ok(value) => {
            if job.policy.fail_safe_throttle_duration().is_some() {
                throttle::end(&job.cache, &job.key);
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| json::encode(&job.key, value)))
                .unwrap_or_else(|_| Err(serialize_panicked(&job.key)))
            {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    report(job.origin, &job.cache, "encode", &job.key, &error);
                    None
                }
            }
        }
        Err(error) => {
            let throttle = job.policy.fail_safe_throttle_duration();
            if let Some(throttle) = throttle.filter(|_| throttles) {
                throttle::start(&job.cache, &job.key, throttle);
            }
            let serving_stale = stale.is_some();
            // What the waiters are handed (see `Shared::Failed`): the failure, told them when it
            // is for sharing (the crate's own reason, which does not repeat the key, else the
            // loader's error). A panic abandons the flight instead, and the waiters elect a new
            // leader, unless a stale value was at hand: then they answer with theirs, and those
            // without one elect a new leader (see `Shared::Panicked`).
            shared_failure = if !panicked {
                let told = error.shared().then(|| match &failure {
                    Some(reason) => Arc::from(reason.as_str()),
                    None => Arc::from(error.to_string()),
                });
                Some(Shared::Failed(told, Holds::since(created, &job.tags)))
            } else if stale.is_some() {
                Some(Shared::Panicked)
            } else {
                None
            };
            match (failure, job.cache.records_keys()) {
                // The crate's own error names the key: its reason alone.
                (Some(reason), false) => {
                    load_event!(
                        job.origin,
                        limited_warn,
                        reason,
                        serving_stale,
                        "the loader failed; nothing is stored"
                    );
                }
                _ => {
                    let key = job.cache.logged_key(&job.key);
                    load_event!(job.origin, limited_warn, key, %error, serving_stale, "the loader failed; nothing is stored");
                }
            }
            None
        }
    };
    let tags = job.value_tags();
    let published = encoded.is_some();
    // The store is sent before the caller is answered: polled once here, its command is queued
    // ahead of any later command of this process (an in-memory write completes), so a `set` or
    // `delete` the caller makes next is not undone by this store landing after it. A load whose
    // flight a write of the key detached since it began (a `delete`, a `set`, from any caller
    // of this process, also while the caller was answered early by a soft timeout's stale value,
    // or during a background reload) stores nothing: its value, computed before that write,
    // answers its caller and waiters only. Checked and sent in one step
    // (`FlightGuard::unless_detached`; the write detaches before it is sent: see
    // `Cache::detaching`). Nor does a load under a cross-process lock whose lifetime has passed
    // ([`Held::still_held`](super::lock::Held::still_held)) when the key holds a fresh value of
    // the caller's type (read as the lock's waiters read it, `lock::fresh`): another process took
    // the lock over and stored a newer one (a paused owner replaced it; found by a probe). A
    // hidden, stale or other-typed entry is replaced, as under the lock.
    let superseded = match (&held, &encoded) {
        (Some(held), Some(_)) if !held.still_held() => {
            matches!(polled(lock::fresh::<V>(&job)).await, Ok(Some(_)))
        }
        _ => false,
    };
    if superseded {
        let key = job.cache.logged_key(&job.key);
        load_event!(job.origin, limited_warn, key, "the lock's lifetime passed before the loader's value was stored, and another process has stored the key since: this value answers its callers unstored (make the lock's lifetime longer than the load)");
    }
    let mut storing = encoded.and_then(|bytes| {
        if let Some(guard) = &guard {
            guard.publish(Shared::new(bytes.clone(), created, &tags));
        }
        (!superseded).then(|| Box::pin(store(&job, bytes, created, &tags)))
    });
    let stored = match &mut storing {
        Some(store) => {
            let sent = std::future::poll_fn(|cx| {
                Poll::Ready(match &guard {
                    Some(guard) => guard.unless_detached(|| store.as_mut().poll(cx)),
                    None => Some(store.as_mut().poll(cx)),
                })
            })
            .await;
            // Detached: nothing is stored (the store, never polled, is dropped).
            sent.unwrap_or_else(|| {
                storing = None;
                Poll::Ready(())
            })
        }
        None => Poll::Ready(()),
    };
    // The flight ends before the caller is answered when nothing of it is left to run (the
    // loader failed, or its store completed in that first poll, as in memory, or was skipped):
    // a caller that calls again at once, or deletes the key and calls again, would join it and
    // be handed this answer, its own failure as "another caller's load" or the value it had
    // just deleted (found by a probe: up to 94 calls in 500 on the memory repository or a
    // near-cache hit).
    let guard = match (stored, guard) {
        (Poll::Pending, guard) => guard,
        (Poll::Ready(()), Some(guard)) if !published => {
            settle_failed(guard, shared_failure, panicked);
            None
        }
        (Poll::Ready(()), _) => None,
    };
    if let Some(answer) = answer {
        // The caller may be gone (dropped, or answered by its soft timeout): the store goes on.
        let _ = answer.send(loaded);
    }
    if let (Some(storing), Poll::Pending) = (storing, stored) {
        storing.await;
    }
    drop(guard);
    if let Some(held) = held {
        held.release(&job.cache, &job.key).await;
    }
}

/// Ends the flight of a load that stored nothing: its waiters are told why (see
/// [`Shared::Failed`], [`Shared::Panicked`]), or join it again, or load their own.
fn settle_failed(guard: Guard, failed: Option<Shared>, panicked: bool) {
    match failed {
        // The loader failed: its waiters are told.
        Some(failed) => guard.publish(failed),
        // A panic with no stale value at hand is no answer for anyone: the flight is
        // abandoned, and its waiters join again, one of them leading the next run (as a
        // panicking `#[cached]` body's waiters do, and moka's `get_with`'s), rather than each
        // loading at once.
        None if panicked => drop(guard),
        // A value that could not be encoded (the caller has it, unstored): each waiter loads
        // its own.
        None => guard.not_shared(),
    }
}

/// Stores a loaded value with the policy's expiry (`SET`, replacing a stale entry), in an
/// envelope with its `tags` and creation time when it has tags.
/// A value that could not be stored (the cache unreachable, timed out or refusing) is kept as
/// the near cache's fail-safe copy of the key (when there is one; not for tags, whose state no
/// copy can vouch for).
async fn store(job: &Job, bytes: Bytes, created: u64, tags: &Tags) {
    let stored = job
        .cache
        .set_for_load(&job.key, bytes.clone(), tags, created, job.expiry);
    if let Err(error) = stored.await {
        report(job.origin, &job.cache, "set", &job.key, &error);
        if error.is_backend_failure() && tags.is_empty() {
            job.cache.near_keep_unstored(&job.key, &bytes, job.expiry);
        }
    }
}

fn serialize_panicked(key: &str) -> Error {
    Error::Encode {
        key: shown(key),
        reason: "the value's `Serialize` panicked".to_owned(),
    }
}

/// Why a loader given the hard timeout `hard` gave no value, its caller having spent `waited`
/// of it waiting for another caller's load.
fn timed_out(hard: Duration, waited: Duration) -> String {
    if hard.is_zero() {
        "not run: the hard timeout is zero".to_owned()
    } else if waited >= hard {
        format!("not run: its hard timeout of {hard:?} was spent waiting for another caller's load")
    } else if waited.is_zero() {
        format!("timed out after {hard:?} (hard timeout)")
    } else {
        format!(
            "timed out after {hard:?} (hard timeout), {waited:?} of it spent waiting for another \
             caller's load"
        )
    }
}

fn loader_error(key: &str, reason: &str) -> Error {
    Error::Loader {
        key: shown(key),
        reason: reason.to_owned(),
    }
}

// Background reloads (stale-while-revalidate, early refresh): a spawned task holding the key's
// flight, so one reload per key per process; bounded by the hard timeout, its store by the
// repository's deadline. Here, beside `run`, as the other half of one load protocol.
/// Starts a background reload of `job`'s key unless one is under way (`loader` is then dropped
/// unrun). When a flight of the key's group ended since the caller's `ticket` (taken before its
/// read, which may have overtaken that flight's store), the reload first looks again, and ends
/// there if the value is fresh now (and not due for an early refresh). That flight is as likely
/// another key's, sharing the group: giving up on it would leave a busy process's stale keys
/// unreloaded. Outside a tokio runtime nothing is started: the stale value is served, and a
/// caller past the stale-while-revalidate window loads.
fn spawn_refresh<V, E, F, Fut>(job: Job, ticket: Ticket, loader: F)
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: LoadError,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        load_event!(
            job.origin,
            debug,
            key = job.cache.logged_key(&job.key),
            "no tokio runtime: no background reload"
        );
        return;
    };
    match FLIGHTS.join(&job.flight(), ticket) {
        // A load of this key is under way: its value will be stored.
        Join::Waiter(_) => {}
        Join::Leader(Leader { guard, recheck }) => {
            runtime.spawn(waits::loading(Load::Flight(guard.flight()), async move {
                if recheck {
                    if let Some((_, shared, left)) = second_look::<V>(&job).await {
                        if !job.policy.refresh_early(left) {
                            guard.publish(shared);
                            return;
                        }
                    }
                }
                load_event!(
                    job.origin,
                    debug,
                    key = job.cache.logged_key(&job.key),
                    "reloading in the background"
                );
                run::<V, E, F, Fut>(job, None, loader, Some(guard), None).await;
            }));
        }
    }
}
