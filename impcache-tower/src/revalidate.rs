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
use crate::policy::{self, EntityTag, NotStored};
use crate::render;
use crate::stale;
use crate::store::Unfinished;

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

/// Whether a `304` with `not_modified` headers, the answer to the validation request of `stale`,
/// selects `stale` for update (RFC 9111 §4.3.4). The `304` names the representation it validates
/// by its `ETag`: a strong one selects only a stored response with the same strong `ETag` (strong
/// comparison, RFC 9110 §8.8.3.2), a weak one a stored response whose `ETag` matches it by weak
/// comparison; an `ETag` that is not an entity-tag, only the same bytes. A `304` without an
/// `ETag` selects `stale`: it answers the validators of `stale` alone (the client's were
/// replaced); its `Last-Modified` is not compared. Otherwise the `304` is of another
/// representation than the stored one: see [`not_selected`].
pub(crate) fn selects(stale: &Entry, not_modified: &HeaderMap) -> bool {
    let Some(new) = not_modified.get(header::ETAG) else {
        return true;
    };
    let Some(stored) = stale.headers.get(header::ETAG) else {
        return false;
    };
    match (
        EntityTag::parse(new.as_bytes()),
        EntityTag::parse(stored.as_bytes()),
    ) {
        (Some(new), Some(stored)) if new.weak => new.weak_eq(&stored),
        (Some(new), Some(stored)) => new.strong_eq(&stored),
        _ => new == stored,
    }
}

/// The stored headers of `stale` updated with those of a `304` that [`selects`] it (§3.2): every
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
    pub(crate) request_ms: u64,
    pub(crate) response_ms: u64,
    /// The validation's handler call, recorded in progress ([`crate::landing`]); `None` when
    /// nothing is stored (the cache failing).
    pub(crate) call: Option<crate::landing::InProgress>,
    pub(crate) guard: Option<FlightGuard>,
}

/// The stored response refreshed by a `304` (RFC 9111 §4.3.4): its headers updated, its lifetime
/// recomputed, stored again with its body (and handed to the waiters), and served. A `304` that
/// makes it unstorable (`no-store`) removes it; its body is served this once. A `304` that does
/// not select it (another `ETag`, see [`selects`]) refreshes nothing: [`not_selected`].
pub(crate) async fn refreshed(config: &Config, refresh: Refresh<'_>) -> Response<Bytes> {
    if !selects(&refresh.stale, refresh.not_modified) {
        return not_selected(config, refresh).await;
    }
    let Refresh {
        keys,
        headers,
        stale,
        not_modified,
        request_ms,
        response_ms,
        call,
        guard,
    } = refresh;
    let may_store = call.is_some();
    let mut updated = updated_headers(&stale, not_modified);
    // For the freshness: without a `Date` of its own, the 304's time stands for it (the stored
    // `Date` would age the refreshed response by its whole stay in the cache).
    let mut current = updated.clone();
    current.remove(header::SET_COOKIE);
    if !not_modified.contains_key(header::DATE) {
        current.remove(header::DATE);
    }
    let verdict = freshness::storable(config, stale.status, &current, request_ms, response_ms);
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
            let unfinished = Unfinished {
                cache: config.cache.clone(),
                keys,
                list_host: config.key_by_host,
                call,
                compute_etag: false,
                status: stale.status,
                headers: policy::stored_headers(&updated, &[X_CACHE]),
                vary,
                variant_key,
                ttl: Some(stale::key_ttl(verdict.ttl, &policy)),
                origin: Some((verdict.freshness, response_ms)),
                stale: policy,
                // A new generation: the variants of its URL stored before are misses again.
                generation: None,
                lock: None,
                // Its tags, as of this validation.
                tags: stale.tags.clone().map(|tags| {
                    Box::new(crate::tags::Tagged {
                        created: request_ms.saturating_mul(1000),
                        soft_since: None,
                        ..*tags
                    })
                }),
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
                remove(config, &variant_key).await;
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
    response
}

/// The answer when the handler's `304` does not select the stale entry ([`selects`]): it names
/// another representation (the origin's current one, say `"v2"` where `"v1"` is stored). RFC 9111
/// §4.3.4: the stored response must not be updated from it, so neither is it refreshed nor served
/// (its body is not the representation the `304` describes). It is removed instead (when the
/// layer may store): outdated, it would only be revalidated with the same validators again; the
/// next request is a plain miss, sent without validators, whose whole response is stored. The
/// waiters call the handler themselves.
///
/// This request: a client whose own `If-None-Match` (else `If-Modified-Since`) matches the `304`
/// gets it (the `304` is then the right answer for the copy it holds); any other gets
/// `502 Bad Gateway`, as for an invalid answer of the origin (it said "not modified" to
/// validators that are not its current representation's; the stored response is stale, and
/// the `304` did not validate it, so serving it is not allowed either). The handler is not
/// called a second time without the validators: the request, body included, went with the
/// first call, and the layer cannot rebuild a request body of any type.
async fn not_selected(config: &Config, refresh: Refresh<'_>) -> Response<Bytes> {
    let Refresh {
        keys,
        headers,
        stale,
        not_modified,
        call,
        guard,
        ..
    } = refresh;
    if call.is_some() {
        let vary = policy::vary_names(&stale.headers).unwrap_or_default();
        let variant_key = key::variant_key(keys.url(), &vary, headers, config.allow_authenticated);
        remove(config, &variant_key).await;
    }
    if let Some(guard) = guard {
        guard.not_shared();
    }
    let url = config.logged(keys.url());
    tracing::warn!(
        target: "impcache_tower",
        url,
        "the handler's 304 names another ETag than the stored response's: not refreshed, removed"
    );
    let mut response = Response::new(Bytes::new());
    if render::matches_validators(headers, stale.status, not_modified) {
        *response.status_mut() = http::StatusCode::NOT_MODIFIED;
        *response.headers_mut() = not_modified.clone();
    } else {
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
    }
    let outcome = render::Outcome::Miss {
        fwd: "stale",
        stored: false,
        detail: Some("validator-mismatch"),
    };
    render::mark(&mut response, config.status_header, outcome);
    response
}

/// Removes the response stored under `variant_key` (a failure is logged, at debug level: the
/// response expires with its key).
pub(crate) async fn remove(config: &Config, variant_key: &str) {
    if let Err(error) = config.cache.delete(variant_key).await {
        let error = config.logged_error(&error);
        tracing::debug!(%error, "impcache-tower: stored response not removed");
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

    /// RFC 9111 §4.3.4: a strong `ETag` selects only the same strong one, a weak one any that
    /// matches it weakly; a `304` without an `ETag` selects the entry it answers.
    #[test]
    fn a_304_selects_the_stored_response_by_its_etag() {
        let not_modified = |etag: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(etag) = etag {
                headers.insert(header::ETAG, HeaderValue::from_static(etag));
            }
            headers
        };
        for (stored, new, selected) in [
            (Some("\"v1\""), Some("\"v1\""), true),
            (Some("\"v1\""), Some(" \"v1\" "), true),
            (Some("\"v1\""), Some("W/\"v1\""), true),
            (Some("W/\"v1\""), Some("W/\"v1\""), true),
            (Some("\"a,b\""), Some("\"a,b\""), true),
            (Some("\"v1\""), None, true),
            (None, None, true),
            (Some("\"v1\""), Some("\"v2\""), false),
            (Some("\"v1\""), Some("W/\"v2\""), false),
            (Some("W/\"v1\""), Some("\"v1\""), false),
            (None, Some("\"v1\""), false),
            // Not entity-tags: the same bytes only.
            (Some("v1"), Some("v1"), true),
            (Some("v1"), Some("v2"), false),
            (Some("\"v1\""), Some("v1"), false),
        ] {
            let stale = match stored {
                Some(etag) => entry(&[("etag", etag)]),
                None => entry(&[]),
            };
            assert_eq!(
                selects(&stale, &not_modified(new)),
                selected,
                "{stored:?} then {new:?}"
            );
        }
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
