//! [`CacheLayer::lock`](crate::CacheLayer::lock): one handler call per URL across processes,
//! with impcache's cross-process [`Lock`](impcache::Lock) (its protocol, its keys, its metrics):
//! a miss's leader (one request per URL in this process, see [`crate::flight`]) takes the lock
//! of the URL's record key before calling the handler, and releases it once the response is
//! stored; the other processes' leaders poll the URL's response meanwhile (bounded by the lock's
//! wait), then fail open. A lookup that failed (the cache down) does not try the lock.

use impcache::__private::lock::{self, Turn};

use crate::config::Config;
use crate::entry::Entry;
use crate::held_lock::HeldLock;
use crate::key::UrlKeys;
use crate::store::{lookup, Lookup};

/// What the lock came to for a handler call.
pub(crate) enum Locked {
    /// This process calls the handler, holding the lock (`None`: without it, failing open).
    Call(Option<HeldLock>),
    /// Another process stored the response meanwhile.
    Stored(Entry),
    /// A background revalidation: another process holds the lock, and revalidates.
    Busy,
}

/// Takes the URL's lock, or waits for another process's response (see the module docs).
/// `revalidates`: the stored entry a background revalidation (or early refresh) replaces; such a
/// call does not wait ([`Locked::Busy`]), and only a response stored after that entry (another
/// process's) ends it, not that entry, which may still be fresh.
pub(crate) async fn take(
    config: &Config,
    keys: &UrlKeys,
    headers: &http::HeaderMap,
    revalidates: Option<&Entry>,
) -> Locked {
    let Some(options) = config.lock else {
        return Locked::Call(None);
    };
    let newer = |entry: &Entry| revalidates.is_none_or(|old| entry.stored_at_ms > old.stored_at_ms);
    let poll = || async {
        Ok(match lookup(config, keys, headers).await {
            Lookup::Hit(entry, _) if crate::stale::usable(config, &entry) && newer(&entry) => {
                Some(Some(entry))
            }
            // The cache failed: stop waiting, call the handler.
            Lookup::Failed { .. } => Some(None),
            _ => None,
        })
    };
    match lock::take(
        &config.cache,
        keys.record(),
        options,
        config.hard_timeout,
        revalidates.is_none(),
        poll,
    )
    .await
    {
        Turn::Owner(held) => Locked::Call(Some(HeldLock::new(
            config.cache.clone(),
            keys.record().to_owned(),
            held,
        ))),
        Turn::Loaded(Some(entry)) => Locked::Stored(entry),
        Turn::Busy => Locked::Busy,
        _ => Locked::Call(None),
    }
}
