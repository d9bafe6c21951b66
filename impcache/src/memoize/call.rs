//! One call of a `#[cached]` function: [`memoize`] (hit, single-flight miss, background store,
//! fail open) and [`invalidate`], plus the trait that a `#[cached]` method in a trait impl fails
//! on ([`NotInTraitImpl`]).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, LazyLock};
use std::task::Poll;

use bytes::Bytes;

use super::codec::Codec;
use super::returns::Policy;
use crate::error::{shown, Error};
use crate::expire::Expire;
use crate::flight::{self, FlightGuard, Flights, Join, Leader, Ticket, Wait};
use crate::key::Version;
use crate::observe::hooks::{CachedFunction, CallOutcome, FlightWait};
use crate::observe::polling::polled;
use crate::Cache;

/// Never a value: the expansion's unreachable `return` of it gives the async block holding a
/// `#[cached]` body the function's return type `R`, so that the body's `return`s and tail
/// coerce to it (`Err(Box::new(e))` in a `Result<_, Box<dyn Error>>`) as they would in the
/// function. `R` comes from a marker made beside the signature, outside the body, whose items
/// could otherwise shadow a name in it.
#[inline(always)]
pub fn no_value<R>(_returns: std::marker::PhantomData<fn() -> R>) -> Option<R> {
    None
}

/// Fails to hold for every type: what a `#[cached]` method in a trait impl resolves its
/// companions to (the expansion names `Self::{name}_uncached`, which only an inherent impl
/// or a free function defines), so that the error says what to do.
#[diagnostic::on_unimplemented(
    message = "`#[cached]` cannot be used on a method of a trait impl",
    label = "`#[cached]` adds the companions `<name>_uncached`, `<name>_invalidate` and `<name>_invalidate_all` next to the method, and a trait impl can only define the trait's items",
    note = "put the cached function in an inherent impl (`impl {Self}`) or make it a free function, and call it from the trait impl's method"
)]
pub trait NotInTraitImpl {}

/// The `tracing` target of the `#[cached]` runtime's events (its hits and misses, its warnings).
pub(crate) const TARGET: &str = "impcache::cached";

/// The key of an in-flight computation: the repository's address and the full key, so that two
/// caches never share a computation.
type FlightKey = (usize, String);

/// The `#[cached]` computations in flight in this process, publishing the value's JSON.
static FLIGHTS: LazyLock<Arc<Flights<FlightKey, Bytes>>> =
    LazyLock::new(flight::keyed_by_repository);

/// A leader's handle on its flight.
type Guard = FlightGuard<FlightKey, Bytes>;

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

/// Runs one call of a `#[cached]` function (hit, single-flight miss, fail open), counted as a call
/// of `function` (`impcache_cached_calls_total`).
///
/// `cache` is `None` when no default cache is installed; `key` is `Err` when an argument
/// could not be written as JSON (the body then runs uncached).
#[allow(clippy::too_many_arguments)]
pub async fn memoize<P, R, F, Fut>(
    function: &'static CachedFunction,
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
    // small: the body's future is only created (and allocated) on a miss. Each box is built by
    // `boxed`, outside this function's poll: see there.
    let Some(cache) = cache else {
        function.call(CallOutcome::Bypass);
        return boxed(body).await;
    };
    let key = match key {
        Ok(key) => key,
        Err(error) => {
            let error = cache.logged_error(&error);
            crate::observe::limited::limited_warn!(target: TARGET, function = function.name(), %error, "#[cached]: the key cannot be built; running uncached");
            function.call(CallOutcome::Bypass);
            return boxed(body).await;
        }
    };
    let target = target(cache, version);
    let cache = target.get();

    // Taken before the GET (one atomic load): a flight of the key that ends after it may have
    // stored its value after this GET read a miss, and the caller that then leads looks again
    // rather than run the body once more (see `join`).
    let ticket = FLIGHTS.ticket();
    // The hit path: one GET, one decode (the hit counted with the GET).
    let mut overwrite = false;
    let mut outcome = CallOutcome::Miss;
    // A value of another type counts as a miss of the `get` (`Cache::get_raw_cached`).
    let decoded = |bytes: &Bytes| decode(codec, cache, &key, bytes);
    // Pinned where it is built, in this future: awaited in place, it would be built in the poll's
    // stack frame first (see `boxed`).
    match pin!(cache.get_raw_cached(&key, Some(function), decoded)).await {
        Ok(Some(Ok(value))) => {
            function.trace(CallOutcome::Hit);
            return P::wrap(value);
        }
        Ok(Some(Err(()))) => overwrite = true,
        Ok(None) => {}
        // A key the cache refuses (over the key limit): the body runs uncached, with no single
        // flight, as `get_or_set` runs its loader (it joined a flight under that key, and a call
        // could take another's answer; found by a probe). So does a key whose write it refuses,
        // below.
        Err(error @ crate::Error::InvalidKey { .. }) => {
            report(cache, "get", &key, &error);
            function.call(CallOutcome::Bypass);
            return boxed(body).await;
        }
        Err(error) => {
            report(cache, "get", &key, &error);
            // A key of another Redis type (a list, a hash) holds no value of ours: replaced,
            // as a value that does not decode is (its `SET NX` would never land).
            overwrite = error.is_wrong_type();
            outcome = CallOutcome::Bypass;
        }
    }
    // A key the cache reads but does not write (one starting `__lock:`, the locks' keys, made
    // at run time by a `key` template): the body runs uncached, with no single flight (a
    // hunt: 50 callers, 1 run, 49 handed another caller's answer). Checked on a miss only.
    if let Err(error) = cache.check_written_key(&key) {
        report(cache, "set", &key, &error);
        function.call(CallOutcome::Bypass);
        return boxed(body).await;
    }
    // A miss: one execution per key per process (`join`), the body, then the store (`run`), each
    // boxed (see `boxed`): the body is polled right below this function's poll, in the stack
    // that a recursive function holds once per level.
    let (turn, wait) = boxed(|| join::<P, R>(cache, &key, codec, overwrite, outcome, ticket)).await;
    let (ret, outcome) = match turn {
        Turn::Answered(ret, outcome) => (ret, outcome),
        Turn::Run { leader, overwrite } => {
            let ret = boxed(body).await;
            let ret = boxed(|| run::<P, R>(cache, &key, expire, overwrite, codec, ret, leader));
            (ret.await, outcome)
        }
    };
    function.answered(outcome, wait);
    ret
}

/// `make()`'s future in a box, built in this function's stack frame, which has ended when the
/// box is polled. A future built in an async fn's poll (`Box::pin(f(..))`, or `f(..).await`)
/// takes its size in that poll's stack frame (in a debug build, a few times over), and the
/// frames of the polls that lead to the body stay on the stack while it runs: once per level of
/// a recursive `#[cached]` function. Built in place, the miss path held 47 KiB of stack per
/// level of a debug build (the 41st level overflowed a 2 MiB stack), 10.5 KiB of a release one;
/// built so, with the `GET` and the expansion's call pinned where they are built, 5.4 and
/// 4.2 KiB.
#[inline(never)]
fn boxed<T: Future>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::pin(make())
}

/// What a caller that missed does once it has joined the key's flight.
enum Turn<R> {
    /// Answers: with the leader's value, or (`Hit`) the value a leader elected late found.
    Answered(R, CallOutcome),
    /// Runs the body, as the flight's leader or on its own, and stores its result.
    Run {
        leader: Option<Guard>,
        overwrite: bool,
    },
}

/// A miss joins the key's flight: one execution per key per process. Answers with what the
/// caller does next and its wait for other callers' runs, counted by the caller once answered
/// (with the call's outcome: `hit` when a leader elected late finds the value, `outcome`
/// otherwise). `ticket` was taken before the caller's `GET`.
async fn join<P, R>(
    cache: &Cache,
    key: &str,
    codec: Codec<P::Value>,
    mut overwrite: bool,
    outcome: CallOutcome,
    ticket: Ticket,
) -> (Turn<R>, FlightWait)
where
    P: Policy<R>,
{
    let flight = (
        Arc::as_ptr(cache.repository()) as *const () as usize,
        cache.make_key(key),
    );
    // A first leader runs the body at once: a miss costs GET + SET NX, as by hand. A leader
    // elected after a flight of the key's group ended since the caller's ticket (taken before
    // its GET) looks in the cache first: that flight may have stored the value after the GET
    // read a miss (a leader whose store completed between a caller's GET and its joining made
    // that caller run the body once more: 4 to 8 keys in 30 of a burst of 100 callers each,
    // found by a probe), or panicked or was cancelled. Not when the GET failed: another read
    // would most likely wait a second deadline.
    let reread = outcome != CallOutcome::Bypass;
    // One wait however many leaders this caller waits for (the waiters of a cancelled one join
    // again), counted once it answers.
    let mut waited = FlightWait::default();
    loop {
        match FLIGHTS.join(&flight, ticket) {
            Join::Leader(Leader { guard, recheck }) => {
                if recheck && reread {
                    // A second read of the key: not another lookup of this caller's (its
                    // first was its `GET` in `memoize`), as `get_or_set`'s second look. Its
                    // `get` counts a value of another type as a miss, as the first read does.
                    let read = cache.get_raw_cached(key, None, |bytes| {
                        decode(codec, cache, key, bytes).map(|value| (value, bytes.clone()))
                    });
                    match polled(read).await {
                        Ok(Some(Ok((value, bytes)))) => {
                            guard.publish(bytes);
                            return (Turn::Answered(P::wrap(value), CallOutcome::Hit), waited);
                        }
                        Ok(Some(Err(()))) => overwrite = true,
                        Ok(None) | Err(_) => {}
                    }
                }
                let leader = Some(guard);
                return (Turn::Run { leader, overwrite }, waited);
            }
            Join::Waiter(waiter) => {
                waited.begins();
                let wait = waiter.wait_unbounded().await;
                waited.ends();
                let overwrite = match wait {
                    Wait::Published(bytes) => match decode(codec, cache, key, &bytes) {
                        Ok(value) => return (Turn::Answered(P::wrap(value), outcome), waited),
                        // Another instantiation of a generic function under the same key.
                        Err(()) => true,
                    },
                    Wait::NotShared | Wait::TimedOut => overwrite,
                    // The leader panicked or was cancelled: join again (the first to join leads).
                    Wait::Abandoned => continue,
                };
                let leader = None;
                return (Turn::Run { leader, overwrite }, waited);
            }
        }
    }
}

/// After the body has run: stores a cacheable result, publishing it to the waiters first.
async fn run<P, R>(
    cache: &Cache,
    key: &str,
    expire: Expire,
    overwrite: bool,
    codec: Codec<P::Value>,
    ret: R,
    leader: Option<Guard>,
) -> R
where
    P: Policy<R>,
{
    let Some(value) = P::value(&ret) else {
        if let Some(leader) = leader {
            leader.not_shared();
        }
        return ret;
    };
    let bytes = match codec.encode(key, value) {
        Ok(bytes) if !P::reads_back_otherwise(&ret, || &bytes[..] == b"null") => bytes,
        // A `Some` that `cache_none` would store as `None` (`null`): not stored.
        Ok(_) => {
            if let Some(leader) = leader {
                leader.not_shared();
            }
            return ret;
        }
        Err(error) => {
            report(cache, "encode", key, &error);
            if let Some(leader) = leader {
                leader.not_shared();
            }
            return ret;
        }
    };
    if let Some(leader) = &leader {
        leader.publish(bytes.clone());
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
/// window get the leader's value from memory instead of running the body again (unless the
/// key is written or deleted by a caller meanwhile: own writes detach the key's flights, see
/// `Cache::detaching`; not this store's own). A leader whose flight was detached so before its
/// store is sent stores nothing. Outside a tokio runtime the store is awaited in place.
async fn store(
    cache: Cache,
    key: String,
    bytes: Bytes,
    expire: Expire,
    overwrite: bool,
    leader: Option<Guard>,
) {
    let write = async move {
        let stored = cache.store_loaded_raw(&key, bytes, expire, overwrite).await;
        if let Err(error) = stored {
            report(&cache, "set", &key, &error);
        }
    };
    // Detached by a write of the key since the body began (`_invalidate`, `delete`, `set`): its
    // value, computed before that write, is not stored (it still answers the caller and the
    // waiters). Checked and sent in one step (`FlightGuard::unless_detached`).
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        if !leader.as_ref().is_some_and(Guard::is_detached) {
            write.await;
        }
        return;
    };
    let mut write = Box::pin(write);
    // One poll with this task's waker; the spawned task polls again with its own, so the
    // first waker may be woken once for nothing (harmless).
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(match &leader {
            Some(guard) => guard.unless_detached(|| write.as_mut().poll(cx)),
            None => Some(write.as_mut().poll(cx)),
        })
    })
    .await;
    if first.is_some_and(|first| first.is_pending()) {
        // The flight stays open until the write has finished.
        runtime.spawn(async move {
            write.await;
            drop(leader);
        });
    }
}

#[inline]
fn decode<V>(codec: Codec<V>, cache: &Cache, key: &str, bytes: &[u8]) -> Result<V, ()> {
    codec.decode(bytes).map_err(|source| {
        let error = crate::json::decode_error(shown(&cache.make_key(key)), source);
        let error = cache.logged_error(&error);
        tracing::warn!(target: TARGET, %error, "#[cached]: the stored value does not decode as the return type; recomputing and replacing it");
    })
}

fn report(cache: &Cache, operation: &'static str, key: &str, error: &Error) {
    let open = matches!(error, Error::CircuitOpen { .. });
    let (key, error) = (cache.logged_key(key), cache.logged_error(error));
    if open {
        tracing::debug!(target: TARGET, operation, key, %error, "#[cached]: cache unavailable; running uncached");
    } else {
        crate::observe::limited::limited_warn!(target: TARGET, operation, key, %error, "#[cached]: cache operation failed; the function runs regardless");
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

/// Removes every entry of an untagged function whose keys are the default ones, `base` or
/// `base:{arguments}` (the `*_invalidate_all` companion without tags): a `delete` of `base` and a
/// `delete_pattern` sweep of `base:[^:]*` (a keyspace scan on Redis; a tagged function's companion
/// is one tag invalidation instead). Without a default cache installed, does nothing.
pub async fn invalidate_all_keys(
    cache: Option<&Cache>,
    version: Option<&Version>,
    base: &str,
) -> crate::Result<()> {
    let Some(cache) = cache else {
        return Ok(());
    };
    let target = target(cache, version);
    let cache = target.get();
    cache.delete(base).await?;
    // `:[^:]*`, not `:*`: a default key's first argument is JSON, which never starts with `:`,
    // while the keys of a function in a module of the same name (`{base}::f:…`) do.
    let pattern = format!("{}:[^:]*", crate::key::escape_pattern(base));
    cache.delete_pattern(&pattern).await?;
    Ok(())
}
