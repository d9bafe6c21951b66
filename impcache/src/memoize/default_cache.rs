//! The process-wide default cache of [`#[cached]`](crate::cached) functions that name none.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::Cache;

static DEFAULT_CACHE: OnceLock<Cache> = OnceLock::new();

/// Installs the process-wide default cache used by [`#[cached]`](crate::cached) functions that
/// have no `cache = ...` option, like `tracing`'s global default dispatcher.
///
/// It can be set once; a second call returns the rejected cache in the error. Until it is set,
/// such functions run uncached (a `tracing` warning says so once).
///
/// ```
/// use impcache::{Cache, MemoryCacheRepository};
///
/// impcache::set_default_cache(Cache::new(MemoryCacheRepository::new()))?;
/// assert!(impcache::default_cache().is_some());
/// # Ok::<(), impcache::SetDefaultCacheError>(())
/// ```
pub fn set_default_cache(cache: Cache) -> Result<(), SetDefaultCacheError> {
    DEFAULT_CACHE
        .set(cache)
        .map_err(|cache| SetDefaultCacheError { cache })
}

/// The default cache installed with [`set_default_cache`], if any: handy to invalidate with
/// [`Cache::delete_pattern`].
pub fn default_cache() -> Option<&'static Cache> {
    DEFAULT_CACHE.get()
}

/// [`set_default_cache`] was called when a default cache was already installed.
pub struct SetDefaultCacheError {
    cache: Cache,
}

impl SetDefaultCacheError {
    /// The cache that was not installed.
    pub fn into_cache(self) -> Cache {
        self.cache
    }
}

impl fmt::Debug for SetDefaultCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What `fn main() -> Result<(), _>` prints: the reason, not an empty struct.
        f.debug_struct("SetDefaultCacheError")
            .field("reason", &format_args!("{self}"))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SetDefaultCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a default cache is already installed (`impcache::set_default_cache` can be called once per process)")
    }
}

impl std::error::Error for SetDefaultCacheError {}

/// Whether the default-cache warning was emitted.
static WARNED_NO_DEFAULT: AtomicBool = AtomicBool::new(false);

/// The default cache, warning once when none is installed.
#[inline]
pub fn default_cache_or_warn() -> Option<&'static Cache> {
    let cache = DEFAULT_CACHE.get();
    if cache.is_none() && !WARNED_NO_DEFAULT.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: super::call::TARGET,
            "a #[cached] function was called before `impcache::set_default_cache`: it runs uncached until a default cache is installed"
        );
    }
    cache
}
