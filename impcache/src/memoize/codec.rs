//! How a cached value is encoded and decoded: the one place that requires
//! `Serialize + DeserializeOwned` of the stored type.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::json;

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

impl<T> Codec<T> {
    /// `value` as JSON (`key` names it in an error).
    #[inline]
    pub(crate) fn encode(self, key: &str, value: &T) -> crate::Result<Bytes> {
        (self.encode)(key, value)
    }

    /// A stored value.
    #[inline]
    pub(crate) fn decode(self, bytes: &[u8]) -> serde_json::Result<T> {
        (self.decode)(bytes)
    }
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
