//! JSON encoding and decoding of values, byte-compatible with the Python library (orjson's
//! compact output).
//!
//! serde_json writes NaN and infinite floats as `null`, silently changing the value; so does
//! orjson. We refuse them instead: [`encode`] walks the value once more with [`FiniteFloats`], a
//! serializer that writes nothing and fails on a non-finite float.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize};

use crate::error::{shown, Error, Result};

/// Capacity of each thread's encoding buffer; one that grew past [`MAX_RETAINED_BYTES`] for a
/// large value is replaced by a fresh one of this size, so no thread keeps megabytes for good.
const SCRATCH_BYTES: usize = 1024;
const MAX_RETAINED_BYTES: usize = 64 * 1024;

thread_local! {
    /// Each thread encodes into one reused buffer: values of any size cost no regrowth, and the
    /// result is one exact-size allocation.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH_BYTES));
}

/// serde_json's compact output, noting whether it wrote a `null`: serde_json writes a NaN or an
/// infinity as `null`, so only then is the value walked again to look for one.
struct NullNoting<'a> {
    wrote_null: &'a mut bool,
}

impl serde_json::ser::Formatter for NullNoting<'_> {
    fn write_null<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        *self.wrote_null = true;
        writer.write_all(b"null")
    }
}

/// Writes `value` as compact JSON into `out`; `Ok(true)` when a `null` was written.
fn write_json<V: Serialize + ?Sized>(out: &mut Vec<u8>, value: &V) -> serde_json::Result<bool> {
    let mut wrote_null = false;
    let formatter = NullNoting {
        wrote_null: &mut wrote_null,
    };
    value.serialize(&mut serde_json::Serializer::with_formatter(out, formatter))?;
    Ok(wrote_null)
}

/// Bytes of each buffer that [`encode_packed`] fills.
pub(crate) const PACK_BYTES: usize = 16 * 1024;

/// Encodes `value` as compact JSON at the end of `packed`, and splits it off: the values of a
/// batch share a few large buffers instead of one allocation each. Only for values that are sent
/// and dropped (a buffer lives as long as any value in it).
pub(crate) fn encode_packed<V: Serialize + ?Sized>(
    key: &str,
    value: &V,
    packed: &mut BytesMut,
) -> Result<Bytes> {
    with_encoded(key, value, |encoded| {
        if packed.capacity() < encoded.len() {
            packed.reserve(encoded.len().max(PACK_BYTES));
        }
        packed.extend_from_slice(encoded);
        packed.split().freeze()
    })
}

/// Encodes `value` as compact JSON.
pub(crate) fn encode<V: Serialize + ?Sized>(key: &str, value: &V) -> Result<Bytes> {
    with_encoded(key, value, Bytes::copy_from_slice)
}

/// Encodes `value` into this thread's buffer and hands the JSON to `keep`.
fn with_encoded<V: Serialize + ?Sized>(
    key: &str,
    value: &V,
    keep: impl FnOnce(&[u8]) -> Bytes,
) -> Result<Bytes> {
    let encoded = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let written = write_json(&mut buffer, value).map(|null| (keep(&buffer), null));
            if buffer.capacity() > MAX_RETAINED_BYTES {
                *buffer = Vec::with_capacity(SCRATCH_BYTES);
            }
            written
        }
        // A `Serialize` impl that encodes another value while being encoded.
        Err(_) => {
            let mut fresh = Vec::new();
            write_json(&mut fresh, value).map(|null| (keep(&fresh), null))
        }
    });
    let (bytes, wrote_null) = encoded.map_err(|e| Error::Encode {
        key: shown(key),
        reason: e.to_string(),
    })?;
    if wrote_null {
        check_finite(key, value)?;
    }
    Ok(bytes)
}

/// Fails on a NaN or an infinity anywhere in `value` (serde_json would have written `null`).
fn check_finite<V: Serialize + ?Sized>(key: &str, value: &V) -> Result<()> {
    value.serialize(FiniteFloats).map_err(|e| Error::Encode {
        key: shown(key),
        reason: e.0,
    })
}

/// Decodes the JSON at `key`.
pub(crate) fn decode<V: DeserializeOwned>(key: impl FnOnce() -> String, bytes: &[u8]) -> Result<V> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode { key: key(), source })
}

#[derive(Debug)]
pub(crate) struct NonFinite(String);

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}

impl ser::Error for NonFinite {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        NonFinite(msg.to_string())
    }
}

/// A serializer that produces nothing and fails on NaN or infinite floats.
struct FiniteFloats;

fn check(v: f64) -> std::result::Result<(), NonFinite> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(NonFinite(format!(
            "{v} is not a finite number, and JSON has no way to store it (serde_json would write `null`)"
        )))
    }
}

macro_rules! ok_scalars {
    ($($method:ident($t:ty)),* $(,)?) => {$(
        fn $method(self, _: $t) -> std::result::Result<(), NonFinite> { Ok(()) }
    )*};
}

impl ser::Serializer for FiniteFloats {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    ok_scalars!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_f32(self, v: f32) -> std::result::Result<(), NonFinite> {
        check(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> std::result::Result<(), NonFinite> {
        check(v)
    }
    fn serialize_none(self) -> std::result::Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> std::result::Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> std::result::Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> std::result::Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, NonFinite> {
        Ok(self)
    }
}

macro_rules! compound {
    ($($trait:ident :: $method:ident $(($name:ty))?),* $(,)?) => {$(
        impl ser::$trait for FiniteFloats {
            type Ok = ();
            type Error = NonFinite;
            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $name,)? v: &T) -> std::result::Result<(), NonFinite> {
                v.serialize(FiniteFloats)
            }
            fn end(self) -> std::result::Result<(), NonFinite> { Ok(()) }
        }
    )*};
}
compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl ser::SerializeMap for FiniteFloats {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_key<T: Serialize + ?Sized>(
        &mut self,
        k: &T,
    ) -> std::result::Result<(), NonFinite> {
        k.serialize(FiniteFloats)
    }
    fn serialize_value<T: Serialize + ?Sized>(
        &mut self,
        v: &T,
    ) -> std::result::Result<(), NonFinite> {
        v.serialize(FiniteFloats)
    }
    fn end(self) -> std::result::Result<(), NonFinite> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn compact_json_like_orjson() {
        let mut m = BTreeMap::new();
        m.insert("a", vec![1.5, 2.0]);
        assert_eq!(
            encode("k", &m).ok().as_deref(),
            Some(&br#"{"a":[1.5,2.0]}"#[..])
        );
        assert_eq!(encode("k", "ü").ok().as_deref(), Some("\"ü\"".as_bytes()));
        assert_eq!(encode("k", &None::<u8>).ok().as_deref(), Some(&b"null"[..]));
    }

    #[test]
    fn packed_values_equal_single_ones() {
        let mut packed = BytesMut::new();
        let big = "y".repeat(3 * PACK_BYTES);
        let values = [
            serde_json::json!({"a": [1, 2.5, null]}),
            serde_json::json!(big),
            serde_json::json!("ü"),
        ];
        let encoded: Vec<_> = values
            .iter()
            .map(|v| encode_packed("k", v, &mut packed).ok())
            .collect();
        for (value, packed) in values.iter().zip(encoded) {
            assert_eq!(packed, encode("k", value).ok());
        }
        assert!(encode_packed("k", &f64::NAN, &mut packed).is_err());
        assert_eq!(
            encode_packed("k", &1, &mut packed).ok().as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn large_values_do_not_stay_in_the_thread_buffer() {
        let big = "x".repeat(1 << 20);
        let encoded = encode("k", &big).ok().map(|b| b.len());
        assert_eq!(encoded, Some(big.len() + 2));
        let retained = SCRATCH.with(|s| s.borrow().capacity());
        assert!(retained <= MAX_RETAINED_BYTES, "{retained}");
        assert_eq!(encode("k", &1).ok().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn non_finite_floats_are_refused_wherever_they_are() {
        let mut m = BTreeMap::new();
        m.insert("deep", vec![Some(1.0), Some(f64::NAN)]);
        for err in [
            encode("k1", &f64::NAN).unwrap_err(),
            encode("k1", &f32::INFINITY).unwrap_err(),
            encode("k1", &m).unwrap_err(),
        ] {
            assert!(matches!(err, Error::Encode { .. }), "{err}");
            assert!(err.to_string().contains("k1"), "{err}");
        }
    }
}
