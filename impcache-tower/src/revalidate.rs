//! Revalidation of a stale entry in the origin-freshness mode (RFC 9111 §4.3): the conditional
//! request sent to the handler, and the entry a `304 Not Modified` refreshes (§4.3.4), stored
//! again and served.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::Response;

use crate::config::{Config, X_CACHE};
use crate::entry::Entry;
use crate::flight::FlightGuard;
use crate::freshness;
use crate::key;
use crate::policy::{self, NotStored};
use crate::render;
use crate::stale;
use crate::store::{self, Seen, Unfinished};
use crate::tagging;

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

/// Removes the client's `If-None-Match` and `If-Modified-Since` from a miss that may be stored
/// (nginx and Varnish do the same): the handler's `304` for the client's copy could not be
/// stored, and while clients revalidate the cache would stay empty. The layer answers them
/// from the response once it is stored ([`render::matches_validators`]); a response it does
/// not store goes to the client whole. Returns whether there were any.
pub(crate) fn without_validators(request_headers: &mut HeaderMap) -> bool {
    let some = request_headers.remove(header::IF_NONE_MATCH).is_some();
    request_headers.remove(header::IF_MODIFIED_SINCE).is_some() || some
}

/// Removes the client's preconditions and `Range` from a request the layer sends on its own (a
/// background revalidation): its answer must be the whole response, which can be stored, not a
/// `304` or `206` for the client's copy. The layer answers the client's preconditions itself.
pub(crate) fn unconditional(request_headers: &mut HeaderMap) {
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        request_headers.remove(name);
    }
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

/// The stored headers of `stale` updated with those of a `304` (§3.2): every
/// field the `304` carries replaces the stored one, but those [`kept_from_stored`]. The result
/// still holds the `304`'s `Age` and `Set-Cookie` (for the freshness and for this response); they
/// are dropped when it is stored.
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

/// A stale entry whose validation request the handler answered with a `304`: the input of
/// [`refreshed`].
pub(crate) struct Refresh<'a> {
    pub(crate) keys: key::UrlKeys,
    /// The client's request headers (without the validators this cache added).
    pub(crate) headers: &'a HeaderMap,
    pub(crate) stale: Entry,
    pub(crate) not_modified: &'a HeaderMap,
    /// When the validation request went to the handler, and when its answer came (ms since the
    /// epoch): for the refreshed lifetime and `Age` only, never for its tags.
    pub(crate) request_ms: u64,
    pub(crate) response_ms: u64,
    /// The validation request's tags (`tags_from`, declared prefixes), and when its handler
    /// call started, on impcache's tag clock (µs, later than every invalidation made before it
    /// in this process), as every stored response's: the refreshed entry's tags, with those of
    /// its updated tag fields ([`tagging::refreshed`]).
    pub(crate) request_tags: Vec<String>,
    pub(crate) created: u64,
    /// The record the lookup found `stale` through, when it is a variant: the refreshed variant
    /// is stored under its generation ([`store::generation`]).
    pub(crate) seen: Option<Seen>,
    /// The validation's handler call, recorded in progress ([`crate::landing`]); `None` when
    /// nothing is stored (the cache failing).
    pub(crate) call: Option<crate::landing::InProgress>,
    pub(crate) guard: Option<FlightGuard>,
}

/// The stored response refreshed by a `304` (RFC 9111 §4.3.4): its headers updated (its tag
/// fields too, and its tags collected again from them: [`tagging::refreshed`]), its lifetime
/// recomputed, stored again with its body (and handed to the waiters), and served. A `304` that
/// makes it unstorable (`no-store`) removes it; its body is served this once. A `304` naming
/// another `ETag` than the stored one refreshes it all the same, as nginx and Varnish do
/// (CONFORMANCE.md).
pub(crate) async fn refreshed(config: &Config, refresh: Refresh<'_>) -> Response<Bytes> {
    let Refresh {
        keys,
        headers,
        stale,
        not_modified,
        request_ms,
        response_ms,
        request_tags,
        created,
        seen,
        call,
        guard,
    } = refresh;
    let may_store = call.is_some();
    let mut updated = updated_headers(&stale, not_modified);
    // Without a `Date` of its own, the 304's time stands for it, in the stored headers too: the
    // stored `Date` would age the refreshed response by its whole stay in the cache, and be sent
    // beside `Age: 0` (found by a regression hunt, once a response without a `Date` was given
    // one).
    if !not_modified.contains_key(header::DATE) {
        updated.insert(header::DATE, crate::entry::http_date(response_ms));
    }
    let mut current = updated.clone();
    current.remove(header::SET_COOKIE);
    let authorized = headers.contains_key(header::AUTHORIZATION);
    let verdict = freshness::storable(
        config,
        stale.status,
        &current,
        authorized,
        (request_ms, response_ms),
    );
    let set_cookie: Vec<_> = updated
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    updated.remove(header::SET_COOKIE);
    let vary = policy::vary_names(&updated).unwrap_or_default();
    let variant_key = key::variant_key(keys.url(), &vary, headers, config.allow_authenticated);
    let (entry, stored) = match verdict {
        Ok(verdict) => {
            let policy = stale::policy(config, &updated).unwrap_or_default();
            let tags = tagging::refreshed(config, request_tags, &stale, &updated, created);
            // As a `200` stored: the URL's next hit reads these tags' state with its record.
            if let Some(tags) = &tags {
                config.learned_tags.learn(keys.record(), &tags.tags);
            }
            // Under the generation of the record the stale variant was found through (its Vary
            // names unchanged): the variant alone is rewritten, and a reader that finds the
            // record finds it.
            let generation = store::generation(seen.as_ref(), &vary);
            let unfinished = Unfinished {
                cache: config.cache.clone(),
                keys,
                listed: config.host_listing(),
                call,
                compute_etag: false,
                status: stale.status,
                headers: policy::stored_headers(&updated, &[X_CACHE]),
                vary,
                variant_key,
                ttl: Some(stale::key_ttl(verdict.ttl, &policy)),
                origin: Some((verdict.freshness, response_ms)),
                stale: policy,
                generation,
                lock: None,
                // As of this validation (not soft-purged: `soft_since` is `None`).
                tags,
                guard,
            };
            let (published, _, stored, storing) = unfinished.finish_published(stale.body);
            if let Some(storing) = storing {
                storing.await;
            }
            (published.entry.clone(), stored)
        }
        Err(reason) => {
            if let Some(guard) = guard {
                guard.not_shared();
            }
            if reason == NotStored::NoStore && may_store {
                remove(&config.cache, &variant_key).await;
            }
            let entry = Entry {
                headers: policy::stored_headers(&updated, &[X_CACHE]),
                stored_at_ms: response_ms,
                ..stale
            };
            (entry, false)
        }
    };
    let mut response = render::serve_revalidated(entry, headers, config.status_header, stored);
    for cookie in set_cookie {
        // For this client only: never stored, never handed to the waiters.
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    tagging::strip(config, response.headers_mut());
    response
}

/// Removes the response stored under `variant_key` (a failure is logged: the response expires
/// with its key).
pub(crate) async fn remove(cache: &impcache::Cache, variant_key: &str) {
    if let Err(error) = cache.delete(variant_key).await {
        crate::store::cache_failed(cache, &error, "a stored response is not removed");
    }
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
            tags: None,
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
