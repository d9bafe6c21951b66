//! [`CacheLayer`]: the builder of the configuration, and the purge helpers.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use impcache::__private::members::{self, Members};
use impcache::{Cache, DeleteProgress, Expire};

use crate::config::{Config, StatusHeader};
use crate::invalidate::Targets;
use crate::key;
use crate::prefixes;

/// A [`Layer`](tower::Layer) that caches HTTP responses in an [`impcache::Cache`].
///
/// Cheap to clone; clones (and every service they make) share the cache and the in-flight
/// request table. Builder methods consume and return the layer. See the [crate docs](crate) for
/// the rules and an example.
#[derive(Clone, Debug)]
pub struct CacheLayer {
    pub(crate) config: Arc<Config>,
}

impl CacheLayer {
    /// A layer storing in `cache` with the default rules: GET (and HEAD from the GET entry), status
    /// 200, 60 s, bodies up to 1 MiB.
    pub fn new(cache: Cache) -> Self {
        CacheLayer {
            config: Arc::new(Config::new(cache)),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// How long entries live (integers are seconds; default 60). A response's `s-maxage`, else
    /// `max-age`, shortens it; it never lengthens it. [`Expire::NEVER`] stores without expiry
    /// (then only the response's directives and [`max_ttl`](Self::max_ttl) bound it). Zero or a
    /// negative number stores nothing; one longer than [`MAX_EXPIRE`](impcache::MAX_EXPIRE)
    /// (`Duration::MAX`) is `MAX_EXPIRE`, as for [`max_ttl`](Self::max_ttl). Not used in the
    /// [origin-freshness mode](Self::follow_origin).
    pub fn expire(self, expire: impl Into<Expire>) -> Self {
        let expire = expire.into();
        self.with(|c| c.expire = expire)
    }

    /// The longest TTL, whatever the layer's `expire` and the response say (default: none).
    pub fn max_ttl(self, max_ttl: impl Into<Expire>) -> Self {
        let max_ttl = max_ttl.into();
        self.with(|c| c.max_ttl = Some(max_ttl))
    }

    /// The request methods whose responses are stored (default: GET). HEAD is never stored; it is
    /// answered from the GET entry when GET is listed.
    ///
    /// The key holds the method, never the request's content: a GET whose fields declare content
    /// (a `Content-Length` other than 0 or a `Transfer-Encoding`: a handler may read it), and a
    /// request of another listed method that carries content (the same fields;
    /// over HTTP/2 and HTTP/3, where content may come with neither, any request without
    /// `Content-Length: 0`), such as a `QUERY` or `POST` with a body, is neither
    /// answered from the cache nor stored. It goes to the handler (`Cache-Status: impcache;
    /// fwd=bypass; detail=request-content`, counted as a `bypass`), and is otherwise treated as
    /// the read it is declared to be (it invalidates nothing). The same method without content
    /// (`QUERY /search?q=a`) is cached as a GET is.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods: Vec<Method> = methods.into_iter().filter(|m| m != Method::HEAD).collect();
        self.with(|c| c.methods = methods)
    }

    /// The response statuses that are stored (default: 200 only). 206 and 304 are never stored. Not used
    /// in the [origin-freshness mode](Self::follow_origin), which follows RFC 9111.
    pub fn statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses = statuses.into_iter().collect();
        self.with(|c| c.statuses = statuses)
    }

    /// The largest body stored, in bytes (default 1 MiB). A larger response streams to the client
    /// unchanged, and at most this many bytes of it are ever held in memory.
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.with(|c| c.max_body_size = bytes)
    }

    /// Whether requests with `Authorization` or `Cookie` use the cache (default `false`: they go
    /// straight to the handler). When `true`, their values are part of the key, so each
    /// credential gets its own entries and none is ever served to another. With
    /// [`follow_origin`](Self::follow_origin), a response to a request with `Authorization` is
    /// stored only when it allows a shared cache to (RFC 9111 §3.5).
    pub fn allow_authenticated(self, allow: bool) -> Self {
        self.with(|c| c.allow_authenticated = allow)
    }

    /// Whether the client's request `Cache-Control` counts (default `false`: the server owns its
    /// cache, and a browser's hard refresh does not reach the handler). When `true` (RFC 9111
    /// §5.2.1), `no-store` bypasses the cache; `no-cache`, `max-age=0` or `Pragma: no-cache` skip
    /// the lookup and store the fresh response; `max-age=N` and `min-fresh=N` send a stored
    /// response older than `N` seconds, or fresh for less than `N` more, to the handler
    /// (`fwd=request`), storing its answer, whether the lookup found it or another request's
    /// handler call (a coalesced flight, another process holding the [`lock`](Self::lock))
    /// hands it over (such a request calls the handler at once, without waiting for the lock's
    /// holder: its answer would be refused as well); `only-if-cached` answers `504 Gateway Timeout` (`detail=only-if-cached`)
    /// whenever the handler would be called, a bypassed request's (credentials, `Range`,
    /// `no-store`, …: `fwd=bypass`; a method not stored: `fwd=method`) included.
    ///
    /// A request with `max-age` or `min-fresh` asks for a fresh response (RFC 9111 §5.2.1.1,
    /// §5.2.1.3): it is not served stale from a [stale-while-revalidate
    /// window](Self::stale_while_revalidate) either, but sent to the handler (`fwd=request`; in
    /// the [origin mode](Self::follow_origin) with the stored validators, a `304` then refreshing
    /// the entry), unless it also says `max-stale`. `max-stale=N` takes a stale response at most
    /// `N` seconds past its freshness (`min-fresh` counting against it, `max-age` still bounding
    /// its age), `max-stale` alone any; a `max-stale=N` also bounds what a request without
    /// `max-age` or `min-fresh` takes from the window. It never widens a window: stale responses
    /// are served only within the layer's or the response's stale windows. A
    /// [stale-if-error](Self::stale_if_error) response still answers for a failed (or, past the
    /// [`soft_timeout`](Self::soft_timeout), slow) handler, whatever the request asked: the
    /// stale response is then the answer there is (RFC 5861 §4).
    pub fn honor_request_cache_control(self, honor: bool) -> Self {
        self.with(|c| c.honor_request_cache_control = honor)
    }

    /// Which cache status headers responses carry (default [`StatusHeader::CacheStatus`], the
    /// standard one; [`StatusHeader::XCache`] or [`StatusHeader::Both`] add `x-cache: HIT`/`MISS`/
    /// `BYPASS`/`STALE`/`REVALIDATED`, which some dashboards and scripts look for). Every header
    /// costs each response its encoding and each client its parsing.
    pub fn status_header(self, status_header: StatusHeader) -> Self {
        self.with(|c| c.status_header = status_header)
    }

    /// Whether a stored response without an `ETag` gets a strong one computed from its body
    /// (default `true`), so that `If-None-Match` can be answered with 304 from the cache. Not used
    /// in the [origin-freshness mode](Self::follow_origin): the origin's validators only.
    pub fn compute_etag(self, compute: bool) -> Self {
        self.with(|c| c.compute_etag = compute)
    }

    /// Whether concurrent misses of one key in this process wait for a single handler call
    /// (default `true`). It also makes a response delivered in this process a hit for the next
    /// request, even while its store is still on its way to the cache.
    pub fn coalesce(self, coalesce: bool) -> Self {
        self.with(|c| c.coalesce = coalesce)
    }

    /// How long a coalesced request waits for another request's handler call (and its body, when
    /// it streams) before calling the handler itself (default 10 s). Counted once per request and
    /// key, from when it starts waiting (right after its lookup), however many leaders it waits
    /// for, as nginx's `proxy_cache_lock_timeout` (a request that learns the URL's `Vary` names
    /// and moves to its own variant's flight, another key, has that flight's timeout whole): a leader that goes away (its client disconnects,
    /// its handler panics, its response body fails mid-way) hands its flight over to one of its
    /// waiters, and the others wait for that one only what is left of their own timeout; with
    /// nothing left, a request calls the handler itself. So even an upstream whose bodies always
    /// fail keeps no request waiting past this timeout: each is answered within it and one
    /// handler call. Unlike nginx, whose requests past `proxy_cache_lock_timeout` are not cached,
    /// a request that calls the handler once its timeout has passed stores its response, as the
    /// leader will: a leader whose handler hangs (no [`hard_timeout`](Self::hard_timeout)) would
    /// otherwise keep the URL uncached, each request waiting this timeout first (nginx's
    /// `proxy_cache_lock_age` lets one more request through for that). Under a handler slower
    /// than this timeout, concurrent requests each write the same response: keep it above the
    /// handler's time. Waiting for the cross-process [`lock`](Self::lock) follows (its `wait`).
    ///
    /// It also bounds the handler calls made in the background (a
    /// [`stale_while_revalidate`](Self::stale_while_revalidate) or
    /// [`early_refresh`](Self::early_refresh) refresh, the call going on past a
    /// [`soft_timeout`](Self::soft_timeout)), so that a handler that hangs does not hold the
    /// URL's flight, unless the [`hard_timeout`](Self::hard_timeout) is longer: then that. Keep
    /// the longer of the two above the handler's time, or those calls are dropped before they
    /// answer and the stale response is served until its window ends.
    pub fn lock_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.lock_timeout = timeout)
    }

    /// Whether the `Host` is part of the key (default `true`). Turn it off when one application
    /// answers several host names with the same content.
    pub fn key_by_host(self, key_by_host: bool) -> Self {
        self.with(|c| c.key_by_host = key_by_host)
    }

    /// Whether a successful (2xx or 3xx) response to an unsafe request (`POST`, `PUT`, `PATCH`,
    /// `DELETE`: any method but `GET`, `HEAD`, `OPTIONS`, `TRACE`, and not one listed in
    /// [`methods`](Self::methods)) removes the stored responses of its URL, as RFC 9111 §4.4
    /// asks (default `true`). Removed: every method and `Vary` variant of the request's URL (as
    /// [`purge_url`](Self::purge_url) does), and of the URLs the response's `Location` and
    /// `Content-Location` name when they are on the same host (resolved against the request's
    /// URL). An error status removes nothing.
    ///
    /// The removal of the URLs' records (two round trips: they are read, then removed with one
    /// `UNLINK`) finishes before the response is sent, so the client that made the change reads it
    /// back on its next request. A GET of these URLs whose handler call started before the change
    /// in this process (the layer and its clones) is left to answer the requests that joined it
    /// before the change, and only them: a request that arrives after the change makes a handler
    /// call of its own, and the older response is not stored. What remains: a handler call in
    /// another process that started before the change may still store its older response there,
    /// served until it expires. With the cache down or slow the removal adds at most one
    /// repository deadline and fails open: the failure is logged (`tracing` warning) and the
    /// response goes out.
    ///
    /// A URL whose responses vary (or, with [`allow_authenticated`](Self::allow_authenticated),
    /// may have credentialed variants) also has variants under keys of their own: they are
    /// stored under their record's generation, so they are misses once the record is gone (and
    /// expire with their TTL). Only a record written by an earlier version of this crate has its
    /// variants swept, with `delete_pattern` (on Redis a `SCAN` of the whole keyspace): the
    /// response waits for that sweep 500 ms at most, then it goes on in the background.
    pub fn invalidate_on_unsafe_methods(self, invalidate: bool) -> Self {
        self.with(|c| c.invalidate_on_unsafe_methods = invalidate)
    }

    /// The origin-freshness mode (default `false`): the layer becomes an RFC 9111 shared cache
    /// that follows what the responses say, for putting in front of anything that speaks HTTP
    /// caching (a reverse proxy, handlers that set `Cache-Control`, `Expires`, `ETag`).
    ///
    /// - **Freshness** from `s-maxage`, else `max-age`, else `Expires` minus `Date`, else, for the
    ///   heuristically cacheable statuses (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501)
    ///   or a `public` response, 10 % of the time since `Last-Modified`; capped by
    ///   [`max_ttl`](Self::max_ttl). [`expire`](Self::expire) and [`statuses`](Self::statuses)
    ///   are not used: a response without freshness or a validator is not stored, and every
    ///   status but 1xx, 206 and 304 is stored when it is explicitly fresh.
    /// - **Targeted fields** (RFC 9213): the [`targeted_cache_control`](Self::targeted_cache_control)
    ///   field, else `CDN-Cache-Control`, when present, replaces `Cache-Control`.
    /// - **Age**: the response's `Age` and `Date`, and the time the handler took, make its
    ///   initial age (RFC 9111 §4.2.3), which counts against its lifetime and is part of the
    ///   `Age` of every hit.
    /// - **Directives**: `no-store` and `private` responses are not stored (a `no-store` response
    ///   also removes the stored response it replaces, as does any response not stored that
    ///   answers a stale entry's revalidation, unless it is an error: see
    ///   [`stale_while_revalidate`](Self::stale_while_revalidate)); `no-cache` ones are stored only with a
    ///   validator, and revalidated on every use; `must-revalidate`/`proxy-revalidate` entries
    ///   are never served stale.
    /// - **Revalidation**: a stale entry with an `ETag` or `Last-Modified` is kept for
    ///   [`keep_stale_for`](Self::keep_stale_for), and revalidated by calling the handler with
    ///   `If-None-Match`/`If-Modified-Since`; a 304 refreshes its headers, tags (see
    ///   [`tag_headers`](Self::tag_headers)) and lifetime and the stored body is served; any
    ///   other response replaces it.
    /// - **Stale responses** only where RFC 9111 §4.2.4 allows them: within the response's own
    ///   `stale-while-revalidate` / `stale-if-error` window, else the layer's
    ///   ([`stale_while_revalidate`](Self::stale_while_revalidate),
    ///   [`stale_if_error`](Self::stale_if_error): the operator's configuration), and never under
    ///   `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`. Within a stale-if-error
    ///   window a failed revalidation (a handler error, such as a proxy's unreachable origin, or a
    ///   [listed status](Self::stale_if_error_statuses)) is answered with the stale response.
    /// - **ETag**: none is computed ([`compute_etag`](Self::compute_etag) is not used); the
    ///   origin's validators are served as they are.
    /// - **Credentials**: with [`allow_authenticated`](Self::allow_authenticated), a response to
    ///   a request with `Authorization` is stored only when it allows a shared cache to
    ///   (`public`, `s-maxage` or `must-revalidate`, RFC 9111 §3.5).
    ///
    /// Unchanged: the safety rules (`Set-Cookie`, credentials, `HEAD`, `Range`, streaming and the
    /// body limit), the key and `Vary`, invalidation after unsafe methods, and the client's
    /// `Cache-Control`, still ignored unless
    /// [`honor_request_cache_control`](Self::honor_request_cache_control).
    pub fn follow_origin(self, follow: bool) -> Self {
        self.with(|c| c.follow_origin = follow)
    }

    /// A targeted cache-control field (RFC 9213) for this cache, such as `Impcache-Cache-Control`
    /// or `Surrogate-Control`: in the [origin-freshness mode](Self::follow_origin), when a
    /// response has it, its directives replace those of `CDN-Cache-Control` and
    /// `Cache-Control`. Default: none (`CDN-Cache-Control`, then `Cache-Control`).
    pub fn targeted_cache_control(self, name: http::HeaderName) -> Self {
        self.with(|c| c.targeted_field = Some(name))
    }

    /// How long a stale entry with a validator (`ETag` or `Last-Modified`) stays in the cache
    /// past its freshness lifetime, to be revalidated rather than fetched again, in the
    /// [origin-freshness mode](Self::follow_origin) (default 10 minutes,
    /// [`DEFAULT_KEEP_STALE`](crate::DEFAULT_KEEP_STALE)). Its key's TTL is the rest of its
    /// lifetime plus this.
    pub fn keep_stale_for(self, keep: Duration) -> Self {
        self.with(|c| c.keep_stale = keep)
    }

    /// Up to `window` past its freshness, a stored response is served at once (`Cache-Status:
    /// impcache; hit; fwd=stale; ttl=-N; detail=revalidating`) while one background handler call
    /// per URL refreshes it (RFC 5861). Its answer replaces the stored response even when it is
    /// not stored (a 404 or 410 not in [`statuses`](Self::statuses), `no-store`, `private`, a
    /// body over [`max_body_size`](Self::max_body_size)): the stale response is removed, and the
    /// next request is a miss the handler answers (RFC 9111 §4.3.3); only an error (a 5xx, a
    /// status of [`stale_if_error_statuses`](Self::stale_if_error_statuses), a handler error, a
    /// timeout, a body that fails) or a `429` (an origin shedding load) leaves it in place. A response's own
    /// `stale-while-revalidate=N` wins over this; `must-revalidate`, `proxy-revalidate`, `no-cache` (and `s-maxage` in the
    /// [origin-freshness mode](Self::follow_origin)) forbid it. A request whose honoured
    /// `max-age` or `min-fresh` asks for a fresh response is not served from it (see
    /// [`honor_request_cache_control`](Self::honor_request_cache_control)). Default
    /// [`Duration::ZERO`]: only responses that say `stale-while-revalidate` are served stale.
    /// Entries are stored for their freshness plus the longer of the two stale windows; a
    /// response with no freshness (`max-age=0`; in the [origin-freshness mode](Self::follow_origin)
    /// one without a validator) is not stored, whatever the windows, the response's or the
    /// layer's (`detail=zero-ttl`), as nginx and Varnish: a window extends a stored response's
    /// life, it does not make a response storable.
    pub fn stale_while_revalidate(self, window: Duration) -> Self {
        self.with(|c| c.stale_while_revalidate = window)
    }

    /// Up to `window` past its freshness, a stored response answers instead of a handler that
    /// fails: returns an error, a status of [`stale_if_error_statuses`](Self::stale_if_error_statuses),
    /// or takes longer than [`handler_timeout`](Self::handler_timeout) (`Cache-Status: impcache;
    /// fwd=stale; ttl=-N; detail=handler-error`, or `fwd=stale; fwd-status=503; ..;
    /// detail=handler-status`: forwarded, so not a `hit` (RFC 9211); a `WARN` with target
    /// `impcache_tower`). Any other answer but a `429` replaces the stale response, also one
    /// that is not stored (a 404, `no-store`, ..): it is removed, and does not answer for a
    /// later failure. A
    /// response's own `stale-if-error=N` wins over this; the directives that forbid
    /// [`stale_while_revalidate`](Self::stale_while_revalidate) forbid it too. Default
    /// [`Duration::ZERO`]: the responses' directives only.
    ///
    /// A handler that panics is not covered: the panic reaches the caller (the server's task for
    /// the connection) as without a stale response, where `get_or_set` counts a loader's panic as
    /// a failure. To have a stale response answer for it, turn panics into a `500` under this
    /// layer (tower-http's `CatchPanicLayer` between it and the handler): a listed status.
    pub fn stale_if_error(self, window: Duration) -> Self {
        self.with(|c| c.stale_if_error = window)
    }

    /// The handler statuses a stale response stands in for within its
    /// [`stale_if_error`](Self::stale_if_error) window (default
    /// [`DEFAULT_STALE_IF_ERROR_STATUSES`](crate::DEFAULT_STALE_IF_ERROR_STATUSES): 500, 502,
    /// 503, 504). A response that says `stale-if-error=N` itself is also served for 500, 502, 503
    /// and 504 within its window (RFC 5861 §4: the origin's permission), whatever this list. An
    /// empty list with a [`stale_if_error`](Self::stale_if_error) window: stale responses answer
    /// only for a handler error (a reverse proxy's "the origin cannot be reached", see
    /// `examples/cache_proxy.rs`) and a [`handler_timeout`](Self::handler_timeout).
    ///
    /// A timeout layer under this one answers for a slow handler with its own status, which
    /// must be listed for a stale response to stand in: tower-http's `TimeoutLayer::new` answers
    /// `408 Request Timeout`, not listed by default, so its `408` replaces the stale response.
    /// Give it `504` (`TimeoutLayer::with_status_code`), or list 408 here, or use this layer's
    /// [`handler_timeout`](Self::handler_timeout).
    pub fn stale_if_error_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses: Vec<StatusCode> = statuses.into_iter().collect();
        self.with(|c| c.stale_if_error_statuses = statuses)
    }

    /// The longest wait for the handler when a stale response could answer instead (within its
    /// [`stale_if_error`](Self::stale_if_error) window): past it, the stale response is served
    /// and the handler's call dropped (default: no limit). Other requests are not limited (see
    /// [`hard_timeout`](Self::hard_timeout) for them).
    pub fn handler_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.handler_timeout = Some(timeout))
    }

    /// With a stale response at hand that may answer instead (within its
    /// [`stale_if_error`](Self::stale_if_error) window): past `timeout`, the stale response is
    /// served (`Cache-Status: impcache; fwd=stale; ttl=-N; detail=soft-timeout`) while the
    /// handler call goes on in the background and its response is stored (default: none). The
    /// handler is then called in a task of its own, in the request's `tracing` span: the call
    /// and its body together are bounded by the [`lock_timeout`](Self::lock_timeout) (past it
    /// the call is dropped, unstored). A handler that panics within `timeout` panics the
    /// request's future, as without it (see [`stale_if_error`](Self::stale_if_error)).
    pub fn soft_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.soft_timeout = Some(timeout))
    }

    /// The longest wait for a handler call after a lookup (a miss, a stale entry's refresh,
    /// a background revalidation): past it the call is dropped, the stale response answers
    /// within its [`stale_if_error`](Self::stale_if_error) window (`detail=handler-timeout`, as
    /// [`handler_timeout`](Self::handler_timeout)), and otherwise the layer answers
    /// `504 Gateway Timeout` (never stored; `Cache-Status: impcache; fwd=…; detail=handler-timeout`),
    /// as a reverse proxy does (default: no limit). A coalesced request that waited for another
    /// request's call that timed out, or for leaders that went away (handing their flight over,
    /// see [`lock_timeout`](Self::lock_timeout)), has what is left of its own `timeout`, counted
    /// from when it started waiting, across hand-overs (one that waited it all answers so
    /// without calling the handler again); one whose leader's response was not shareable has
    /// all of it. Bypassed requests are not limited.
    pub fn hard_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.hard_timeout = Some(timeout))
    }

    /// Probabilistic early refresh (XFetch, as [`Freshness::early_refresh`](impcache::Freshness::early_refresh)):
    /// a fresh hit with `left` before its freshness ends is served as usual and, with probability
    /// `exp(-left / gap)`, also starts one background handler call per URL that refreshes it (as
    /// stale-while-revalidate does), so hot URLs are refreshed before they expire. Set `gap` to
    /// about the handler's duration; zero (the default) turns it off.
    pub fn early_refresh(self, gap: Duration) -> Self {
        self.with(|c| c.early_refresh = gap)
    }

    /// FusionCache's fail-safe throttle (default: none): for `throttle` after a handler call of
    /// a URL failed (in the foreground, an error, status or timeout a stale response stood in
    /// for; in a background revalidation, an error, a 5xx, a body that fails or a timeout), its stale response answers
    /// within the [stale-while-revalidate](Self::stale_while_revalidate) or
    /// [stale-if-error](Self::stale_if_error) window (the layer's or the response's) without a
    /// handler call (`Cache-Status: ..; detail=fail-safe-throttle`), so a failing origin is not
    /// called at the rate of the requests; nor is an [early refresh](Self::early_refresh)
    /// started, and a handler call answering without a server error ends it. Per process, as
    /// [`Freshness::fail_safe_throttle`](impcache::Freshness::fail_safe_throttle) (the same
    /// table); a miss always calls the handler.
    pub fn fail_safe_throttle(self, throttle: Duration) -> Self {
        self.with(|c| c.fail_safe_throttle = Some(throttle))
    }

    /// The first segment of the keys of this layer's responses (default `"http"`), inside the
    /// cache's `{prefix}:{version}:`; its list of hosts is `__impcache_hosts:{namespace}` (see
    /// [`purge_url`](Self::purge_url)), so `__impcache_hosts` itself is reserved. Layers with
    /// different rules on one cache should use different ones. A `:` in it is written `%3A` in
    /// the keys (and `%` as `%25`), so that the purges of namespace `api` leave those of `api:v2`
    /// alone.
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        self.with(|c| c.namespace = namespace)
    }

    /// Tags (issue 16): the response header fields whose values are the response's tags,
    /// separated by spaces or commas (default [`DEFAULT_TAG_HEADERS`](crate::DEFAULT_TAG_HEADERS):
    /// `Surrogate-Key` and `Cache-Tag`). A stored response is hidden by
    /// [`purge_tag`](Self::purge_tag) (or [`Cache::invalidate_tag`](impcache::Cache::invalidate_tag),
    /// from any process sharing the cache) of any of its tags. The fields are removed from the
    /// responses unless [`keep_tag_headers`](Self::keep_tag_headers). `Cache-Tag` tags are
    /// case-insensitive (Cloudflare's rule): stored as given and in lower case, and purged by
    /// [`purge_tag`](Self::purge_tag) in any case; those of other fields keep their case. A tag
    /// that is not UTF-8 (or too long for the cache) is left out, with a warning; the other tags
    /// of its field stay.
    ///
    /// A stored response keeps its tag fields (they are removed only from what the client is
    /// sent), and in the [origin mode](Self::follow_origin) a `304` that refreshes it updates
    /// them as any other field (RFC 9111 §4.3.4): each tag field the `304` carries replaces the
    /// stored field of its name, the others stay. Its tags are then those of its updated fields,
    /// with the [`tags_from`](Self::tags_from) tags of the validation request, as a `200`'s: a
    /// `304` carrying `Surrogate-Key` only replaces the `Surrogate-Key` tags, and keeps the
    /// `Cache-Tag` ones; one carrying an empty field, or one with no valid tag in it (only tokens
    /// that are not UTF-8), leaves that field no tags. A response that stores none of the tag
    /// fields (stored by an earlier version, which removed them, or tagged by `tags_from` only)
    /// keeps its tags too.
    pub fn tag_headers(self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        let names: Vec<http::HeaderName> = names.into_iter().collect();
        self.with(|c| c.tag_headers = names)
    }

    /// Whether the [tag header fields](Self::tag_headers) reach the client (default `false`:
    /// removed, as a CDN does, so the tags stay private).
    pub fn keep_tag_headers(self, keep: bool) -> Self {
        self.with(|c| c.keep_tag_headers = keep)
    }

    /// Tags (issue 16) given by the request, added to those of the response's
    /// [tag header fields](Self::tag_headers): `tags_from(|req| vec![format!("path:{}", req.uri.path())])`.
    /// Called once per handler call of a cacheable request.
    pub fn tags_from<F>(self, tags_from: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Vec<String> + Send + Sync + 'static,
    {
        let tags_from = crate::tags::TagsFrom(Arc::new(tags_from));
        self.with(|c| c.tags_from = Some(tags_from))
    }

    /// Path prefixes that [`purge_prefix`](Self::purge_prefix) purges with a tag instead of a
    /// sweep of the keyspace (issue 16; default: none), given as in the request line
    /// (`/users/`, percent-encoded as sent) and matched as `purge_prefix` matches them. Each
    /// response stored under one carries the prefix's tag for its host
    /// (`__impcache_prefix:{namespace}:{host}:{prefix}`, the host and prefix as in keys), so a
    /// hit under a declared prefix is a tagged hit (its tag state read with it: one round trip
    /// once the URL's tags are learned, see [`tag_headers`](Self::tag_headers)). Only the
    /// declared prefixes themselves are purged by tag: a longer or shorter prefix sweeps.
    ///
    /// An entry under a declared prefix that does not carry its tag (stored before the prefix
    /// was declared, or by a process that does not declare it) is a miss, and the response
    /// stored in its place carries the tag: declaring a prefix costs its URLs one handler call
    /// each. Processes sharing a namespace should declare the same prefixes: responses stored
    /// by one that does not carry no prefix tag, and that process keeps serving them after a
    /// purge by tag (the others treat them as misses) until they expire.
    pub fn tag_prefixes<I>(self, prefixes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let prefixes = crate::prefixes::TagPrefixes::new(prefixes.into_iter().map(Into::into));
        self.with(|c| c.tag_prefixes = prefixes)
    }

    /// One handler call per response across the processes sharing the cache (issue 16), with
    /// impcache's cross-process [`Lock`](impcache::Lock) (default: none; within one process,
    /// [`coalesce`](Self::coalesce) already makes one call). A miss's leader takes the lock of
    /// the response (`SET NX` of `__lock:{key}`: its `Vary` or credential variant's key when the
    /// URL's record names its variants, else the record's) before calling the handler and
    /// releases it once the response is stored; the other processes poll the response (5 ms,
    /// doubling, at most 50 ms) and serve it when it appears. Misses of different variants do not
    /// wait for each other; of a URL not stored yet, they wait for the first response, which
    /// names the variants, then for their own variant's lock. Fail open: past the lock's
    /// [`wait`](impcache::Lock::wait), or when the cache fails, they call the handler; a lookup
    /// that failed does not try the lock. A miss costs three round trips more (the `SET NX`, a
    /// second lookup, the release); hits cost nothing more. A lifetime not above
    /// [`hard_timeout`](Self::hard_timeout), which `get_or_set` refuses, is raised as if it were
    /// not set (the hard timeout plus 5 s), with a warning when the layer is applied: a layer
    /// has no call to refuse it with, and without the lock every process would call the handler.
    ///
    /// A response that is not stored (`no-store`, `private`, a status the layer does not store,
    /// a handler error) leaves nothing for the other processes to find: their leaders take the
    /// lock in turn, so a burst of misses of such a URL in N processes makes N handler calls one
    /// after another, each process waiting for the one before (at most the lock's `wait`), as
    /// nginx's `proxy_cache_lock` serializes them (Varnish's hit-for-miss does not). The
    /// requests of a process that waited for its leader then make one more call between them,
    /// through the lock (one of them calls, the others wait: a transient `500` costs one call
    /// more), and after a second answer not for sharing call the handler side by side, without
    /// the lock, as without one. A request's waits for the lock count from its first wait in
    /// the process, however many of its calls it waited for: one `wait` in all. Put the lock on
    /// a layer over the routes whose responses are stored, not over routes never stored.
    pub fn lock(self, lock: impcache::Lock) -> Self {
        self.with(|c| c.lock = Some(lock))
    }

    /// Hides every stored response tagged `tag` (and every impcache entry tagged `tag`: the same
    /// tag state as [`Cache::invalidate_tag`](impcache::Cache::invalidate_tag)), in every process
    /// sharing the cache: one write, never a scan. Responses whose handler call started before
    /// it are misses from then on.
    ///
    /// Tags from a `Cache-Tag` field are case-insensitive, as on Cloudflare: `purge_tag("Team:7")`
    /// reaches a response tagged `Cache-Tag: team:7` or `TEAM:7` (the purge also writes the
    /// lower-case spelling; a `Surrogate-Key` tag keeps its case, but one spelled all in lower
    /// case is reached by that spelling too).
    pub async fn purge_tag(&self, tag: &str) -> impcache::Result<()> {
        self.purge_tags([tag]).await
    }

    /// [`purge_tag`](Self::purge_tag) of each of `tags`
    /// ([`Cache::invalidate_tags`](impcache::Cache::invalidate_tags)).
    pub async fn purge_tags<I>(&self, tags: I) -> impcache::Result<()>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags = crate::tags::spellings(tags, self.config.case_insensitive_tags());
        self.config.cache.invalidate_tags(tags).await
    }

    /// Marks every stored response tagged `tag` stale (Fastly's soft purge, and
    /// [`Cache::soft_invalidate_tag`](impcache::Cache::soft_invalidate_tag) for impcache
    /// entries): within the layer's (or the response's) [stale-while-revalidate
    /// window](Self::stale_while_revalidate), counted from the purge, it is served at once while
    /// one background handler call per URL refreshes it; without a window it is a miss.
    /// Case as in [`purge_tag`](Self::purge_tag). Waits first for this process's stores in
    /// progress (500 ms at most), so that a response already sent, its store not landed yet, is
    /// marked stale with the others rather than be a miss.
    pub async fn soft_purge_tag(&self, tag: &str) -> impcache::Result<()> {
        self.soft_purge_tags([tag]).await
    }

    /// [`soft_purge_tag`](Self::soft_purge_tag) of each of `tags`.
    pub async fn soft_purge_tags<I>(&self, tags: I) -> impcache::Result<()>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags = crate::tags::spellings(tags, self.config.case_insensitive_tags());
        self.config.landing.stores_landed().await;
        self.config.cache.soft_invalidate_tags(tags).await
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.config.cache
    }

    /// The full key (with the cache's prefix and version) under which `request`'s URL is stored:
    /// its record is `{key}:v` (the entry when the response had no `Vary`, else the learned Vary
    /// header names) and each `Vary` (or credential) variant is `{key}:v:{hash}`; see [`key`].
    /// HEAD requests name the GET key. With the `axum` feature, a request that went through a
    /// router `nest`ed under a prefix names the path the client sent (the prefix put back from
    /// its `OriginalUri`), as the layer's own keys do.
    pub fn request_key<B>(&self, request: &Request<B>) -> String {
        self.config
            .cache
            .make_key(self.config.request_keys(request).url())
    }

    /// The `delete_pattern` pattern of one URL (all methods and `Vary` variants); see
    /// [`purge_url`](Self::purge_url).
    pub fn url_pattern(&self, host: Option<&str>, path_and_query: &str) -> String {
        let absolute = key::absolute_form(path_and_query);
        let (host, path_and_query) = of_url(host, path_and_query, absolute.as_ref());
        key::url_pattern(
            &self.config.namespace,
            self.config.host(host),
            path_and_query,
        )
    }

    /// The `delete_pattern` pattern of every URL under a path prefix; see
    /// [`purge_prefix`](Self::purge_prefix).
    pub fn prefix_pattern(&self, host: Option<&str>, path_prefix: &str) -> String {
        key::prefix_pattern(&self.config.namespace, self.config.host(host), path_prefix)
    }

    /// Removes every stored response of one URL, with all its `Vary` variants: `path_and_query`
    /// as in the request line (`/users/1?tab=a`, percent-encoded as sent), on `host` or on any
    /// host when `None`. Returns the number of keys removed.
    ///
    /// The URL may also be given in absolute form (`http://example.com/users/1?tab=a`, as
    /// Fastly-style purge-by-URL tools send it): its authority is then the host, in place of
    /// `host` (as a request's absolute-form target names its host), so it purges
    /// what a request `GET http://example.com/users/1?tab=a`, or `GET /users/1?tab=a` with
    /// `Host: example.com`, is keyed by. The scheme is in no key: `https://` purges the same.
    ///
    /// The query is matched after sorting its parameters by name, as keys are. The path is the
    /// request target as clients send it: its non-ASCII characters, spaces and controls are
    /// percent-encoded first (`/café` purges the requests for `/caf%C3%A9`, as browsers and curl
    /// send them; so does [`purge_prefix`](Self::purge_prefix)); any other escape is taken as
    /// given (a target sent as `/caf%c3%a9` is another URL, as in nginx's keys).
    ///
    /// **Handler calls and stores in progress**: a response goes out before its store has
    /// landed. This purge, as every purge that removes records or sweeps
    /// ([`purge_prefix`](Self::purge_prefix), also of a declared prefix,
    /// [`purge_all`](Self::purge_all), an unsafe method's invalidation), first waits for this
    /// process's stores in progress of what it removes, 500 ms at most, so that a response a
    /// client already has is not stored again after the purge. A handler call of what it removes
    /// still running in this process (the layer and its clones) when the purge begins does not
    /// store its response, which answers only the requests that joined it before the purge: a
    /// request that arrives after the purge makes a handler call of its own. With `host` `None`,
    /// this part reaches the URL on every host, whatever the list of hosts below says (a host is
    /// listed at its first store, once its handler call has returned), and comes before the
    /// list is read. Another process's handler call or store may still store after the purge
    /// (as in nginx and Varnish); a tag purge ([`purge_tag`](Self::purge_tag)) reaches those
    /// too. So may a store of this process still under way past the 500 ms (the cache slower
    /// than that): the older response it writes then replaces a newer one stored after the
    /// purge, so a client may get the newer response, then the older one, until it expires or
    /// is purged again.
    ///
    /// **Without a scan**: the URL's records (one per stored method) are read and removed, two
    /// round trips whatever the size of the keyspace; its variants, stored under the records'
    /// generation, are unreachable from then on and expire with their TTL (they are not
    /// counted). With `host` `None` and keys by host (the default), a third round trip comes
    /// first: the list of the hosts that stored responses in the namespace, to which each store
    /// adds its host before writing its record (one key,
    /// `__impcache_hosts:{namespace}` under the cache's prefix and version, no expiry, at most 64
    /// hosts; removed by [`purge_all`](Self::purge_all)); the URL's records on each listed host
    /// are read in one round trip. With no list (nothing stored since it was removed, or
    /// responses of an earlier version only) or more than 64 hosts (clients choose the `Host`
    /// they send: 64 distinct ones fill the list until the next `purge_all`), the URL's keys on
    /// every host are found by a `delete_pattern` sweep (on Redis a `SCAN` of the whole
    /// keyspace), as they are for a record written by an earlier version of this crate whose
    /// variants carry no generation.
    ///
    /// What the list cannot vouch for: responses stored on other hosts by a version without it
    /// (upgrade every process sharing the namespace together, or purge each host), and the list
    /// itself lost while records stay (evicted under an `allkeys-*` `maxmemory-policy`, an
    /// addition lost in a failover, or a store racing `purge_all`): the hosts stored since are
    /// listed again (a store during an outage of the list, by a host this process listed
    /// before, once the list answers again), others are missed until their responses expire.
    /// With responses stored without expiry, purge by host or with
    /// [`purge_prefix`](Self::purge_prefix) in those cases.
    ///
    /// Like every purge, a sweep that fails after removing keys returns
    /// [`Error::Interrupted`](impcache::Error::Interrupted) with the count removed
    /// ([`removed_before_failure`](impcache::Error::removed_before_failure)).
    pub async fn purge_url(
        &self,
        host: Option<&str>,
        path_and_query: &str,
    ) -> impcache::Result<u64> {
        self.purge_url_with_progress(host, path_and_query, |_| {})
            .await
    }

    /// [`purge_url`](Self::purge_url), calling `on_progress` after each batch of the sweep (see
    /// [`Cache::delete_pattern_with_progress`](impcache::Cache::delete_pattern_with_progress));
    /// never when it purges without one.
    pub async fn purge_url_with_progress(
        &self,
        host: Option<&str>,
        path_and_query: &str,
        mut on_progress: impl FnMut(DeleteProgress) + Send,
    ) -> impcache::Result<u64> {
        let config = &self.config;
        let sent = key::as_sent(path_and_query);
        let absolute = key::absolute_form(&sent);
        let (host, path_and_query) = of_url(host, &sent, absolute.as_ref());
        let urls = vec![path_and_query.to_owned()];
        let targets = if host.is_none() && config.key_by_host {
            // In this process, on every host, whatever the list of hosts says (a host is listed
            // at its first store, after its handler call), and before the list is read (a store
            // in progress that is waited for has listed its host by then).
            let pattern = self.url_pattern(None, path_and_query);
            self.purging(&pattern).await;
            match self.listed_hosts().await? {
                Some(hosts) => {
                    let hosts = hosts.iter().map(|h| key::host_of_segment(h)).collect();
                    Targets::on_hosts(config, hosts, urls)
                }
                // The hosts not known: the sweep.
                None => {
                    return config
                        .cache
                        .delete_pattern_with_progress(&pattern, on_progress)
                        .await;
                }
            }
        } else {
            let targets = Targets::purge(config, host, urls);
            targets.purging().await;
            targets
        };
        let (mut removed, sweep) = targets.remove_records().await.map_err(|(error, _)| error)?;
        for pattern in sweep.into_iter().filter_map(|i| targets.pattern(i)) {
            let swept = config
                .cache
                .delete_pattern_with_progress(&pattern, &mut on_progress)
                .await;
            // A failure counts what the purge removed before it: the records, the earlier
            // sweeps, and what this sweep removed.
            removed +=
                swept.map_err(|error| impcache::__private::removed_before(error, removed))?;
        }
        Ok(removed)
    }

    /// Removes every stored response whose path starts with `path_prefix` (any query, method,
    /// variant), on `host` or on any host. `/users/` purges the subtree; `/users` also matches
    /// `/users-old`. Returns the number of keys removed.
    ///
    /// A `delete_pattern` sweep (on Redis a `SCAN` of the whole keyspace), except for a prefix
    /// declared with [`tag_prefixes`](Self::tag_prefixes): its responses are hidden by a tag
    /// invalidation instead, one write whatever the size of the keyspace (on any host, with keys
    /// by host: one per host listed for [`purge_url`](Self::purge_url), after reading the list;
    /// without a list, or past 64 hosts, the sweep). Hidden responses are misses at once in every
    /// process sharing the cache, and are not removed but expire with their TTL: such a purge
    /// counts 0. Like [`purge_tag`](Self::purge_tag), a response whose handler call started
    /// before the purge is a miss from then on.
    ///
    /// Handler calls and stores in progress in this process are treated first, as by
    /// [`purge_url`](Self::purge_url), by tag or by sweep: a call of a URL under the prefix still
    /// running (on `host`, or on any host, listed or not) stores nothing, a request after the
    /// purge does not join its flight, and the stores in progress are waited for (500 ms at
    /// most) before the list of hosts is read.
    pub async fn purge_prefix(
        &self,
        host: Option<&str>,
        path_prefix: &str,
    ) -> impcache::Result<u64> {
        self.purge_prefix_with_progress(host, path_prefix, |_| {})
            .await
    }

    /// [`purge_prefix`](Self::purge_prefix), calling `on_progress` after each batch of the sweep
    /// (see [`Cache::delete_pattern_with_progress`](impcache::Cache::delete_pattern_with_progress)).
    pub async fn purge_prefix_with_progress(
        &self,
        host: Option<&str>,
        path_prefix: &str,
        on_progress: impl FnMut(DeleteProgress) + Send,
    ) -> impcache::Result<u64> {
        self.purge_prefix_by(Purge::Hard, host, path_prefix, on_progress)
            .await
    }

    /// Marks every stored response whose path starts with `path_prefix` stale, on `host` or on
    /// any host: Fastly's soft purge, for a path prefix, as
    /// [`soft_purge_tag`](Self::soft_purge_tag) is for a tag. Within the layer's (or the
    /// response's) [stale-while-revalidate window](Self::stale_while_revalidate), counted from
    /// the purge, a response is served at once while one background handler call per URL
    /// refreshes it; without a window it is a miss. Returns 0: nothing is removed.
    ///
    /// Only a prefix declared with [`tag_prefixes`](Self::tag_prefixes) can be marked stale (its
    /// responses carry its tag). Any other prefix, and a declared one whose hosts are not known
    /// (see [`purge_prefix`](Self::purge_prefix)), is purged as `purge_prefix` purges it, by a
    /// sweep that removes its responses and counts them: the stronger purge, never an old
    /// response served as fresh.
    ///
    /// Handler calls in progress in this process are treated as by
    /// [`purge_prefix`](Self::purge_prefix): a response not stored yet cannot be marked stale, so
    /// a call of a URL under the prefix still running stores nothing (on a host not listed yet,
    /// its response would be stored fresh), and a request after the purge makes a handler call
    /// of its own rather than join its flight.
    pub async fn soft_purge_prefix(
        &self,
        host: Option<&str>,
        path_prefix: &str,
    ) -> impcache::Result<u64> {
        self.purge_prefix_by(Purge::Soft, host, path_prefix, |_| {})
            .await
    }

    /// [`purge_prefix`](Self::purge_prefix) or, `Purge::Soft`,
    /// [`soft_purge_prefix`](Self::soft_purge_prefix).
    async fn purge_prefix_by(
        &self,
        purge: Purge,
        host: Option<&str>,
        path_prefix: &str,
        on_progress: impl FnMut(DeleteProgress) + Send,
    ) -> impcache::Result<u64> {
        let config = &self.config;
        let sent = key::as_sent(path_prefix);
        let path_prefix: &str = &sent;
        let pattern = self.prefix_pattern(host, path_prefix);
        // In this process first, by tag or by sweep: a tag write does not reach the handler calls
        // of hosts not listed yet (a host is listed at its first store, after its handler call),
        // nor the flights of calls that started before it. And before the list of hosts is
        // read: a store in progress that is waited for has listed its host by then.
        self.purging(&pattern).await;
        if let Some(prefix) = config.tag_prefixes.declared(path_prefix) {
            if let Some(tags) = self.prefix_tags(host, prefix).await? {
                match purge {
                    Purge::Hard => config.cache.invalidate_tags(&tags).await?,
                    Purge::Soft => config.cache.soft_invalidate_tags(&tags).await?,
                }
                return Ok(0);
            }
        }
        config
            .cache
            .delete_pattern_with_progress(&pattern, on_progress)
            .await
    }

    /// The tags of the declared (encoded) `prefix` on `host`, or on every listed host (see
    /// [`purge_url`](Self::purge_url)); `None` when the hosts are not known (no list, or too many
    /// hosts to list).
    async fn prefix_tags(
        &self,
        host: Option<&str>,
        prefix: &str,
    ) -> impcache::Result<Option<Vec<String>>> {
        let config = &self.config;
        let segments = if host.is_some() || !config.key_by_host {
            vec![key::host_segment(config.host(host))]
        } else {
            match self.listed_hosts().await? {
                Some(segments) => segments,
                None => return Ok(None),
            }
        };
        let tag = |segment: &String| {
            prefixes::tag(&key::through_host(&config.namespace, segment), prefix)
        };
        Ok(Some(segments.iter().map(tag).collect()))
    }

    /// The host segments listed in the namespace's list of hosts (each store adds its host
    /// before writing its record, `store.rs`); `None` when the hosts are not known: no list
    /// (responses stored by an earlier version, or none at all) or too many hosts to list.
    async fn listed_hosts(&self) -> impcache::Result<Option<Vec<String>>> {
        let config = &self.config;
        let list = key::hosts_key(&config.namespace);
        Ok(match members::read(&config.cache, &list).await? {
            Members::Listed(hosts) if !hosts.is_empty() => Some(hosts),
            _ => None,
        })
    }

    /// What a purge of the keys `pattern` matches (a sweep, a purge on any host, a purge by a
    /// prefix's tag) does first in this process (see [`crate::landing`]): the handler calls of
    /// the URLs it matches still running will not store their responses, their flights are
    /// detached, and their stores in progress are waited for.
    async fn purging(&self, pattern: &str) {
        let reaches = |key: &str| impcache::glob_match(pattern.as_bytes(), key.as_bytes());
        let config = &self.config;
        config.landing.purging(&config.flights, reaches).await;
    }

    /// Removes every response this layer's namespace holds in the cache.
    pub async fn purge_all(&self) -> impcache::Result<u64> {
        self.purge_all_with_progress(|_| {}).await
    }

    /// [`purge_all`](Self::purge_all), calling `on_progress` after each batch of the sweep (see
    /// [`Cache::delete_pattern_with_progress`](impcache::Cache::delete_pattern_with_progress)).
    pub async fn purge_all_with_progress(
        &self,
        on_progress: impl FnMut(DeleteProgress) + Send,
    ) -> impcache::Result<u64> {
        let cache = &self.config.cache;
        let namespace = crate::key::namespace_segment(&self.config.namespace);
        let pattern = format!("{}:*", impcache::escape_pattern(&namespace));
        self.purging(&pattern).await;
        // The list of hosts first (not counted): a store that begins after it lists its host
        // again before writing its record. (One that listed its host just before it and writes
        // its record after the sweep leaves that record unlisted until the host's next store:
        // see `purge_url`.)
        let list = key::hosts_key(&self.config.namespace);
        cache.delete(&list).await?;
        // Stores now list their hosts again before writing, failing when the list fails.
        self.config.listed_hosts.forget(&list);
        cache
            .delete_pattern_with_progress(&pattern, on_progress)
            .await
    }
}

/// How a purge by tag treats what it reaches: hidden (a miss) or marked stale.
#[derive(Clone, Copy, Debug)]
enum Purge {
    Hard,
    Soft,
}

/// The host and the path and query a purge of one URL names: those of `absolute`, its URL in
/// absolute form ([`key::absolute_form`]), whose authority takes the place of `host`; else
/// `host` and `path_and_query` as given.
fn of_url<'a>(
    host: Option<&'a str>,
    path_and_query: &'a str,
    absolute: Option<&'a (String, String)>,
) -> (Option<&'a str>, &'a str) {
    match absolute {
        Some((authority, path_and_query)) => (Some(authority.as_str()), path_and_query.as_str()),
        None => (host, path_and_query),
    }
}
