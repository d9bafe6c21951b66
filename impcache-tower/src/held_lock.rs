//! [`HeldLock`]: a URL's cross-process lock held by this process (`lock.rs` takes it; the
//! response's store, `store.rs`, holds it until the response is stored).

use std::fmt;

use impcache::__private::lock::Held;
use impcache::Cache;

/// The lock of a URL, held by this process: released when dropped (in the background: after the
/// response's store, which holds it, or at once when the response is not stored).
pub(crate) struct HeldLock {
    cache: Cache,
    key: String,
    held: Option<Held>,
}

impl HeldLock {
    /// The lock of `key` (a URL's record key) in `cache`, held as `held`.
    pub(crate) fn new(cache: Cache, key: String, held: Held) -> HeldLock {
        HeldLock {
            cache,
            key,
            held: Some(held),
        }
    }
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
