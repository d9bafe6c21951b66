//! The layer's configuration, its defaults, and the names of the cache status headers.
//!
//! [`CacheLayer`](crate::CacheLayer) builds a [`Config`]; every service it makes holds the same
//! one through an `Arc`, and everything else reads it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Request, StatusCode};
use impcache::{Cache, Expire};

use crate::flight::Flights;
use crate::key;

/// The default largest body stored: 1 MiB. Larger responses stream through, unstored.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// The default TTL of an entry: 60 seconds.
pub const DEFAULT_EXPIRE_SECS: u64 = 60;

/// The default longest wait for a concurrent request's handler call: 10 seconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time a stale entry with a validator is kept past its freshness lifetime in the
/// origin-freshness mode, to be revalidated: 10 minutes.
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(600);

/// The handler statuses a stale entry stands in for within its
/// [`stale_if_error`](crate::CacheLayer::stale_if_error) window: 500, 502, 503 and 504.
pub const DEFAULT_STALE_IF_ERROR_STATUSES: [StatusCode; 4] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// The default namespace of keys inside the cache's prefix and version.
pub const DEFAULT_NAMESPACE: &str = "http";

/// Which cache status headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StatusHeader {
    /// `x-cache: HIT`, `MISS`, `BYPASS`, `STALE` or `REVALIDATED`.
    XCache,
    /// RFC 9211 `Cache-Status: impcache; hit; ttl=42` (or `fwd=uri-miss; stored`, `fwd=bypass`, …):
    /// the default.
    #[default]
    CacheStatus,
    /// Both.
    Both,
    /// Neither.
    None,
}

/// The `x-cache` header name.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The RFC 9211 `Cache-Status` header name.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The rules of one layer (see the builder methods of [`CacheLayer`](crate::CacheLayer)).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) cache: Cache,
    pub(crate) namespace: String,
    pub(crate) expire: Expire,
    pub(crate) max_ttl: Option<Expire>,
    pub(crate) methods: Vec<Method>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_body_size: usize,
    pub(crate) allow_authenticated: bool,
    pub(crate) honor_request_cache_control: bool,
    pub(crate) status_header: StatusHeader,
    pub(crate) compute_etag: bool,
    pub(crate) coalesce: bool,
    pub(crate) lock_timeout: Duration,
    pub(crate) key_by_host: bool,
    pub(crate) invalidate_on_unsafe_methods: bool,
    /// The origin-freshness mode: an RFC 9111 shared cache (see [`crate::freshness`]).
    pub(crate) follow_origin: bool,
    /// The targeted field (RFC 9213) read before `CDN-Cache-Control`, in the origin mode.
    pub(crate) targeted_field: Option<HeaderName>,
    /// How long a stale entry with a validator is kept for revalidation, in the origin mode.
    pub(crate) keep_stale: Duration,
    /// The layer's `stale-while-revalidate` window (zero: the responses' directives only).
    pub(crate) stale_while_revalidate: Duration,
    /// The layer's `stale-if-error` window (zero: the responses' directives only).
    pub(crate) stale_if_error: Duration,
    /// The handler statuses a stale entry stands in for.
    pub(crate) stale_if_error_statuses: Vec<StatusCode>,
    /// The longest wait for the handler when a stale entry could answer instead.
    pub(crate) handler_timeout: Option<Duration>,
    /// With a stale entry that may stand in: the wait after which it answers while the handler
    /// call goes on in the background.
    pub(crate) soft_timeout: Option<Duration>,
    /// The longest wait for any handler call the layer makes after a lookup.
    pub(crate) hard_timeout: Option<Duration>,
    /// The XFetch gap of early background revalidations of fresh hits (zero: none).
    pub(crate) early_refresh: Duration,
    /// How long a URL's stale response answers without a handler call after a call failed.
    pub(crate) fail_safe_throttle: Option<Duration>,
    /// The in-flight handler calls, shared by every clone of the layer (also by one whose rules
    /// were changed after cloning). Inside the config so that a request clones one `Arc`.
    pub(crate) flights: Arc<Flights>,
    /// This process's stores in progress, which purges wait for (shared like `flights`).
    pub(crate) landing: Arc<crate::landing::Landing>,
    /// Tags (issue 16): the response header fields read as tags.
    pub(crate) tag_headers: Vec<HeaderName>,
    /// Whether the tag header fields reach the client.
    pub(crate) keep_tag_headers: bool,
    /// The request's tags.
    pub(crate) tags_from: Option<crate::tags::TagsFrom>,
    /// The tags each URL's response carried when last read, read with its record next time
    /// (shared by every clone of the layer, like `flights`).
    pub(crate) learned_tags: crate::tags::LearnedTags,
    /// The cross-process lock of a miss (`CacheLayer::lock`).
    pub(crate) lock: Option<impcache::Lock>,
    /// The path prefixes purged by tag (`CacheLayer::tag_prefixes`).
    pub(crate) tag_prefixes: crate::prefixes::TagPrefixes,
    /// The hosts this layer listed in their namespace's list of hosts (shared by every clone of
    /// the layer, like `flights`).
    pub(crate) listed_hosts: crate::hosts::ListedHosts,
}

impl Config {
    /// The longest a handler call made in the background (a stale-while-revalidate or early
    /// refresh, the call going on past a soft timeout) and its body may take: the lock timeout,
    /// so that a handler that hangs does not hold the URL's flight for ever, or the hard timeout
    /// when that is longer (a probe found a 100 ms lock timeout dropping every refresh of a
    /// 200 ms handler whose hard timeout allowed it; without a hard timeout the lock timeout
    /// alone bounds it, as documented on [`CacheLayer::lock_timeout`]).
    ///
    /// [`CacheLayer::lock_timeout`]: crate::CacheLayer::lock_timeout
    pub(crate) fn background_limit(&self) -> Duration {
        self.hard_timeout
            .map_or(self.lock_timeout, |hard| hard.max(self.lock_timeout))
    }

    /// The default rules, storing in `cache`: GET (and HEAD from the GET entry), status 200,
    /// 60 s, bodies up to 1 MiB.
    pub(crate) fn new(cache: Cache) -> Self {
        Config {
            cache,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            expire: Expire::seconds(DEFAULT_EXPIRE_SECS),
            max_ttl: None,
            methods: vec![Method::GET],
            statuses: vec![StatusCode::OK],
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            allow_authenticated: false,
            honor_request_cache_control: false,
            status_header: StatusHeader::CacheStatus,
            compute_etag: true,
            coalesce: true,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            key_by_host: true,
            invalidate_on_unsafe_methods: true,
            follow_origin: false,
            targeted_field: None,
            keep_stale: DEFAULT_KEEP_STALE,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_if_error_statuses: DEFAULT_STALE_IF_ERROR_STATUSES.to_vec(),
            handler_timeout: None,
            soft_timeout: None,
            hard_timeout: None,
            early_refresh: Duration::ZERO,
            fail_safe_throttle: None,
            flights: Arc::new(Flights::default()),
            landing: Arc::default(),
            tag_headers: crate::tags::DEFAULT_TAG_HEADERS.to_vec(),
            keep_tag_headers: false,
            tags_from: None,
            learned_tags: crate::tags::LearnedTags::default(),
            lock: None,
            tag_prefixes: crate::prefixes::TagPrefixes::default(),
            listed_hosts: crate::hosts::ListedHosts::default(),
        }
    }

    /// The hosts this layer listed, for a store to list its host first: when keys are by host
    /// (`purge_url` on any host reads the list of hosts), else `None`.
    pub(crate) fn host_listing(&self) -> Option<crate::hosts::ListedHosts> {
        self.key_by_host.then(|| self.listed_hosts.clone())
    }

    fn resolve(expire: Expire) -> Option<Duration> {
        // Zero or negative: zero, which `policy::storable` stores nothing for; longer than
        // `MAX_EXPIRE` (`Duration::MAX` meaning "no limit"): `MAX_EXPIRE`, as `NearCache::max_ttl`
        // and the stale windows cap it.
        (expire != Expire::NEVER).then(|| impcache::__private::expire_bound(expire))
    }

    /// Warns (once per application of the layer: it has no call to refuse them with) of a lock
    /// whose lifetime `get_or_set` would refuse under the hard timeout; the lock then runs with
    /// its default lifetime for that hard timeout.
    pub(crate) fn warn_of_an_invalid_lock(&self) {
        let Some(lock) = self.lock else { return };
        if let Some(reason) = impcache::__private::lock::invalid(lock, self.hard_timeout) {
            tracing::warn!(
                namespace = %self.namespace,
                %reason,
                "impcache-tower: CacheLayer::lock's lifetime is refused; the default lifetime for the hard timeout is used instead"
            );
        }
    }

    /// Whether a tag header field read is case-insensitive (`Cache-Tag`): purges then write the
    /// lower-case spelling of a tag too (`tags::spellings`).
    pub(crate) fn case_insensitive_tags(&self) -> bool {
        self.tag_headers.iter().any(crate::tags::case_insensitive)
    }

    /// The layer's TTL and cap, as durations (`None`: no limit).
    pub(crate) fn ttls(&self) -> (Option<Duration>, Option<Duration>) {
        (
            Self::resolve(self.expire),
            self.max_ttl.and_then(Self::resolve),
        )
    }

    /// A URL or key for a log event: itself when the cache records keys
    /// ([`impcache::CacheBuilder::record_keys`]: they can be personal data), else `None`.
    pub(crate) fn logged<'a>(&self, url: &'a str) -> Option<&'a str> {
        self.cache.records_keys().then_some(url)
    }

    /// A cache error for a log event: its message (which names its key) when the cache records
    /// keys, else its kind and cause.
    pub(crate) fn logged_error<'a>(
        &self,
        error: &'a impcache::Error,
    ) -> impl std::fmt::Display + 'a {
        impcache::__private::logged_error(&self.cache, error)
    }

    /// A failed handler call of `url` (its key): throttled, with a fail-safe throttle.
    pub(crate) fn handler_failed(&self, url: &str) {
        if let Some(throttle) = self.fail_safe_throttle {
            impcache::__private::fail_safe::throttle(&self.cache, url, throttle);
        }
    }

    /// A handler call of `url` answered without a server error: its throttle, if any, ends.
    pub(crate) fn handler_succeeded(&self, url: &str) {
        if self.fail_safe_throttle.is_some() {
            impcache::__private::fail_safe::unthrottle(&self.cache, url);
        }
    }

    /// Whether `url`'s stale response answers without a handler call (a call failed less
    /// than the fail-safe throttle ago).
    pub(crate) fn throttled(&self, url: &str) -> bool {
        self.fail_safe_throttle.is_some()
            && impcache::__private::fail_safe::throttled(&self.cache, url)
    }

    /// The keys of `request`'s URL (its path as [`key::request_path`] gives it); a HEAD request
    /// names the GET keys, whose entry answers it.
    pub(crate) fn request_keys<B>(&self, request: &Request<B>) -> key::UrlKeys {
        let method = if request.method() == Method::HEAD {
            &Method::GET
        } else {
            request.method()
        };
        let uri = request.uri();
        key::UrlKeys::new(
            &self.namespace,
            self.host(key::request_host(uri, request.headers())),
            key::request_path(request),
            uri.query(),
            method,
        )
    }

    /// The host part of a key: `host`, or `None` when keys leave the host out.
    pub(crate) fn host<'a>(&self, host: Option<&'a str>) -> Option<&'a str> {
        if self.key_by_host {
            host
        } else {
            None
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every rule; the in-flight table is left out.
        f.debug_struct("Config")
            .field("cache", &self.cache)
            .field("namespace", &self.namespace)
            .field("expire", &self.expire)
            .field("max_ttl", &self.max_ttl)
            .field("methods", &self.methods)
            .field("statuses", &self.statuses)
            .field("max_body_size", &self.max_body_size)
            .field("allow_authenticated", &self.allow_authenticated)
            .field(
                "honor_request_cache_control",
                &self.honor_request_cache_control,
            )
            .field("status_header", &self.status_header)
            .field("compute_etag", &self.compute_etag)
            .field("coalesce", &self.coalesce)
            .field("lock_timeout", &self.lock_timeout)
            .field("key_by_host", &self.key_by_host)
            .field(
                "invalidate_on_unsafe_methods",
                &self.invalidate_on_unsafe_methods,
            )
            .field("follow_origin", &self.follow_origin)
            .field("targeted_field", &self.targeted_field)
            .field("keep_stale", &self.keep_stale)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("stale_if_error_statuses", &self.stale_if_error_statuses)
            .field("handler_timeout", &self.handler_timeout)
            .field("soft_timeout", &self.soft_timeout)
            .field("hard_timeout", &self.hard_timeout)
            .field("early_refresh", &self.early_refresh)
            .field("fail_safe_throttle", &self.fail_safe_throttle)
            .field("tag_headers", &self.tag_headers)
            .field("keep_tag_headers", &self.keep_tag_headers)
            .field("tags_from", &self.tags_from)
            .field("lock", &self.lock)
            .field("tag_prefixes", &self.tag_prefixes)
            .field("listed_hosts", &self.listed_hosts)
            .finish()
    }
}
