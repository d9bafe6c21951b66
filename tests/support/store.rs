//! The stores a test runs once against each of (the memory repository, a throwaway
//! `redis-server`, and with the feature `cluster` the shared Redis Cluster), and
//! [`per_store!`](crate::per_store), which instantiates an `async fn` test once per store.
//!
//! A [`Store`] makes "processes": each [`Store::cache`] is a `Cache` of its own over its own
//! repository (its own connections, its own single-flight), sharing the stored data.

use std::sync::Arc;
use std::time::Duration;

use impcache::{Cache, CacheRepository, MemoryCacheRepository, RedisCacheRepository};

use crate::RedisServer;

/// A store shared by the `Cache`s it makes ("processes").
pub struct Store {
    process: Box<dyn Fn() -> Cache + Send + Sync>,
    server: Option<RedisServer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// One memory repository's store; each process is a `Cache` over a clone of it (its own
    /// single-flight, as the flights are per repository).
    pub fn memory() -> Self {
        let store = MemoryCacheRepository::new();
        Self::new(
            move || {
                let repository: Arc<dyn CacheRepository> = Arc::new(store.clone());
                Cache::builder_shared(repository).build()
            },
            None,
        )
    }

    /// One `redis-server` started for this store; each process has its own repository and
    /// connection, with `deadline`.
    pub fn redis(deadline: Duration) -> Self {
        let server = RedisServer::start();
        let url = server.url();
        Self::new(
            move || {
                Cache::new(
                    RedisCacheRepository::builder(url.clone())
                        .deadline(deadline)
                        .build()
                        .expect("a Redis repository on the test server"),
                )
            },
            Some(server),
        )
    }

    /// The shared cluster of this test binary, under a key prefix of this store's own
    /// (`{name}{pid}-{n}`); each process has its own repository, with `deadline`.
    #[cfg(feature = "cluster")]
    pub fn cluster(name: &str, deadline: Duration) -> Self {
        let prefix = format!("{name}{}-{}", std::process::id(), next());
        Self::new(
            move || {
                let repository = impcache::RedisClusterCacheRepository::builder(
                    crate::cluster::RedisCluster::shared().urls(),
                )
                .deadline(deadline)
                .build()
                .expect("a cluster repository on the test cluster");
                Cache::builder(repository)
                    .key_prefix(prefix.clone())
                    .build()
            },
            None,
        )
    }

    /// The primary that the Sentinel at `sentinel_url` names for
    /// [`SENTINEL_SERVICE`](crate::cluster::SENTINEL_SERVICE); each process has its own Sentinel
    /// repository, with `deadline`. The caller keeps the group alive.
    #[cfg(feature = "sentinel")]
    pub fn sentinel(sentinel_url: String, deadline: Duration) -> Self {
        Self::new(
            move || {
                Cache::new(
                    impcache::RedisSentinelCacheRepository::builder(
                        [sentinel_url.clone()],
                        crate::cluster::SENTINEL_SERVICE,
                    )
                    .deadline(deadline)
                    .build()
                    .expect("a Sentinel repository on the test group"),
                )
            },
            None,
        )
    }

    /// A store of processes made by `process`, keeping `server` (if any) alive with it.
    pub fn new(
        process: impl Fn() -> Cache + Send + Sync + 'static,
        server: Option<RedisServer>,
    ) -> Self {
        Store {
            process: Box::new(process),
            server,
        }
    }

    /// A new process on the store.
    pub fn cache(&self) -> Cache {
        (self.process)()
    }

    /// `n` new processes on the store.
    pub fn processes(&self, n: usize) -> Vec<Cache> {
        (0..n).map(|_| self.cache()).collect()
    }

    /// The `redis-server` of [`Store::redis`].
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }
}

/// A number of this test binary's own, for key prefixes.
#[cfg(feature = "cluster")]
fn next() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Instantiates each `async fn(T)` test once per store, in modules `memory`, `redis` and (with
/// the feature `cluster`) `cluster`, each test under the attribute given, with the argument
/// `make(store)` of [`Store::memory`], [`Store::redis`]`(deadline)` or
/// [`Store::cluster`]`(prefix, deadline)`. `make`, `deadline` and the tests are named as in the
/// calling file:
///
/// ```ignore
/// per_store!(#[tokio::test] make: Backend::on, prefix: "tags", deadline: HANG; test_a, test_b);
/// ```
#[macro_export]
macro_rules! per_store {
    (
        #[$attr:meta]
        make: $make:expr,
        prefix: $prefix:literal,
        deadline: $deadline:expr;
        $($test:ident),* $(,)?
    ) => {
        mod memory {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[$attr]
                async fn $test() {
                    super::$test(($make)($crate::store::Store::memory())).await;
                }
            )*
        }
        mod redis {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[$attr]
                async fn $test() {
                    super::$test(($make)($crate::store::Store::redis($deadline))).await;
                }
            )*
        }
        #[cfg(feature = "cluster")]
        mod cluster {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[$attr]
                async fn $test() {
                    super::$test(($make)($crate::store::Store::cluster($prefix, $deadline)))
                        .await;
                }
            )*
        }
    };
}
