//! Cache keys: how a request maps to entries, and the `delete_pattern` globs that purge them.
//!
//! Every key lives inside the cache's `{prefix}:{version}:` namespace. The part this crate adds is
//!
//! ```text
//! {namespace}:{host}:{path}:{query}:{method}:v              the URL's record (see below)
//! {namespace}:{host}:{path}:{query}:{method}:v:{vary-hash}  one entry per Vary (or credential) variant
//! ```
//!
//! The record holds either the entry itself, when the response had no `Vary` and the request
//! carried no keyed credentials (the common case: a hit reads this one key), or a *Vary marker*:
//! the header names the URL's responses vary on (possibly none, when only credentialed variants
//! exist), which name the variant to read next.
//!
//! - `host` and `path` are *percent-encoded* with every byte outside a small safe set escaped (`%`
//!   and `:` included, and all Redis glob characters `* ? [ ] \`), so user-controlled parts can
//!   neither add a `:` segment nor act as a wildcard in a purge pattern, and the encoding is
//!   one-to-one (no two requests share a key by accident).
//! - `query` is `-` without a query, else the first 128 bits of the SHA-256 of the query with its
//!   `&`-separated parameters sorted by name, stably (so `?b=2&a=1` and `?a=1&b=2` share an
//!   entry, while `?x=1&x=2` and `?x=2&x=1` do not: the values of a repeated name keep their
//!   order), in hex. Names and values are compared as written (not percent-decoded).
//! - `vary-hash` is the SHA-256 (128 bits, hex) of the request's values of the headers that the
//!   response's `Vary` names (and of `Authorization`/`Cookie` when authenticated requests are cached).
//!
//! Purging one URL removes all its methods and variants with one pattern,
//! [`url_pattern`] (`{namespace}:{host}:{path}:{query}:*`), and a whole subtree with
//! [`prefix_pattern`] (`{namespace}:{host}:{path-prefix}*`); the host may be `None` for "any host".

use http::{HeaderMap, HeaderName, Method};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// Bytes escaped in the path segment of a key: all but the ASCII letters and digits and
/// `-._~/!$&'()+,;=@` (non-ASCII bytes are always escaped).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

/// Bytes escaped in the host (once lowercased) and method segments: the path's and `/`, so only
/// the path starts with one.
const TOKEN: &AsciiSet = &PATH.add(b'/');

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` with the bytes of `escaped` as `%XX` (uppercase hex).
fn push_encoded(out: &mut String, s: &str, escaped: &'static AsciiSet) {
    out.extend(utf8_percent_encode(s, escaped));
}

/// The host segment: lowercased and encoded, `-` when the request names none.
fn push_host_segment(out: &mut String, host: Option<&str>) {
    match host {
        None | Some("") => out.push('-'),
        Some(host) if host.bytes().any(|b| b.is_ascii_uppercase()) => {
            push_encoded(out, &host.to_ascii_lowercase(), TOKEN);
        }
        Some(host) => push_encoded(out, host, TOKEN),
    }
}

fn host_segment(host: Option<&str>) -> String {
    let mut out = String::with_capacity(host.map_or(1, str::len));
    push_host_segment(&mut out, host);
    out
}

/// The path segment: always starts with `/` (an empty path is `/`).
fn push_path_segment(out: &mut String, path: &str) {
    if !path.starts_with('/') {
        out.push('/');
    }
    push_encoded(out, path, PATH);
}

fn path_segment(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    push_path_segment(&mut out, path);
    out
}

/// Appends the first 128 bits of `digest` in lowercase hex.
pub(crate) fn push_hex128(out: &mut String, digest: &[u8]) {
    for &b in digest.iter().take(16) {
        out.push(char::from(HEX_LOWER[usize::from(b >> 4)]));
        out.push(char::from(HEX_LOWER[usize::from(b & 0xf)]));
    }
}

/// The first input of every query hash: names the layout (parameters sorted by name, stably).
const QUERY_HASH_TAG: &[u8] = b"impcache-tower query 2\n";

/// The name of a `name=value` query parameter (all of it without `=`), as written.
fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

/// The query segment: `-` without a query, else the hash of its parameters sorted by name.
fn push_query_segment(out: &mut String, query: Option<&str>) {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        out.push('-');
        return;
    };
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    if params.is_empty() {
        out.push('-');
        return;
    }
    // By name only, and stably: the values of a repeated name keep their order (`?x=1&x=2` and
    // `?x=2&x=1` are different resources to most frameworks), while distinct names may come in
    // any order.
    params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    let mut hasher = Sha256::new();
    // A tag of this layout: keys of the earlier one (whole `name=value` pairs sorted, which put
    // the values of a repeated name in order) never match, so none of its entries is served.
    hasher.update(QUERY_HASH_TAG);
    for param in params {
        hasher.update(param.as_bytes());
        hasher.update(b"&");
    }
    push_hex128(out, &hasher.finalize());
}

fn query_segment(query: Option<&str>) -> String {
    let mut out = String::with_capacity(32);
    push_query_segment(&mut out, query);
    out
}

/// The host a request names: the `Host` header, else the URI's authority.
pub(crate) fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// The URL part of a key (without the cache's prefix and version): everything but the variant.
pub(crate) fn url_key(
    namespace: &str,
    host: Option<&str>,
    path: &str,
    query: Option<&str>,
    method: &Method,
) -> String {
    UrlKeys::new(namespace, host, path, query, method).into_url()
}

/// The suffix of a URL's record key.
const RECORD_SUFFIX: &str = ":v";

/// The key of a URL's record: its entry when the response had no `Vary`, else its Vary marker.
pub(crate) fn record_key(url_key: &str) -> String {
    let mut key = String::with_capacity(url_key.len() + RECORD_SUFFIX.len());
    key.push_str(url_key);
    key.push_str(RECORD_SUFFIX);
    key
}

/// The URL key and the record key of one request, built in one buffer (the record key is the
/// URL key plus `:v`).
#[derive(Debug, Clone)]
pub(crate) struct UrlKeys {
    record: String,
    url_len: usize,
}

impl UrlKeys {
    /// The keys of a URL (see [`url_key`]).
    pub(crate) fn new(
        namespace: &str,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        method: &Method,
    ) -> Self {
        // Room for the segments added beyond the namespace, host and path as given.
        let capacity = namespace.len() + host.map_or(1, str::len) + path.len() + 64;
        let mut record = String::with_capacity(capacity);
        record.push_str(namespace);
        record.push(':');
        push_host_segment(&mut record, host);
        record.push(':');
        push_path_segment(&mut record, path);
        record.push(':');
        push_query_segment(&mut record, query);
        record.push(':');
        push_encoded(&mut record, method.as_str(), TOKEN);
        let url_len = record.len();
        record.push_str(RECORD_SUFFIX);
        UrlKeys { record, url_len }
    }

    /// The URL key alone.
    fn into_url(mut self) -> String {
        self.record.truncate(self.url_len);
        self.record
    }

    /// The URL key (see [`url_key`]).
    pub(crate) fn url(&self) -> &str {
        self.record.get(..self.url_len).unwrap_or(&self.record)
    }

    /// The record key (see [`record_key`]).
    pub(crate) fn record(&self) -> &str {
        &self.record
    }
}

/// Whether [`variant_key`] is the [`record_key`] for these arguments: no `vary` names, and no
/// keyed credentials.
pub(crate) fn is_plain_variant(
    vary: &[HeaderName],
    headers: &HeaderMap,
    credentials: bool,
) -> bool {
    vary.is_empty()
        && !(credentials
            && (headers.contains_key(http::header::AUTHORIZATION)
                || headers.contains_key(http::header::COOKIE)))
}

/// The key of one variant: the request's values of the `vary` headers (and, when `credentials`,
/// of `Authorization` and `Cookie`), hashed; the [`record_key`] when there is nothing to hash
/// (see [`is_plain_variant`]).
pub(crate) fn variant_key(
    url_key: &str,
    vary: &[HeaderName],
    headers: &HeaderMap,
    credentials: bool,
) -> String {
    let credential_headers = [http::header::AUTHORIZATION, http::header::COOKIE];
    let keyed_credentials = credentials
        && credential_headers
            .iter()
            .any(|name| headers.contains_key(name));
    if vary.is_empty() && !keyed_credentials {
        return record_key(url_key);
    }
    let mut hasher = Sha256::new();
    let feed = |hasher: &mut Sha256, name: &HeaderName| {
        // Length-prefixed fields: no two different header sets hash the same input.
        hasher.update((name.as_str().len() as u64).to_le_bytes());
        hasher.update(name.as_str().as_bytes());
        let values = headers.get_all(name);
        hasher.update((values.iter().count() as u64).to_le_bytes());
        for value in values {
            hasher.update((value.as_bytes().len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
    };
    for name in vary {
        feed(&mut hasher, name);
    }
    if keyed_credentials {
        hasher.update(b"\xffcredentials");
        for name in &credential_headers {
            feed(&mut hasher, name);
        }
    }
    let mut key = String::with_capacity(url_key.len() + 35);
    key.push_str(url_key);
    key.push_str(":v:");
    push_hex128(&mut key, &hasher.finalize());
    key
}

/// The `delete_pattern` glob (inside the cache's prefix and version) matching every entry of one
/// URL: all methods and all `Vary` variants of `path_and_query` (as it appears in the request line,
/// percent-encoded), on `host`, or on any host when `None`.
///
/// ```
/// use impcache_tower::key::url_pattern;
/// assert_eq!(url_pattern("http", Some("example.com"), "/users/1"), "http:example.com:/users/1:-:*");
/// // glob characters in a path are encoded: they cannot widen the purge
/// assert_eq!(url_pattern("http", None, "/a*"), "http:*:/a%2A:-:*");
/// ```
pub fn url_pattern(namespace: &str, host: Option<&str>, path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    format!(
        "{}:{}:{}:{}:*",
        impcache::escape_pattern(namespace),
        host_pattern(host),
        path_segment(path),
        query_segment(query)
    )
}

/// The `delete_pattern` glob matching every entry whose path starts with `path_prefix` (all
/// queries, methods and variants), on `host`, or on any host when `None`.
///
/// The match is on the path text: `/users` also matches `/users-admin`; end the prefix with `/`
/// to purge a subtree only.
///
/// ```
/// use impcache_tower::key::prefix_pattern;
/// assert_eq!(prefix_pattern("http", None, "/users/"), "http:*:/users/*");
/// ```
pub fn prefix_pattern(namespace: &str, host: Option<&str>, path_prefix: &str) -> String {
    format!(
        "{}:{}:{}*",
        impcache::escape_pattern(namespace),
        host_pattern(host),
        path_segment(path_prefix)
    )
}

fn host_pattern(host: Option<&str>) -> String {
    match host {
        // Only the path segment contains `/`, so `*` cannot reach past the host into another path.
        None => "*".to_owned(),
        Some(host) => host_segment(Some(host)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

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
}
