//! [`CacheLayer::lock`](crate::CacheLayer::lock): one handler call per response across
//! processes, with impcache's cross-process [`Lock`](impcache::Lock) (its protocol, its keys, its
//! metrics): a miss's leader (one request per variant in this process, see [`crate::flight`])
//! takes a lock before calling the handler, and releases it once the response is stored; the
//! other processes' leaders poll the response meanwhile (bounded by the lock's wait), then fail
//! open. A lookup that failed (the cache down) does not try the lock.
//!
//! The lock is the response's: its variant's key when the URL's record names its `Vary` headers
//! (or keys by credentials), else the URL's record key. So misses of different variants of a
//! known URL call the handler side by side, as `get_or_set`'s locks of different keys do. Of a
//! URL not stored yet, the variants are not known before the first response: they wait on the
//! record's lock, and once the first response names them, a waiter whose variant it is not
//! moves to its own variant's lock (one wait for another variant's call, not one per variant).

use std::time::Duration;

use impcache::__private::lock::{self, Turn};

use crate::config::Config;
use crate::entry::Entry;
use crate::held_lock::HeldLock;
use crate::key::{self, UrlKeys};
use crate::policy::Limits;
use crate::stale::{handed, Handed};
use crate::store::{lookup, Lookup, Seen};

/// What the lock came to for a handler call.
pub(crate) enum Locked {
    /// This process calls the handler, holding the lock (`None`: without it, failing open).
    Call(Option<HeldLock>),
    /// As [`Locked::Call`], after a read found a stored response the request's limits refuse
    /// (see [`handed`]): the call is `fwd=request`, made without the lock.
    Refused(Option<HeldLock>),
    /// Another process stored the response meanwhile.
    Stored(Entry),
    /// A background revalidation: another process holds the lock, and revalidates.
    Busy,
}

/// What a poll of the response found, while its lock is held elsewhere.
enum Polled {
    /// Another process stored it.
    Stored(Entry),
    /// The cache failed: stop waiting, call the handler.
    Failed,
    /// The URL's record names its variants now, and this request's is another one than the
    /// lock's holder stored: its own variant's lock (this key) is the one to wait on.
    Variant(String),
    /// A stored response the request's limits refuse: it calls the handler itself, at once, as
    /// it would without the lock (waiting for the lock's holder lined such requests up, one
    /// call after another).
    Refused,
}

/// Takes the lock of the request's response, or waits for another process's response (see the
/// module docs): one its honoured `Cache-Control` takes (`limits`, see [`handed`]); a response
/// they refuse ends the wait ([`Locked::Refused`]: the request calls the handler at once, without
/// the lock, as it would without one). `headers`: the request's. `seen`: the URL's record as the lookup
/// found it (the variants it names).
/// `revalidates`: the stored entry a background revalidation (or early refresh) replaces; such a
/// call does not wait ([`Locked::Busy`]), and only a response stored after that entry (another
/// process's) ends it, not that entry, which may still be fresh.
pub(crate) async fn take(
    config: &Config,
    keys: &UrlKeys,
    (headers, limits): (&http::HeaderMap, &Limits),
    seen: Option<&Seen>,
    revalidates: Option<&Entry>,
    spent: Duration,
) -> Locked {
    let Some(options) = config.lock else {
        return Locked::Call(None);
    };
    // What is left of the lock's `wait` after `spent` waiting for this process's calls (a
    // request that joined again behind a response not stored waited out its leader's wait
    // first: twice the `wait` in all, found by a probe).
    let options = options.wait(options.wait_duration().saturating_sub(spent));
    let variant = seen.and_then(|seen| variant_key(config, keys, headers, seen));
    let lock_key = variant.as_deref().unwrap_or(keys.record());
    let asks = (headers, limits);
    match take_key(config, options, keys, asks, lock_key, revalidates).await {
        Taken::Locked(locked) => locked,
        // Once: a variant's lock does not end with `Variant` (see `take_key`).
        Taken::Variant(variant) => {
            match take_key(config, options, keys, asks, &variant, revalidates).await {
                Taken::Locked(locked) => locked,
                Taken::Variant(_) => Locked::Call(None),
            }
        }
    }
}

/// The key of the request's variant when `seen` names variants and the request's is not the
/// one the record holds itself.
fn variant_key(
    config: &Config,
    keys: &UrlKeys,
    headers: &http::HeaderMap,
    seen: &Seen,
) -> Option<String> {
    let credentials = config.allow_authenticated;
    (!key::is_plain_variant(&seen.vary, headers, credentials))
        .then(|| key::variant_key(keys.url(), &seen.vary, headers, credentials))
}

/// What [`take_key`] came to.
enum Taken {
    Locked(Locked),
    /// Waiting on the record's lock, the URL's record came to name another variant than the
    /// request's, whose key this is (see [`Polled::Variant`]).
    Variant(String),
}

/// The lock of `lock_key` (the record's or a variant's), with the layer's `options`, polling the
/// request's response while another process holds it. Only on the record's lock does a poll
/// that finds the URL's variants named end the wait with [`Taken::Variant`].
async fn take_key(
    config: &Config,
    options: impcache::Lock,
    keys: &UrlKeys,
    (headers, limits): (&http::HeaderMap, &Limits),
    lock_key: &str,
    revalidates: Option<&Entry>,
) -> Taken {
    let on_record = lock_key == keys.record();
    let newer = |entry: &Entry| revalidates.is_none_or(|old| entry.stored_at_ms > old.stored_at_ms);
    let poll = || async {
        Ok(match lookup(config, keys, headers).await {
            Lookup::Hit(entry, _) if newer(&entry) => match handed(config, &entry, limits) {
                Handed::Answers => Some(Polled::Stored(entry)),
                Handed::Refused => Some(Polled::Refused),
                Handed::Unusable => None,
            },
            Lookup::Failed { .. } => Some(Polled::Failed),
            Lookup::Miss(_, Some(seen)) if on_record => {
                variant_key(config, keys, headers, &seen).map(Polled::Variant)
            }
            _ => None,
        })
    };
    let turn = lock::take(
        &config.cache,
        lock_key,
        options,
        config.hard_timeout,
        revalidates.is_none(),
        poll,
    )
    .await;
    Taken::Locked(match turn {
        Turn::Owner(held) => Locked::Call(Some(HeldLock::new(
            config.cache.clone(),
            lock_key.to_owned(),
            held,
        ))),
        Turn::Loaded(Polled::Stored(entry)) => Locked::Stored(entry),
        Turn::Loaded(Polled::Variant(variant)) => return Taken::Variant(variant),
        Turn::Loaded(Polled::Refused) => Locked::Refused(None),
        Turn::Busy => Locked::Busy,
        _ => Locked::Call(None),
    })
}
