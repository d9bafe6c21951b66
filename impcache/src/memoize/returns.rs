//! Return-type policies: which part of a `#[cached]` function's return value is stored
//! ([`Policy`]), and how the expansion picks the policy by the type system rather than by the
//! type's spelling ([`Returns`], autoref specialization), so that aliases behave as what they
//! name.

use std::fmt;

use serde::Serialize;

/// Which part of a return value is cached.
pub trait Policy<R> {
    /// The stored type.
    type Value;
    /// The part to store, `None` when this return value is not cached.
    fn value(ret: &R) -> Option<&Self::Value>;
    /// The return value for a stored value.
    fn wrap(value: Self::Value) -> R;
    /// Whether `ret`, whose stored form is JSON `null` when `stored_as_null` says so, would read
    /// back as another value (and so is not stored): only [`WithNone`]'s `Some` can.
    #[inline]
    fn reads_back_otherwise(ret: &R, stored_as_null: impl FnOnce() -> bool) -> bool {
        let _ = (ret, stored_as_null);
        false
    }
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
/// Caches an `Option<T>` whole, `None` included (`cache_none = true`): `Some(T)` stored as `T`,
/// `None` as `null`. A `Some` whose `T` is itself written `null` (`Some(None)` of an
/// `Option<Option<U>>`, `Some(())`) would read back as `None`: it is not stored (and, with a
/// freshness option, counts as a value not cached: within `stale_if_error` a stale value
/// answers for it, as for a `None` without `cache_none`).
#[derive(Debug, Clone, Copy)]
pub struct WithNone;

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

impl<R: OptionReturn> Policy<R> for WithNone {
    type Value = R;
    #[inline]
    fn value(ret: &R) -> Option<&R> {
        Some(ret)
    }
    #[inline]
    fn wrap(value: R) -> R {
        value
    }
    #[inline]
    fn reads_back_otherwise(ret: &R, stored_as_null: impl FnOnce() -> bool) -> bool {
        ret.some_ref().is_some() && stored_as_null()
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
    fn option_with_none_policy(&self) -> WithNone {
        WithNone
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

/// A return type that can say its body was given up (`#[cached(hard_timeout = ..)]` with no
/// stale value to answer): `None` for an `Option`, `Err(error.into())` for a `Result` whose error
/// converts from [`Error`](crate::Error) (`impcache::Error` itself, `anyhow::Error`, a
/// `#[from]` variant, ...).
#[diagnostic::on_unimplemented(
    message = "`#[cached(hard_timeout = ..)]` needs a return type that can say the body timed out: `{Self}` is neither an `Option` nor a `Result` whose error converts from `impcache::Error`",
    label = "a given-up body has no value of this type to return"
)]
pub trait TimedOut {
    /// The return value of a call whose body was given up with `error`.
    fn timed_out(error: crate::Error) -> Self;
}

impl<T> TimedOut for Option<T> {
    fn timed_out(_: crate::Error) -> Self {
        None
    }
}

impl<T, E: From<crate::Error>> TimedOut for Result<T, E> {
    fn timed_out(error: crate::Error) -> Self {
        Err(error.into())
    }
}
