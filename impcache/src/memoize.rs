//! The runtime of the [`#[cached]`](crate::cached) attribute macro: the process-wide default cache
//! and the one function every expansion calls ([`__private::memoize`](crate::__private::memoize)).
//!
//! # How a call runs
//! - **Hit**: one `GET`, one JSON decode, the value is returned.
//! - **Miss**: the body runs once per key per process however many callers arrive together (the
//!   first becomes the *leader*, the others wait for it), the value is returned as soon as the
//!   body has, and stored with `SET NX` and the expire in the background (a tokio task): a miss
//!   costs at most one deadline (its `GET`) plus the body. The key's flight stays open until the
//!   store has finished, so callers arriving meanwhile get the leader's value without running the
//!   body. Waiters get the leader's encoded JSON and decode it, so values need not be `Clone` and
//!   waiters are served even while the cache itself is down.
//! - **Leader returns `Err`/`None`** (a value that is not cached): each waiter runs its own body,
//!   concurrently. Errors are never shared between callers.
//! - **Leader panics or is cancelled**: its entry is removed on unwind/drop and the waiters elect a
//!   new leader among themselves; nothing stays stuck or poisoned.
//! - **Cache errors** (server down, deadline, breaker open, a key too long): the body runs and its
//!   value is returned; the error goes to `tracing`, never to the caller. A stored value that no
//!   longer decodes (the type changed) is treated as a miss and overwritten with `SET` (not `NX`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::{shown, Error};
use crate::expire::Expire;
use crate::json;
use crate::key::Version;
use crate::Cache;

static DEFAULT_CACHE: OnceLock<Cache> = OnceLock::new();

/// Installs the process-wide default cache used by [`#[cached]`](crate::cached) functions that
/// have no `cache = ...` option, like `tracing`'s global default dispatcher.
///
/// It can be set once; a second call returns the rejected cache in the error. Until it is set,
/// such functions run uncached (a `tracing` warning says so once).
///
/// ```
/// use impcache::{Cache, MemoryCacheRepository};
///
/// impcache::set_default_cache(Cache::new(MemoryCacheRepository::new()))?;
/// assert!(impcache::default_cache().is_some());
/// # Ok::<(), impcache::SetDefaultCacheError>(())
/// ```
pub fn set_default_cache(cache: Cache) -> Result<(), SetDefaultCacheError> {
    DEFAULT_CACHE
        .set(cache)
        .map_err(|cache| SetDefaultCacheError { cache })
}

/// The default cache installed with [`set_default_cache`], if any: handy to invalidate with
/// [`Cache::delete_pattern`].
pub fn default_cache() -> Option<&'static Cache> {
    DEFAULT_CACHE.get()
}

/// [`set_default_cache`] was called when a default cache was already installed.
pub struct SetDefaultCacheError {
    cache: Cache,
}

impl SetDefaultCacheError {
    /// The cache that was not installed.
    pub fn into_cache(self) -> Cache {
        self.cache
    }
}

impl fmt::Debug for SetDefaultCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What `fn main() -> Result<(), _>` prints: the reason, not an empty struct.
        f.debug_struct("SetDefaultCacheError")
            .field("reason", &format_args!("{self}"))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SetDefaultCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a default cache is already installed (`impcache::set_default_cache` can be called once per process)")
    }
}

impl std::error::Error for SetDefaultCacheError {}

/// What a leader tells the callers waiting on the same key.
#[derive(Clone)]
enum Outcome {
    /// The body is still running.
    Running,
    /// The body returned a cacheable value: its JSON.
    Value(Bytes),
    /// The body returned a value that is not cached (`Err`, `None`, or one that cannot be encoded).
    NotCached,
}

/// The key of an in-flight computation: the repository's address and the full key, so that two
/// caches never share a computation.
type FlightKey = (usize, String);

static FLIGHTS: LazyLock<Mutex<HashMap<FlightKey, watch::Receiver<Outcome>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn flights() -> std::sync::MutexGuard<'static, HashMap<FlightKey, watch::Receiver<Outcome>>> {
    // The lock is never held across user code or an await, so poisoning cannot leave the map
    // inconsistent: recover from it.
    FLIGHTS.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Join {
    Leader(Leader),
    Waiter(watch::Receiver<Outcome>),
}

fn join(key: &FlightKey) -> Join {
    let mut map = flights();
    if let Some(rx) = map.get(key) {
        return Join::Waiter(rx.clone());
    }
    let (tx, rx) = watch::channel(Outcome::Running);
    map.insert(key.clone(), rx);
    Join::Leader(Leader {
        key: key.clone(),
        tx,
    })
}

/// The leader's handle: removes the in-flight entry when dropped, including on panic or
/// cancellation; waiters then see the channel closed and elect a new leader.
struct Leader {
    key: FlightKey,
    tx: watch::Sender<Outcome>,
}

impl Leader {
    fn publish(&self, outcome: Outcome) {
        self.tx.send_replace(outcome);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut map = flights();
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

/// Waits for the leader; `None` when it panicked or was cancelled.
async fn wait(mut rx: watch::Receiver<Outcome>) -> Option<Outcome> {
    match rx.wait_for(|o| !matches!(o, Outcome::Running)).await {
        Ok(outcome) => Some(outcome.clone()),
        Err(_) => None,
    }
}

/// Whether the default-cache warning was emitted.
static WARNED_NO_DEFAULT: AtomicBool = AtomicBool::new(false);

/// Internals the `#[cached]` expansion names. /!\ Not a stable API: may change in any release. /!\
#[doc(hidden)]
pub(crate) mod __private {
    use super::*;

    /// The default cache, warning once when none is installed.
    #[inline]
    pub fn default_cache() -> Option<&'static Cache> {
        let cache = DEFAULT_CACHE.get();
        if cache.is_none() && !WARNED_NO_DEFAULT.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a #[cached] function was called before `impcache::set_default_cache`: it runs uncached until a default cache is installed"
            );
        }
        cache
    }

    /// Names the output type of a body, so that `?` in it infers.
    #[inline(always)]
    pub fn body<R, F: FnOnce() -> Fut, Fut: Future<Output = R>>(body: F) -> F {
        body
    }

    /// A value that can be part of a cache key.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be part of a cache key: it does not implement `serde::Serialize`",
        label = "this argument is part of the cache key",
        note = "leave it out of the key with `#[cached(skip(...))]`, or choose the key arguments with `key = \"...\"`"
    )]
    pub trait KeyArg: Serialize {}
    impl<T: Serialize + ?Sized> KeyArg for T {}

    /// A value that can be cached.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be cached: it must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
        label = "the cached value",
        note = "`#[cached]` stores `T` of a `Result<T, E>` or an `Option<T>` (aliases included) and any other return type whole, a generic parameter included; `returns = \"result\"` / `\"option\"` / `\"value\"` choose explicitly"
    )]
    pub trait CacheValue: Serialize + DeserializeOwned {}
    impl<T: Serialize + DeserializeOwned> CacheValue for T {}

    /// How a stored type is encoded and decoded. Obtained from [`codec`], the only place that
    /// requires `Serialize + DeserializeOwned`, so that a type without them gets one error, on
    /// the type.
    pub struct Codec<T> {
        encode: fn(&str, &T) -> crate::Result<Bytes>,
        decode: fn(&[u8]) -> serde_json::Result<T>,
    }

    impl<T> Clone for Codec<T> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<T> Copy for Codec<T> {}

    impl<T> fmt::Debug for Codec<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Codec")
        }
    }

    /// The JSON codec of a cached value type.
    #[inline(always)]
    pub fn codec<T: CacheValue>() -> Codec<T> {
        Codec {
            encode: json::encode::<T>,
            decode: json::from_slice::<T>,
        }
    }

    /// Which part of a return value is cached.
    pub trait Policy<R> {
        /// The stored type.
        type Value;
        /// The part to store, `None` when this return value is not cached.
        fn value(ret: &R) -> Option<&Self::Value>;
        /// The return value for a stored value.
        fn wrap(value: Self::Value) -> R;
    }

    /// Caches every return value as is (a type that is neither a `Result` nor an `Option`, and
    /// `returns = "value"`).
    #[derive(Debug, Clone, Copy)]
    pub struct Plain;
    /// Caches `Ok(T)` of a `Result<T, E>` (or an alias of one), storing `T`.
    #[derive(Debug, Clone, Copy)]
    pub struct OkOnly;
    /// Caches `Some(T)` of an `Option<T>` (or an alias of one), storing `T`.
    #[derive(Debug, Clone, Copy)]
    pub struct SomeOnly;

    impl<R> Policy<R> for Plain {
        type Value = R;
        #[inline]
        fn value(ret: &R) -> Option<&R> {
            Some(ret)
        }
        #[inline]
        fn wrap(value: R) -> R {
            value
        }
    }

    impl<R: ResultReturn> Policy<R> for OkOnly {
        type Value = R::Ok;
        #[inline]
        fn value(ret: &R) -> Option<&R::Ok> {
            ret.ok_ref()
        }
        #[inline]
        fn wrap(value: R::Ok) -> R {
            R::from_ok(value)
        }
    }

    impl<R: OptionReturn> Policy<R> for SomeOnly {
        type Value = R::Some;
        #[inline]
        fn value(ret: &R) -> Option<&R::Some> {
            ret.some_ref()
        }
        #[inline]
        fn wrap(value: R::Some) -> R {
            R::from_some(value)
        }
    }

    /// The policy chosen for a return type that contradicts `returns = "..."` or `cache_none`.
    /// It appears only in code that does not compile (the contradiction is reported where it is
    /// chosen); it satisfies every other bound so that the contradiction is the only error.
    #[derive(Debug, Clone, Copy)]
    pub struct Mismatch;

    /// The stored type of [`Mismatch`]: no value.
    #[derive(Debug, Clone, Copy)]
    pub enum Never {}

    impl Serialize for Never {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            match *self {}
        }
    }

    impl<'de> serde::Deserialize<'de> for Never {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Err(serde::de::Error::custom(
                "a #[cached] return type that contradicts its `returns` option has no value",
            ))
        }
    }

    impl<R> Policy<R> for Mismatch {
        type Value = Never;
        #[inline]
        fn value(_: &R) -> Option<&Never> {
            None
        }
        #[inline]
        fn wrap(value: Never) -> R {
            match value {}
        }
    }

    /// A `Result`, seen through any alias ([`OkOnly`] and `returns = "result"` require it).
    #[diagnostic::on_unimplemented(
        message = "`#[cached(returns = \"result\")]` needs a function returning a `Result`: `{Self}` is not one",
        label = "not a `Result` (nor an alias of one)",
        note = "leave `returns` out to let `#[cached]` classify the return type, or use `returns = \"value\"` to cache the whole value"
    )]
    pub trait ResultReturn {
        /// `T` of `Result<T, E>`.
        type Ok;
        /// `Ok(T)`'s value.
        fn ok_ref(&self) -> Option<&Self::Ok>;
        /// `Ok(value)`.
        fn from_ok(value: Self::Ok) -> Self;
    }

    impl<T, E> ResultReturn for Result<T, E> {
        type Ok = T;
        #[inline]
        fn ok_ref(&self) -> Option<&T> {
            self.as_ref().ok()
        }
        #[inline]
        fn from_ok(value: T) -> Self {
            Ok(value)
        }
    }

    /// An `Option`, seen through any alias ([`SomeOnly`], `returns = "option"` and `cache_none`
    /// require it).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not an `Option`: `#[cached(returns = \"option\")]` and `cache_none` apply to functions returning an `Option<T>` (or an alias of one)",
        label = "not an `Option` (nor an alias of one)",
        note = "leave `returns` and `cache_none` out to let `#[cached]` classify the return type, or use `returns = \"value\"` to cache the whole value"
    )]
    pub trait OptionReturn {
        /// `T` of `Option<T>`.
        type Some;
        /// `Some(T)`'s value.
        fn some_ref(&self) -> Option<&Self::Some>;
        /// `Some(value)`.
        fn from_some(value: Self::Some) -> Self;
    }

    impl<T> OptionReturn for Option<T> {
        type Some = T;
        #[inline]
        fn some_ref(&self) -> Option<&T> {
            self.as_ref()
        }
        #[inline]
        fn from_some(value: T) -> Self {
            Some(value)
        }
    }

    /// Classifies a return type by the type system rather than by its spelling, so that aliases
    /// (`type AppResult<T> = Result<T, AppError>`, `io::Result<T>`) behave as what they name.
    /// Without specialization, this is autoref specialization: the expansion calls
    /// `(&Returns::<R>::new()).policy()` with the three traits in scope; method lookup tries the
    /// receiver `&Returns<R>` first, where only [`ReturnsResult`] (for a `Result`) and
    /// [`ReturnsOption`] (for an `Option`) apply, then `&&Returns<R>`, where [`ReturnsValue`]
    /// applies to every type. A generic parameter `R` is not a `Result` to this lookup: it is
    /// cached whole.
    ///
    /// `returns = "result"`, `returns = "option"` and `cache_none` call `result_policy()`,
    /// `option_policy()` and `option_with_none_policy()` the same way: on a type that is not a
    /// `Result` (an `Option`), the lookup falls back to [`ReturnsMismatch`], whose bound fails
    /// with a message naming the option.
    pub struct Returns<R>(std::marker::PhantomData<fn() -> R>);

    impl<R> Returns<R> {
        /// The classifier of `R`.
        #[inline(always)]
        pub const fn new() -> Self {
            Returns(std::marker::PhantomData)
        }
    }

    impl<R> Default for Returns<R> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<R> fmt::Debug for Returns<R> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Returns")
        }
    }

    /// A `Result` return caches `Ok`'s value (see [`Returns`]).
    pub trait ReturnsResult {
        /// [`OkOnly`].
        #[inline(always)]
        fn policy(&self) -> OkOnly {
            OkOnly
        }
        /// `returns = "result"`: [`OkOnly`].
        #[inline(always)]
        fn result_policy(&self) -> OkOnly {
            OkOnly
        }
    }
    impl<T, E> ReturnsResult for Returns<Result<T, E>> {}

    /// An `Option` return caches `Some`'s value (see [`Returns`]).
    pub trait ReturnsOption {
        /// [`SomeOnly`].
        #[inline(always)]
        fn policy(&self) -> SomeOnly {
            SomeOnly
        }
        /// `returns = "option"`: [`SomeOnly`].
        #[inline(always)]
        fn option_policy(&self) -> SomeOnly {
            SomeOnly
        }
        /// `cache_none = true`: the whole `Option`, `None` included.
        #[inline(always)]
        fn option_with_none_policy(&self) -> Plain {
            Plain
        }
    }
    impl<T> ReturnsOption for Returns<Option<T>> {}

    /// Any other return type is cached whole (see [`Returns`]).
    pub trait ReturnsValue {
        /// [`Plain`].
        #[inline(always)]
        fn policy(&self) -> Plain {
            Plain
        }
    }
    impl<R> ReturnsValue for &Returns<R> {}

    /// A return type that contradicts `returns = "..."` or `cache_none` (see [`Returns`]): the
    /// failing bound is the error, reported once, on the option.
    pub trait ReturnsMismatch<R> {
        /// `returns = "result"` on a type that is not a `Result`.
        #[inline(always)]
        fn result_policy(&self) -> Mismatch
        where
            R: ResultReturn,
        {
            Mismatch
        }
        /// `returns = "option"` on a type that is not an `Option`.
        #[inline(always)]
        fn option_policy(&self) -> Mismatch
        where
            R: OptionReturn,
        {
            Mismatch
        }
        /// `cache_none` on a type that is not an `Option`.
        #[inline(always)]
        fn option_with_none_policy(&self) -> Mismatch
        where
            R: OptionReturn,
        {
            Mismatch
        }
    }
    impl<R> ReturnsMismatch<R> for &Returns<R> {}

    /// Fails to hold for every type: what a `#[cached]` method in a trait impl resolves its
    /// companions to (the expansion names `Self::{name}_uncached`, which only an inherent impl
    /// or a free function defines), so that the error says what to do.
    #[diagnostic::on_unimplemented(
        message = "`#[cached]` cannot be used on a method of a trait impl",
        label = "`#[cached]` adds the companions `<name>_uncached` and `<name>_invalidate` next to the method, and a trait impl can only define the trait's items",
        note = "put the cached function in an inherent impl (`impl {Self}`) or make it a free function, and call it from the trait impl's method"
    )]
    pub trait NotInTraitImpl {}

    /// Builds a key into one `String`: literal parts and arguments as compact JSON, written so
    /// that distinct argument values give distinct keys (see `key::write_arg` and the
    /// README's key layout).
    #[derive(Debug)]
    pub struct KeyBuilder {
        key: String,
        error: Option<(&'static str, String)>,
        /// Where the text of the last `key = "..."` placeholder starts, until the literal after
        /// it is known, and whether it is a JSON array or object (which ends unambiguously).
        placeholder: Option<(usize, bool)>,
    }

    impl KeyBuilder {
        /// An empty key with room for `capacity` bytes.
        #[inline]
        pub fn with_capacity(capacity: usize) -> Self {
            KeyBuilder {
                key: String::with_capacity(capacity),
                error: None,
                placeholder: None,
            }
        }

        /// Appends a literal part.
        #[inline]
        pub fn push_str(&mut self, part: &str) {
            if let Some(first) = part.chars().next() {
                if let Some(placeholder) = self.placeholder.take() {
                    self.end_placeholder(placeholder, Some(first));
                }
            }
            self.key.push_str(part);
        }

        /// Appends `value` as compact JSON (strings quoted).
        #[inline]
        pub fn push_json<T: KeyArg + ?Sized>(&mut self, name: &'static str, value: &T) {
            if let Err(e) = crate::key::write_arg(&mut self.key, value, None) {
                self.fail(name, e);
            }
        }

        /// Appends `value` for a `key = "..."` template: compact JSON, except that a string is
        /// written without quotes (`user:{name}` gives `user:alice`).
        ///
        /// So that two calls never share a key, a placeholder's text is written as a JSON string
        /// instead when it could be read another way: when it contains the first character of
        /// the literal that follows it in the template (`{a}:{b}` with `a = "x:y"` gives
        /// `"x:y":…`), starts with `"`, or is directly followed by another placeholder (a JSON
        /// array or object never is: it ends at its closing bracket); and an
        /// `Option`'s string keeps its quotes when unquoted it would read as `null`, `Some(…)` or a
        /// quoted string.
        pub fn push_template<T: KeyArg + ?Sized>(&mut self, name: &'static str, value: &T) {
            if let Some(placeholder) = self.placeholder.take() {
                self.end_placeholder(placeholder, None);
            }
            let start = self.key.len();
            let mut is_option = false;
            if let Err(e) = crate::key::write_arg(&mut self.key, value, Some(&mut is_option)) {
                self.fail(name, e);
                return;
            }
            let compound = matches!(self.key.as_bytes().get(start), Some(b'[' | b'{'));
            self.placeholder = Some((start, compound));
            if !self.key[start..].starts_with('"') {
                return;
            }
            // An `Option`'s string whose unquoted text could be another of its values keeps
            // its quotes.
            let keep_quotes = |text: &str| {
                is_option && (text == "null" || text.starts_with("Some(") || text.starts_with('"'))
            };
            let quoted = &self.key[start..];
            if !quoted.contains('\\') {
                // `"text"` without escapes: drop the quotes in place.
                if !keep_quotes(quoted.trim_matches('"')) {
                    self.key.pop();
                    self.key.remove(start);
                }
                return;
            }
            match serde_json::from_str::<String>(quoted) {
                Ok(text) if keep_quotes(&text) => {}
                Ok(text) => {
                    self.key.truncate(start);
                    self.key.push_str(&text);
                }
                Err(e) => self.fail(name, e),
            }
        }

        /// Ends the placeholder whose text starts at `start`, now that what follows it is
        /// known: the first character of the next literal, or `None` for another placeholder.
        /// A JSON array or object ends at its closing bracket whatever follows: it stays as is.
        fn end_placeholder(&mut self, (start, compound): (usize, bool), next: Option<char>) {
            let text = &self.key[start..];
            let readable = compound
                || match next {
                    Some(next) => !text.starts_with('"') && !text.contains(next),
                    None => false,
                };
            if readable {
                return;
            }
            let quoted = serde_json::Value::String(text.to_owned()).to_string();
            self.key.truncate(start);
            self.key.push_str(&quoted);
        }

        #[cold]
        fn fail(&mut self, name: &'static str, e: impl fmt::Display) {
            if self.error.is_none() {
                self.error = Some((name, e.to_string()));
            }
        }

        /// The key, or an [`Error::Encode`] naming the argument that could not be written.
        #[inline]
        pub fn finish(self) -> crate::Result<String> {
            match self.error {
                None => Ok(self.key),
                Some((name, reason)) => Err(Error::Encode {
                    key: shown(&self.key),
                    reason: format!("argument `{name}` cannot be written as JSON: {reason}"),
                }),
            }
        }
    }

    /// The cache a call uses: the function's cache with its version override, if any.
    enum Target<'a> {
        Borrowed(&'a Cache),
        Versioned(Cache),
    }

    impl Target<'_> {
        #[inline]
        fn get(&self) -> &Cache {
            match self {
                Target::Borrowed(cache) => cache,
                Target::Versioned(cache) => cache,
            }
        }
    }

    #[inline]
    fn target<'a>(cache: &'a Cache, version: Option<&Version>) -> Target<'a> {
        match version {
            None => Target::Borrowed(cache),
            Some(version) => Target::Versioned(cache.with_version(version.clone())),
        }
    }

    /// Runs one call of a `#[cached]` function (hit, single-flight miss, fail open).
    ///
    /// `cache` is `None` when no default cache is installed; `key` is `Err` when an argument
    /// could not be written as JSON (the body then runs uncached).
    pub async fn memoize<P, R, F, Fut>(
        cache: Option<&Cache>,
        version: Option<&Version>,
        key: crate::Result<String>,
        expire: Expire,
        _policy: P,
        codec: Codec<P::Value>,
        body: F,
    ) -> R
    where
        P: Policy<R>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        // Everything but the hit path is boxed, so that the future of a cached function stays
        // small: the body's future is only created (and allocated) on a miss.
        let Some(cache) = cache else {
            return Box::pin(body()).await;
        };
        let key = match key {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(%error, "#[cached]: the key cannot be built; running uncached");
                return Box::pin(body()).await;
            }
        };
        let target = target(cache, version);
        let cache = target.get();

        // The hit path: one GET, one decode.
        let mut overwrite = false;
        match cache.get_raw(&key).await {
            Ok(Some(bytes)) => match decode(codec, cache, &key, &bytes) {
                Ok(value) => return P::wrap(value),
                Err(()) => overwrite = true,
            },
            Ok(None) => {}
            Err(error) => report("get", &key, &error),
        }
        Box::pin(miss::<P, R, Fut>(
            cache, key, expire, codec, body, overwrite,
        ))
        .await
    }

    /// A miss: one execution per key per process, then store.
    async fn miss<P, R, Fut>(
        cache: &Cache,
        key: String,
        expire: Expire,
        codec: Codec<P::Value>,
        body: impl FnOnce() -> Fut,
        mut overwrite: bool,
    ) -> R
    where
        P: Policy<R>,
        Fut: Future<Output = R>,
    {
        let flight = (
            Arc::as_ptr(cache.repository()) as *const () as usize,
            cache.make_key(&key),
        );
        // A first leader runs the body at once: a miss costs GET + SET NX, as by hand. Only a
        // leader elected after another one panicked or was cancelled looks in the cache first.
        // (A leader whose store completes between a caller's GET and its joining the flight lets
        // that caller run the body once more: a narrow, documented race. The store's command is
        // sent before the leader answers, so a later GET from this process queues behind it.)
        let mut recheck = false;
        loop {
            match join(&flight) {
                Join::Leader(leader) => {
                    if recheck {
                        if let Ok(Some(bytes)) = cache.get_raw(&key).await {
                            if let Ok(value) = decode(codec, cache, &key, &bytes) {
                                leader.publish(Outcome::Value(bytes));
                                return P::wrap(value);
                            }
                            overwrite = true;
                        }
                    }
                    return run::<P, R, Fut>(
                        cache,
                        &key,
                        expire,
                        overwrite,
                        codec,
                        body(),
                        Some(leader),
                    )
                    .await;
                }
                Join::Waiter(rx) => match wait(rx).await {
                    Some(Outcome::Value(bytes)) => {
                        match decode(codec, cache, &key, &bytes) {
                            Ok(value) => return P::wrap(value),
                            // Another instantiation of a generic function under the same key.
                            Err(()) => {
                                return run::<P, R, Fut>(
                                    cache,
                                    &key,
                                    expire,
                                    true,
                                    codec,
                                    body(),
                                    None,
                                )
                                .await
                            }
                        }
                    }
                    Some(_) => {
                        return run::<P, R, Fut>(
                            cache,
                            &key,
                            expire,
                            overwrite,
                            codec,
                            body(),
                            None,
                        )
                        .await
                    }
                    // The leader panicked or was cancelled: elect a new one.
                    None => {
                        recheck = true;
                        continue;
                    }
                },
            }
        }
    }

    /// Runs the body and stores a cacheable result, publishing it to the waiters first.
    async fn run<P, R, Fut>(
        cache: &Cache,
        key: &str,
        expire: Expire,
        overwrite: bool,
        codec: Codec<P::Value>,
        body: Fut,
        leader: Option<Leader>,
    ) -> R
    where
        P: Policy<R>,
        Fut: Future<Output = R>,
    {
        let ret = body.await;
        let Some(value) = P::value(&ret) else {
            if let Some(leader) = &leader {
                leader.publish(Outcome::NotCached);
            }
            return ret;
        };
        let bytes = match (codec.encode)(key, value) {
            Ok(bytes) => bytes,
            Err(error) => {
                report("encode", key, &error);
                if let Some(leader) = &leader {
                    leader.publish(Outcome::NotCached);
                }
                return ret;
            }
        };
        if let Some(leader) = &leader {
            leader.publish(Outcome::Value(bytes.clone()));
        }
        store(
            cache.clone(),
            key.to_owned(),
            bytes,
            expire,
            overwrite,
            leader,
        )
        .await;
        ret
    }

    /// Stores a value without making the caller wait for the write: the caller is answered as
    /// soon as the body has returned, so a miss costs at most one deadline (its `GET`) plus the
    /// body, even with the server frozen.
    ///
    /// The store is polled once here, which sends the command (a Redis write is then queued on
    /// the connection ahead of any later command of this process, so the caller's next read
    /// sees it; an in-memory write simply completes), and the rest runs in a tokio task. The
    /// leader's flight stays open until the write has finished, so callers arriving in that
    /// window get the leader's value from memory instead of running the body again. Outside a
    /// tokio runtime the store is awaited in place.
    async fn store(
        cache: Cache,
        key: String,
        bytes: Bytes,
        expire: Expire,
        overwrite: bool,
        leader: Option<Leader>,
    ) {
        let write = async move {
            let stored = if overwrite {
                cache.set_raw(&key, bytes, expire).await
            } else {
                cache.set_nx_raw(&key, bytes, expire).await.map(|_| ())
            };
            if let Err(error) = stored {
                report("set", &key, &error);
            }
            drop(leader);
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return write.await;
        };
        let mut write = Box::pin(write);
        // One poll with this task's waker; the spawned task polls again with its own, so the
        // first waker may be woken once for nothing (harmless).
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        if first.is_pending() {
            runtime.spawn(write);
        }
    }

    #[inline]
    fn decode<V>(codec: Codec<V>, cache: &Cache, key: &str, bytes: &[u8]) -> Result<V, ()> {
        (codec.decode)(bytes).map_err(|source| {
            let error = Error::Decode {
                key: shown(&cache.make_key(key)),
                source,
            };
            tracing::warn!(%error, "#[cached]: the stored value does not decode as the return type; recomputing and replacing it");
        })
    }

    fn report(operation: &'static str, key: &str, error: &Error) {
        if matches!(error, Error::CircuitOpen { .. }) {
            tracing::debug!(operation, key, %error, "#[cached]: cache unavailable; running uncached");
        } else {
            tracing::warn!(operation, key, %error, "#[cached]: cache operation failed; the function runs regardless");
        }
    }

    /// Removes the entry of one call (the `*_invalidate` companion); `true` when one was removed.
    pub async fn invalidate(
        cache: Option<&Cache>,
        version: Option<&Version>,
        key: crate::Result<String>,
    ) -> crate::Result<bool> {
        let Some(cache) = cache else {
            return Ok(false);
        };
        let key = key?;
        let target = target(cache, version);
        Ok(target.get().delete(&key).await? > 0)
    }
}
