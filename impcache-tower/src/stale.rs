//! Serving stale responses (RFC 5861): which stored response may be served past its freshness,
//! and how. The windows are [`impcache::Freshness`] policies, one per stored response: the
//! response's own `stale-while-revalidate` / `stale-if-error` directives, else the layer's
//! [`stale_while_revalidate`](crate::CacheLayer::stale_while_revalidate) and
//! [`stale_if_error`](crate::CacheLayer::stale_if_error); none when the response forbids serving
//! it stale. An entry is stored for its freshness plus the policy's
//! [`stale_window`](impcache::Freshness::stale_window), and judged at each lookup by
//! [`judge`]: the entry itself knows when it was stored and for how long it is fresh, so a hit
//! stays one read.
//!
//! Within the stale-while-revalidate window the service answers with the entry and makes one
//! background handler call per URL (it leads the URL's flight, see [`crate::flight`]); within the
//! stale-if-error window it calls the handler and answers with the entry when the handler fails.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use impcache::Freshness;

use crate::config::{Config, DEFAULT_STALE_IF_ERROR_STATUSES};
use crate::entry::Entry;
use crate::freshness;
use crate::policy::{CacheControl, Limits};

/// Where a stored entry stands at a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Served as it is.
    Fresh,
    /// Served stale (`past` its freshness) while one background call refreshes it.
    WhileRevalidating { past: Duration },
    /// Stale (`past` its freshness): the handler is called, and the entry answers if it fails.
    IfError { past: Duration },
    /// Stale and not to be served: the handler answers (the origin mode revalidates it).
    Expired,
}

/// The stale policy of a response with `headers` under the layer's rules; `None` when it may not
/// be served stale (no window, or a directive forbids it).
pub(crate) fn policy(config: &Config, headers: &HeaderMap) -> Option<Freshness> {
    let cc = directives(config, headers);
    // `s-maxage` implies `proxy-revalidate` for a shared cache (RFC 9111 §5.2.2.10); in the
    // default mode it only shortens the TTL.
    if cc.must_revalidate || cc.no_cache || (config.follow_origin && cc.s_maxage.is_some()) {
        return None;
    }
    let window = |directive: Option<u64>, layer: Duration| {
        Some(directive.map_or(layer, Duration::from_secs)).filter(|window| !window.is_zero())
    };
    let mut policy = Freshness::new();
    if let Some(swr) = window(cc.stale_while_revalidate, config.stale_while_revalidate) {
        policy = policy.stale_while_revalidate(swr);
    }
    if let Some(sie) = window(cc.stale_if_error, config.stale_if_error) {
        policy = policy.stale_if_error(sie);
    }
    (!policy.stale_window().is_zero()).then_some(policy)
}

/// The directives of a response with `headers`: in the origin mode those of its targeted field
/// (RFC 9213) when it has one, else of `Cache-Control`.
fn directives(config: &Config, headers: &HeaderMap) -> CacheControl {
    if config.follow_origin {
        freshness::directives(headers, config.targeted_field.as_ref())
    } else {
        CacheControl::parse(headers)
    }
}

/// Whether a stale response with `headers`, within its stale-if-error window, stands in for a
/// handler that answered with `status`: one of the layer's
/// [`stale_if_error_statuses`](crate::CacheLayer::stale_if_error_statuses), or, when the response
/// itself says `stale-if-error=N` (N > 0), one of the errors of RFC 5861 §4 (500, 502, 503, 504):
/// the origin's permission covers them whatever the layer's list.
pub(crate) fn stands_in_for(config: &Config, headers: &HeaderMap, status: StatusCode) -> bool {
    config.stale_if_error_statuses.contains(&status)
        || (DEFAULT_STALE_IF_ERROR_STATUSES.contains(&status)
            && directives(config, headers)
                .stale_if_error
                .is_some_and(|window| window > 0))
}

/// The TTL stored for an entry fresh (or kept to be revalidated) for `ttl` under the stale
/// `policy`, short enough that with the policy's stale window it stays within impcache's longest
/// expiry ([`impcache::MAX_EXPIRE`], 100 years), which the store would refuse (an `Expires`
/// centuries ahead). The entry's freshness is not changed by it.
///
/// To the millisecond (at least one), as the entry records its TTL: without a stale window the
/// key's expiry is the entry's freshness, so a layer's `expire(Duration::from_millis(300))` lives
/// 300 ms; with one, the key ends that window after the same freshness.
pub(crate) fn key_ttl(ttl: Duration, policy: &Freshness) -> Duration {
    let longest = impcache::MAX_EXPIRE.saturating_sub(policy.stale_window());
    ttl.clamp(
        Duration::from_millis(1),
        longest.max(Duration::from_millis(1)),
    )
}

/// How far past its freshness an entry of the default mode without a stale policy is still
/// served as fresh: its key's TTL is its freshness when the writer had no stale window, so such
/// an entry is about to go (read in the instant before, or stamped by a writer whose clock is up
/// to this much behind the reader's). Past that it has expired: its key lost its TTL (another
/// client's `PERSIST`, a copy that drops TTLs: it was served as a fresh hit for ever, found by a
/// probe, 2026-12-07), or its writer stored it with a stale window (a layer with
/// `stale_while_revalidate` in a rolling deploy, another service on the namespace), which this
/// layer does not have. Not the entry's own TTL: that served a windowed entry as a fresh hit up to
/// twice its freshness (3 of 3, found by a probe, 2026-12-07); a writer whose clock is behind by
/// more makes its entries misses past their freshness by the reader's clock (stored again).
const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// Where `entry` stands at `now_ms`. An entry of the default mode past its TTL without a stale
/// policy is still served, up to [`EXPIRY_GRACE`]: its key's TTL is its freshness, so it is about
/// to go.
#[inline]
pub(crate) fn judge(config: &Config, entry: &Entry, now_ms: u64) -> Judged {
    // Soft-purged by a tag (issue 16): stale since the purge, and never served as fresh.
    let soft_purged = entry.tags.as_ref().and_then(|tags| tags.soft_since);
    let past = match (entry.stale_for(now_ms), soft_purged) {
        (None, None) => return Judged::Fresh,
        (past, since) => {
            let since =
                since.map(|since| Duration::from_millis(now_ms.saturating_sub(since / 1000)));
            past.max(since).unwrap_or_default()
        }
    };
    let Some(policy) = policy(config, &entry.headers) else {
        return if config.follow_origin || soft_purged.is_some() || past > EXPIRY_GRACE {
            Judged::Expired
        } else {
            Judged::Fresh
        };
    };
    if policy.serves_while_revalidating(past) {
        Judged::WhileRevalidating { past }
    } else {
        if_error(&policy, past)
    }
}

/// Where a stored response with the stale `policy`, `past` its freshness, stands when it is not
/// served while revalidating: [`Judged::IfError`] within its stale-if-error window, else
/// [`Judged::Expired`].
fn if_error(policy: &Freshness, past: Duration) -> Judged {
    if policy.serves_if_error(past) {
        Judged::IfError { past }
    } else {
        Judged::Expired
    }
}

/// Where `entry`, `past` its freshness within its stale-while-revalidate window, stands for a
/// request that does not take a stale response from that window (an honoured `max-age` or
/// `min-fresh` without a `max-stale` that covers it, see
/// [`Limits::accept_stale`](crate::policy::Limits::accept_stale)): as past that window. The
/// handler answers, and within the entry's stale-if-error window the entry still answers for a
/// failed handler: stale-if-error is about the origin failing (RFC 5861 §4), and the stale
/// response is then the answer there is, whatever the request asked.
pub(crate) fn not_while_revalidating(config: &Config, entry: &Entry, past: Duration) -> Judged {
    match policy(config, &entry.headers) {
        Some(policy) => if_error(&policy, past),
        None => Judged::Expired,
    }
}

/// Whether a fresh hit of `entry` at `now_ms` also starts an early background refresh
/// (`CacheLayer::early_refresh`: XFetch's coin, thrown by impcache's freshness policy).
pub(crate) fn refreshes_early(config: &Config, entry: &Entry, now_ms: u64) -> bool {
    !config.early_refresh.is_zero()
        && impcache::Freshness::new()
            .early_refresh(config.early_refresh)
            .refresh_early(entry.fresh_left(now_ms))
}

/// How a stored entry stands with a request it is handed to, as it is: see [`handed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// Fresh, and within the request's limits: it answers.
    Answers,
    /// Fresh, but the request's honoured `Cache-Control` refuses it (`fwd=request`).
    Refused,
    /// Not to be served as it is (stale, soft-purged, see [`judge`]).
    Unusable,
}

/// How `entry` stands with a request whose honoured `Cache-Control` sets `limits`: it answers
/// when fresh (see [`judge`]) and within those limits
/// ([`Limits::accept_entry`](crate::policy::Limits::accept_entry): not older than its `max-age`,
/// fresh for its `min-fresh`). The check of every stored response handed to a request other
/// than its lookup's entry (which may also be served stale, see `service.rs`): a flight's
/// published response, a second look, the cross-process lock's read. A response it does not
/// answer with is not served: the request calls the handler itself.
pub(crate) fn handed(config: &Config, entry: &Entry, limits: &Limits) -> Handed {
    let now = crate::entry::now_ms();
    if judge(config, entry, now) != Judged::Fresh {
        Handed::Unusable
    } else if limits.accept_entry(entry, now) {
        Handed::Answers
    } else {
        Handed::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use impcache::{Cache, MemoryCacheRepository};

    fn headers(cache_control: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        h
    }

    #[test]
    fn directives_win_over_the_layer_and_some_forbid() -> Result<(), &'static str> {
        let mut config = Config::new(Cache::new(MemoryCacheRepository::new()));
        assert_eq!(policy(&config, &headers("max-age=10")), None);
        let p = policy(&config, &headers("max-age=10, stale-while-revalidate=30"))
            .ok_or("no policy for stale-while-revalidate")?;
        assert_eq!(
            p.stale_while_revalidate_window(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(p.stale_if_error_window(), None);
        config.stale_while_revalidate = Duration::from_secs(5);
        config.stale_if_error = Duration::from_secs(60);
        let p = policy(&config, &headers("max-age=10, stale-if-error=0"))
            .ok_or("no policy for the layer's windows")?;
        assert_eq!(
            p.stale_while_revalidate_window(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(p.stale_if_error_window(), None);
        assert_eq!(p.stale_window(), Duration::from_secs(5));
        for forbidding in [
            "max-age=10, must-revalidate",
            "proxy-revalidate",
            "no-cache",
        ] {
            assert_eq!(policy(&config, &headers(forbidding)), None, "{forbidding}");
        }
        assert!(policy(&config, &headers("s-maxage=10")).is_some());
        config.follow_origin = true;
        assert_eq!(policy(&config, &headers("s-maxage=10")), None);
        Ok(())
    }

    #[test]
    fn key_ttls_stay_within_the_longest_expiry() {
        let none = Freshness::new();
        let day = Duration::from_secs(86_400);
        let window = Freshness::new().stale_if_error(day);
        assert_eq!(key_ttl(Duration::ZERO, &none), Duration::from_millis(1));
        assert_eq!(
            key_ttl(Duration::from_millis(2500), &none),
            Duration::from_millis(2500)
        );
        // With a stale window too, to the millisecond, as the entry records its freshness.
        assert_eq!(
            key_ttl(Duration::from_millis(300), &window),
            Duration::from_millis(300)
        );
        assert_eq!(
            key_ttl(Duration::from_millis(2500), &window),
            Duration::from_millis(2500)
        );
        assert_eq!(key_ttl(day, &window), day);
        let centuries = Duration::from_secs(260 * 365 * 86_400);
        assert_eq!(key_ttl(centuries, &none), impcache::MAX_EXPIRE);
        assert_eq!(key_ttl(centuries, &window), impcache::MAX_EXPIRE - day);
        assert!(window
            .stored_expiry(
                impcache::Expire::from_duration(key_ttl(centuries, &window)),
                "k"
            )
            .is_ok());
    }

    #[test]
    fn a_responses_stale_if_error_covers_the_rfc_5861_errors_whatever_the_layers_statuses() {
        let mut config = Config::new(Cache::new(MemoryCacheRepository::new()));
        config.stale_if_error_statuses = vec![StatusCode::BAD_GATEWAY];
        let plain = headers("max-age=10");
        let sie = headers("max-age=10, stale-if-error=60");
        let off = headers("max-age=10, stale-if-error=0");
        for follow_origin in [false, true] {
            config.follow_origin = follow_origin;
            assert!(stands_in_for(&config, &plain, StatusCode::BAD_GATEWAY));
            assert!(!stands_in_for(
                &config,
                &plain,
                StatusCode::SERVICE_UNAVAILABLE
            ));
            assert!(stands_in_for(
                &config,
                &sie,
                StatusCode::SERVICE_UNAVAILABLE
            ));
            assert!(!stands_in_for(&config, &sie, StatusCode::NOT_FOUND));
            assert!(!stands_in_for(
                &config,
                &off,
                StatusCode::SERVICE_UNAVAILABLE
            ));
        }
        config.stale_if_error_statuses = Vec::new();
        assert!(!stands_in_for(&config, &plain, StatusCode::BAD_GATEWAY));
        assert!(stands_in_for(
            &config,
            &sie,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
    }
}
