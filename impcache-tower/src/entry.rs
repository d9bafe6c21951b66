//! The stored form of a response: status, headers, body and storage time, in a compact binary
//! framing (stored with [`Cache::set_raw`](impcache::Cache::set_raw), never base64 or JSON); and of
//! the Vary marker that a URL's record holds instead of an entry when its responses vary.
//!
//! An entry:
//!
//! ```text
//! "IHC" 0x06                      magic and format version
//! u64 LE                          generation: a variant is served only under a record of the
//!                                   same generation (see `crate::store`; 0 in the `0x03` format)
//! u64 LE                          stored at, milliseconds since the Unix epoch
//! varint                          TTL in milliseconds (0: none; seconds in the `0x04` and
//!                                   `0x03` formats)
//! u8                              origin freshness: 0 none (the default mode), 1 present,
//!                                   2 present with must-revalidate; when present:
//!   varint                          freshness lifetime, seconds
//!   varint                          initial age, seconds
//! varint + bytes                  the Vary header names it was stored under, lowercase,
//!                                   comma-separated (empty: none)
//! u16 LE                          status
//! varint                          number of header fields, then per field:
//!   varint + bytes                  name (lowercase)
//!   varint + bytes                  value
//! varint + bytes                  body
//! ```
//!
//! A Vary marker:
//!
//! ```text
//! "IHV" 0x03                      magic and format version
//! u64 LE                          generation of the variants it names (0 in the `0x02` format)
//! bytes                           the Vary header names, lowercase, comma-separated (empty: none)
//! ```
//!
//! Varints are LEB128. Anything that does not decode (the `0x01` formats included, which kept the
//! Vary list and the entry under two keys, and the `0x02` entry, without origin freshness) is
//! treated as a miss (and overwritten). The `0x03` entry and the `0x02` marker are the formats
//! without a generation: they read as generation 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// `0x06`: the layout of `0x05`, whose header fields may hold the response's tag fields
/// (`Surrogate-Key`, `Cache-Tag`), removed only from what a client is sent. A new format so
/// that a process of an earlier version, which serves a stored entry's fields as they are,
/// reads these entries as misses instead of sending their private tags to its clients.
const MAGIC: &[u8; 4] = b"IHC\x06";
/// `0x05`: TTL in milliseconds; stored tag fields never (they were removed before storing).
const MAGIC_V5: &[u8; 4] = b"IHC\x05";
const MAGIC_V4: &[u8; 4] = b"IHC\x04";
const MAGIC_V3: &[u8; 4] = b"IHC\x03";
const MARKER_MAGIC: &[u8; 4] = b"IHV\x03";
const MARKER_MAGIC_V2: &[u8; 4] = b"IHV\x02";

/// A new generation for a record and the variants it names: random, never 0 (the generation of
/// the formats without one).
pub(crate) fn new_generation() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::collections::hash_map::RandomState::new()
        .hash_one((n, now_ms()))
        .max(1)
}

/// What a URL's record (or a variant key) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A stored response, with the Vary header names it was stored under.
    Entry {
        /// The response.
        entry: Entry,
        /// The Vary header names (empty for the entry a URL's record holds).
        vary: Vec<HeaderName>,
        /// Its generation.
        generation: u64,
    },
    /// The Vary header names of a URL whose entries are variants (see [`crate::key`]), and
    /// their generation.
    Marker {
        /// The Vary header names.
        vary: Vec<HeaderName>,
        /// The generation of the variants it names.
        generation: u64,
    },
}

impl Record {
    /// Reads an entry or a Vary marker; `None` when it is neither in this format. An entry's
    /// body and header values share `bytes` (no copy).
    pub(crate) fn decode(bytes: &Bytes) -> Option<Record> {
        match bytes.get(..MAGIC.len())? {
            magic
                if magic == MAGIC
                    || magic == MAGIC_V5
                    || magic == MAGIC_V4
                    || magic == MAGIC_V3 =>
            {
                Entry::decode(bytes).map(|(entry, vary, generation)| Record::Entry {
                    entry,
                    vary,
                    generation,
                })
            }
            magic if magic == MARKER_MAGIC || magic == MARKER_MAGIC_V2 => {
                decode_marker(bytes).map(|(vary, generation)| Record::Marker { vary, generation })
            }
            _ => None,
        }
    }
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Milliseconds since the Unix epoch.
    pub(crate) stored_at_ms: u64,
    /// The TTL the entry was stored with, `None` when it never expires.
    pub(crate) ttl: Option<Duration>,
    /// Its freshness, when stored in the origin-freshness mode (`None`: fresh until its key
    /// expires).
    pub(crate) origin: Option<Freshness>,
    /// Its tags (issue 16), stored as the pseudo header field [`TAGS_FIELD`](crate::tags::TAGS_FIELD).
    /// Boxed: an untagged entry (the common case) pays one word.
    pub(crate) tags: Option<Box<crate::tags::Tagged>>,
}

/// What an entry stored in the origin-freshness mode ([`crate::freshness`]) knows of its freshness, on top of its
/// storage time ([`Entry::stored_at_ms`], the response time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// The freshness lifetime, in seconds (0: stale at once, revalidated on every use).
    pub(crate) lifetime: u64,
    /// The corrected initial age (§4.2.3), in seconds: how old the response was when stored.
    pub(crate) initial_age: u64,
    /// `must-revalidate` / `proxy-revalidate` / `s-maxage`: never served stale (not even when
    /// the origin fails, once stale-if-error exists).
    pub(crate) must_revalidate: bool,
}

impl Freshness {
    /// The current age (§4.2.3) at `now_ms`, in seconds.
    pub(crate) fn current_age(&self, entry_stored_at_ms: u64, now_ms: u64) -> u64 {
        self.initial_age
            .saturating_add(now_ms.saturating_sub(entry_stored_at_ms) / 1000)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` (since the Unix epoch) as an HTTP-date: the `Date` the layer gives a response without
/// one (RFC 9110 §6.6.1).
pub(crate) fn http_date(ms: u64) -> http::HeaderValue {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    // An IMF-fixdate is ASCII letters, digits, spaces, commas and colons: always a valid value.
    http::HeaderValue::from_str(&httpdate::fmt_http_date(time))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

#[cfg(test)]
fn varint_size(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }
}

impl Entry {
    /// How long the entry has been past its freshness at `now_ms`; `None` while it is fresh (or
    /// never expires). In the default mode its freshness is its TTL, in the origin mode its
    /// lifetime.
    pub(crate) fn stale_for(&self, now_ms: u64) -> Option<Duration> {
        match &self.origin {
            None => {
                let ttl = self.ttl?;
                let age = Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms));
                age.checked_sub(ttl)
            }
            Some(freshness) => {
                let age = freshness.current_age(self.stored_at_ms, now_ms);
                age.checked_sub(freshness.lifetime).map(Duration::from_secs)
            }
        }
    }

    /// How long the entry stays fresh from `now_ms` (zero once stale); `None` when it never
    /// expires.
    pub(crate) fn fresh_left(&self, now_ms: u64) -> Option<Duration> {
        match &self.origin {
            None => {
                let age = Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms));
                Some(self.ttl?.saturating_sub(age))
            }
            Some(freshness) => {
                let age = freshness.current_age(self.stored_at_ms, now_ms);
                Some(Duration::from_secs(freshness.lifetime.saturating_sub(age)))
            }
        }
    }

    /// The entry's age in seconds: since it was stored (never negative, even with clock skew
    /// between hosts), plus, in the origin mode, how old it was then (RFC 9111 §4.2.3).
    pub(crate) fn age_secs(&self, now_ms: u64) -> u64 {
        match &self.origin {
            None => now_ms.saturating_sub(self.stored_at_ms) / 1000,
            Some(freshness) => freshness.current_age(self.stored_at_ms, now_ms),
        }
    }

    /// Seconds the entry stays fresh at age `age` (`None`: no expiry).
    pub(crate) fn ttl_left(&self, age: u64) -> Option<u64> {
        match &self.origin {
            None => self.ttl.map(|ttl| ttl.as_secs().saturating_sub(age)),
            Some(freshness) => Some(freshness.lifetime.saturating_sub(age)),
        }
    }

    /// The binary form, with the Vary header names the entry is stored under and its
    /// generation.
    pub(crate) fn encode(&self, vary: &[HeaderName], generation: u64) -> Bytes {
        let vary_len = names_len(vary);
        let mut size =
            MAGIC.len() + 8 + 8 + 10 + 21 + 10 + vary_len + 2 + 10 + 10 + self.body.len();
        for (name, value) in &self.headers {
            size += 20 + name.as_str().len() + value.len();
        }
        let mut out = BytesMut::with_capacity(size);
        out.put_slice(MAGIC);
        out.put_u64_le(generation);
        out.put_u64_le(self.stored_at_ms);
        let ttl_ms = self.ttl.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        put_varint(&mut out, ttl_ms);
        match &self.origin {
            None => out.put_u8(0),
            Some(freshness) => {
                out.put_u8(if freshness.must_revalidate { 2 } else { 1 });
                put_varint(&mut out, freshness.lifetime);
                put_varint(&mut out, freshness.initial_age);
            }
        }
        put_varint(&mut out, vary_len as u64);
        put_names(&mut out, vary);
        out.put_u16_le(self.status.as_u16());
        let tags = self.tags.as_deref().map(crate::tags::Tagged::encode);
        put_varint(
            &mut out,
            (self.headers.len() + usize::from(tags.is_some())) as u64,
        );
        let tags = tags.iter().map(|value| (crate::tags::TAGS_FIELD, value));
        let fields = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value));
        for (name, value) in fields.chain(tags) {
            put_varint(&mut out, name.len() as u64);
            out.put_slice(name.as_bytes());
            put_varint(&mut out, value.len() as u64);
            out.put_slice(value.as_bytes());
        }
        put_varint(&mut out, self.body.len() as u64);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads the binary form, the Vary header names the entry was stored under and its
    /// generation; `None` when it is not an entry of this format (or of `0x03`, generation 0).
    /// The body and the header values share `bytes` (no copy).
    pub(crate) fn decode(bytes: &Bytes) -> Option<(Entry, Vec<HeaderName>, u64)> {
        let mut r = Reader { bytes };
        let magic = r.take(MAGIC.len())?;
        let generation = match magic {
            m if m == MAGIC || m == MAGIC_V5 || m == MAGIC_V4 => {
                u64::from_le_bytes(r.take(8)?.try_into().ok()?)
            }
            m if m == MAGIC_V3 => 0,
            _ => return None,
        };
        let stored_at_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let ttl = match r.varint()? {
            0 => None,
            ms if magic == MAGIC || magic == MAGIC_V5 => Some(Duration::from_millis(ms)),
            // `0x04` and `0x03`: seconds.
            secs => Some(Duration::from_secs(secs)),
        };
        let origin = match *r.take(1)?.first()? {
            0 => None,
            tag @ (1 | 2) => Some(Freshness {
                lifetime: r.varint()?,
                initial_age: r.varint()?,
                must_revalidate: tag == 2,
            }),
            _ => return None,
        };
        let vary = parse_names(r.field()?)?;
        let status = StatusCode::from_u16(u16::from_le_bytes(r.take(2)?.try_into().ok()?)).ok()?;
        let count = r.varint()?;
        // Room for the fields a hit adds (`Age` and up to two status headers; `Content-Length`
        // is stored): no regrowth. Not more: `HeaderMap` rounds up to a power of two past 3/4
        // full, and a map for six fields or fewer stays a small allocation.
        let capacity = usize::try_from(count.min(256)).ok()? + 3;
        let mut headers = HeaderMap::with_capacity(capacity);
        let mut tags = None;
        for _ in 0..count {
            let name = HeaderName::from_bytes(r.field()?).ok()?;
            // Shares `bytes` (no copy), like the body.
            let value = HeaderValue::from_maybe_shared(bytes.slice_ref(r.field()?)).ok()?;
            if name == crate::tags::TAGS_FIELD {
                tags = crate::tags::Tagged::decode(&value).map(Box::new);
            } else {
                headers.append(name, value);
            }
        }
        let body_len = usize::try_from(r.varint()?).ok()?;
        let consumed = bytes.len() - r.bytes.len();
        if r.bytes.len() != body_len {
            return None;
        }
        let body = bytes.slice(consumed..);
        let entry = Entry {
            status,
            headers,
            body,
            stored_at_ms,
            ttl,
            origin,
            tags,
        };
        Some((entry, vary, generation))
    }

    /// Bytes the framing adds to the body (for the documentation's overhead figure).
    #[cfg(test)]
    pub(crate) fn overhead(&self) -> usize {
        self.encode(&[], 1).len() - self.body.len()
    }
}

/// Bytes of `names`, comma-separated.
fn names_len(names: &[HeaderName]) -> usize {
    names
        .iter()
        .map(|n| n.as_str().len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
}

/// Appends `names`, comma-separated.
fn put_names(out: &mut BytesMut, names: &[HeaderName]) {
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(name.as_str().as_bytes());
    }
}

/// Reads comma-separated header names (none when empty); `None` when one is not a name.
fn parse_names(bytes: &[u8]) -> Option<Vec<HeaderName>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    bytes
        .split(|&b| b == b',')
        .map(|name| HeaderName::from_bytes(name).ok())
        .collect()
}

/// The Vary marker of a URL whose responses vary on `names` (see [`crate::key`]), naming the
/// variants of `generation`.
pub(crate) fn encode_marker(names: &[HeaderName], generation: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(MARKER_MAGIC.len() + 8 + names_len(names));
    out.put_slice(MARKER_MAGIC);
    out.put_u64_le(generation);
    put_names(&mut out, names);
    out.freeze()
}

/// Reads a Vary marker and its generation; `None` when it is not one.
fn decode_marker(bytes: &[u8]) -> Option<(Vec<HeaderName>, u64)> {
    if let Some(names) = bytes.strip_prefix(MARKER_MAGIC_V2) {
        return Some((parse_names(names)?, 0));
    }
    let rest = bytes.strip_prefix(MARKER_MAGIC)?;
    let generation = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    Some((parse_names(rest.get(8..)?)?, generation))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(body: Bytes) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(
            "etag",
            HeaderValue::from_static("\"0123456789abcdef0123456789abcdef\""),
        );
        headers.append("x-multi", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("two"));
        Entry {
            status: StatusCode::OK,
            headers,
            body,
            stored_at_ms: now_ms(),
            ttl: Some(Duration::from_secs(60)),
            origin: None,
            tags: None,
        }
    }

    fn binary(len: usize) -> Bytes {
        // Every byte value, including 0 and 0xFF, so the framing is exercised on binary data.
        (0..len).map(|i| (i * 7 + i / 256) as u8).collect()
    }

    #[test]
    fn round_trips_binary_bodies_and_multi_valued_headers() {
        let vary = [
            HeaderName::from_static("accept"),
            HeaderName::from_static("accept-language"),
        ];
        for len in [0, 1, 127, 128, 1024, 100 * 1024] {
            for (i, names) in [&[][..], &vary[..1], &vary[..]].into_iter().enumerate() {
                let mut e = entry(binary(len));
                if i > 0 {
                    e.origin = Some(Freshness {
                        lifetime: 300 * i as u64,
                        initial_age: 7,
                        must_revalidate: i == 2,
                    });
                }
                let decoded = Entry::decode(&e.encode(names, 42));
                assert_eq!(decoded.as_ref(), Some(&(e.clone(), names.to_vec(), 42)));
                let multi: Vec<_> = decoded
                    .iter()
                    .flat_map(|(d, ..)| d.headers.get_all("x-multi").iter())
                    .collect();
                assert_eq!(multi, ["one", "two"]);
                assert_eq!(
                    Record::decode(&e.encode(names, 42)),
                    Some(Record::Entry {
                        entry: e,
                        vary: names.to_vec(),
                        generation: 42,
                    })
                );
            }
        }
    }

    #[test]
    fn rejects_truncated_or_foreign_bytes() {
        let bytes = entry(binary(300)).encode(&[], 1);
        for cut in [0, 3, 4, 12, 20, bytes.len() - 1] {
            assert!(Entry::decode(&bytes.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(Entry::decode(&Bytes::from_static(b"{\"json\":true}")).is_none());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Entry::decode(&Bytes::from(longer)).is_none());
        let mut bad_vary = BytesMut::new();
        bad_vary.put_slice(MAGIC);
        bad_vary.put_u64_le(1);
        bad_vary.put_u64_le(0);
        put_varint(&mut bad_vary, 0);
        bad_vary.put_u8(0);
        put_varint(&mut bad_vary, 3);
        bad_vary.put_slice(b"a b");
        assert!(Entry::decode(&bad_vary.freeze()).is_none());
    }

    /// The framings before the record layout (a Vary list at `:h`, the entry at `:v:-`, without
    /// the entry's Vary list) and the entry before origin freshness are not read as records.
    #[test]
    fn the_version_1_framings_are_not_records() {
        let current = entry(binary(10)).encode(&[], 1);
        for version in [1, 2] {
            let mut old = current.to_vec();
            old[3] = version;
            assert!(Record::decode(&Bytes::from(old)).is_none());
        }
        for bytes in [&b"IHV\x01"[..], b"IHV\x01accept", b"IHC\x01", b"IH", b""] {
            assert!(Record::decode(&Bytes::copy_from_slice(bytes)).is_none());
        }
    }

    /// The figure quoted in the README: framing overhead of a binary body with typical headers.
    #[test]
    fn framing_overhead_is_small_and_constant() {
        let small = entry(binary(1024));
        let large = entry(binary(100 * 1024));
        let (o1, o100) = (small.overhead(), large.overhead());
        println!(
            "entry overhead: 1 KiB body -> {o1} bytes ({:.1} %), 100 KiB body -> {o100} bytes ({:.3} %)",
            o1 as f64 * 100.0 / 1024.0,
            o100 as f64 * 100.0 / 102_400.0
        );
        // The headers dominate (~104 bytes here); the framing itself is ~20 bytes, and the
        // body costs its length plus a 2-3 byte varint: no base64 (+33 %).
        assert!(o1 < 160, "{o1}");
        assert_eq!(o100, o1 + varint_size(100 * 1024) - varint_size(1024));
    }

    /// TTLs round-trip to the millisecond, long ones (a year, a century) included.
    #[test]
    fn ttls_round_trip_to_the_millisecond() {
        let year = Duration::from_secs(365 * 86_400);
        for ttl in [
            Duration::from_millis(1),
            Duration::from_millis(300),
            year,
            year * 100,
        ] {
            let e = Entry {
                ttl: Some(ttl),
                ..entry(binary(3))
            };
            let decoded = Entry::decode(&e.encode(&[], 1)).map(|(e, _, _)| e.ttl);
            assert_eq!(decoded, Some(Some(ttl)));
        }
    }

    /// The `0x05` format (the layout of this one) and the `0x04` format (TTL in seconds) read as
    /// they did; the formats before generations read as generation 0.
    #[test]
    fn the_earlier_formats_still_read() {
        let e = entry(binary(10));
        assert_eq!(e.ttl, Some(Duration::from_secs(60)));
        let mut v5 = e.encode(&[], 9).to_vec();
        assert_eq!(&v5[..4], b"IHC\x06");
        v5[3] = 5;
        assert_eq!(
            Entry::decode(&Bytes::from(v5)),
            Some((e.clone(), Vec::new(), 9))
        );
        // The TTL varint follows the magic, the generation and the storage time.
        let mut v4 = e.encode(&[], 9).to_vec();
        let ttl_ms = varint_size(60_000);
        v4.splice(20..20 + ttl_ms, [60]);
        v4[3] = 4;
        assert_eq!(
            Entry::decode(&Bytes::from(v4.clone())),
            Some((e.clone(), Vec::new(), 9))
        );
        let mut v3 = v4;
        v3.drain(4..12);
        v3[3] = 3;
        assert_eq!(Entry::decode(&Bytes::from(v3)), Some((e, Vec::new(), 0)));
        assert_eq!(
            Record::decode(&Bytes::from_static(b"IHV\x02accept")),
            Some(Record::Marker {
                vary: vec![HeaderName::from_static("accept")],
                generation: 0
            })
        );
    }

    #[test]
    fn markers_round_trip() {
        let names = [
            HeaderName::from_static("accept-language"),
            HeaderName::from_static("accept"),
        ];
        for names in [&names[..], &names[..1], &[]] {
            assert_eq!(
                Record::decode(&encode_marker(names, 7)),
                Some(Record::Marker {
                    vary: names.to_vec(),
                    generation: 7
                })
            );
        }
        assert_eq!(&encode_marker(&[], 1)[..], b"IHV\x03\x01\0\0\0\0\0\0\0");
        assert!(Record::decode(&Bytes::from_static(b"IHV\x02bad name")).is_none());
        assert!(Record::decode(&Bytes::from_static(b"garbage")).is_none());
    }
}
