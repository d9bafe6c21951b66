//! Shared by the examples: the repository to run on.

use impcache::{CacheRepository, MemoryCacheRepository, RedisCacheRepository};
use std::sync::Arc;

/// Redis when `REDIS_URL` is set, the embedded in-memory repository otherwise.
pub(crate) fn repository_from_env() -> impcache::Result<Arc<dyn CacheRepository>> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("using Redis at {url}");
            Ok(Arc::new(RedisCacheRepository::new(&url)?))
        }
        _ => {
            println!("using the in-memory repository (set REDIS_URL to use Redis)");
            Ok(Arc::new(MemoryCacheRepository::new()))
        }
    }
}
