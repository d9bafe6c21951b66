//! Revalidation of a stale entry in the origin-freshness mode (RFC 9111 §4.3): the conditional
//! request sent to the handler, and the entry a `304 Not Modified` refreshes (§4.3.4).

use http::header::{self, HeaderMap, HeaderName};

use crate::entry::Entry;

/// Makes `request_headers` a validation request for `stale`: its `ETag` as `If-None-Match`, its
/// `Last-Modified` as `If-Modified-Since`, in place of the client's own (whose answer would not
/// be this cache's to refresh from). Returns `false` (and leaves the headers alone) when the entry
/// has no validator.
pub(crate) fn make_conditional(stale: &Entry, request_headers: &mut HeaderMap) -> bool {
    let etag = stale.headers.get(header::ETAG).cloned();
    let modified = stale.headers.get(header::LAST_MODIFIED).cloned();
    if etag.is_none() && modified.is_none() {
        return false;
    }
    request_headers.remove(header::IF_NONE_MATCH);
    request_headers.remove(header::IF_MODIFIED_SINCE);
    if let Some(etag) = etag {
        request_headers.insert(header::IF_NONE_MATCH, etag);
    }
    if let Some(modified) = modified {
        request_headers.insert(header::IF_MODIFIED_SINCE, modified);
    }
    true
}

/// Fields a `304` does not update: they describe the stored body (its length, encoding,
/// digest, range) or the validator it was selected by.
fn kept_from_stored(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::CONTENT_ENCODING
        || name == header::CONTENT_RANGE
        || name == header::ETAG
        || name.as_str() == "content-md5"
}

/// The stored headers of `stale` updated with those of a `304` (§3.2): every field the `304`
/// carries replaces the stored one, but those [`kept_from_stored`]. The `304` answers the
/// validators of `stale` alone (the client's were replaced), so it always selects `stale`, even
/// when it names another `ETag` (§4.3.4 would then update nothing: the stored one is kept). The result still holds the
/// `304`'s `Age` and `Set-Cookie` (for the freshness and for this response); they are dropped
/// when it is stored.
pub(crate) fn updated_headers(stale: &Entry, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stale.headers.clone();
    for name in not_modified.keys() {
        if kept_from_stored(name) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn entry(pairs: &[(&'static str, &'static str)]) -> Entry {
        let mut headers = HeaderMap::new();
        for (n, v) in pairs {
            headers.append(*n, HeaderValue::from_static(v));
        }
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"body"),
            stored_at_ms: 0,
            ttl: None,
            origin: None,
        }
    }

    #[test]
    fn conditional_requests_carry_the_stored_validators() {
        let stale = entry(&[
            ("etag", "\"a\""),
            ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
        ]);
        let mut request = HeaderMap::new();
        request.insert("if-none-match", HeaderValue::from_static("\"client\""));
        assert!(make_conditional(&stale, &mut request));
        assert_eq!(request["if-none-match"], "\"a\"");
        assert_eq!(
            request["if-modified-since"],
            "Wed, 01 Jan 2020 00:00:00 GMT"
        );
        let mut request = HeaderMap::new();
        assert!(!make_conditional(&entry(&[]), &mut request));
        assert!(request.is_empty());
    }

    #[test]
    fn a_304_updates_all_but_the_body_fields() {
        let stale = entry(&[
            ("etag", "\"a\""),
            ("content-length", "4"),
            ("content-type", "text/plain"),
            ("x-kept", "1"),
        ]);
        let mut not_modified = HeaderMap::new();
        for (n, v) in [
            ("etag", "W/\"a\""),
            ("content-length", "0"),
            ("content-type", "text/html"),
            ("cache-control", "max-age=60"),
        ] {
            not_modified.append(n, HeaderValue::from_static(v));
        }
        let headers = updated_headers(&stale, &not_modified);
        assert_eq!(headers["etag"], "\"a\"");
        assert_eq!(headers["content-length"], "4");
        assert_eq!(headers["content-type"], "text/html");
        assert_eq!(headers["cache-control"], "max-age=60");
        assert_eq!(headers["x-kept"], "1");
    }
}
