//! [`CacheService`]: the middleware itself.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use impcache::{Cache, Expire};
use sha2::{Digest, Sha256};
use tower::Service;

use crate::body::{concat, BoxError, ResponseBody, StreamCopy};
use crate::entry::{encode_marker, now_ms, Entry, Record};
use crate::flight::{FlightGuard, Join, Leader, Published, Ticket, Wait};
use crate::future::ResponseFuture;
use crate::invalidate;
use crate::key;
use crate::layer::{CacheLayer, Config, StatusHeader, CACHE_STATUS, X_CACHE};
use crate::numbers;
use crate::policy::{self, NotStored, RequestPlan};

/// The service [`CacheLayer`] wraps around a handler (or any
/// `Service<Request<_>, Response = Response<_>>`). Its error type is the inner service's.
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    layer: CacheLayer,
}

impl<S> CacheService<S> {
    /// Wraps `inner` with the rules of `layer`.
    pub fn new(inner: S, layer: CacheLayer) -> Self {
        CacheService { inner, layer }
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
        ResponseFuture::new(Box::pin(run(self.layer.clone(), inner, request)))
    }
}

/// How a response was obtained, for the status headers.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit {
        ttl_left: Option<u64>,
    },
    Miss {
        fwd: &'static str,
        stored: bool,
        detail: Option<&'static str>,
    },
    Bypass {
        fwd: &'static str,
        detail: &'static str,
    },
}

fn mark<B>(response: &mut Response<B>, status_header: StatusHeader, outcome: Outcome) {
    let (x_cache, cache_status) = match outcome {
        Outcome::Hit { ttl_left } => ("HIT", Ok(numbers::hit_status(ttl_left))),
        Outcome::Miss {
            fwd,
            stored,
            detail,
        } => {
            let mut value = format!("impcache; fwd={fwd}");
            if stored {
                value.push_str("; stored");
            }
            if let Some(detail) = detail {
                value.push_str("; detail=");
                value.push_str(detail);
            }
            ("MISS", Err(value))
        }
        Outcome::Bypass { fwd, detail } => (
            "BYPASS",
            Err(format!("impcache; fwd={fwd}; detail={detail}")),
        ),
    };
    let headers = response.headers_mut();
    if matches!(status_header, StatusHeader::XCache | StatusHeader::Both) {
        headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    }
    if matches!(
        status_header,
        StatusHeader::CacheStatus | StatusHeader::Both
    ) {
        let value = match cache_status {
            Ok(value) => Some(value),
            Err(text) => HeaderValue::from_str(&text).ok(),
        };
        if let Some(value) = value {
            // RFC 9211: each cache adds its member; the one nearest the origin comes first.
            headers.append(CACHE_STATUS, value);
        }
    }
}

/// A stored response, as sent: `Age`, the status headers, and a 304 when `If-None-Match`
/// matches its `ETag`; no body for HEAD.
fn serve<B>(
    entry: Entry,
    request_headers: &HeaderMap,
    head: bool,
    config: &Config,
) -> Response<ResponseBody<B>> {
    let age = entry.age_secs(now_ms());
    let ttl_left = entry.ttl.map(|ttl| ttl.as_secs().saturating_sub(age));
    let etag = entry
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok());
    let mut response = if etag.is_some_and(|etag| policy::if_none_match(request_headers, etag)) {
        // RFC 9110 §15.4.5: the fields a 200 would have carried that describe the representation.
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::LAST_MODIFIED,
            header::VARY,
        ] {
            for value in entry.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        response
    } else {
        let body_len = entry.body.len();
        let body = if head {
            ResponseBody::empty()
        } else {
            ResponseBody::full(entry.body)
        };
        let mut response = Response::new(body);
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers;
        // Stored with the entry (see `forward`); entries stored by earlier versions lack it.
        if !response.headers().contains_key(header::CONTENT_LENGTH) {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, numbers::number(body_len as u64));
        }
        response
    };
    response
        .headers_mut()
        .insert(header::AGE, numbers::number(age));
    mark(
        &mut response,
        config.status_header,
        Outcome::Hit { ttl_left },
    );
    response
}

/// The result of a lookup.
enum Lookup {
    Hit(Entry),
    /// `fwd` is `uri-miss` (nothing known for the URL) or `vary-miss` (not this variant).
    Miss(&'static str),
    /// The cache could not answer; `backend` when it is down or slow (nothing is stored then).
    Failed {
        backend: bool,
    },
}

/// `Lookup::Failed` for a cache error.
fn failed(error: &impcache::Error) -> Lookup {
    tracing::debug!(%error, "impcache-tower: lookup failed, calling the handler");
    Lookup::Failed {
        backend: error.is_backend_failure(),
    }
}

/// Reads the URL's record and, when it names another variant than the record's entry, that
/// variant: one GET for a URL without `Vary`, two for a varying one.
async fn lookup(config: &Config, keys: &key::UrlKeys, headers: &HeaderMap) -> Lookup {
    let cache = &config.cache;
    let record = match cache.get_raw(keys.record()).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Lookup::Miss("uri-miss"),
        Err(error) => return failed(&error),
    };
    let plain = |vary: &[http::HeaderName]| {
        key::is_plain_variant(vary, headers, config.allow_authenticated)
    };
    // When the record's key is this request's variant key, the answer is its entry, if it
    // holds one.
    let vary = match Record::decode(&record) {
        Some(Record::Entry { entry, vary }) if plain(&vary) => return Lookup::Hit(entry),
        Some(Record::Marker(vary)) if plain(&vary) => return Lookup::Miss("vary-miss"),
        Some(Record::Entry { vary, .. } | Record::Marker(vary)) => vary,
        None => {
            tracing::warn!(key = %keys.record(), "impcache-tower: unreadable record, treated as a miss");
            return Lookup::Miss("uri-miss");
        }
    };
    // Boxed on its own: it keeps the future of every lookup (moved into the request's box, an
    // allocation per request) small; a varying URL pays one more allocation.
    Box::pin(lookup_variant(config, keys, headers, vary)).await
}

/// The second read of a varying URL: the variant its record names for this request.
async fn lookup_variant(
    config: &Config,
    keys: &key::UrlKeys,
    headers: &HeaderMap,
    vary: Vec<http::HeaderName>,
) -> Lookup {
    let cache = &config.cache;
    let variant = key::variant_key(keys.url(), &vary, headers, config.allow_authenticated);
    let bytes = match cache.get_raw(&variant).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Lookup::Miss("vary-miss"),
        Err(error) => return failed(&error),
    };
    match Entry::decode(&bytes) {
        Some((entry, _)) => Lookup::Hit(entry),
        None => {
            tracing::warn!(key = %variant, "impcache-tower: unreadable entry, treated as a miss");
            Lookup::Miss("vary-miss")
        }
    }
}

/// A body read up to the size limit, as far as it is there without waiting.
enum Buffered<B> {
    Complete(Bytes),
    /// Not storable: the frames read so far, then the rest of the body (if it has not ended).
    Partial {
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        rest: Option<Pin<Box<B>>>,
        reason: NotStored,
    },
    /// Still arriving: the data frames read so far (`size` bytes), then the rest of the body.
    Streaming {
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        chunks: Vec<Bytes>,
        size: usize,
        rest: Pin<Box<B>>,
    },
}

/// Reads the frames of `body` that are ready now, up to `limit` bytes: a body that is all there
/// (the usual handler response) is complete, one still being produced is streamed.
async fn buffer<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut chunks = Vec::new();
    let mut size = 0usize;
    let mut trailers = false;
    while !body.is_end_stream() {
        // One poll: `Pending` means the rest is still being produced.
        let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        match polled {
            Poll::Pending => {
                return Buffered::Streaming {
                    frames,
                    chunks,
                    size,
                    rest: body,
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(error))) => {
                frames.push_back(Err(error.into()));
                return Buffered::Partial {
                    frames,
                    rest: None,
                    reason: NotStored::BodyError,
                };
            }
            Poll::Ready(Some(Ok(frame))) => {
                match frame.data_ref() {
                    Some(data) => {
                        size = size.saturating_add(data.len());
                        chunks.push(data.clone());
                    }
                    None => trailers = true,
                }
                frames.push_back(Ok(frame));
                if size > limit {
                    return Buffered::Partial {
                        frames,
                        rest: Some(body),
                        reason: NotStored::TooLarge,
                    };
                }
                if trailers {
                    break;
                }
            }
        }
    }
    if trailers {
        return Buffered::Partial {
            frames,
            rest: Some(body),
            reason: NotStored::Trailers,
        };
    }
    Buffered::Complete(concat(chunks, size))
}

/// A strong ETag for a body: the first 128 bits of its SHA-256.
fn strong_etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let mut etag = String::with_capacity(34);
    etag.push('"');
    for b in digest.iter().take(16) {
        etag.push_str(&format!("{b:02x}"));
    }
    etag.push('"');
    // Only hex digits and quotes: always a valid header value.
    HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Writes a response: its variant, and the URL's record naming it.
async fn store(cache: &Cache, record: &str, published: &Published) -> impcache::Result<()> {
    let expire = published
        .entry
        .ttl
        .map_or(Expire::NEVER, Expire::from_duration);
    let entry = published.entry.encode(&published.vary);
    if published.variant_key == record {
        // The plain variant: one key, which also replaces a Vary marker.
        return cache.set_raw(record, entry, expire).await;
    }
    // The variant first, then the record: a reader that finds the record finds the variant.
    cache.set_raw(&published.variant_key, entry, expire).await?;
    let marker = encode_marker(&published.vary);
    if !published.vary.is_empty() {
        // Replaces a plain entry: once a URL varies, its plain entry must never be served.
        return cache.set_raw(record, marker, expire).await;
    }
    // A credentialed variant of a response without `Vary`: the record must say "vary on nothing"
    // without evicting a plain entry that anonymous requests are served from (credentialed
    // requests never read it: they are not the plain variant).
    if cache.set_nx_raw(record, marker.clone(), expire).await? {
        return Ok(());
    }
    let current = cache.get_raw(record).await?;
    let keep = match current.as_ref().and_then(Record::decode) {
        Some(Record::Entry { .. }) => true,
        Some(Record::Marker(vary)) => vary.is_empty(),
        // Gone meanwhile, or unreadable (an older format): the marker takes its place.
        None => false,
    };
    if keep {
        return Ok(());
    }
    // A stale marker (the URL no longer varies). A plain entry stored between the read and this
    // write is lost (a later miss stores it again); none is ever served to the wrong request.
    cache.set_raw(record, marker, expire).await
}

/// Stores in the background, so the response is not delayed by the write; the flight stays open
/// until the write has finished. Without a tokio runtime to run it on, the store is returned for
/// the caller to await.
fn store_in_background(
    cache: Cache,
    keys: key::UrlKeys,
    published: Arc<Published>,
    guard: Option<FlightGuard>,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let task = async move {
        if let Err(error) = store(&cache, keys.record(), &published).await {
            tracing::debug!(%error, "impcache-tower: response not stored");
        }
        drop(guard);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(task);
            None
        }
        Err(_) => Some(task),
    }
}

/// A cacheable response whose body is not complete yet: everything needed to publish and store
/// it. Dropped unfinished (the request or its body was dropped mid-way), it abandons the flight:
/// the waiters look again and elect a new leader.
pub(crate) struct Unfinished {
    cache: Cache,
    keys: key::UrlKeys,
    may_store: bool,
    compute_etag: bool,
    status: StatusCode,
    /// The headers to store (without the body's length and computed ETag).
    headers: HeaderMap,
    vary: Vec<HeaderName>,
    variant_key: String,
    ttl: Option<Duration>,
    guard: Option<FlightGuard>,
}

impl Unfinished {
    /// Publishes the response with its complete `body` to the waiters and stores it in the
    /// background. Returns the ETag it computed, if any, and the store when there is no tokio
    /// runtime to run it on.
    pub(crate) fn finish(
        self,
        body: Bytes,
    ) -> (Option<HeaderValue>, Option<impl Future<Output = ()> + Send>) {
        let mut headers = self.headers;
        // The length of the body as stored (a hit then serves it without formatting it).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let etag =
            (self.compute_etag && !headers.contains_key(header::ETAG)).then(|| strong_etag(&body));
        if let Some(etag) = &etag {
            headers.insert(header::ETAG, etag.clone());
        }
        let published = Arc::new(Published {
            entry: Entry {
                status: self.status,
                headers,
                body,
                stored_at_ms: now_ms(),
                ttl: self.ttl,
            },
            vary: self.vary,
            variant_key: self.variant_key,
        });
        if let Some(guard) = &self.guard {
            guard.publish(Arc::clone(&published));
        }
        let storing = if self.may_store {
            store_in_background(self.cache, self.keys, published, self.guard)
        } else {
            None
        };
        (etag, storing)
    }

    /// The body turned out not storable (too large, trailers, an error): the waiters call the
    /// handler themselves.
    pub(crate) fn give_up(self) {
        if let Some(guard) = self.guard {
            guard.not_shared();
        }
    }
}

/// A request through the layer: the lookup, and a hit served from it. Everything that calls the
/// handler lives in boxed futures of its own ([`bypass`], [`forward`]), so that the future of a
/// hit stays small (moving it into its box is part of every request's cost).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment on the `async move` block
fn run<S, ReqBody, ResBody>(
    layer: CacheLayer,
    inner: S,
    request: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    // An `async move` block rather than an `async fn`: an `async fn` moves each argument into a
    // second slot of its future (the request alone is ~240 bytes), and this future is moved
    // into a fresh allocation for every request (1,336 bytes as an `async fn`, 1,064 as this).
    async move {
        let config = &*layer.config;
        let plan = policy::plan_request(
            request.method(),
            request.headers(),
            &config.methods,
            config.allow_authenticated,
            config.honor_request_cache_control,
        );
        let refresh = match plan {
            RequestPlan::Bypass(reason) => {
                return Box::pin(bypass(config, inner, request, reason)).await
            }
            RequestPlan::Head => true,
            RequestPlan::Lookup { refresh } => refresh,
        };
        let head = plan == RequestPlan::Head;
        let method = if head { &Method::GET } else { request.method() };
        let keys = key::UrlKeys::new(
            &config.namespace,
            config.host(key::request_host(request.uri(), request.headers())),
            request.uri().path(),
            request.uri().query(),
            method,
        );

        // Taken before the lookup: see `flight` (read your own writes).
        let ticket = config.flights.ticket();
        // 1. Lookup (skipped on a honoured client refresh). Failures fall through to the handler.
        let mut fwd = "request";
        let mut may_store = true;
        let mut detail = None;
        if head || !refresh {
            match lookup(config, &keys, request.headers()).await {
                Lookup::Hit(entry) => return Ok(serve(entry, request.headers(), head, config)),
                Lookup::Miss(miss) => fwd = miss,
                Lookup::Failed { backend } => {
                    fwd = "uri-miss";
                    may_store = !backend;
                    detail = Some("cache-error");
                }
            }
        }
        Box::pin(forward(
            &layer, inner, request, keys, ticket, head, refresh, fwd, may_store, detail,
        ))
        .await
    }
}

/// A request the cache does not answer (`Cache-Control: no-store`, a method it does not cache, …):
/// the handler's response, marked.
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
    let invalidation = invalidate::Pending::of(config, &request);
    let mut response = inner.call(request).await?.map(ResponseBody::inner);
    if let Some(invalidation) = invalidation {
        invalidation
            .run(config, response.status(), response.headers())
            .await;
    }
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

/// A request the lookup did not answer: the handler's response, stored when it may be.
#[allow(clippy::too_many_arguments)]
async fn forward<S, ReqBody, ResBody>(
    layer: &CacheLayer,
    mut inner: S,
    request: Request<ReqBody>,
    keys: key::UrlKeys,
    ticket: Ticket,
    head: bool,
    refresh: bool,
    fwd: &'static str,
    may_store: bool,
    detail: Option<&'static str>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let config = &*layer.config;
    let url = keys.url();
    if head {
        // Never stored: a HEAD response has no body to serve GETs with.
        let mut response = inner.call(request).await?.map(ResponseBody::inner);
        let detail = detail.or(Some(NotStored::Head.detail()));
        mark(
            &mut response,
            config.status_header,
            Outcome::Miss {
                fwd,
                stored: false,
                detail,
            },
        );
        return Ok(response);
    }
    // The request goes to the handler: its headers are kept for the variant key.
    let headers = request.headers().clone();

    // 2. Coalescing: one handler call per URL in this process (not for a client's refresh,
    //    which asked for a new response).
    let guard = if config.coalesce && !refresh {
        match coalesce(config, &keys, &headers, ticket).await {
            Coalesced::Hit(entry) => return Ok(serve(entry, &headers, false, config)),
            Coalesced::Lead(guard) => Some(guard),
            Coalesced::Alone => None,
        }
    } else {
        None
    };

    // 3. The handler (an error is not shared: the waiters call the handler themselves).
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            if let Some(guard) = guard {
                guard.not_shared();
            }
            return Err(error);
        }
    };
    let (mut parts, body) = response.into_parts();
    let (expire, max_ttl) = config.ttls();
    let verdict = policy::storable(
        parts.status,
        &parts.headers,
        &config.statuses,
        expire,
        max_ttl,
    )
    .and_then(|ttl| {
        let too_large = content_length(&parts.headers)
            .is_some_and(|len| len > config.max_body_size as u64)
            || body.size_hint().lower() > config.max_body_size as u64;
        if too_large {
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
    let ttl = match verdict {
        Ok(ttl) => ttl,
        Err(reason) => {
            // Waiters call the handler themselves: an uncacheable response is never shared.
            if let Some(guard) = guard {
                guard.not_shared();
            }
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
    let unfinished = Unfinished {
        cache: config.cache.clone(),
        keys,
        may_store,
        compute_etag: config.compute_etag,
        status: parts.status,
        headers: policy::stored_headers(&parts.headers, &[X_CACHE, CACHE_STATUS]),
        vary,
        variant_key,
        ttl: ttl.map(|t| Duration::from_secs(t.as_secs().max(1))),
        guard,
    };
    let (body, stored, detail) = match buffer(body, config.max_body_size).await {
        Buffered::Complete(body) => {
            let (etag, storing) = unfinished.finish(body.clone());
            if let Some(etag) = etag {
                parts.headers.insert(header::ETAG, etag);
            }
            if let Some(storing) = storing {
                storing.await;
            }
            (ResponseBody::full(body), may_store, detail)
        }
        Buffered::Partial {
            frames,
            rest,
            reason,
        } => {
            unfinished.give_up();
            let body = ResponseBody::replay(frames, rest);
            (body, false, detail.or(Some(reason.detail())))
        }
        Buffered::Streaming {
            frames,
            chunks,
            size,
            rest,
        } => {
            let copy = StreamCopy::new(chunks, size, config.max_body_size, unfinished);
            let body = ResponseBody::streaming(frames, rest, copy);
            // Stored when (and if) the body completes.
            (body, false, detail.or(Some("streamed")))
        }
    };
    let mut response = Response::from_parts(parts, body);
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

/// Where a request that missed stands in its URL's flight.
enum Coalesced {
    /// Answered: by the leader's published response, or by the cache on a second look.
    Hit(Entry),
    /// This request calls the handler for everyone.
    Lead(FlightGuard),
    /// This request calls the handler for itself: the leader's response is not shareable, is
    /// another variant, or is late.
    Alone,
}

/// Joins the URL's flight (see [`crate::flight`]): leads it, or waits for its leader's answer.
async fn coalesce(
    config: &Config,
    keys: &key::UrlKeys,
    headers: &HeaderMap,
    mut ticket: Ticket,
) -> Coalesced {
    let url = keys.url();
    loop {
        match config.flights.join(url, ticket) {
            Join::Leader(Leader { guard, recheck }) => {
                if recheck {
                    // A flight of this URL ended during the lookup, which may have overtaken its
                    // store: look again. (On a hit, dropping the guard sends this flight's
                    // waiters to look again too.)
                    if let Lookup::Hit(entry) = lookup(config, keys, headers).await {
                        return Coalesced::Hit(entry);
                    }
                }
                return Coalesced::Lead(guard);
            }
            Join::Waiter(waiter) => match waiter.wait(config.lock_timeout).await {
                Wait::Published(published) => {
                    let variant =
                        key::variant_key(url, &published.vary, headers, config.allow_authenticated);
                    if variant == published.variant_key {
                        return Coalesced::Hit(published.entry.clone());
                    }
                    return Coalesced::Alone;
                }
                Wait::NotShared | Wait::TimedOut => return Coalesced::Alone,
                Wait::Abandoned => {
                    // The leader went away (cancelled, panicked): look again, then join again;
                    // the first to join leads, the others wait for it.
                    ticket = config.flights.ticket();
                    if let Lookup::Hit(entry) = lookup(config, keys, headers).await {
                        return Coalesced::Hit(entry);
                    }
                }
            },
        }
    }
}
