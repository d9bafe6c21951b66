//! Every storage rule of the layer, on the in-memory repository, with `ServiceExt::oneshot`.
//! Each peer-crate defect from the field notes has a test named after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use impcache::{Cache, CacheRepository};
use impcache_tower::{CacheLayer, StatusHeader};
use support::*;

fn layer() -> CacheLayer {
    CacheLayer::new(memory_cache()).expire(60)
}

#[tokio::test]
async fn get_is_stored_then_served_with_age_status_and_original_headers() {
    let (svc, calls) = app(layer(), |n, _| async move {
        Response::builder()
            .header("content-type", "text/plain")
            .header("link", "<a>")
            .header("link", "<b>")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let first = send(&svc, get("/users/1")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "call 1");
    assert_eq!(first.outcome(), "MISS");
    assert_eq!(
        first.header("cache-status"),
        Some("impcache; fwd=uri-miss; stored")
    );
    let etag = first.header("etag").expect("a computed ETag").to_owned();

    let second = send(&svc, get("/users/1")).await;
    assert_eq!(calls.get(), 1);
    assert_eq!(second.body, "call 1");
    assert_eq!(second.outcome(), "HIT");
    assert!(second
        .header("cache-status")
        .unwrap()
        .starts_with("impcache; hit; ttl="));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.header("content-type"), Some("text/plain"));
    assert_eq!(second.header("etag"), Some(etag.as_str()));
    let links: Vec<_> = second.headers.get_all("link").iter().collect();
    assert_eq!(links, ["<a>", "<b>"], "multi-valued headers are kept");
    assert!(second.headers.get("x-hop").is_none() && second.headers.get("connection").is_none());
}

/// RFC 9211 §2: a cache adding its `Cache-Status` member keeps the members of the caches
/// before it, on hits too (a stored response keeps the header as the origin side sent it), so a
/// chain of caches can be debugged. Our own member is never stored: a hit shows one of ours.
#[tokio::test]
async fn upstream_cache_status_members_are_kept_on_hits() {
    let (svc, calls) = app(layer(), |_, _| async move {
        Response::builder()
            .header("cache-status", "upstream; fwd=uri-miss; stored")
            .body(Body::from("shared"))
            .unwrap()
    });
    let members = |seen: &Seen| -> Vec<String> {
        seen.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let first = send(&svc, get("/chained")).await;
    assert_eq!(
        members(&first),
        [
            "upstream; fwd=uri-miss; stored",
            "impcache; fwd=uri-miss; stored"
        ]
    );
    let hit = send(&svc, get("/chained")).await;
    assert_eq!(calls.get(), 1);
    let hit_members = members(&hit);
    assert_eq!(hit_members.len(), 2, "{hit_members:?}");
    assert_eq!(hit_members[0], "upstream; fwd=uri-miss; stored");
    assert!(
        hit_members[1].starts_with("impcache; hit; ttl="),
        "{hit_members:?}"
    );
}

#[tokio::test]
async fn stored_entries_outlive_the_process_local_state() {
    // A second layer over the same cache (another process, say) reads what the first stored.
    let cache = memory_cache();
    let first = CacheLayer::new(cache.clone());
    let (svc, _) = counting(first.clone());
    send(&svc, get("/p?b=2&a=1")).await;
    wait_stored(&first, "/p?a=1&b=2").await;
    let (other, calls) = counting(CacheLayer::new(cache));
    let seen = send(&other, get("/p?a=1&b=2")).await;
    assert_eq!(
        (seen.outcome(), seen.body.as_ref(), calls.get()),
        ("HIT", &b"call 1"[..], 0)
    );
}

#[tokio::test]
async fn age_grows_with_time() {
    let cache = memory_cache();
    let layer = CacheLayer::new(cache.clone());
    let (svc, _) = counting(layer.clone());
    send(&svc, get("/aged")).await;
    wait_stored(&layer, "/aged").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (fresh, _) = counting(CacheLayer::new(cache));
    let seen = send(&fresh, get("/aged")).await;
    assert_eq!(seen.outcome(), "HIT");
    assert!(seen.header("age").unwrap().parse::<u64>().unwrap() >= 1);
}

/// tower-http-cache 0.6.1: the key left out the method, so a HEAD stored an empty body under the
/// GET key.
#[tokio::test]
async fn defect_head_request_poisons_the_get_entry() {
    let layer = layer();
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        // Like hyper/axum: a HEAD response has no body.
        let body = if req.method() == http::Method::HEAD {
            Body::empty()
        } else {
            Body::from(format!("page {n}"))
        };
        Response::new(body)
    });
    let head = send(&svc, request("HEAD", "/page", &[])).await;
    assert_eq!((head.outcome(), head.body.len()), ("MISS", 0));
    let get1 = send(&svc, get("/page")).await;
    assert_eq!(get1.outcome(), "MISS", "the HEAD response was not stored");
    assert_eq!(get1.body, "page 2");
    let get2 = send(&svc, get("/page")).await;
    assert_eq!(
        (get2.outcome(), get2.body.as_ref()),
        ("HIT", &b"page 2"[..])
    );
    wait_stored(&layer, "/page").await;
    // HEAD is now answered from the GET entry, without a body but with its length.
    let head2 = send(&svc, request("HEAD", "/page", &[])).await;
    assert_eq!(head2.outcome(), "HIT");
    assert!(head2.body.is_empty());
    assert_eq!(head2.header("content-length"), Some("6"));
    assert_eq!(calls.get(), 2);
}

/// A HEAD that misses is answered without a body, as one that hits: a handler answering it as a
/// GET (a plain service, not axum's router) has its body dropped by the layer, not only by a
/// server (found by a probe through `oneshot`); its `Content-Length` stays the GET's.
#[tokio::test]
async fn a_head_miss_is_answered_without_the_handlers_body() {
    let (svc, calls) = app(layer(), |n, _| async move {
        Response::builder()
            .header("content-length", "6")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    for _ in 0..2 {
        let head = send(&svc, request("HEAD", "/page", &[])).await;
        assert_eq!(head.outcome(), "MISS");
        assert!(head.body.is_empty(), "{:?}", head.body);
        assert_eq!(head.header("content-length"), Some("6"));
    }
    assert_eq!(calls.get(), 2);
}

/// A HEAD that misses on a `204` or a `304` gets no `Content-Length` of the layer's making (RFC
/// 9110 §8.6: a 204 has none, a 304's would be the 200's); a `200` whose handler gave none gets
/// its body's length, as a server would write it for the GET (a regression probe found
/// `content-length: 0` written on the 204 and 304).
#[tokio::test]
async fn a_head_miss_gets_a_content_length_only_where_its_status_has_content() {
    let (svc, _) = app(layer(), |_, req| async move {
        let status = match req.uri().path() {
            "/none" => StatusCode::NO_CONTENT,
            "/same" => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        };
        Response::builder()
            .status(status)
            .body(if status == StatusCode::OK {
                Body::from("twelve bytes")
            } else {
                Body::empty()
            })
            .unwrap()
    });
    for (path, length) in [("/none", None), ("/same", None), ("/page", Some("12"))] {
        let head = send(&svc, request("HEAD", path, &[])).await;
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(head.header("content-length"), length, "{path}");
    }
}

/// http-cache-tower-server, axum-response-cache, rustango #1251: `Set-Cookie` stored and replayed.
#[tokio::test]
async fn defect_set_cookie_replayed_to_other_users() {
    let (svc, calls) = app(layer(), |n, _| async move {
        Response::builder()
            .header("set-cookie", format!("session=user{n}"))
            .body(Body::from("hello"))
            .unwrap()
    });
    let a = send(&svc, get("/login")).await;
    let b = send(&svc, get("/login")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(a.header("set-cookie"), Some("session=user1"));
    assert_eq!(b.header("set-cookie"), Some("session=user2"));
    assert_eq!(
        b.header("cache-status"),
        Some("impcache; fwd=uri-miss; detail=set-cookie")
    );
}

/// tower-http-cache, axum-response-cache: `Authorization` ignored, so a user's page was served
/// to anonymous visitors.
#[tokio::test]
async fn defect_authenticated_response_served_to_anonymous_users() {
    let (svc, calls) = app(layer(), |_, req| async move {
        let who = req
            .headers()
            .get("authorization")
            .map_or("anonymous".to_owned(), |v| {
                format!("secret of {}", v.to_str().unwrap())
            });
        Response::new(Body::from(who))
    });
    let alice = send(
        &svc,
        request("GET", "/me", &[("authorization", "Bearer alice")]),
    )
    .await;
    assert_eq!(alice.body, "secret of Bearer alice");
    assert_eq!(alice.outcome(), "BYPASS");
    let anon = send(&svc, get("/me")).await;
    assert_eq!(anon.body, "anonymous");
    assert_eq!(anon.outcome(), "MISS");
    // The anonymous entry is not served to a cookie-carrying user either.
    let bob = send(&svc, request("GET", "/me", &[("cookie", "sid=bob")])).await;
    assert_eq!(bob.outcome(), "BYPASS");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn opting_in_keys_authenticated_requests_by_their_credentials() {
    let (svc, calls) = app(layer().allow_authenticated(true), |_, req| async move {
        let who = req
            .headers()
            .get("authorization")
            .map_or("anonymous", |v| v.to_str().unwrap())
            .to_owned();
        Response::new(Body::from(who))
    });
    let alice = || request("GET", "/me", &[("authorization", "alice")]);
    let bob = || request("GET", "/me", &[("authorization", "bob")]);
    assert_eq!(send(&svc, alice()).await.outcome(), "MISS");
    let again = send(&svc, alice()).await;
    assert_eq!(
        (again.outcome(), again.body.as_ref()),
        ("HIT", &b"alice"[..])
    );
    let b = send(&svc, bob()).await;
    assert_eq!(b.body, "bob", "never another credential's entry");
    let anon = send(&svc, get("/me")).await;
    assert_eq!(anon.body, "anonymous");
    assert_eq!(calls.get(), 3);
}

/// tower-http-cache: every 4xx cached for 5 s, 401 included.
#[tokio::test]
async fn defect_401_cached() {
    let (svc, calls) = app(layer(), |_, _| async {
        Response::builder()
            .status(401)
            .body(Body::from("log in"))
            .unwrap()
    });
    send(&svc, get("/private")).await;
    let second = send(&svc, get("/private")).await;
    assert_eq!((second.status, calls.get()), (StatusCode::UNAUTHORIZED, 2));
    assert_eq!(
        second.header("cache-status"),
        Some("impcache; fwd=uri-miss; detail=status")
    );
}

#[tokio::test]
async fn statuses_are_configurable() {
    let (svc, calls) = app(
        layer().statuses([StatusCode::OK, StatusCode::NOT_FOUND]),
        |_, _| async {
            Response::builder()
                .status(404)
                .body(Body::from("none"))
                .unwrap()
        },
    );
    send(&svc, get("/missing")).await;
    let second = send(&svc, get("/missing")).await;
    assert_eq!(
        (second.status, second.outcome(), calls.get()),
        (StatusCode::NOT_FOUND, "HIT", 1)
    );
}

/// axum-response-cache, http-cache-tower-server: POST responses cached.
#[tokio::test]
async fn defect_post_cached() {
    let (svc, calls) = counting(layer());
    let a = send(&svc, request("POST", "/orders", &[])).await;
    let b = send(&svc, request("POST", "/orders", &[])).await;
    assert_eq!(
        (a.body.as_ref(), b.body.as_ref(), calls.get()),
        (&b"call 1"[..], &b"call 2"[..], 2)
    );
    assert_eq!(
        b.header("cache-status"),
        Some("impcache; fwd=method; detail=method")
    );
    // And a POST does not read the GET entry either.
    send(&svc, get("/orders")).await;
    assert_eq!(
        send(&svc, request("POST", "/orders", &[])).await.body,
        "call 4"
    );
}

#[tokio::test]
async fn methods_are_configurable() {
    let (svc, calls) = counting(layer().methods([
        http::Method::GET,
        http::Method::from_bytes(b"QUERY").unwrap(),
    ]));
    send(&svc, request("QUERY", "/search", &[])).await;
    assert_eq!(
        send(&svc, request("QUERY", "/search", &[])).await.outcome(),
        "HIT"
    );
    assert_eq!(
        send(&svc, get("/search")).await.outcome(),
        "MISS",
        "methods are keyed apart"
    );
    assert_eq!(calls.get(), 2);
}

/// A stored method whose request carries content (`QUERY`, `POST`) is neither answered from the
/// cache nor stored: the key cannot hold the content, so one client's results must never answer
/// another's query (found by a probe: `bob` got `alice`'s). Its requests without content are
/// cached as before, and one with content leaves their entry alone (a read: nothing invalidated).
#[tokio::test]
async fn a_stored_method_with_request_content_goes_to_the_handler() {
    for method in ["QUERY", "POST"] {
        let stored = http::Method::from_bytes(method.as_bytes()).unwrap();
        let (svc, calls) = app(
            layer().methods([http::Method::GET, stored]),
            |_, req| async move {
                let content = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let content = String::from_utf8_lossy(&content).into_owned();
                Response::new(Body::from(format!("results for {content:?}")))
            },
        );
        let with_content = |content: &'static str| {
            Request::builder()
                .method(method)
                .uri("/search")
                .header("host", "example.com")
                // As a client over HTTP/1 sends it: the layer reads the fields, not the body.
                .header("content-length", content.len())
                .body(Body::from(content))
                .unwrap()
        };
        send(&svc, request(method, "/search", &[])).await;
        for content in ["alice", "bob"] {
            let seen = send(&svc, with_content(content)).await;
            assert_eq!(seen.body, format!("results for {content:?}"), "{method}");
            assert_eq!(
                seen.header("cache-status"),
                Some("impcache; fwd=bypass; detail=request-content"),
                "{method}"
            );
        }
        let plain = send(&svc, request(method, "/search", &[])).await;
        assert_eq!(
            (plain.outcome(), plain.body.as_ref()),
            ("HIT", &b"results for \"\""[..]),
            "{method}"
        );
        assert_eq!(calls.get(), 3, "{method}");
    }
}

/// Requests whose own `Cache-Control` refuses the stored response call the handler at once with
/// the cross-process lock as without it, rather than wait for the lock's holder one after another
/// (found by a probe: 6 `min-fresh=100` requests on a 60 s entry made 6 calls one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refusing_the_stored_response_do_not_line_up_on_the_lock() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let layer = layer()
        .honor_request_cache_control(true)
        .lock(impcache::Lock::default());
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (svc, calls) = {
        let (running, most) = (Arc::clone(&running), Arc::clone(&most));
        app(layer, move |n, _| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Response::new(Body::from(format!("call {n}")))
            }
        })
    };
    send(&svc, get("/r")).await;
    let answers: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(send(
                &svc,
                request("GET", "/r", &[("cache-control", "min-fresh=100")]),
            ))
        })
        .collect();
    for answer in answers {
        let seen = answer.await.unwrap();
        assert_eq!(
            seen.header("cache-status")
                .map(|s| s.contains("fwd=request")),
            Some(true)
        );
    }
    assert_eq!(calls.get(), 7);
    assert!(
        most.load(Ordering::SeqCst) >= 2,
        "the refused requests called the handler one at a time"
    );
}

/// http-cache-tower-server, tower-http-cache: a client's `Cache-Control: no-cache` (a browser
/// hard refresh) forced origin calls.
#[tokio::test]
async fn defect_client_no_cache_forces_origin_calls() {
    let (svc, calls) = counting(layer());
    send(&svc, get("/home")).await;
    for header in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
        ("cache-control", "no-store"),
    ] {
        let seen = send(&svc, request("GET", "/home", &[header])).await;
        assert_eq!(seen.outcome(), "HIT", "{header:?}");
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn honouring_client_cache_control_is_opt_in() {
    let layer = layer().honor_request_cache_control(true);
    let (svc, _) = counting(layer.clone());
    send(&svc, get("/home")).await;
    wait_stored(&layer, "/home").await;
    let refreshed = send(
        &svc,
        request("GET", "/home", &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(
        (refreshed.body.as_ref(), refreshed.outcome()),
        (&b"call 2"[..], "MISS")
    );
    assert_eq!(
        refreshed.header("cache-status"),
        Some("impcache; fwd=request; stored")
    );
    let bypassed = send(
        &svc,
        request("GET", "/home", &[("cache-control", "no-store")]),
    )
    .await;
    assert_eq!(bypassed.outcome(), "BYPASS");
    // The refresh stored its response (in the background: wait for it).
    for _ in 0..400 {
        let later = send(&svc, get("/home")).await;
        assert_eq!(later.outcome(), "HIT");
        if later.body == "call 2" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the refreshed response was never stored");
}

/// RFC 9111 §5.2.1 with request directives honoured: `min-fresh=N` turns away a response that
/// is fresh for less than `N` more seconds, `max-age=N` one older than `N` seconds, and
/// `only-if-cached` answers `504` instead of calling the handler; each only when opted in.
#[tokio::test]
async fn honoured_request_directives_limit_what_a_stored_response_answers() {
    let layer = layer().honor_request_cache_control(true);
    let (svc, calls) = counting(layer.clone());
    send(&svc, get("/doc")).await;
    wait_stored(&layer, "/doc").await;
    let with = |directives: &'static str| request("GET", "/doc", &[("cache-control", directives)]);
    // Fresh for about 60 s more, 0 s old.
    let hit = send(&svc, with("min-fresh=30, max-age=10")).await;
    assert_eq!((hit.outcome(), calls.get()), ("HIT", 1));
    let turned_away = send(&svc, with("min-fresh=120")).await;
    assert_eq!(
        (
            turned_away.outcome(),
            turned_away.body.as_ref(),
            calls.get()
        ),
        ("MISS", &b"call 2"[..], 2)
    );
    assert_eq!(
        turned_away.header("cache-status"),
        Some("impcache; fwd=request; stored")
    );
    // only-if-cached: the stored response, or a 504 without a handler call.
    let cached = send(&svc, with("only-if-cached")).await;
    assert_eq!((cached.status, cached.outcome()), (StatusCode::OK, "HIT"));
    let absent = send(
        &svc,
        request("GET", "/absent", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(absent.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        absent.header("cache-status"),
        Some("impcache; fwd=uri-miss; detail=only-if-cached")
    );
    assert_eq!(calls.get(), 2);
    // Not honoured (the default): the directives change nothing.
    let (svc, calls) = counting(CacheLayer::new(memory_cache()).expire(60));
    let absent = send(
        &svc,
        request("GET", "/absent", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!((absent.status, calls.get()), (StatusCode::OK, 1));
}

/// `only-if-cached` on a request the layer bypasses (credentials, `Range`, `no-store`, a method
/// it does not store): no stored response answers it, so a `504` without a handler call, as on a
/// miss (RFC 9111 §5.2.1.7), marked as bypassed; only when request directives are honoured.
#[tokio::test]
async fn only_if_cached_answers_504_for_a_bypassed_request() {
    let honouring = layer()
        .honor_request_cache_control(true)
        .status_header(StatusHeader::Both);
    let (svc, calls) = counting(honouring);
    let only_if_cached = ("cache-control", "only-if-cached");
    for (method, headers, fwd) in [
        (
            "GET",
            [("authorization", "Bearer x"), only_if_cached],
            "bypass",
        ),
        ("GET", [("cookie", "s=1"), only_if_cached], "bypass"),
        ("GET", [("range", "bytes=0-1"), only_if_cached], "bypass"),
        (
            "GET",
            [
                ("x-any", "1"),
                ("cache-control", "no-store, only-if-cached"),
            ],
            "bypass",
        ),
        ("POST", [("x-any", "1"), only_if_cached], "method"),
    ] {
        let seen = send(&svc, request(method, "/b", &headers)).await;
        let status = format!("impcache; fwd={fwd}; detail=only-if-cached");
        assert_eq!(
            (
                seen.status,
                seen.header("cache-status"),
                seen.header("x-cache")
            ),
            (
                StatusCode::GATEWAY_TIMEOUT,
                Some(status.as_str()),
                Some("BYPASS")
            ),
            "{method} {headers:?}"
        );
    }
    assert_eq!(calls.get(), 0);
    // Not honoured (the default): the handler answers.
    let (svc, calls) = counting(layer());
    let headers = [("authorization", "Bearer x"), only_if_cached];
    let seen = send(&svc, request("GET", "/b", &headers)).await;
    assert_eq!(
        (seen.status, seen.outcome(), calls.get()),
        (StatusCode::OK, "BYPASS", 1)
    );
}

/// The request's limits bind every stored response handed to it, not only its lookup's: the
/// response a flight publishes (its store lands while the next request looks up), the second
/// look of a new leader, and what the cross-process lock's read finds. Back-to-back
/// `min-fresh=100` requests on a 60 s entry each go to the handler (`fwd=request`), as a lookup
/// hit would (they were `hit; ttl=60`); a GET without the directive is then a hit.
#[tokio::test]
async fn request_limits_bind_a_response_handed_over_by_a_flight_or_the_lock() {
    let lock = impcache::Lock::new().wait(Duration::from_secs(5));
    for (name, layer) in [
        ("flight", layer()),
        ("lock", layer().lock(lock)),
        ("uncoalesced", layer().coalesce(false).lock(lock)),
    ] {
        let layer = layer
            .honor_request_cache_control(true)
            .status_header(StatusHeader::Both);
        let (svc, calls) = counting(layer.clone());
        let min_fresh = || request("GET", "/mf", &[("cache-control", "min-fresh=100")]);
        for n in 1..=5 {
            let seen = send(&svc, min_fresh()).await;
            let status = seen.header("cache-status").unwrap_or_default().to_owned();
            assert_eq!(seen.outcome(), "MISS", "{name} #{n}: {status}");
            assert_eq!(seen.body, format!("call {n}"), "{name} #{n}: {status}");
            if n > 1 {
                assert!(status.contains("fwd=request"), "{name} #{n}: {status}");
            }
        }
        assert_eq!(calls.get(), 5, "{name}");
        wait_stored(&layer, "/mf").await;
        let plain = send(&svc, get("/mf")).await;
        assert_eq!((plain.outcome(), calls.get()), ("HIT", 5), "{name}");
    }
}

/// The same honoured request directives bound what answers a HEAD request as a GET's: a stored
/// response older than `max-age=N`, or fresh for less than `min-fresh=N` more seconds, is
/// turned away (the handler answers the HEAD), and `only-if-cached` answers `504` without
/// calling the handler. In the origin mode, so that the response's `Age` makes it old at once.
#[tokio::test]
async fn a_head_request_honours_max_age_min_fresh_and_only_if_cached() {
    let layer = layer()
        .follow_origin(true)
        .honor_request_cache_control(true);
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        Response::builder()
            .header("cache-control", "max-age=600")
            .header("age", "100")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let head = |directives: &'static str| request("HEAD", "/doc", &[("cache-control", directives)]);
    let absent = send(&svc, head("only-if-cached")).await;
    assert_eq!(
        (absent.status, absent.header("cache-status"), calls.get()),
        (
            StatusCode::GATEWAY_TIMEOUT,
            Some("impcache; fwd=uri-miss; detail=only-if-cached"),
            0
        )
    );
    send(&svc, get("/doc")).await;
    wait_stored(&layer, "/doc").await;
    // About 100 s old, fresh for about 500 s more.
    let hit = send(&svc, head("max-age=200, min-fresh=400, only-if-cached")).await;
    assert_eq!(
        (hit.status, hit.outcome(), calls.get()),
        (StatusCode::OK, "HIT", 1)
    );
    for directives in ["max-age=10", "min-fresh=550"] {
        let turned_away = send(&svc, head(directives)).await;
        assert_eq!(
            turned_away.header("cache-status"),
            Some("impcache; fwd=request; detail=head"),
            "{directives}"
        );
    }
    assert_eq!(calls.get(), 3);
}

/// axum-response-cache: a body over the limit became `500 File too big`.
#[tokio::test]
async fn defect_oversized_body_turns_into_a_500() {
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = pulled.clone();
    let (svc, calls) = app(layer().max_body_size(1000), move |_, _| {
        let counter = counter.clone();
        async move {
            // 100 chunks of 100 bytes, no Content-Length: only the stream tells the size.
            Response::new(Body::new(Chunks {
                left: 100,
                index: 0,
                size: 100,
                pulled: counter,
            }))
        }
    });
    let response = tower::ServiceExt::oneshot(svc.clone(), get("/big"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("cache-status").unwrap(),
        "impcache; fwd=uri-miss; detail=too-large"
    );
    // Not buffered past the limit: 11 chunks (1100 bytes) were read before the response left.
    assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 11);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 10_000);
    assert!(
        body.iter().enumerate().all(|(i, b)| *b == (i / 100) as u8),
        "chunks in order"
    );
    send(&svc, get("/big")).await;
    assert_eq!(calls.get(), 2, "not stored");
}

/// A body of `count` chunks of `size` bytes (chunk `i` filled with byte `i`), counting the chunks
/// pulled from it; no size hint, like a stream.
struct Chunks {
    left: usize,
    index: usize,
    size: usize,
    pulled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        self.pulled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let chunk = Bytes::from(vec![self.index as u8; self.size]);
        self.index += 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

#[tokio::test]
async fn a_known_length_over_the_limit_is_not_read_at_all() {
    let (svc, calls) = app(layer().max_body_size(10), |_, _| async {
        Response::new(Body::from("x".repeat(11)))
    });
    let seen = send(&svc, get("/cl")).await;
    assert_eq!(
        (seen.body.len(), seen.header("cache-status")),
        (11, Some("impcache; fwd=uri-miss; detail=too-large"))
    );
    let exact = app(layer().max_body_size(11), |_, _| async {
        Response::new(Body::from("x".repeat(11)))
    })
    .0;
    send(&exact, get("/cl")).await;
    assert_eq!(
        send(&exact, get("/cl")).await.outcome(),
        "HIT",
        "the limit is inclusive"
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn responses_that_forbid_shared_storage_are_not_stored() {
    type Case = (&'static str, &'static [(&'static str, &'static str)], u16);
    let cases: [Case; 7] = [
        ("no-store", &[("cache-control", "no-store")], 200),
        ("private", &[("cache-control", "private, max-age=60")], 200),
        ("no-cache", &[("cache-control", "no-cache")], 200),
        ("vary-star", &[("vary", "*")], 200),
        ("partial-content", &[("content-range", "bytes 0-1/10")], 206),
        ("partial-content", &[("content-range", "bytes 0-1/10")], 200),
        ("zero-ttl", &[("cache-control", "max-age=0")], 200),
    ];
    for (detail, headers, status) in cases {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let (svc, calls) = app(
            layer().statuses([StatusCode::OK, StatusCode::PARTIAL_CONTENT]),
            move |_, _| {
                let headers = headers.clone();
                async move {
                    let mut response = Response::builder().status(status);
                    for (n, v) in &headers {
                        response = response.header(n, v);
                    }
                    response.body(Body::from("body")).unwrap()
                }
            },
        );
        send(&svc, get("/x")).await;
        let second = send(&svc, get("/x")).await;
        assert_eq!(calls.get(), 2, "{detail}");
        assert_eq!(
            second.header("cache-status").unwrap(),
            format!("impcache; fwd=uri-miss; detail={detail}")
        );
    }
}

#[tokio::test]
async fn range_requests_go_to_the_handler() {
    let (svc, calls) = counting(layer());
    send(&svc, get("/file")).await;
    let ranged = send(&svc, request("GET", "/file", &[("range", "bytes=0-1")])).await;
    assert_eq!((ranged.outcome(), calls.get()), ("BYPASS", 2));
}

/// A request to switch protocols (a WebSocket handshake on a URL that also serves a page) goes
/// to its handler: it was answered with the page stored for its URL, so the connection never
/// upgraded (found by a probe).
#[tokio::test]
async fn upgrade_requests_go_to_the_handler() {
    let (svc, calls) = counting(layer());
    send(&svc, get("/ws")).await;
    let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
    let upgrading = send(&svc, request("GET", "/ws", &upgrade)).await;
    assert_eq!((upgrading.outcome(), calls.get()), ("BYPASS", 2));
    assert_eq!(
        upgrading.header("cache-status").unwrap(),
        "impcache; fwd=bypass; detail=upgrade"
    );
}

#[tokio::test]
async fn ttl_is_lowered_by_max_age_and_s_maxage_and_capped() {
    async fn ttl_of(layer: CacheLayer, cache_control: &'static str) -> String {
        let (svc, _) = app(layer, move |_, _| async move {
            let mut r = Response::builder();
            if !cache_control.is_empty() {
                r = r.header("cache-control", cache_control);
            }
            r.body(Body::from("x")).unwrap()
        });
        send(&svc, get("/t")).await;
        send(&svc, get("/t"))
            .await
            .header("cache-status")
            .unwrap()
            .to_owned()
    }
    assert_eq!(ttl_of(layer(), "").await, "impcache; hit; ttl=60");
    assert_eq!(
        ttl_of(layer(), "public, max-age=5").await,
        "impcache; hit; ttl=5"
    );
    assert_eq!(
        ttl_of(layer(), "max-age=5, s-maxage=30").await,
        "impcache; hit; ttl=30"
    );
    assert_eq!(
        ttl_of(layer(), "max-age=3600").await,
        "impcache; hit; ttl=60",
        "never lengthened"
    );
    assert_eq!(
        ttl_of(layer().max_ttl(10), "").await,
        "impcache; hit; ttl=10"
    );
    assert_eq!(
        ttl_of(layer().expire(Duration::from_secs(90)), "").await,
        "impcache; hit; ttl=90"
    );
}

/// A sub-second `expire` is kept to the millisecond (it was rounded up to a whole second).
#[tokio::test]
async fn a_sub_second_expire_lives_that_long() {
    let (svc, calls) = app(
        CacheLayer::new(memory_cache()).expire(Duration::from_millis(300)),
        |n, _| async move { Response::new(Body::from(format!("call {n}"))) },
    );
    assert_eq!(send(&svc, get("/short")).await.outcome(), "MISS");
    let hit = send(&svc, get("/short")).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("HIT", &b"call 1"[..]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = send(&svc, get("/short")).await;
    assert_eq!(
        (after.outcome(), after.body.as_ref()),
        ("MISS", &b"call 2"[..])
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn vary_is_learned_per_url_and_keys_the_variants() {
    let layer = layer();
    let (svc, calls) = app(layer.clone(), |_, req| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("vary", "Accept-Language")
            .body(Body::from(lang))
            .unwrap()
    });
    let en = || request("GET", "/hello", &[("accept-language", "en")]);
    let fr = || request("GET", "/hello", &[("accept-language", "fr")]);
    assert_eq!(send(&svc, en()).await.body, "en");
    let en2 = send(&svc, en()).await;
    assert_eq!((en2.outcome(), en2.body.as_ref()), ("HIT", &b"en"[..]));
    wait_key(&layer, "/hello", ":v").await;
    let fr1 = send(&svc, fr()).await;
    assert_eq!((fr1.outcome(), fr1.body.as_ref()), ("MISS", &b"fr"[..]));
    assert_eq!(
        fr1.header("cache-status"),
        Some("impcache; fwd=vary-miss; stored")
    );
    assert_eq!(send(&svc, fr()).await.body, "fr");
    assert_eq!(send(&svc, get("/hello")).await.body, "none");
    assert_eq!(send(&svc, en()).await.body, "en");
    assert_eq!(calls.get(), 3);
}

/// A response in a content coding varies by `Accept-Encoding` even when it does not say so
/// (tower-http's `ServeDir::precompressed_gzip` sent `Content-Encoding: gzip` without `Vary`
/// before tower-http#692): a client that does not accept gzip is not served the gzip body
/// stored for one that does (4 of 4; found by a probe, 2026-12-07).
#[tokio::test]
async fn a_response_in_a_content_coding_varies_by_accept_encoding() {
    let layer = layer();
    let (svc, calls) = app(layer.clone(), |_, req| async move {
        let gzip = req
            .headers()
            .get("accept-encoding")
            .is_some_and(|v| v.to_str().unwrap().contains("gzip"));
        let response = Response::builder();
        if gzip {
            response
                .header("content-encoding", "gzip")
                .body(Body::from("gzipped"))
                .unwrap()
        } else {
            response.body(Body::from("plain")).unwrap()
        }
    });
    let gzip = || request("GET", "/file", &[("accept-encoding", "gzip")]);
    assert_eq!(send(&svc, gzip()).await.body, "gzipped");
    wait_key(&layer, "/file", ":v").await;
    assert_eq!(send(&svc, gzip()).await.outcome(), "HIT");
    let plain = send(&svc, get("/file")).await;
    assert_eq!(
        (plain.header("content-encoding"), plain.body.as_ref()),
        (None, &b"plain"[..])
    );
    let plain = send(&svc, get("/file")).await;
    assert_eq!(
        (plain.outcome(), plain.body.as_ref()),
        ("HIT", &b"plain"[..])
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn query_parameters_are_sorted_into_the_key() {
    let (svc, calls) = counting(layer());
    send(&svc, get("/search?q=rust&page=2")).await;
    assert_eq!(
        send(&svc, get("/search?page=2&q=rust")).await.outcome(),
        "HIT"
    );
    assert_eq!(
        send(&svc, get("/search?page=3&q=rust")).await.outcome(),
        "MISS"
    );
    assert_eq!(send(&svc, get("/search")).await.outcome(), "MISS");
    assert_eq!(calls.get(), 3);
}

/// Issue 12 item 1: `/a?x=2&x=1` was served the entry stored for `/a?x=1&x=2`, because the key
/// sorted whole `name=value` pairs. A handler that reads the first value (as most frameworks
/// do) answers the two differently.
#[tokio::test]
async fn defect_repeated_query_names_share_an_entry() {
    let layer = layer();
    let (svc, calls) = app(layer.clone(), |_, req| async move {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let first_x = query
            .split('&')
            .find_map(|p| p.strip_prefix("x="))
            .unwrap_or("none")
            .to_owned();
        Response::new(Body::from(format!("x is {first_x}")))
    });
    assert_eq!(send(&svc, get("/a?x=1&x=2")).await.body, "x is 1");
    wait_stored(&layer, "/a?x=1&x=2").await;
    let swapped = send(&svc, get("/a?x=2&x=1")).await;
    assert_eq!(
        (swapped.outcome(), swapped.body.as_ref()),
        ("MISS", &b"x is 2"[..]),
        "another order of a repeated name's values is another resource"
    );
    wait_stored(&layer, "/a?x=2&x=1").await;
    // Each is stored under its own key, and other names still sort around a repeated one.
    assert_eq!(send(&svc, get("/a?x=2&x=1")).await.body, "x is 2");
    let hit = send(&svc, get("/a?x=1&y=0&x=2")).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("MISS", &b"x is 1"[..]));
    wait_stored(&layer, "/a?x=1&y=0&x=2").await;
    assert_eq!(send(&svc, get("/a?y=0&x=1&x=2")).await.outcome(), "HIT");
    assert_eq!(send(&svc, get("/a?x=1&x=2&y=0")).await.outcome(), "HIT");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn hosts_are_keyed_apart_unless_turned_off() {
    let (svc, calls) = counting(layer());
    send(&svc, get("/")).await;
    let other = Request::get("/")
        .header("host", "other.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&svc, other).await.outcome(), "MISS");
    let (shared, _) = counting(layer().key_by_host(false));
    send(&shared, get("/")).await;
    let other = Request::get("/")
        .header("host", "other.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&shared, other).await.outcome(), "HIT");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn if_none_match_is_answered_with_304_from_the_cache() {
    let (svc, calls) = app(layer(), |_, _| async {
        Response::builder()
            .header("etag", "\"v1\"")
            .header("cache-control", "public, max-age=60")
            .header("content-type", "text/plain")
            .body(Body::from("content"))
            .unwrap()
    });
    send(&svc, get("/doc")).await;
    let not_modified = send(
        &svc,
        request("GET", "/doc", &[("if-none-match", "W/\"v1\"")]),
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    assert_eq!(
        not_modified.header("cache-control"),
        Some("public, max-age=60")
    );
    assert!(not_modified.header("age").is_some());
    assert_eq!(not_modified.outcome(), "HIT");
    let changed = send(&svc, request("GET", "/doc", &[("if-none-match", "\"v0\"")])).await;
    assert_eq!(
        (changed.status, changed.body.as_ref()),
        (StatusCode::OK, &b"content"[..])
    );
    assert_eq!(calls.get(), 1);
}

/// RFC 9110 §8.8.3: an entity-tag may hold a comma (`"a,b"`), so `If-None-Match` is read as a
/// list of quoted tags, split between them, not at every comma; odd whitespace and empty members
/// are fine, and a field that is not such a list matches nothing (the response is sent whole).
#[tokio::test]
async fn if_none_match_reads_an_etag_holding_a_comma_whole() {
    let (svc, calls) = app(layer(), |_, _| async {
        Response::builder()
            .header("etag", "\"a,b\"")
            .header("cache-control", "max-age=60")
            .body(Body::from("content"))
            .unwrap()
    });
    send(&svc, get("/comma")).await;
    for (field, expected) in [
        ("\"a,b\"", StatusCode::NOT_MODIFIED),
        ("W/\"a,b\"", StatusCode::NOT_MODIFIED),
        (" \"x\" ,\t\"a,b\"\t", StatusCode::NOT_MODIFIED),
        (",\"a,b\",", StatusCode::NOT_MODIFIED),
        ("\"a\"", StatusCode::OK),
        ("\"b\"", StatusCode::OK),
        ("\"a\", \"b\"", StatusCode::OK),
        ("a,b", StatusCode::OK),
        ("\"a,b", StatusCode::OK),
        ("\"a,b\" x", StatusCode::OK),
        ("\"a,b\", *", StatusCode::OK),
    ] {
        let seen = send(&svc, request("GET", "/comma", &[("if-none-match", field)])).await;
        assert_eq!(seen.status, expected, "If-None-Match: {field}");
        assert_eq!(seen.outcome(), "HIT", "If-None-Match: {field}");
    }
    assert_eq!(calls.get(), 1);
}

/// RFC 9110 §13.1.3: a client's `If-Modified-Since` no earlier than the stored response's
/// `Last-Modified` is answered with a 304 from the cache; an earlier date gets the stored
/// response; `If-None-Match`, when present, decides alone (§13.2.2); a stored 404 is sent as it is.
#[tokio::test]
async fn if_modified_since_is_answered_with_304_from_the_cache() {
    const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let (svc, calls) = app(
        layer().statuses([StatusCode::OK, StatusCode::NOT_FOUND]),
        |_, req: Request<Body>| async move {
            let status = if req.uri().path() == "/missing" {
                404
            } else {
                200
            };
            Response::builder()
                .status(status)
                .header("etag", "\"v1\"")
                .header("last-modified", MODIFIED)
                .body(Body::from("content"))
                .unwrap()
        },
    );
    send(&svc, get("/doc")).await;
    send(&svc, get("/missing")).await;
    for since in [MODIFIED, "Thu, 22 Oct 2015 00:00:00 GMT"] {
        let seen = send(
            &svc,
            request("GET", "/doc", &[("if-modified-since", since)]),
        )
        .await;
        assert_eq!(seen.status, StatusCode::NOT_MODIFIED, "{since}");
        assert!(seen.body.is_empty());
        assert_eq!(seen.header("last-modified"), Some(MODIFIED));
        assert_eq!(seen.outcome(), "HIT");
    }
    let earlier = "Tue, 20 Oct 2015 00:00:00 GMT";
    let changed = send(
        &svc,
        request("GET", "/doc", &[("if-modified-since", earlier)]),
    )
    .await;
    assert_eq!(
        (changed.status, changed.body.as_ref()),
        (StatusCode::OK, &b"content"[..])
    );
    // `If-None-Match` that does not match wins over a matching `If-Modified-Since`.
    let both = request(
        "GET",
        "/doc",
        &[("if-none-match", "\"v0\""), ("if-modified-since", MODIFIED)],
    );
    assert_eq!(send(&svc, both).await.status, StatusCode::OK);
    let missing = send(
        &svc,
        request("GET", "/missing", &[("if-modified-since", MODIFIED)]),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(calls.get(), 2);
}

/// RFC 9110 §13.1.2: `If-None-Match: *` is false when a current representation exists, so a
/// hit on a stored 2xx gets a 304 even when it has no `ETag` (the origin mode computes none);
/// a list of tags cannot match it, and then `If-Modified-Since` is ignored (§13.2.2).
#[tokio::test]
async fn if_none_match_star_gets_304_from_a_stored_response_without_etag() {
    const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let l = CacheLayer::new(memory_cache()).follow_origin(true);
    let (svc, calls) = app(l.clone(), |_, _| async {
        Response::builder()
            .header("cache-control", "max-age=60")
            .header("last-modified", MODIFIED)
            .body(Body::from("content"))
            .unwrap()
    });
    send(&svc, get("/doc")).await;
    wait_stored(&l, "/doc").await;
    for method in ["GET", "HEAD"] {
        let seen = send(&svc, request(method, "/doc", &[("if-none-match", "*")])).await;
        assert_eq!(seen.status, StatusCode::NOT_MODIFIED, "{method}");
        assert!(seen.body.is_empty(), "{method}");
        assert_eq!(seen.header("etag"), None, "{method}");
        assert_eq!(seen.header("last-modified"), Some(MODIFIED), "{method}");
        assert_eq!(seen.outcome(), "HIT", "{method}");
    }
    // A tag cannot match a response without an `ETag`; the matching `If-Modified-Since` is
    // ignored beside it.
    let both = request(
        "GET",
        "/doc",
        &[("if-none-match", "\"v1\""), ("if-modified-since", MODIFIED)],
    );
    let seen = send(&svc, both).await;
    assert_eq!(
        (seen.status, seen.body.as_ref()),
        (StatusCode::OK, &b"content"[..])
    );
    assert_eq!(calls.get(), 1);
}

/// RFC 9110 §13.2.1: preconditions are ignored when the answer would not be a 2xx, so a stored
/// 404 (or redirect) is sent as it is to a conditional request, never as an empty 304.
#[tokio::test]
async fn a_stored_non_2xx_is_never_answered_with_304() {
    let (svc, calls) = app(
        layer().statuses([StatusCode::OK, StatusCode::NOT_FOUND]),
        |_, _| async {
            Response::builder()
                .status(404)
                .body(Body::from("none"))
                .unwrap()
        },
    );
    let first = send(&svc, get("/missing")).await;
    let etag = first.header("etag").unwrap_or("\"x\"").to_owned();
    for condition in ["*", etag.as_str()] {
        let again = send(
            &svc,
            request("GET", "/missing", &[("if-none-match", condition)]),
        )
        .await;
        assert_eq!(
            (again.status, again.body.as_ref(), again.outcome()),
            (StatusCode::NOT_FOUND, &b"none"[..], "HIT"),
            "If-None-Match: {condition}"
        );
    }
    assert_eq!(calls.get(), 1);
}

/// A handler's 304 (to one client's conditional request) is never stored, even when listed: it
/// has no body, and would be served empty to every client.
#[tokio::test]
async fn a_304_is_never_stored_even_when_listed() {
    let (svc, calls) = app(
        layer().statuses([StatusCode::OK, StatusCode::NOT_MODIFIED]),
        |_, _| async {
            Response::builder()
                .status(304)
                .header("etag", "\"v1\"")
                .body(Body::empty())
                .unwrap()
        },
    );
    send(&svc, get("/doc")).await;
    let second = send(&svc, get("/doc")).await;
    assert_eq!((second.status, calls.get()), (StatusCode::NOT_MODIFIED, 2));
    assert_eq!(
        second.header("cache-status"),
        Some("impcache; fwd=uri-miss; detail=status")
    );
}

#[tokio::test]
async fn a_computed_etag_is_strong_and_stable() {
    let (svc, _) = counting(layer());
    let (svc2, _) = counting(layer());
    let a = send(&svc, get("/e"))
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let b = send(&svc2, get("/e"))
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    assert_eq!(a, b, "same body, same ETag");
    assert!(a.starts_with('"') && !a.starts_with("W/"));
    let hit = send(&svc, request("GET", "/e", &[("if-none-match", &a)])).await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    let (plain, _) = counting(layer().compute_etag(false));
    assert!(send(&plain, get("/e")).await.header("etag").is_none());
}

#[tokio::test]
async fn status_headers_are_configurable() {
    let (svc, _) = counting(layer().status_header(StatusHeader::XCache));
    let seen = send(&svc, get("/")).await;
    assert!(seen.header("cache-status").is_none() && seen.header("x-cache").is_some());
    let (svc, _) = counting(layer().status_header(StatusHeader::None));
    let seen = send(&svc, get("/")).await;
    assert!(seen.header("cache-status").is_none() && seen.header("x-cache").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_call_the_handler_once() {
    let (svc, calls) = app(layer(), |n, _| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Response::new(Body::from(format!("call {n}")))
    });
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn({
                let svc = svc.clone();
                async move { send(&svc, get("/slow")).await }
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        assert_eq!(seen.body, "call 1");
        statuses.push(seen.outcome().to_owned());
    }
    assert_eq!(calls.get(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "MISS").count(), 1);
}

/// unjs/ocache #61: coalesced waiters received the leader's `Set-Cookie`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_responses_are_never_handed_to_waiters() {
    let (svc, calls) = app(layer(), |n, _| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Response::builder()
            .header("set-cookie", format!("sid={n}"))
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn({
                let svc = svc.clone();
                async move { send(&svc, get("/session")).await }
            })
        })
        .collect();
    let mut cookies = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        let cookie = seen.header("set-cookie").unwrap().to_owned();
        assert_eq!(
            cookie.trim_start_matches("sid="),
            seen.body
                .strip_prefix(b"call ")
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap()
        );
        cookies.push(cookie);
    }
    cookies.sort();
    cookies.dedup();
    assert_eq!(
        (cookies.len(), calls.get()),
        (8, 8),
        "each request its own handler call and cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_another_variant_call_the_handler() {
    let (svc, calls) = app(layer(), |_, req| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("vary", "accept-language")
            .body(Body::from(lang))
            .unwrap()
    });
    let en = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, request("GET", "/v", &[("accept-language", "en")])).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fr = send(&svc, request("GET", "/v", &[("accept-language", "fr")])).await;
    assert_eq!(fr.body, "fr");
    assert_eq!(en.await.unwrap().body, "en");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn purges_remove_a_url_with_its_variants_or_a_prefix_and_glob_characters_stay_literal() {
    let layer = layer();
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        Response::builder()
            .header("vary", "accept")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    for uri in [
        "/users/1",
        "/users/1?tab=x",
        "/users/2",
        "/a*",
        "/ab",
        "/other",
    ] {
        send(&svc, request("GET", uri, &[("accept", "text/html")])).await;
        send(&svc, request("GET", uri, &[("accept", "application/json")])).await;
    }
    assert_eq!(calls.get(), 12);
    let keys = |uri: &str| {
        let key = layer.request_key(&get(uri));
        assert!(key.starts_with("cache:1:http:example.com:"), "{key}");
        key
    };
    let _ = keys("/users/1");
    // Settle the background stores (a fresh layer has no in-flight state).
    for uri in [
        "/users/1",
        "/users/1?tab=x",
        "/users/2",
        "/a*",
        "/ab",
        "/other",
    ] {
        let meta = format!("{}:v", keys(uri));
        for _ in 0..400 {
            if layer
                .cache()
                .repository()
                .get(&meta)
                .await
                .unwrap()
                .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let fresh = |layer: &CacheLayer| {
        app(layer.clone(), |n, _| async move {
            Response::builder()
                .header("vary", "accept")
                .body(Body::from(format!("new {n}")))
                .unwrap()
        })
    };
    // One URL on a host: its record (the Vary marker) is removed, without a sweep, and both
    // variants (of its generation) are unreachable; the other query is another URL.
    assert_eq!(
        layer
            .purge_url(Some("example.com"), "/users/1")
            .await
            .unwrap(),
        1
    );
    // A literal `*` in a path purges only that path: on any host, through the list of hosts
    // (its record; its variants are unreachable).
    assert_eq!(layer.purge_url(None, "/a*").await.unwrap(), 1);
    let (svc, _) = fresh(&CacheLayer::new(layer.cache().clone()));
    let html = |uri: &str| request("GET", uri, &[("accept", "text/html")]);
    assert_eq!(send(&svc, html("/a*")).await.outcome(), "MISS");
    assert_eq!(send(&svc, html("/users/1")).await.outcome(), "MISS");
    assert_eq!(send(&svc, html("/users/1?tab=x")).await.outcome(), "HIT");
    assert_eq!(send(&svc, html("/ab")).await.outcome(), "HIT");
    // A prefix: every query, variant and sub-path.
    assert!(layer.purge_prefix(None, "/users/").await.unwrap() >= 6);
    let (svc, _) = fresh(&CacheLayer::new(layer.cache().clone()));
    assert_eq!(send(&svc, html("/users/1?tab=x")).await.outcome(), "MISS");
    assert_eq!(send(&svc, html("/users/2")).await.outcome(), "MISS");
    assert_eq!(send(&svc, html("/other")).await.outcome(), "HIT");
    assert!(layer.purge_all().await.unwrap() >= 3);
}

/// Each purge reports its sweep's batches, as `Cache::delete_pattern_with_progress` does.
#[tokio::test]
async fn purges_report_their_progress() {
    let layer = layer();
    let repository = layer.cache().repository().clone();
    for i in 0..2500 {
        let key = layer.request_key(&get(&format!("/bulk/{i}")));
        repository
            .set(&key, Bytes::from_static(b"x"), impcache::Expiry::Never)
            .await
            .unwrap();
    }
    let mut reports = Vec::new();
    let removed = layer
        .purge_url_with_progress(None, "/bulk/7", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!((removed, reports.len()), (1, 1));
    let mut reports = Vec::new();
    let removed = layer
        .purge_prefix_with_progress(None, "/bulk/1", |p| reports.push(p))
        .await
        .unwrap();
    // `/bulk/1`, `/bulk/10`-`/bulk/19`, `/bulk/100`-`/bulk/199`, `/bulk/1000`-`/bulk/1999`.
    assert_eq!(removed, 1111);
    let batches: Vec<(u64, u64)> = reports.iter().map(|p| (p.removed, p.batches)).collect();
    assert_eq!(batches, [(1000, 1), (1111, 2)]);
    let mut last = None;
    let removed = layer
        .purge_all_with_progress(|p| last = Some(p))
        .await
        .unwrap();
    assert_eq!(removed, 2500 - 1 - 1111);
    assert_eq!(last.map(|p| (p.matched, p.batches)), Some((removed, 2)));
}

/// A record or variant in another format (the version 1 framings, which kept the Vary list at
/// `{key}:h` and the entry at `{key}:v:-`, or foreign bytes) is a miss, then gets overwritten.
#[tokio::test]
async fn records_in_an_old_or_foreign_format_are_misses_and_get_overwritten() {
    // A complete version 1 entry: magic, stored at, TTL 60, status 200, no headers, body "old".
    let mut old_entry = b"IHC\x01".to_vec();
    old_entry.extend_from_slice(&0u64.to_le_bytes());
    old_entry.extend_from_slice(&[60, 200, 0, 0, 3]);
    old_entry.extend_from_slice(b"old");
    let cases: [(&str, Vec<u8>); 4] = [
        ("/old-entry", old_entry.clone()),
        ("/old-list", b"IHV\x01".to_vec()),
        ("/old-list-vary", b"IHV\x01accept-language".to_vec()),
        ("/foreign", b"{\"not\":\"ours\"}".to_vec()),
    ];
    for (uri, bytes) in cases {
        let layer = layer();
        let cache = layer.cache().clone();
        let key = layer.request_key(&get(uri));
        let caller_key = key.strip_prefix("cache:1:").unwrap().to_owned();
        // The record, and what a version 1 layer left next to it.
        for (suffix, value) in [
            (":v", bytes.clone()),
            (":h", b"IHV\x01".to_vec()),
            (":v:-", old_entry.clone()),
        ] {
            cache
                .set_raw(&format!("{caller_key}{suffix}"), Bytes::from(value), 60)
                .await
                .unwrap();
        }
        let (svc, calls) = counting(layer.clone());
        let first = send(&svc, get(uri)).await;
        assert_eq!(
            (first.body.as_ref(), first.header("cache-status")),
            (&b"call 1"[..], Some("impcache; fwd=uri-miss; stored")),
            "{uri}"
        );
        let record = format!("{key}:v");
        wait_value(&cache, &record, |v| {
            v.is_some_and(|v| v.starts_with(b"IHC\x06"))
        })
        .await;
        let second = send(&svc, get(uri)).await;
        assert_eq!(
            (second.outcome(), second.body.as_ref(), calls.get()),
            ("HIT", &b"call 1"[..], 1),
            "{uri}"
        );
    }
}

/// A variant in another format behind a current Vary marker is a `vary-miss`, then overwritten.
#[tokio::test]
async fn unreadable_variants_are_misses_and_get_overwritten() {
    let repository = CountingRepository::default();
    let layer = CacheLayer::new(Cache::new(repository.clone()));
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        Response::builder()
            .header("vary", "accept")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let html = || request("GET", "/v", &[("accept", "text/html")]);
    send(&svc, html()).await;
    let record = format!("{}:v", layer.request_key(&get("/v")));
    wait_value(layer.cache(), &record, |v| v.is_some()).await;
    repository.take_reads();
    assert_eq!(send(&svc, html()).await.outcome(), "HIT");
    // The second read of the hit named the variant: replace it with a version 1 entry.
    let variant = repository.take_reads().pop().unwrap().pop().unwrap();
    assert!(variant.starts_with(&format!("{record}:")), "{variant}");
    let old_entry = b"IHC\x01\0\0\0\0\0\0\0\0\x3c\xc8\0\0\x03old";
    repository
        .set(
            &variant,
            Bytes::from_static(old_entry),
            impcache::Expiry::Never,
        )
        .await
        .unwrap();
    let missed = send(&svc, html()).await;
    assert_eq!(
        (missed.body.as_ref(), missed.header("cache-status")),
        (&b"call 2"[..], Some("impcache; fwd=vary-miss; stored"))
    );
    wait_value(layer.cache(), &variant, |v| {
        v.is_some_and(|v| v.starts_with(b"IHC\x06"))
    })
    .await;
    let hit = send(&svc, html()).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("HIT", &b"call 2"[..]));
    assert_eq!(calls.get(), 2);
}

/// The common case costs one key read per hit: the URL's record holds the entry.
#[tokio::test]
async fn a_hit_of_a_url_without_vary_reads_exactly_one_key() {
    let repository = CountingRepository::default();
    let layer = CacheLayer::new(Cache::new(repository.clone()));
    let (svc, calls) = counting(layer.clone());
    let first = send(&svc, get("/one?b=2&a=1")).await;
    assert_eq!(first.outcome(), "MISS");
    let key = layer.request_key(&get("/one?a=1&b=2"));
    let record = format!("{key}:v");
    wait_value(layer.cache(), &record, |v| v.is_some()).await;
    repository.take_reads();
    for request in [
        get("/one?a=1&b=2"),
        request("HEAD", "/one?b=2&a=1", &[]),
        request("GET", "/one?a=1&b=2", &[("accept-language", "fr")]),
    ] {
        let seen = send(&svc, request).await;
        assert_eq!(seen.outcome(), "HIT");
        assert_eq!(repository.take_reads(), [[record.clone()]], "one GET");
    }
    assert_eq!(calls.get(), 1);
    // A varying URL: the record (a Vary marker), then the variant.
    let (svc, _) = app(layer.clone(), |_, _| async {
        Response::builder()
            .header("vary", "accept")
            .body(Body::from("varies"))
            .unwrap()
    });
    let json = || request("GET", "/two", &[("accept", "application/json")]);
    send(&svc, json()).await;
    let record = format!("{}:v", layer.request_key(&get("/two")));
    wait_value(layer.cache(), &record, |v| v.is_some()).await;
    repository.take_reads();
    assert_eq!(send(&svc, json()).await.outcome(), "HIT");
    let reads = repository.take_reads();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0], [record.as_str()]);
    assert!(reads[1][0].starts_with(&format!("{record}:")), "{reads:?}");
}

/// Once a URL's responses carry `Vary`, its plain entry is never served again; each variant is.
#[tokio::test]
async fn a_url_that_starts_to_vary_never_serves_its_plain_entry() {
    let layer = layer().honor_request_cache_control(true);
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        if n == 1 {
            return Response::new(Body::from("plain"));
        }
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("vary", "accept-language")
            .body(Body::from(format!("{lang} {n}")))
            .unwrap()
    });
    let lang = |lang: &str| request("GET", "/page", &[("accept-language", lang)]);
    let record = format!("{}:v", layer.request_key(&get("/page")));
    assert_eq!(send(&svc, get("/page")).await.body, "plain");
    wait_stored(&layer, "/page").await;
    assert_eq!(send(&svc, lang("en")).await.body, "plain", "no Vary yet");
    // A refresh (any miss would do) brings a response that varies.
    let refreshed = send(
        &svc,
        request(
            "GET",
            "/page",
            &[("accept-language", "en"), ("cache-control", "no-cache")],
        ),
    )
    .await;
    assert_eq!(refreshed.body, "en 2");
    let cache = layer.cache().clone();
    wait_value(&cache, &record, |v| {
        v.is_some_and(|v| v.starts_with(b"IHV"))
    })
    .await;
    let mut served = Vec::new();
    for request in [
        get("/page"),
        lang("en"),
        lang("fr"),
        get("/page"),
        lang("fr"),
        request("HEAD", "/page", &[]),
        lang("en"),
    ] {
        let seen = send(&svc, request).await;
        served.push((seen.outcome().to_owned(), seen.body));
        // Settle the background store before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.iter().all(|(_, body)| body != "plain"), "{served:?}");
    let served: Vec<(&str, &[u8])> = served
        .iter()
        .map(|(x, body)| (x.as_str(), body.as_ref()))
        .collect();
    assert_eq!(
        served,
        [
            ("MISS", &b"none 3"[..]),
            ("HIT", b"en 2"),
            ("MISS", b"fr 4"),
            ("HIT", b"none 3"),
            ("HIT", b"fr 4"),
            ("HIT", b""),
            ("HIT", b"en 2"),
        ]
    );
    assert_eq!(calls.get(), 4);
}

/// With `allow_authenticated`, credentialed requests have their own variants: they never get
/// the anonymous entry the URL's record holds, and storing theirs does not evict it.
#[tokio::test]
async fn credentialed_variants_and_the_anonymous_entry_live_side_by_side() {
    let layer = layer()
        .allow_authenticated(true)
        .honor_request_cache_control(true);
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        let who = req
            .headers()
            .get("authorization")
            .map_or("anonymous", |v| v.to_str().unwrap())
            .to_owned();
        Response::new(Body::from(format!("{who} {n}")))
    });
    let alice = |uri: &str| request("GET", uri, &[("authorization", "alice")]);
    let bob = |uri: &str| request("GET", uri, &[("cookie", "sid=bob")]);
    let settle = || tokio::time::sleep(Duration::from_millis(30));

    // The anonymous entry first: a credentialed request is not served it, and its own store
    // (SET NX of an empty marker, which finds the entry) leaves the entry in place.
    assert_eq!(send(&svc, get("/a")).await.body, "anonymous 1");
    wait_stored(&layer, "/a").await;
    let a = send(&svc, alice("/a")).await;
    assert_eq!(
        (a.body.as_ref(), a.header("cache-status")),
        (&b"alice 2"[..], Some("impcache; fwd=vary-miss; stored"))
    );
    settle().await;
    let anon = send(&svc, get("/a")).await;
    assert_eq!(
        (anon.outcome(), anon.body.as_ref()),
        ("HIT", &b"anonymous 1"[..])
    );
    let a = send(&svc, alice("/a")).await;
    assert_eq!((a.outcome(), a.body.as_ref()), ("HIT", &b"alice 2"[..]));
    let b = send(&svc, bob("/a")).await;
    assert_eq!(
        (b.outcome(), b.body.as_ref()),
        ("MISS", &b"anonymous 3"[..])
    );
    settle().await;
    assert_eq!(send(&svc, get("/a")).await.body, "anonymous 1");
    assert_eq!(send(&svc, bob("/a")).await.outcome(), "HIT");
    assert_eq!(calls.get(), 3);

    // A credentialed variant first: the record is an empty marker; the anonymous request misses
    // and its entry replaces the marker; the credentialed variant is still found.
    assert_eq!(send(&svc, alice("/b")).await.body, "alice 4");
    settle().await;
    let record = format!("{}:v", layer.request_key(&get("/b")));
    let cache = layer.cache().clone();
    // An empty marker: "IHV" 0x03, its generation (8 bytes), no names.
    let marker = cache.repository().get(&record).await.unwrap().unwrap();
    assert_eq!((&marker[..4], marker.len()), (&b"IHV\x03"[..], 12));
    let anon = send(&svc, get("/b")).await;
    assert_eq!(
        (anon.body.as_ref(), anon.header("cache-status")),
        (&b"anonymous 5"[..], Some("impcache; fwd=vary-miss; stored"))
    );
    settle().await;
    assert_eq!(send(&svc, get("/b")).await.body, "anonymous 5");
    // The anonymous entry is a record of a new generation: the credentialed variant stored
    // under the marker is called for once more, then found under the entry. (Reusing the
    // marker's generation could make variants purged meanwhile reachable again.)
    assert_eq!(send(&svc, alice("/b")).await.body, "alice 6");
    settle().await;
    assert_eq!(send(&svc, alice("/b")).await.body, "alice 6");
    assert_eq!(send(&svc, get("/b")).await.body, "anonymous 5");
    assert_eq!(calls.get(), 6);
}

/// A Vary marker left from when a URL varied is replaced when a credentialed response without
/// `Vary` is stored (else that response's variant could never be found).
#[tokio::test]
async fn a_stale_vary_marker_gives_way_to_a_credentialed_variant() {
    let layer = layer()
        .allow_authenticated(true)
        .honor_request_cache_control(true);
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        let mut response = Response::builder();
        if n == 1 {
            response = response.header("vary", "accept-language");
        }
        response.body(Body::from(format!("call {n}"))).unwrap()
    });
    let alice = |refresh: bool| {
        let mut headers = vec![("authorization", "alice"), ("accept-language", "en")];
        if refresh {
            headers.push(("cache-control", "no-cache"));
        }
        request("GET", "/s", &headers)
    };
    let record = format!("{}:v", layer.request_key(&get("/s")));
    let cache = layer.cache().clone();
    assert_eq!(send(&svc, alice(false)).await.body, "call 1");
    wait_value(&cache, &record, |v| {
        v.is_some_and(|v| v.starts_with(b"IHV\x03") && v.ends_with(b"accept-language"))
    })
    .await;
    assert_eq!(send(&svc, alice(false)).await.body, "call 1");
    assert_eq!(send(&svc, alice(true)).await.body, "call 2");
    wait_value(&cache, &record, |v| {
        v.is_some_and(|v| v.starts_with(b"IHV\x03") && v.len() == 12)
    })
    .await;
    let seen = send(&svc, alice(false)).await;
    assert_eq!(
        (seen.outcome(), seen.body.as_ref()),
        ("HIT", &b"call 2"[..])
    );
    assert_eq!(calls.get(), 2);
}

#[test]
fn the_inner_error_type_is_kept() {
    fn assert_infallible<S: tower::Service<Request<Body>, Error = Infallible>>(_: &S) {}
    let (svc, _) = counting(layer());
    assert_infallible(&svc);
    #[derive(Debug)]
    struct MyError;
    let failing = tower::service_fn(|_: Request<Body>| async { Err::<Response<Body>, _>(MyError) });
    let wrapped = tower::Layer::layer(&layer(), failing);
    fn assert_error<S: tower::Service<Request<Body>, Error = MyError>>(_: &S) {}
    assert_error(&wrapped);
}

/// A conditional request that misses: the handler is asked for the whole response without the
/// client's `If-None-Match` / `If-Modified-Since` (as nginx and Varnish ask their upstream), the
/// response is stored, and the client's condition is answered from it: a 304 when it matches.
/// A handler that honours validators (tower-http's `ServeDir`, say) would otherwise answer every
/// revalidating client with a 304, which is never stored, and the cache would stay empty.
#[tokio::test]
async fn a_conditional_miss_is_stored_whole_and_answered_with_304() {
    const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let layer = layer();
    let (svc, calls) = app(layer.clone(), |n, req: Request<Body>| async move {
        let conditional = ["if-none-match", "if-modified-since"]
            .iter()
            .any(|name| req.headers().contains_key(*name));
        let status = if conditional { 304 } else { 200 };
        Response::builder()
            .status(status)
            .header("etag", "\"v1\"")
            .header("last-modified", MODIFIED)
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let cases: [(&str, (&str, &str), StatusCode); 4] = [
        (
            "/etag",
            ("if-none-match", "\"v1\""),
            StatusCode::NOT_MODIFIED,
        ),
        (
            "/date",
            ("if-modified-since", MODIFIED),
            StatusCode::NOT_MODIFIED,
        ),
        ("/other", ("if-none-match", "\"v0\""), StatusCode::OK),
        (
            "/older",
            ("if-modified-since", "Tue, 20 Oct 2015 00:00:00 GMT"),
            StatusCode::OK,
        ),
    ];
    for (uri, condition, status) in cases {
        let before = calls.get();
        let seen = send(&svc, request("GET", uri, &[condition])).await;
        assert_eq!(seen.status, status, "{uri}");
        assert_eq!(seen.outcome(), "MISS", "{uri}");
        assert_eq!(seen.header("etag"), Some("\"v1\""), "{uri}");
        if status == StatusCode::NOT_MODIFIED {
            assert!(seen.body.is_empty(), "{uri}");
        } else {
            assert_eq!(seen.body, format!("call {}", before + 1), "{uri}");
        }
        // The whole response was stored: the next client without a validator gets it.
        wait_stored(&layer, uri).await;
        let plain = send(&svc, get(uri)).await;
        assert_eq!(
            (plain.status, plain.outcome(), calls.get()),
            (StatusCode::OK, "HIT", before + 1),
            "{uri}"
        );
        assert_eq!(plain.body, format!("call {}", before + 1), "{uri}");
    }
}

/// A conditional miss whose response is not stored (`Set-Cookie`) goes to the client whole,
/// with what only the handler's answer carries: a 304 built by the layer would drop the cookie.
#[tokio::test]
async fn a_conditional_miss_that_is_not_stored_is_sent_whole() {
    let (svc, calls) = app(layer(), |n, req: Request<Body>| async move {
        assert!(!req.headers().contains_key("if-none-match"));
        Response::builder()
            .header("etag", "\"v1\"")
            .header("set-cookie", "session=abc")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    for _ in 0..2 {
        let seen = send(&svc, request("GET", "/c", &[("if-none-match", "\"v1\"")])).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(seen.header("set-cookie"), Some("session=abc"));
        assert_eq!(
            seen.header("cache-status"),
            Some("impcache; fwd=uri-miss; detail=set-cookie")
        );
    }
    assert_eq!(calls.get(), 2);
}

/// A response without a `Date` gets one when it is stored, the time it arrived, sent with it
/// and again with its hits (RFC 9110 §6.6.1; Varnish sends the stored `Date`): a hit got a new
/// `Date` from the server beside the stored `Expires` and the hit's `Age`, so a downstream
/// cache counted the age twice (found by a probe). In both modes; a handler's own `Date` is kept.
#[tokio::test]
async fn a_stored_response_without_a_date_is_given_the_time_it_arrived() {
    for follow_origin in [false, true] {
        let (svc, _) = app(layer().follow_origin(follow_origin), |n, req| async move {
            let expires =
                httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
            let mut response = Response::builder().header("expires", expires);
            if req.uri().path() == "/dated" {
                response = response.header("date", "Mon, 07 Dec 2026 20:00:00 GMT");
            }
            response.body(Body::from(format!("call {n}"))).unwrap()
        });
        let miss = send(&svc, get("/undated")).await;
        let date = miss.header("date").expect("a Date").to_owned();
        let arrived = httpdate::parse_http_date(&date).unwrap();
        let skew = std::time::SystemTime::now()
            .duration_since(arrived)
            .unwrap();
        assert!(skew < Duration::from_secs(5), "{date}");
        let hit = loop {
            let seen = send(&svc, get("/undated")).await;
            if seen.outcome() == "HIT" {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(hit.header("date"), Some(date.as_str()), "{follow_origin}");
        let dated = send(&svc, get("/dated")).await;
        assert_eq!(dated.header("date"), Some("Mon, 07 Dec 2026 20:00:00 GMT"));
    }
}

/// A stored response refreshed by a `304` without a `Date` takes the 304's time as its `Date`,
/// sent with its `Age`: it kept the `Date` given when it was first stored, sent beside `Age: 0`,
/// so a downstream cache took the refreshed response for stale (found by a regression hunt).
#[tokio::test]
async fn a_refresh_by_a_304_without_a_date_dates_the_response_anew() {
    let (svc, calls) = app(layer().follow_origin(true), |n, req| async move {
        let builder = Response::builder()
            .header("etag", "\"a\"")
            .header("cache-control", "max-age=1");
        if req.headers().contains_key("if-none-match") {
            return builder.status(304).body(Body::empty()).unwrap();
        }
        builder.body(Body::from(format!("call {n}"))).unwrap()
    });
    let first = send(&svc, get("/r")).await;
    let first_date = first.header("date").expect("a Date").to_owned();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let refreshed = send(&svc, get("/r")).await;
    assert_eq!(calls.get(), 2, "revalidated");
    let date = refreshed.header("date").expect("a Date");
    assert_ne!(date, first_date);
    let date = httpdate::parse_http_date(date).unwrap();
    let apparent = std::time::SystemTime::now()
        .duration_since(date)
        .unwrap_or_default();
    let age: u64 = refreshed
        .header("age")
        .map_or(0, |age| age.parse().unwrap());
    assert!(
        apparent.as_secs() <= age + 1,
        "Date {apparent:?} old, Age {age}"
    );
}

/// In the default mode, a response's `Expires` lowers the TTL as `max-age` does when it has no
/// `max-age` (RFC 9111 §4.2.1, and nginx): one in the past, or an invalid one ("already
/// expired", §5.3, `Expires: 0` included), stores nothing.
#[tokio::test]
async fn expires_lowers_the_ttl_and_an_expired_response_is_not_stored() {
    for expires in ["Thu, 01 Jan 1970 00:00:00 GMT", "0"] {
        let (svc, calls) = app(layer(), move |n, _| async move {
            Response::builder()
                .header("expires", expires)
                .body(Body::from(format!("call {n}")))
                .unwrap()
        });
        let first = send(&svc, get("/e")).await;
        assert_eq!(
            first.header("cache-status"),
            Some("impcache; fwd=uri-miss; detail=zero-ttl"),
            "Expires: {expires}"
        );
        assert_eq!(send(&svc, get("/e")).await.outcome(), "MISS");
        assert_eq!(calls.get(), 2, "Expires: {expires}");
    }
    // A date ahead: stored, for what is left of it (under the layer's 60 s).
    let (svc, _) = app(layer(), |n, _| async move {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let expires =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        Response::builder()
            .header("date", date)
            .header("expires", expires)
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    send(&svc, get("/later")).await;
    let hit = loop {
        let seen = send(&svc, get("/later")).await;
        if seen.outcome() == "HIT" {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let status = hit.header("cache-status").unwrap_or_default();
    assert!(
        ["ttl=29", "ttl=30"].iter().any(|ttl| status.ends_with(ttl)),
        "{status}"
    );
}

/// A body whose chunks come one per `pause` (the streamed path: not all there at once).
struct Slow {
    chunks: std::collections::VecDeque<Bytes>,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Slow {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
        self.pause = None;
        std::task::Poll::Ready(
            self.chunks
                .pop_front()
                .map(|c| Ok(http_body::Frame::data(c))),
        )
    }
}

/// A body shorter or longer than its `Content-Length` (a file that shrank, an upstream that
/// closed early) is not stored (RFC 9111 §3.3; nginx and Varnish never cache it), whether it was
/// all there or streamed; the client gets what the handler sent, with its header. It was stored
/// with the length rewritten, and served to everyone as a complete response.
#[tokio::test]
async fn a_body_not_of_its_declared_length_is_not_stored() {
    for (declared, streamed) in [("10", false), ("2", false), ("20", true)] {
        let (svc, calls) = app(layer(), move |_, _| async move {
            let body = if streamed {
                let chunks = ["one ", "two"].map(Bytes::from).into_iter().collect();
                Body::new(Slow {
                    chunks,
                    pause: None,
                })
            } else {
                Body::from("abcdef")
            };
            Response::builder()
                .header("content-length", declared)
                .body(body)
                .unwrap()
        });
        let first = send(&svc, get("/cl")).await;
        assert_eq!(first.header("content-length"), Some(declared));
        if !streamed {
            assert_eq!(
                first.header("cache-status"),
                Some("impcache; fwd=uri-miss; detail=length-mismatch")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = send(&svc, get("/cl")).await;
        assert_eq!(
            (second.outcome(), calls.get()),
            ("MISS", 2),
            "Content-Length: {declared}"
        );
    }
}

/// The default mode's TTL from `Expires` is what is left of it now: an `Expires` already past
/// stores nothing even when the response's `Date` is older still (a response that waited in
/// another cache, or a skewed clock), and one 5 s ahead is kept 5 s, not `Expires - Date`.
#[tokio::test]
async fn expires_counts_from_now_whatever_the_date() {
    let at = |offset: i64| {
        let now = std::time::SystemTime::now();
        let offset_abs = Duration::from_secs(offset.unsigned_abs());
        httpdate::fmt_http_date(if offset < 0 {
            now - offset_abs
        } else {
            now + offset_abs
        })
    };
    for (expires, stored) in [(-10, false), (5, true)] {
        let (date, expires) = (at(-3600), at(expires));
        let (svc, calls) = app(layer(), move |n, _| {
            let (date, expires) = (date.clone(), expires.clone());
            async move {
                Response::builder()
                    .header("date", date)
                    .header("expires", expires)
                    .body(Body::from(format!("call {n}")))
                    .unwrap()
            }
        });
        send(&svc, get("/e")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = send(&svc, get("/e")).await;
        if stored {
            let status = second.header("cache-status").unwrap_or_default();
            assert!(
                ["ttl=4", "ttl=5"].iter().any(|ttl| status.ends_with(ttl)),
                "{status}"
            );
        } else {
            assert_eq!((second.outcome(), calls.get()), ("MISS", 2));
        }
    }
}

/// A request whose target names another host than its `Host` field (an absolute-form target,
/// or HTTP/2's `:authority`) is neither answered from the cache nor stored: the key would take
/// the target's host (RFC 9112 §3.2.2) while a handler reading `Host` makes the other host's
/// response (cache poisoning: it was, then it was stored under the target's host, which a
/// handler reading `Host` still poisoned; RFC 9113 §8.3.1 calls such an HTTP/2 request
/// malformed). The same target with a `Host` that agrees is cached as usual.
#[tokio::test]
async fn a_request_naming_two_hosts_is_not_cached() {
    let (svc, calls) = app(layer(), |n, request| async move {
        let host = request.uri().authority().map(|a| a.to_string());
        Response::new(Body::from(format!("{host:?} call {n}")))
    });
    let two_hosts = || request("GET", "http://evil.test/abs", &[("host", "example.com")]);
    let first = send(&svc, two_hosts()).await;
    assert_eq!(first.body, "Some(\"evil.test\") call 1");
    assert_eq!(
        first.header("cache-status"),
        Some("impcache; fwd=bypass; detail=host-mismatch")
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        send(&svc, two_hosts()).await.body,
        "Some(\"evil.test\") call 2"
    );
    let origin_form = send(&svc, request("GET", "/abs", &[("host", "example.com")])).await;
    assert_eq!(origin_form.body, "None call 3");
    let agreeing = || {
        let request = http::Request::get("http://evil.test/abs").header("host", "EVIL.test");
        request.body(Body::empty()).unwrap()
    };
    send(&svc, agreeing()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(send(&svc, agreeing()).await.outcome(), "HIT");
    assert_eq!(calls.get(), 4);
}

/// A stored 204 is served without `Content-Length` (RFC 9110 §8.6) or a computed ETag.
#[tokio::test]
async fn a_stored_204_has_no_content_length() {
    let layer = layer().statuses([StatusCode::OK, StatusCode::NO_CONTENT]);
    let (svc, calls) = app(layer, |_, _| async {
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap()
    });
    send(&svc, get("/nc")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hit = send(&svc, get("/nc")).await;
    assert_eq!((hit.outcome(), calls.get()), ("HIT", 1));
    assert_eq!(hit.status, StatusCode::NO_CONTENT);
    assert_eq!(hit.header("content-length"), None);
    assert_eq!(hit.header("etag"), None);
}

/// Settings past the longest expiry, or a lock lifetime too short for the hard timeout: the
/// layer has no call to refuse them with, so each is brought within range rather than turning
/// caching or the lock off (which it did: `expire(Duration::MAX)` stored nothing and blamed a
/// zero TTL; an invalid lock lifetime ran every process's handler).
mod out_of_range_settings {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use impcache::{Cache, CacheRepository, Lock, MemoryCacheRepository};
    use impcache_tower::CacheLayer;
    use tower::{Layer, ServiceExt};

    /// One GET of `/x` through `layer`, the handler counting its calls and taking `delay`.
    async fn get(layer: &CacheLayer, calls: &Arc<AtomicUsize>, delay: Duration) {
        let calls = calls.clone();
        let service = layer.layer(tower::service_fn(move |_: Request<Full<Bytes>>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"ok",
                ))))
            }
        }));
        let request = Request::builder()
            .uri("http://example.com/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        service.oneshot(request).await.unwrap();
    }

    async fn handler_calls_of_two_requests(layer: CacheLayer) -> usize {
        let calls = Arc::new(AtomicUsize::new(0));
        get(&layer, &calls, Duration::ZERO).await;
        get(&layer, &calls, Duration::ZERO).await;
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn an_expire_or_max_ttl_past_the_longest_expiry_is_capped() {
        let layer = || CacheLayer::new(Cache::new(MemoryCacheRepository::new()));
        assert_eq!(
            handler_calls_of_two_requests(layer().expire(Duration::MAX)).await,
            1
        );
        assert_eq!(
            handler_calls_of_two_requests(layer().expire(u64::MAX)).await,
            1
        );
        assert_eq!(
            handler_calls_of_two_requests(layer().max_ttl(Duration::MAX)).await,
            1
        );
    }

    /// Two processes (two caches over one repository), both missing `/x` at once.
    async fn handler_calls_across_two_processes(
        configure: impl Fn(CacheLayer) -> CacheLayer,
    ) -> usize {
        let repository: Arc<dyn CacheRepository> = Arc::new(MemoryCacheRepository::new());
        let process = || {
            configure(CacheLayer::new(
                Cache::builder_shared(repository.clone()).build(),
            ))
        };
        let (a, b) = (process(), process());
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = Duration::from_millis(300);
        tokio::join!(get(&a, &calls, slow), get(&b, &calls, slow));
        calls.load(Ordering::SeqCst)
    }

    /// Each layer whose lock lifetime `get_or_set` would refuse says so when it is applied,
    /// with the values (one process-wide warning named neither).
    #[test]
    fn each_layer_with_a_refused_lock_lifetime_warns_when_applied() {
        #[derive(Clone, Default)]
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let second = Duration::from_secs(1);
        // A global subscriber that records nothing first, so that a call site a sibling test's
        // thread reached first with none is not cached as uninterested for this thread too
        // (`impcache_tests::logs::keep_callsites_interested`, which this published test cannot
        // use). Refused if already installed, which serves as well.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        tracing::subscriber::with_default(subscriber, || {
            for (lifetime, hard_timeout) in [(1, 2), (3, 10), (5, 2)] {
                let layer = CacheLayer::new(Cache::new(MemoryCacheRepository::new()))
                    .lock(Lock::new().lifetime(lifetime * second))
                    .hard_timeout(hard_timeout * second);
                let _service = layer.layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                }));
            }
        });
        let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<_> = logs.lines().filter(|line| line.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{logs}");
        assert!(warnings[0].contains("lifetime (1s)"), "{logs}");
        assert!(warnings[1].contains("lifetime (3s)"), "{logs}");
    }

    #[tokio::test]
    async fn a_lock_lifetime_too_short_for_the_hard_timeout_still_locks() {
        let second = Duration::from_secs(1);
        let short = handler_calls_across_two_processes(|layer| {
            layer
                .lock(Lock::new().lifetime(second))
                .hard_timeout(2 * second)
        })
        .await;
        assert_eq!(short, 1, "the lock was dropped");
        let endless = handler_calls_across_two_processes(|layer| {
            layer.lock(Lock::new()).hard_timeout(Duration::MAX)
        })
        .await;
        assert_eq!(endless, 1, "the lock was dropped");
    }
}

/// A URL whose key is longer than the cache accepts (its `max_key_bytes`) cannot be stored: its
/// `Cache-Status` does not say `stored` (only `detail=cache-error`, from the lookup the cache
/// refused), and every request goes to the handler. A URL within the limit is stored.
#[tokio::test]
async fn a_url_too_long_for_the_cache_is_not_claimed_stored() {
    let cache = Cache::builder(impcache::MemoryCacheRepository::new())
        .max_key_bytes(200)
        .build();
    let layer = CacheLayer::new(cache).expire(60);
    let (svc, calls) = counting(layer.clone());
    let long = format!("/items/{}", "x".repeat(300));
    for n in 1..=2 {
        let seen = send(&svc, get(&long)).await;
        let cache_status = seen.header("cache-status").unwrap_or_default();
        assert_eq!(
            (seen.status, seen.outcome()),
            (StatusCode::OK, "MISS"),
            "{cache_status}"
        );
        assert!(
            !cache_status.contains("stored") && cache_status.contains("detail=cache-error"),
            "{cache_status}"
        );
        assert_eq!(calls.get(), n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let short = send(&svc, get("/items/1")).await;
    let cache_status = short.header("cache-status").unwrap_or_default();
    assert!(cache_status.contains("; stored"), "{cache_status}");
    wait_stored(&layer, "/items/1").await;
}
