//! The layer's tag handling in a request's way (issue 16): a response's tags collected, and its
//! tag header fields stripped. What a tag set is and how an entry stores it is `tags.rs`; how a
//! tagged hit is judged against impcache's tag state is `store.rs` (`judge_tags`).

use http::HeaderMap;

use crate::config::Config;
use crate::entry::Entry;
use crate::tags::{case_insensitive, push_spellings, Tagged};

/// The tags of a response whose header fields are `headers` (the handler's, or those a `304`
/// updated, [`refreshed`]): those of the request (`from_request`), then those of the layer's tag
/// header fields; those the cache refuses (empty, too long) and those that are not UTF-8 left
/// out. `None` without any. The fields stay in `headers`: they are stored with the response, and
/// removed from what the client is sent ([`strip`]) unless the layer keeps them.
///
/// A field value is split on spaces and commas (its bytes: `,` and ASCII whitespace are never
/// part of a multi-byte UTF-8 character), and each token is a tag when it is UTF-8 (`café`
/// counts, not only visible ASCII); a token that is not is left out with a warning, and the
/// other tags of its field stay.
pub(crate) fn collect(
    config: &Config,
    from_request: Vec<String>,
    headers: &HeaderMap,
    created: u64,
) -> Option<Box<Tagged>> {
    let mut tags = from_request;
    for name in &config.tag_headers {
        for value in headers.get_all(name) {
            let split = value
                .as_bytes()
                .split(|b| *b == b',' || b.is_ascii_whitespace());
            for token in split.filter(|token| !token.is_empty()) {
                let Ok(tag) = std::str::from_utf8(token) else {
                    let tag = String::from_utf8_lossy(token);
                    let tag = config.cache.records_keys().then_some(&*tag);
                    impcache::__private::limited_warn!(target: module_path!(), header = %name, tag, "impcache-tower: a response's tag that is not UTF-8 is left out");
                    continue;
                };
                // A case-insensitive tag also in lower case, which a purge of any case reaches.
                push_spellings(&mut tags, tag, case_insensitive(name));
            }
        }
    }
    let mut unique: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        // A tag the cache refuses (too long) could never be purged: left out, and logged.
        if let Err(error) = impcache::__private::tags::check(&config.cache, &tag) {
            let error = impcache::__private::logged_error(&config.cache, &error);
            impcache::__private::limited_warn!(target: module_path!(), %error, "impcache-tower: a response's tag is left out");
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

/// The tags of the stored response `stale` refreshed by a `304` (RFC 9111 §4.3.4), whose header
/// fields the `304` updated into `updated` ([`crate::revalidate::updated_headers`]: each field
/// it carries replaces the stored one of that name, the others stay): [`collect`]ed from them as
/// a `200`'s, with the validation request's tags (`from_request`). So a tag field the `304`
/// carries replaces that field's tags (even with nothing valid in it: an empty value, or only
/// tokens that are not UTF-8), and the tags of the fields it does not carry stay.
///
/// An entry that stores none of the tag fields (stored by an earlier version, which removed
/// them, or tagged by its request only) keeps its tags too: which of them its fields gave is
/// not known, and a tag more can only make a purge reach it.
pub(crate) fn refreshed(
    config: &Config,
    from_request: Vec<String>,
    stale: &Entry,
    updated: &HeaderMap,
    created: u64,
) -> Option<Box<Tagged>> {
    let mut tags = from_request;
    let fields_stored = config
        .tag_headers
        .iter()
        .any(|name| stale.headers.contains_key(name));
    if let Some(stored) = stale.tags.as_deref().filter(|_| !fields_stored) {
        tags.extend(stored.tags.iter().cloned());
    }
    collect(config, tags, updated, created)
}

/// Removes the layer's tag header fields from a response before the client (unless kept): the
/// handler's, or a stored response's (stored with them, see [`collect`]).
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
    fn collect_reads_both_separators_and_strip_removes_the_fields(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let config = Config::new(impcache::Cache::new(impcache::MemoryCacheRepository::new()));
        let mut headers = HeaderMap::new();
        headers.insert("surrogate-key", HeaderValue::from_static("a  b"));
        headers.insert("cache-tag", HeaderValue::from_static("b, c"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let tagged = collect(&config, vec!["r".to_owned()], &headers, 7).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["r", "a", "b", "c"]);
        // Read, not removed (they are stored); removed before the client.
        assert_eq!(headers.len(), 3);
        strip(&config, &mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["content-type"]);
        assert!(collect(&config, Vec::new(), &HeaderMap::new(), 7).is_none());
        // UTF-8 tags are read (and stored percent-encoded); a token that is not UTF-8 is left
        // out, and only it: the other tags of its value stay.
        let mut headers = HeaderMap::new();
        let utf8 = HeaderValue::from_bytes("café thé".as_bytes())?;
        headers.insert("surrogate-key", utf8);
        headers.insert(
            "cache-tag",
            HeaderValue::from_bytes(b"ok1,\xff\xfe ok2\xff,ok3")?,
        );
        let tagged = collect(&config, Vec::new(), &headers, 7).ok_or("no tags")?;
        assert_eq!(tagged.tags, ["café", "thé", "ok1", "ok3"]);
        let decoded = Tagged::decode(&tagged.encode()).ok_or("no tags decoded")?;
        assert_eq!(decoded.tags, tagged.tags);
        Ok(())
    }

    /// A stored response with `fields`, tagged `tags`.
    fn stored(fields: &[(&'static str, &'static str)], tags: &[&str]) -> Entry {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"x"),
            stored_at_ms: 1,
            ttl: None,
            origin: None,
            tags: Some(Box::new(Tagged {
                created: 1,
                tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
                soft_since: Some(2),
            })),
        }
    }

    /// The tags of `stale` refreshed by a `304` with `fields`, for a request tagged `r2`.
    fn refreshed_by(stale: &Entry, fields: &[(&'static str, HeaderValue)]) -> Vec<String> {
        let config = Config::new(impcache::Cache::new(impcache::MemoryCacheRepository::new()));
        let mut not_modified = HeaderMap::new();
        for (name, value) in fields {
            not_modified.append(*name, value.clone());
        }
        let updated = crate::revalidate::updated_headers(stale, &not_modified);
        let tagged = refreshed(&config, vec!["r2".to_owned()], stale, &updated, 7);
        if let Some(tagged) = &tagged {
            assert_eq!((tagged.created, tagged.soft_since), (7, None));
        }
        tagged.map(|tagged| tagged.tags).unwrap_or_default()
    }

    #[test]
    fn a_304_replaces_the_tags_of_the_tag_fields_it_carries(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // Stored with both fields (the request that stored it tagged it `r`).
        let stale = stored(
            &[("surrogate-key", "sk"), ("cache-tag", "ct")],
            &["r", "sk", "ct"],
        );
        let sk = |value: &'static str| ("surrogate-key", HeaderValue::from_static(value));
        // The field it carries replaces that field's tags; the other field's stay; the
        // validation request's tags take the place of the stored request's.
        assert_eq!(refreshed_by(&stale, &[sk("new")]), ["r2", "new", "ct"]);
        assert_eq!(
            refreshed_by(
                &stale,
                &[sk("new"), ("cache-tag", HeaderValue::from_static("c2"))]
            ),
            ["r2", "new", "c2"]
        );
        // Carried with nothing valid: the field's tags are gone.
        assert_eq!(refreshed_by(&stale, &[sk("")]), ["r2", "ct"]);
        let invalid = HeaderValue::from_bytes(b"\xff\xfe")?;
        assert_eq!(
            refreshed_by(&stale, &[("surrogate-key", invalid)]),
            ["r2", "ct"]
        );
        // None carried: the stored fields' tags all stay.
        assert_eq!(refreshed_by(&stale, &[]), ["r2", "sk", "ct"]);
        // An entry storing none of its tag fields (an earlier version's) keeps its tags.
        let earlier = stored(&[], &["r", "sk", "ct"]);
        assert_eq!(refreshed_by(&earlier, &[]), ["r2", "r", "sk", "ct"]);
        assert_eq!(
            refreshed_by(&earlier, &[sk("new")]),
            ["r2", "r", "sk", "ct", "new"]
        );
        Ok(())
    }
}
