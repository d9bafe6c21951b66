//! The stored form of a tagged entry: the value's JSON inside a JSON object that also holds the
//! entry's tags and its creation time.
//!
//! ```text
//! {"__impcache_tagged__":{"created":1733200000000000,"tags":["user:1"]},"value":<the value's JSON>}
//! ```
//!
//! The marker comes first and is written byte for byte as above, so a read tells an envelope
//! from a plain value with one prefix comparison (an untagged hit pays nothing else). A plain
//! value that is a JSON object whose first field is `__impcache_tagged__` would be taken for an
//! envelope: that field name is reserved, and writes of such a value are refused
//! ([`refuse_lookalike`]).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{shown, Error, Result};

/// What every envelope starts with.
const MARKER: &[u8] = b"{\"__impcache_tagged__\":";

/// Whether `bytes` are an envelope (else a plain value, stored byte for byte as Python does).
pub(crate) fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER)
}

/// Fails when `bytes`, a plain value to be stored at `key`, would be read back as an envelope
/// (a JSON object whose first field is `__impcache_tagged__`): another value would be read back
/// (its `value` field), or none once a tag in it is invalidated.
pub(crate) fn refuse_lookalike(key: &str, bytes: &[u8]) -> Result<()> {
    if is_envelope(bytes) {
        return Err(Error::Encode {
            key: shown(key),
            reason: "a JSON object whose first field is `__impcache_tagged__` is not stored: \
                     that field name marks tagged entries"
                .to_owned(),
        });
    }
    Ok(())
}

/// The envelope of `value` (its JSON), tagged `tags`, created at `created` (µs since the epoch).
pub(crate) fn wrap(value: &[u8], tags: &[String], created: u64) -> Bytes {
    // A list of strings always encodes.
    let tags = serde_json::to_vec(tags).unwrap_or_else(|_| b"[]".to_vec());
    let mut out = BytesMut::with_capacity(MARKER.len() + 48 + tags.len() + value.len());
    out.put_slice(MARKER);
    out.put_slice(b"{\"created\":");
    out.put_slice(itoa::Buffer::new().format(created).as_bytes());
    out.put_slice(b",\"tags\":");
    out.put_slice(&tags);
    out.put_slice(b"},\"value\":");
    out.put_slice(value);
    out.put_u8(b'}');
    out.freeze()
}

/// An envelope's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened<'a> {
    /// The entry's tags (borrowed from the stored bytes unless escaped).
    pub(crate) tags: Vec<Cow<'a, str>>,
    /// When its computation started (µs since the epoch).
    pub(crate) created: u64,
    /// The value's JSON: a slice of the stored bytes, not a copy.
    pub(crate) value: Bytes,
}

// No field but those `wrap` writes: a look-alike with another one (a hand-written or another
// language's JSON) is no envelope, and reads as the plain value it is (serde skipped the field,
// and the look-alike read as its `value`). One whose other field comes after `value` is still
// taken in the written layout (its value, not walked, runs to the closing brace).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header<'a> {
    created: u64,
    #[serde(borrow)]
    tags: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(rename = "__impcache_tagged__", borrow)]
    header: Header<'a>,
    #[serde(borrow)]
    value: &'a RawValue,
}

/// The contents of the envelope `bytes`; `None` when they are not a well-formed one.
///
/// Envelopes are written by [`wrap`] only, field for field: they are read the same way, without
/// walking the value (the last field: everything up to the closing brace). An envelope not in
/// that exact layout (a tag with an escaped character, hand-written JSON) is parsed as JSON.
pub(crate) fn open(bytes: &Bytes) -> Option<Opened<'_>> {
    open_as_written(bytes).or_else(|| open_as_json(bytes))
}

/// [`open`] of an envelope laid out exactly as [`wrap`] writes it, with no escaped tag.
fn open_as_written(bytes: &Bytes) -> Option<Opened<'_>> {
    let rest = bytes.strip_prefix(MARKER)?.strip_prefix(b"{\"created\":")?;
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    let created = std::str::from_utf8(rest.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    let mut rest = rest.get(digits..)?.strip_prefix(b",\"tags\":[")?;
    let mut tags = Vec::new();
    if let Some(after) = rest.strip_prefix(b"]") {
        rest = after;
    } else {
        loop {
            let string = rest.strip_prefix(b"\"")?;
            let end = string
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\')?;
            if string.get(end) != Some(&b'"') {
                return None;
            }
            tags.push(Cow::Borrowed(std::str::from_utf8(string.get(..end)?).ok()?));
            rest = string.get(end + 1..)?;
            match rest.split_first()? {
                (b',', after) => rest = after,
                (b']', after) => {
                    rest = after;
                    break;
                }
                _ => return None,
            }
        }
    }
    let value = rest.strip_prefix(b"},\"value\":")?.strip_suffix(b"}")?;
    let start = bytes.len() - 1 - value.len();
    Some(Opened {
        tags,
        created,
        value: bytes.slice(start..start + value.len()),
    })
}

/// [`open`] of any envelope, as JSON.
fn open_as_json(bytes: &Bytes) -> Option<Opened<'_>> {
    let envelope: Envelope<'_> = serde_json::from_slice(bytes).ok()?;
    let raw = envelope.value.get().as_bytes();
    // The raw value borrows from `bytes`: its offset there, to slice without copying.
    let start = (raw.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
    let value = bytes.slice(start..start + raw.len());
    Some(Opened {
        tags: envelope.header.tags,
        created: envelope.header.created,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_slices_the_value() -> Result<(), Box<dyn std::error::Error>> {
        let tags = vec!["user:1".to_owned(), "a\"b".to_owned()];
        let wrapped = wrap(br#"{"name":"Ada"}"#, &tags, 42);
        assert!(is_envelope(&wrapped));
        let value: serde_json::Value = serde_json::from_slice(&wrapped)?;
        assert_eq!(value["value"]["name"], "Ada");
        let opened = open(&wrapped).ok_or("not an envelope")?;
        assert_eq!(opened.tags, ["user:1", "a\"b"]);
        assert_eq!(opened.created, 42);
        assert_eq!(&opened.value[..], br#"{"name":"Ada"}"#);
        Ok(())
    }

    #[test]
    fn the_written_layout_and_json_read_alike() -> Result<(), Box<dyn std::error::Error>> {
        for tags in [
            vec![],
            vec!["a".to_owned()],
            vec!["a".to_owned(), "ü:1".to_owned()],
        ] {
            let wrapped = wrap(b"[1, 2]", &tags, 7);
            let fast = open_as_written(&wrapped).ok_or("not in the written layout")?;
            assert_eq!(Some(&fast), open_as_json(&wrapped).as_ref());
            assert_eq!(&fast.value[..], b"[1, 2]");
        }
        // An escaped tag, or another layout of the same JSON, is read as JSON.
        let escaped = wrap(b"1", &["a\"b".to_owned()], 7);
        assert_eq!(open_as_written(&escaped), None);
        assert_eq!(open(&escaped).ok_or("not an envelope")?.tags, ["a\"b"]);
        let spaced = Bytes::from_static(
            b"{\"__impcache_tagged__\":{ \"tags\":[\"t\"],\"created\":3},\"value\":2}",
        );
        let opened = open(&spaced).ok_or("not an envelope")?;
        assert_eq!((opened.created, &opened.value[..]), (3, &b"2"[..]));
        // Truncated envelopes are none.
        let wrapped = wrap(b"1", &["t".to_owned()], 7);
        for end in 0..wrapped.len() {
            assert_eq!(open(&wrapped.slice(..end)), None, "{end}");
        }
        Ok(())
    }

    #[test]
    fn plain_values_are_not_envelopes() {
        for plain in [&b"1"[..], b"\"x\"", br#"{"a":1}"#, b"null"] {
            assert!(!is_envelope(plain));
        }
        assert_eq!(
            open(&Bytes::from_static(b"{\"__impcache_tagged__\":1}")),
            None
        );
    }

    #[test]
    fn a_lookalike_with_another_field_is_no_envelope_wherever_the_field_is() {
        for lookalike in [
            &br#"{"__impcache_tagged__":{"created":1,"tags":["t"]},"x":1,"value":5}"#[..],
            br#"{"__impcache_tagged__":{"created":1,"tags":["t"],"x":1},"value":5}"#,
            br#"{"__impcache_tagged__":{"created":1,"x":1,"tags":["t"]},"value":5}"#,
        ] {
            let bytes = Bytes::copy_from_slice(lookalike);
            assert_eq!(open(&bytes), None, "{}", String::from_utf8_lossy(lookalike));
        }
    }
}
