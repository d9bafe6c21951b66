//! Invalidation after unsafe requests (RFC 9111 §4.4): a successful `POST`, `PUT`, `PATCH`,
//! `DELETE` (any method but `GET`, `HEAD`, `OPTIONS`, `TRACE`) removes the stored responses of its
//! URL, and of the same-host URLs its response's `Location` and `Content-Location` name.
//!
//! The URLs' records are read (one round trip) and every one found is removed with one `UNLINK`
//! (a second): a record holds its URL's entry, or the Vary marker through which its variants are
//! found, so the next request for the URL is a miss. These two round trips run before the response
//! goes back, so the client that sent the request reads its own write, in a task of its own (a
//! client that hangs up does not cut it short). A failure is logged and the response goes out
//! anyway; with the cache down or slow it costs at most one repository deadline (the first failed
//! round trip ends it).
//!
//! Before them, in this process ([`crate::landing`]): the handler calls of these URLs still
//! running (they may have read the data before the change) will not store their responses, their
//! flights (every variant's) are detached, so a request that arrives after the change makes a
//! handler call of its own rather than take a response made before it, and their stores in
//! progress are waited for. What remains: a handler call in another process that started before
//! the change may still store its older response, served there and here until it expires.
//!
//! Removing a URL's records is enough: its variants (Vary variants, credentialed variants) are
//! stored under the generation of the record that names them, and a new record has a new one, so
//! they are unreachable at once (see [`crate::store`]) and expire with their TTL. Only a record
//! of an earlier version's format, whose variants carry no generation, has them removed as
//! [`CacheLayer::purge_url`](crate::CacheLayer::purge_url) removes them on any host, with a
//! `delete_pattern` sweep (on Redis, a `SCAN` of the whole keyspace): the response waits for it
//! [`SWEEP_WAIT`] at most, then it goes on in the background.

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};
use impcache::Cache;

use crate::config::Config;
use crate::flight::Flights;
use crate::key;
use crate::landing::Landing;
use crate::store::has_variants;

/// How long a response waits for the sweep of its URLs' variants before it goes out and the
/// sweep goes on in the background: the repository's default deadline.
const SWEEP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Host of the base URL when the request names none: a relative reference still resolves against
/// it, and no absolute one can name it (`.invalid` is reserved, RFC 2606).
const NO_HOST: &str = "impcache-tower.invalid";

/// Whether RFC 9110 §9.2.1 defines `method` as safe.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// An unsafe request that invalidates once its response is known to be a success: what it needs
/// of the request, which the handler consumes.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The host the request names (`Host`, else the URI's authority), as sent.
    host: Option<String>,
    /// The request's path and query, as in the request line.
    path_and_query: String,
}

impl Pending {
    /// `Some` when `request` invalidates on success: the option is on, its method is unsafe, and
    /// it is not one the layer stores (a method listed in [`methods`](crate::CacheLayer::methods)
    /// is treated as a read).
    pub(crate) fn of<B>(config: &Config, request: &Request<B>) -> Option<Self> {
        let method = request.method();
        if !config.invalidate_on_unsafe_methods
            || is_safe(method)
            || config.methods.contains(method)
        {
            return None;
        }
        let uri = request.uri();
        Some(Pending {
            host: key::request_host(uri, request.headers()).map(str::to_owned),
            path_and_query: join_path_and_query(key::request_path(request), uri.query()),
        })
    }

    /// Invalidates when `status` is 2xx or 3xx; does nothing for an error status. Returns once
    /// the cache answered, failed, or its deadline passed; never fails.
    pub(crate) async fn run(self, config: &Config, status: StatusCode, headers: &HeaderMap) {
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        let targets = Targets::purge(config, self.host.as_deref(), self.urls(headers));
        match tokio::runtime::Handle::try_current() {
            // Awaited, but in a task of its own: it finishes even if this request is dropped.
            Ok(handle) => {
                if let Err(error) = handle.spawn(targets.invalidate()).await {
                    tracing::warn!(%error, "impcache-tower: invalidation task failed");
                }
            }
            Err(_) => targets.invalidate().await,
        }
    }

    /// The paths and queries to invalidate: the request's, then the same-host ones of `Location`
    /// and `Content-Location` (resolved against the request's URL), each once.
    fn urls(&self, headers: &HeaderMap) -> Vec<String> {
        let mut urls = vec![self.path_and_query.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            for value in headers.get_all(name) {
                let Ok(reference) = value.to_str() else {
                    continue;
                };
                for target in self.same_host_targets(reference) {
                    if !urls.contains(&target) {
                        urls.push(target);
                    }
                }
            }
        }
        urls
    }

    /// The spellings of the path and query `reference` names, resolved against the request's
    /// URL (RFC 3986 §5, as browsers do), when it is on the request's host (same host name and
    /// port; the scheme is not part of a key); none for another host or an unusable reference.
    ///
    /// Keys are made of the request target as sent, and `url` percent-encodes some characters
    /// as it resolves (`'` in a query, `{ } "` in a path): the target comes as `url` spells it
    /// (what a client following the reference sends), then as the reference spells it (`'` kept
    /// as `'`, `%27` as `%27`) when that differs.
    fn same_host_targets(&self, reference: &str) -> Vec<String> {
        let reference = reference.trim();
        let Some(encoded) = self.resolve(&self.path_and_query, reference) else {
            return Vec::new();
        };
        // `url` never encodes a `%`: with every `%` escaped as `%25` first, each `%XX` of the
        // result is one `url` added or an escaped `%`, and decoding them all gives back the
        // reference's own spelling.
        let escape = |s: &str| s.replace('%', "%25");
        let literal = self
            .resolve(&escape(&self.path_and_query), &escape(reference))
            .and_then(|target| {
                let decoded = percent_encoding::percent_decode_str(&target).decode_utf8();
                decoded.ok().map(|decoded| decoded.into_owned())
            });
        match literal {
            Some(literal) if literal != encoded => vec![encoded, literal],
            _ => vec![encoded],
        }
    }

    /// The path and query of `reference` resolved against this request's host and
    /// `path_and_query`, by `url` (which percent-encodes as it parses), when on the same host.
    fn resolve(&self, path_and_query: &str, reference: &str) -> Option<String> {
        let host = self.host.as_deref().filter(|h| !h.is_empty());
        let base = url::Url::parse(&format!(
            "http://{}{path_and_query}",
            host.unwrap_or(NO_HOST)
        ))
        .ok()?;
        let target = base.join(reference).ok()?;
        let same_host = matches!(target.scheme(), "http" | "https")
            && target.host_str() == base.host_str()
            && target.port() == base.port();
        if !same_host {
            return None;
        }
        Some(join_path_and_query(target.path(), target.query()))
    }
}

fn join_path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    }
}

/// What one invalidation removes, owned so that it can run in a task of its own.
pub(crate) struct Targets {
    cache: Cache,
    /// This process's handler calls and stores in progress, marked and waited for first (see
    /// [`crate::landing`]).
    landing: Arc<Landing>,
    /// This process's flights, the URLs' detached first.
    flights: Arc<Flights>,
    namespace: String,
    /// The host parts of the keys (`None`: no host, or keys leave the host out): one, or for a
    /// purge on any host those the namespace's list of hosts names.
    hosts: Vec<Option<String>>,
    /// A purge on any host: a sweep (of a record of an earlier format) covers every host.
    any_host: bool,
    /// The methods whose responses the layer stores: each has a record per URL.
    methods: Vec<Method>,
    urls: Vec<String>,
}

impl Targets {
    /// The targets of a purge of `urls` (paths and queries, as in request lines) on `host`.
    pub(crate) fn purge(config: &Config, host: Option<&str>, urls: Vec<String>) -> Self {
        let host = config.host(host).map(str::to_owned);
        Targets::new(config, (vec![host], false), urls)
    }

    /// The targets of a purge of `urls` on any host: on each of `hosts` (as keys name them), the
    /// namespace's list of hosts. Their records only: the purge's in-process part reaches every
    /// host, listed or not, and comes before the list is read (see
    /// [`CacheLayer::purge_url`](crate::CacheLayer::purge_url)), not through
    /// [`purging`](Self::purging), which reaches these hosts only.
    pub(crate) fn on_hosts(config: &Config, hosts: Vec<Option<String>>, urls: Vec<String>) -> Self {
        Targets::new(config, (hosts, true), urls)
    }

    fn new(
        config: &Config,
        (hosts, any_host): (Vec<Option<String>>, bool),
        urls: Vec<String>,
    ) -> Self {
        Targets {
            cache: config.cache.clone(),
            landing: Arc::clone(&config.landing),
            flights: Arc::clone(&config.flights),
            namespace: config.namespace.clone(),
            hosts,
            any_host,
            methods: config.methods.clone(),
            urls,
        }
    }

    /// (index in `urls`, URL key) for every URL, host and stored method.
    fn url_keys(&self) -> Vec<(usize, String)> {
        let mut url_keys =
            Vec::with_capacity(self.urls.len() * self.hosts.len() * self.methods.len());
        for (i, url) in self.urls.iter().enumerate() {
            let (path, query) = key::split_path_and_query(url);
            for host in &self.hosts {
                for method in &self.methods {
                    let url_key =
                        key::url_key(&self.namespace, host.as_deref(), path, query, method);
                    url_keys.push((i, url_key));
                }
            }
        }
        url_keys
    }

    /// What an invalidation on one host does first, in this process ([`crate::landing`]): the
    /// handler calls of these URLs still running will not store their responses, their flights
    /// are detached, and their stores in progress are waited for. (A purge on any host does it
    /// by the URLs' patterns, on every host whatever the list of hosts says, before it reads
    /// that list: [`CacheLayer::purge_url`](crate::CacheLayer::purge_url).)
    pub(crate) async fn purging(&self) {
        let url_keys = self.url_keys();
        let reaches = |of: &str| {
            url_keys
                .iter()
                .any(|(_, url_key)| key::is_of_url(of, url_key))
        };
        self.landing.purging(&self.flights, reaches).await;
    }

    /// Reads the URLs' records (one round trip) and removes the ones found with one `DEL` (a
    /// second): their variants are then unreachable (see [`crate::store`]). Returns the number
    /// of records removed, and the indexes in `urls` of the URLs whose record was of an earlier
    /// format, whose variants only a sweep removes. Comes after the purge's in-process part
    /// ([`purging`](Self::purging)).
    pub(crate) async fn remove_records(
        &self,
    ) -> Result<(u64, Vec<usize>), (impcache::Error, &'static str)> {
        let url_keys = self.url_keys();
        // A key the cache refuses (longer than its limit) holds nothing it stored: left out, so
        // that one long URL does not fail the read of the others.
        let records: Vec<(usize, String)> = url_keys
            .iter()
            .map(|(i, url_key)| (*i, key::record_key(url_key)))
            .filter(|(_, record)| impcache::__private::accepts_key(&self.cache, record))
            .collect();
        // Read through the cache, as every read of the layer: counted as a `get_many`.
        let values = self
            .cache
            .get_many_raw(records.iter().map(|(_, key)| key))
            .await
            .map_err(|error| (error, "reading the records"))?;
        let mut sweep = Vec::new();
        for ((i, _), value) in records.iter().zip(&values) {
            if has_variants(value.as_ref()) && !sweep.contains(i) {
                sweep.push(*i);
            }
        }
        let found = records
            .iter()
            .zip(&values)
            .filter(|(_, value)| value.is_some())
            .map(|((_, key), _)| key.as_str());
        // Removed through the cache: a near cache drops its copies at once (the next request
        // in this process is a miss, not a copy waiting for Redis's invalidation).
        let removed = self
            .cache
            .delete_many(found)
            .await
            .map_err(|error| (error, "removing the records"))?;
        Ok((removed, sweep))
    }

    /// Purges in this process, removes the records, then sweeps the variants of the URLs whose
    /// record was of an earlier format in a task of its own; stops at the first failure (with
    /// the cache down, the next step would only wait its own deadline too), which is logged.
    async fn invalidate(self) {
        self.purging().await;
        let sweep = match self.remove_records().await {
            Ok((_, sweep)) => sweep,
            Err((error, step)) => return self.failed(&error, step),
        };
        if sweep.is_empty() {
            return;
        }
        let sweep = self.sweep(sweep);
        match tokio::runtime::Handle::try_current() {
            // Past the wait, the sweep goes on in its task (dropping its handle detaches it).
            Ok(handle) => drop(tokio::time::timeout(SWEEP_WAIT, handle.spawn(sweep)).await),
            Err(_) => sweep.await,
        }
    }

    /// The `delete_pattern` pattern of the URL at `index` in `urls`: on its host, or on any host.
    pub(crate) fn pattern(&self, index: usize) -> Option<String> {
        let url = self.urls.get(index)?;
        let host = match &self.hosts[..] {
            [one] if !self.any_host => one.as_deref(),
            _ => None,
        };
        Some(key::url_pattern(&self.namespace, host, url))
    }

    /// Removes every variant of the URLs at `indexes` in `urls`.
    async fn sweep(self, indexes: Vec<usize>) {
        for i in indexes {
            let Some(pattern) = self.pattern(i) else {
                continue;
            };
            if let Err(error) = self.cache.delete_pattern(&pattern).await {
                return self.failed(&error, "sweeping the variants");
            }
        }
    }

    fn failed(&self, error: &impcache::Error, step: &str) {
        // Paths only: a query may carry a token, which has no place in a log; and only when the
        // cache records keys (a path can be personal data).
        let paths: Vec<&str> = if self.cache.records_keys() {
            self.urls
                .iter()
                .map(|url| url.split_once('?').map_or(url.as_str(), |(path, _)| path))
                .collect()
        } else {
            Vec::new()
        };
        let open = matches!(error, impcache::Error::CircuitOpen { .. });
        let error = impcache::__private::logged_error(&self.cache, error);
        if open {
            // The breaker's opening was logged once; so are the failures it stands for.
            tracing::debug!(
                %error,
                ?paths,
                "impcache-tower: invalidation after an unsafe request skipped ({step}): the cache \
                 is unavailable; stored responses of these paths may be served until they expire"
            );
        } else {
            impcache::__private::limited_warn!(
                target: module_path!(),
                %error,
                ?paths,
                "impcache-tower: invalidation after an unsafe request failed ({step}); stored \
                 responses of these paths may be served until they expire"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(host: Option<&str>, path_and_query: &str) -> Pending {
        Pending {
            host: host.map(str::to_owned),
            path_and_query: path_and_query.to_owned(),
        }
    }

    #[test]
    fn the_safe_methods_are_get_head_options_and_trace() -> Result<(), Box<dyn std::error::Error>> {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(is_safe(&Method::from_bytes(method.as_bytes())?));
        }
        for method in ["POST", "PUT", "PATCH", "DELETE", "PURGE", "QUERY"] {
            assert!(!is_safe(&Method::from_bytes(method.as_bytes())?));
        }
        Ok(())
    }

    #[test]
    fn references_resolve_against_the_request_url() {
        let p = pending(Some("Example.com"), "/users/1/edit?x=1");
        let target = |r: &str| p.same_host_targets(r);
        assert_eq!(target("/users/1"), ["/users/1"]);
        assert_eq!(target("profile"), ["/users/1/profile"]);
        assert_eq!(target("../2?tab=a#top"), ["/users/2?tab=a"]);
        assert_eq!(target("?y=2"), ["/users/1/edit?y=2"]);
        assert_eq!(target(""), ["/users/1/edit?x=1"]);
        assert_eq!(
            target("http://example.com/a"),
            ["/a"],
            "the same host, absolute"
        );
        assert_eq!(target("https://EXAMPLE.com:443/a"), ["/a"]);
        assert_eq!(target("//example.com/b"), ["/b"]);
        for other in [
            "http://other.com/a",
            "//other.com/a",
            "http://example.com:8080/a",
            "http://example.com.evil/a",
            "mailto:a@example.com",
            "ftp://example.com/a",
            "http://[::1",
        ] {
            assert!(target(other).is_empty(), "{other}");
        }
        // A port in `Host` must match.
        let p = pending(Some("example.com:8080"), "/a");
        assert_eq!(p.same_host_targets("/b"), ["/b"]);
        assert_eq!(p.same_host_targets("http://example.com:8080/c"), ["/c"]);
        assert!(p.same_host_targets("http://example.com/c").is_empty());
        // No host: only relative references are on it.
        let p = pending(None, "/a/b");
        assert_eq!(p.same_host_targets("c"), ["/a/c"]);
        assert!(p.same_host_targets("http://example.com/c").is_empty());
    }

    /// Characters `url` percent-encodes as it resolves: the target as it spells it, and as the
    /// reference (and the request's URL, for what the reference keeps of it) spell it.
    #[test]
    fn a_reference_is_also_resolved_as_spelled() {
        let p = pending(Some("example.com"), "/q\"x/{id}?name=O'Brien");
        let target = |r: &str| p.same_host_targets(r);
        assert_eq!(
            target("/s?name=O'Brien"),
            ["/s?name=O%27Brien", "/s?name=O'Brien"]
        );
        assert_eq!(target("/a{b}"), ["/a%7Bb%7D", "/a{b}"]);
        assert_eq!(target("http://example.com/q\"x"), ["/q%22x", "/q\"x"]);
        assert_eq!(target("../{c}/d"), ["/%7Bc%7D/d", "/{c}/d"]);
        assert_eq!(target("e"), ["/q%22x/e", "/q\"x/e"]);
        assert_eq!(
            target(""),
            ["/q%22x/%7Bid%7D?name=O%27Brien", "/q\"x/{id}?name=O'Brien"],
            "the request's own URL"
        );
        // Already encoded, or nothing to encode: one spelling, as sent.
        assert_eq!(
            target("/p/%7Bid%7D?q=a%20b&r=%27"),
            ["/p/%7Bid%7D?q=a%20b&r=%27"]
        );
        assert_eq!(target("/s?b=2&a=1"), ["/s?b=2&a=1"]);
        // `%25` stays `%25`; a `%` without two hex digits stays as sent.
        assert_eq!(target("/a%25b{"), ["/a%25b%7B", "/a%25b{"]);
        assert_eq!(target("/100%"), ["/100%"]);
    }
}
