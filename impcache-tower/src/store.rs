//! The record/variant storage protocol over the entry framing ([`crate::entry`]) and the key
//! naming ([`crate::key`]): how a request's response is found ([`lookup`]) and how a response is
//! written ([`Unfinished::finish`], then [`store`]), and what invalidation learns from a record
//! ([`has_variants`]).
//!
//! A URL's record key holds either its entry (the response had no `Vary` and the request no
//! keyed credentials: a hit reads one key) or a Vary marker, the header names that pick the
//! variant key to read next. A variant is written before the record that names it, so a reader
//! that finds the record finds the variant.
//!
//! **Generations.** A record carries a generation (random), and a variant is served only under a
//! record of its own generation: removing a URL's records (a purge, an unsafe method) makes all
//! its variants unreachable at once, without finding their keys (they expire with their TTL). A
//! new variant (or one a `304` refreshes) is written under the generation of the record its
//! lookup found ([`Seen`], [`generation`]), and then the record is left alone; a variant whose
//! lookup found no record (or another Vary) gets a new generation and writes the record. So a
//! store that races a purge never makes the purged variants reachable again: it could only write
//! a record of a new generation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, StatusCode};
use impcache::__private::tags::{self as state, Verdict};
use impcache::{Cache, Expire};

use crate::config::Config;
use crate::entry::Freshness;
use crate::entry::{encode_marker, new_generation, now_ms, Entry, Record};
use crate::flight::{FlightGuard, Published, Shared};
use crate::hosts::ListedHosts;
use crate::key;
use crate::landing::InProgress;
use crate::policy::NotStored;
use crate::render::strong_etag;

/// The record a lookup found for a URL whose entries are variants: its Vary header names and the
/// generation new variants are stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) generation: u64,
}

/// The generation a response whose Vary header names are `vary` is stored under, when its
/// lookup found the record `seen`: that record's, when it names the same Vary header names (the
/// variant alone is written, under the record as read; so is a `304`'s refresh of the variant
/// found through it); else `None`, a new generation, whose record the store writes after the
/// variant ([`write()`]).
pub(crate) fn generation(seen: Option<&Seen>, vary: &[HeaderName]) -> Option<u64> {
    seen.filter(|seen| seen.vary == vary)
        .map(|seen| seen.generation)
}

/// The result of a lookup.
pub(crate) enum Lookup {
    /// The entry, and the record it was found through when it is a variant.
    Hit(Entry, Option<Seen>),
    /// `fwd` is `uri-miss` (nothing known for the URL) or `vary-miss` (not this variant, and the
    /// record naming the variants).
    Miss(&'static str, Option<Seen>),
    /// The cache could not answer; `backend` when it is down or slow (nothing is stored then).
    Failed { backend: bool },
}

/// `Lookup::Failed` for a cache error.
fn failed(config: &Config, error: &impcache::Error) -> Lookup {
    cache_failed(&config.cache, error, "lookup; the handler answers");
    Lookup::Failed {
        backend: error.is_backend_failure(),
    }
}

/// Logs a cache operation the layer goes on without (`step`: the handler answers, the response
/// is not stored or not removed), as `get_or_set` logs its own: at `WARN` at most once a second
/// (the rest at `DEBUG`, counted in the next warning's `left_out`), at `DEBUG` alone when the
/// circuit breaker turned it away (its opening is logged once). A read-only replica or a refused
/// login, which open no breaker, was logged at `DEBUG` alone: a layer caching nothing said
/// nothing at the default level (found by a probe).
pub(crate) fn cache_failed(cache: &Cache, error: &impcache::Error, step: &'static str) {
    let open = matches!(error, impcache::Error::CircuitOpen { .. });
    let error = impcache::__private::logged_error(cache, error);
    if open {
        tracing::debug!(%error, "impcache-tower: cache unavailable ({step})");
    } else {
        impcache::__private::limited_warn!(
            target: module_path!(),
            %error,
            "impcache-tower: cache operation failed ({step})"
        );
    }
}

/// Reads the URL's response (its record, see [`lookup_stored`]); a tagged one is judged against
/// its tags' state ([`judge_tags`]): read with the record when the URL's tags are known from an
/// earlier lookup ([`crate::tags::LearnedTags`]), else in a second read.
pub(crate) async fn lookup(config: &Config, keys: &key::UrlKeys, headers: &HeaderMap) -> Lookup {
    let (record, prefetched) = match read_record(config, keys).await {
        Ok((Some(record), prefetched)) => (record, prefetched),
        Ok((None, _)) => return Lookup::Miss("uri-miss", None),
        Err(error) => return failed(config, &error),
    };
    match lookup_stored(config, keys, headers, record).await {
        // Stored before its path's prefixes were declared: out of a prefix purge's reach.
        Lookup::Hit(entry, seen) if !config.tag_prefixes.reachable(keys, &entry) => {
            not_served(seen)
        }
        Lookup::Hit(entry, seen) if entry.tags.is_some() => {
            Box::pin(judge_tags(config, keys, entry, seen, prefetched)).await
        }
        found => found,
    }
}

/// The miss of a found entry that may not be served (`seen`: found through a Vary marker).
fn not_served(seen: Option<Seen>) -> Lookup {
    let fwd = if seen.is_some() {
        "vary-miss"
    } else {
        "uri-miss"
    };
    Lookup::Miss(fwd, seen)
}

/// The state of the tags learned for a URL, read with its record.
struct Prefetched {
    /// The tags, in the order of `states`.
    tags: Arc<[String]>,
    states: Vec<Option<Bytes>>,
}

/// The URL's record: one `GET`, or with the state of the tags learned for the URL, one read of
/// both (one `MGET` on a single node).
async fn read_record(
    config: &Config,
    keys: &key::UrlKeys,
) -> impcache::Result<(Option<Bytes>, Option<Prefetched>)> {
    let cache = &config.cache;
    let Some(tags) = config.learned_tags.get(keys.record()) else {
        return Ok((cache.get_raw(keys.record()).await?, None));
    };
    // Boxed: the read with tag state is a larger future than a `GET`'s, and every lookup's
    // future (moved into the request's box) would carry its size.
    let (record, states) =
        Box::pin(state::get_raw_with_states(cache, keys.record(), &tags)).await?;
    Ok((record, Some(Prefetched { tags, states })))
}

/// The response of the URL whose `record` was read: the record's entry, or when it names
/// another variant than the record's entry, that variant (a second `GET`).
async fn lookup_stored(
    config: &Config,
    keys: &key::UrlKeys,
    headers: &HeaderMap,
    record: Bytes,
) -> Lookup {
    let plain =
        |vary: &[HeaderName]| key::is_plain_variant(vary, headers, config.allow_authenticated);
    // When the record's key is this request's variant key, the answer is its entry, if it
    // holds one.
    let seen = match Record::decode(&record) {
        Some(Record::Entry { entry, vary, .. }) if plain(&vary) => return Lookup::Hit(entry, None),
        Some(
            Record::Entry {
                vary, generation, ..
            }
            | Record::Marker { vary, generation },
        ) => Seen { vary, generation },
        None => {
            let key = config.logged(keys.record());
            tracing::warn!(key, "impcache-tower: unreadable record, treated as a miss");
            return Lookup::Miss("uri-miss", None);
        }
    };
    if plain(&seen.vary) {
        // A marker naming the plain variant: not stored yet.
        return Lookup::Miss("vary-miss", Some(seen));
    }
    // Boxed on its own: it keeps the future of every lookup (moved into the request's box, an
    // allocation per request) small; a varying URL pays one more allocation.
    Box::pin(lookup_variant(config, keys, headers, seen)).await
}

/// The second read of a varying URL: the variant its record names for this request.
async fn lookup_variant(
    config: &Config,
    keys: &key::UrlKeys,
    headers: &HeaderMap,
    seen: Seen,
) -> Lookup {
    let cache = &config.cache;
    let variant = key::variant_key(keys.url(), &seen.vary, headers, config.allow_authenticated);
    let bytes = match cache.get_raw(&variant).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Lookup::Miss("vary-miss", Some(seen)),
        Err(error) => return failed(config, &error),
    };
    match Entry::decode(&bytes) {
        Some((entry, _, generation)) if generation == seen.generation => {
            Lookup::Hit(entry, Some(seen))
        }
        // Of another generation: purged (or orphaned by a newer record).
        Some(_) => Lookup::Miss("vary-miss", Some(seen)),
        None => {
            let key = config.logged(&variant);
            tracing::warn!(key, "impcache-tower: unreadable entry, treated as a miss");
            Lookup::Miss("vary-miss", Some(seen))
        }
    }
}

/// Whether a URL whose record holds `record` may have entries that removing the record does not
/// hide, which only a sweep finds: a record of an unknown (earlier) format. Every other record's
/// variants are of its generation, unreachable once it is gone.
pub(crate) fn has_variants(record: Option<&Bytes>) -> bool {
    record.is_some_and(|bytes| Record::decode(bytes).is_none())
}

/// Writes a response: its host in the namespace's list of hosts when `listed` is given (keys
/// by host, [`crate::hosts::list`]), then its variant and the URL's record naming it ([`write`]).
///
/// Listed first: a purge on any host that reads the list after this store began finds this
/// host's record, and once the record is there the store has made its last command (a caller
/// that waits for the record sees no command of the store after it). A `purge_all` (which
/// removes the list first) landing between the two can leave the record unlisted, until the
/// host's next store lists it again.
async fn store(
    cache: &Cache,
    keys: &key::UrlKeys,
    listed: Option<&ListedHosts>,
    published: &Published,
) -> impcache::Result<()> {
    let lifetime = key_lifetime(published, keys.record())?;
    if let Some(listed) = listed {
        crate::hosts::list(cache, keys, listed, lifetime).await?;
    }
    write(cache, keys.record(), published, lifetime).await
}

/// How long a response's keys live (`None`: no expiry): fresh for its TTL, kept for its stale
/// window after it.
fn key_lifetime(published: &Published, record: &str) -> impcache::Result<Option<Duration>> {
    let expire = published
        .entry
        .ttl
        .map_or(Expire::NEVER, Expire::from_duration);
    Ok(published.stale.stored_expiry(expire, record)?.as_duration())
}

/// Writes a response's variant, and the URL's record naming it, to live `lifetime`.
async fn write(
    cache: &Cache,
    record: &str,
    published: &Published,
    lifetime: Option<Duration>,
) -> impcache::Result<()> {
    let expire = lifetime.map_or(Expire::NEVER, Expire::from_duration);
    if published.variant_key == record {
        // The plain variant: one key, which also replaces a Vary marker (a new generation: the
        // variants of the record it replaces are unreachable).
        let entry = published.entry.encode(&published.vary, new_generation());
        return cache.set_raw(record, entry, expire).await;
    }
    if let Some(generation) = published.generation {
        // The record the lookup found names this variant's generation: the variant alone. (The
        // record is not written again: were it removed meanwhile, writing it would make the
        // removed variants reachable again.)
        let entry = published.entry.encode(&published.vary, generation);
        return cache.set_raw(&published.variant_key, entry, expire).await;
    }
    // The variant first, then the record: a reader that finds the record finds the variant.
    let generation = new_generation();
    let entry = published.entry.encode(&published.vary, generation);
    cache.set_raw(&published.variant_key, entry, expire).await?;
    let marker = encode_marker(&published.vary, generation);
    if cache.set_nx_raw(record, marker.clone(), expire).await? {
        return Ok(());
    }
    let current = cache.get_raw(record).await?;
    let (current_vary, current_generation) = match current.as_ref().and_then(Record::decode) {
        Some(
            Record::Entry {
                vary, generation, ..
            }
            | Record::Marker { vary, generation },
        ) => (Some(vary), generation),
        // Gone meanwhile, or unreadable (an older format): the marker takes its place.
        None => (None, 0),
    };
    if current_vary.as_ref() == Some(&published.vary) {
        // A record of the same Vary names (written meanwhile by another variant's store, or the
        // plain entry that a credentialed variant of a URL without `Vary` leaves in place): the
        // variant joins its generation.
        let entry = published.entry.encode(&published.vary, current_generation);
        return cache.set_raw(&published.variant_key, entry, expire).await;
    }
    // Another Vary, or a plain entry of a URL that now varies: once a URL varies, its plain
    // entry must never be served.
    cache.set_raw(record, marker, expire).await
}

/// Stores in the background, so the response is not delayed by the write; the flight stays open
/// until the write has finished. Without a tokio runtime to run it on, the store is returned for
/// the caller to await.
fn store_in_background(
    (cache, keys, listed): (Cache, key::UrlKeys, Option<ListedHosts>),
    published: Arc<Published>,
    (guard, lock, in_progress): (
        Option<FlightGuard>,
        Option<crate::held_lock::HeldLock>,
        InProgress,
    ),
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let task = async move {
        if let Err(error) = store(&cache, &keys, listed.as_ref(), &published).await {
            cache_failed(&cache, &error, "the response is not stored");
        }
        // The flight ends once the store has landed, and only then may a purge waiting for it
        // go on (its requests from then on read the cache).
        drop(guard);
        drop(lock);
        drop(in_progress);
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
/// it. Dropped unfinished (the request or its body was dropped mid-way), or given up on a body
/// error ([`give_up`](Self::give_up)), it abandons the flight: the waiters look again and elect a
/// new leader.
pub(crate) struct Unfinished {
    pub(crate) cache: Cache,
    pub(crate) keys: key::UrlKeys,
    /// When keys are by host, the hosts this layer listed: the host is listed in the
    /// namespace's list of hosts before the store (`purge_url` on any host reads the list).
    pub(crate) listed: Option<ListedHosts>,
    /// The handler call, recorded in progress before it started ([`crate::landing`]); `None`
    /// when its response is not stored (the cache failing). A purge of its URL during the call
    /// refuses the store.
    pub(crate) call: Option<InProgress>,
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
    /// The generation of the record the lookup found, when it names this response's variants.
    pub(crate) generation: Option<u64>,
    /// Its tags (issue 16).
    pub(crate) tags: Option<Box<crate::tags::Tagged>>,
    /// The URL's cross-process lock, released once the response is stored (or not).
    pub(crate) lock: Option<crate::held_lock::HeldLock>,
    pub(crate) guard: Option<FlightGuard>,
}

impl Unfinished {
    /// Publishes the response with its complete `body` to the waiters and stores it in the
    /// background, unless a purge of its URL began during the handler call (then it only answers
    /// the requests that joined its flight before the purge) or the cache refuses its keys
    /// (longer than its limit). Returns the ETag it computed, if any, whether it is stored, and
    /// the store when there is no tokio runtime to run it on.
    pub(crate) fn finish(
        self,
        body: Bytes,
    ) -> (
        Option<HeaderValue>,
        bool,
        Option<impl Future<Output = ()> + Send>,
    ) {
        let (_, etag, stored, storing) = self.finish_published(body);
        (etag, stored, storing)
    }

    /// [`finish`](Self::finish), also returning the entry as published.
    pub(crate) fn finish_published(
        self,
        body: Bytes,
    ) -> (
        Arc<Published>,
        Option<HeaderValue>,
        bool,
        Option<impl Future<Output = ()> + Send>,
    ) {
        let mut headers = self.headers;
        // The length of the body as stored (a hit then serves it without formatting it); none
        // for a status without content (RFC 9110 §8.6: a 204 has no `Content-Length`), nor an
        // ETag for its absent body.
        let content = crate::render::has_content_length(self.status);
        if content {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        } else {
            headers.remove(header::CONTENT_LENGTH);
        }
        let etag = (content && self.compute_etag && !headers.contains_key(header::ETAG))
            .then(|| strong_etag(&body));
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
                tags: self.tags,
            },
            vary: self.vary,
            variant_key: self.variant_key,
            stale: self.stale,
            generation: self.generation,
        });
        if let Some(guard) = &self.guard {
            guard.publish(Shared::Stored(Arc::clone(&published)));
        }
        // A store in progress from here, before the response goes out: a purge from then on
        // waits for it. Refused when a purge of the URL began during the handler call: the
        // response may be older than the purge.
        let Some(mut call) = self.call else {
            return (published, etag, false, None);
        };
        // A key the cache refuses (longer than its limit): the store would fail, so the
        // response is not claimed stored (`Cache-Status`).
        let refused = [self.keys.record(), published.variant_key.as_str()]
            .into_iter()
            .any(|key| !impcache::__private::accepts_key(&self.cache, key));
        if refused {
            tracing::debug!("impcache-tower: not stored, its key is refused by the cache");
            return (published, etag, false, None);
        }
        if !call.store() {
            let url = self.cache.records_keys().then(|| self.keys.url());
            tracing::debug!(
                url,
                "impcache-tower: not stored, its URL was purged during the handler call"
            );
            return (published, etag, false, None);
        }
        let held = (self.guard, self.lock, call);
        let to = (self.cache, self.keys, self.listed);
        let storing = store_in_background(to, Arc::clone(&published), held);
        (published, etag, true, storing)
    }

    /// The body turned out not storable, for `reason`. A body error (the upstream failed
    /// mid-body, `NotStored::BodyError`) abandons the flight, as a leader whose client went away
    /// does: its waiters look again and elect one new leader, rather than each call the handler
    /// at once. Any other reason (too large, trailers, not the declared length) is the response's
    /// own: it is not shared, and the waiters call the handler themselves.
    pub(crate) fn give_up(self, reason: NotStored) {
        if reason == NotStored::BodyError {
            drop(self);
        } else if let Some(guard) = self.guard {
            guard.not_shared();
        }
    }
}

/// Whether a waiter that joined a flight at `joined` (µs, [`crate::tagging::stamp_micros`]) may
/// take the leader's `entry`: a tagged response whose handler call started before the waiter
/// asked may have been invalidated in between (`purge_tag` / `invalidate_tag` from any process),
/// so its tags' state is read again (one round trip, waiters of tagged responses only) and it is
/// taken only when none was invalidated since, hard or soft. As the core's `get_or_set` waiters;
/// and as they, with the state unreadable (the waiter's own lookup failed against the backend,
/// `look_again` is false, or this read fails) the entry is taken unless this layer's `Cache`
/// itself sent an invalidation (of any tag: `purge_tag`, `soft_purge_tag`, `invalidate_tag`, ..)
/// at or after the entry's creation: that one it knows of without reading anything (then the
/// waiter calls the handler itself, fail open). Another process's it cannot see while the cache
/// fails, and a handler call per waiter would fall on the origin exactly then.
pub(crate) async fn holds_for(
    config: &Config,
    entry: &Entry,
    joined: u64,
    look_again: bool,
) -> bool {
    let Some(tagged) = entry.tags.as_ref() else {
        return true;
    };
    // Asked before the handler call started: taken, as the leader's own request takes it.
    if tagged.created > joined {
        return true;
    }
    // This process's own invalidations since the call started, known without a read.
    let unseen = || !state::invalidated_here_since(&config.cache, tagged.created);
    if !look_again {
        return unseen();
    }
    match state::verdict(&config.cache, &tagged.tags, tagged.created).await {
        Ok(verdict) => verdict == Verdict::Fresh,
        Err(error) => {
            let logged = config.logged_error(&error);
            let taken = unseen();
            tracing::debug!(error = %logged, taken, "impcache-tower: tag state unreadable, taking the shared response unless this cache invalidated a tag since");
            taken
        }
    }
}

/// A tagged hit judged against its tags' state: served, stale (soft purge), or a miss (hard
/// purge). The state is the one `prefetched` with the record when it covers the entry's tags;
/// else it is read (a second read) and the entry's tags are learned for the URL's next lookup.
/// Fails open: the state unreadable, the handler answers.
async fn judge_tags(
    config: &Config,
    keys: &key::UrlKeys,
    mut entry: Entry,
    seen: Option<Seen>,
    prefetched: Option<Prefetched>,
) -> Lookup {
    let Some(tagged) = entry.tags.as_mut() else {
        return Lookup::Hit(entry, seen);
    };
    let cache = &config.cache;
    let known = prefetched.and_then(|known| {
        state::verdict_from(
            cache,
            &tagged.tags,
            tagged.created,
            &known.tags,
            &known.states,
        )
    });
    let verdict = match known {
        Some(verdict) => Ok(verdict),
        None => {
            config.learned_tags.learn(keys.record(), &tagged.tags);
            state::verdict(cache, &tagged.tags, tagged.created).await
        }
    };
    match verdict {
        Ok(Verdict::Fresh) => Lookup::Hit(entry, seen),
        Ok(Verdict::Stale { since }) => {
            tagged.soft_since = Some(since);
            Lookup::Hit(entry, seen)
        }
        Ok(_) => not_served(seen),
        Err(error) => {
            cache_failed(cache, &error, "tag state unreadable; the handler answers");
            Lookup::Failed {
                backend: error.is_backend_failure(),
            }
        }
    }
}
