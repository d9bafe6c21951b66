//! # impcache-tower
//!
//! A [tower] [`Layer`](tower::Layer) that caches HTTP responses in an [`impcache::Cache`]
//! (Redis, or the in-memory repository), with the defaults of a safe shared cache.
//!
//! ```no_run
//! use axum::{routing::get, Router, extract::Path};
//! use impcache::{Cache, MemoryCacheRepository};
//! use impcache_tower::CacheLayer;
//!
//! async fn show_user(Path(id): Path<u64>) -> String {
//!     format!("user {id}")
//! }
//!
//! # async fn run() {
//! let cache = Cache::new(MemoryCacheRepository::new());
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(show_user))
//!     .layer(CacheLayer::new(cache.clone()).expire(60));
//! # }
//! ```
//!
//! It fits `axum::Router::layer` and `route_layer` and any hyper 1 / tower service with an
//! `http::Response<B>` (`B: http_body::Body<Data = Bytes>`, no `Sync` needed); the inner error type
//! is kept (`Infallible` stays `Infallible`).
//!
//! Inside a router `nest`ed under a prefix, axum hands the layer the path without the prefix
//! (`/x` for `/api/x`). With the `axum` feature the layer puts the prefix back from the
//! request's `axum::extract::OriginalUri`, so it keys by the path the client sent, and so do
//! invalidations, [`CacheLayer::request_key`] and the URLs given to purges (a path or query
//! that a middleware rewrote is keyed as the handler sees it). Without it, apply the layer outside the `nest` (on the outer router):
//! inside, the keys name the stripped path, so that two nested routers sharing a layer and a
//! route path would share their entries, and a purge of the URL the client sent would miss.
//!
//! ## Rules
//!
//! | | |
//! |---|---|
//! | **Stored** | GET responses with status 200 ([`methods`](CacheLayer::methods), [`statuses`](CacheLayer::statuses)), bodies up to 1 MiB ([`max_body_size`](CacheLayer::max_body_size)) |
//! | **HEAD** | answered from the GET entry without a body; a HEAD response is never stored. Otherwise it is answered as a GET is, without a body: the client's honoured directives, `handler_timeout` and `hard_timeout` and a stale response standing in for a failed handler apply to it alike (not `soft_timeout`: a HEAD waits for its handler call), and a HEAD served stale (or refreshed early) revalidates the URL in the background with a GET, as nginx's `proxy_cache_convert_head` |
//! | **Never stored** | `Set-Cookie`; `Cache-Control: no-store`, `private`, `no-cache`; `Vary: *`; 206 or `Content-Range`; larger bodies (streamed through, never copied past the limit); trailers; a body that fails or whose client disconnects before its end; `Content-Type: text/event-stream` (server-sent events never end: each subscriber gets its own stream) |
//! | **Streaming** | a body still arriving when the handler returns streams to the client chunk by chunk while a copy is kept, stored once complete (`Cache-Status: impcache; fwd=uri-miss; detail=streamed`; its computed `ETag` is on the stored entry; a body of declared length, by `Content-Length` or an exact size hint, is complete once that length is read); a body that is all there is stored before the response leaves |
//! | **Bypassed** | requests with `Authorization` or `Cookie` (unless [`allow_authenticated`](CacheLayer::allow_authenticated), which then keys by them), `Range` requests, requests to switch protocols (an HTTP/1.1 `Upgrade` other than `h2c`), methods not stored, requests of a stored method that carry content (a GET when its fields declare it), and requests whose host the key cannot hold as the handler sees it: a target's host that a `Host` field contradicts (compared without case, the target's default port left out as in keys), userinfo in the target, several `Host` fields (below) |
//! | **Key** | method, host, path, query with its parameters sorted by name (the values of a repeated name keep their order: `?x=1&x=2` and `?x=2&x=1` are two entries), and the request's values of the headers the response's `Vary` names (learned per URL); see [`key`]. Never the request's content: a GET whose fields declare content (a handler may read it), and a request of another stored method (a `QUERY` or `POST` in [`methods`](CacheLayer::methods)) that carries content (a `Content-Length` other than 0 or a `Transfer-Encoding`; over HTTP/2 and HTTP/3, where content may come with neither, any request without `Content-Length: 0`) is neither answered from the cache nor stored (`fwd=bypass; detail=request-content`); nor is a request whose host the key cannot hold as the handler sees it: a target's host (an absolute-form target, HTTP/2's `:authority`) that a `Host` field contradicts, userinfo in the target, several `Host` fields (`fwd=bypass; detail=host-mismatch`) |
//! | **TTL** | [`expire`](CacheLayer::expire) (default 60 s), lowered by the response's `s-maxage`, else `max-age`; capped by [`max_ttl`](CacheLayer::max_ttl) |
//! | **Client `Cache-Control`** | ignored unless [`honor_request_cache_control`](CacheLayer::honor_request_cache_control) (`no-store`, `no-cache`, `max-age`, `min-fresh`, `max-stale`, `only-if-cached`: a `504` whenever the handler would be called, for a bypassed request too); `max-age` and `min-fresh` turn away a response served stale while revalidating too, unless `max-stale` covers it; a stale-if-error response still answers for a failed handler |
//! | **Hits** | the stored status and headers, `Content-Length`, `Age` and `Cache-Status: impcache; hit; ttl=N` (RFC 9211; [`status_header`](CacheLayer::status_header) adds `x-cache: HIT`); a matching `If-None-Match` gets 304 for a stored 2xx (an `ETag` is computed when the response has none), and without `If-None-Match` so does an `If-Modified-Since` no earlier than its `Last-Modified` |
//! | **Unsafe methods** | a 2xx/3xx response to `POST`, `PUT`, `PATCH`, `DELETE` (any method but `GET`, `HEAD`, `OPTIONS`, `TRACE` that is not in [`methods`](CacheLayer::methods)) removes the stored responses of its URL, and of the same-host URLs in its `Location` and `Content-Location`, before it is sent (RFC 9111 §4.4; the client reads its own write: a handler call of these URLs in this process that started before the change neither answers a later request nor stores its response, though one in another process may still store it); an error status removes nothing; with the cache down or slow it adds at most one repository deadline and fails open (logged). Two round trips whatever the keyspace: the URLs' records are read and removed, and their `Vary` variants, stored under the records' generation, are unreachable from then on (they expire with their TTL); only a record of an earlier version's format still has its variants swept (`SCAN`), the response waiting for it 500 ms at most. Off with [`invalidate_on_unsafe_methods(false)`](CacheLayer::invalidate_on_unsafe_methods) |
//! | **Concurrent misses** | one handler call per key per process, also across the background store: a delivered response is a hit for the next request (read your own writes, with [`coalesce`](CacheLayer::coalesce) on). Waiters get the stored response (a streamed one once complete, within [`lock_timeout`](CacheLayer::lock_timeout): it is read at the handler's pace, ahead of the leading request's client, up to [`max_body_size`](CacheLayer::max_body_size), so a slow first client does not delay them), never an uncacheable one, nor a tagged one purged after its handler call started (they share the next call, one of them leading it once that flight has ended), nor one whose URL was purged (or invalidated by an unsafe method) between its handler call's start and their arrival; when a stale response stood in for the leader's failed handler, each waiter answers with its own stale response; a leader whose client disconnects, whose handler panics or whose response body fails midway hands over to one new leader (its own client gets the body's error) |
//! | **Stale** | served past its freshness only within a stale window: [`stale_while_revalidate`](CacheLayer::stale_while_revalidate) (served at once, one background handler call per URL refreshes it) and [`stale_if_error`](CacheLayer::stale_if_error) (answers for a handler error, a status of [`stale_if_error_statuses`](CacheLayer::stale_if_error_statuses), or a [`handler_timeout`](CacheLayer::handler_timeout) / [`hard_timeout`](CacheLayer::hard_timeout); past a [`soft_timeout`](CacheLayer::soft_timeout) it answers while the call goes on), or the response's own `stale-while-revalidate` / `stale-if-error` (RFC 5861), which win; `must-revalidate`, `proxy-revalidate`, `no-cache` (and, with `follow_origin`, `s-maxage`) forbid it. The handler's answer to the call replaces the stale response even when it is not stored (a 404, `no-store`, `private`, a body over the limit: removed, the next request is a miss, RFC 9111 §4.3.3); only an error (a 5xx, a listed status, a handler error or timeout, a failed body) leaves it to stand in. `Cache-Status: impcache; hit; fwd=stale; ttl=-N; detail=…` when the request was not forwarded (`revalidating`, `fail-safe-throttle`), without `hit` when the handler was called first (RFC 9211: `detail=handler-error` / `handler-timeout` / `soft-timeout`, and `fwd-status=N; detail=handler-status`); `ttl` counts whole seconds past freshness, rounded up; `x-cache: STALE` |
//! | **Cache down or slow** | the handler answers; the lookup waits no longer than the repository's deadline, and stores happen in the background |
//!
//! ## Following the origin
//!
//! The table above is the default mode, where the server owns its cache. With
//! [`follow_origin(true)`](CacheLayer::follow_origin) the layer is an RFC 9111 shared cache
//! instead, for a reverse proxy or handlers that speak HTTP caching: the freshness lifetime comes
//! from `s-maxage`, `max-age`, `Expires` − `Date` or a `Last-Modified` heuristic (`CDN-Cache-Control`
//! and a [targeted field](CacheLayer::targeted_cache_control) first), upstream `Age`/`Date` count
//! in the hits' `Age`, any status but 1xx/206/304 is stored when explicitly fresh, and a stale
//! entry with a validator is revalidated with `If-None-Match`/`If-Modified-Since` (a `304`
//! refreshes it, as nginx's does, even one naming another `ETag`: see `CONFORMANCE.md`). No
//! `ETag` is computed: hits carry the origin's validators only. The safety
//! rules, the key, HEAD, streaming and invalidation stay as above. It passes 155 of the 160
//! required tests of the public HTTP cache test suite (cache-tests.fyi) with `stale_if_error`
//! as in the example proxy (151 without); see `CONFORMANCE.md` in the repository.
//!
//! ## Purging
//!
//! [`CacheLayer::purge_url`] removes one URL with all its variants: on a given host (or with
//! keys that leave the host out) without a scan, by removing its records (two round trips; the
//! variants of their generation are unreachable at once), and on any host through the list of
//! the hosts that stored responses (three round trips). The URL may be given in absolute form
//! (`http://example.com/users/1`): its authority is then the host.
//! [`CacheLayer::purge_prefix`] removes every URL under a path prefix, [`CacheLayer::purge_all`]
//! everything; the sweeps use [`Cache::delete_pattern`](impcache::Cache::delete_pattern) with the
//! patterns of [`key`]. A prefix declared with [`CacheLayer::tag_prefixes`] is purged without a
//! sweep: its responses carry the prefix's tag, and the purge invalidates it
//! ([`CacheLayer::soft_purge_prefix`] marks them stale instead).
//! Each has a `_with_progress` twin ([`CacheLayer::purge_prefix_with_progress`], ...) calling
//! back after each batch of the sweep, and a purge that fails midway says how many keys it had
//! removed ([`Error::removed_before_failure`](impcache::Error::removed_before_failure)).
//! [`CacheLayer::request_key`] gives a request's key.
//!
//! ## Tags and the cross-process lock (issue 16)
//!
//! A response's `Surrogate-Key` / `Cache-Tag` fields ([`CacheLayer::tag_headers`], removed before
//! the client unless [`CacheLayer::keep_tag_headers`]) and [`CacheLayer::tags_from`] give its
//! tags; [`CacheLayer::purge_tag`] (or [`Cache::invalidate_tag`](impcache::Cache::invalidate_tag)
//! anywhere) hides its responses, [`CacheLayer::soft_purge_tag`] makes them stale (`Cache-Tag`
//! tags case-insensitively, as on Cloudflare; `Surrogate-Key` tags as given). A tagged hit
//! reads its tags' state with its entry, in one round trip once the layer knows the URL's tags
//! (a second one the first time); an untagged hit is unchanged.
//! [`CacheLayer::lock`] makes one handler call per response (per `Vary` variant) across
//! processes with impcache's [`Lock`](impcache::Lock).
//!
//! ## Metrics
//!
//! With a [`metrics`](https://docs.rs/metrics) recorder installed, every request counts in
//! `impcache_http_requests_total{outcome, route}` (`hit`, `miss`, `bypass`, `error`, `stale`, and
//! `cancelled` for a request whose response future was dropped before its outcome was known),
//! each request once. `route` is the route axum matched (`/users/{id}`, never the request's
//! path) with the `axum` feature, absent otherwise. The table of metrics is in impcache's
//! `OBSERVABILITY.md`.
//!
//! ## Storage
//!
//! Entries are a compact binary framing (see the `entry` module source) stored with
//! [`Cache::set_raw`](impcache::Cache::set_raw): the body is stored as is, plus about 20 bytes and
//! the headers. Bump the cache's version to drop every entry at once.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

mod ahead;
mod body;
mod config;
mod copy;
mod entry;
mod flight;
mod freshness;
mod future;
mod held_lock;
mod hosts;
mod invalidate;
pub mod key;
mod landing;
mod layer;
mod lock;
mod metrics;
mod policy;
mod prefixes;
mod render;
mod revalidate;
mod service;
mod stale;
mod store;
mod tagging;
mod tags;

pub use body::ResponseBody;
pub use config::{
    StatusHeader, CACHE_STATUS, DEFAULT_EXPIRE_SECS, DEFAULT_KEEP_STALE, DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE, DEFAULT_NAMESPACE, DEFAULT_STALE_IF_ERROR_STATUSES, X_CACHE,
};
pub use copy::BoxError;
pub use future::ResponseFuture;
pub use layer::CacheLayer;
pub use service::CacheService;
pub use tags::DEFAULT_TAG_HEADERS;
