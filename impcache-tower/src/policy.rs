//! What may be stored, for how long, and which requests may be answered from the cache.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Version};

/// One parsed `Cache-Control` header (all its fields), only the directives this layer reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    /// `must-revalidate`, or (a shared cache's) `proxy-revalidate`.
    pub(crate) must_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// `stale-while-revalidate=N` (RFC 5861), seconds.
    pub(crate) stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861), seconds.
    pub(crate) stale_if_error: Option<u64>,
    /// A request's `min-fresh=N`, seconds.
    pub(crate) min_fresh: Option<u64>,
    /// A request's `max-stale[=N]`, seconds: `u64::MAX` without an argument (any staleness).
    pub(crate) max_stale: Option<u64>,
    /// A request's `only-if-cached`.
    pub(crate) only_if_cached: bool,
}

/// The largest delta-seconds kept: RFC 9111 §1.2.2 asks a cache to use 2^31 for anything larger.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A delta-seconds argument (RFC 9111 §1.2.2), quoted or not: digits only (leading zeros are
/// fine; more than 2^31 counts as 2^31); anything else (`-1`, `'3600'`, `3600a`, none) is `0`,
/// which makes the response stale, as §4.2.1 advises for an invalid value.
fn delta_seconds(arg: Option<&str>) -> u64 {
    let Some(arg) = arg else { return 0 };
    let arg = arg
        .strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .unwrap_or(arg);
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    arg.parse::<u64>()
        .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS))
}

impl CacheControl {
    /// Parses every `Cache-Control` field of `headers`. Directive names are case-insensitive;
    /// quoted arguments may contain commas (`private="a, b"`). A directive with an argument that
    /// is not a number (`max-age=abc`) counts as `max-age=0`, as RFC 9111 §4.2.1 advises; a
    /// directive given twice counts with its smaller value (the most restrictive).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        Self::parse_field(headers, &header::CACHE_CONTROL).unwrap_or_default()
    }

    /// Parses every field `name` of `headers` (`Cache-Control`, or a targeted field of RFC 9213
    /// such as `CDN-Cache-Control`, whose dictionary syntax reads the same); `None` when there is
    /// no such field.
    pub(crate) fn parse_field(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        let mut cc = CacheControl::default();
        for value in values {
            let Ok(value) = value.to_str() else {
                // Unreadable: be safe.
                cc.no_store = true;
                continue;
            };
            for directive in split_directives(value) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n, Some(a)),
                    None => (directive, None),
                };
                let least = |current: Option<u64>| {
                    let seconds = delta_seconds(arg);
                    Some(current.map_or(seconds, |m| m.min(seconds)))
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "must-understand" => cc.must_understand = true,
                    "max-age" => cc.max_age = least(cc.max_age),
                    "s-maxage" => cc.s_maxage = least(cc.s_maxage),
                    "stale-while-revalidate" => {
                        cc.stale_while_revalidate = least(cc.stale_while_revalidate)
                    }
                    "stale-if-error" => cc.stale_if_error = least(cc.stale_if_error),
                    "min-fresh" => cc.min_fresh = least(cc.min_fresh),
                    // Without an argument: stale by any amount (RFC 9111 §5.2.1.2).
                    "max-stale" if arg.is_none() => cc.max_stale = cc.max_stale.or(Some(u64::MAX)),
                    "max-stale" => cc.max_stale = least(cc.max_stale),
                    "only-if-cached" => cc.only_if_cached = true,
                    _ => {}
                }
            }
        }
        Some(cc)
    }
}

/// Splits on commas outside double quotes.
pub(crate) fn split_directives(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Why a request is not answered from the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bypass {
    Method,
    Credentials,
    Range,
    /// A request to switch protocols (`Upgrade`: a WebSocket's handshake, say; see
    /// `asks_to_switch`): answered by its handler, never from a stored response of its URL.
    Upgrade,
    RequestNoStore,
    /// A request of a stored method that carries content: the key cannot hold it.
    RequestContent,
    /// A request whose host is not one the key can hold as the handler sees it: a target's
    /// authority and a `Host` field that disagree, and the like (see `host_unclear`).
    TwoHosts,
}

impl Bypass {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Credentials => "credentials",
            Bypass::Range => "range",
            Bypass::Upgrade => "upgrade",
            Bypass::RequestNoStore => "request-no-store",
            Bypass::RequestContent => "request-content",
            Bypass::TwoHosts => "host-mismatch",
        }
    }
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    SetCookie,
    NoStore,
    Private,
    NoCache,
    VaryStar,
    PartialContent,
    ZeroTtl,
    TooLarge,
    Trailers,
    BodyError,
    /// The body is not the length its `Content-Length` declares.
    LengthMismatch,
    Head,
    /// `Content-Type: text/event-stream`: a live stream of events, not a document.
    EventStream,
    /// The origin mode: a response to a request with `Authorization` that does not say a shared
    /// cache may store it (RFC 9111 §3.5).
    Authorization,
}

impl NotStored {
    /// Whether the response failed (its body broke, or is not the length it declares): a
    /// stale response it answers for stands in, where any other reason replaces it.
    pub(crate) fn is_failure(self) -> bool {
        matches!(self, NotStored::BodyError | NotStored::LengthMismatch)
    }

    pub(crate) fn detail(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::SetCookie => "set-cookie",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::NoCache => "no-cache",
            NotStored::VaryStar => "vary-star",
            NotStored::PartialContent => "partial-content",
            NotStored::ZeroTtl => "zero-ttl",
            NotStored::TooLarge => "too-large",
            NotStored::Trailers => "trailers",
            NotStored::BodyError => "body-error",
            NotStored::LengthMismatch => "length-mismatch",
            NotStored::Head => "head",
            NotStored::EventStream => "event-stream",
            NotStored::Authorization => "authorization",
        }
    }
}

/// Why a stale response was served: the `detail` of its `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Within stale-while-revalidate: a background call refreshes it.
    Revalidating,
    /// The handler returned an error.
    HandlerError,
    /// The handler answered with this status, one of the stale-if-error statuses.
    HandlerStatus(StatusCode),
    /// The handler took longer than the handler timeout (or the hard timeout).
    HandlerTimeout,
    /// The handler took longer than the soft timeout; its call goes on in the background.
    SoftTimeout,
    /// Within the fail-safe throttle of a failed handler call: the handler is not called.
    Throttled,
}

impl Why {
    /// The `detail` of `Cache-Status`.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Why::Revalidating => "revalidating",
            Why::HandlerError => "handler-error",
            Why::HandlerStatus(_) => "handler-status",
            Why::HandlerTimeout => "handler-timeout",
            Why::SoftTimeout => "soft-timeout",
            Why::Throttled => "fail-safe-throttle",
        }
    }
}

impl Why {
    /// Whether the request went to the handler before the stale response answered for it
    /// (RFC 9211: then not a `hit`, which means "not forwarded").
    pub(crate) fn forwarded(self) -> bool {
        match self {
            Why::Revalidating | Why::Throttled => false,
            Why::HandlerError | Why::HandlerStatus(_) | Why::HandlerTimeout | Why::SoftTimeout => {
                true
            }
        }
    }
}

/// How a request is handled, before any cache access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestPlan {
    /// Straight to the handler; nothing read or stored.
    Bypass(Bypass),
    /// A HEAD request: answered from the GET entry, never stored. `limits`: as for a lookup.
    Head { limits: Limits },
    /// Looked up, and stored on a miss. `refresh`: skip the lookup (the client's `no-cache`, when
    /// request directives are honoured) but store the fresh response; `limits`: the client's
    /// other directives, when honoured.
    Lookup { refresh: bool, limits: Limits },
}

/// What a client's request `Cache-Control` asks of a stored response (RFC 9111 §5.2.1), when
/// [`honor_request_cache_control`](crate::CacheLayer::honor_request_cache_control) is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `max-age=N`: no older than `N` seconds.
    pub(crate) max_age: Option<u64>,
    /// `min-fresh=N`: fresh for at least `N` more seconds.
    pub(crate) min_fresh: Option<u64>,
    /// `max-stale[=N]`: a stale response is taken too, up to `N` seconds past its freshness
    /// (`u64::MAX`: any). It never widens a stale window: it keeps the stale-while-revalidate
    /// window open to a request that sets `max-age` or `min-fresh` (see
    /// [`accept_stale`](Self::accept_stale)), and bounds it.
    pub(crate) max_stale: Option<u64>,
    /// `only-if-cached`: a stored response or `504`, never the handler.
    pub(crate) only_if_cached: bool,
}

impl Limits {
    /// Whether the fresh stored `entry` may answer at `now_ms` (nothing computed when the request
    /// set no bound).
    pub(crate) fn accept_entry(&self, entry: &crate::entry::Entry, now_ms: u64) -> bool {
        if self.max_age.is_none() && self.min_fresh.is_none() {
            return true;
        }
        let age = entry.age_secs(now_ms);
        self.accept(age, entry.ttl_left(age))
    }

    /// Whether a fresh stored response of age `age` with `ttl_left` seconds of freshness
    /// (`None`: no expiry), as [`Entry::ttl_left`](crate::entry::Entry::ttl_left) gives them,
    /// may answer. `max-stale=N` lowers what `min-fresh` asks by `N` (as squid reads the two
    /// together, and as [`accept_stale`](Self::accept_stale) does past the freshness).
    pub(crate) fn accept(&self, age: u64, ttl_left: Option<u64>) -> bool {
        let young = self.max_age.is_none_or(|max_age| age <= max_age);
        let fresh = match (self.min_fresh, ttl_left) {
            (Some(min_fresh), Some(left)) => {
                left.saturating_add(self.max_stale.unwrap_or(0)) >= min_fresh
            }
            _ => true,
        };
        young && fresh
    }

    /// Whether the stored `entry`, `past` its freshness at `now_ms`, may answer from its
    /// stale-while-revalidate window. A request that sets none of `max-age`, `min-fresh`,
    /// `max-stale` takes it (the window is the server's or the origin's permission). One that sets
    /// `max-age` or `min-fresh` asks for a fresh response (RFC 9111 §5.2.1.1, §5.2.1.3) unless it
    /// also sets `max-stale`; `max-stale=N` takes a response at most `N` seconds past its
    /// freshness, `min-fresh` counting against it, and `max-age` still bounds its age.
    pub(crate) fn accept_stale(
        &self,
        entry: &crate::entry::Entry,
        now_ms: u64,
        past: Duration,
    ) -> bool {
        let Some(max_stale) = self.max_stale else {
            return self.max_age.is_none() && self.min_fresh.is_none();
        };
        let young = self
            .max_age
            .is_none_or(|max_age| entry.age_secs(now_ms) <= max_age);
        let asked = past.saturating_add(Duration::from_secs(self.min_fresh.unwrap_or(0)));
        young && asked <= Duration::from_secs(max_stale)
    }
}

/// The body length a message's `Content-Length` declares.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether a request carries content: a `Content-Length` other than 0 or a `Transfer-Encoding`;
/// over HTTP/2 and HTTP/3, any request without a `Content-Length` of 0. The body itself is not
/// asked (its size hint): that would bind the layer to request bodies that are
/// [`http_body::Body`]s, and `Request<()>` services would no longer fit. An HTTP/1 request with
/// content always has one of the two fields; an HTTP/2 one may have neither (its content ends
/// with its stream), so there only a declared empty body is known to be none: one client's
/// content must never pick the answer stored for everyone.
fn carries_content(version: Version, headers: &HeaderMap) -> bool {
    let framed_by_its_stream = version >= Version::HTTP_2;
    declares_content(headers)
        || (framed_by_its_stream && !headers.contains_key(header::CONTENT_LENGTH))
}

/// Whether a request declares content in its fields: a `Content-Length` other than 0, or a
/// `Transfer-Encoding` (what HTTP/1.1 frames a body with).
fn declares_content(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|_| declared_length(headers) != Some(0))
        || headers.contains_key(header::TRANSFER_ENCODING)
}

/// Whether a request's host is not one the key can hold as its handler sees it, so that the
/// response a handler reading `Host` makes would be stored for every client of another host:
/// - a target with an authority (absolute form, or HTTP/2's `:authority`) and a `Host` field
///   that disagrees with the host the key takes from it (RFC 9112 §3.2.2; RFC 9113 §8.3.1 has
///   an HTTP/2 server treat such a request as malformed), compared without case, each `Host`
///   field if several: the target's default port is left out of the key
///   (`key::request_host`), so `http://a.example:80/` with `Host: a.example:80` is one (it was
///   stored under `a.example`, found by a probe);
/// - userinfo in the target's authority (`http://x@a.example/`, which RFC 9110 §4.2.4 has a
///   recipient treat as an error): left out of the key, it reached the handler's URI;
/// - more than one `Host` field (RFC 9112 §3.2 makes it a 400): the key took the first, a
///   handler may take another.
///
/// A target without a `Host` field (HTTP/2's, or a request made in process) is keyed by the
/// target's host.
fn host_unclear(uri: &http::Uri, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return true;
    }
    let Some(authority) = uri.authority() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return true;
    }
    let keyed = crate::key::request_host(uri, headers).unwrap_or_default();
    first.is_some_and(|host| !host.as_bytes().eq_ignore_ascii_case(keyed.as_bytes()))
}

/// Whether a request asks to switch protocols (a WebSocket handshake, say) as its handler may:
/// an HTTP/1.1 `Upgrade` naming a protocol other than `h2c`. An HTTP/1.0 request's `Upgrade` is
/// ignored (RFC 9110 §7.8), and so is an offer of HTTP/2 alone (`curl --http2`, Java's
/// `HttpClient` on every plain-http request), which hyper does not take: such a request is
/// answered as the GET it is.
fn asks_to_switch(version: http::Version, headers: &HeaderMap) -> bool {
    version == http::Version::HTTP_11
        && headers.get_all(header::UPGRADE).iter().any(|value| {
            // Unreadable: taken as a protocol, a switch the cache must stay out of.
            value.to_str().map_or(true, |value| {
                value.split(',').any(|protocol| {
                    let name = protocol.split('/').next().unwrap_or_default().trim();
                    !name.is_empty() && !name.eq_ignore_ascii_case("h2c")
                })
            })
        })
}

/// The request-side rules, for `request`.
pub(crate) fn plan_request<B>(
    request: &http::Request<B>,
    methods: &[Method],
    allow_authenticated: bool,
    honor_request_cache_control: bool,
) -> RequestPlan {
    let (method, headers) = (request.method(), request.headers());
    let head = method == Method::HEAD && methods.contains(&Method::GET);
    if !head && !methods.contains(method) {
        return RequestPlan::Bypass(Bypass::Method);
    }
    // A stored method with request content (`QUERY`, `POST`): its response depends on the
    // content, which the key cannot hold (reading it would mean buffering a body the handler
    // reads). HEAD is answered as a GET. A GET's content has no meaning (RFC 9110 §9.3.1), but
    // a handler may read it (axum's do): a GET declaring content is bypassed too, or its
    // response, made from it, was stored for every client of the URL (found by a probe).
    // Declaring: over HTTP/2 a GET without `Content-Length` is taken as one without content.
    let content = if method == Method::GET {
        declares_content(headers)
    } else {
        carries_content(request.version(), headers)
    };
    if !head && content {
        return RequestPlan::Bypass(Bypass::RequestContent);
    }
    if host_unclear(request.uri(), headers) {
        return RequestPlan::Bypass(Bypass::TwoHosts);
    }
    // One pass over the names: cheaper than three lookups for the few fields a request has.
    let (mut credentials, mut range, mut upgrade) = (false, false, false);
    for name in headers.keys() {
        credentials |= name == header::AUTHORIZATION || name == header::COOKIE;
        range |= name == header::RANGE;
        upgrade |= name == header::UPGRADE;
    }
    if upgrade && asks_to_switch(request.version(), headers) {
        return RequestPlan::Bypass(Bypass::Upgrade);
    }
    if credentials && !allow_authenticated {
        return RequestPlan::Bypass(Bypass::Credentials);
    }
    if range {
        return RequestPlan::Bypass(Bypass::Range);
    }
    let mut refresh = false;
    let mut limits = Limits::default();
    if honor_request_cache_control {
        let cc = CacheControl::parse(headers);
        if cc.no_store {
            return RequestPlan::Bypass(Bypass::RequestNoStore);
        }
        // `Pragma: no-cache` counts only without `Cache-Control` (RFC 9111 §5.4), as a
        // directive of its own (not `no-cache-please`).
        let pragma_no_cache = !headers.contains_key(header::CACHE_CONTROL)
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
                })
            });
        refresh = cc.no_cache || cc.max_age == Some(0) || pragma_no_cache;
        limits = Limits {
            max_age: cc.max_age,
            min_fresh: cc.min_fresh,
            max_stale: cc.max_stale,
            only_if_cached: cc.only_if_cached,
        };
    }
    if head {
        return if refresh {
            RequestPlan::Bypass(Bypass::RequestNoStore)
        } else {
            RequestPlan::Head { limits }
        };
    }
    RequestPlan::Lookup { refresh, limits }
}

/// Whether the response's `Content-Type` is `text/event-stream` (parameters and case aside).
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The response-side rules of the default mode, for a response with `status` and `headers`
/// that arrived at `response_ms`: `Ok(ttl)` when it may be stored (`None`: no expiry), the
/// reason otherwise. The body size is checked separately, while buffering.
pub(crate) fn storable(
    (status, headers, response_ms): (StatusCode, &HeaderMap, u64),
    statuses: &[StatusCode],
    expire: Option<Duration>,
    max_ttl: Option<Duration>,
) -> Result<Option<Duration>, NotStored> {
    if status == StatusCode::PARTIAL_CONTENT || headers.contains_key(header::CONTENT_RANGE) {
        return Err(NotStored::PartialContent);
    }
    // A 304 answers one client's conditional request and has no body (RFC 9111 §3): stored, it
    // would be served empty to every client. A 429 "MUST NOT be stored by a cache" (RFC 6585
    // §4). Never stored, even when listed.
    if status == StatusCode::NOT_MODIFIED
        || status == StatusCode::TOO_MANY_REQUESTS
        || !statuses.contains(&status)
    {
        return Err(NotStored::Status);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    // Server-sent events never end: stored, a copy would hold the requests that join its flight
    // for a whole `lock_timeout`, then replay old events. (tower-http's compression skips them
    // by default too.)
    if is_event_stream(headers) {
        return Err(NotStored::EventStream);
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if cc.no_cache {
        return Err(NotStored::NoCache);
    }
    if vary_names(headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    // s-maxage is for shared caches (this is one) and wins over max-age, which wins over
    // `Expires` (RFC 9111 §4.2.1; nginx reads them the same way).
    let origin = cc
        .s_maxage
        .or(cc.max_age)
        .or_else(|| expires_left(headers, response_ms / 1000))
        .map(Duration::from_secs);
    let ttl = [expire, origin, max_ttl].into_iter().flatten().min();
    // A layer's sub-second `expire` is stored (its key lives that long, and the entry records
    // it to the millisecond; `Age` and `Cache-Status` show whole seconds).
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(NotStored::ZeroTtl);
    }
    Ok(ttl)
}

/// The header names the response's `Vary` lists (and `Accept-Encoding` for a response in a
/// content coding), lowercased, sorted and deduplicated; `None` for
/// `Vary: *` (or an unreadable `Vary`).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let value = value.to_str().ok()?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?);
        }
    }
    // A response in a content coding varies by `Accept-Encoding` whether it says so or not
    // (tower-http's `ServeDir::precompressed_*` before tower-http#692 did not): stored without
    // it, it would answer a client that does not accept the coding.
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| !c.trim().is_empty() && !c.trim().eq_ignore_ascii_case("identity"));
    if encoded {
        names.push(header::ACCEPT_ENCODING);
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), and any header the `Connection` field names, are not
/// stored; neither is `Age` (it is recomputed on every hit) nor any cache status header.
pub(crate) fn stored_headers(headers: &HeaderMap, status_names: &[HeaderName]) -> HeaderMap {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    let connection_named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "age"
            || n == "set-cookie"
            || status_names.contains(name)
            || connection_named.iter().any(|c| c == n)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// An entity-tag (RFC 9110 §8.8.3): weak (`W/`) or strong, and its opaque tag, the characters
/// between its double quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntityTag<'a> {
    pub(crate) weak: bool,
    pub(crate) opaque: &'a [u8],
}

impl<'a> EntityTag<'a> {
    /// The entity-tag of an `ETag` field value (whitespace around it is fine); `None` when the
    /// value is not one entity-tag (unquoted, unterminated, a character outside `etagc`, text
    /// after it).
    pub(crate) fn parse(value: &'a [u8]) -> Option<Self> {
        match EntityTag::prefix(trim_ows(value))? {
            (tag, []) => Some(tag),
            _ => None,
        }
    }

    /// The entity-tag `input` starts with, and what follows it: `W/` (case-sensitive) or
    /// nothing, then a double-quoted opaque tag of `etagc` (`!`, `#` to `~`, obs-text: commas
    /// included, no space and no other quote).
    fn prefix(input: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (weak, rest) = match input.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let quoted = rest.strip_prefix(b"\"")?;
        let end = quoted.iter().position(|&b| b == b'"')?;
        let (opaque, rest) = quoted.split_at(end);
        let etagc = |b: u8| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80;
        if !opaque.iter().all(|&b| etagc(b)) {
            return None;
        }
        Some((EntityTag { weak, opaque }, rest.get(1..)?))
    }

    /// Weak comparison (RFC 9110 §8.8.3.2): the same opaque tag, either of them weak or not.
    pub(crate) fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// Optional whitespace (RFC 9110 §5.6.3): spaces and horizontal tabs.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `value` without optional whitespace at its start.
fn trim_start_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(value.len());
    value.get(start..).unwrap_or_default()
}

/// `value` without optional whitespace at either end.
fn trim_ows(value: &[u8]) -> &[u8] {
    let value = trim_start_ows(value);
    let end = value.iter().rposition(|&b| !is_ows(b)).map_or(0, |i| i + 1);
    value.get(..end).unwrap_or_default()
}

/// Whether the request's `If-None-Match` matches a current response whose `ETag` is `etag`,
/// if it has one (RFC 9110 §13.1.2). The field, all its lines, is `*` alone or a list of
/// entity-tags (§5.6.1: empty members and whitespace around members are fine; a comma inside
/// the quotes belongs to the tag, `"a,b"`). `*` matches any current response, with or without
/// an `ETag`; a list matches when one of its tags equals `etag` (weak comparison), so never
/// when `etag` is missing or not an entity-tag. A field that is neither (an unquoted or
/// unterminated tag, text after a tag, `*` among tags) matches nothing, whatever its other
/// members: the request is then answered in full.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
    let etag = etag.and_then(|etag| EntityTag::parse(etag.as_bytes()));
    let (mut members, mut star, mut matched) = (0usize, false, false);
    for line in headers.get_all(header::IF_NONE_MATCH) {
        let mut rest = line.as_bytes();
        loop {
            // Empty members and the whitespace before a member.
            let start = rest.iter().position(|&b| b != b',' && !is_ows(b));
            let Some(member) = start.and_then(|start| rest.get(start..)) else {
                break;
            };
            let after = if let Some(after) = member.strip_prefix(b"*") {
                star = true;
                after
            } else {
                let Some((tag, after)) = EntityTag::prefix(member) else {
                    return false;
                };
                matched |= etag.as_ref().is_some_and(|etag| tag.weak_eq(etag));
                after
            };
            members += 1;
            // A member ends at a comma (or the end of the line).
            rest = trim_start_ows(after);
            if !rest.is_empty() && !rest.starts_with(b",") {
                return false;
            }
        }
    }
    if star {
        members == 1
    } else {
        matched
    }
}

/// The freshness lifetime (s) a response's `Expires` gives, when it has one: `Expires` minus
/// `Date`, else minus `now_secs` (RFC 9111 §4.2.1). An invalid `Expires` (`0`, a bad date) means
/// "already expired" (§5.3): 0.
pub(crate) fn expires_lifetime(headers: &HeaderMap, now_secs: u64) -> Option<u64> {
    headers.contains_key(header::EXPIRES).then(|| {
        date_secs(headers, &header::EXPIRES).map_or(0, |expires| {
            expires.saturating_sub(date_secs(headers, &header::DATE).unwrap_or(now_secs))
        })
    })
}

/// The time (s) a response's `Expires` leaves it, when it has one (the default mode's TTL,
/// which takes no age off `max-age`): `Expires` minus the later of `Date` and `now_secs`, as
/// nginx reads it; a `Date` older than now (a response that waited in another cache) does not
/// lengthen it, one ahead of now (a skewed clock) does not either. 0 for an invalid `Expires`.
pub(crate) fn expires_left(headers: &HeaderMap, now_secs: u64) -> Option<u64> {
    let lifetime = expires_lifetime(headers, now_secs)?;
    let date = date_secs(headers, &header::DATE).unwrap_or(now_secs);
    Some(lifetime.saturating_sub(now_secs.saturating_sub(date)))
}

/// An HTTP-date field in seconds since the Unix epoch; `None` when absent or invalid.
pub(crate) fn date_secs(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Whether a stored response whose fields are `stored` was not modified since the request's
/// `If-Modified-Since` (RFC 9110 §13.1.3): its `Last-Modified` is no later than that date. False
/// when either is missing or not a valid HTTP-date, or the request has more than one
/// `If-Modified-Since` line (which §13.1.3 says to ignore). Asked only of a request without
/// `If-None-Match`, which takes precedence (§13.2.2).
pub(crate) fn not_modified_since(request: &HeaderMap, stored: &HeaderMap) -> bool {
    // One lookup for a request without the field (every hit asks), then its one line's date.
    let mut lines = request.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(_), None) = (lines.next(), lines.next()) else {
        return false;
    };
    let Some(since) = date_secs(request, &header::IF_MODIFIED_SINCE) else {
        return false;
    };
    date_secs(stored, &header::LAST_MODIFIED).is_some_and(|modified| modified <= since)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    /// An HTTP/1.1 request `method /` with the fields `pairs`.
    fn request(method: Method, pairs: &[(&'static str, &'static str)]) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = method;
        *request.headers_mut() = headers(pairs);
        request
    }

    #[test]
    fn cache_control_directives_parse_with_quotes_and_case() {
        let cc = CacheControl::parse(&headers(&[
            (
                "cache-control",
                "Public, MAX-AGE=30, private=\"a, no-store\"",
            ),
            ("cache-control", "s-maxage=\"10\""),
        ]));
        assert!(cc.private && !cc.no_store);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(30), Some(10)));
        assert_eq!(
            CacheControl::parse(&headers(&[("cache-control", "max-age=x")])).max_age,
            Some(0)
        );
    }

    #[test]
    fn ttl_is_the_least_of_expire_origin_and_cap() {
        let s = |n| Some(Duration::from_secs(n));
        let ok = [StatusCode::OK];
        let ttl = |h: &[(&'static str, &'static str)], expire, cap| {
            storable((StatusCode::OK, &headers(h), 0), &ok, expire, cap)
        };
        assert_eq!(ttl(&[], s(60), None), Ok(s(60)));
        assert_eq!(
            ttl(&[("cache-control", "max-age=10")], s(60), None),
            Ok(s(10))
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=600")], s(60), None),
            Ok(s(60))
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=5, s-maxage=20")], s(60), None),
            Ok(s(20))
        );
        assert_eq!(ttl(&[], s(60), s(30)), Ok(s(30)));
        assert_eq!(ttl(&[], None, None), Ok(None));
        assert_eq!(
            ttl(&[("cache-control", "max-age=0")], s(60), None),
            Err(NotStored::ZeroTtl)
        );
        // Without max-age, `Expires` − `Date` lowers it too (nginx's reading); an `Expires` in
        // the past, or invalid ("already expired"), stores nothing.
        let date = "Thu, 01 Jan 2026 00:00:00 GMT";
        let in_ten = [("date", date), ("expires", "Thu, 01 Jan 2026 00:00:10 GMT")];
        assert_eq!(ttl(&in_ten, s(60), None), Ok(s(10)));
        let in_an_hour = [("date", date), ("expires", "Thu, 01 Jan 2026 01:00:00 GMT")];
        assert_eq!(ttl(&in_an_hour, s(60), None), Ok(s(60)));
        let with_max_age = [in_ten[0], in_ten[1], ("cache-control", "max-age=30")];
        assert_eq!(ttl(&with_max_age, s(60), None), Ok(s(30)));
        for past in ["Thu, 01 Jan 1970 00:00:00 GMT", "0", "soon"] {
            assert_eq!(
                ttl(&[("expires", past)], s(60), None),
                Err(NotStored::ZeroTtl),
                "{past}"
            );
        }
    }

    #[test]
    fn unsafe_responses_are_refused() {
        let ok = [StatusCode::OK];
        let check = |status, h: &[(&'static str, &'static str)]| {
            storable((status, &headers(h), 0), &ok, None, None).err()
        };
        assert_eq!(
            check(StatusCode::UNAUTHORIZED, &[]),
            Some(NotStored::Status)
        );
        assert_eq!(
            check(StatusCode::PARTIAL_CONTENT, &[]),
            Some(NotStored::PartialContent)
        );
        assert_eq!(
            check(StatusCode::OK, &[("content-range", "bytes 0-1/2")]),
            Some(NotStored::PartialContent)
        );
        assert_eq!(
            check(StatusCode::OK, &[("set-cookie", "s=1")]),
            Some(NotStored::SetCookie)
        );
        assert_eq!(
            check(StatusCode::OK, &[("cache-control", "no-store")]),
            Some(NotStored::NoStore)
        );
        assert_eq!(
            check(StatusCode::OK, &[("cache-control", "private")]),
            Some(NotStored::Private)
        );
        assert_eq!(
            check(StatusCode::OK, &[("cache-control", "no-cache")]),
            Some(NotStored::NoCache)
        );
        assert_eq!(
            check(StatusCode::OK, &[("vary", "accept, *")]),
            Some(NotStored::VaryStar)
        );
        assert_eq!(
            check(
                StatusCode::OK,
                &[("content-type", "Text/Event-Stream; charset=utf-8")]
            ),
            Some(NotStored::EventStream)
        );
        assert_eq!(
            check(StatusCode::OK, &[("content-type", "text/event-streams")]),
            None
        );
        assert_eq!(
            check(StatusCode::OK, &[("vary", "Accept-Language, accept")]),
            None
        );
    }

    #[test]
    fn requests_are_planned() {
        let m = [Method::GET];
        let plan = |method: Method, h: &[(&'static str, &'static str)], auth, honor| {
            plan_request(&request(method, h), &m, auth, honor)
        };
        assert_eq!(
            plan(Method::GET, &[], false, false),
            RequestPlan::Lookup {
                refresh: false,
                limits: Limits::default()
            }
        );
        assert_eq!(
            plan(Method::HEAD, &[], false, false),
            RequestPlan::Head {
                limits: Limits::default()
            }
        );
        assert_eq!(
            plan(Method::POST, &[], false, false),
            RequestPlan::Bypass(Bypass::Method)
        );
        assert_eq!(
            plan(Method::GET, &[("cookie", "a=1")], false, false),
            RequestPlan::Bypass(Bypass::Credentials)
        );
        assert_eq!(
            plan(Method::GET, &[("authorization", "Bearer x")], true, false),
            RequestPlan::Lookup {
                refresh: false,
                limits: Limits::default()
            }
        );
        assert_eq!(
            plan(Method::GET, &[("cache-control", "no-cache")], false, false),
            RequestPlan::Lookup {
                refresh: false,
                limits: Limits::default()
            }
        );
        assert_eq!(
            plan(Method::GET, &[("cache-control", "no-cache")], false, true),
            RequestPlan::Lookup {
                refresh: true,
                limits: Limits::default()
            }
        );
        assert_eq!(
            plan(Method::GET, &[("pragma", "no-cache")], false, true),
            RequestPlan::Lookup {
                refresh: true,
                limits: Limits::default()
            }
        );
        // Ignored beside `Cache-Control` (RFC 9111 §5.4), and only as its own directive.
        for headers in [
            &[("pragma", "no-cache"), ("cache-control", "max-stale")][..],
            &[("pragma", "no-cache-please")][..],
        ] {
            let planned = plan(Method::GET, headers, false, true);
            assert!(
                matches!(planned, RequestPlan::Lookup { refresh: false, .. }),
                "{headers:?}: {planned:?}"
            );
        }
        assert_eq!(
            plan(Method::GET, &[("cache-control", "no-store")], false, true),
            RequestPlan::Bypass(Bypass::RequestNoStore)
        );
        let limits = Limits {
            max_age: Some(5),
            min_fresh: Some(10),
            max_stale: None,
            only_if_cached: true,
        };
        let directives = [("cache-control", "max-age=5, min-fresh=10, only-if-cached")];
        assert_eq!(
            plan(Method::GET, &directives, false, true),
            RequestPlan::Lookup {
                refresh: false,
                limits
            }
        );
        assert_eq!(
            plan(Method::HEAD, &directives, false, true),
            RequestPlan::Head { limits }
        );
        assert_eq!(
            plan(Method::GET, &directives, false, false),
            RequestPlan::Lookup {
                refresh: false,
                limits: Limits::default()
            }
        );
        assert!(limits.accept(5, Some(10)));
        assert!(!limits.accept(6, Some(10)));
        assert!(!limits.accept(5, Some(9)));
        assert!(limits.accept(0, None));
    }

    /// `max-stale` without an argument is any staleness; with one, the smallest counts.
    #[test]
    fn max_stale_parses_with_and_without_an_argument() {
        let max_stale = |value: &'static str| {
            CacheControl::parse(&headers(&[("cache-control", value)])).max_stale
        };
        assert_eq!(max_stale("max-age=5"), None);
        assert_eq!(max_stale("max-stale"), Some(u64::MAX));
        assert_eq!(max_stale("MAX-STALE=30"), Some(30));
        assert_eq!(max_stale("max-stale, max-stale=30"), Some(30));
        assert_eq!(max_stale("max-stale=30, max-stale"), Some(30));
        assert_eq!(max_stale("max-stale=abc"), Some(0));
        let limits = Limits {
            min_fresh: Some(10),
            max_stale: Some(4),
            ..Limits::default()
        };
        // `max-stale` lowers what `min-fresh` asks of a fresh response.
        assert!(limits.accept(0, Some(6)));
        assert!(!limits.accept(0, Some(5)));
    }

    /// A stored method other than GET is not looked up when its request carries content (the key
    /// cannot hold it); without content, or for HEAD, it is; a GET declaring content is not.
    #[test]
    fn a_stored_method_with_request_content_bypasses() -> Result<(), http::method::InvalidMethod> {
        let query = Method::from_bytes(b"QUERY")?;
        let methods = [Method::GET, query.clone(), Method::POST];
        let lookup = RequestPlan::Lookup {
            refresh: false,
            limits: Limits::default(),
        };
        let content = RequestPlan::Bypass(Bypass::RequestContent);
        let plan = |method: &Method, h: &[(&'static str, &'static str)]| {
            plan_request(&request(method.clone(), h), &methods, false, false)
        };
        for method in [&query, &Method::POST] {
            assert_eq!(plan(method, &[]), lookup, "{method}");
            assert_eq!(plan(method, &[("content-length", "0")]), lookup);
            assert_eq!(plan(method, &[("content-length", "5")]), content);
            assert_eq!(plan(method, &[("content-length", "x")]), content);
            assert_eq!(plan(method, &[("transfer-encoding", "chunked")]), content);
        }
        // Over HTTP/2 content may come with neither field: only a declared empty body is none.
        let h2 = |method: &Method, h: &[(&'static str, &'static str)]| {
            let mut request = request(method.clone(), h);
            *request.version_mut() = http::Version::HTTP_2;
            plan_request(&request, &methods, false, false)
        };
        for method in [&query, &Method::POST] {
            assert_eq!(h2(method, &[]), content, "{method}");
            assert_eq!(h2(method, &[("content-length", "5")]), content);
            assert_eq!(h2(method, &[("content-length", "0")]), lookup);
        }
        assert_eq!(h2(&Method::GET, &[]), lookup);
        // A GET declaring content: bypassed too (see `a_get_declaring_content_bypasses`).
        assert_eq!(plan(&Method::GET, &[("content-length", "5")]), content);
        let head = RequestPlan::Head {
            limits: Limits::default(),
        };
        assert_eq!(plan(&Method::HEAD, &[("content-length", "5")]), head);
        // A method not stored is bypassed as such.
        let put = plan(&Method::PUT, &[("content-length", "5")]);
        assert_eq!(put, RequestPlan::Bypass(Bypass::Method));
        Ok(())
    }

    /// Only a switch the handler may make bypasses: an HTTP/1.1 `Upgrade` naming a protocol other
    /// than `h2c` (a regression hunt found every `Upgrade` bypassing, `curl --http2`'s offer and
    /// HTTP/1.0 requests too).
    #[test]
    fn only_a_request_to_switch_protocols_bypasses() {
        let plan = |version, upgrade: &'static str| {
            let mut request = request(Method::GET, &[("upgrade", upgrade)]);
            *request.version_mut() = version;
            plan_request(&request, &[Method::GET], false, false)
        };
        let lookup = RequestPlan::Lookup {
            refresh: false,
            limits: Limits::default(),
        };
        let switch = RequestPlan::Bypass(Bypass::Upgrade);
        let http11 = http::Version::HTTP_11;
        assert_eq!(plan(http11, "websocket"), switch);
        assert_eq!(plan(http11, "h2c, WebSocket"), switch);
        assert_eq!(plan(http11, "TLS/1.2"), switch);
        assert_eq!(plan(http11, "h2c"), lookup);
        assert_eq!(plan(http11, " H2C "), lookup);
        assert_eq!(plan(http::Version::HTTP_10, "websocket"), lookup);
    }

    /// A request whose host the key cannot hold as the handler sees it (a target whose authority
    /// a `Host` field contradicts, the target's default port left out as in keys; userinfo in the
    /// target; several `Host` fields) is not answered from the cache nor stored: a handler reading
    /// `Host` or the URI would make another host's response.
    #[test]
    fn a_request_naming_two_hosts_bypasses() {
        let plan = |uri: &'static str, h: &[(&'static str, &'static str)]| {
            let mut request = request(Method::GET, h);
            *request.uri_mut() = http::Uri::from_static(uri);
            plan_request(&request, &[Method::GET], false, false)
        };
        let lookup = RequestPlan::Lookup {
            refresh: false,
            limits: Limits::default(),
        };
        let two = RequestPlan::Bypass(Bypass::TwoHosts);
        assert_eq!(plan("/x", &[("host", "a.example")]), lookup);
        assert_eq!(plan("http://a.example/x", &[("host", "A.Example")]), lookup);
        assert_eq!(plan("http://a.example/x", &[("host", "evil.example")]), two);
        assert_eq!(
            plan("http://a.example:8080/x", &[("host", "a.example")]),
            two
        );
        // Found by a probe: each was stored for every client of `a.example`, the handler
        // seeing another host, userinfo in its URI, or a second `Host`.
        assert_eq!(plan("http://u@a.example/x", &[("host", "a.example")]), two);
        assert_eq!(
            plan("http://a.example:80/x", &[("host", "a.example:80")]),
            two
        );
        assert_eq!(
            plan("https://a.example:443/x", &[("host", "a.example:443")]),
            two
        );
        assert_eq!(
            plan("http://a.example:80/x", &[("host", "a.example")]),
            lookup
        );
        assert_eq!(
            plan("/x", &[("host", "a.example"), ("host", "evil.example")]),
            two
        );
        // No `Host` (HTTP/2's `:authority`, a request made in process): the target's host.
        assert_eq!(plan("http://a.example/x", &[]), lookup);
        assert_eq!(plan("http://a.example:80/x", &[]), lookup);
    }

    /// A GET declaring content is bypassed as another method's is: a handler may read it, and
    /// its response was stored for every client of the URL (found by a probe). Over HTTP/2, a
    /// GET without `Content-Length` is looked up.
    #[test]
    fn a_get_declaring_content_bypasses() {
        let content = RequestPlan::Bypass(Bypass::RequestContent);
        for fields in [
            &[("content-length", "6")][..],
            &[("transfer-encoding", "chunked")][..],
        ] {
            let request = request(Method::GET, fields);
            assert_eq!(
                plan_request(&request, &[Method::GET], false, false),
                content
            );
        }
        let empty = request(Method::GET, &[("content-length", "0")]);
        assert!(matches!(
            plan_request(&empty, &[Method::GET], false, false),
            RequestPlan::Lookup { .. }
        ));
        let mut h2 = request(Method::GET, &[]);
        *h2.version_mut() = Version::HTTP_2;
        assert!(matches!(
            plan_request(&h2, &[Method::GET], false, false),
            RequestPlan::Lookup { .. }
        ));
    }

    #[test]
    fn stored_headers_drop_hop_by_hop_and_connection_named() {
        let h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("age", "5"),
            ("x-cache", "MISS"),
            ("content-type", "text/plain"),
            ("link", "<a>"),
            ("link", "<b>"),
        ]);
        let kept = stored_headers(&h, &[HeaderName::from_static("x-cache")]);
        let names: Vec<_> = kept.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "link"]);
        assert_eq!(kept.get_all("link").iter().count(), 2);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let matches = |field: &'static str, etag: &'static str| {
            if_none_match(
                &headers(&[("if-none-match", field)]),
                Some(&HeaderValue::from_static(etag)),
            )
        };
        assert!(matches("\"a\", W/\"b\"", "\"b\""));
        assert!(matches("\"b\"", "W/\"b\""));
        assert!(matches("*", "\"b\""));
        assert!(!matches("\"c\"", "\"b\""));
        assert!(!if_none_match(
            &HeaderMap::new(),
            Some(&HeaderValue::from_static("\"b\""))
        ));
    }

    /// RFC 9110 §13.1.2: `*` matches any current response, one without an `ETag` too; a list of
    /// tags never matches a response without one.
    #[test]
    fn if_none_match_star_matches_a_response_without_an_etag() {
        let matches =
            |field: &'static str| if_none_match(&headers(&[("if-none-match", field)]), None);
        assert!(matches("*"));
        assert!(matches(" * "));
        for field in ["\"b\"", "W/\"b\", \"c\"", "*, \"b\"", "", "b"] {
            assert!(!matches(field), "{field:?}");
        }
    }

    /// RFC 9110 §8.8.3: `etagc` includes the comma, so a list is split between quoted tags,
    /// never inside one.
    #[test]
    fn if_none_match_reads_a_comma_inside_quotes_as_part_of_the_tag() {
        let matches = |field: &'static str, etag: &'static str| {
            if_none_match(
                &headers(&[("if-none-match", field)]),
                Some(&HeaderValue::from_static(etag)),
            )
        };
        assert!(matches("\"a,b\"", "\"a,b\""));
        assert!(matches("W/\"a,b\"", "\"a,b\""));
        assert!(matches("\"x\", \"a,b\"", "W/\"a,b\""));
        assert!(!matches("\"a\"", "\"a,b\""));
        assert!(!matches("\"b\"", "\"a,b\""));
        assert!(!matches("\"a,b\"", "\"a\""));
        assert!(!matches("\"a\", \"b\"", "\"a,b\""));
    }

    /// Empty members, spaces and tabs around members, several lines: read as one list.
    #[test]
    fn if_none_match_tolerates_odd_whitespace_and_empty_members() {
        let matches = |field: &'static str| {
            if_none_match(
                &headers(&[("if-none-match", field)]),
                Some(&HeaderValue::from_static("\"b\"")),
            )
        };
        for field in [
            "  \"b\"  ",
            "\t\"a\"\t,\tW/\"b\"\t",
            ",,\"a\" ,, \"b\",",
            "\"a\",\"b\"",
            " * ",
        ] {
            assert!(matches(field), "{field:?}");
        }
        let two_lines = headers(&[("if-none-match", "\"a\""), ("if-none-match", " \"b\" ")]);
        assert!(if_none_match(
            &two_lines,
            Some(&HeaderValue::from_static("\"b\""))
        ));
        for field in ["", " ", ",", " , ,"] {
            assert!(!matches(field), "{field:?}");
        }
    }

    /// A field that is not a list of entity-tags matches nothing, not even through a well-formed
    /// member; nor does a stored `ETag` that is not an entity-tag, except to `*` (any current
    /// response).
    #[test]
    fn a_malformed_if_none_match_or_etag_matches_nothing() {
        let matches = |field: &'static str, etag: &'static str| {
            if_none_match(
                &headers(&[("if-none-match", field)]),
                Some(&HeaderValue::from_static(etag)),
            )
        };
        for field in [
            "b",
            "\"b",
            "b\"",
            "\"b\"x",
            "\"b\" \"c\"",
            "\"b\", c",
            "c, \"b\"",
            "\"b\", \"c",
            "w/\"b\"",
            "W/ \"b\"",
            "\"b c\"",
            "\"b\", *",
            "*, \"b\"",
            "*, *",
            "**",
        ] {
            assert!(!matches(field, "\"b\""), "{field:?}");
        }
        assert!(!matches("b", "b"));
        assert!(matches("*", "b"));
        assert!(!matches("\"b\"", "\"b"));
        let star_and_tag = headers(&[("if-none-match", "*"), ("if-none-match", "\"b\"")]);
        assert!(!if_none_match(
            &star_and_tag,
            Some(&HeaderValue::from_static("\"b\""))
        ));
    }

    #[test]
    fn entity_tags_compare_weakly_and_strongly() -> Result<(), &'static str> {
        let tag = |value: &'static str| EntityTag::parse(value.as_bytes());
        let strong = tag("\"a,b\"").ok_or("a strong tag not parsed")?;
        let weak = tag(" W/\"a,b\"\t").ok_or("a weak tag not parsed")?;
        assert_eq!(
            strong,
            EntityTag {
                weak: false,
                opaque: b"a,b"
            }
        );
        assert!(weak.weak && strong.weak_eq(&weak) && weak.weak_eq(&strong));
        assert_eq!(
            tag("\"\""),
            Some(EntityTag {
                weak: false,
                opaque: b""
            })
        );
        for malformed in ["a", "\"a", "\"a\"b", "\"a\" \"b\"", "W/a", "\"a\"\"", ""] {
            assert_eq!(tag(malformed), None, "{malformed:?}");
        }
        Ok(())
    }

    #[test]
    fn not_modified_since_compares_last_modified_with_the_requests_date() {
        const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
        let stored = headers(&[("last-modified", MODIFIED)]);
        let since = |date: &'static str| headers(&[("if-modified-since", date)]);
        // The same date, or a later one: not modified.
        assert!(not_modified_since(&since(MODIFIED), &stored));
        assert!(not_modified_since(
            &since("Wed, 21 Oct 2015 07:28:01 GMT"),
            &stored
        ));
        // An earlier one: modified since.
        assert!(!not_modified_since(
            &since("Wed, 21 Oct 2015 07:27:59 GMT"),
            &stored
        ));
        // Not a valid HTTP-date, no Last-Modified, two field lines: ignored (modified).
        assert!(!not_modified_since(&since("yesterday"), &stored));
        assert!(!not_modified_since(&since(MODIFIED), &HeaderMap::new()));
        let twice = headers(&[
            ("if-modified-since", MODIFIED),
            ("if-modified-since", MODIFIED),
        ]);
        assert!(!not_modified_since(&twice, &stored));
        assert!(!not_modified_since(&HeaderMap::new(), &stored));
    }
}
