//! The origin-freshness mode ([`follow_origin`](crate::CacheLayer::follow_origin)): what an RFC 9111
//! shared cache may store, for how long it is fresh (§4.2.1, §4.2.2), and how old it is (§4.2.3).
//!
//! The directives come from the first targeted field of RFC 9213 present (the configured one,
//! then `CDN-Cache-Control`), else from `Cache-Control`. The freshness lifetime is `s-maxage`,
//! else `max-age`, else `Expires` minus `Date`, else (for the heuristically cacheable statuses, or
//! a `public` response) a tenth of the time since `Last-Modified`. The layer's own rules that are
//! not about freshness (`Set-Cookie`, `Vary: *`, 206, the body size) hold as in the default mode.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

use crate::config::Config;
use crate::entry::Freshness;
use crate::policy::{self, CacheControl, NotStored};

/// `CDN-Cache-Control` (RFC 9213).
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The fraction of the time since `Last-Modified` taken as a heuristic freshness lifetime (the
/// 10 % RFC 9111 §4.2.2 mentions).
const HEURISTIC_DIVISOR: u64 = 10;

/// The statuses RFC 9110 §15.1 defines as heuristically cacheable.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The statuses whose caching this cache understands (RFC 9111 §5.2.2.3 `must-understand`): those
/// RFC 9110 defines.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421..=426 | 428 | 429 | 431 | 451 | 500..=505
    )
}

/// The directives that apply to this cache: the first targeted field present, else
/// `Cache-Control` (RFC 9213 §2.1: a cache that uses a targeted field ignores `Cache-Control`).
pub(crate) fn directives(headers: &HeaderMap, targeted: Option<&HeaderName>) -> CacheControl {
    let cdn_valid = || {
        headers
            .get_all(&CDN_CACHE_CONTROL)
            .iter()
            .all(|v| v.to_str().is_ok_and(valid_cdn_dictionary))
    };
    targeted
        .into_iter()
        .find_map(|name| CacheControl::parse_field(headers, name))
        .or_else(|| CacheControl::parse_field(headers, &CDN_CACHE_CONTROL).filter(|_| cdn_valid()))
        .unwrap_or_else(|| CacheControl::parse(headers))
}

/// The `Age` field (§5.1): the first member of the first field line, when it is a non-negative
/// integer; `None` when absent or invalid (an invalid `Age` is ignored, as §5.1 asks). Values past
/// 2^31 count as 2^31.
fn age_value(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::AGE)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(first.parse::<u64>().map_or(1 << 31, |age| age.min(1 << 31)))
}

/// Whether a `CDN-Cache-Control` field value is a valid Structured Field dictionary (RFC 8941)
/// whose `max-age`/`s-maxage` are integers: RFC 9213 §2.1 asks a cache to ignore the whole field
/// otherwise (and fall back to `Cache-Control`). A light check: keys, the types of bare values,
/// and the integer directives; parameters are not examined.
fn valid_cdn_dictionary(value: &str) -> bool {
    fn key(k: &str) -> bool {
        let mut bytes = k.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
    }
    fn integer(v: &str) -> bool {
        let digits = v.strip_prefix('-').unwrap_or(v);
        !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
    }
    fn bare_item(v: &str) -> bool {
        let number = v.strip_prefix('-').unwrap_or(v);
        if number.starts_with(|c: char| c.is_ascii_digit()) {
            return number.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        }
        (v.len() >= 2 && v.starts_with('"') && v.ends_with('"'))
            || (v.len() >= 2 && v.starts_with(':') && v.ends_with(':'))
            || v == "?0"
            || v == "?1"
            || v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
    }
    policy::split_directives(value).into_iter().all(|member| {
        let item = member.split(';').next().unwrap_or_default();
        match item.split_once('=') {
            None => key(item),
            Some((k, v)) if k == "max-age" || k == "s-maxage" => integer(v),
            Some((k, v)) => key(k) && bare_item(v),
        }
    })
}

/// A response judged storable in the origin mode: its freshness, and the TTL of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) freshness: Freshness,
    /// How long the key lives: the rest of the lifetime, plus
    /// [`keep_stale_for`](crate::CacheLayer::keep_stale_for) when the response has a validator
    /// (so that it can be revalidated once stale).
    pub(crate) ttl: Duration,
}

/// The response-side rules of the origin mode: `Ok` when the response may be stored, the reason
/// otherwise. `authorized`: the request carried `Authorization` (with
/// [`allow_authenticated`](crate::CacheLayer::allow_authenticated)). `request_ms` is when the
/// request went to the origin, `response_ms` when its response arrived (milliseconds since the
/// Unix epoch). The body size is checked separately.
pub(crate) fn storable(
    config: &Config,
    status: StatusCode,
    headers: &HeaderMap,
    authorized: bool,
    (request_ms, response_ms): (u64, u64),
) -> Result<Verdict, NotStored> {
    // A `429` "MUST NOT be stored by a cache" (RFC 6585 §4), whatever its freshness says: stored
    // in the origin mode with a `max-age`, it replaced a stale response it should leave in place.
    if status.is_informational()
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Err(NotStored::Status);
    }
    if headers.contains_key(header::CONTENT_RANGE) {
        return Err(NotStored::PartialContent);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    // As in the default mode (`policy::storable`), whatever its freshness: an endless stream.
    if policy::is_event_stream(headers) {
        return Err(NotStored::EventStream);
    }
    let cc = directives(headers, config.targeted_field.as_ref());
    if cc.must_understand && !understood(status) {
        return Err(NotStored::Status);
    }
    // `must-understand` overrides `no-store` for a status the cache understands (§5.2.2.3).
    if cc.no_store && !cc.must_understand {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    // §3.5: a response to a request with `Authorization` is for a shared cache only when it says
    // so (`public`, `s-maxage`, `must-revalidate`). Keyed by the credential here, it would still
    // answer a revoked one for its whole `max-age` (found by a probe, 2026-12-07).
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if policy::vary_names(headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    let response_secs = response_ms / 1000;
    let date = policy::date_secs(headers, &header::DATE);
    let explicit = cc
        .s_maxage
        .or(cc.max_age)
        .or_else(|| policy::expires_lifetime(headers, response_secs));
    let heuristic_allowed = cc.public || heuristically_cacheable(status);
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        None if !heuristic_allowed => return Err(NotStored::Status),
        None => policy::date_secs(headers, &header::LAST_MODIFIED).map_or(0, |modified| {
            date.unwrap_or(response_secs).saturating_sub(modified) / HEURISTIC_DIVISOR
        }),
    };
    let lifetime = if cc.no_cache { 0 } else { lifetime };
    let lifetime = match config.ttls().1 {
        Some(cap) => lifetime.min(cap.as_secs()),
        None => lifetime,
    };
    // §4.2.3: the corrected initial age.
    let apparent_age = date.map_or(0, |date| response_secs.saturating_sub(date));
    let response_delay = response_ms.saturating_sub(request_ms) / 1000;
    // Without `Age`, the age value is 0 and the response delay still counts (a handler slower
    // than its `max-age` answers with a response already stale; found by a probe, 2026-12-07).
    let corrected_age = age_value(headers)
        .unwrap_or(0)
        .saturating_add(response_delay);
    let initial_age = apparent_age.max(corrected_age);
    let fresh_for = lifetime.saturating_sub(initial_age);
    let validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let ttl = match (fresh_for, validator) {
        (0, false) if cc.no_cache => return Err(NotStored::NoCache),
        (0, false) => return Err(NotStored::ZeroTtl),
        (fresh, false) => Duration::from_secs(fresh),
        (fresh, true) => Duration::from_secs(fresh).saturating_add(config.keep_stale),
    };
    Ok(Verdict {
        freshness: Freshness {
            lifetime,
            initial_age,
            must_revalidate: cc.must_revalidate || cc.s_maxage.is_some(),
        },
        ttl: ttl.max(Duration::from_secs(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use impcache::{Cache, MemoryCacheRepository};

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            let value = HeaderValue::from_str(v);
            assert!(value.is_ok(), "not a header value: {v:?}");
            if let Ok(value) = value {
                h.append(*n, value);
            }
        }
        h
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    }

    const NOW: u64 = 1_700_000_000;

    fn verdict(status: u16, pairs: &[(&'static str, String)]) -> Result<Verdict, NotStored> {
        let config = Config::new(Cache::new(MemoryCacheRepository::new()));
        // Outside 100–999 no status exists, so none is stored.
        let status = StatusCode::from_u16(status).map_err(|_| NotStored::Status)?;
        storable(
            &config,
            status,
            &headers(pairs),
            false,
            (NOW * 1000, NOW * 1000),
        )
    }

    fn lifetime(status: u16, pairs: &[(&'static str, String)]) -> Option<u64> {
        verdict(status, pairs).ok().map(|v| v.freshness.lifetime)
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires_then_heuristics() {
        let cc = |v: &str| ("cache-control", v.to_owned());
        assert_eq!(lifetime(200, &[cc("max-age=10, s-maxage=20")]), Some(20));
        assert_eq!(lifetime(200, &[cc("max-age=010")]), Some(10));
        assert_eq!(
            lifetime(
                200,
                &[
                    cc("max-age=30"),
                    ("expires", date(NOW + 100)),
                    ("date", date(NOW))
                ]
            ),
            Some(30)
        );
        assert_eq!(
            lifetime(200, &[("expires", date(NOW + 100)), ("date", date(NOW))]),
            Some(100)
        );
        // Invalid Expires: already expired; without a validator, not stored.
        assert_eq!(lifetime(200, &[("expires", "0".to_owned())]), None);
        // 10 % of the time since Last-Modified, for heuristically cacheable statuses only.
        let modified = [("date", date(NOW)), ("last-modified", date(NOW - 1000))];
        assert_eq!(lifetime(200, &modified), Some(100));
        assert_eq!(lifetime(404, &modified), Some(100));
        assert_eq!(verdict(500, &modified), Err(NotStored::Status));
        // Explicit freshness makes any status but 206/304 storable.
        assert_eq!(lifetime(500, &[cc("max-age=5")]), Some(5));
        assert_eq!(lifetime(302, &[cc("max-age=5")]), Some(5));
        assert_eq!(verdict(206, &[cc("max-age=5")]), Err(NotStored::Status));
        assert_eq!(verdict(304, &[cc("max-age=5")]), Err(NotStored::Status));
        assert_eq!(verdict(100, &[cc("max-age=5")]), Err(NotStored::Status));
        // No freshness and no validator: nothing to store.
        assert_eq!(verdict(200, &[]), Err(NotStored::ZeroTtl));
        // Server-sent events, whatever their freshness.
        let events = [
            cc("max-age=60"),
            ("content-type", "text/event-stream".to_owned()),
        ];
        assert_eq!(verdict(200, &events), Err(NotStored::EventStream));
    }

    #[test]
    fn targeted_fields_take_precedence() -> Result<(), NotStored> {
        let h = [
            ("cache-control", "no-store".to_owned()),
            ("cdn-cache-control", "max-age=50".to_owned()),
        ];
        assert_eq!(lifetime(200, &h), Some(50));
        let h = [
            ("cache-control", "max-age=50".to_owned()),
            ("cdn-cache-control", "no-store".to_owned()),
        ];
        assert_eq!(verdict(200, &h), Err(NotStored::NoStore));
        let mut config = Config::new(Cache::new(MemoryCacheRepository::new()));
        config.targeted_field = Some(HeaderName::from_static("impcache-cache-control"));
        let h = headers(&[
            ("cdn-cache-control", "max-age=50".to_owned()),
            ("impcache-cache-control", "max-age=7".to_owned()),
        ]);
        let v = storable(&config, StatusCode::OK, &h, false, (0, 0))?;
        assert_eq!(v.freshness.lifetime, 7);
        Ok(())
    }

    #[test]
    fn age_and_date_make_the_initial_age() -> Result<(), NotStored> {
        let v = verdict(
            200,
            &[
                ("cache-control", "max-age=100".to_owned()),
                ("age", "30".to_owned()),
            ],
        )?;
        assert_eq!((v.freshness.initial_age, v.ttl.as_secs()), (30, 70));
        let v = verdict(
            200,
            &[
                ("cache-control", "max-age=100".to_owned()),
                ("date", date(NOW - 40)),
                ("age", "30".to_owned()),
            ],
        )?;
        assert_eq!(v.freshness.initial_age, 40);
        assert_eq!(
            verdict(
                200,
                &[
                    ("cache-control", "max-age=100".to_owned()),
                    ("age", "200".to_owned())
                ]
            ),
            Err(NotStored::ZeroTtl)
        );
        // Stale on arrival but with a validator: kept to be revalidated.
        let v = verdict(
            200,
            &[
                ("cache-control", "max-age=100".to_owned()),
                ("age", "200".to_owned()),
                ("etag", "\"a\"".to_owned()),
            ],
        )?;
        assert_eq!(v.ttl, crate::config::DEFAULT_KEEP_STALE);
        Ok(())
    }

    #[test]
    fn age_is_the_first_member_and_ignored_when_invalid() {
        let age = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::AGE, HeaderValue::from_static(v));
            }
            age_value(&h)
        };
        assert_eq!(age(&[]), None);
        assert_eq!(age(&["7"]), Some(7));
        assert_eq!(age(&["0, 7200"]), Some(0));
        assert_eq!(age(&["0", "7200"]), Some(0));
        assert_eq!(age(&["99999999999999999999"]), Some(1 << 31));
        for invalid in ["abc", "-1", "1.5", "7200;foo=bar", ""] {
            assert_eq!(age(&[invalid]), None, "{invalid}");
        }
    }

    #[test]
    fn an_invalid_cdn_cache_control_is_ignored() {
        for (value, valid) in [
            ("max-age=60", true),
            ("max-age=60, no-store", true),
            ("max-age=60;foo=1, stale-if-error=30", true),
            ("max-age=\"60\"", false),
            ("max-age=60, &&&&&", false),
            ("Max-Age=60", false),
        ] {
            assert_eq!(valid_cdn_dictionary(value), valid, "{value}");
        }
        let h = [
            ("cdn-cache-control", "max-age=\"50\"".to_owned()),
            ("cache-control", "max-age=7".to_owned()),
        ];
        assert_eq!(lifetime(200, &h), Some(7));
    }

    #[test]
    fn no_cache_needs_a_validator_and_private_is_refused() -> Result<(), NotStored> {
        let cc = |v: &str| ("cache-control", v.to_owned());
        assert_eq!(
            verdict(200, &[cc("no-cache, max-age=100")]),
            Err(NotStored::NoCache)
        );
        let v = verdict(200, &[cc("no-cache"), ("etag", "\"x\"".to_owned())])?;
        assert_eq!(v.freshness.lifetime, 0);
        assert_eq!(
            verdict(200, &[cc("private, max-age=100")]),
            Err(NotStored::Private)
        );
        assert!(
            verdict(200, &[cc("max-age=100, must-revalidate")])?
                .freshness
                .must_revalidate
        );
        assert!(
            verdict(200, &[cc("s-maxage=100")])?
                .freshness
                .must_revalidate
        );
        Ok(())
    }
}
