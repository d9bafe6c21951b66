//! JSON encoding and decoding of values, byte-compatible with the Python library (orjson's
//! compact output).
//!
//! serde_json writes NaN and infinite floats as `null`, silently changing the value; so does
//! orjson. We refuse them instead: [`encode`] walks the value once more with [`FiniteFloats`], a
//! serializer that writes nothing and fails on a non-finite float.
//!
//! Both directions accept what orjson writes and nothing it could not: values nested up to
//! [`MAX_DEPTH`] levels (serde_json alone reads 127) and integers within 64 bits (orjson refuses
//! wider ones; serde_json would write a `u128` that Python reads back as a float).

use std::cell::RefCell;
use std::io;

use bytes::{Bytes, BytesMut};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::{self, Serialize};
use serde_json::ser::{CompactFormatter, Formatter};

use crate::error::{shown, Error, Result};
use crate::tags::envelope;

/// The deepest nesting of arrays and objects a value may have, written or read: what orjson (the
/// Python library's encoder) writes at most. Deeper values are refused with [`Error::Encode`] by
/// `set` and [`Error::Decode`] by `get`, before any recursion goes that deep.
pub(crate) const MAX_DEPTH: usize = 255;

/// The deepest nesting serde_json reads with its own recursion limit on.
const SERDE_JSON_DEPTH: usize = 127;

/// Capacity of each thread's encoding buffer; one that grew past [`MAX_RETAINED_BYTES`] for a
/// large value is replaced by a fresh one of this size, so no thread keeps megabytes for good.
const SCRATCH_BYTES: usize = 1024;
const MAX_RETAINED_BYTES: usize = 64 * 1024;

thread_local! {
    /// Each thread encodes into one reused buffer: values of any size cost no regrowth, and the
    /// result is one exact-size allocation.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH_BYTES));
}

/// serde_json's compact output, checked as it is written:
/// - it notes whether it wrote a `null`: serde_json writes a NaN or an infinity as `null`, so only
///   then is the value walked again to look for one;
/// - it stops past [`MAX_DEPTH`] levels of nesting (also sparing the stack a runaway recursion);
/// - it refuses integers beyond 64 bits (`u128`, `i128`), which orjson neither writes nor reads
///   back as integers; such types holding a value within 64 bits are written as usual.
struct Checking<'a> {
    wrote_null: &'a mut bool,
    depth: usize,
    /// Inside a string: a map key written from an integer is a string, of any size.
    in_string: bool,
}

impl Checking<'_> {
    /// One level deeper, within [`MAX_DEPTH`].
    fn enter(&mut self) -> io::Result<()> {
        if self.depth == MAX_DEPTH {
            return Err(io::Error::other(format!(
                "the value is nested more than {MAX_DEPTH} levels deep (arrays and objects), \
                 more than orjson writes and than a read accepts"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    /// Writes the opening bracket of an array or an object, one level deeper.
    #[inline]
    fn open<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.enter()?;
        writer.write_all(bracket)
    }

    /// Writes the closing bracket of an array or an object, one level up.
    #[inline]
    fn close<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth -= 1;
        writer.write_all(bracket)
    }

    fn check_integer(&self, value: i128, shown: &dyn std::fmt::Display) -> io::Result<()> {
        let within_64_bits = (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&value);
        if within_64_bits || self.in_string {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "the integer {shown} is beyond 64 bits, which JSON readers such as Python's orjson \
             do not read back as an integer"
        )))
    }
}

impl Formatter for Checking<'_> {
    fn write_null<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        *self.wrote_null = true;
        writer.write_all(b"null")
    }

    fn write_i128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: i128) -> io::Result<()> {
        self.check_integer(value, &value)?;
        CompactFormatter.write_i128(writer, value)
    }

    fn write_u128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: u128) -> io::Result<()> {
        self.check_integer(i128::try_from(value).unwrap_or(i128::MAX), &value)?;
        CompactFormatter.write_u128(writer, value)
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_string<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.in_string = true;
        writer.write_all(b"\"")
    }

    fn end_string<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.in_string = false;
        writer.write_all(b"\"")
    }
}

/// Writes `value` as compact JSON into `out`; `Ok(true)` when a `null` was written.
fn write_json<V: Serialize + ?Sized>(out: &mut Vec<u8>, value: &V) -> serde_json::Result<bool> {
    let mut wrote_null = false;
    let formatter = Checking {
        wrote_null: &mut wrote_null,
        depth: 0,
        in_string: false,
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

/// Whether `value` is written as JSON `null`. Writing stops past the fourth byte, so a large
/// value costs its first bytes only (`#[cached(cache_none)]` asks it of each value it stores).
pub(crate) fn writes_null<V: Serialize + ?Sized>(value: &V) -> bool {
    /// The first four bytes written; an error past them ends the writing.
    struct FirstBytes(arrayvec::ArrayVec<u8, 4>);
    impl io::Write for FirstBytes {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0
                .try_extend_from_slice(data)
                .map_err(|_| io::Error::other("longer than `null`"))?;
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut first = FirstBytes(arrayvec::ArrayVec::new());
    serde_json::to_writer(&mut first, value).is_ok() && first.0.as_slice() == b"null"
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
    envelope::refuse_lookalike(key, &bytes)?;
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
    from_slice(bytes).map_err(|source| decode_error(key(), source))
}

/// The longest a quoted part of a decode error's message is shown: serde_json quotes the value
/// it refused (`invalid type: string "…", expected u64`), which may be megabytes of someone's
/// data (an error message, a log line).
const SHOWN_QUOTED_CHARS: usize = 64;

/// [`Error::Decode`] of `source` at `key`, each quoted part of its message cut to
/// [`SHOWN_QUOTED_CHARS`]. A message cut is rebuilt as a custom error: a data error, whose line
/// and column serde_json reads back from the message's `at line 1 column 9`.
#[cold]
pub(crate) fn decode_error(key: String, source: serde_json::Error) -> Error {
    let message = source.to_string();
    let cut = cut_quoted(&message, SHOWN_QUOTED_CHARS, true);
    let source = if cut != message {
        serde_json::Error::custom(cut)
    } else {
        source
    };
    Error::Decode { key, source }
}

/// `message` with what each `"…"` (a value, escaped as `{:?}` writes it) and, with `names`,
/// each `` `…` `` (a field or variant name) quotes cut to `keep` characters, marked with `…`:
/// serde's messages quote the values and names they refuse.
pub(crate) fn cut_quoted(message: &str, keep: usize, names: bool) -> String {
    let mut cut = String::with_capacity(message.len().min(4 * 1024));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        cut.push(c);
        if c != '"' && !(names && c == '`') {
            continue;
        }
        let (mut shown, mut escaped, mut closed) = (0, false, false);
        for inner in chars.by_ref() {
            closed = inner == c && !escaped;
            if closed {
                break;
            }
            escaped = c == '"' && inner == '\\' && !escaped;
            shown += 1;
            if shown <= keep {
                cut.push(inner);
            }
        }
        if shown > keep {
            cut.push('…');
        }
        if closed {
            cut.push(c);
        }
    }
    cut
}

/// `message` (a serde error's) without the stored data it quotes, for logs that must not show
/// it. serde names what it refused first, quoted (`invalid type: string "…"`, `invalid value:
/// integer `123``, `unknown variant `x``; the data unescaped in backticks, so it may hold quotes
/// of its own), then what the type expected (`, expected `Ok` or `Err``, `, there are no
/// fields`): everything from the first quote of the refused part is cut, up to the last such
/// `, expected` (the data may hold one too). The names after it are the type's, as are those of
/// `missing field` and `duplicate field`, and are kept: they say what changed.
pub(crate) fn without_data(message: &str) -> String {
    let expected = [", expected", ", there are no"]
        .iter()
        .filter_map(|marker| message.rfind(marker))
        .max();
    match expected {
        Some(end) => {
            let (refused, rest) = message.split_at(end);
            let refused = match refused.find(['"', '`']) {
                Some(quote) => {
                    let mark = &refused[quote..=quote];
                    format!("{}{mark}…{mark}", &refused[..quote])
                }
                None => refused.to_owned(),
            };
            refused + &cut_quoted(rest, 0, false)
        }
        None if message.starts_with("missing field") || message.starts_with("duplicate field") => {
            cut_quoted(message, 0, false)
        }
        None => cut_quoted(message, 0, true),
    }
}

/// `serde_json::from_slice`, for values nested up to [`MAX_DEPTH`] levels.
///
/// serde_json stops at 127 levels, its guard against a stack overflow. Only when it fails is the
/// depth measured: a value no deeper than [`MAX_DEPTH`] is read again without serde_json's limit
/// (the depth, not the limit, then bounds the recursion); a deeper one is refused.
pub(crate) fn from_slice<V: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<V> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(error) => from_slice_deep(bytes, error),
    }
}

/// [`from_slice`] after serde_json refused `bytes` (`error`): read again without its depth limit
/// when the value is nested deeper than 127 levels but no deeper than [`MAX_DEPTH`]. Out of line
/// and cold: a second instance of the value's deserializer inside every hit's code cost the hit
/// ~40 instructions where it moved the compiler's inlining (BENCHMARKS.md, Pending).
#[cold]
#[inline(never)]
fn from_slice_deep<V: DeserializeOwned>(
    bytes: &[u8],
    error: serde_json::Error,
) -> serde_json::Result<V> {
    match nesting_depth(bytes) {
        depth if depth <= SERDE_JSON_DEPTH => Err(error),
        depth if depth <= MAX_DEPTH => {
            let mut deserializer = serde_json::Deserializer::from_slice(bytes);
            deserializer.disable_recursion_limit();
            let value = V::deserialize(&mut deserializer)?;
            deserializer.end()?;
            Ok(value)
        }
        _ => Err(serde_json::Error::custom(format!(
            "the value is nested more than {MAX_DEPTH} levels deep (arrays and objects), \
             more than orjson writes and than this library reads"
        ))),
    }
}

/// The deepest nesting of arrays and objects in `json` (brackets inside strings do not count),
/// or `MAX_DEPTH + 1` as soon as it is beyond [`MAX_DEPTH`]. Malformed JSON gives some number:
/// the parser reports what is wrong with it.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_DEPTH {
                    break;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
mod tests;
