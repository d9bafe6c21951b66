//! The origin-freshness mode (`CacheLayer::follow_origin(true)`): an RFC 9111 shared cache, on the
//! in-memory repository with `ServiceExt::oneshot`. Staleness comes from the responses' `Age` and
//! `max-age=0` rather than from waiting, so these tests do not sleep (but for the response delay,
//! which is a handler taking its time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use impcache::{BoxFuture, Cache, CacheRepository, Expiry};
use impcache_tower::CacheLayer;
use support::*;
use tokio::sync::{mpsc, oneshot};

fn origin() -> CacheLayer {
    CacheLayer::new(memory_cache()).follow_origin(true)
}

/// A response with `status`, `headers` and body `call {n}`.
fn respond(n: usize, status: u16, headers: &[(&str, &str)]) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(format!("call {n}"))).unwrap()
}

/// A handler answering every call with the same status and headers.
fn fixed(layer: CacheLayer, status: u16, headers: &'static [(&'static str, &'static str)]) -> Svc {
    app(
        layer,
        move |n, _| async move { respond(n, status, headers) },
    )
    .0
}

/// Sends two GETs of `uri` (waiting for the first one's store, if any): the second's outcome.
async fn second_outcome(svc: &Svc, layer: &CacheLayer, uri: &str) -> &'static str {
    let first = send(svc, get(uri)).await;
    if first
        .header("cache-status")
        .is_some_and(|s| s.contains("stored"))
    {
        wait_stored(layer, uri).await;
    }
    send(svc, get(uri)).await.outcome()
}

async fn record(layer: &CacheLayer, uri: &str) -> Option<bytes::Bytes> {
    let key = format!("{}:v", layer.request_key(&get(uri)));
    layer.cache().repository().get(&key).await.unwrap()
}

#[tokio::test]
async fn the_defaults_are_unchanged_without_the_switch() {
    // No freshness information: the defaults store it for `expire`; the origin mode does not.
    let default = CacheLayer::new(memory_cache());
    let svc = fixed(default.clone(), 200, &[]);
    assert_eq!(second_outcome(&svc, &default, "/plain").await, "HIT");
    let layer = origin();
    let svc = fixed(layer.clone(), 200, &[]);
    assert_eq!(second_outcome(&svc, &layer, "/plain").await, "MISS");
    // Only 200 by default, whatever the response says.
    let svc = fixed(default.clone(), 404, &[("cache-control", "max-age=60")]);
    assert_eq!(second_outcome(&svc, &default, "/gone").await, "MISS");
}

#[tokio::test]
async fn freshness_comes_from_s_maxage_max_age_expires_then_heuristics() {
    let now = std::time::SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let later = httpdate::fmt_http_date(now + std::time::Duration::from_secs(100));
    let modified = httpdate::fmt_http_date(now - std::time::Duration::from_secs(10_000));
    let layer = origin();
    let (svc, _) = app(layer.clone(), move |n, req| {
        let (date, later, modified) = (date.clone(), later.clone(), modified.clone());
        async move {
            match req.uri().path() {
                "/s-maxage" => respond(n, 200, &[("cache-control", "max-age=0, s-maxage=60")]),
                "/max-age" => respond(n, 200, &[("cache-control", "max-age=0060")]),
                "/expires" => respond(n, 200, &[("date", &date), ("expires", &later)]),
                "/bad-expires" => respond(n, 200, &[("expires", "0")]),
                "/heuristic" => respond(n, 200, &[("date", &date), ("last-modified", &modified)]),
                "/heuristic-404" => {
                    respond(n, 404, &[("date", &date), ("last-modified", &modified)])
                }
                "/heuristic-500" => {
                    respond(n, 500, &[("date", &date), ("last-modified", &modified)])
                }
                "/explicit-500" => respond(n, 500, &[("cache-control", "max-age=60")]),
                "/explicit-302" => respond(
                    n,
                    302,
                    &[("cache-control", "max-age=60"), ("location", "/x")],
                ),
                "/partial" => respond(n, 206, &[("cache-control", "max-age=60")]),
                _ => respond(n, 200, &[("cache-control", "max-age=0")]),
            }
        }
    });
    for (uri, expected) in [
        ("/s-maxage", "HIT"),
        ("/max-age", "HIT"),
        ("/expires", "HIT"),
        ("/bad-expires", "MISS"),
        ("/heuristic", "HIT"),
        ("/heuristic-404", "HIT"),
        ("/heuristic-500", "MISS"),
        ("/explicit-500", "HIT"),
        ("/explicit-302", "HIT"),
        ("/partial", "MISS"),
        ("/zero", "MISS"),
    ] {
        assert_eq!(second_outcome(&svc, &layer, uri).await, expected, "{uri}");
    }
    let hit = send(&svc, get("/s-maxage")).await;
    assert!(
        hit.header("cache-status").unwrap().contains("ttl=60")
            || hit.header("cache-status").unwrap().contains("ttl=59")
    );
    // The heuristic lifetime: 10 % of 10,000 s.
    let hit = send(&svc, get("/heuristic")).await;
    let status = hit.header("cache-status").unwrap();
    assert!(
        status.contains("ttl=999") || status.contains("ttl=1000"),
        "{status}"
    );
}

#[tokio::test]
async fn the_upstream_age_counts_against_the_lifetime_and_is_added_to_hits() {
    let layer = origin();
    let svc = fixed(
        layer.clone(),
        200,
        &[("cache-control", "max-age=100"), ("age", "30")],
    );
    assert_eq!(second_outcome(&svc, &layer, "/aged").await, "HIT");
    let hit = send(&svc, get("/aged")).await;
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((30..35).contains(&age), "{age}");
    let status = hit.header("cache-status").unwrap();
    assert!(
        status.contains("ttl=70") || status.contains("ttl=69"),
        "the rest of the lifetime: {status}"
    );
    // Older than its lifetime on arrival, without a validator: not stored.
    let svc = fixed(
        layer.clone(),
        200,
        &[("cache-control", "max-age=100"), ("age", "200")],
    );
    assert_eq!(second_outcome(&svc, &layer, "/too-old").await, "MISS");
    assert!(record(&layer, "/too-old").await.is_none());
}

#[tokio::test]
async fn max_age_parsing_is_robust() {
    let layer = origin();
    for (uri, value, expected) in [
        ("/leading-zero", "max-age=003600", "HIT"),
        ("/quoted", "max-age=\"3600\"", "HIT"),
        ("/single-quoted", "max-age='3600'", "MISS"),
        ("/duplicate", "max-age=3600, max-age=0", "MISS"),
        ("/invalid", "max-age=1a", "MISS"),
        ("/negative", "max-age=-1", "MISS"),
        ("/in-a-string", "x=\"max-age=3600\"", "MISS"),
        ("/huge", "max-age=99999999999999999999", "HIT"),
    ] {
        let value: &'static str = value;
        let (svc, _) = app(layer.clone(), move |n, _| async move {
            respond(n, 200, &[("cache-control", value)])
        });
        assert_eq!(second_outcome(&svc, &layer, uri).await, expected, "{value}");
    }
}

/// A `429` is never stored (RFC 6585 §4), not even with an explicit lifetime, nor listed in
/// `statuses`: it was, in the origin mode and when listed, and then served as a hit, and it replaced the stale response a background
/// revalidation answered with it (found by a probe).
#[tokio::test]
async fn a_429_is_never_stored() {
    let layer = origin();
    for (uri, cache_control) in [
        ("/max-age", "max-age=60"),
        ("/public", "public, max-age=60"),
        ("/s-maxage", "s-maxage=60"),
    ] {
        let (svc, _) = app(layer.clone(), move |n, _| async move {
            respond(n, 429, &[("cache-control", cache_control)])
        });
        assert_eq!(second_outcome(&svc, &layer, uri).await, "MISS", "{uri}");
    }
    // Nor in the default mode, even listed among the statuses stored (it was).
    let layer = CacheLayer::new(memory_cache())
        .statuses([StatusCode::OK, StatusCode::TOO_MANY_REQUESTS])
        .expire(60);
    let (svc, _) = app(layer.clone(), |n, _| async move { respond(n, 429, &[]) });
    assert_eq!(second_outcome(&svc, &layer, "/listed").await, "MISS");
}

#[tokio::test]
async fn no_store_private_and_set_cookie_are_not_stored() {
    let layer = origin();
    for (uri, headers) in [
        (
            "/no-store",
            &[("cache-control", "max-age=60, no-store")][..],
        ),
        ("/private", &[("cache-control", "max-age=60, private")]),
        (
            "/cookie",
            &[
                ("cache-control", "max-age=60, public"),
                ("set-cookie", "s=1"),
            ],
        ),
        (
            "/vary-star",
            &[("cache-control", "max-age=60"), ("vary", "*")],
        ),
    ] {
        let (svc, _) = app(layer.clone(), move |n, _| async move {
            respond(n, 200, headers)
        });
        assert_eq!(second_outcome(&svc, &layer, uri).await, "MISS", "{uri}");
    }
}

#[tokio::test]
async fn no_cache_is_stored_with_a_validator_and_revalidated_on_every_use() {
    let layer = origin();
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"a\"")
        {
            return respond(n, 304, &[("etag", "\"a\"")]);
        }
        respond(n, 200, &[("cache-control", "no-cache"), ("etag", "\"a\"")])
    });
    send(&svc, get("/no-cache")).await;
    wait_stored(&layer, "/no-cache").await;
    for _ in 0..2 {
        let seen = send(&svc, get("/no-cache")).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(seen.body, "call 1", "the stored body");
        assert_eq!(
            seen.header("cache-status"),
            Some("impcache; fwd=stale; fwd-status=304; stored")
        );
    }
    assert_eq!(calls.get(), 3, "every use is revalidated");
    // Without a validator, no-cache is not stored.
    let svc = fixed(layer.clone(), 200, &[("cache-control", "no-cache")]);
    assert_eq!(second_outcome(&svc, &layer, "/no-cache-bare").await, "MISS");
}

#[tokio::test]
async fn a_304_refreshes_the_stale_entry_and_the_stored_body_is_served() {
    let layer = origin();
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        let inm = req.headers().get("if-none-match").cloned();
        let ims = req.headers().get("if-modified-since").cloned();
        if n == 1 {
            return respond(
                n,
                200,
                &[
                    ("cache-control", "max-age=0"),
                    ("etag", "\"v1\""),
                    ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
                    ("x-old", "1"),
                    ("content-type", "text/plain"),
                ],
            );
        }
        // The validators of the stored response, not the client's.
        assert_eq!(inm.unwrap(), "\"v1\"");
        assert_eq!(ims.unwrap(), "Wed, 01 Jan 2020 00:00:00 GMT");
        respond(
            n,
            304,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("content-type", "text/html"),
                ("x-new", "2"),
                ("set-cookie", "only=this-client"),
            ],
        )
    });
    send(&svc, get("/page")).await;
    wait_stored(&layer, "/page").await;
    let revalidated = send(
        &svc,
        request("GET", "/page", &[("if-none-match", "\"client\"")]),
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.body, "call 1");
    assert_eq!(revalidated.header("x-old"), Some("1"));
    assert_eq!(revalidated.header("x-new"), Some("2"));
    assert_eq!(revalidated.header("content-type"), Some("text/html"));
    assert_eq!(revalidated.header("set-cookie"), Some("only=this-client"));
    assert_eq!(revalidated.header("content-length"), Some("6"));
    // Fresh again: a hit, without the 304's cookie.
    for _ in 0..100 {
        if record(&layer, "/page")
            .await
            .is_some_and(|r| r.windows(5).any(|w| w == b"x-new"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let hit = send(&svc, get("/page")).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("HIT", &b"call 1"[..]));
    assert_eq!(hit.header("x-new"), Some("2"));
    assert!(hit.header("set-cookie").is_none());
    assert_eq!(calls.get(), 2);
    // The client's own validator is answered from the refreshed entry.
    let not_modified = send(
        &svc,
        request("GET", "/page", &[("if-none-match", "\"v1\"")]),
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_changed_response_replaces_the_stale_entry_and_a_5xx_is_served() {
    let layer = origin();
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        match n {
            1 => respond(
                n,
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
            ),
            // Revalidation fails: served as is (no stale-if-error window), entry kept.
            2 => respond(n, 503, &[]),
            _ => respond(
                n,
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"v3\"")],
            ),
        }
    });
    send(&svc, get("/changing")).await;
    wait_stored(&layer, "/changing").await;
    let failed = send(&svc, get("/changing")).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        record(&layer, "/changing").await.is_some(),
        "the stale entry is kept"
    );
    let replaced = send(&svc, get("/changing")).await;
    assert_eq!(
        (replaced.body.as_ref(), replaced.header("etag")),
        (&b"call 3"[..], Some("\"v3\""))
    );
    wait_stored(&layer, "/changing").await;
    for _ in 0..100 {
        if send(&svc, get("/changing")).await.outcome() == "HIT" {
            break;
        }
    }
    let hit = send(&svc, get("/changing")).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("HIT", &b"call 3"[..]));
    assert_eq!(calls.get(), 3);
}

/// An origin whose representation changed from `"v1"` to `"v2"` but that answers the validation
/// request of the stored `"v1"` with a `304` naming `"v2"`: its first call answers `200 "v1"`
/// (stale on arrival), a call with `If-None-Match: "v1"` that `304`, a call without validators
/// `200 "v2"` (body `call {n}`).
fn changed_behind_a_304(layer: CacheLayer) -> (Svc, Calls) {
    app(layer, |n, req| async move {
        let conditional = req.headers().contains_key("if-none-match");
        let (status, headers): (u16, &[(&str, &str)]) = match (n, conditional) {
            (1, _) => (200, &[("cache-control", "max-age=0"), ("etag", "\"v1\"")]),
            (_, true) => (304, &[("cache-control", "max-age=60"), ("etag", "\"v2\"")]),
            (_, false) => (200, &[("cache-control", "max-age=60"), ("etag", "\"v2\"")]),
        };
        respond(n, status, headers)
    })
}

/// A `304` naming another `ETag` than the stored response's (an origin whose representation
/// changed, yet that says "not modified" to the stored validator) refreshes the stored response,
/// as nginx and Varnish do (CONFORMANCE.md), and concurrent requests share the one call. The
/// strict reading of RFC 9111 §4.3.4 (not updated; removed, and answered `502`), tried on
/// 2026-12-05, made each coalesced request call the origin again and answer `502`.
#[tokio::test]
async fn a_304_with_another_etag_refreshes_the_stored_response_once_for_all() {
    let layer = origin();
    let (svc, calls) = changed_behind_a_304(layer.clone());
    send(&svc, get("/changed")).await;
    wait_stored(&layer, "/changed").await;
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, get("/changed")).await })
        })
        .collect();
    for request in requests {
        let seen = request.await.unwrap();
        assert_eq!(
            (seen.status, seen.body.as_ref()),
            (StatusCode::OK, &b"call 1"[..])
        );
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_newer_no_store_response_removes_the_stored_one() {
    let layer = origin();
    let (svc, _) = app(layer.clone(), |n, _| async move {
        if n == 1 {
            respond(
                n,
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
            )
        } else {
            respond(n, 200, &[("cache-control", "no-store")])
        }
    });
    send(&svc, get("/withdrawn")).await;
    wait_stored(&layer, "/withdrawn").await;
    let seen = send(&svc, get("/withdrawn")).await;
    assert_eq!(seen.body, "call 2");
    assert!(record(&layer, "/withdrawn").await.is_none());
}

/// A request's `max-age=N` (honoured) turns away a stored response older than `N` seconds: here
/// the origin's `Age: 100`.
#[tokio::test]
async fn a_honoured_request_max_age_turns_away_an_older_response() {
    let layer = origin().honor_request_cache_control(true);
    let (svc, _) = app(layer.clone(), |n, _| async move {
        respond(n, 200, &[("cache-control", "max-age=3600"), ("age", "100")])
    });
    send(&svc, get("/aged")).await;
    wait_stored(&layer, "/aged").await;
    let young_enough = send(
        &svc,
        request("GET", "/aged", &[("cache-control", "max-age=500")]),
    )
    .await;
    assert_eq!(young_enough.outcome(), "HIT");
    let too_old = send(
        &svc,
        request("GET", "/aged", &[("cache-control", "max-age=50")]),
    )
    .await;
    assert_eq!(
        (too_old.outcome(), too_old.body.as_ref()),
        ("MISS", &b"call 2"[..])
    );
}

/// A background revalidation (the response's own `stale-while-revalidate`) answered with a
/// `404` without freshness, which is not stored, replaces the stale variant it revalidates all
/// the same (RFC 9111 §4.3.3): the next request for it is a miss that the handler answers, not
/// the stale `200` again. The URL's other variants stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_answer_to_a_background_revalidation_replaces_its_variant() {
    let layer = origin();
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::clone(&gone);
    // Gone in English only: the French variant's revalidations answer as before.
    let (svc, _) = app(layer.clone(), move |n, req: Request<Body>| {
        let gone = answers.load(std::sync::atomic::Ordering::SeqCst)
            && req.headers()["accept-language"] == "en";
        async move {
            if gone {
                return respond(n, 404, &[]);
            }
            let headers = [
                ("cache-control", "max-age=10, stale-while-revalidate=3600"),
                ("age", "20"),
                ("etag", "\"v1\""),
                ("vary", "accept-language"),
            ];
            respond(n, 200, &headers)
        }
    });
    let lang = |lang: &str| request("GET", "/moved", &[("accept-language", lang)]);
    for language in ["en", "fr"] {
        send(&svc, lang(language)).await;
        let mut seen = send(&svc, lang(language)).await;
        for _ in 0..200 {
            if seen.outcome() == "HIT" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            seen = send(&svc, lang(language)).await;
        }
        assert_eq!(seen.outcome(), "HIT", "{language} not stored");
    }
    gone.store(true, std::sync::atomic::Ordering::SeqCst);
    let stale = send(&svc, lang("en")).await;
    assert_eq!((stale.status, stale.outcome()), (StatusCode::OK, "HIT"));
    let mut seen = send(&svc, lang("en")).await;
    for _ in 0..100 {
        if seen.status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        seen = send(&svc, lang("en")).await;
    }
    assert_eq!(
        (seen.status, seen.outcome()),
        (StatusCode::NOT_FOUND, "MISS"),
        "{:?}",
        seen.header("cache-status")
    );
    let again = send(&svc, lang("en")).await;
    assert_eq!(
        (again.status, again.outcome()),
        (StatusCode::NOT_FOUND, "MISS")
    );
    // The other variant is still the stale `200` (revalidated in the background in turn).
    let other = send(&svc, lang("fr")).await;
    assert_eq!((other.status, other.outcome()), (StatusCode::OK, "HIT"));
}

#[tokio::test]
async fn a_no_store_answer_to_a_honoured_client_refresh_removes_the_fresh_entry() {
    let layer = origin().honor_request_cache_control(true);
    let (svc, _) = app(layer.clone(), |n, _| async move {
        if n == 1 {
            respond(n, 200, &[("cache-control", "max-age=600")])
        } else {
            respond(n, 200, &[("cache-control", "no-store")])
        }
    });
    send(&svc, get("/fresh")).await;
    wait_stored(&layer, "/fresh").await;
    let refreshed = send(
        &svc,
        request("GET", "/fresh", &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(refreshed.body, "call 2");
    assert!(record(&layer, "/fresh").await.is_none());
}

#[tokio::test]
async fn cdn_cache_control_and_the_targeted_field_take_precedence() {
    let layer = origin();
    let svc = fixed(
        layer.clone(),
        200,
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
    );
    assert_eq!(second_outcome(&svc, &layer, "/cdn").await, "HIT");
    let svc = fixed(
        layer.clone(),
        200,
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ],
    );
    assert_eq!(second_outcome(&svc, &layer, "/cdn-no-store").await, "MISS");
    let targeted =
        origin().targeted_cache_control(HeaderName::from_static("impcache-cache-control"));
    let svc = fixed(
        targeted.clone(),
        200,
        &[
            ("cdn-cache-control", "no-store"),
            ("impcache-cache-control", "max-age=60"),
        ],
    );
    assert_eq!(second_outcome(&svc, &targeted, "/mine").await, "HIT");
}

#[tokio::test]
async fn unsafe_methods_invalidate_in_the_origin_mode() {
    let layer = origin();
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        if req.method() == http::Method::POST {
            return respond(
                n,
                201,
                &[("location", "/items/2"), ("content-location", "/items/3")],
            );
        }
        respond(n, 200, &[("cache-control", "max-age=60")])
    });
    for uri in ["/items", "/items/2", "/items/3"] {
        send(&svc, get(uri)).await;
        wait_stored(&layer, uri).await;
    }
    let post = Request::post("/items")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    send(&svc, post).await;
    for uri in ["/items", "/items/2", "/items/3"] {
        assert!(record(&layer, uri).await.is_none(), "{uri}");
    }
    assert_eq!(calls.get(), 4);
}

#[tokio::test]
async fn head_and_credentials_keep_their_rules() {
    let layer = origin();
    let svc = fixed(
        layer.clone(),
        200,
        &[("cache-control", "max-age=60, public")],
    );
    let head = send(&svc, request("HEAD", "/safe", &[])).await;
    assert_eq!(head.outcome(), "MISS");
    assert!(
        record(&layer, "/safe").await.is_none(),
        "HEAD is never stored"
    );
    let auth = send(
        &svc,
        request("GET", "/safe", &[("authorization", "Bearer x")]),
    )
    .await;
    assert_eq!(auth.outcome(), "BYPASS");
    assert!(record(&layer, "/safe").await.is_none());
}

// Serving stale in the origin mode (RFC 9111 §4.2.4, RFC 5861): the responses'
// `stale-if-error` / `stale-while-revalidate`, and the layer's `stale_if_error` for an origin that
// cannot be reached; never under `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`.
// The stored responses are stale on arrival (`Age: 20` past `max-age=10`), with an `ETag` so that
// they are stored to be revalidated.

/// What the origin does on its next call (the first one answers 200 with the test's headers).
#[derive(Clone, Copy, Debug)]
enum Next {
    /// Answers with this status (304: not modified); below 500 with `Cache-Control: max-age=60`.
    Status(u16),
    /// Cannot be reached: the service's error.
    Unreachable,
}

/// An origin that can fail: its first call answers `200`, body `call 1`, with `first`; the
/// following ones as [`Next`] says. The `If-None-Match` of each call is recorded.
#[derive(Clone)]
struct Flaky {
    next: std::sync::Arc<std::sync::Mutex<Next>>,
    seen_inm: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

type FlakySvc = tower::util::BoxCloneService<
    Request<Body>,
    Response<impcache_tower::ResponseBody<Body>>,
    std::io::Error,
>;

impl Flaky {
    fn new(layer: CacheLayer, first: &'static [(&'static str, &'static str)]) -> (Self, FlakySvc) {
        let flaky = Flaky {
            next: std::sync::Arc::new(std::sync::Mutex::new(Next::Status(200))),
            seen_inm: std::sync::Arc::default(),
        };
        let origin = flaky.clone();
        let inner = tower::service_fn(move |req: Request<Body>| {
            let mut seen = origin.seen_inm.lock().unwrap();
            seen.push(
                req.headers()
                    .get("if-none-match")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            let n = seen.len();
            let next = *origin.next.lock().unwrap();
            async move {
                match (n, next) {
                    (1, _) => Ok(respond(n, 200, first)),
                    (_, Next::Unreachable) => Err(std::io::Error::other("connection refused")),
                    // An error status says nothing of its freshness (it is not stored).
                    (_, Next::Status(status)) if status >= 500 => Ok(respond(n, status, &[])),
                    (_, Next::Status(status)) => Ok(respond(
                        n,
                        status,
                        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                    )),
                }
            }
        });
        let svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
        (flaky, svc)
    }

    fn set(&self, next: Next) {
        *self.next.lock().unwrap() = next;
    }

    fn calls(&self) -> usize {
        self.seen_inm.lock().unwrap().len()
    }

    fn last_if_none_match(&self) -> Option<String> {
        self.seen_inm.lock().unwrap().last().cloned().flatten()
    }
}

/// Sends a GET of `uri`: the response as the client sees it, or the handler's error.
async fn try_send(svc: &FlakySvc, uri: &str) -> Result<Seen, std::io::Error> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = svc.clone().oneshot(get(uri)).await?;
    let (parts, body) = response.into_parts();
    Ok(Seen {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    })
}

/// Stores the first response of `uri` (stale on arrival).
async fn store_stale(svc: &FlakySvc, layer: &CacheLayer, uri: &str) {
    let first = try_send(svc, uri).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first
            .header("cache-status")
            .is_some_and(|s| s.contains("stored")),
        "{:?}",
        first.header("cache-status")
    );
    wait_stored(layer, uri).await;
}

#[tokio::test]
async fn a_responses_stale_if_error_answers_a_failed_revalidation() {
    const FIRST: &[(&str, &str)] = &[
        ("cache-control", "max-age=10, stale-if-error=60"),
        ("age", "20"),
        ("etag", "\"v1\""),
    ];
    // The layer's own list is empty (the example proxy's setting): the response's directive is
    // the origin's permission, which covers RFC 5861's errors (500, 502, 503, 504).
    let layer = origin().stale_if_error_statuses([]);
    let (origin, svc) = Flaky::new(layer.clone(), FIRST);
    store_stale(&svc, &layer, "/sie").await;
    // A 5xx to the validation request: the stale response answers (10 s past its freshness).
    origin.set(Next::Status(503));
    let stale = try_send(&svc, "/sie").await.unwrap();
    assert_eq!(origin.last_if_none_match().as_deref(), Some("\"v1\""));
    assert_eq!(
        (stale.status, stale.body.as_ref()),
        (StatusCode::OK, &b"call 1"[..])
    );
    assert_eq!(
        stale.header("cache-status"),
        Some("impcache; fwd=stale; fwd-status=503; ttl=-10; detail=handler-status")
    );
    // The origin cannot be reached: the same.
    origin.set(Next::Unreachable);
    let stale = try_send(&svc, "/sie").await.unwrap();
    assert_eq!(stale.body, "call 1");
    assert_eq!(
        stale.header("cache-status"),
        Some("impcache; fwd=stale; ttl=-10; detail=handler-error")
    );
    // The origin is back: its 304 refreshes the entry, which is fresh again.
    origin.set(Next::Status(304));
    let refreshed = try_send(&svc, "/sie").await.unwrap();
    assert_eq!(
        (refreshed.status, refreshed.body.as_ref()),
        (StatusCode::OK, &b"call 1"[..])
    );
    assert_eq!(try_send(&svc, "/sie").await.unwrap().outcome(), "HIT");
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn past_a_responses_stale_if_error_window_the_error_is_served() {
    // 10 s past its freshness, 5 s of stale-if-error.
    const FIRST: &[(&str, &str)] = &[
        ("cache-control", "max-age=10, stale-if-error=5"),
        ("age", "20"),
        ("etag", "\"v1\""),
    ];
    let layer = origin();
    let (origin, svc) = Flaky::new(layer.clone(), FIRST);
    store_stale(&svc, &layer, "/sie-past").await;
    origin.set(Next::Status(503));
    let failed = try_send(&svc, "/sie-past").await.unwrap();
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    origin.set(Next::Unreachable);
    assert!(try_send(&svc, "/sie-past").await.is_err());
}

/// The layer's `stale_if_error` with no statuses (the example proxy's setting): a stale
/// response answers for an origin that cannot be reached, and the origin's own 5xx is passed on.
#[tokio::test]
async fn the_layers_stale_if_error_answers_for_an_unreachable_origin() {
    const FIRST: &[(&str, &str)] = &[
        ("cache-control", "max-age=10"),
        ("age", "20"),
        ("etag", "\"v1\""),
    ];
    let layer = origin()
        .stale_if_error(std::time::Duration::from_secs(60))
        .stale_if_error_statuses([]);
    let (origin, svc) = Flaky::new(layer.clone(), FIRST);
    store_stale(&svc, &layer, "/down").await;
    origin.set(Next::Unreachable);
    let stale = try_send(&svc, "/down").await.unwrap();
    assert_eq!(
        (stale.status, stale.body.as_ref()),
        (StatusCode::OK, &b"call 1"[..])
    );
    assert_eq!(
        stale.header("cache-status"),
        Some("impcache; fwd=stale; ttl=-10; detail=handler-error")
    );
    assert_eq!(stale.header("age"), Some("20"));
    origin.set(Next::Status(502));
    let passed_on = try_send(&svc, "/down").await.unwrap();
    assert_eq!(passed_on.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.calls(), 3);
}

/// `must-revalidate`, `proxy-revalidate`, `no-cache` and (for a shared cache) `s-maxage` forbid
/// serving stale, whatever the layer's window and the response's `stale-if-error` say: the
/// origin's error reaches the client.
#[tokio::test]
async fn nothing_is_served_stale_under_must_revalidate_proxy_revalidate_no_cache_or_s_maxage() {
    let forbidding: [&'static [(&'static str, &'static str)]; 5] = [
        &[
            (
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=60",
            ),
            ("age", "20"),
            ("etag", "\"v1\""),
        ],
        &[
            ("cache-control", "max-age=10, proxy-revalidate"),
            ("age", "20"),
            ("etag", "\"v1\""),
        ],
        &[
            ("cache-control", "max-age=10, no-cache"),
            ("etag", "\"v1\""),
        ],
        &[
            ("cache-control", "s-maxage=10, stale-if-error=60"),
            ("age", "20"),
            ("etag", "\"v1\""),
        ],
        &[
            ("cdn-cache-control", "max-age=10, must-revalidate"),
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"v1\""),
        ],
    ];
    for first in forbidding {
        let layer = origin().stale_if_error(std::time::Duration::from_secs(60));
        let (origin, svc) = Flaky::new(layer.clone(), first);
        store_stale(&svc, &layer, "/strict").await;
        origin.set(Next::Unreachable);
        assert!(try_send(&svc, "/strict").await.is_err(), "{first:?}");
        origin.set(Next::Status(502));
        let failed = try_send(&svc, "/strict").await.unwrap();
        assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{first:?}");
        assert_eq!(origin.last_if_none_match().as_deref(), Some("\"v1\""));
    }
    // The control: the same layer serves the plain `max-age` response stale.
    let layer = origin().stale_if_error(std::time::Duration::from_secs(60));
    let (origin, svc) = Flaky::new(
        layer.clone(),
        &[
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"v1\""),
        ],
    );
    store_stale(&svc, &layer, "/strict").await;
    origin.set(Next::Status(502));
    assert_eq!(try_send(&svc, "/strict").await.unwrap().body, "call 1");
}

#[tokio::test]
async fn past_a_responses_stale_while_revalidate_window_the_origin_answers() {
    // 40 s past its freshness, 30 s of stale-while-revalidate: revalidated before answering.
    const FIRST: &[(&str, &str)] = &[
        ("cache-control", "max-age=10, stale-while-revalidate=30"),
        ("age", "50"),
        ("etag", "\"v1\""),
    ];
    let layer = origin();
    let (origin, svc) = Flaky::new(layer.clone(), FIRST);
    store_stale(&svc, &layer, "/swr-past").await;
    origin.set(Next::Status(200));
    let answered = try_send(&svc, "/swr-past").await.unwrap();
    assert_eq!(answered.body, "call 2");
    assert_eq!(origin.last_if_none_match().as_deref(), Some("\"v1\""));
}

#[tokio::test]
async fn an_error_status_or_another_hosts_location_invalidates_nothing_in_the_origin_mode() {
    let layer = origin();
    let (svc, _) = app(layer.clone(), |n, req| async move {
        match (req.method().as_str(), req.uri().path()) {
            ("POST", "/failing") => respond(n, 500, &[("location", "/kept")]),
            ("POST", _) => respond(n, 201, &[("location", "http://other.example/kept")]),
            _ => respond(n, 200, &[("cache-control", "max-age=60")]),
        }
    });
    for uri in ["/failing", "/kept", "/ok"] {
        send(&svc, get(uri)).await;
        wait_stored(&layer, uri).await;
    }
    send(&svc, request("POST", "/failing", &[])).await;
    assert!(
        record(&layer, "/failing").await.is_some(),
        "an error status"
    );
    assert!(record(&layer, "/kept").await.is_some(), "an error status");
    send(&svc, request("POST", "/ok", &[])).await;
    assert!(record(&layer, "/ok").await.is_none(), "the target URI");
    assert!(
        record(&layer, "/kept").await.is_some(),
        "a Location on another host"
    );
}

/// The rules the origin mode leaves as they are: `Vary`, the client's `Cache-Control` (ignored),
/// a 1xx is never stored, the body limit (a larger body streams through unstored).
#[tokio::test]
async fn vary_client_cache_control_1xx_and_the_body_limit_are_unchanged_in_the_origin_mode() {
    let layer = origin().max_body_size(64);
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        let fresh = ("cache-control", "max-age=60");
        match req.uri().path() {
            "/vary" => {
                let accept = req.headers().get("accept").unwrap().to_str().unwrap();
                let mut response = respond(n, 200, &[fresh, ("vary", "accept")]);
                *response.body_mut() = Body::from(format!("call {n} for {accept}"));
                response
            }
            "/interim" => respond(n, 103, &[fresh, ("link", "</a.css>; rel=preload")]),
            "/large" => {
                let mut response = respond(n, 200, &[fresh]);
                *response.body_mut() = Body::from(vec![b'x'; 1000]);
                response
            }
            _ => respond(n, 200, &[fresh]),
        }
    });
    let accept = |value: &str| request("GET", "/vary", &[("accept", value)]);
    assert_eq!(send(&svc, accept("text/html")).await.outcome(), "MISS");
    wait_stored(&layer, "/vary").await;
    let json = send(&svc, accept("application/json")).await;
    assert_eq!(
        (json.outcome(), json.body.as_ref()),
        ("MISS", &b"call 2 for application/json"[..])
    );
    let html = send(&svc, accept("text/html")).await;
    assert_eq!(
        (html.outcome(), html.body.as_ref()),
        ("HIT", &b"call 1 for text/html"[..])
    );

    send(&svc, get("/plain")).await;
    wait_stored(&layer, "/plain").await;
    let refresh = request(
        "GET",
        "/plain",
        &[("cache-control", "no-cache"), ("pragma", "no-cache")],
    );
    assert_eq!(
        send(&svc, refresh).await.outcome(),
        "HIT",
        "the client's no-cache is ignored"
    );

    assert_eq!(second_outcome(&svc, &layer, "/interim").await, "MISS");
    assert!(
        record(&layer, "/interim").await.is_none(),
        "a 1xx is never stored"
    );

    let large = send(&svc, get("/large")).await;
    assert_eq!(large.body.len(), 1000, "streamed through whole");
    assert_eq!(send(&svc, get("/large")).await.outcome(), "MISS");
    assert!(
        record(&layer, "/large").await.is_none(),
        "over the body limit"
    );
    assert_eq!(calls.get(), 7);
}

/// An `Expires` centuries ahead: fresh for as long as impcache can keep a key (100 years, less
/// the stale windows), not refused by the store.
#[tokio::test]
async fn an_expires_centuries_ahead_is_stored() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    for layer in [
        origin(),
        origin().stale_if_error(std::time::Duration::from_secs(86_400)),
    ] {
        let (svc, _) = app(layer.clone(), {
            let date = date.clone();
            move |n, _| {
                let date = date.clone();
                async move {
                    respond(
                        n,
                        200,
                        &[
                            ("date", &date),
                            ("expires", "Sun, 21 Nov 2286 04:46:39 GMT"),
                        ],
                    )
                }
            }
        });
        assert_eq!(second_outcome(&svc, &layer, "/far").await, "HIT");
    }
}

/// A response body whose chunks the test sends.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

/// Streaming is unchanged: a fresh body still arriving when the handler returns streams to the
/// client and is stored once complete; its hits carry the origin's headers, no computed `ETag`.
#[tokio::test]
async fn a_streamed_body_is_stored_once_complete_in_the_origin_mode() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let layer = origin();
    let (feed, chunks) = tokio::sync::mpsc::channel(4);
    let chunks = std::sync::Arc::new(std::sync::Mutex::new(Some(chunks)));
    let (svc, calls) = app(layer.clone(), move |_, _| {
        let chunks = chunks.lock().unwrap().take().unwrap();
        async move {
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Body::new(ChannelBody(chunks)))
                .unwrap()
        }
    });
    let response = svc.clone().oneshot(get("/stream")).await.unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "impcache; fwd=uri-miss; detail=streamed"
    );
    feed.send(bytes::Bytes::from("one ")).await.unwrap();
    feed.send(bytes::Bytes::from("two")).await.unwrap();
    drop(feed);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "one two");
    wait_stored(&layer, "/stream").await;
    let hit = send(&svc, get("/stream")).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("HIT", &b"one two"[..]));
    assert_eq!(
        hit.header("etag"),
        None,
        "no ETag is computed in the origin mode"
    );
    assert_eq!(calls.get(), 1);
}

/// A memory repository (its clones share it) that, once armed with a key prefix, stops after
/// each write of a key under it (`set`, `set_nx`) until the test has looked: each such key is sent
/// on the armed channel with a sender the write waits for.
#[derive(Debug, Clone, Default)]
struct Pausing {
    inner: impcache::MemoryCacheRepository,
    armed: Arc<Mutex<Option<Armed>>>,
}

type Armed = (String, mpsc::UnboundedSender<(String, oneshot::Sender<()>)>);

impl Pausing {
    async fn after_write(&self, key: &str) {
        let armed = self.armed.lock().unwrap().clone();
        let Some((_, written)) = armed.filter(|(prefix, _)| key.starts_with(prefix)) else {
            return;
        };
        let (go_on, wait) = oneshot::channel();
        if written.send((key.to_owned(), go_on)).is_ok() {
            let _ = wait.await;
        }
    }
}

impl CacheRepository for Pausing {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        Box::pin(async move {
            let set = self.inner.set(key, value, expiry).await;
            self.after_write(key).await;
            set
        })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<bool>> {
        Box::pin(async move {
            let set = self.inner.set_nx(key, value, expiry).await;
            self.after_write(key).await;
            set
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.inner.set_many(entries, expiry)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<Option<Bytes>>> {
        self.inner.get(key)
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, impcache::Result<Vec<Option<Bytes>>>> {
        self.inner.get_many(keys)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete(key)
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_many(keys)
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_pattern(pattern)
    }
}

/// A `304` refreshing a `Vary` variant stores it under the generation of the record it was found
/// through: another process that finds the record finds the refreshed variant, at every step of
/// the store (store.rs: "a reader that finds the record finds the variant"). Process B looks
/// after each write of A's refresh. Before, the refresh wrote the variant under a new
/// generation, tried the record (`SET NX`), read it and wrote the variant again under its
/// generation: B found the record with the other generation's variant in between, a vary-miss
/// (its handler called, its response stored over the refreshed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_finds_a_variant_at_every_step_of_its_304_refresh() {
    let repository = Pausing::default();
    let a = CacheLayer::new(Cache::new(repository.clone())).follow_origin(true);
    let b = CacheLayer::new(Cache::new(repository.inner.clone())).follow_origin(true);
    let handler = |n: usize, req: Request<Body>| async move {
        let lang = req.headers()["accept-language"]
            .to_str()
            .unwrap()
            .to_owned();
        let builder = Response::builder()
            .header("etag", format!("\"{lang}\""))
            .header("vary", "accept-language");
        if req.headers().contains_key("if-none-match") {
            let builder = builder.status(304).header("cache-control", "max-age=600");
            return builder.body(Body::empty()).unwrap();
        }
        let builder = builder.header("cache-control", "max-age=0");
        builder
            .body(Body::from(format!("call {n} {lang}")))
            .unwrap()
    };
    let (svc_a, calls_a) = app(a.clone(), handler);
    let (svc_b, calls_b) = app(b, handler);
    let en = || request("GET", "/v", &[("accept-language", "en")]);
    // Stored by A, stale at once (`max-age=0`, with a validator).
    assert_eq!(send(&svc_a, en()).await.outcome(), "MISS");
    wait_stored(&a, "/v").await;
    let (written, mut writes) = mpsc::unbounded_channel();
    *repository.armed.lock().unwrap() = Some((a.request_key(&get("/v")), written));
    // A revalidates: `304`, the variant stored again in the background.
    let refreshed = send(&svc_a, en()).await;
    let status = refreshed.header("cache-status").unwrap().to_owned();
    assert!(status.contains("fwd-status=304"), "{status}");
    // Each write of the store, until none has come for 300 ms (the first one awaited longer).
    let mut seen_by_b = Vec::new();
    let mut wait = std::time::Duration::from_secs(10);
    while let Ok(Some((key, go_on))) = tokio::time::timeout(wait, writes.recv()).await {
        wait = std::time::Duration::from_millis(300);
        let seen = send(&svc_b, en()).await;
        let status = seen.header("cache-status").unwrap_or_default().to_owned();
        seen_by_b.push((key, status, seen.body));
        go_on.send(()).unwrap();
    }
    assert!(!seen_by_b.is_empty(), "the refresh stored nothing");
    for (key, status, body) in &seen_by_b {
        assert_eq!(
            (status.as_str(), body.as_ref()),
            ("impcache; hit; ttl=600", &b"call 1 en"[..]),
            "after the write of {key}; all: {seen_by_b:?}"
        );
    }
    assert_eq!((calls_a.get(), calls_b.get()), (2, 0));
}

/// A GET of `uri` with `Authorization: Bearer {token}`.
fn authorized(uri: &str, token: &str) -> Request<Body> {
    let mut request = get(uri);
    let value = format!("Bearer {token}").parse().unwrap();
    request.headers_mut().insert("authorization", value);
    request
}

/// RFC 9111 §3.5: with `allow_authenticated`, a response to a request with `Authorization` is
/// stored only when it says a shared cache may (`public`, `s-maxage`, `must-revalidate`). A
/// `max-age` alone was stored and answered that credential for its whole lifetime, a revoked
/// one too (found by a probe, 2026-12-07). The default mode, where the server owns its cache,
/// is unchanged.
#[tokio::test]
async fn an_authorized_response_is_stored_only_when_it_allows_a_shared_cache() {
    let cases: [(&'static str, &'static str); 5] = [
        ("max-age=3600", "MISS"),
        ("public, max-age=3600", "HIT"),
        ("s-maxage=3600", "HIT"),
        ("max-age=3600, must-revalidate", "HIT"),
        ("private, max-age=3600", "MISS"),
    ];
    for (cache_control, second) in cases {
        let layer = origin().allow_authenticated(true);
        let (svc, _) = app(layer.clone(), move |n, _| async move {
            respond(n, 200, &[("cache-control", cache_control)])
        });
        let first = send(&svc, authorized("/me", "a")).await;
        if second == "MISS" {
            let status = first.header("cache-status").unwrap_or_default().to_owned();
            let detail = if cache_control.starts_with("private") {
                "private"
            } else {
                "authorization"
            };
            assert!(
                status.contains(&format!("detail={detail}")),
                "{cache_control}: {status}"
            );
        } else {
            wait_stored(&layer, "/me").await;
        }
        let again = send(&svc, authorized("/me", "a")).await;
        assert_eq!(again.outcome(), second, "{cache_control}");
    }
    // Without `Authorization` (a cookie), and in the default mode, as before.
    let layer = CacheLayer::new(memory_cache()).allow_authenticated(true);
    let svc = fixed(layer.clone(), 200, &[("cache-control", "max-age=3600")]);
    let first = send(&svc, authorized("/mine", "a")).await;
    assert!(first
        .header("cache-status")
        .is_some_and(|s| s.contains("stored")));
}

/// §4.2.3: the response delay counts in the corrected initial age without an `Age` field too
/// (the age value is then 0): a handler slower than its `max-age` answers with a response stale
/// on arrival, which, without a validator, is not stored (it was stored, fresh for its whole
/// `max-age`; found by a probe, 2026-12-07).
#[tokio::test]
async fn the_response_delay_counts_in_the_age_without_an_age_field() {
    let layer = origin();
    let (svc, _) = app(layer.clone(), |n, _| async move {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        respond(n, 200, &[("cache-control", "max-age=1")])
    });
    let first = send(&svc, get("/slow")).await;
    let status = first.header("cache-status").unwrap_or_default().to_owned();
    assert!(status.contains("detail=zero-ttl"), "{status}");
}
