//! The record/variant storage protocol over the entry framing ([`crate::entry`]) and the key
//! naming ([`crate::key`]): how a request's response is found ([`lookup`]) and how a response is
//! written ([`Unfinished::finish`], then [`store`]), and what invalidation learns from a record
//! ([`has_variants`]).
//!
//! A URL's record key holds either its entry (the response had no `Vary` and the request no
//! keyed credentials: a hit reads one key) or a Vary marker, the header names that pick the
//! variant key to read next. A variant is written before the record that names it, so a reader
//! that finds the record finds the variant.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, StatusCode};
use impcache::{Cache, Expire};

use crate::config::Config;
use crate::entry::Freshness;
use crate::entry::{encode_marker, now_ms, Entry, Record};
use crate::flight::{FlightGuard, Published};
use crate::key;
use crate::render::strong_etag;

/// The result of a lookup.
pub(crate) enum Lookup {
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
pub(crate) async fn lookup(config: &Config, keys: &key::UrlKeys, headers: &HeaderMap) -> Lookup {
    let cache = &config.cache;
    let record = match cache.get_raw(keys.record()).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Lookup::Miss("uri-miss"),
        Err(error) => return failed(&error),
    };
    let plain =
        |vary: &[HeaderName]| key::is_plain_variant(vary, headers, config.allow_authenticated);
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
    vary: Vec<HeaderName>,
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

/// Whether a URL whose record holds `record` may have entries under other keys than the record
/// (Vary variants, credentialed variants), which only a sweep finds.
pub(crate) fn has_variants(record: Option<&Bytes>, credentials: bool) -> bool {
    let Some(bytes) = record else {
        return false;
    };
    match Record::decode(bytes) {
        Some(Record::Entry { vary, .. }) => credentials || !vary.is_empty(),
        Some(Record::Marker(_)) => true,
        // Another format (an earlier version's): its keys are unknown, so sweep.
        None => true,
    }
}

/// Writes a response: its variant, and the URL's record naming it.
async fn store(cache: &Cache, record: &str, published: &Published) -> impcache::Result<()> {
    let expire = published
        .entry
        .ttl
        .map_or(Expire::NEVER, Expire::from_duration);
    // Fresh for the TTL, kept for the stale window after it.
    let expire = published
        .stale
        .stored_expiry(expire, record)?
        .as_duration()
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
    pub(crate) cache: Cache,
    pub(crate) keys: key::UrlKeys,
    pub(crate) may_store: bool,
    pub(crate) compute_etag: bool,
    pub(crate) status: StatusCode,
    /// The headers to store (without the body's length and computed ETag).
    pub(crate) headers: HeaderMap,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) variant_key: String,
    pub(crate) ttl: Option<Duration>,
    /// The freshness of a response stored in the origin mode, and when it arrived (its storage
    /// time then: its age counts from there).
    pub(crate) origin: Option<(Freshness, u64)>,
    /// Its stale policy: the key outlives `ttl` by its stale window.
    pub(crate) stale: impcache::Freshness,
    pub(crate) guard: Option<FlightGuard>,
}

impl Unfinished {
    /// Publishes the response with its complete `body` to the waiters and stores it in the
    /// background. Returns the ETag it computed, if any, and the store when there is no tokio
    /// runtime to run it on.
    pub(crate) fn finish(
        self,
        body: Bytes,
    ) -> (Option<HeaderValue>, Option<impl Future<Output = ()> + Send>) {
        let (_, etag, storing) = self.finish_published(body);
        (etag, storing)
    }

    /// [`finish`](Self::finish), also returning the entry as published.
    pub(crate) fn finish_published(
        self,
        body: Bytes,
    ) -> (
        Arc<Published>,
        Option<HeaderValue>,
        Option<impl Future<Output = ()> + Send>,
    ) {
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
                stored_at_ms: self.origin.map_or_else(now_ms, |(_, at)| at),
                ttl: self.ttl,
                origin: self.origin.map(|(freshness, _)| freshness),
            },
            vary: self.vary,
            variant_key: self.variant_key,
            stale: self.stale,
        });
        if let Some(guard) = &self.guard {
            guard.publish(Arc::clone(&published));
        }
        let storing = if self.may_store {
            store_in_background(self.cache, self.keys, Arc::clone(&published), self.guard)
        } else {
            None
        };
        (published, etag, storing)
    }

    /// The body turned out not storable (too large, trailers, an error): the waiters call the
    /// handler themselves.
    pub(crate) fn give_up(self) {
        if let Some(guard) = self.guard {
            guard.not_shared();
        }
    }
}
