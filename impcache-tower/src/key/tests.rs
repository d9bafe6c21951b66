//! Tests of the key layout: the exact bytes of keys, query sorting, variants and patterns.

#![allow(clippy::unwrap_used)]

use super::*;
use http::HeaderValue;

/// The host segment alone.
fn host_segment(host: Option<&str>) -> String {
    let mut out = String::with_capacity(host.map_or(1, str::len));
    push_host_segment(&mut out, host);
    out
}

/// The query segment alone.
fn query_segment(query: Option<&str>) -> String {
    let mut out = String::with_capacity(32);
    push_query_segment(&mut out, query);
    out
}

fn url(host: Option<&str>, path: &str, query: Option<&str>) -> String {
    url_key("http", host, path, query, &Method::GET)
}

#[test]
fn query_parameters_are_sorted_and_hashed() {
    assert_eq!(
        url(Some("h"), "/p", Some("b=2&a=1")),
        url(Some("h"), "/p", Some("a=1&b=2"))
    );
    assert_ne!(
        url(Some("h"), "/p", Some("a=1&b=2")),
        url(Some("h"), "/p", Some("a=1&b=3"))
    );
    assert_eq!(url(Some("h"), "/p", Some("")), url(Some("h"), "/p", None));
    assert!(url(Some("h"), "/p", None).ends_with(":/p:-:GET"));
    let hashed = url(Some("h"), "/p", Some("a=1"));
    let segment = hashed.split(':').nth(3);
    assert_eq!(segment.map(str::len), Some(32));
    assert!(segment.is_some_and(|s| s.bytes().all(|b| b.is_ascii_hexdigit())));
}

/// Issue 12 item 1: `?x=2&x=1` was served the entry of `?x=1&x=2` (whole pairs were sorted).
#[test]
fn the_values_of_a_repeated_name_keep_their_order() {
    let q = |query: &str| url(Some("h"), "/a", Some(query));
    assert_ne!(q("x=1&x=2"), q("x=2&x=1"));
    assert_ne!(q("x=1&y=0&x=2"), q("x=2&y=0&x=1"));
    // Distinct names still sort, and a repeated name's values move with it as a group.
    assert_eq!(q("a=1&b=2"), q("b=2&a=1"));
    assert_eq!(q("x=1&y=0&x=2"), q("y=0&x=1&x=2"));
    assert_eq!(q("x=1&y=0&x=2"), q("x=1&x=2&y=0"));
    // Names are compared whole: `a` sorts before `a-b` (a pair sort put `a-b=2` first).
    assert_eq!(q("a-b=2&a=1"), q("a=1&a-b=2"));
    // A name without `=` is a name; `x` and `x=` are different parameters.
    assert_eq!(q("flag&a=1"), q("a=1&flag"));
    assert_ne!(q("x"), q("x="));
    // Empty parameters are ignored, as before.
    assert_eq!(q("a=1&&b=2&"), q("b=2&a=1"));
}

/// The key layout changed with item 1: a query hash of the earlier layout (pairs sorted
/// whole, no tag) is never produced, so no entry stored by an earlier version is served.
#[test]
fn query_hashes_of_the_earlier_layout_are_never_produced() {
    let earlier = |params: &[&str]| {
        let mut hasher = Sha256::new();
        for param in params {
            hasher.update(param.as_bytes());
            hasher.update(b"&");
        }
        let mut out = String::new();
        push_hex128(&mut out, &hasher.finalize());
        out
    };
    assert_ne!(query_segment(Some("a=1&b=2")), earlier(&["a=1", "b=2"]));
    assert_ne!(query_segment(Some("x=1&x=2")), earlier(&["x=1", "x=2"]));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Parameters with distinct names (`n0`, `n1`, …) and arbitrary values.
    fn distinct_params() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[a-z0-9%=._~-]{0,6}", 1..8).prop_map(|values| {
            values
                .iter()
                .enumerate()
                .map(|(i, value)| format!("n{i}={value}"))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn permuting_distinct_names_never_changes_the_key(
            (params, shuffled) in distinct_params()
                .prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle()))
        ) {
            prop_assert_eq!(
                query_segment(Some(&params.join("&"))),
                query_segment(Some(&shuffled.join("&")))
            );
        }

        #[test]
        fn swapping_two_values_of_a_repeated_name_always_changes_the_key(
            others in distinct_params(),
            name in "[a-z]{1,4}",
            first in "[a-z0-9]{0,4}",
            second in "[a-z0-9]{0,4}",
            at in any::<prop::sample::Index>(),
        ) {
            prop_assume!(first != second);
            let with = |a: &str, b: &str| {
                let mut params = others.clone();
                // The repeated name's two occurrences, around a parameter of another name.
                let i = at.index(params.len() + 1);
                params.insert(i, format!("{name}={b}"));
                params.insert(0, format!("{name}={a}"));
                query_segment(Some(&params.join("&")))
            };
            prop_assert_ne!(with(&first, &second), with(&second, &first));
        }
    }
}

/// Bytes the path segment keeps as they are (the safe set as first written).
fn path_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/!$&'()+,;=@".contains(&b)
}

/// Bytes the host and method segments keep as they are: the path's but `/`.
fn token_safe(b: u8) -> bool {
    path_safe(b) && b != b'/'
}

/// The encoding as first written (lowercase the whole host, then escape byte by byte).
fn reference_encoding(s: &str, safe: fn(u8) -> bool, lowercase: bool) -> String {
    let s = if lowercase {
        s.to_ascii_lowercase()
    } else {
        s.to_owned()
    };
    s.bytes()
        .map(|b| {
            if safe(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn segment_encodings_match_the_byte_by_byte_one() {
    for input in [
        "",
        "a",
        "%",
        "é",
        "aé",
        "éa",
        "Example.COM:8080",
        "ÉxÄmple.com",
        "/users/1?x",
        "/a b/*?[]\\/ü/%41",
        "日本/語",
    ] {
        let expected =
            |safe, lowercase| format!("k:{}", reference_encoding(input, safe, lowercase));
        let mut path = String::from("k:");
        push_encoded(&mut path, input, PATH);
        assert_eq!(path, expected(path_safe, false), "{input:?}");
        let mut token = String::from("k:");
        push_encoded(&mut token, input, TOKEN);
        assert_eq!(token, expected(token_safe, false), "{input:?}");
        if !input.is_empty() {
            let mut host = String::from("k:");
            push_host_segment(&mut host, Some(input));
            assert_eq!(host, expected(token_safe, true), "{input:?}");
        }
    }
    assert_eq!(host_segment(Some("Ex.COM")), "ex.com");
    assert_eq!(host_segment(None), "-");
    assert_eq!(query_segment(Some("")), "-");
}

#[test]
fn host_and_path_cannot_inject_segments_or_globs() {
    let key = url(Some("Evil:*.com"), "/a:b*?[x]\\%", None);
    assert_eq!(key, "http:evil%3A%2A.com:/a%3Ab%2A%3F%5Bx%5D%5C%25:-:GET");
    for c in ['*', '?', '[', ']', '\\'] {
        assert!(!key.contains(c), "{key}");
    }
    assert_eq!(key.matches(':').count(), 4);
    // One-to-one: an already-encoded path is not the same key as the decoded one.
    assert_ne!(url(None, "/a%2A", None), url(None, "/a*", None));
    // A host cannot contain `/`, so only the path segment starts with one.
    assert!(url(Some("a/b"), "/", None).starts_with("http:a%2Fb:/:"));
}

#[test]
fn patterns_match_exactly_what_they_name() {
    let matches =
        |pattern: &str, key: &str| impcache::glob_match(pattern.as_bytes(), key.as_bytes());
    let a = record_key(&url(Some("h"), "/users/1", None));
    let b = format!("{}:v:abc", url(Some("h"), "/users/1", None));
    let c = record_key(&url(Some("h"), "/users/10", None));
    let q = record_key(&url(Some("h"), "/users/1", Some("x=1")));
    let other = record_key(&url(Some("h"), "/a*", None));
    let p = url_pattern("http", Some("h"), "/users/1");
    assert!(matches(&p, &a) && matches(&p, &b));
    assert!(!matches(&p, &c) && !matches(&p, &q));
    assert!(matches(&url_pattern("http", None, "/users/1?x=1"), &q));
    let prefix = prefix_pattern("http", None, "/users/");
    assert!(matches(&prefix, &a) && matches(&prefix, &c) && matches(&prefix, &q));
    // A purge of `/a*` removes that literal path only, not `/ab`.
    let star = prefix_pattern("http", None, "/a*");
    assert!(matches(&star, &other));
    assert!(!matches(&star, &record_key(&url(Some("h"), "/ab", None))));
    // `*` as the host cannot match across into another path.
    assert!(!matches(
        &url_pattern("http", None, "/users"),
        &record_key(&url(Some("h"), "/x", None))
    ));
}

#[test]
fn variants_hash_the_named_header_values() {
    let base = url(None, "/", None);
    let mut en = HeaderMap::new();
    en.insert("accept-language", HeaderValue::from_static("en"));
    let mut fr = HeaderMap::new();
    fr.insert("accept-language", HeaderValue::from_static("fr"));
    let vary = [HeaderName::from_static("accept-language")];
    assert_eq!(variant_key(&base, &[], &en, false), record_key(&base));
    assert_ne!(
        variant_key(&base, &vary, &en, false),
        variant_key(&base, &vary, &fr, false)
    );
    assert_ne!(
        variant_key(&base, &vary, &HeaderMap::new(), false),
        variant_key(&base, &vary, &en, false)
    );
    let mut auth = HeaderMap::new();
    auth.insert("authorization", HeaderValue::from_static("Bearer a"));
    assert_eq!(variant_key(&base, &[], &auth, false), record_key(&base));
    assert_ne!(variant_key(&base, &[], &auth, true), record_key(&base));
    assert_eq!(
        variant_key(&base, &[], &HeaderMap::new(), true),
        record_key(&base)
    );
}

#[test]
fn url_keys_share_one_buffer_and_match_the_separate_builders() {
    for (host, path, query) in [
        (Some("Example.com"), "/users/1", Some("b=2&a=1")),
        (None, "", None),
        (Some("h"), "/a:b*", Some("")),
    ] {
        let keys = UrlKeys::new("http", host, path, query, &Method::HEAD);
        let url = url_key("http", host, path, query, &Method::HEAD);
        assert_eq!(keys.url(), url);
        assert_eq!(keys.record(), record_key(&url));
        assert_eq!(keys.record(), format!("{url}:v"));
        // The start a declared prefix's tag is scoped to, from the namespace and host segment.
        assert_eq!(
            keys.through_host(),
            through_host("http", keys.host_segment())
        );
    }
}

#[test]
fn the_plain_variant_is_the_record_exactly_when_is_plain_variant_says_so() {
    let base = url(None, "/", None);
    let vary = [HeaderName::from_static("accept-language")];
    let mut cookie = HeaderMap::new();
    cookie.insert("cookie", HeaderValue::from_static("sid=1"));
    let mut lang = HeaderMap::new();
    lang.insert("accept-language", HeaderValue::from_static("en"));
    for names in [&vary[..], &[]] {
        for headers in [&HeaderMap::new(), &cookie, &lang] {
            for credentials in [false, true] {
                let plain = is_plain_variant(names, headers, credentials);
                let key = variant_key(&base, names, headers, credentials);
                assert_eq!(plain, key == record_key(&base), "{names:?} {headers:?}");
                // A variant key is the record key plus `:{hash}`: inside the URL's pattern.
                assert!(key.starts_with(&record_key(&base)));
            }
        }
    }
}

#[test]
fn the_hosts_key_is_the_namespaces_and_host_segments_decode_back() {
    let keys = UrlKeys::new(
        "http",
        Some("Ex%am:ple.com"),
        "/a b",
        Some("b=2&a=1"),
        &Method::HEAD,
    );
    assert_eq!(keys.hosts_key(), "__impcache_hosts:http");
    assert_eq!(keys.hosts_key(), hosts_key("http"));
    // No purge pattern matches it.
    for pattern in [
        url_pattern("http", None, "/a b?b=2&a=1"),
        prefix_pattern("http", None, "/"),
        "http:*".to_owned(),
    ] {
        assert!(!impcache::glob_match(
            pattern.as_bytes(),
            keys.hosts_key().as_bytes()
        ));
    }
    // A segment decodes to the host that re-encodes to it.
    let host = host_of_segment(keys.host_segment());
    assert_eq!(host.as_deref(), Some("ex%am:ple.com"));
    let again = UrlKeys::new(
        "http",
        host.as_deref(),
        "/a b",
        Some("a=1&b=2"),
        &Method::HEAD,
    );
    assert_eq!(again.record(), keys.record());
    let none = UrlKeys::new("http", None, "/", None, &Method::GET);
    assert_eq!((none.host_segment(), host_of_segment("-")), ("-", None));
}
