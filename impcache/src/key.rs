//! The key layout `{key_prefix}:{version}:{key}`, versions, and Redis glob escaping.

use std::fmt;
use std::sync::Arc;

use arrayvec::ArrayString;

use crate::error::{Error, Result};

/// A cache version: an integer or a string, as in the Python library.
///
/// ```
/// use impcache::Version;
/// assert_eq!(Version::from(2).as_str(), "2");
/// assert_eq!(Version::from("v2").as_str(), "v2");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// The version as it appears in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Version {
    fn default() -> Self {
        Version(Arc::from("1"))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! version_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Version {
            fn from(version: $t) -> Self {
                Version(Arc::from(version.to_string()))
            }
        }
    )*};
}
version_from_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<&str> for Version {
    fn from(version: &str) -> Self {
        Version(Arc::from(version))
    }
}

impl From<String> for Version {
    fn from(version: String) -> Self {
        Version(Arc::from(version))
    }
}

impl From<&String> for Version {
    fn from(version: &String) -> Self {
        Version(Arc::from(version.as_str()))
    }
}

/// Builds `{prefix}:{version}:{key}` with a single allocation.
pub(crate) fn full_key(prefix: &str, version: &str, key: &str) -> String {
    let mut full = String::with_capacity(prefix.len() + version.len() + key.len() + 2);
    full.push_str(prefix);
    full.push(':');
    full.push_str(version);
    full.push(':');
    full.push_str(key);
    full
}

/// The parts of one operation's full key, built where the repository wants it: owned by a
/// repository that keeps it, on the stack ([`FullKey`]) for one that only borrows it.
#[derive(Clone, Copy)]
pub(crate) struct KeyParts<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) version: &'a str,
    pub(crate) key: &'a str,
}

impl KeyParts<'_> {
    /// `{prefix}:{version}:{key}` as an owned string.
    pub(crate) fn owned(self) -> String {
        full_key(self.prefix, self.version, self.key)
    }

    /// `{prefix}:{version}:{key}` on the stack when short.
    pub(crate) fn stack(self) -> FullKey {
        FullKey::new(self.prefix, self.version, self.key)
    }
}

/// Longest full key built on the stack by [`FullKey`]; longer ones go to the heap.
const INLINE_KEY_BYTES: usize = 128;

/// A full key for one operation, built on the stack when it is short: the hot path of a read
/// makes no allocation for its key (the repository copies it into its command or looks it up).
pub(crate) enum FullKey {
    Inline(ArrayString<INLINE_KEY_BYTES>),
    Heap(String),
}

impl FullKey {
    /// `{prefix}:{version}:{key}`.
    pub(crate) fn new(prefix: &str, version: &str, key: &str) -> FullKey {
        let mut inline = ArrayString::new();
        let fits = [prefix, ":", version, ":", key]
            .iter()
            .all(|part| inline.try_push_str(part).is_ok());
        if fits {
            FullKey::Inline(inline)
        } else {
            FullKey::Heap(full_key(prefix, version, key))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            FullKey::Inline(key) => key.as_str(),
            FullKey::Heap(key) => key.as_str(),
        }
    }
}

/// The full keys of a batch in one buffer: a handful of allocations however many keys.
pub(crate) struct KeyBatch {
    buffer: String,
    ends: Vec<usize>,
}

impl KeyBatch {
    /// Room for about `count` keys.
    pub(crate) fn with_capacity(prefix: &str, version: &str, count: usize) -> KeyBatch {
        KeyBatch {
            buffer: String::with_capacity(count.saturating_mul(prefix.len() + version.len() + 24)),
            ends: Vec::with_capacity(count),
        }
    }

    /// Appends `{prefix}:{version}:{key}`.
    pub(crate) fn push(&mut self, prefix: &str, version: &str, key: &str) {
        for part in [prefix, ":", version, ":", key] {
            self.buffer.push_str(part);
        }
        self.ends.push(self.buffer.len());
    }

    /// The keys, in the order they were pushed.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                // Each end is the length after a whole `push`: always a char boundary.
                let key = self.buffer.get(start..end).unwrap_or_default();
                start = end;
                key
            })
            .collect()
    }
}

/// The characters that mean something in a Redis glob pattern.
const GLOB_SPECIAL: [char; 5] = ['*', '?', '[', ']', '\\'];

/// Escapes `literal` so that, inside a Redis glob pattern (`SCAN MATCH`, `KEYS`, and
/// [`Cache::delete_pattern`](crate::Cache::delete_pattern)), it matches exactly itself.
///
/// ```
/// use impcache::escape_pattern;
/// assert_eq!(escape_pattern("a*b[1]"), r"a\*b\[1\]");
/// ```
pub fn escape_pattern(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 4);
    push_escaped(&mut escaped, literal);
    escaped
}

fn push_escaped(out: &mut String, literal: &str) {
    for c in literal.chars() {
        if GLOB_SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Builds the full pattern `{escaped prefix}:{escaped version}:{pattern}`: the caller's pattern
/// applies to the key part only.
pub(crate) fn full_pattern(prefix: &str, version: &str, pattern: &str) -> Result<String> {
    check_pattern(pattern)?;
    let mut full = String::with_capacity(prefix.len() + version.len() + pattern.len() + 8);
    push_escaped(&mut full, prefix);
    full.push(':');
    push_escaped(&mut full, version);
    full.push(':');
    full.push_str(pattern);
    Ok(full)
}

/// Rejects patterns that Redis would accept but read in a surprising way: an unclosed `[`
/// (Redis then matches it against the rest of the pattern as a set).
pub(crate) fn check_pattern(pattern: &str) -> Result<()> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'[' => {
                let open = i;
                i += 1;
                if bytes.get(i) == Some(&b'^') {
                    i += 1;
                }
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(Error::InvalidPattern {
                                pattern: crate::error::shown(pattern),
                                reason: format!(
                                    "the `[` at byte {open} is never closed with `]` (escape it as `\\[` to match a literal `[`)"
                                ),
                            })
                        }
                        Some(b'\\') => i += 2,
                        Some(b']') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Why an argument could not be written into a key.
#[derive(Debug)]
pub(crate) struct ArgError(String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

impl serde::ser::Error for ArgError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ArgError(msg.to_string())
    }
}

/// Appends `value` to a `#[cached]` key as compact JSON, exactly as `serde_json` writes it,
/// except where `serde_json` gives two values one text:
/// - `NaN`, `inf` and `-inf` are written `NaN`, `Infinity` and `-Infinity` (JSON has no such
///   numbers; `serde_json` writes all three as `null`);
/// - `Some(x)` is written as `x`, except when `x` itself is written `null` (`Some(None)`,
///   `Some(())`) or starts with `Some(`: then it is `Some(x)`, so `None`, `Some(None)` and
///   `Some(Some(None))` are `null`, `Some(null)` and `Some(Some(null))`.
///
/// Every other value keeps the text `serde_json` gives it, so keys of existing entries stay the
/// same. `some_at_top` is set when the outermost value is an `Option` holding a value.
pub(crate) fn write_arg<T: serde::Serialize + ?Sized>(
    out: &mut String,
    value: &T,
    some_at_top: Option<&mut bool>,
) -> std::result::Result<(), ArgError> {
    value.serialize(ArgWriter { out, some_at_top })
}

/// Lets serde_json write into a `String`. serde_json only ever writes whole UTF-8 sequences
/// (ASCII punctuation, digits, slices of the input between escapes), so each chunk is checked
/// on its own.
struct StrWriter<'a>(&'a mut String);

impl std::io::Write for StrWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.push_str(text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The serializer of [`write_arg`]: structure written here, scalars by `serde_json`.
struct ArgWriter<'a> {
    out: &'a mut String,
    some_at_top: Option<&'a mut bool>,
}

impl<'a> ArgWriter<'a> {
    /// A writer for a value nested in this one.
    fn nested(out: &mut String) -> ArgWriter<'_> {
        ArgWriter {
            out,
            some_at_top: None,
        }
    }

    /// A scalar, written by `serde_json` (numbers, escaped strings).
    fn scalar<T: serde::Serialize + ?Sized>(self, value: &T) -> std::result::Result<(), ArgError> {
        serde_json::to_writer(StrWriter(self.out), value).map_err(|e| ArgError(e.to_string()))
    }

    /// An integer, as serde_json writes it (serde_json uses `itoa` too).
    fn integer(self, value: impl itoa::Integer) -> std::result::Result<(), ArgError> {
        self.out.push_str(itoa::Buffer::new().format(value));
        Ok(())
    }

    fn float(self, value: f64, json: impl serde::Serialize) -> std::result::Result<(), ArgError> {
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value.is_infinite() {
            self.out
                .push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            return self.scalar(&json);
        }
        Ok(())
    }

    /// `{"variant":` for the variants that `serde_json` writes as one-entry objects.
    fn open_variant(out: &mut String, variant: &str) -> std::result::Result<(), ArgError> {
        out.push('{');
        ArgWriter::nested(out).scalar(variant)?;
        out.push(':');
        Ok(())
    }
}

/// A sequence, tuple, map or struct being written: `close` ends it (`]`, `}`, or `]}`/`}}` for
/// a variant).
struct Compound<'a> {
    out: &'a mut String,
    first: bool,
    close: &'static str,
}

impl<'a> Compound<'a> {
    fn open(out: &'a mut String, open: char, close: &'static str) -> Self {
        out.push(open);
        Compound {
            out,
            first: true,
            close,
        }
    }

    fn comma(&mut self) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
    }

    fn element<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.comma();
        value.serialize(ArgWriter::nested(self.out))
    }

    fn field<T: serde::Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.comma();
        ArgWriter::nested(self.out).scalar(name)?;
        self.out.push(':');
        value.serialize(ArgWriter::nested(self.out))
    }

    fn finish(self) -> std::result::Result<(), ArgError> {
        self.out.push_str(self.close);
        Ok(())
    }
}

impl<'a> serde::Serializer for ArgWriter<'a> {
    type Ok = ();
    type Error = ArgError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> std::result::Result<(), ArgError> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_i16(self, v: i16) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_i32(self, v: i32) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_i64(self, v: i64) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_i128(self, v: i128) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_u8(self, v: u8) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_u16(self, v: u16) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_u32(self, v: u32) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_u64(self, v: u64) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_u128(self, v: u128) -> std::result::Result<(), ArgError> {
        self.integer(v)
    }
    fn serialize_f32(self, v: f32) -> std::result::Result<(), ArgError> {
        self.float(f64::from(v), v)
    }
    fn serialize_f64(self, v: f64) -> std::result::Result<(), ArgError> {
        self.float(v, v)
    }
    fn serialize_char(self, v: char) -> std::result::Result<(), ArgError> {
        self.scalar(&v)
    }
    fn serialize_str(self, v: &str) -> std::result::Result<(), ArgError> {
        self.scalar(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> std::result::Result<(), ArgError> {
        let mut seq = Compound::open(self.out, '[', "]");
        for byte in v {
            seq.element(byte)?;
        }
        seq.finish()
    }
    fn serialize_none(self) -> std::result::Result<(), ArgError> {
        self.out.push_str("null");
        Ok(())
    }
    fn serialize_some<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        let some_at_top = self.some_at_top.map(|flag| {
            *flag = true;
            flag
        });
        let start = self.out.len();
        value.serialize(ArgWriter {
            out: self.out,
            some_at_top,
        })?;
        let inner = &self.out[start..];
        if inner == "null" || inner.starts_with("Some(") {
            self.out.insert_str(start, "Some(");
            self.out.push(')');
        }
        Ok(())
    }
    fn serialize_unit(self) -> std::result::Result<(), ArgError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> std::result::Result<(), ArgError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> std::result::Result<(), ArgError> {
        self.scalar(variant)
    }
    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        ArgWriter::open_variant(self.out, variant)?;
        value.serialize(ArgWriter::nested(self.out))?;
        self.out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> std::result::Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '[', "]"))
    }
    fn serialize_tuple(self, _len: usize) -> std::result::Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '[', "]"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> std::result::Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '[', "]"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> std::result::Result<Compound<'a>, ArgError> {
        ArgWriter::open_variant(self.out, variant)?;
        Ok(Compound::open(self.out, '[', "]}"))
    }
    fn serialize_map(self, _len: Option<usize>) -> std::result::Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '{', "}"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> std::result::Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '{', "}"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> std::result::Result<Compound<'a>, ArgError> {
        ArgWriter::open_variant(self.out, variant)?;
        Ok(Compound::open(self.out, '{', "}}"))
    }
}

impl serde::ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    fn serialize_element<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.element(value)
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

impl serde::ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    fn serialize_element<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.element(value)
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

impl serde::ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    fn serialize_field<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.element(value)
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

impl serde::ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    fn serialize_field<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.element(value)
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

impl serde::ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    /// A map key is written as JSON writes it: a string as is, a number or a boolean quoted
    /// (`{"1":..}`); anything else is refused, as `serde_json` refuses it.
    fn serialize_key<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &T,
    ) -> std::result::Result<(), ArgError> {
        self.comma();
        let mut text = String::new();
        key.serialize(ArgWriter::nested(&mut text))?;
        match text.as_bytes().first() {
            Some(b'"') => self.out.push_str(&text),
            Some(b'0'..=b'9' | b'-' | b't' | b'f' | b'N' | b'I') => {
                self.out.push('"');
                self.out.push_str(&text);
                self.out.push('"');
            }
            _ => {
                return Err(ArgError(format!(
                    "a map key must be a string, a number or a boolean, not `{text}`"
                )))
            }
        }
        self.out.push(':');
        Ok(())
    }
    fn serialize_value<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        value.serialize(ArgWriter::nested(self.out))
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

impl serde::ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    fn serialize_field<T: serde::Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.field(name, value)
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

impl serde::ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    fn serialize_field<T: serde::Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> std::result::Result<(), ArgError> {
        self.field(name, value)
    }
    fn end(self) -> std::result::Result<(), ArgError> {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    fn arg<T: Serialize + ?Sized>(value: &T) -> String {
        let mut out = String::new();
        write_arg(&mut out, value, None).unwrap();
        out
    }

    fn same_as_serde_json<T: Serialize + ?Sized + fmt::Debug>(value: &T) {
        assert_eq!(
            arg(value),
            serde_json::to_string(value).unwrap(),
            "{value:?}"
        );
    }

    #[derive(Debug, Serialize)]
    struct User {
        id: u64,
        name: String,
        nick: Option<String>,
        tags: Vec<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(flatten)]
        extra: BTreeMap<String, i32>,
    }

    #[derive(Debug, Serialize)]
    struct Unit;

    #[derive(Debug, Serialize)]
    struct Empty {}

    #[derive(Debug, Serialize)]
    struct Newtype(u8);

    #[derive(Debug, Serialize)]
    struct Pair(u8, &'static str);

    #[derive(Debug, Serialize)]
    enum Shape {
        Point,
        Circle(f64),
        Rect(u8, u8),
        Named {
            name: &'static str,
            sides: Option<u8>,
        },
    }

    #[test]
    fn ordinary_values_keep_the_serde_json_text() {
        same_as_serde_json(&0u8);
        same_as_serde_json(&i64::MIN);
        same_as_serde_json(&u64::MAX);
        same_as_serde_json(&i128::MIN);
        same_as_serde_json(&u128::MAX);
        for float in [
            0.0,
            -0.0,
            0.1,
            1.5,
            -2.25e-300,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            same_as_serde_json(&float);
        }
        for float in [0.1f32, 1.0e-7, f32::MAX] {
            same_as_serde_json(&float);
        }
        for text in [
            "",
            "alice",
            "x:y",
            "quote\" back\\slash\n\u{1}\u{7f}",
            "ü ß 日本 😀",
            "null",
        ] {
            same_as_serde_json(text);
        }
        same_as_serde_json(&'c');
        same_as_serde_json(&'"');
        same_as_serde_json(&true);
        same_as_serde_json(&());
        same_as_serde_json(&None::<u8>);
        same_as_serde_json(&Some(5));
        same_as_serde_json(&Some("a"));
        same_as_serde_json(&vec![Some(1), None]);
        same_as_serde_json(&Vec::<u8>::new());
        same_as_serde_json(&[1u8, 2, 3][..]);
        same_as_serde_json(&(1, "a", [true, false]));
        same_as_serde_json(&Unit);
        same_as_serde_json(&Empty {});
        same_as_serde_json(&Newtype(7));
        same_as_serde_json(&Pair(1, "b"));
        same_as_serde_json(&Shape::Point);
        same_as_serde_json(&Shape::Circle(2.5));
        same_as_serde_json(&Shape::Rect(1, 2));
        same_as_serde_json(&Shape::Named {
            name: "tri",
            sides: Some(3),
        });
        same_as_serde_json(&Shape::Named {
            name: "blob",
            sides: None,
        });
        same_as_serde_json(&User {
            id: 42,
            name: "alice".into(),
            nick: None,
            tags: vec!["a", "b:c"],
            skipped: None,
            extra: BTreeMap::from([("z".to_owned(), 1)]),
        });
        same_as_serde_json(&BTreeMap::from([("b", 2), ("a", 1)]));
        same_as_serde_json(&BTreeMap::from([(2, "two"), (-1, "minus one")]));
        same_as_serde_json(&BTreeMap::from([(true, 1), (false, 0)]));
        same_as_serde_json(&BTreeMap::from([('k', 1)]));
        same_as_serde_json(&HashMap::from([(1.5f64.to_bits(), 1)]));
        same_as_serde_json(&BTreeMap::<String, u8>::new());
        same_as_serde_json(&serde_json::json!({"a": [1, 2.5, null, "x"], "b": {}}));
    }

    #[test]
    fn options_of_null_are_told_apart() {
        let values = [None, Some(None), Some(Some(None)), Some(Some(Some(())))];
        let texts: Vec<String> = values.iter().map(arg).collect();
        assert_eq!(
            texts,
            [
                "null",
                "Some(null)",
                "Some(Some(null))",
                "Some(Some(Some(null)))"
            ]
        );
        assert_eq!(arg(&Some(Some(7))), "7");
        assert_eq!(arg(&Some(())), "Some(null)");
        assert_eq!(
            arg(&vec![None, Some(None), Some(Some(1u8))]),
            "[null,Some(null),1]"
        );
        assert_eq!(
            arg(&Shape::Named {
                name: "x",
                sides: None
            }),
            r#"{"Named":{"name":"x","sides":null}}"#
        );
    }

    #[test]
    fn non_finite_floats_are_told_apart() {
        let texts: Vec<String> = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN]
            .iter()
            .map(arg)
            .collect();
        assert_eq!(texts, ["NaN", "Infinity", "-Infinity", "NaN"]);
        assert_eq!(arg(&f32::NEG_INFINITY), "-Infinity");
        assert_eq!(arg(&None::<f64>), "null");
        assert_eq!(arg(&Some(f64::NAN)), "NaN");
        assert_eq!(arg(&[1.0, f64::NAN]), "[1.0,NaN]");
        assert_eq!(
            arg(&BTreeMap::from([(f64::NAN.to_bits(), 1)])),
            format!(r#"{{"{}":1}}"#, f64::NAN.to_bits())
        );
    }

    #[test]
    fn map_keys_that_json_cannot_hold_are_refused() {
        let mut out = String::new();
        let error = write_arg(&mut out, &BTreeMap::from([(None::<u8>, 1)]), None).unwrap_err();
        assert!(error.to_string().contains("map key"), "{error}");
        assert!(write_arg(&mut out, &BTreeMap::from([((1, 2), 1)]), None).is_err());
        assert!(write_arg(&mut out, &BTreeMap::from([(Some("a"), 1)]), None).is_ok());
    }

    fn template(parts: &[Result<&str, &str>]) -> String {
        let mut key = crate::__private::KeyBuilder::with_capacity(8);
        for part in parts {
            match part {
                Ok(literal) => key.push_str(literal),
                Err(value) => key.push_template("arg", value),
            }
        }
        key.finish().unwrap()
    }

    #[test]
    fn template_placeholders_cannot_run_into_each_other() {
        // Ordinary values: unchanged.
        assert_eq!(template(&[Ok("user:"), Err("alice")]), "user:alice");
        assert_eq!(
            template(&[Ok("u:"), Err("a b"), Ok(":"), Err("c")]),
            "u:a b:c"
        );
        assert_eq!(
            template(&[Ok("u:"), Err("x:y")]),
            "u:x:y",
            "the last one is free"
        );
        // A value containing the separator that follows it is quoted.
        let a = template(&[Err("x:y"), Ok(":"), Err("z")]);
        let b = template(&[Err("x"), Ok(":"), Err("y:z")]);
        assert_eq!(a, r#""x:y":z"#);
        assert_eq!(b, "x:y:z");
        // So is one starting with a quote, and one right before another placeholder.
        assert_eq!(template(&[Err(r#""x"#), Ok("/"), Err("y")]), r#""\"x"/y"#);
        assert_eq!(template(&[Err("ab"), Err("c")]), r#""ab"c"#);
        assert_ne!(
            template(&[Err("a"), Err("bc")]),
            template(&[Err("ab"), Err("c")])
        );
        // A JSON array or object ends at its bracket: unchanged whatever follows.
        let mut key = crate::__private::KeyBuilder::with_capacity(8);
        key.push_template("list", &["a:b", "c"]);
        key.push_str(":");
        key.push_template("map", &BTreeMap::from([("k", 1)]));
        key.push_template("n", &1);
        assert_eq!(key.finish().unwrap(), r#"["a:b","c"]:{"k":1}1"#);
        // An unquoted string that looks like one is quoted when it holds the separator.
        assert_eq!(template(&[Err("[x:y]"), Ok(":"), Err("z")]), r#""[x:y]":z"#);
    }

    #[test]
    fn template_options_keep_their_quotes_when_unquoted_would_collide() {
        let key = |value: &Option<&str>| {
            let mut key = crate::__private::KeyBuilder::with_capacity(8);
            key.push_str("k:");
            key.push_template("arg", value);
            key.finish().unwrap()
        };
        assert_eq!(key(&None), "k:null");
        assert_eq!(key(&Some("null")), r#"k:"null""#);
        assert_eq!(key(&Some(r#""null""#)), r#"k:"\"null\"""#);
        assert_eq!(key(&Some("alice")), "k:alice");
        assert_eq!(key(&Some("Some(null)")), r#"k:"Some(null)""#);
        let mut key = crate::__private::KeyBuilder::with_capacity(8);
        key.push_template("arg", &Some(None::<&str>));
        assert_eq!(key.finish().unwrap(), "Some(null)");
    }

    #[test]
    fn full_key_joins_with_colons() {
        assert_eq!(full_key("cache", "1", "key"), "cache:1:key");
        assert_eq!(full_key("", "", ""), "::");
    }

    #[test]
    fn stack_keys_equal_heap_keys() {
        for key in [
            "",
            "k",
            "ü:ß",
            &"x".repeat(INLINE_KEY_BYTES - 8),
            &"y".repeat(300),
        ] {
            let full = FullKey::new("cache", "1", key);
            assert_eq!(full.as_str(), full_key("cache", "1", key));
            let expected_inline = key.len() + 8 <= INLINE_KEY_BYTES;
            assert_eq!(matches!(full, FullKey::Inline(_)), expected_inline, "{key}");
        }
    }

    #[test]
    fn batches_hold_each_key_whole() {
        let mut batch = KeyBatch::with_capacity("p", "2", 1);
        for key in ["a", "", "ü:ß", "long key with spaces"] {
            batch.push("p", "2", key);
        }
        assert_eq!(
            batch.keys(),
            ["p:2:a", "p:2:", "p:2:ü:ß", "p:2:long key with spaces"]
        );
    }

    #[test]
    fn escaping_covers_every_glob_character() {
        assert_eq!(escape_pattern(r"*?[]\x"), r"\*\?\[\]\\x");
        assert_eq!(escape_pattern("plain:ü"), "plain:ü");
        assert_eq!(
            full_pattern("a*", "[1]", "h?llo").ok().as_deref(),
            Some(r"a\*:\[1\]:h?llo")
        );
    }

    #[test]
    fn unclosed_brackets_are_rejected() {
        for bad in ["[", "h[ae", "x[^", r"[\]", "ok[a]then["] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
        for good in [
            "",
            "*",
            "h[ae]llo",
            r"\[",
            r"[\]]",
            "[]]",
            "a]",
            r"trailing\",
        ] {
            assert!(check_pattern(good).is_ok(), "{good}");
        }
    }
}
