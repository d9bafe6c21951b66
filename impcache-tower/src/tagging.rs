//! The layer's tag handling in a request's way (issue 16): a response's tags collected, and its
//! tag header fields stripped. What a tag set is and how an entry stores it is `tags.rs`; how a
//! tagged hit is judged against impcache's tag state is `store.rs` (`judge_tags`).

use http::HeaderMap;

use crate::config::Config;
use crate::tags::{case_insensitive, push_spellings, Tagged, TAGS_FIELD};

/// The tags of a response: those of the request (`from_request`), then those of the layer's tag
/// header fields, which are removed from `headers` unless the layer keeps them; those the cache
/// refuses (empty, too long) and those that are not UTF-8 left out. `None` without any.
///
/// A field value is split on spaces and commas (its bytes: `,` and ASCII whitespace are never
/// part of a multi-byte UTF-8 character), and each token is a tag when it is UTF-8 (`café`
/// counts, not only visible ASCII); a token that is not is left out with a warning, and the
/// other tags of its field stay.
///
/// `refreshed`: the tags of the stored entry a `304` refreshes (RFC 9111 §4.3.4), kept when the
/// `304` carries none of the tag header fields. A `304` updates the stored fields it carries and
/// leaves the others, so its tag fields (even an empty one) replace the stored tags, and a `304`
/// without them removes none. Either way the request's tags are added, as on a `200`.
pub(crate) fn collect(
    config: &Config,
    from_request: Vec<String>,
    headers: &mut HeaderMap,
    created: u64,
    refreshed: Option<&Tagged>,
) -> Option<Box<Tagged>> {
    let mut tags = from_request;
    let mut carried = false;
    for name in &config.tag_headers {
        for value in headers.get_all(name) {
            carried = true;
            let split = value
                .as_bytes()
                .split(|b| *b == b',' || b.is_ascii_whitespace());
            for token in split.filter(|token| !token.is_empty()) {
                let Ok(tag) = std::str::from_utf8(token) else {
                    let tag = String::from_utf8_lossy(token);
                    let tag = config.cache.records_keys().then_some(&*tag);
                    tracing::warn!(header = %name, tag, "impcache-tower: a response's tag that is not UTF-8 is left out");
                    continue;
                };
                // A case-insensitive tag also in lower case, which a purge of any case reaches.
                push_spellings(&mut tags, tag, case_insensitive(name));
            }
        }
        if !config.keep_tag_headers {
            headers.remove(name);
        }
    }
    if let Some(stored) = refreshed.filter(|_| !carried) {
        tags.extend(stored.tags.iter().cloned());
    }
    // Never taken from a handler: the layer's own field.
    headers.remove(TAGS_FIELD);
    let mut unique: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        // A tag the cache refuses (too long) could never be purged: left out, and logged.
        if let Err(error) = impcache::__private::tags::check(&config.cache, &tag) {
            let error = impcache::__private::logged_error(&config.cache, &error);
            tracing::warn!(%error, "impcache-tower: a response's tag is left out");
            continue;
        }
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

/// A response's creation time, µs since the epoch (impcache's tag clock: later than every
/// invalidation made before it in this process).
pub(crate) fn stamp_micros() -> u64 {
    impcache::__private::tags::stamp_micros()
}

// Unit tests: an `assert!` or a `?` here is the test failing; none of it is compiled into the
// library.
#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    use crate::entry::Entry;

    #[test]
    fn tags_round_trip_in_the_entry_and_never_show_as_a_header(
    ) -> Result<(), Box<dyn std::error::Error>> {
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
        let (decoded, _, _) = Entry::decode(&entry.encode(&[], 1)).ok_or("no entry")?;
        assert_eq!(decoded.tags.as_deref(), Some(&tagged));
        assert!(decoded.headers.is_empty());
        Ok(())
    }

    #[test]
    fn collect_reads_both_separators_and_strips() -> Result<(), Box<dyn std::error::Error>> {
        let config = Config::new(impcache::Cache::new(impcache::MemoryCacheRepository::new()));
        let mut headers = HeaderMap::new();
        headers.insert("surrogate-key", HeaderValue::from_static("a  b"));
        headers.insert("cache-tag", HeaderValue::from_static("b, c"));
        headers.insert(TAGS_FIELD, HeaderValue::from_static("1 forged"));
        let tagged =
            collect(&config, vec!["r".to_owned()], &mut headers, 7, None).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["r", "a", "b", "c"]);
        assert!(headers.is_empty());
        assert!(collect(&config, Vec::new(), &mut HeaderMap::new(), 7, None).is_none());
        // UTF-8 tags are read (and stored percent-encoded); a token that is not UTF-8 is left
        // out, and only it: the other tags of its value stay.
        let mut headers = HeaderMap::new();
        let utf8 = HeaderValue::from_bytes("café thé".as_bytes())?;
        headers.insert("surrogate-key", utf8);
        headers.insert(
            "cache-tag",
            HeaderValue::from_bytes(b"ok1,\xff\xfe ok2\xff,ok3")?,
        );
        let tagged = collect(&config, Vec::new(), &mut headers, 7, None).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["café", "thé", "ok1", "ok3"]);
        let decoded = Tagged::decode(&tagged.encode()).ok_or("no tags decoded")?;
        assert_eq!(decoded.tags, tagged.tags);
        Ok(())
    }

    #[test]
    fn a_304_replaces_the_stored_tags_with_those_it_carries(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let config = Config::new(impcache::Cache::new(impcache::MemoryCacheRepository::new()));
        let stored = Tagged {
            created: 1,
            tags: vec!["old".to_owned(), "r".to_owned()],
            soft_since: Some(2),
        };
        // Tag fields on the `304`: they and the request's tags replace the stored tags.
        let mut headers = HeaderMap::new();
        headers.insert("surrogate-key", HeaderValue::from_static("new"));
        let request = vec!["r".to_owned()];
        let tagged = collect(&config, request, &mut headers, 7, Some(&stored)).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["r", "new"]);
        assert_eq!((tagged.created, tagged.soft_since), (7, None));
        // An empty one too: only the request's are left.
        let mut headers = HeaderMap::new();
        headers.insert("cache-tag", HeaderValue::from_static(""));
        let request = vec!["r2".to_owned()];
        let tagged = collect(&config, request, &mut headers, 7, Some(&stored)).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["r2"]);
        let mut headers = HeaderMap::new();
        headers.insert("cache-tag", HeaderValue::from_static(""));
        assert!(collect(&config, Vec::new(), &mut headers, 7, Some(&stored)).is_none());
        // None: the stored tags are kept, with the request's.
        let request = vec!["r2".to_owned(), "r".to_owned()];
        let tagged =
            collect(&config, request, &mut HeaderMap::new(), 7, Some(&stored)).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["r2", "r", "old"]);
        assert_eq!((tagged.created, tagged.soft_since), (7, None));
        Ok(())
    }
}
