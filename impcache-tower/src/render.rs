//! What the layer adds to responses: the cache status headers (`Cache-Status`, `x-cache`), and
//! a stored response as served (`Age`, `Content-Length`, a 304 for a matching `If-None-Match`,
//! the strong `ETag` computed for a stored body).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::{StatusHeader, CACHE_STATUS, X_CACHE};
use crate::entry::{now_ms, Entry};
use crate::key;
use crate::policy;
use crate::policy::Why;

/// How a response was obtained, for the status headers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// Served from the cache; `ttl_left` in seconds (`None`: no expiry).
    Hit { ttl_left: Option<u64> },
    /// Served from the cache after the handler answered its validation request with a `304`
    /// (origin-freshness mode); `stored`: the refreshed entry is being stored.
    Revalidated { stored: bool },
    /// Served from the cache `past` seconds (rounded up) after its freshness, for the reason
    /// `why`.
    Stale { past: u64, why: Why },
    /// Answered by the handler after a lookup (or instead of one).
    Miss {
        fwd: &'static str,
        stored: bool,
        detail: Option<&'static str>,
    },
    /// Answered by the handler; the cache was not consulted.
    Bypass {
        fwd: &'static str,
        detail: &'static str,
    },
}

/// Adds the status headers `status_header` asks for.
pub(crate) fn mark<B>(response: &mut Response<B>, status_header: StatusHeader, outcome: Outcome) {
    let x_cache = match outcome {
        Outcome::Hit { .. } => "HIT",
        Outcome::Revalidated { .. } => "REVALIDATED",
        Outcome::Stale { .. } => "STALE",
        Outcome::Miss { .. } => "MISS",
        Outcome::Bypass { .. } => "BYPASS",
    };
    let headers = response.headers_mut();
    if matches!(status_header, StatusHeader::XCache | StatusHeader::Both) {
        headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    }
    if matches!(
        status_header,
        StatusHeader::CacheStatus | StatusHeader::Both
    ) {
        if let Some(value) = cache_status(outcome) {
            // RFC 9211: each cache adds its member; the one nearest the origin comes first.
            headers.append(CACHE_STATUS, value);
        }
    }
}

/// The `Cache-Status` member of this cache (RFC 9211): `impcache; hit; ttl=42`,
/// `impcache; fwd=uri-miss; stored`, `impcache; fwd=bypass; detail=credentials`, …
fn cache_status(outcome: Outcome) -> Option<HeaderValue> {
    let value = match outcome {
        Outcome::Hit { ttl_left } => return Some(hit_status(ttl_left)),
        Outcome::Revalidated { stored: true } => {
            return Some(HeaderValue::from_static(
                "impcache; fwd=stale; fwd-status=304; stored",
            ))
        }
        Outcome::Revalidated { stored: false } => {
            return Some(HeaderValue::from_static(
                "impcache; fwd=stale; fwd-status=304",
            ))
        }
        // RFC 9211: `hit` only for a request that was not forwarded (a background refresh, a
        // throttled handler); one whose handler call failed or was slow is `fwd=stale`, with the
        // status the handler answered (`fwd-status`) when it did.
        Outcome::Stale { past, why } => {
            let hit = if why.forwarded() { "" } else { "; hit" };
            let fwd_status = match why {
                Why::HandlerStatus(status) => format!("; fwd-status={}", status.as_u16()),
                _ => String::new(),
            };
            format!(
                "impcache{hit}; fwd=stale{fwd_status}; ttl=-{past}; detail={}",
                why.detail()
            )
        }
        Outcome::Miss {
            fwd,
            stored,
            detail,
        } => {
            let mut value = format!("impcache; fwd={fwd}");
            if stored {
                value.push_str("; stored");
            }
            if let Some(detail) = detail {
                value.push_str("; detail=");
                value.push_str(detail);
            }
            value
        }
        Outcome::Bypass { fwd, detail } => format!("impcache; fwd={fwd}; detail={detail}"),
    };
    HeaderValue::from_str(&value).ok()
}

/// The `Cache-Status` of a hit: `impcache; hit; ttl={ttl_left}`, or `impcache; hit` for an entry
/// without expiry.
fn hit_status(ttl_left: Option<u64>) -> HeaderValue {
    match ttl_left {
        Some(ttl) => with_number("impcache; hit; ttl=", ttl),
        None => HeaderValue::from_static("impcache; hit"),
    }
}

/// `prefix` followed by `n` in decimal, as a header value: one allocation, of its exact size
/// (`HeaderValue::from(n)` makes two: a buffer of 20 bytes, and a handle to share it).
fn with_number(prefix: &'static str, n: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    let mut value = Vec::with_capacity(prefix.len() + digits.len());
    value.extend_from_slice(prefix.as_bytes());
    value.extend_from_slice(digits.as_bytes());
    // Visible ASCII only: always valid, taken as is (`Bytes` keeps a full vector without a copy).
    HeaderValue::from_maybe_shared(Bytes::from(value)).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Whether a response of `status` carries a `Content-Length`: not a 1xx, 204 or 304, which have
/// no content (RFC 9110 §8.6: a 204 has none; a 304's would be the 200's, which the layer does
/// not know).
pub(crate) fn has_content_length(status: http::StatusCode) -> bool {
    !matches!(status.as_u16(), 100..=199 | 204 | 304)
}

/// A stored response, as sent at `now_ms` (the time it was judged fresh at): `Age`, the status
/// headers, and a 304 when `If-None-Match` matches its `ETag`; an empty body for HEAD (and the
/// 304).
pub(crate) fn serve(
    entry: Entry,
    request_headers: &HeaderMap,
    head: bool,
    status_header: StatusHeader,
    now_ms: u64,
) -> Response<Bytes> {
    serve_as(entry, request_headers, head, status_header, None, now_ms)
}

/// [`serve`] for a stored response just revalidated: marked [`Outcome::Revalidated`].
pub(crate) fn serve_revalidated(
    entry: Entry,
    request_headers: &HeaderMap,
    status_header: StatusHeader,
    stored: bool,
) -> Response<Bytes> {
    let outcome = Outcome::Revalidated { stored };
    serve_as(
        entry,
        request_headers,
        false,
        status_header,
        Some(outcome),
        now_ms(),
    )
}

/// [`serve`] for a stored response served `past` its freshness (see [`crate::stale`]).
pub(crate) fn serve_stale(
    entry: Entry,
    request_headers: &HeaderMap,
    head: bool,
    status_header: StatusHeader,
    past: Duration,
    why: Why,
) -> Response<Bytes> {
    let outcome = Outcome::Stale {
        past: whole_seconds_past(past),
        why,
    };
    serve_as(
        entry,
        request_headers,
        head,
        status_header,
        Some(outcome),
        now_ms(),
    )
}

/// The seconds a response is `past` its freshness, rounded up, and at least one: one stale by
/// 0.4 s shows `ttl=-1`, and so does one stale by nothing yet (soft-purged, or judged at the very
/// millisecond its freshness ended), never `ttl=-0` (which reads as fresh).
fn whole_seconds_past(past: Duration) -> u64 {
    (past.as_secs() + u64::from(past.subsec_nanos() > 0)).max(1)
}

/// [`serve`], marked `outcome` (default: a hit).
#[inline]
fn serve_as(
    entry: Entry,
    request_headers: &HeaderMap,
    head: bool,
    status_header: StatusHeader,
    outcome: Option<Outcome>,
    now_ms: u64,
) -> Response<Bytes> {
    let age = entry.age_secs(now_ms);
    let ttl_left = entry.ttl_left(age);
    let mut response = if matches_validators(request_headers, entry.status, &entry.headers) {
        not_modified(&entry.headers)
    } else {
        let body_len = entry.body.len();
        let body = if head { Bytes::new() } else { entry.body };
        let mut response = Response::new(body);
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers;
        // Stored with the entry (see `Unfinished::finish`); entries stored by earlier versions
        // lack it.
        if !response.headers().contains_key(header::CONTENT_LENGTH)
            && has_content_length(response.status())
        {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        }
        response
    };
    response
        .headers_mut()
        .insert(header::AGE, with_number("", age));
    let outcome = outcome.unwrap_or(Outcome::Hit { ttl_left });
    mark(&mut response, status_header, outcome);
    response
}

/// Whether a request's `If-None-Match` (else its `If-Modified-Since`) matches a response with
/// `status` and `headers`, which is then answered with a 304. The validators are read only for a
/// conditional request (most requests are not), and only for a 2xx: a server ignores
/// preconditions when its answer would be another status (RFC 9110 §13.2.1), so a 404 or a
/// redirect is sent as it is, never as a 304. `If-None-Match` takes precedence: when present,
/// `If-Modified-Since` is ignored (§13.2.2). `If-None-Match: *` matches a stored 2xx whether or
/// not it has an `ETag` (a current representation exists, §13.1.2).
pub(crate) fn matches_validators(
    request_headers: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
) -> bool {
    status.is_success()
        && if request_headers.contains_key(header::IF_NONE_MATCH) {
            policy::if_none_match(request_headers, headers.get(header::ETAG))
        } else {
            policy::not_modified_since(request_headers, headers)
        }
}

/// The 304 of a response with `headers`: RFC 9110 §15.4.5, the fields a 200 would have carried
/// that describe the representation.
pub(crate) fn not_modified(headers: &HeaderMap) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::LAST_MODIFIED,
        header::VARY,
    ] {
        for value in headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// A strong ETag for a body: the first 128 bits of its SHA-256.
pub(crate) fn strong_etag(body: &[u8]) -> HeaderValue {
    let mut etag = String::with_capacity(34);
    etag.push('"');
    key::push_hex128(&mut etag, &Sha256::digest(body));
    etag.push('"');
    // Only hex digits and quotes: always a valid header value.
    HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_statuses_match_their_formatted_form() {
        for n in [0u64, 7, 10, 60, 300, 999, 1000, 86_400] {
            assert_eq!(
                hit_status(Some(n)),
                format!("impcache; hit; ttl={n}").as_str(),
                "{n}"
            );
        }
        assert_eq!(hit_status(None), "impcache; hit");
        for n in [0u64, 9, 10, 999, 1000, 12_345, u64::MAX] {
            assert_eq!(with_number("", n), n.to_string().as_str(), "{n}");
        }
    }

    /// RFC 9211: `hit` only when the request was not forwarded; the handler's status as
    /// `fwd-status`; the seconds past freshness rounded up.
    #[test]
    fn stale_statuses_say_whether_the_request_was_forwarded() {
        let status = |past: Duration, why: Why| {
            let past = whole_seconds_past(past);
            cache_status(Outcome::Stale { past, why })
                .and_then(|value| value.to_str().map(str::to_owned).ok())
                .unwrap_or_default()
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            status(second * 3, Why::Revalidating),
            "impcache; hit; fwd=stale; ttl=-3; detail=revalidating"
        );
        assert_eq!(
            status(second, Why::Throttled),
            "impcache; hit; fwd=stale; ttl=-1; detail=fail-safe-throttle"
        );
        assert_eq!(
            status(second * 2, Why::HandlerStatus(StatusCode::BAD_GATEWAY)),
            "impcache; fwd=stale; fwd-status=502; ttl=-2; detail=handler-status"
        );
        for (why, detail) in [
            (Why::HandlerError, "handler-error"),
            (Why::HandlerTimeout, "handler-timeout"),
            (Why::SoftTimeout, "soft-timeout"),
        ] {
            assert_eq!(
                status(Duration::from_millis(400), why),
                format!("impcache; fwd=stale; ttl=-1; detail={detail}")
            );
        }
    }

    /// A response stale by nothing yet (served the millisecond it was soft-purged, or its
    /// freshness ended) is still stale: `ttl=-1`, never `ttl=-0`, whatever the reason.
    #[test]
    fn a_response_stale_by_nothing_yet_shows_ttl_minus_one() {
        for why in [
            Why::Revalidating,
            Why::Throttled,
            Why::HandlerError,
            Why::HandlerStatus(StatusCode::BAD_GATEWAY),
            Why::HandlerTimeout,
            Why::SoftTimeout,
        ] {
            let response = serve_stale(
                Entry {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: Bytes::from_static(b"body"),
                    stored_at_ms: now_ms(),
                    ttl: None,
                    origin: None,
                    tags: None,
                },
                &HeaderMap::new(),
                false,
                StatusHeader::CacheStatus,
                Duration::ZERO,
                why,
            );
            let status = response
                .headers()
                .get(CACHE_STATUS)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            assert!(status.contains("; ttl=-1; "), "{status}");
        }
    }
}
