//! Tagged responses (issue 16): the tags a response carries (its `Surrogate-Key` / `Cache-Tag`
//! header fields, and the layer's [`tags_from`](crate::CacheLayer::tags_from) closure over the
//! request), how an entry stores them, and how a hit is judged against impcache's tag state
//! ([`Cache::invalidate_tag`](impcache::Cache::invalidate_tag),
//! [`Cache::soft_invalidate_tag`](impcache::Cache::soft_invalidate_tag): the same state keys, so
//! one call purges memoized values and HTTP responses alike).
//!
//! **Where the tags live.** In the entry, as a pseudo header field (`impcache-tags: {created µs}
//! {tag} {tag} ...`, each tag percent-encoded) that a decoded entry moves out of its headers. A
//! hit learns its tags only once it has read the entry: an untagged entry is served after that
//! one read (nothing else to pay), a tagged one reads its tags' state in a second round trip.
//! The other choice, the tag keys kept in the URL's record and read with it, would cost every
//! lookup of a varying URL a record rewrite and still a second read for the variant: the second
//! read is paid by tagged hits only.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use impcache::__private::tags::{self as state, Verdict};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::config::Config;
use crate::entry::Entry;
use crate::store::{Lookup, Seen};

/// The pseudo header field an entry stores its tags in (never served).
pub(crate) const TAGS_FIELD: &str = "impcache-tags";

/// The response header fields read as tags by default: `Surrogate-Key` (space-separated, Fastly)
/// and `Cache-Tag` (comma-separated, Cloudflare).
pub const DEFAULT_TAG_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("surrogate-key"),
    HeaderName::from_static("cache-tag"),
];

/// What a tag is percent-encoded against in the stored field: the separators and `%`.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b',');

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

/// The tags of a response: those of the request (`from_request`), then those of the layer's tag
/// header fields, which are removed from `headers` unless the layer keeps them. `None` without
/// any.
pub(crate) fn collect(
    config: &Config,
    from_request: Vec<String>,
    headers: &mut HeaderMap,
    created: u64,
) -> Option<Box<Tagged>> {
    let mut tags = from_request;
    for name in &config.tag_headers {
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            let split = value.split(|c: char| c == ',' || c.is_ascii_whitespace());
            tags.extend(split.filter(|tag| !tag.is_empty()).map(str::to_owned));
        }
        if !config.keep_tag_headers {
            headers.remove(name);
        }
    }
    // Never taken from a handler: the layer's own field.
    headers.remove(TAGS_FIELD);
    let mut unique: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !unique.contains(&tag) {
            unique.push(tag);
        }
    }
    (!unique.is_empty()).then(|| {
        Box::new(Tagged {
            created,
            tags: unique,
            soft_since: None,
        })
    })
}

/// Removes the layer's tag header fields from a response it does not store (unless kept).
pub(crate) fn strip(config: &Config, headers: &mut HeaderMap) {
    if !config.keep_tag_headers {
        for name in &config.tag_headers {
            headers.remove(name);
        }
    }
}

/// Now, µs since the epoch (impcache's tag clock).
pub(crate) fn now_micros() -> u64 {
    state::now_micros()
}

/// A tagged hit judged against its tags' state (a second read): served, stale (soft purge), or a
/// miss (hard purge). Fails open: the state unreadable, the handler answers.
pub(crate) async fn judge(config: &Config, mut entry: Entry, seen: Option<Seen>) -> Lookup {
    let Some(tagged) = entry.tags.as_mut() else {
        return Lookup::Hit(entry, seen);
    };
    match state::verdict(&config.cache, &tagged.tags, tagged.created).await {
        Ok(Verdict::Fresh) => Lookup::Hit(entry, seen),
        Ok(Verdict::Stale { since }) => {
            tagged.soft_since = Some(since);
            Lookup::Hit(entry, seen)
        }
        Ok(_) => {
            let fwd = if seen.is_some() {
                "vary-miss"
            } else {
                "uri-miss"
            };
            Lookup::Miss(fwd, seen)
        }
        Err(error) => {
            tracing::debug!(%error, "impcache-tower: tag state unreadable, calling the handler");
            Lookup::Failed {
                backend: error.is_backend_failure(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;

    #[test]
    fn tags_round_trip_in_the_entry_and_never_show_as_a_header() {
        let tagged = Tagged {
            created: 42,
            tags: vec!["user:1".to_owned(), "a b,c%".to_owned()],
            soft_since: None,
        };
        let entry = Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"x"),
            stored_at_ms: 1,
            ttl: None,
            origin: None,
            tags: Some(Box::new(tagged.clone())),
        };
        let (decoded, _, _) = Entry::decode(&entry.encode(&[], 1)).unwrap();
        assert_eq!(decoded.tags.as_deref(), Some(&tagged));
        assert!(decoded.headers.is_empty());
    }

    #[test]
    fn collect_reads_both_separators_and_strips() {
        let config = Config::new(impcache::Cache::new(impcache::MemoryCacheRepository::new()));
        let mut headers = HeaderMap::new();
        headers.insert("surrogate-key", HeaderValue::from_static("a  b"));
        headers.insert("cache-tag", HeaderValue::from_static("b, c"));
        headers.insert(TAGS_FIELD, HeaderValue::from_static("1 forged"));
        let tagged = collect(&config, vec!["r".to_owned()], &mut headers, 7).unwrap();
        assert_eq!(tagged.tags, ["r", "a", "b", "c"]);
        assert!(headers.is_empty());
        assert!(collect(&config, Vec::new(), &mut HeaderMap::new(), 7).is_none());
    }
}
