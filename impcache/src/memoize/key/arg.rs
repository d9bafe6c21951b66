//! The serializer behind [`write_arg`]: a `#[cached]` argument as compact JSON, as
//! `serde_json` writes it, except where `serde_json` gives two values one text.

use std::fmt;

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
) -> Result<(), ArgError> {
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
    fn scalar<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), ArgError> {
        serde_json::to_writer(StrWriter(self.out), value).map_err(|e| ArgError(e.to_string()))
    }

    /// An integer, as serde_json writes it (serde_json uses `itoa` too).
    fn integer(self, value: impl itoa::Integer) -> Result<(), ArgError> {
        self.out.push_str(itoa::Buffer::new().format(value));
        Ok(())
    }

    fn float(self, value: f64, json: impl serde::Serialize) -> Result<(), ArgError> {
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
    fn open_variant(out: &mut String, variant: &str) -> Result<(), ArgError> {
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

    fn element<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ArgError> {
        self.comma();
        value.serialize(ArgWriter::nested(self.out))
    }

    fn field<T: serde::Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), ArgError> {
        self.comma();
        ArgWriter::nested(self.out).scalar(name)?;
        self.out.push(':');
        value.serialize(ArgWriter::nested(self.out))
    }

    fn finish(self) -> Result<(), ArgError> {
        self.out.push_str(self.close);
        Ok(())
    }
}

/// The integer methods of [`ArgWriter`]: each writes its value with `itoa`.
macro_rules! integers {
    ($($method:ident: $t:ty),* $(,)?) => {$(
        fn $method(self, v: $t) -> Result<(), ArgError> {
            self.integer(v)
        }
    )*};
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

    integers!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
    );

    fn serialize_bool(self, v: bool) -> Result<(), ArgError> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), ArgError> {
        self.float(f64::from(v), v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), ArgError> {
        self.float(v, v)
    }
    fn serialize_char(self, v: char) -> Result<(), ArgError> {
        self.scalar(&v)
    }
    fn serialize_str(self, v: &str) -> Result<(), ArgError> {
        self.scalar(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), ArgError> {
        let mut seq = Compound::open(self.out, '[', "]");
        for byte in v {
            seq.element(byte)?;
        }
        seq.finish()
    }
    fn serialize_none(self) -> Result<(), ArgError> {
        self.out.push_str("null");
        Ok(())
    }
    fn serialize_some<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), ArgError> {
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
    fn serialize_unit(self) -> Result<(), ArgError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), ArgError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), ArgError> {
        self.scalar(variant)
    }
    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), ArgError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), ArgError> {
        ArgWriter::open_variant(self.out, variant)?;
        value.serialize(ArgWriter::nested(self.out))?;
        self.out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '[', "]"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '[', "]"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '[', "]"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, ArgError> {
        ArgWriter::open_variant(self.out, variant)?;
        Ok(Compound::open(self.out, '[', "]}"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '{', "}"))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Compound<'a>, ArgError> {
        Ok(Compound::open(self.out, '{', "}"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, ArgError> {
        ArgWriter::open_variant(self.out, variant)?;
        Ok(Compound::open(self.out, '{', "}}"))
    }
}

/// The serde traits of a sequence, a tuple and their struct and variant forms: elements, then
/// the close.
macro_rules! compound_of_elements {
    ($($trait:ident::$method:ident),* $(,)?) => {$(
        impl serde::ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = ArgError;
            fn $method<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ArgError> {
                self.element(value)
            }
            fn end(self) -> Result<(), ArgError> {
                self.finish()
            }
        }
    )*};
}

compound_of_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// The serde traits of a struct and a struct variant: named fields, then the close.
macro_rules! compound_of_fields {
    ($($trait:ident),* $(,)?) => {$(
        impl serde::ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = ArgError;
            fn serialize_field<T: serde::Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Result<(), ArgError> {
                self.field(name, value)
            }
            fn end(self) -> Result<(), ArgError> {
                self.finish()
            }
        }
    )*};
}

compound_of_fields!(SerializeStruct, SerializeStructVariant);

impl serde::ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = ArgError;
    /// A map key is written as JSON writes it: a string as is, a number or a boolean quoted
    /// (`{"1":..}`); anything else is refused, as `serde_json` refuses it.
    fn serialize_key<T: serde::Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ArgError> {
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
    fn serialize_value<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ArgError> {
        value.serialize(ArgWriter::nested(self.out))
    }
    fn end(self) -> Result<(), ArgError> {
        self.finish()
    }
}

// Unit tests: an `assert!` here is the test failing; none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    /// The argument as the key writes it, or the error's message.
    fn arg<T: Serialize + ?Sized>(value: &T) -> String {
        let mut out = String::new();
        match write_arg(&mut out, value, None) {
            Ok(()) => out,
            Err(error) => format!("write_arg failed: {error}"),
        }
    }

    fn same_as_serde_json<T: Serialize + ?Sized + fmt::Debug>(value: &T) {
        assert_eq!(
            Some(arg(value)),
            serde_json::to_string(value).ok(),
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
}
