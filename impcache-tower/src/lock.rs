//! [`CacheLayer::lock`](crate::CacheLayer::lock): one handler call per URL across processes,
//! with impcache's cross-process [`Lock`](impcache::Lock) (its protocol, its keys, its metrics):
//! a miss's leader (one request per URL in this process, see [`crate::flight`]) takes the lock
//! of the URL's record key before calling the handler, and releases it once the response is
//! stored; the other processes' leaders poll the URL's response meanwhile (bounded by the lock's
//! wait), then fail open. A lookup that failed (the cache down) does not try the lock.

use std::fmt;

use impcache::__private::lock::{self, Held, Turn};
use impcache::Cache;

use crate::config::Config;
use crate::entry::Entry;
use crate::key::UrlKeys;
use crate::store::{lookup, Lookup};

/// The lock of a URL, held by this process: released when dropped (in the background: after the
/// response's store, which holds it, or at once when the response is not stored).
pub(crate) struct HeldLock {
    cache: Cache,
    key: String,
    held: Option<Held>,
}

impl fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLock").field("key", &self.key).finish()
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Expires by itself after its lifetime.
            return;
        };
        let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
        runtime.spawn(async move { held.release(&cache, &key).await });
    }
}

/// What the lock came to for a miss.
pub(crate) enum Locked {
    /// This process calls the handler, holding the lock (`None`: without it, failing open).
    Call(Option<HeldLock>),
    /// Another process stored the response meanwhile.
    Stored(Entry),
}

/// Takes the URL's lock, or waits for another process's response (see the module docs).
pub(crate) async fn take(config: &Config, keys: &UrlKeys, headers: &http::HeaderMap) -> Locked {
    let Some(options) = config.lock else {
        return Locked::Call(None);
    };
    let poll = || async {
        Ok(match lookup(config, keys, headers).await {
            Lookup::Hit(entry, _) if crate::stale::usable(config, &entry) => Some(Some(entry)),
            // The cache failed: stop waiting, call the handler.
            Lookup::Failed { .. } => Some(None),
            _ => None,
        })
    };
    match lock::take(&config.cache, keys.record(), options, poll).await {
        Turn::Owner(held) => Locked::Call(Some(HeldLock {
            cache: config.cache.clone(),
            key: keys.record().to_owned(),
            held: Some(held),
        })),
        Turn::Loaded(Some(entry)) => Locked::Stored(entry),
        _ => Locked::Call(None),
    }
}
