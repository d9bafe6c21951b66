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
//!   body; a write of the key through a `Cache` (`delete`, `*_invalidate`, `set`, ...) detaches
//!   it at once, and a call after the write runs the body again. A leader whose flight was so
//!   detached before its store is sent (the write came while its body ran) stores nothing: its
//!   value, computed before the write, answers its caller and waiters only. Waiters get the leader's encoded JSON and decode it, so values need not be `Clone` and
//!   waiters are served even while the cache itself is down.
//! - **Leader returns `Err`/`None`** (a value that is not cached): each waiter runs its own body,
//!   concurrently. Errors are never shared between callers.
//! - **Leader panics or is cancelled**: its flight is abandoned on unwind/drop; the waiters join
//!   again, the first of them leads (looking in the cache first) and the others wait for it;
//!   nothing stays stuck or poisoned.
//! - **Cache errors** (server down, deadline, breaker open, a key too long): the body runs and its
//!   value is returned; the error goes to `tracing`, never to the caller. A stored value that no
//!   longer decodes (the type changed) is treated as a miss and overwritten with `SET` (not `NX`).
//!
//! # Where each part lives
//! - `default_cache.rs`: the process-wide default cache ([`set_default_cache`]).
//! - `key/`: the key of a call ([`__private::KeyBuilder`]), its arguments written by a serde
//!   serializer (`key/arg.rs`).
//! - `returns.rs`: which part of a return value is cached ([`__private::Policy`]), chosen by
//!   type ([`__private::Returns`]).
//! - `codec.rs`: how the stored type is encoded ([`__private::Codec`]).
//! - `fresh.rs`: one call with freshness options ([`__private::memoize_fresh`]), through
//!   [`crate::freshness`].
//! - `call.rs`: one call ([`__private::memoize`]): hit, miss through the single-flight of
//!   [`crate::flight`], background store.

mod call;
mod codec;
mod default_cache;
mod fresh;
mod key;
mod returns;

pub(crate) use call::TARGET;
pub use default_cache::{default_cache, set_default_cache, SetDefaultCacheError};

/// Internals the `#[cached]` expansion names. /!\ Not a stable API: may change in any release. /!\
#[doc(hidden)]
pub(crate) mod __private {
    pub use super::call::{invalidate, invalidate_all_keys, memoize, no_value, NotInTraitImpl};
    pub use super::codec::{codec, CacheValue, Codec};
    pub use super::default_cache::default_cache_or_warn as default_cache;
    pub use super::fresh::{
        duration, invalidate_all, memoize_fresh, seconds, tag_list, tags_from, with_lock,
        IntoDuration, IntoLock, NoTagsFrom, TagsFrom, TagsFromValue,
    };
    pub use super::key::{FnContainer, KeyArg, KeyBuilder};
    pub use super::returns::{
        Mismatch, Never, OkOnly, OptionReturn, Plain, Policy, ResultReturn, Returns,
        ReturnsMismatch, ReturnsOption, ReturnsResult, ReturnsValue, SomeOnly, TimedOut, WithNone,
    };
    pub use crate::observe::hooks::CachedFunction;
}
