//! Cache keys: how a request maps to entries, and the `delete_pattern` globs that purge them.
//!
//! Every key lives inside the cache's `{prefix}:{version}:` namespace. The part this crate adds is
//!
//! ```text
//! {namespace}:{host}:{path}:{query}:{method}:v              the URL's record (see below)
//! {namespace}:{host}:{path}:{query}:{method}:v:{vary-hash}  one entry per Vary (or credential) variant
//! ```
//!
//! The namespace is written with its `:` and `%` percent-encoded (`api:v2` is `api%3Av2`), so
//! that no namespace's keys start like another's.
//!
//! The record holds either the entry itself, when the response had no `Vary` and the request
//! carried no keyed credentials (the common case: a hit reads this one key), or a *Vary marker*:
//! the header names the URL's responses vary on (possibly none, when only credentialed variants
//! exist), which name the variant to read next.
//!
//! - `host` is lowercased; an absolute-form target's default port is left out
//!   (`http://example.com:80/` and `https://example.com:443/` name `example.com`: RFC 9110
//!   §4.2.3). A `Host` field's port is kept as sent: a request in origin form names no scheme,
//!   and a handler may build links or redirects from the field, so `Host: example.com:80` must
//!   not store its response under `example.com`, for every client (an unkeyed input).
//! - `host` and `path` are *percent-encoded* with every byte outside a small safe set escaped (`%`
//!   and `:` included, and all Redis glob characters `* ? [ ] \`), so user-controlled parts can
//!   neither add a `:` segment nor act as a wildcard in a purge pattern, and the encoding is
//!   one-to-one (no two requests share a key by accident).
//! - `query` is `-` without a query, else the first 128 bits, in hex, of the SHA-256 of the line
//!   `impcache-tower query 2\n` followed by each of the query's `&`-separated parameters and an
//!   `&` (`a=1&b=2&`), the parameters sorted by name, stably (so `?b=2&a=1` and `?a=1&b=2` share
//!   an entry, while `?x=1&x=2` and `?x=2&x=1` do not: the values of a repeated name keep their
//!   order). Names and values are compared as written (not percent-decoded).
//! - `vary-hash` is the SHA-256 (128 bits, hex) of the request's values of the headers that the
//!   response's `Vary` names (and of `Authorization`/`Cookie` when authenticated requests are cached).
//! - The request's content is in no key: a GET whose fields declare content, and a request of
//!   another stored method that carries content, are neither looked up nor stored (see
//!   [`CacheLayer::methods`](crate::CacheLayer::methods)).
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

/// Bytes escaped in the namespace segment: `:`, so that a namespace never reads as another's
/// followed by more segments, and `%`, so that the escaping is one to one.
const NAMESPACE: &AsciiSet = &AsciiSet::EMPTY.add(b':').add(b'%');

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// A layer's namespace as the first segment of its keys: as given, but with `:` and `%` escaped
/// (`%3A`, `%25`). Purges of namespace `api` (`api:*`, `api:*:/path*`) reached namespace
/// `api:v2`'s responses, whose keys started `api:v2:` (found by a probe).
pub(crate) fn namespace_segment(namespace: &str) -> String {
    let mut segment = String::with_capacity(namespace.len());
    push_encoded(&mut segment, namespace, NAMESPACE);
    segment
}

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

/// `host` (an absolute-form target's authority) without the default port of its `scheme`
/// (RFC 9110 §4.2.3: a default port is the same as none): `:80` of `http`, `:443` of `https`.
fn without_default_port<'a>(host: &'a str, scheme: &str) -> &'a str {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else if scheme.eq_ignore_ascii_case("http") {
        ":80"
    } else {
        return host;
    };
    match host.strip_suffix(default) {
        Some(name) if !name.is_empty() => name,
        _ => host,
    }
}

/// The host segment of keys for `host`, as [`UrlKeys`] writes it (`None`: `-`).
pub(crate) fn host_segment(host: Option<&str>) -> String {
    let mut out = String::new();
    push_host_segment(&mut out, host);
    out
}

/// A path (or path prefix) as the path segment of a key.
pub(crate) fn path_segment(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    push_path_segment(&mut out, path);
    out
}

/// The path segment: always starts with `/` (an empty path is `/`).
fn push_path_segment(out: &mut String, path: &str) {
    if !path.starts_with('/') {
        out.push('/');
    }
    push_encoded(out, path, PATH);
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

/// A path and query as in a request line, split at the first `?`.
pub(crate) fn split_path_and_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

/// The path a request's keys are made of (lookup, store, invalidation,
/// [`CacheLayer::request_key`](crate::CacheLayer::request_key)): the path the client sent. A
/// router `nest`ed under a prefix hands its layers the path without the prefix (`/x` for
/// `/a/x`), so that two nested routers with a route of the same path would share their keys,
/// and a purge of the URL the client sent would miss. With the `axum` feature, the prefix is put
/// back from the request's `axum::extract::OriginalUri`: when the path the layer sees is what
/// is left of the original one once a prefix is stripped, and only inside a nested router (its
/// `axum::extract::NestedPath` set). Any other change of the path (a middleware rewriting it)
/// is kept, as the query always is: the handler answers what it is given. (Outside a nest, a
/// rewrite to `/` or to a suffix of the path was taken for a nest's strip and keyed by the
/// original path: `X-Original-URL: /` applied by a middleware stored `/`'s response for every
/// client of `/static/app.js`, found by a probe.) Without the feature, the path the layer sees.
pub(crate) fn request_path<B>(request: &http::Request<B>) -> &str {
    let path = request.uri().path();
    #[cfg(feature = "axum")]
    {
        let extensions = request.extensions();
        let nested = extensions.get::<axum::extract::NestedPath>().is_some();
        if let Some(axum::extract::OriginalUri(original)) = extensions.get().filter(|_| nested) {
            let original = original.path();
            let stripped = original
                .strip_suffix(path)
                .or_else(|| (path == "/").then_some(original));
            if stripped.is_some_and(|prefix| !prefix.is_empty() && prefix.starts_with('/')) {
                return original;
            }
        }
    }
    path
}

/// The host a request names: the URI's authority (an absolute-form request target, or HTTP/2's
/// `:authority`), else the `Host` header, as the handler sees it (RFC 9112 §3.2.2); a request
/// whose `Host` disagrees with its target is not cached at all (`policy::host_unclear`, which
/// also bypasses a target with userinfo). Userinfo in the target's authority (`user:pw@`,
/// which RFC 9110 §4.2.4 deprecates for http URIs) is left out here: it names no other host;
/// so is the target's default port ([`without_default_port`]). A `Host` field is taken as sent.
pub(crate) fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let authority = uri.authority().map(without_userinfo);
    authority
        .map(|host| match uri.scheme_str() {
            Some(scheme) => without_default_port(host, scheme),
            None => host,
        })
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
}

/// A URL to purge given in absolute form (`http://example.com/a?b=1`, as in an absolute-form
/// request target, RFC 9112 §3.2.2): its authority, the host that a request with this target is
/// keyed by ([`request_host`]), and its path and query as that request's keys take them (the
/// scheme is in no key). `None` for anything else: a path and query as in an origin-form request
/// line (`/a?b=1`).
pub(crate) fn absolute_form(target: &str) -> Option<(String, String)> {
    let uri: http::Uri = target.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = without_default_port(without_userinfo(uri.authority()?), scheme);
    let authority = authority.to_owned();
    let path_and_query = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    Some((authority, path_and_query))
}

/// `authority` without its userinfo (`user:pw@example.com` → `example.com`).
pub(crate) fn without_userinfo(authority: &http::uri::Authority) -> &str {
    let authority = authority.as_str();
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// What a request target cannot hold as it is: controls, the space, and (always encoded by
/// `utf8_percent_encode`) every byte outside ASCII.
const NOT_IN_A_TARGET: &AsciiSet = &percent_encoding::CONTROLS.add(b' ');

/// A path (and query) given to a purge, as a client sends it: its non-ASCII characters, spaces
/// and controls percent-encoded (`/café` → `/caf%C3%A9`, the uppercase hex of browsers and
/// curl), so that it names the keys its requests were stored under, which hold the target as
/// sent. `purge_url("/café")` removed nothing and said `Ok(0)` (found by a probe). Anything
/// else is kept as given: an escape in lowercase hex names the requests sent that way.
pub(crate) fn as_sent(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    utf8_percent_encode(path_and_query, NOT_IN_A_TARGET).into()
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

/// `{namespace}:{host segment}:`, the start of every key of one host's URLs in `namespace`
/// ([`UrlKeys::through_host`] of each): what a declared prefix's tag is scoped to.
pub(crate) fn through_host(namespace: &str, host_segment: &str) -> String {
    [&namespace_segment(namespace), ":", host_segment, ":"].concat()
}

/// The start of the key of a namespace's list of hosts.
const HOSTS_PREFIX: &str = "__impcache_hosts:";

/// The key of the list of the hosts (their key segments) that stored responses in `namespace`:
/// `__impcache_hosts:{namespace}`, one key per namespace, outside the namespace's keys so that
/// no purge pattern matches it (a purge's count, and the keys a response takes, are the
/// responses' own). Written before each record when keys are by host (`store.rs`), read by
/// `purge_url` on any host, which reads each listed host's records instead of scanning the
/// keyspace; removed by `purge_all`.
pub(crate) fn hosts_key(namespace: &str) -> String {
    [HOSTS_PREFIX, &namespace_segment(namespace)].concat()
}

/// The host a key segment stands for (`-`: none), as [`UrlKeys::new`] takes it.
pub(crate) fn host_of_segment(segment: &str) -> Option<String> {
    if segment == "-" {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .into_owned(),
    )
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

/// Whether `key` is one of `url_key`'s: the URL key itself, its record, or one of its variants
/// (a flight is keyed by the URL key or by a variant key, `service.rs`).
pub(crate) fn is_of_url(key: &str, url_key: &str) -> bool {
    key.strip_prefix(url_key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(RECORD_SUFFIX))
}

/// The URL key and the record key of one request, built in one buffer (the record key is the
/// URL key plus `:v`).
#[derive(Debug, Clone)]
pub(crate) struct UrlKeys {
    record: String,
    url_len: usize,
    /// Where the host segment is in `record`.
    host: std::ops::Range<usize>,
    /// Where the path segment starts in `record`.
    path: usize,
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
        push_encoded(&mut record, namespace, NAMESPACE);
        record.push(':');
        let host_start = record.len();
        push_host_segment(&mut record, host);
        let host = host_start..record.len();
        record.push(':');
        let path_start = record.len();
        push_path_segment(&mut record, path);
        record.push(':');
        push_query_segment(&mut record, query);
        record.push(':');
        push_encoded(&mut record, method.as_str(), TOKEN);
        let url_len = record.len();
        record.push_str(RECORD_SUFFIX);
        UrlKeys {
            record,
            url_len,
            host,
            path: path_start,
        }
    }

    /// `{namespace}:{host}:`, the keys' start before the path segment.
    pub(crate) fn through_host(&self) -> &str {
        self.record.get(..self.path).unwrap_or_default()
    }

    /// The keys' rest from the path segment on (`{path}:{query}:{method}:v`): only the path
    /// segment can hold a `/`, so an encoded path prefix matches its start exactly when it
    /// matches the path.
    pub(crate) fn path_onwards(&self) -> &str {
        self.record.get(self.path..).unwrap_or_default()
    }

    /// The host segment of the keys (`-` for none).
    pub(crate) fn host_segment(&self) -> &str {
        self.record.get(self.host.clone()).unwrap_or("-")
    }

    /// The key of the list of the hosts of this URL's namespace (see [`hosts_key`]).
    pub(crate) fn hosts_key(&self) -> String {
        // The namespace's segment is what precedes the host segment's `:`.
        let namespace = self
            .record
            .get(..self.host.start.saturating_sub(1))
            .unwrap_or_default();
        [HOSTS_PREFIX, namespace].concat()
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
    let (path, query) = split_path_and_query(path_and_query);
    let mut pattern = pattern_through_path(namespace, host, path);
    pattern.push(':');
    push_query_segment(&mut pattern, query);
    pattern.push_str(":*");
    pattern
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
    let mut pattern = pattern_through_path(namespace, host, path_prefix);
    pattern.push('*');
    pattern
}

/// The start of a pattern: `{namespace}:{host}:{path}`, with `*` for any host.
fn pattern_through_path(namespace: &str, host: Option<&str>, path: &str) -> String {
    let mut pattern = impcache::escape_pattern(&namespace_segment(namespace));
    pattern.push(':');
    match host {
        // Only the path segment contains `/`, so `*` cannot reach past the host into another path.
        None => pattern.push('*'),
        Some(host) => push_host_segment(&mut pattern, Some(host)),
    }
    pattern.push(':');
    push_path_segment(&mut pattern, path);
    pattern
}

#[cfg(test)]
mod tests;
