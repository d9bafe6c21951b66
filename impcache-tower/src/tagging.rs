//! The layer's tag handling in a request's way (issue 16): a response's tags collected, and its
//! tag header fields stripped. What a tag set is and how an entry stores it is `tags.rs`; how a
//! tagged hit is judged against impcache's tag state is `store.rs` (`judge_tags`).

use http::HeaderMap;

use crate::config::Config;
use crate::tags::{case_insensitive, push_spellings, Tagged, TAGS_FIELD};

/// The tags of a response: those of the request (`from_request`), then those of the layer's tag
/// header fields, which are removed from `headers` unless the layer keeps them; those the cache
/// refuses (empty, too long) left out. `None` without any.
pub(crate) fn collect(
    config: &Config,
    from_request: Vec<String>,
    headers: &mut HeaderMap,
    created: u64,
) -> Option<Box<Tagged>> {
    let mut tags = from_request;
    for name in &config.tag_headers {
        for value in headers.get_all(name) {
            // UTF-8, not only visible ASCII (`to_str`): a tag such as `café` counts.
            let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                tracing::debug!(header = %name, "impcache-tower: a tag header value that is not UTF-8 is ignored");
                continue;
            };
            let split = value.split(|c: char| c == ',' || c.is_ascii_whitespace());
            // A case-insensitive tag also in lower case, which a purge of any case reaches.
            for tag in split.filter(|tag| !tag.is_empty()) {
                push_spellings(&mut tags, tag, case_insensitive(name));
            }
        }
        if !config.keep_tag_headers {
            headers.remove(name);
        }
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
        let tagged = collect(&config, vec!["r".to_owned()], &mut headers, 7).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["r", "a", "b", "c"]);
        assert!(headers.is_empty());
        assert!(collect(&config, Vec::new(), &mut HeaderMap::new(), 7).is_none());
        // UTF-8 tags are read (and stored percent-encoded); a value that is not UTF-8 is not.
        let mut headers = HeaderMap::new();
        let utf8 = HeaderValue::from_bytes("café thé".as_bytes())?;
        headers.insert("surrogate-key", utf8);
        headers.insert("cache-tag", HeaderValue::from_bytes(b"\xff\xfe")?);
        let tagged = collect(&config, Vec::new(), &mut headers, 7).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["café", "thé"]);
        let decoded = Tagged::decode(&tagged.encode()).ok_or("no tags decoded")?;
        assert_eq!(decoded.tags, tagged.tags);
        Ok(())
    }
}
