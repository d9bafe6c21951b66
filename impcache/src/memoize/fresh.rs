//! One call of a `#[cached(...)]` function with freshness options (`stale_while_revalidate`,
//! `stale_if_error`, `soft_timeout`, `early_refresh`): [`memoize_fresh`], through the machinery
//! of [`Cache::get_or_set`](crate::Cache::get_or_set) (`crate::freshness`), with the stored part
//! of the return value chosen by the function's [`Policy`] as in [`memoize`](super::call::memoize).
//!
//! Such a function's body runs in a spawned task (a background reload, a soft timeout), so its
//! future must be `Send + 'static`: arguments are owned (no `&self`, no `&str`).
//!
//! The callers waiting for another caller's run of the body, when it fails: with a stale value
//! within `stale_if_error` from their own read, they answer with it. Without one, a body that
//! returned a value that is not cached (`Err`, `None`) leaves each of them to run its own body,
//! at once, as on the plain path (its error is the caller's own type: never shared), and under a
//! `lock` without taking it (the leader's run was this process's turn); a body given up at
//! its `hard_timeout` is shared: they get the return type's "timed out" value (`None`, or
//! `Err(Error::Loader { .. }.into())`, its reason naming the leader's timeout) without running
//! theirs; a body that panicked hands over to one new leader.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::call::TARGET;
use super::codec::Codec;
use super::returns::Policy;
use crate::error::Error;
use crate::expire::Expire;
use crate::freshness::answer::{self, Answer, Answered};
use crate::freshness::{load_with, near_fresh_hit, Freshness, LoadError, Lock, Origin};
use crate::json;
use crate::key::Version;
use crate::observe::hooks::{CachedFunction, CallOutcome, FlightWait};
use crate::tags::{LoadedTags, Tags};
use crate::Cache;

/// A freshness option's value: whole seconds (any integer), a [`Duration`] or an [`Expire`].
pub trait IntoDuration {
    /// The duration; a negative number of seconds is zero.
    fn into_duration(self) -> Duration;
}

impl IntoDuration for Duration {
    fn into_duration(self) -> Duration {
        self
    }
}

macro_rules! seconds {
    ($($int:ty),*) => {$(
        impl IntoDuration for $int {
            fn into_duration(self) -> Duration {
                // Negative: zero; past `u64::MAX` seconds (an `i128`, a `u128`): the longest.
                Duration::from_secs(u64::try_from(self).unwrap_or(if self > 0 { u64::MAX } else { 0 }))
            }
        }
    )*};
}
seconds!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

/// `Expire::seconds(5)` as `expire` takes it: no expiry is the longest duration kept
/// ([`MAX_EXPIRE`](crate::MAX_EXPIRE)), a negative one zero.
impl IntoDuration for Expire {
    fn into_duration(self) -> Duration {
        self.as_bound()
    }
}

/// Tags (issue 16): the tags built from a function's templates, then its own tag; the first
/// template that could not be built is the error.
pub fn tag_list<const N: usize>(
    tags: [crate::Result<String>; N],
    function: &str,
) -> crate::Result<Vec<String>> {
    let mut list = Vec::with_capacity(N + 1);
    for tag in tags {
        list.push(tag?);
    }
    list.push(function.to_owned());
    Ok(list)
}

/// Tags chosen from a `#[cached(tags_from = ..)]` function's value once it is there (issue 16, as
/// `get_or_set(..).tags_from(..)`): [`NoTagsFrom`] without the option, else [`tags_from`]'s.
pub trait TagsFrom<V>: Send + 'static {
    /// The tags of `value`.
    fn tags_of(&self, value: &V) -> Vec<String>;
    /// Whether the option was given.
    fn given(&self) -> bool;
}

/// No `tags_from` option.
#[derive(Debug)]
pub struct NoTagsFrom;

impl<V> TagsFrom<V> for NoTagsFrom {
    fn tags_of(&self, _: &V) -> Vec<String> {
        Vec::new()
    }

    fn given(&self) -> bool {
        false
    }
}

/// A `tags_from` option's function or closure over `&V` ([`tags_from`]). The `Fn` bound is
/// checked by [`tags_from`] alone (`call` is its monomorphic caller), so that a wrong function is
/// reported once, on the option; `V` is part of the type, so that it does not change what the
/// function's stored type is inferred to be.
pub struct TagsFromValue<V, F> {
    tags_of: F,
    call: fn(&F, &V) -> Vec<String>,
}

impl<V, F> fmt::Debug for TagsFromValue<V, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagsFromValue").finish_non_exhaustive()
    }
}

impl<V: 'static, F: Send + 'static> TagsFrom<V> for TagsFromValue<V, F> {
    fn tags_of(&self, value: &V) -> Vec<String> {
        (self.call)(&self.tags_of, value)
    }

    fn given(&self) -> bool {
        true
    }
}

/// `tags_from = f`: `f` over a reference to the stored value (`V`, the type the macro names, so
/// that a closure's argument type is inferred), returning any list of strings.
pub fn tags_from<V, F, I>(f: F) -> TagsFromValue<V, F>
where
    F: Fn(&V) -> I + Send + 'static,
    I: IntoIterator,
    I::Item: Into<String>,
{
    TagsFromValue {
        tags_of: f,
        call: |f, value| f(value).into_iter().map(Into::into).collect(),
    }
}

/// Tags (issue 16): the `{name}_invalidate_all` companion: invalidates the function's tag.
pub async fn invalidate_all(
    cache: Option<&Cache>,
    version: Option<&Version>,
    function: &str,
) -> crate::Result<()> {
    let Some(cache) = cache else {
        return Ok(());
    };
    match version {
        None => cache.invalidate_tag(function).await,
        Some(version) => {
            cache
                .with_version(version.clone())
                .invalidate_tag(function)
                .await
        }
    }
}

/// Why the call's settings are refused (an invalid expire or lock, a zero freshness option), if
/// they are.
fn refused(freshness: &Freshness, expire: Expire, key: &str) -> Option<Error> {
    zero_option(freshness, key)
        .and_then(|()| freshness.load_settings(expire, key).map(drop))
        .err()
}

/// Refuses a freshness option of zero, as the macro refuses a literal zero or negative one: a
/// `const` or computed value is only known here (a negative number of seconds is zero by
/// then). Run with it, a zero `hard_timeout` gave up on every call without running the body, and
/// a zero `soft_timeout` was ignored (found by a probe).
fn zero_option(freshness: &Freshness, key: &str) -> crate::Result<()> {
    let options = [
        (
            "stale_while_revalidate",
            freshness.stale_while_revalidate_window(),
        ),
        ("stale_if_error", freshness.stale_if_error_window()),
        ("soft_timeout", freshness.soft_timeout_duration()),
        ("hard_timeout", freshness.hard_timeout_duration()),
        ("early_refresh", freshness.early_refresh_gap()),
        (
            "fail_safe_throttle",
            freshness.fail_safe_throttle_duration(),
        ),
    ];
    match options
        .iter()
        .find(|(_, value)| *value == Some(Duration::ZERO))
    {
        Some((option, _)) => Err(Error::InvalidExpire {
            key: crate::error::shown(key),
            reason: format!("`{option}` is zero or negative"),
        }),
        None => Ok(()),
    }
}

/// A number of seconds written without a suffix (`3_000_000_000`, `60 * 60 * 24 * 365 * 80`),
/// typed as a `u64` by this parameter: through a generic conversion it would be an `i32`, which
/// overflows past 68 years.
pub const fn seconds(seconds: u64) -> u64 {
    seconds
}

/// A freshness option's value as a [`Duration`].
pub fn duration(value: impl IntoDuration) -> Duration {
    value.into_duration()
}

// --- `#[cached(lock = ...)]` (issue 16). ---

/// A `lock` option's value: `true` (the default [`Lock`]) or `false` (none), a lifetime in whole
/// seconds or as a [`Duration`] (the wait is [`Lock`]'s default, twice the lifetime), or a
/// [`Lock`].
pub trait IntoLock {
    /// The lock, if any.
    fn into_lock(self) -> Option<Lock>;
}

impl IntoLock for bool {
    fn into_lock(self) -> Option<Lock> {
        self.then(Lock::new)
    }
}

impl<T: IntoDuration> IntoLock for T {
    fn into_lock(self) -> Option<Lock> {
        Some(Lock::new().lifetime(self.into_duration()))
    }
}

impl IntoLock for Lock {
    fn into_lock(self) -> Option<Lock> {
        Some(self)
    }
}

/// `freshness` with the `lock` option's value: unchanged for `false` (a `const` the macro cannot
/// read: it turned the lock on; found by a regression hunt).
pub fn with_lock(freshness: Freshness, value: impl IntoLock) -> Freshness {
    match value.into_lock() {
        Some(lock) => freshness.lock(lock),
        None => freshness,
    }
}

/// A return value that is cached: stored as its policy's part (`T` of `Ok(T)`, ...), read back
/// wrapped again. The same bytes as [`memoize`](super::call::memoize) stores.
struct Stored<P, R>(R, PhantomData<fn() -> P>);

impl<P: Policy<R>, R> Serialize for Stored<P, R>
where
    P::Value: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match P::value(&self.0) {
            Some(value) => value.serialize(serializer),
            None => Err(serde::ser::Error::custom("this return value is not cached")),
        }
    }
}

impl<'de, P: Policy<R>, R> Deserialize<'de> for Stored<P, R>
where
    P::Value: DeserializeOwned,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        P::Value::deserialize(deserializer).map(|value| Stored(P::wrap(value), PhantomData))
    }
}

/// Why a load gave no stored value.
enum Failed<R> {
    /// The body returned a value that is not cached (an `Err`, a `None`): returned as is.
    Returned(R),
    /// The cache's own error (the body's task dropped with its runtime).
    Cache(Error),
    /// The body panicked: the panic goes on in the caller.
    Panicked(Box<dyn Any + Send>),
}

impl<R> fmt::Display for Failed<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Returned(_) => f.write_str("the function returned a value that is not cached"),
            Failed::Cache(error) => error.fmt(f),
            Failed::Panicked(_) => f.write_str("the function panicked"),
        }
    }
}

impl<R: Send + 'static> LoadError for Failed<R> {
    fn from_cache(error: Error) -> Self {
        Failed::Cache(error)
    }

    fn from_panic(_key: &str, payload: Box<dyn Any + Send>) -> Self {
        Failed::Panicked(payload)
    }

    /// A return value that is not cached is the caller's own to see (its type is the
    /// function's, not one an error could be made of): each waiter runs its own body, as on the
    /// plain path. The cache's own failure (the hard timeout) is shared: the waiters get the
    /// return type's "timed out" without running their bodies.
    fn shared(&self) -> bool {
        !matches!(self, Failed::Returned(_))
    }
}

/// Runs one call of a `#[cached(...)]` function with freshness options or tags. As
/// [`memoize`](super::call::memoize), plus `freshness` and `tags` (an error building one runs
/// the body uncached); the body must be `Send + 'static`. `timed_out` (with `hard_timeout`):
/// the return value of a call whose body was given up with no stale value to answer
/// ([`TimedOut`](super::returns::TimedOut)).
#[allow(clippy::too_many_arguments)]
pub async fn memoize_fresh<P, R, F, Fut>(
    function: &'static CachedFunction,
    cache: Option<&Cache>,
    version: Option<&Version>,
    key: crate::Result<String>,
    expire: Expire,
    freshness: Freshness,
    tags: crate::Result<Vec<String>>,
    tags_from: impl TagsFrom<P::Value>,
    timed_out: Option<fn(Error) -> R>,
    _policy: P,
    _codec: Codec<P::Value>,
    body: F,
) -> R
where
    P: Policy<R> + 'static,
    P::Value: Serialize + DeserializeOwned,
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let Some(cache) = cache else {
        function.call(CallOutcome::Bypass);
        return Box::pin(body()).await;
    };
    let key = match key {
        Ok(key) => key,
        Err(error) => {
            let error = cache.logged_error(&error);
            crate::observe::limited::limited_warn!(target: TARGET, function = function.name(), %error, "#[cached]: the key cannot be built; running uncached");
            function.call(CallOutcome::Bypass);
            return Box::pin(body()).await;
        }
    };
    let versioned;
    let cache = match version {
        None => cache,
        Some(version) => {
            versioned = cache.with_version(version.clone());
            &versioned
        }
    };
    // Checked first: an invalid expire, lock or freshness option would otherwise drop the body
    // unrun.
    // (In the condition, not a variable: one would live across the load's await, 112 bytes
    // more in every caller's future.)
    if let Some(error) = refused(&freshness, expire, &key) {
        let error = cache.logged_error(&error);
        crate::observe::limited::limited_warn!(target: TARGET, function = function.name(), %error, "#[cached]: running uncached");
        function.call(CallOutcome::Bypass);
        return Box::pin(body()).await;
    }
    let tags = match tags {
        Ok(tags) => Tags::from_owned(tags),
        Err(error) => {
            let error = cache.logged_error(&error);
            crate::observe::limited::limited_warn!(target: TARGET, function = function.name(), %error, "#[cached]: a tag cannot be built; running uncached");
            function.call(CallOutcome::Bypass);
            return Box::pin(body()).await;
        }
    };
    // `tags_from`: the value's tags, recorded once the body has answered.
    let chosen = tags_from.given().then(LoadedTags::default);
    // A fresh hit held by the near cache, answered from it alone, as `get_or_set`'s
    // (`GetOrSetFuture`), after a cooperative yield point, as every read of the cache (its
    // budget given back unspent when the whole call runs: that spends its own).
    let hit = {
        let progress = std::future::poll_fn(tokio::task::coop::poll_proceed).await;
        let hit = near_fresh_hit::<Stored<P, R>>(
            cache,
            &key,
            expire,
            &freshness,
            (&tags, chosen.as_ref()),
        );
        if hit.is_some() {
            progress.made_progress();
        }
        hit
    };
    if let Some(Stored(ret, _)) = hit {
        function.answered(CallOutcome::Hit, FlightWait::default());
        return ret;
    }
    let loader = {
        let chosen = chosen.clone();
        move || {
            async move {
                // Boxed (it runs only on a miss), as on the bypasses above: held in place, the
                // body's future made the caller's 3.3 times the size it has without a freshness
                // option (34 KB for a body holding 10 KB; found by a probe), past clippy's
                // `large_futures` at the call site.
                let ret = Box::pin(body()).await;
                match P::value(&ret) {
                    // (Not a `Some` that `cache_none` would store as `None`, `null`.)
                    Some(value) if !P::reads_back_otherwise(&ret, || json::writes_null(value)) => {
                        if let Some(chosen) = &chosen {
                            chosen.add(tags_from.tags_of(value));
                        }
                        Ok(Stored::<P, R>(ret, PhantomData))
                    }
                    _ => Err(Failed::Returned(ret)),
                }
            }
        }
    };
    let load = load_with(
        cache,
        &key,
        expire,
        freshness,
        (tags, chosen),
        Origin::Cached,
        loader,
    );
    let (loaded, Answered { answer, wait }) = answer::scope(load).await;
    // Counted as the plain path counts: a caller that waited for another caller's run is a
    // miss (or a bypass), and one wait; a caller whose body panicked is not counted (the panic
    // goes on to it).
    if !matches!(loaded, Err(Failed::Panicked(_))) {
        let outcome = match answer {
            Answer::Hit => CallOutcome::Hit,
            Answer::Ran | Answer::Waited => CallOutcome::Miss,
            Answer::Bypass => CallOutcome::Bypass,
        };
        function.answered(outcome, wait);
    }
    match loaded {
        Ok(Stored(ret, _)) | Err(Failed::Returned(ret)) => ret,
        Err(Failed::Panicked(payload)) => std::panic::resume_unwind(payload),
        // The body was given up (`hard_timeout`), or its task dropped unfinished with its
        // runtime: the return type's "timed out" when it has one.
        Err(Failed::Cache(error)) => match timed_out {
            Some(timed_out) => timed_out(error),
            // Without `hard_timeout`, only when the runtime shuts down: there is no return value
            // to give, and the caller's own runtime is going away.
            None => std::panic::resume_unwind(Box::new(error.to_string())),
        },
    }
}
