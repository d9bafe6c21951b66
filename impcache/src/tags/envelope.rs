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
//! envelope: that field name is reserved.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What every envelope starts with.
const MARKER: &[u8] = b"{\"__impcache_tagged__\":";

/// Whether `bytes` are an envelope (else a plain value, stored byte for byte as Python does).
pub(crate) fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER)
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

#[derive(Deserialize)]
struct Header<'a> {
    created: u64,
    #[serde(borrow)]
    tags: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "__impcache_tagged__", borrow)]
    header: Header<'a>,
    #[serde(borrow)]
    value: &'a RawValue,
}

/// The contents of the envelope `bytes`; `None` when they are not a well-formed one.
pub(crate) fn open(bytes: &Bytes) -> Option<Opened<'_>> {
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
    fn an_envelope_round_trips_and_slices_the_value() {
        let tags = vec!["user:1".to_owned(), "a\"b".to_owned()];
        let wrapped = wrap(br#"{"name":"Ada"}"#, &tags, 42);
        assert!(is_envelope(&wrapped));
        let value: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        assert_eq!(value["value"]["name"], "Ada");
        let opened = open(&wrapped).unwrap();
        assert_eq!(opened.tags, ["user:1", "a\"b"]);
        assert_eq!(opened.created, 42);
        assert_eq!(&opened.value[..], br#"{"name":"Ada"}"#);
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
}
