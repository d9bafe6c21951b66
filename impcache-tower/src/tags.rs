//! Tagged responses (issue 16): the tags a response carries (its `Surrogate-Key` / `Cache-Tag`
//! header fields, and the layer's [`tags_from`](crate::CacheLayer::tags_from) closure over the
//! request), how an entry stores them, and how a hit is judged against impcache's tag state
//! ([`Cache::invalidate_tag`](impcache::Cache::invalidate_tag),
//! [`Cache::soft_invalidate_tag`](impcache::Cache::soft_invalidate_tag): the same state keys, so
//! one call purges memoized values and HTTP responses alike).
//!
//! **Where the tags live.** In the entry, as a pseudo header field (`impcache-tags: {created µs}
//! {tag} {tag} ...`, each tag percent-encoded) that a decoded entry moves out of its headers. (The
//! tag header fields are stored with the response as they came: a `304` updates them, and the
//! tags are collected again from them, `tagging::refreshed`; they are removed from what a client
//! is sent unless the layer keeps them.) A hit learns its tags only once it has read the entry:
//! an untagged entry is served after that one read (nothing else to pay), a tagged one reads its
//! tags' state in a second round trip.
//! The other choice, the tag keys kept in the URL's record and read with it, would cost every
//! lookup of a varying URL a record rewrite and still a second read for the variant: the second
//! read is paid by tagged hits only.
//!
//! **One round trip.** The layer remembers, per URL (its record key), the tags its response
//! carried when last stored or read ([`LearnedTags`], in process memory, bounded), and reads
//! their state with the record (one `MGET` on a single node,
//! `impcache::__private::tags::get_raw_with_states`). A hit whose tags are all among them is
//! judged from that read; one that carries another tag (stored by another process with other
//! tags, a variant with other tags) reads the rest in a second round trip, as the first hit of a
//! URL this process has not seen does.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// The pseudo header field an entry stores its tags in (never served).
pub(crate) const TAGS_FIELD: &str = "impcache-tags";

/// The response header fields read as tags by default: `Surrogate-Key` (space-separated, Fastly)
/// and `Cache-Tag` (comma-separated, Cloudflare).
pub const DEFAULT_TAG_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("surrogate-key"),
    HeaderName::from_static("cache-tag"),
];

/// The tag header fields whose tags are case-insensitive: `Cache-Tag` (Cloudflare, and CloudFront's
/// usual name), where `Tag1` and `tag1` are one tag. `Surrogate-Key` (Fastly) and the others keep
/// their case.
const CASE_INSENSITIVE_TAG_HEADER: HeaderName = HeaderName::from_static("cache-tag");

/// Whether the tags of the header field `name` are case-insensitive.
pub(crate) fn case_insensitive(name: &HeaderName) -> bool {
    *name == CASE_INSENSITIVE_TAG_HEADER
}

/// The spellings of tags a purge reaches: each tag, and its lower case where a case-insensitive
/// tag header field is read (`any_case_insensitive`). A response's case-insensitive tags are
/// stored the same way ([`push_spellings`], from `tagging::collect`), so a purge of any case
/// reaches them (and [`Cache::invalidate_tag`](impcache::Cache::invalidate_tag) of the spelling
/// the handler gave). The cost: a case-sensitive tag written in lower case (`Surrogate-Key:
/// user:1`) is also purged by a purge of another case of it (`User:1`): an extra miss, never a
/// stale hit.
pub(crate) fn spellings<I>(tags: I, any_case_insensitive: bool) -> Vec<String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut spellings = Vec::new();
    for tag in tags {
        push_spellings(&mut spellings, tag.as_ref(), any_case_insensitive);
    }
    spellings
}

/// Pushes `tag`, then, when `case_insensitive`, its lower case if that differs.
pub(crate) fn push_spellings(out: &mut Vec<String>, tag: &str, case_insensitive: bool) {
    out.push(tag.to_owned());
    if case_insensitive {
        let lower = tag.to_lowercase();
        if lower != tag {
            out.push(lower);
        }
    }
}

/// What a tag is percent-encoded against in the stored field: the separators and `%`.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b',');

/// How many bytes of record keys and tags [`LearnedTags`] holds (the URLs seen most recently are
/// kept): about 10,000 URLs with a few short tags each. A bound in bytes, not URLs: an origin
/// sending hundreds of tags per response made 10,000 URLs hold over 100 MB (found by a probe).
const LEARNED_BYTES: u64 = 4 * 1024 * 1024;

/// What one learned URL weighs beyond its key's and tags' bytes: the map's entry (moka's
/// bookkeeping) and the `Arc`, measured, so that the bound holds for the heap; each tag adds a
/// `String` ([`TAG_OVERHEAD`]). Measured with a counting allocator (a probe, 2026-12-07): 370 to
/// 400 bytes of heap per URL of about 60 bytes with three one-letter tags, whose weight was 231
/// with 96 here, so that 4 MiB of weights held 7.5 MiB.
const LEARNED_OVERHEAD: usize = 256;

/// What one tag weighs beyond its bytes.
const TAG_OVERHEAD: usize = std::mem::size_of::<String>();

/// The tags each URL's response carried when last read, by record key: their state is read with
/// the record on the next lookup. A hint only: the verdict is always made from the entry's own
/// tags. Bounded to [`LEARNED_BYTES`]. Until a layer has seen a tagged response, a lookup pays
/// one atomic load here, not a map lookup.
#[derive(Clone)]
pub(crate) struct LearnedTags {
    urls: moka::sync::Cache<String, Arc<[String]>>,
    /// Whether anything was ever learned (shared by the layer's clones, as `urls` is).
    any: Arc<AtomicBool>,
}

impl Default for LearnedTags {
    fn default() -> Self {
        LearnedTags {
            urls: moka::sync::Cache::builder()
                .max_capacity(LEARNED_BYTES)
                // The URLs seen most recently (moka's default, TinyLFU, may refuse a new one).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .weigher(|record: &String, tags: &Arc<[String]>| {
                    let tags: usize = tags.iter().map(|tag| tag.len() + TAG_OVERHEAD).sum();
                    u32::try_from(record.len() + tags + LEARNED_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build(),
            any: Arc::default(),
        }
    }
}

impl fmt::Debug for LearnedTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LearnedTags")
            .field("urls", &self.urls.entry_count())
            .finish()
    }
}

impl LearnedTags {
    /// The tags last seen on the response of the URL whose record key is `record`.
    pub(crate) fn get(&self, record: &str) -> Option<Arc<[String]>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.urls.get(record)
    }

    /// Remembers `tags` for the URL whose record key is `record`.
    pub(crate) fn learn(&self, record: &str, tags: &[String]) {
        self.urls.insert(record.to_owned(), Arc::from(tags));
        self.any.store(true, Ordering::Relaxed);
    }
}

/// The layer's closure giving a request's tags.
#[derive(Clone)]
pub(crate) struct TagsFrom(pub(crate) Arc<TagsFn>);

/// The type of [`TagsFrom`]'s closure.
pub(crate) type TagsFn = dyn Fn(&Parts) -> Vec<String> + Send + Sync;

impl fmt::Debug for TagsFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TagsFrom(..)")
    }
}

/// An entry's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tagged {
    /// When its handler call started, µs since the epoch (an invalidation landing during the call
    /// hides it).
    pub(crate) created: u64,
    pub(crate) tags: Vec<String>,
    /// Soft-invalidated at this time (µs), as the lookup found (not stored).
    pub(crate) soft_since: Option<u64>,
}

impl Tagged {
    /// The stored field's value.
    pub(crate) fn encode(&self) -> HeaderValue {
        let mut value = self.created.to_string();
        for tag in &self.tags {
            value.push(' ');
            value.extend(utf8_percent_encode(tag, ENCODED).map(Cow::from));
        }
        // Controls and non-ASCII are encoded: always a valid field value.
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("0"))
    }

    /// Reads the stored field's value; `None` when it is not one.
    pub(crate) fn decode(value: &HeaderValue) -> Option<Tagged> {
        let mut parts = value.to_str().ok()?.split(' ');
        let created = parts.next()?.parse().ok()?;
        let tags = parts
            .map(|tag| percent_decode_str(tag).decode_utf8().map(Cow::into_owned))
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Tagged {
            created,
            tags,
            soft_since: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The learned tags are bounded in bytes, whatever the number of tags per URL.
    #[test]
    fn learned_tags_hold_at_most_their_bytes() {
        let learned = LearnedTags::default();
        let tags: Vec<String> = (0..200).map(|n| format!("tag-number-{n:04}")).collect();
        for url in 0..5_000 {
            learned.learn(&format!("cache:1:http:example.com:/page/{url}"), &tags);
        }
        learned.urls.run_pending_tasks();
        assert!(learned.urls.weighted_size() <= LEARNED_BYTES);
        // About 7.6 KB a URL: hundreds of them, not thousands.
        assert!(learned.urls.entry_count() < 1_000, "{learned:?}");
        assert!(learned.get("cache:1:http:example.com:/page/4999").is_some());
    }
}
