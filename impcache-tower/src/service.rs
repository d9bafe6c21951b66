//! [`CacheService`]: the middleware itself, and the way through it of one request: the plan, the
//! lookup, coalescing, the handler call, and the store of its response.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use impcache::__private::metrics::LayerOutcome;
use impcache::Cache;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::config::{Config, X_CACHE};
use crate::copy::{self, BoxError, Buffered, StreamCopy};
use crate::entry::{now_ms, Entry};
use crate::flight::{FlightGuard, Join, Leader, Published, Shared, Ticket, Wait};
use crate::freshness;
use crate::future::ResponseFuture;
use crate::held_lock::HeldLock;
use crate::invalidate;
use crate::key;
use crate::layer::CacheLayer;
use crate::lock::Locked;
use crate::metrics::Counted;
use crate::policy::{self, Limits, NotStored, RequestPlan, Why};
use crate::render::{self, mark, Outcome};
use crate::revalidate;
use crate::stale::{self, Handed, Judged};
use crate::store::{lookup, Lookup, Seen, Unfinished};
use crate::tagging;
use crate::tags::TAGS_FIELD;
use http_body_util::BodyExt;

/// The service [`CacheLayer`] wraps around a handler (or any
/// `Service<Request<_>, Response = Response<_>>`). Its error type is the inner service's.
///
/// It is ready when the inner service is (`poll_ready` passes through, as tower-http's services
/// do): a concurrency limit or a `Buffer` between it and the handler holds hits too while the
/// handler is saturated, also by a call that outlives its request (past a soft timeout, a
/// background revalidation). Put such a limit outside the cache's layer, or in the handler.
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> CacheService<S> {
    /// Wraps `inner` with the rules of `layer`.
    pub fn new(inner: S, layer: CacheLayer) -> Self {
        CacheService {
            inner,
            config: layer.config,
        }
    }

    /// A [`CacheLayer`] storing in `cache` (same as [`CacheLayer::new`]).
    pub fn layer(cache: Cache) -> CacheLayer {
        CacheLayer::new(cache)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.config.warn_of_an_invalid_lock();
        CacheService::new(inner, self.clone())
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Move the service that was driven to readiness into the future; keep a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(Box::pin(run(Arc::clone(&self.config), inner, request)))
    }
}

/// A stored response served past its freshness (see [`crate::stale`]).
fn stale_hit<B>(
    entry: Entry,
    request_headers: &HeaderMap,
    head: bool,
    config: &Config,
    past: Duration,
    why: Why,
) -> Response<ResponseBody<B>> {
    let mut response = render::serve_stale(
        entry,
        request_headers,
        head,
        config.status_header,
        past,
        why,
    );
    tagging::strip(config, response.headers_mut());
    stored_body(response, head)
}

/// The body of a stored response served: its data, or for a HEAD request none, with no size of
/// its own unless its `Content-Length` gives the GET's: axum's router writes a `Content-Length`
/// from an exact size, and sent `0` for the HEAD of a stored 204 or a 304, which have none.
fn stored_body<B>(response: Response<Bytes>, head: bool) -> Response<ResponseBody<B>> {
    if head {
        let length_known = response.headers().contains_key(header::CONTENT_LENGTH);
        response.map(|_| ResponseBody::headless(length_known))
    } else {
        response.map(ResponseBody::full)
    }
}

/// A stored response, as sent at `now_ms` (see [`render::serve`]).
fn hit<B>(
    entry: Entry,
    request_headers: &HeaderMap,
    head: bool,
    config: &Config,
    now_ms: u64,
) -> Response<ResponseBody<B>> {
    let mut response = render::serve(entry, request_headers, head, config.status_header, now_ms);
    // Stored with the response (a `304` may update them), served only when kept.
    tagging::strip(config, response.headers_mut());
    stored_body(response, head)
}

/// A request through the layer: the lookup, and a hit served from it. Everything that calls the
/// handler lives in boxed futures of its own ([`bypass`], [`forward`]), so that the future of a
/// hit stays small (moving it into its box is part of every request's cost).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment on the `async move` block
fn run<S, ReqBody, ResBody>(
    shared: Arc<Config>,
    inner: S,
    request: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    // An `async move` block rather than an `async fn`: an `async fn` moves each argument into a
    // second slot of its future (the request alone is ~240 bytes), and this future is moved
    // into a fresh allocation for every request (1,456 bytes for the axum route of
    // `benches/op-cost`, most of it the cache's `get_raw` future).
    async move {
        let config = &*shared;
        let plan = policy::plan_request(
            &request,
            &config.methods,
            config.allow_authenticated,
            config.honor_request_cache_control,
        );
        // Counted once, when its outcome is known; dropped before (its client went away), as
        // `cancelled` (the drop guard: see `Counted`), wherever it waited.
        let mut counted = Counted::of(&request);
        // A HEAD request is never a refresh: a client's `no-cache` bypasses it (see the plan).
        let (head, refresh, limits) = match plan {
            RequestPlan::Bypass(reason) => {
                counted.count(LayerOutcome::Bypass);
                return Box::pin(bypass(config, inner, request, reason)).await;
            }
            RequestPlan::Head { limits } => (true, false, limits),
            RequestPlan::Lookup { refresh, limits } => (false, refresh, limits),
        };
        let keys = config.request_keys(&request);

        // Taken before the lookup: see `flight` (read your own writes).
        let ticket = config.flights.ticket();
        // 1. Lookup (skipped on a honoured client refresh). Failures fall through to the handler.
        let (fwd, may_store, detail, stale, fallback, seen) = if !refresh {
            match lookup(config, &keys, request.headers()).await {
                Lookup::Hit(entry, seen) => {
                    // One clock read: judged fresh at `now`, served with its age at `now`.
                    let now = now_ms();
                    // A client asking for a fresher response (honoured `max-age`, `min-fresh`)
                    // is not served stale from a stale-while-revalidate window: the handler
                    // answers (`fwd=request`), as past that window.
                    let (judged, fwd) = match stale::judge(config, &entry, now) {
                        Judged::WhileRevalidating { past }
                            if !limits.accept_stale(&entry, now, past) =>
                        {
                            let judged = stale::not_while_revalidating(config, &entry, past);
                            (judged, "request")
                        }
                        judged => (judged, "stale"),
                    };
                    match judged {
                        // Fresh, but older (or closer to its expiry) than the client accepts.
                        Judged::Fresh if !limits.accept_entry(&entry, now) => {
                            ("request", true, None, None, None, seen)
                        }
                        Judged::Fresh => {
                            counted.count(LayerOutcome::Hit);
                            // An early refresh is a background call: not while throttled.
                            if stale::refreshes_early(config, &entry, now)
                                && !config.throttled(keys.url())
                            {
                                let response =
                                    hit(entry.clone(), request.headers(), head, config, now);
                                let found = (entry, seen);
                                revalidate_in_background(
                                    &shared, inner, request, keys, ticket, found,
                                );
                                return Ok(response);
                            }
                            return Ok(hit(entry, request.headers(), head, config, now));
                        }
                        // A handler call failed lately (the fail-safe throttle): the stale
                        // entry answers, the handler is left alone.
                        Judged::WhileRevalidating { past } | Judged::IfError { past }
                            if config.throttled(keys.url()) =>
                        {
                            counted.count(LayerOutcome::Stale);
                            let why = Why::Throttled;
                            return Ok(stale_hit(
                                entry,
                                request.headers(),
                                head,
                                config,
                                past,
                                why,
                            ));
                        }
                        Judged::WhileRevalidating { past } => {
                            counted.count(LayerOutcome::Stale);
                            let response = stale_hit(
                                entry.clone(),
                                request.headers(),
                                head,
                                config,
                                past,
                                Why::Revalidating,
                            );
                            let found = (entry, seen);
                            revalidate_in_background(&shared, inner, request, keys, ticket, found);
                            return Ok(response);
                        }
                        // Stale: the handler answers, the entry stands in if it fails (and, with
                        // a soft timeout, if it is slow).
                        Judged::IfError { past } => match config.soft_timeout {
                            Some(soft) if !head && !limits.only_if_cached => {
                                let found = (entry, seen);
                                let call = (inner, request, keys, ticket, limits);
                                let within =
                                    within_soft_timeout(&shared, call, found, (past, fwd), soft);
                                return Box::pin(within).await.counted(&mut counted);
                            }
                            _ => (fwd, true, None, Some(entry), Some(past), seen),
                        },
                        // Origin mode: a stale entry, revalidated when it has a validator.
                        Judged::Expired => (fwd, true, None, Some(entry), None, seen),
                    }
                }
                Lookup::Miss(fwd, seen) => (fwd, true, None, None, None, seen),
                Lookup::Failed { backend } => {
                    ("uri-miss", !backend, Some("cache-error"), None, None, None)
                }
            }
        } else {
            ("request", true, None, None, None, None)
        };
        // `only-if-cached` (honoured request directives): no stored response answers, so a 504
        // rather than the handler (RFC 9111 §5.2.1.7).
        if limits.only_if_cached {
            counted.count(LayerOutcome::Miss);
            return Ok(gateway_timeout(
                config,
                unstored_miss(fwd, "only-if-cached"),
            ));
        }
        // A failed lookup is an `error` whatever follows; otherwise counted by `forward`, once
        // the request is answered from a flight's leader or another process (`hit`) or goes to
        // the handler (`miss`; when a stale entry may stand in for it, once it has answered), or
        // as `cancelled` when its client goes away before (while it waits, or the handler runs).
        let counted = match (fallback, detail) {
            (None, Some(_)) => {
                counted.count(LayerOutcome::Error);
                None
            }
            _ => Some(counted),
        };
        // Built after the lookup, not before: the request and the inner service moved into it
        // across the lookup's await would take a second slot in this future (600 bytes more).
        let miss = Miss {
            inner,
            request,
            keys,
            ticket,
            head,
            refresh,
            limits,
            fwd,
            may_store,
            detail,
            stale,
            fallback,
            counted,
            lead: None,
            lock: None,
            seen,
        };
        Box::pin(forward(config, miss)).await
    }
}

/// A request the cache does not answer (`Cache-Control: no-store`, a method it does not cache, …):
/// the handler's response, marked (a `504` for an honoured `only-if-cached`).
async fn bypass<S, ReqBody, ResBody>(
    config: &Config,
    mut inner: S,
    request: Request<ReqBody>,
    reason: policy::Bypass,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let fwd = if reason == policy::Bypass::Method {
        "method"
    } else {
        "bypass"
    };
    // `only-if-cached` (honoured request directives): a bypassed request has no stored response
    // to answer it, so a 504 rather than the handler, as on a miss (RFC 9111 §5.2.1.7).
    if config.honor_request_cache_control
        && policy::CacheControl::parse(request.headers()).only_if_cached
    {
        let detail = "only-if-cached";
        return Ok(gateway_timeout(config, Outcome::Bypass { fwd, detail }));
    }
    let invalidation = invalidate::Pending::of(config, &request);
    let mut response = inner.call(request).await?.map(ResponseBody::inner);
    if let Some(invalidation) = invalidation {
        invalidation
            .run(config, response.status(), response.headers())
            .await;
    }
    tagging::strip(config, response.headers_mut());
    mark(
        &mut response,
        config.status_header,
        Outcome::Bypass {
            fwd,
            detail: reason.detail(),
        },
    );
    Ok(response)
}

/// A request the lookup did not answer, and what the lookup found out: the input of [`forward`].
struct Miss<S, ReqBody> {
    /// The inner service, driven to readiness.
    inner: S,
    request: Request<ReqBody>,
    keys: key::UrlKeys,
    /// Taken before the lookup: see [`crate::flight`] (read your own writes).
    ticket: Ticket,
    /// A HEAD request: never leads a flight nor takes the lock; its response is never stored.
    head: bool,
    /// The client asked for a fresh response (honoured `no-cache`): not coalesced.
    refresh: bool,
    /// What the client's honoured directives ask of a stored response: binds one handed to it
    /// by a flight or the cross-process lock as it bound the lookup's (see [`stale::handed`]).
    limits: Limits,
    /// The `fwd` of the response's `Cache-Status`: `request`, `stale`, `uri-miss` or
    /// `vary-miss`.
    fwd: &'static str,
    /// `false` when the cache is down or slow: nothing is stored then.
    may_store: bool,
    /// The `detail` of the response's `Cache-Status` set by the lookup (`cache-error`).
    detail: Option<&'static str>,
    /// The stale entry the lookup found (origin-freshness mode), revalidated when it can be.
    stale: Option<Entry>,
    /// How long `stale` is past its freshness, when it may stand in for a failed handler
    /// (stale-if-error).
    fallback: Option<Duration>,
    /// The request's count, `None` when counted already (a failed lookup's `error`) or not the
    /// client's (a background call). Dropped uncounted (the client went away while the request
    /// waited), it counts as `cancelled` (see [`Counted`]).
    counted: Option<Counted>,
    /// The URL's flight, already led (a background revalidation): no coalescing.
    lead: Option<FlightGuard>,
    /// The URL's cross-process lock, taken by a background revalidation (`lead`) before the
    /// call: not taken again.
    lock: Option<HeldLock>,
    /// The record the lookup found, whose generation a new variant is stored under.
    seen: Option<Seen>,
}

impl<S, ReqBody> Miss<S, ReqBody> {
    /// A handler call that refreshes the stale `entry` the lookup found (`fwd=stale`, stored
    /// when it may be), uncounted: a background call, or one its caller counts.
    fn of_stale(
        inner: S,
        request: Request<ReqBody>,
        keys: key::UrlKeys,
        ticket: Ticket,
        (entry, seen): (Entry, Option<Seen>),
    ) -> Self {
        Miss {
            inner,
            request,
            keys,
            ticket,
            head: false,
            refresh: false,
            limits: Limits::default(),
            fwd: "stale",
            may_store: true,
            detail: None,
            stale: Some(entry),
            fallback: None,
            counted: None,
            lead: None,
            lock: None,
            seen,
        }
    }
}

/// A request the lookup did not answer: the handler's response, stored when it may be.
async fn forward<S, ReqBody, ResBody>(
    config: &Config,
    miss: Miss<S, ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Miss {
        mut inner,
        mut request,
        keys,
        ticket,
        head,
        refresh,
        limits,
        fwd,
        may_store,
        detail,
        stale,
        fallback,
        mut counted,
        lead,
        lock,
        seen,
    } = miss;
    let revalidation = lead.is_some();
    let mut count = |outcome| {
        if let Some(counted) = &mut counted {
            counted.count(outcome);
        }
    };
    let url = keys.url();
    // The request goes to the handler: its headers are kept for the variant key.
    let headers = request.headers().clone();
    // Stale-if-error: the stale entry answers for a handler that failed, timed out or answered
    // with one of the configured statuses (this request's, or its flight leader's). The waiters
    // are told, and answer with their own stale entry (see `stood_in`).
    let stand_in = fallback.zip(stale.as_ref());

    // 2. Coalescing: one handler call per URL in this process (not for a client's refresh,
    //    which asked for a new response). A HEAD never leads a flight (its response has no body
    //    to share): it takes the answer of a GET's flight under way, or calls for itself.
    // Its waits for other requests' calls: one lock timeout in all, across hand-overs.
    let mut waiting = Waiting::new(config.lock_timeout, limits);
    // Since when this request waits for other calls: the cross-process lock's `wait` is one
    // allowance from here, however many of this process's calls it waited for first.
    let coalescing = std::time::Instant::now();
    // Released by a leader whose answer was not for sharing (see `Coalesced::NotShared`).
    let mut unshared = false;
    let guard = if lead.is_some() {
        lead
    } else if config.coalesce && !refresh {
        // The URL's `Vary` names, when the lookup found them (a vary-miss).
        let vary = seen.as_ref().map_or(&[][..], |seen| &seen.vary[..]);
        let coalesced = if head {
            let look_again = may_store.then_some(ticket);
            head_from_flight(config, &keys, &headers, vary, look_again, &mut waiting).await
        } else {
            coalesce(
                config,
                &keys,
                &headers,
                vary,
                ticket,
                may_store,
                &mut waiting,
            )
            .await
        };
        unshared = matches!(coalesced, Coalesced::NotShared);
        match coalesced {
            Coalesced::Hit(entry) => {
                count(LayerOutcome::Hit);
                return Ok(hit(entry, &headers, head, config, now_ms()));
            }
            Coalesced::Lead(guard) => Some(guard),
            // The leader's handler failed and a stale entry stood in (or its call timed out):
            // so does this request's, without a second call of a failing handler. Without one, it
            // calls the handler; after a call that timed out, within what is left of its own hard
            // timeout (it waited as long: with nothing left, the handler is not called again).
            Coalesced::StoodIn(why) => match stand_in {
                Some(stand_in) => {
                    count(LayerOutcome::Stale);
                    return Ok(stood_in(config, None, url, stand_in, &headers, head, why));
                }
                None => None,
            },
            Coalesced::Alone | Coalesced::NotShared => None,
        }
    } else {
        None
    };
    // A fresh response handed over there, which the request's limits refused: its own call is
    // `fwd=request`, as after its lookup's entry was refused.
    let fwd = if waiting.refused { "request" } else { fwd };

    // 2b. The cross-process lock (`CacheLayer::lock`): for a call this process leads, with a
    //     stale entry at hand too (as `get_or_set`'s); a background revalidation took it before
    //     the call. Not for a request whose leader's answer was not for sharing, twice (see
    //     `coalesce`): it calls the handler at once, as without the lock (taking the lock in
    //     turn, a process's waiters made one call after another: 50 requests of a URL
    //     answering 500 took 50 calls' time).
    let (locked, fwd) = if revalidation {
        (lock, fwd)
    } else if may_store && !refresh && !head && !unshared {
        let asks = (&headers, &limits);
        let spent = coalescing.elapsed();
        match crate::lock::take(config, &keys, asks, seen.as_ref(), None, spent).await {
            Locked::Stored(entry) => {
                count(LayerOutcome::Hit);
                return Ok(hit(entry, &headers, false, config, now_ms()));
            }
            Locked::Call(held) => (held, fwd),
            // A stored response the request's limits refuse: as after its lookup's.
            Locked::Refused(held) => (held, "request"),
            // Only a revalidation is told so.
            Locked::Busy => (None, fwd),
        }
    } else {
        (None, fwd)
    };

    // Recorded in progress before the handler is called (see `landing`): a purge of the URL
    // from then on refuses to store its response, which may predate the purge. None for a HEAD,
    // never stored, and when nothing is stored (the cache failing).
    let call = (may_store && !head).then(|| config.landing.call(url));
    // Tags (issue 16): the request's, and the time the handler call starts (an invalidation of
    // one of its tags from then on hides the response). None for a HEAD, never stored.
    let created = tagging::stamp_micros();
    let mut request_tags = match &config.tags_from {
        Some(tags_from) if !head => {
            let (parts, body) = request.into_parts();
            let request_tags = (tags_from.0)(&parts);
            request = Request::from_parts(parts, body);
            request_tags
        }
        _ => Vec::new(),
    };
    // With the tags of the declared path prefixes it is under (`CacheLayer::tag_prefixes`).
    if !head {
        request_tags.extend(config.tag_prefixes.tags_of(&keys));
    }

    // 3. The handler (an error is not shared: the waiters call the handler themselves, unless a
    //    stale entry stood in for it); a stale entry with a validator makes the call a
    //    validation request (not a HEAD's: its answer refreshes the entry, which a HEAD does not
    //    store).
    let revalidating = config.follow_origin
        && !head
        && stale
            .as_ref()
            .is_some_and(|stale| revalidate::make_conditional(stale, request.headers_mut()));
    // The client's validators are answered from the response (`headers` keeps them); a HEAD's,
    // whose response is not stored, by the handler.
    let conditional = may_store
        && !head
        && !revalidating
        && revalidate::without_validators(request.headers_mut());
    let request_ms = now_ms();
    // Counted before the call, unless a stale entry may stand in for it: then once the handler
    // has answered (a request whose client goes away meanwhile counts as `cancelled`).
    let count_after_call = stand_in.is_some();
    if !count_after_call {
        count(LayerOutcome::Miss);
    }
    // The handler's time limit: the handler timeout when a stale entry may answer instead, and
    // the hard timeout for every call, less what this request waited for other requests' calls
    // that timed out or whose leaders went away (as `get_or_set`'s waiters: one hard timeout in
    // all, not one per call; see `Waiting`).
    let hard_timeout = config.hard_timeout.map(|hard| waiting.hard_left(hard));
    let limit = match stand_in {
        Some(_) => [config.handler_timeout, hard_timeout]
            .into_iter()
            .flatten()
            .min(),
        None => hard_timeout,
    };
    let called = match limit {
        Some(limit) => match call_within(limit, || inner.call(request)).await {
            Some(called) => called,
            None => {
                let why = Why::HandlerTimeout;
                if let Some(stand_in) = stand_in {
                    count(LayerOutcome::Stale);
                    return Ok(stood_in(config, guard, url, stand_in, &headers, head, why));
                }
                // The waiters are told: they waited as long (see `Coalesced::StoodIn`).
                if let Some(guard) = guard {
                    guard.publish(Shared::TimedOut);
                }
                let url = config.logged(url);
                impcache::__private::limited_warn!(target: "impcache_tower", url, ?limit, "the handler timed out (hard timeout): 504");
                let outcome = unstored_miss(fwd, "handler-timeout");
                return Ok(gateway_timeout(config, outcome));
            }
        },
        None => inner.call(request).await,
    };
    if let Some((past, entry)) = stand_in {
        let failed = match &called {
            Err(_) => Some(Why::HandlerError),
            Ok(response) if stale::stands_in_for(config, &entry.headers, response.status()) => {
                Some(Why::HandlerStatus(response.status()))
            }
            Ok(_) => None,
        };
        if let Some(why) = failed {
            count(LayerOutcome::Stale);
            let stand_in = (past, entry);
            return Ok(stood_in(config, guard, url, stand_in, &headers, head, why));
        }
    }
    if count_after_call {
        count(LayerOutcome::Miss);
    }
    let response = match called {
        Ok(response) => response,
        Err(error) => {
            if let Some(guard) = guard {
                guard.not_shared();
            }
            return Err(error);
        }
    };
    if !response.status().is_server_error() {
        config.handler_succeeded(url);
    }
    if head {
        // Never stored: a HEAD response has no body to serve GETs with. Nor is one sent, as on
        // a hit: a handler that wrote one (a service answering HEAD as GET) had it dropped by
        // hyper, but not by a caller of the layer without a server (`oneshot`, another layer).
        // Its headers, `Content-Length` included, are the GET's, as RFC 9110 §9.3.2 has them: a
        // body of a known length that the handler sent without the field gets it here, as a
        // server would have written it (axum's router writes it above the layer, from the body).
        let (mut parts, body) = response.into_parts();
        let length = body
            .size_hint()
            .exact()
            .filter(|_| render::has_content_length(parts.status));
        if let Some(length) = length {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(length));
        }
        let length_known = parts.headers.contains_key(header::CONTENT_LENGTH);
        let mut response = Response::from_parts(parts, ResponseBody::headless(length_known));
        response.headers_mut().remove(TAGS_FIELD);
        tagging::strip(config, response.headers_mut());
        let detail = detail.or(Some(NotStored::Head.detail()));
        let outcome = Outcome::Miss {
            fwd,
            stored: false,
            detail,
        };
        mark(&mut response, config.status_header, outcome);
        return Ok(response);
    }
    let response_ms = now_ms();
    let (mut parts, body) = response.into_parts();
    // Never taken from a handler: the layer's own field (an entry's tags).
    parts.headers.remove(TAGS_FIELD);
    // Where the stored response the lookup found (stale, or fresh and refreshed early) is: an
    // answer that is not stored may replace it (see `replaced`).
    let found_at = stale.as_ref().map(|_| {
        let vary = seen.as_ref().map_or(&[][..], |seen| &seen.vary[..]);
        key::variant_key(url, vary, &headers, config.allow_authenticated)
    });
    if let Some(stale) = stale.filter(|_| revalidating) {
        // A `304` answering the validation refreshes the stale entry, its tags included.
        if parts.status == http::StatusCode::NOT_MODIFIED {
            let refresh = revalidate::Refresh {
                keys,
                headers: &headers,
                stale,
                not_modified: &parts.headers,
                request_ms,
                response_ms,
                request_tags,
                created,
                seen,
                call,
                guard,
            };
            return Ok(revalidate::refreshed(config, refresh)
                .await
                .map(ResponseBody::full));
        }
        if parts.status.is_server_error() {
            // Outside a stale-if-error window (none, past it, or `must-revalidate` & co., see
            // `stale::policy`), or a status it does not cover (`stale::stands_in_for`): the error
            // is served, and the stale entry kept until it expires. Otherwise the entry answered
            // above.
            tracing::debug!(status = %parts.status, "impcache-tower: revalidation failed");
        }
    }
    // A response without a `Date` gets the time it arrived, as a cache must give one it stores
    // or forwards (RFC 9110 §6.6.1), and its hits send that `Date` again, as Varnish does:
    // stored without it, each hit was given a new `Date` by the server beside the stored
    // `Expires` and the hit's `Age`, so a downstream cache counted the age twice (found by a
    // probe: a response with 58 s left was taken for one with 56 s, 2 s after it was stored).
    parts
        .headers
        .entry(header::DATE)
        .or_insert_with(|| crate::entry::http_date(response_ms));
    // Its tag fields stay in its headers: stored with it (a `304` may update them), and removed
    // before the client unless kept.
    let tagged = tagging::collect(config, request_tags, &parts.headers, created);
    let verdict = if config.follow_origin {
        freshness::storable(
            config,
            parts.status,
            &parts.headers,
            headers.contains_key(header::AUTHORIZATION),
            (request_ms, response_ms),
        )
        .map(|verdict| (Some(verdict.ttl), Some((verdict.freshness, response_ms))))
    } else {
        let (expire, max_ttl) = config.ttls();
        policy::storable(
            (parts.status, &parts.headers, response_ms),
            &config.statuses,
            expire,
            max_ttl,
        )
        .map(|ttl| (ttl, None))
    };
    let verdict = verdict.and_then(|ttl| {
        if copy::exceeds(&parts.headers, &body, config.max_body_size) {
            Err(NotStored::TooLarge)
        } else {
            Ok(ttl)
        }
    });
    let not_stored = |reason: NotStored| Outcome::Miss {
        fwd,
        stored: false,
        detail: detail.or(Some(reason.detail())),
    };
    let (ttl, origin) = match verdict {
        Ok(ttl) => ttl,
        Err(reason) => {
            // Removed before the flight ends: a request that looks the URL up once it has ended
            // does not find the response this one replaces.
            let named = || {
                let vary = policy::vary_names(&parts.headers).unwrap_or_default();
                key::variant_key(url, &vary, &headers, config.allow_authenticated)
            };
            let answer = (parts.status, reason);
            if let Some(replaced) = replaced(config, found_at, (fwd, may_store), answer, named) {
                revalidate::remove(&config.cache, &replaced).await;
            }
            // Waiters call the handler themselves: an uncacheable response is never shared.
            if let Some(guard) = guard {
                guard.not_shared();
            }
            // Sent whole even to a conditional request: a 200 answers one too, and a 304 built
            // here would drop what only the handler's answer carries (a `Set-Cookie`, say).
            tagging::strip(config, &mut parts.headers);
            let mut response = Response::from_parts(parts, ResponseBody::inner(body));
            mark(&mut response, config.status_header, not_stored(reason));
            return Ok(response);
        }
    };

    // 4. Read the body as far as it is there, up to the limit: complete, it is stored (in the
    //    background) and handed to the waiters before the response leaves; still arriving, it
    //    streams to the client while a copy is kept, stored once complete; past the limit, it
    //    streams through unstored.
    let vary = policy::vary_names(&parts.headers).unwrap_or_default();
    let variant_key = key::variant_key(url, &vary, &headers, config.allow_authenticated);
    let generation = crate::store::generation(seen.as_ref(), &vary);
    let policy = stale::policy(config, &parts.headers).unwrap_or_default();
    // The URL's next hit reads these tags' state with its record (`tags.rs`, `LearnedTags`).
    if let Some(tagged) = &tagged {
        config.learned_tags.learn(keys.record(), &tagged.tags);
    }
    let unfinished = Unfinished {
        cache: config.cache.clone(),
        keys,
        listed: config.host_listing(),
        call,
        compute_etag: config.compute_etag && !config.follow_origin,
        status: parts.status,
        headers: policy::stored_headers(&parts.headers, &[X_CACHE]),
        vary,
        variant_key,
        ttl: ttl.map(|ttl| stale::key_ttl(ttl, &policy)),
        origin,
        stale: policy,
        generation,
        tags: tagged,
        lock: locked,
        guard,
    };
    let declared = policy::declared_length(&parts.headers);
    let buffered = copy::buffer(body, config.max_body_size, declared).await;
    let (body, stored, detail, complete) = match buffered {
        Buffered::Complete(body) => {
            let (etag, stored, storing) = unfinished.finish(body.clone());
            if let Some(etag) = etag {
                parts.headers.insert(header::ETAG, etag);
            }
            if let Some(storing) = storing {
                storing.await;
            }
            (ResponseBody::full(body), stored, detail, true)
        }
        Buffered::Partial {
            frames,
            rest,
            reason,
            hint,
        } => {
            // Before the flight ends (see above).
            let answer = (parts.status, reason);
            let named = || unfinished.variant_key.clone();
            if let Some(replaced) = replaced(config, found_at, (fwd, may_store), answer, named) {
                revalidate::remove(&config.cache, &replaced).await;
            }
            unfinished.give_up(reason);
            let body = ResponseBody::replay(frames, rest, hint);
            (body, false, detail.or(Some(reason.detail())), false)
        }
        Buffered::Streaming {
            mut data,
            rest,
            hint,
        } => {
            // Its length: the declared one, else an exact size hint (a server declares that
            // one for it).
            let declared = declared.or(hint.exact());
            // What the answer replaces if its body turns out not storable (too large, trailers):
            // as for a body that is all there (above), removed then.
            let answer = (parts.status, NotStored::TooLarge);
            let named = || unfinished.variant_key.clone();
            let replaces = replaced(config, found_at, (fwd, may_store), answer, named)
                .map(|key| (config.cache.clone(), key));
            let frames = data.frames().collect();
            let copy = StreamCopy::new(data, config.max_body_size, declared, unfinished)
                .replacing(replaces);
            let body = ResponseBody::streaming(frames, rest, copy, hint);
            // Stored when (and if) the body completes.
            (body, false, detail.or(Some("streamed")), false)
        }
    };
    // Stored with its tag fields (above), sent without them unless kept.
    tagging::strip(config, &mut parts.headers);
    // Only a complete body answers with a 304: a 200 answers a conditional request too, and a
    // body still streaming is stored once it has all been read.
    let mut response = if complete
        && conditional
        && render::matches_validators(&headers, parts.status, &parts.headers)
    {
        render::not_modified(&parts.headers).map(ResponseBody::full)
    } else {
        Response::from_parts(parts, body)
    };
    mark(
        &mut response,
        config.status_header,
        Outcome::Miss {
            fwd,
            stored,
            detail,
        },
    );
    Ok(response)
}

/// The key of the stored response that an answer the layer does not store (`status`, not
/// stored for `reason`) replaces, to be removed ([`revalidate::remove`]); `None` when it replaces
/// none, or nothing is stored (`may_store` false: the cache failing):
///
/// - The response the lookup found (`found_at`: a stale one, or a fresh one refreshed early),
///   unless the answer is one a stale response may stand in for ([`answer_keeps_stale`]): a
///   full response to a revalidation replaces the stored one (RFC 9111 §4.3.3), as a new `404`
///   replaces a stale object in Varnish. Kept, the stale response would be served for the rest
///   of its stale-while-revalidate window, each request starting another background call.
/// - In the origin mode, a `no-store` answer removes the response it replaces: the one found,
///   or for a client's refresh (`fwd=request`: its lookup skipped, or its fresh entry refused)
///   the variant the answer names (`named`).
fn replaced(
    config: &Config,
    found_at: Option<String>,
    (fwd, may_store): (&str, bool),
    (status, reason): (http::StatusCode, NotStored),
    named: impl FnOnce() -> String,
) -> Option<String> {
    if !may_store {
        return None;
    }
    let no_store = config.follow_origin && reason == NotStored::NoStore;
    match found_at {
        Some(found_at) if no_store || !answer_keeps_stale(config, status, reason) => Some(found_at),
        None if no_store && fwd == "request" => Some(named()),
        _ => None,
    }
}

/// Whether an answer (`status`, not stored for `reason`) leaves the stored response it
/// revalidates in place: an error, for which a stale response may stand in (RFC 5861: a 5xx, a
/// [listed status](crate::CacheLayer::stale_if_error_statuses), a body that failed or is not the
/// length it declares, an incomplete response), an origin shedding load (`429`: it says nothing
/// of the resource, and removing the stale response would send every request to the origin that
/// asked for less; nginx serves stale on it with `proxy_cache_use_stale http_429`), or not a
/// full response (a `206`, a `304`).
fn answer_keeps_stale(config: &Config, status: http::StatusCode, reason: NotStored) -> bool {
    status.is_server_error()
        || config.stale_if_error_statuses.contains(&status)
        || reason.is_failure()
        || matches!(
            status,
            http::StatusCode::TOO_MANY_REQUESTS
                | http::StatusCode::PARTIAL_CONTENT
                | http::StatusCode::NOT_MODIFIED
        )
}

/// A stale entry, `past` its freshness, answering for a failed handler (stale-if-error): logged,
/// and the flight's waiters told, so that each answers with its own stale entry (its variant's)
/// instead of calling the failing handler again. Without a body for a HEAD request.
fn stood_in<B>(
    config: &Config,
    guard: Option<FlightGuard>,
    url: &str,
    (past, entry): (Duration, &Entry),
    headers: &HeaderMap,
    head: bool,
    why: Why,
) -> Response<ResponseBody<B>> {
    if let Some(guard) = guard {
        guard.publish(Shared::StoodIn(why));
    }
    config.handler_failed(url);
    impcache::__private::limited_warn!(
        target: "impcache_tower",
        url = config.logged(url),
        cause = why.detail(),
        stale_secs = past.as_secs(),
        "serving a stale response: the handler failed"
    );
    let mut response = stale_hit(entry.clone(), headers, head, config, past, why);
    response.extensions_mut().insert(StoodIn);
    response
}

/// Marks a stale entry's response standing in for a failed handler, for
/// [`within_soft_timeout`]'s count (removed there).
#[derive(Clone, Copy, Debug)]
struct StoodIn;

/// The answer of [`within_soft_timeout`], counted by its caller.
enum WithinSoft<B, E> {
    /// The handler's answer (or the stale entry standing in for its failure), in time.
    Answered(Result<Response<ResponseBody<B>>, E>),
    /// The stale entry, past the soft timeout.
    Stale(Response<ResponseBody<B>>),
}

impl<B, E> WithinSoft<B, E> {
    fn counted(self, counted: &mut Counted) -> Result<Response<ResponseBody<B>>, E> {
        match self {
            WithinSoft::Answered(Ok(mut response)) => {
                let stood_in = response.extensions_mut().remove::<StoodIn>().is_some();
                counted.count(if stood_in {
                    LayerOutcome::Stale
                } else {
                    LayerOutcome::Miss
                });
                Ok(response)
            }
            WithinSoft::Answered(Err(error)) => {
                counted.count(LayerOutcome::Miss);
                Err(error)
            }
            WithinSoft::Stale(response) => {
                counted.count(LayerOutcome::Stale);
                Ok(response)
            }
        }
    }
}

/// Stale-if-error with a soft timeout (`CacheLayer::soft_timeout`): the handler is called
/// through [`forward`] in a task of its own (its response stored, the stale entry standing in if
/// it fails or exceeds the handler timeout); the request waits for it at most `soft`, then the
/// stale entry answers and the call goes on, its response read to its end (and so stored) within
/// the lock timeout. Without a tokio runtime the request waits for the handler. `past`: how long
/// the entry is past its freshness; `fwd`: the `Cache-Status` `fwd` of the handler's answer;
/// `limits`: the request's, which bind a response a flight hands it (see [`Waiting::takes`]).
async fn within_soft_timeout<S, ReqBody, ResBody>(
    shared: &Arc<Config>,
    (inner, request, keys, ticket, limits): (S, Request<ReqBody>, key::UrlKeys, Ticket, Limits),
    (entry, seen): (Entry, Option<Seen>),
    (past, fwd): (Duration, &'static str),
    soft: Duration,
) -> WithinSoft<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let headers = request.headers().clone();
    let url = keys.url().to_owned();
    let miss = Miss {
        fallback: Some(past),
        fwd,
        limits,
        ..Miss::of_stale(inner, request, keys, ticket, (entry.clone(), seen))
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return WithinSoft::Answered(forward(shared, miss).await);
    };
    let config = Arc::clone(shared);
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    // The call in the request's `tracing` span, as without a soft timeout (and so its body's
    // read-ahead, see `ahead.rs`): this client may well get its answer.
    let span = tracing::Span::current();
    let task = runtime.spawn(async move {
        let call = async {
            let answered = forward(&config, miss).instrument(span).await;
            // Nobody waits for it any more (the stale entry answered): read the body here, so
            // that the response is stored.
            if let Err(Ok(response)) = tx.send(answered) {
                drop(response.into_body().collect().await);
            }
        };
        // The handler call and its body together, as a background revalidation is: a handler
        // that hangs must not hold the URL's flight (every later miss would wait for it).
        if tokio::time::timeout(config.background_limit(), call)
            .await
            .is_err()
        {
            let url = config.logged(&url);
            tracing::debug!(
                url,
                "impcache-tower: the call past the soft timeout timed out"
            );
        }
    });
    let answered = match tokio::time::timeout(soft, &mut rx).await {
        Ok(Ok(answered)) => Ok(answered),
        // The task ended without an answer: its handler panicked, or its runtime shut down.
        Ok(Err(_)) => {
            if let Err(ended) = task.await {
                if ended.is_panic() {
                    // As without a soft timeout (`stale_if_error`'s docs): a handler's panic
                    // reaches the caller, not a stale response.
                    std::panic::resume_unwind(ended.into_panic());
                }
            }
            // A call lost: the stale response stands in as for a failed one.
            Err(Why::HandlerError)
        }
        // An answer sent just before the close is still taken.
        Err(_) => {
            rx.close();
            rx.try_recv().map_err(|_| {
                tracing::debug!(target: "impcache_tower", ?soft, "soft timeout: the stale response answers; the handler call goes on in the background");
                Why::SoftTimeout
            })
        }
    };
    match answered {
        Ok(answered) => WithinSoft::Answered(answered),
        Err(why) => WithinSoft::Stale(stale_hit(entry, &headers, false, shared, past, why)),
    }
}

/// A miss answered without a stored response nor a handler's: `detail` says why.
fn unstored_miss(fwd: &'static str, detail: &'static str) -> Outcome {
    Outcome::Miss {
        fwd,
        stored: false,
        detail: Some(detail),
    }
}

/// `504 Gateway Timeout`, never stored, marked with `outcome`: the answer to a request whose
/// handler exceeded the hard timeout with no stale entry to stand in, or to an honoured
/// `only-if-cached` that no stored response answers (a miss, a bypassed request).
fn gateway_timeout<B>(config: &Config, outcome: Outcome) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
    mark(&mut response, config.status_header, outcome);
    response
}

/// Stale-while-revalidate: one handler call in the background refreshes the URL, unless its
/// flight is already under way (another revalidation, or a miss) or ended since the request's
/// ticket. It leads the URL's flight, so
/// concurrent misses of the URL wait for it. Bounded by the lock timeout; without a tokio runtime
/// nothing is refreshed.
fn revalidate_in_background<S, ReqBody, ResBody>(
    shared: &Arc<Config>,
    inner: S,
    mut request: Request<ReqBody>,
    keys: key::UrlKeys,
    ticket: Ticket,
    (entry, seen): (Entry, Option<Seen>),
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Under way already: this request's waiter is dropped at once.
    let Join::Leader(Leader { guard, recheck }) = shared.flights.join(keys.url(), ticket) else {
        return;
    };
    let config = Arc::clone(shared);
    let url = keys.url().to_owned();
    // A HEAD served from the entry revalidates it with the GET whose response it stores, as
    // nginx's `proxy_cache_convert_head` does.
    *request.method_mut() = http::Method::GET;
    revalidate::unconditional(request.headers_mut());
    let miss = Miss {
        lead: Some(guard),
        ..Miss::of_stale(inner, request, keys, ticket, (entry, seen))
    };
    runtime.spawn(async move {
        // A flight of the URL's group ended since this request's ticket: this URL's (whose
        // store the lookup may have overtaken) or, as likely, another URL's sharing the group.
        // Look again; a fresh entry ends the revalidation (dropping the guard sends any waiter
        // to look again too).
        if recheck {
            let found = lookup(&config, &miss.keys, miss.request.headers()).await;
            if let Lookup::Hit(entry, _) = found {
                let now = now_ms();
                if matches!(stale::judge(&config, &entry, now), Judged::Fresh)
                    && !stale::refreshes_early(&config, &entry, now)
                {
                    return;
                }
            }
        }
        // Across processes (`CacheLayer::lock`): tried once; another process holding it
        // revalidates, or has.
        let headers = miss.request.headers();
        let (seen, stale) = (miss.seen.as_ref(), miss.stale.as_ref());
        // Nobody's limits: no stored response is handed to a client here.
        let asks = (headers, &Limits::default());
        let lock = match crate::lock::take(&config, &miss.keys, asks, seen, stale, Duration::ZERO)
            .await
        {
            Locked::Call(lock) | Locked::Refused(lock) => lock,
            Locked::Stored(_) | Locked::Busy => return,
        };
        let miss = Miss { lock, ..miss };
        let refresh = async {
            match forward(&config, miss).await {
                // Read as a server sends it: a streamed body is stored once complete.
                Ok(response) => {
                    // A status that a stale response would stand in for is a failed call, and
                    // so is a body that fails (it leaves the stale response in place).
                    if response.status().is_server_error() {
                        config.handler_failed(&url);
                    }
                    let declared = policy::declared_length(response.headers());
                    if let Err(error) = copy::read_as_sent(response.into_body(), declared).await {
                        config.handler_failed(&url);
                        let logged = config.logged(&url);
                        tracing::debug!(%error, url = logged, "impcache-tower: revalidation body failed");
                    }
                }
                Err(_) => {
                    config.handler_failed(&url);
                    let url = config.logged(&url);
                    tracing::debug!(url, "impcache-tower: revalidation failed");
                }
            }
        };
        if tokio::time::timeout(config.background_limit(), refresh)
            .await
            .is_err()
        {
            config.handler_failed(&url);
            let url = config.logged(&url);
            tracing::debug!(url, "impcache-tower: revalidation timed out");
        }
    });
}

/// Where a `HEAD` request that missed stands in its URL's flight, which it never leads (its
/// response has no body to share): [`Coalesced::Hit`] with the stored response of the flight in
/// progress (a `GET` whose store is under way, or whose handler is still called, within the lock
/// timeout), of this request's variant, usable and within the request's limits (see
/// [`Waiting::takes`]), and not invalidated by a tag since; or, when a
/// flight of the URL's group ended since the request's ticket (its lookup may have overtaken
/// that store), with what a second lookup finds (`look_again`: none after a lookup that failed
/// against the backend, which would cost a second deadline). [`Coalesced::StoodIn`] when a
/// stale entry stood in for the leader's failed handler; [`Coalesced::Alone`] otherwise: the
/// request goes to the handler, as a `HEAD`.
async fn head_from_flight(
    config: &Config,
    keys: &key::UrlKeys,
    headers: &HeaderMap,
    vary: &[HeaderName],
    look_again: Option<Ticket>,
    waiting: &mut Waiting,
) -> Coalesced {
    let flight = first_flight(config, keys.url(), vary, headers);
    let Some(waiter) = config.flights.current(flight.as_str()) else {
        let Some(ticket) = look_again else {
            return Coalesced::Alone;
        };
        if !config.flights.ended_since(flight.as_str(), ticket) {
            return Coalesced::Alone;
        }
        return match lookup(config, keys, headers).await {
            Lookup::Hit(entry, _) if waiting.takes(config, &entry) => Coalesced::Hit(entry),
            _ => Coalesced::Alone,
        };
    };
    let joined = crate::tagging::stamp_micros();
    match waiter.wait(waiting.left()).await {
        Wait::Published(Shared::StoodIn(why)) => Coalesced::StoodIn(why),
        Wait::Published(Shared::TimedOut) => {
            waiting.leader_failed();
            Coalesced::StoodIn(Why::HandlerTimeout)
        }
        Wait::Published(Shared::Stored(published)) => {
            let url = keys.url();
            let answers =
                published_answers(config, url, headers, &published, joined, waiting, true);
            if answers.await {
                Coalesced::Hit(published.entry.clone())
            } else {
                Coalesced::Alone
            }
        }
        Wait::Abandoned => {
            waiting.leader_failed();
            Coalesced::Alone
        }
        // Not shareable, or late: this request calls for itself.
        Wait::NotShared | Wait::TimedOut => Coalesced::Alone,
    }
}

/// Whether a flight leader's stored response answers a request (`headers`) that joined the
/// flight at `joined` (`waiting`: its limits): it is the request's variant, usable and within
/// the request's limits ([`Waiting::takes`]; origin mode: a response already stale, `no-cache`
/// say, is not), and not hidden by a tag invalidated since (`look_again`: whether that check may
/// read the backend).
async fn published_answers(
    config: &Config,
    url: &str,
    headers: &HeaderMap,
    published: &Published,
    joined: u64,
    waiting: &mut Waiting,
    look_again: bool,
) -> bool {
    same_variant(config, url, headers, published)
        && waiting.takes(config, &published.entry)
        && crate::store::holds_for(config, &published.entry, joined, look_again).await
}

/// Whether a published response is the variant a request (`headers`) asks for.
fn same_variant(config: &Config, url: &str, headers: &HeaderMap, published: &Published) -> bool {
    let variant = key::variant_key(url, &published.vary, headers, config.allow_authenticated);
    variant == published.variant_key
}

/// The output of the call `call` makes if it comes within `limit`; `None` past it, and at once
/// for a zero `limit` (the handler is then not called: it would have no time to answer).
/// Outside a tokio runtime (a plain executor), which has no timers, the call is not limited, as
/// `get_or_set`'s loader there (it panicked: "no reactor running", found by a probe, 2026-12-07).
async fn call_within<F: Future>(limit: Duration, call: impl FnOnce() -> F) -> Option<F::Output> {
    if limit.is_zero() {
        return None;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Some(call().await);
    }
    tokio::time::timeout(limit, call()).await.ok()
}

/// A request's waits for other requests' handler calls, counted from when it starts coalescing
/// (right after its lookup; on its `Vary` variant's flight, from when it moves there), however
/// many leaders it waits for in turn on one key: a leader that goes away
/// (its client disconnected, its handler panicked, its response body failed mid-way) hands its
/// flight to one of its waiters, and the others wait for that one. So the
/// [`lock_timeout`](CacheLayer::lock_timeout) bounds all of a request's waits together, as
/// nginx sets `proxy_cache_lock_timeout` once per request, not once per lock holder (a body that
/// always fails would otherwise make each request wait for every one before it, one call after
/// another); and the time it waited for leaders that went away or whose call timed out counts in
/// its own [`hard_timeout`](CacheLayer::hard_timeout).
struct Waiting {
    since: tokio::time::Instant,
    /// Since when it waits on the flight it is on: the URL's, then its `Vary` variant's, a key
    /// of its own with a lock timeout of its own (as nginx's lock is per cache key), so that a
    /// wait for another variant's call does not use up the wait for its own variant's.
    lock_since: tokio::time::Instant,
    lock_timeout: Duration,
    /// From `since` to the end of its last wait for a leader that went away or timed out.
    spent: Duration,
    /// What the request's honoured `Cache-Control` asks of a stored response handed to it (a
    /// leader's, or a second look's): see [`Waiting::takes`].
    limits: Limits,
    /// A fresh response handed to it was refused by those limits: its own call is then
    /// `fwd=request`, as after a lookup's entry refused.
    refused: bool,
}

impl Waiting {
    fn new(lock_timeout: Duration, limits: Limits) -> Self {
        let now = tokio::time::Instant::now();
        Waiting {
            since: now,
            lock_since: now,
            lock_timeout,
            spent: Duration::ZERO,
            limits,
            refused: false,
        }
    }

    /// Whether a stored response handed to the request (`entry`) answers it (see
    /// [`stale::handed`]); one its limits refuse is remembered.
    fn takes(&mut self, config: &Config, entry: &Entry) -> bool {
        match stale::handed(config, entry, &self.limits) {
            Handed::Answers => true,
            Handed::Refused => {
                self.refused = true;
                false
            }
            Handed::Unusable => false,
        }
    }

    /// What is left of the lock timeout, the bound of the request's next wait: zero once it has
    /// passed (a leader's answer already there is still taken, without waiting).
    fn left(&self) -> Duration {
        self.lock_timeout.saturating_sub(self.lock_since.elapsed())
    }

    /// It moves to its `Vary` variant's flight: its lock timeout starts anew there.
    fn on_variant_flight(&mut self) {
        self.lock_since = tokio::time::Instant::now();
    }

    /// The leader it waited for went away (or moved to its variant's flight, after a lookup) or
    /// its call timed out: the time waited so far counts in its hard timeout.
    fn leader_failed(&mut self) {
        self.spent = self.since.elapsed();
    }

    /// What is left of `hard` (the hard timeout) for the request's own handler call.
    fn hard_left(&self, hard: Duration) -> Duration {
        hard.saturating_sub(self.spent)
    }
}

/// Where a request that missed stands in its URL's flight.
enum Coalesced {
    /// Answered: by the leader's published response, or by the cache on a second look.
    Hit(Entry),
    /// This request calls the handler for everyone.
    Lead(FlightGuard),
    /// The leader's handler failed, and a stale entry answered for it; or (`HandlerTimeout`)
    /// its call passed the hard timeout.
    StoodIn(Why),
    /// This request calls the handler for itself: the leader's response is not for it (another
    /// variant, or one its limits refuse), or is late.
    Alone,
    /// This request calls the handler for itself, without the cross-process lock: the leader's
    /// answer was not for sharing (not stored: an uncacheable response, an error status, a
    /// handler error), so the lock would only line this process's waiters up one call after
    /// another (the other processes' leaders wait on the lock's holder, not on them).
    NotShared,
}

/// The flight of a request's `Vary` variant: keyed by its variant key.
fn variant_flight(config: &Config, url: &str, vary: &[HeaderName], headers: &HeaderMap) -> String {
    key::variant_key(url, vary, headers, config.allow_authenticated)
}

/// The flight a request joins first: its variant's when its lookup found the URL's `Vary` names
/// (`vary`, a vary-miss), else its URL's.
fn first_flight(config: &Config, url: &str, vary: &[HeaderName], headers: &HeaderMap) -> String {
    if vary.is_empty() {
        url.to_owned()
    } else {
        variant_flight(config, url, vary, headers)
    }
}

/// Joins the request's flight (see [`crate::flight`]): leads it, or waits for its leader's
/// answer. The flight is its variant's (keyed by its variant key) once the URL's `Vary` names are
/// known: from its lookup (`vary`, a vary-miss), from a second look, or from another variant's
/// response (once that one is stored); its URL's until then. So the misses of each variant share
/// one handler call however many variants miss at once.
/// `look_again`: whether the cache may be looked up again (not after a lookup that failed
/// against the backend: a second lookup would cost a second deadline, and fail open means one).
/// Every wait, for each leader in turn, takes what is left of the request's lock timeout
/// (`waiting`): with nothing left, a request that joins a flight again calls the handler
/// itself, unless it leads it or its leader has answered already.
async fn coalesce(
    config: &Config,
    keys: &key::UrlKeys,
    headers: &HeaderMap,
    vary: &[HeaderName],
    mut ticket: Ticket,
    look_again: bool,
    waiting: &mut Waiting,
) -> Coalesced {
    let url = keys.url();
    // On its own variant's flight once `flight != url` (a variant key extends the URL key):
    // a response of another variant there (its `Vary` changed meanwhile) is not waited past.
    let mut flight = first_flight(config, url, vary, headers);
    // Whether this request joined again once already behind a leader with nothing to share.
    let mut retried_unshared = false;
    loop {
        match config.flights.join(flight.as_str(), ticket) {
            Join::Leader(Leader { guard, recheck }) => {
                if recheck && look_again {
                    // A flight of this key ended during the lookup, which may have overtaken its
                    // store: look again. (On a hit, dropping the guard sends this flight's
                    // waiters to look again too.)
                    match lookup(config, keys, headers).await {
                        Lookup::Hit(entry, _) if waiting.takes(config, &entry) => {
                            return Coalesced::Hit(entry)
                        }
                        // The URL's `Vary` names are known now (its first variant stored while
                        // this request looked it up): its variant's flight is this request's
                        // (this one ends: any waiter joins again).
                        Lookup::Miss(_, Some(seen)) if flight == url && !seen.vary.is_empty() => {
                            drop(guard);
                            flight = variant_flight(config, url, &seen.vary, headers);
                            waiting.on_variant_flight();
                            continue;
                        }
                        _ => {}
                    }
                }
                return Coalesced::Lead(guard);
            }
            Join::Waiter(waiter) => {
                let joined = crate::tagging::stamp_micros();
                let leaders_flight = waiter.clone();
                match waiter.wait(waiting.left()).await {
                    Wait::Published(Shared::StoodIn(why)) => return Coalesced::StoodIn(why),
                    Wait::Published(Shared::TimedOut) => {
                        waiting.leader_failed();
                        return Coalesced::StoodIn(Why::HandlerTimeout);
                    }
                    Wait::Published(Shared::Stored(published)) => {
                        let answers = published_answers(
                            config, url, headers, &published, joined, waiting, look_again,
                        );
                        if answers.await {
                            return Coalesced::Hit(published.entry.clone());
                        }
                        let variant = same_variant(config, url, headers, &published);
                        if variant && look_again && waiting.takes(config, &published.entry) {
                            // Its variant, but purged (by a tag) since this request joined:
                            // once the flight has ended, the next call, shared as any (one
                            // request leads it, the others wait), rather than a call per
                            // request (11 calls for 11 requests behind one purge).
                            leaders_flight.ended(waiting.left()).await;
                            ticket = config.flights.ticket();
                            if let Lookup::Hit(entry, _) = lookup(config, keys, headers).await {
                                if waiting.takes(config, &entry) {
                                    return Coalesced::Hit(entry);
                                }
                            }
                            continue;
                        }
                        if variant || !look_again || flight != url {
                            return Coalesced::Alone;
                        }
                        // Another variant's response: once its store has landed (its flight ends,
                        // so that this variant is stored under the URL's record), look again, then
                        // join this variant's flight, leading it if none is under way, so that the
                        // other requests for this variant wait for its one handler call rather
                        // than call the handler too.
                        leaders_flight.ended(waiting.left()).await;
                        ticket = config.flights.ticket();
                        if let Lookup::Hit(entry, _) = lookup(config, keys, headers).await {
                            if waiting.takes(config, &entry) {
                                return Coalesced::Hit(entry);
                            }
                        }
                        flight = variant_flight(config, url, &published.vary, headers);
                        waiting.on_variant_flight();
                    }
                    // Under the cross-process lock, once: the waiters join again, one of them
                    // calls once more through the lock and the others wait for it, as
                    // `get_or_set`'s waiters do. A transient failure (one 500, then the origin
                    // is back) then costs one more call, not one per request (30 calls for 30
                    // requests: found by a regression probe); a second answer not for sharing
                    // sends each to the handler side by side, without the lock.
                    Wait::NotShared if config.lock.is_some() && !retried_unshared => {
                        retried_unshared = true;
                        leaders_flight.ended(waiting.left()).await;
                        ticket = config.flights.ticket();
                    }
                    Wait::NotShared => return Coalesced::NotShared,
                    Wait::TimedOut => return Coalesced::Alone,
                    Wait::Abandoned => {
                        // The leader went away (cancelled, panicked, its body failed mid-way, or
                        // moved to its variant's flight): look again, then join again; the first
                        // to join leads, the others wait for it, within what is left of their
                        // lock timeout (and of their hard timeout, for their own call).
                        waiting.leader_failed();
                        ticket = config.flights.ticket();
                        if !look_again {
                            continue;
                        }
                        match lookup(config, keys, headers).await {
                            Lookup::Hit(entry, _) if waiting.takes(config, &entry) => {
                                return Coalesced::Hit(entry)
                            }
                            Lookup::Miss(_, Some(seen))
                                if flight == url && !seen.vary.is_empty() =>
                            {
                                flight = variant_flight(config, url, &seen.vary, headers);
                                waiting.on_variant_flight();
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}
