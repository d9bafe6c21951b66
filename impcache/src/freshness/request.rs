//! [`GetOrSet`] and [`TryGetOrSet`]: what [`Cache::get_or_set`] and [`Cache::try_get_or_set`]
//! return, to set a [`Freshness`] policy on before awaiting.

use std::fmt;
use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::job::Origin;
use super::load;
use super::lock_settings::Lock;
use super::policy::Freshness;
use crate::error::{shown, Error, Result};
use crate::expire::Expire;
use crate::repository::BoxFuture;
use crate::tags::{LoadedTags, Tags};
use crate::Cache;

/// A [`Cache::get_or_set`] call: await it, after setting a [`Freshness`] policy or
/// [tags](GetOrSet::tags) if you want them.
#[must_use = "a `GetOrSet` does nothing until awaited"]
pub struct GetOrSet<'a, F> {
    cache: &'a Cache,
    key: &'a str,
    expire: Expire,
    policy: Freshness,
    tags: Tags,
    /// Where the loader's wrapper records the tags chosen from its value (`tags_from`).
    loaded_tags: Option<LoadedTags>,
    loader: F,
}

/// A [`Cache::try_get_or_set`] call: await it, after setting a [`Freshness`] policy if you want
/// one.
#[must_use = "a `TryGetOrSet` does nothing until awaited"]
pub struct TryGetOrSet<'a, F> {
    inner: GetOrSet<'a, F>,
}

/// The settings of [`Freshness`] as methods of a call, each changing that one setting of the
/// call's policy (`$policy`: the path of the policy field): `get_or_set(..).stale_if_error(..)`
/// is `get_or_set(..).freshness(Freshness::new().stale_if_error(..))`.
macro_rules! policy_settings {
    ($($policy:ident).+) => {
        /// Sets the policy's [`stale_while_revalidate`](Freshness::stale_while_revalidate).
        pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
            self.$($policy).+ = self.$($policy).+.stale_while_revalidate(window);
            self
        }

        /// Sets the policy's [`stale_if_error`](Freshness::stale_if_error).
        pub fn stale_if_error(mut self, window: Duration) -> Self {
            self.$($policy).+ = self.$($policy).+.stale_if_error(window);
            self
        }

        /// Sets the policy's [`soft_timeout`](Freshness::soft_timeout).
        pub fn soft_timeout(mut self, timeout: Duration) -> Self {
            self.$($policy).+ = self.$($policy).+.soft_timeout(timeout);
            self
        }

        /// Sets the policy's [`hard_timeout`](Freshness::hard_timeout).
        pub fn hard_timeout(mut self, timeout: Duration) -> Self {
            self.$($policy).+ = self.$($policy).+.hard_timeout(timeout);
            self
        }

        /// Sets the policy's [`early_refresh`](Freshness::early_refresh).
        pub fn early_refresh(mut self, gap: Duration) -> Self {
            self.$($policy).+ = self.$($policy).+.early_refresh(gap);
            self
        }

        /// Sets the policy's [`fail_safe_throttle`](Freshness::fail_safe_throttle).
        pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
            self.$($policy).+ = self.$($policy).+.fail_safe_throttle(throttle);
            self
        }

        /// Sets the policy's [`lock`](Freshness::lock).
        pub fn lock(mut self, lock: Lock) -> Self {
            self.$($policy).+ = self.$($policy).+.lock(lock);
            self
        }
    };
}

impl<'a, F> GetOrSet<'a, F> {
    pub(crate) fn new(cache: &'a Cache, key: &'a str, expire: Expire, loader: F) -> Self {
        GetOrSet {
            cache,
            key,
            expire,
            policy: Freshness::new(),
            tags: Tags::default(),
            loaded_tags: None,
            loader,
        }
    }

    /// The freshness policy of this call (default: none). Its settings can also be set one by
    /// one on the call (`.stale_while_revalidate(..)`, …), on top of this policy.
    pub fn freshness(mut self, policy: Freshness) -> Self {
        self.policy = policy;
        self
    }

    policy_settings!(policy);

    /// The tags of this call's entry (issue 16): read with the entry in one round trip, and
    /// stored with a loaded value, whose creation time is taken before the loader runs.
    /// [`Cache::invalidate_tag`] of any of them hides the entry; a soft invalidation makes it
    /// stale under this call's [`freshness`](GetOrSet::freshness) policy. A tag the cache
    /// refuses (empty, or longer than the key limit allows) makes the call run its loader
    /// uncached and log why, as a key it refuses does: the entry could not be invalidated by
    /// it ([`Cache::set_tagged`] and [`Cache::invalidate_tag`] return `Error::InvalidTag`).
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.tags = Tags::new(tags);
        self
    }

    /// Tags chosen from the loaded value (issue 16), stored with the call's
    /// [`tags`](GetOrSet::tags) when the loader runs: a tag may depend on what was loaded (the
    /// organisation of a user, the categories of a product), which the caller cannot know
    /// before. The entry's creation time is still taken before the loader runs, so an
    /// invalidation of such a tag that lands while the value is computed hides it too.
    ///
    /// A read finds these tags in the stored entry and reads their state in a second round
    /// trip (the call's own tags are read with the entry, in one); list the tags known up front
    /// with [`tags`](GetOrSet::tags) to keep hits at one. A tag the cache refuses
    /// ([`Error::InvalidTag`]: empty, or too long) is left out, with a warning. Called more
    /// than once, each closure adds its tags.
    ///
    /// ```
    /// # use impcache::{Cache, MemoryCacheRepository};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> impcache::Result<()> {
    /// # let cache = Cache::new(MemoryCacheRepository::new());
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct User { id: u64, org: u64 }
    ///
    /// let user: User = cache
    ///     .get_or_set("user:7", 60, || async { User { id: 7, org: 3 } })
    ///     .tags(["user:7"])
    ///     .tags_from(|user: &User| [format!("org:{}", user.org)])
    ///     .await?;
    /// cache.invalidate_tag("org:3").await?; // hides user:7, whose org was only known once loaded
    /// # let _ = user; Ok(()) }
    /// ```
    pub fn tags_from<V, Fut, G, I>(
        self,
        tags_of: G,
    ) -> GetOrSet<'a, impl FnOnce() -> BoxFuture<'static, V> + Send + 'static>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
        G: FnOnce(&V) -> I + Send + 'static,
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.choosing_tags(move |loader, record| {
            // Boxed: the wrapped future's type cannot be named in the return type (a loader
            // runs once per load, so the allocation is off the hit path).
            move || -> BoxFuture<'static, V> {
                Box::pin(async move {
                    let value = loader().await;
                    record.add(tags_of(&value));
                    value
                })
            }
        })
    }

    /// The call's answer from the near cache alone, when it holds one
    /// ([`load::near_fresh_hit`]).
    fn near_fresh_hit<V: DeserializeOwned>(&self) -> Option<V> {
        load::near_fresh_hit(
            self.cache,
            self.key,
            self.expire,
            &self.policy,
            (&self.tags, self.loaded_tags.as_ref()),
        )
    }

    /// This call with its loader wrapped by `wrap`, which records the tags it chooses in the
    /// call's [`LoadedTags`] (those of an earlier `tags_from`, if any).
    fn choosing_tags<L>(self, wrap: impl FnOnce(F, LoadedTags) -> L) -> GetOrSet<'a, L> {
        let loaded = self.loaded_tags.unwrap_or_default();
        GetOrSet {
            cache: self.cache,
            key: self.key,
            expire: self.expire,
            policy: self.policy,
            tags: self.tags,
            loader: wrap(self.loader, loaded.clone()),
            loaded_tags: Some(loaded),
        }
    }
}

impl<'a, F> TryGetOrSet<'a, F> {
    pub(crate) fn new(cache: &'a Cache, key: &'a str, expire: Expire, loader: F) -> Self {
        TryGetOrSet {
            inner: GetOrSet::new(cache, key, expire, loader),
        }
    }

    /// The freshness policy of this call (default: none); see [`GetOrSet::freshness`].
    pub fn freshness(mut self, policy: Freshness) -> Self {
        self.inner.policy = policy;
        self
    }

    policy_settings!(inner.policy);

    /// The tags of this call's entry: see [`GetOrSet::tags`].
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.inner.tags = Tags::new(tags);
        self
    }

    /// Tags chosen from the loaded value, when the loader succeeds: see
    /// [`GetOrSet::tags_from`].
    pub fn tags_from<V, E, Fut, G, I>(
        self,
        tags_of: G,
    ) -> TryGetOrSet<'a, impl FnOnce() -> BoxFuture<'static, Result<V, E>> + Send + 'static>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        G: FnOnce(&V) -> I + Send + 'static,
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let inner = self.inner.choosing_tags(move |loader, record| {
            // Boxed, as `GetOrSet::tags_from`'s.
            move || -> BoxFuture<'static, Result<V, E>> {
                Box::pin(async move {
                    let loaded = loader().await;
                    if let Ok(value) = &loaded {
                        record.add(tags_of(value));
                    }
                    loaded
                })
            }
        });
        TryGetOrSet { inner }
    }
}

impl<'a, V, F, Fut> IntoFuture for GetOrSet<'a, F>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = V> + Send + 'static,
{
    type Output = Result<V>;
    type IntoFuture = GetOrSetFuture<'a, Self, Result<V>>;

    fn into_future(self) -> Self::IntoFuture {
        GetOrSetFuture::new(self.key, self)
    }
}

impl<'a, V, E, F, Fut> IntoFuture for TryGetOrSet<'a, F>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: From<Error> + Display + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    type Output = Result<V, E>;
    type IntoFuture = GetOrSetFuture<'a, Self, Result<V, E>>;

    fn into_future(self) -> Self::IntoFuture {
        GetOrSetFuture::new(self.inner.key, self)
    }
}

/// The future of a [`GetOrSet`] (`C`) or [`TryGetOrSet`] call, giving `T`.
///
/// When first polled, once tokio's cooperative budget lets it run (as every operation of the
/// cache), a call whose answer a [near cache](crate::NearCache) holds (a value fresh under the
/// call's policy, due for no early refresh; with [tags](GetOrSet::tags), one already judged
/// fresh against them, no tag state changed since) is answered from it alone: neither
/// allocating nor running the call's machinery, it costs what a near-cached
/// [`Cache::get`](crate::Cache::get) does. Any other call runs that machinery, boxed.
///
/// Polled again once it has answered (which breaks `Future`'s contract), it answers
/// [`Error::Loader`] naming the key, rather than panic as an `async fn`'s future does.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct GetOrSetFuture<'a, C, T> {
    /// The call's key, for the error of a poll after the answer.
    key: &'a str,
    step: Step<'a, C, T>,
}

enum Step<'a, C, T> {
    /// Not polled yet.
    Call(C),
    /// The whole call.
    Load(BoxFuture<'a, T>),
    /// Answered from the near cache.
    Answered,
    /// The whole call answered (and, for a moment, between the call and its load).
    Done,
}

// The call is never pinned (it is data until the first poll moves it), and the whole call's
// future is pinned in its box: nothing here relies on not moving.
impl<C, T> Unpin for GetOrSetFuture<'_, C, T> {}

impl<'a, C, T> GetOrSetFuture<'a, C, T> {
    fn new(key: &'a str, call: C) -> Self {
        GetOrSetFuture {
            key,
            step: Step::Call(call),
        }
    }

    /// Polls the call: at the first poll, answers from the near cache (`near`) or starts the
    /// whole call (`load`); `failed` makes the answer of a cache error.
    fn poll_call(
        &mut self,
        cx: &mut Context<'_>,
        near: impl FnOnce(&C) -> Option<T>,
        load: impl FnOnce(C) -> BoxFuture<'a, T>,
        failed: impl FnOnce(Error) -> T,
    ) -> Poll<T> {
        if let Step::Call(call) = &self.step {
            // A cooperative yield point before the lookup, as every operation of the cache has
            // (`observed!` in `cache.rs`): a task looping over near hits gives its worker back,
            // and what it answers is looked up after the turn (an invalidation read meanwhile
            // counts). Given back unspent when the whole call runs: it spends its own.
            let progress = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            if let Some(answer) = near(call) {
                progress.made_progress();
                self.step = Step::Answered;
                return Poll::Ready(answer);
            }
            drop(progress);
            if let Step::Call(call) = std::mem::replace(&mut self.step, Step::Done) {
                self.step = Step::Load(load(call));
            }
        }
        let Step::Load(call) = &mut self.step else {
            return Poll::Ready(failed(Error::Loader {
                key: shown(self.key),
                reason: "its future was polled again after it answered".to_owned(),
            }));
        };
        let answer = std::task::ready!(call.as_mut().poll(cx));
        // The call's future is freed now, not when this one is dropped.
        self.step = Step::Done;
        Poll::Ready(answer)
    }
}

impl<'a, V, F, Fut> Future for GetOrSetFuture<'a, GetOrSet<'a, F>, Result<V>>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = V> + Send + 'static,
{
    type Output = Result<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<V>> {
        let load = |call: GetOrSet<'a, F>| -> BoxFuture<'a, Result<V>> {
            let loader = call.loader;
            Box::pin(load::get_or_set(
                call.cache,
                call.key,
                call.expire,
                call.policy,
                (call.tags, call.loaded_tags),
                Origin::GetOrSet,
                move || async move { Ok::<V, Error>(loader().await) },
            ))
        };
        self.get_mut()
            .poll_call(cx, |call| call.near_fresh_hit().map(Ok), load, Err)
    }
}

impl<'a, V, E, F, Fut> Future for GetOrSetFuture<'a, TryGetOrSet<'a, F>, Result<V, E>>
where
    V: Serialize + DeserializeOwned + Send + 'static,
    E: From<Error> + Display + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    type Output = Result<V, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<V, E>> {
        let load = |call: TryGetOrSet<'a, F>| -> BoxFuture<'a, Result<V, E>> {
            let GetOrSet {
                cache,
                key,
                expire,
                policy,
                tags,
                loaded_tags,
                loader,
            } = call.inner;
            Box::pin(load::get_or_set(
                cache,
                key,
                expire,
                policy,
                (tags, loaded_tags),
                Origin::GetOrSet,
                loader,
            ))
        };
        self.get_mut().poll_call(
            cx,
            |call| call.inner.near_fresh_hit().map(Ok),
            load,
            |error| Err(E::from(error)),
        )
    }
}

impl<C, T> fmt::Debug for GetOrSetFuture<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Call(_) => "not polled",
            Step::Load(_) => "loading",
            Step::Answered => "answered from the near cache",
            Step::Done => "done",
        };
        f.debug_struct("GetOrSetFuture")
            .field("key", &self.key)
            .field("step", &step)
            .finish()
    }
}

impl<F> fmt::Debug for GetOrSet<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetOrSet")
            .field("key", &self.key)
            .field("expire", &self.expire)
            .field("policy", &self.policy)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Debug for TryGetOrSet<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryGetOrSet")
            .field("key", &self.inner.key)
            .field("expire", &self.inner.expire)
            .field("policy", &self.inner.policy)
            .field("tags", &self.inner.tags)
            .finish_non_exhaustive()
    }
}
