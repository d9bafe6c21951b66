//! `#[cached]`: memoize async functions in impcache.
//!
//! Runs on the in-memory repository, or on Redis when `REDIS_URL` is set:
//! `cargo run -p impcache-examples --example memoize` or
//! `REDIS_URL=redis://127.0.0.1:6379/0 cargo run -p impcache-examples --example memoize`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use impcache::{cached, Cache, MemoryCacheRepository, RedisCacheRepository};
use serde::{Deserialize, Serialize};

static DB_QUERIES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// A database handle: not part of the cache key.
struct Db;

/// A slow lookup, cached for a minute in the default cache. Only `Ok` values are stored.
#[cached(expire = 60, skip(db))]
async fn get_user(db: &Db, id: u64) -> Result<User, String> {
    let _ = db;
    DB_QUERIES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    if id == 0 {
        return Err("no user 0".to_owned());
    }
    Ok(User {
        id,
        name: format!("user-{id}"),
    })
}

/// A custom key and a sub-second expiry; `None` is not cached.
#[cached(expire = Duration::from_millis(1500), key = "search:{term}")]
async fn search(term: &str) -> Option<u64> {
    DB_QUERIES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    term.strip_prefix("user-").and_then(|id| id.parse().ok())
}

async fn timed<T: std::fmt::Debug>(label: &str, f: impl std::future::Future<Output = T>) -> T {
    let before = DB_QUERIES.load(Ordering::SeqCst);
    let started = Instant::now();
    let value = f.await;
    let queried = DB_QUERIES.load(Ordering::SeqCst) > before;
    println!(
        "{label:<32} -> {value:?} ({}, {:.1?})",
        if queried { "miss: ran the body" } else { "hit" },
        started.elapsed()
    );
    value
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("using Redis at {url}");
            Cache::builder(RedisCacheRepository::new(&url)?)
                .key_prefix("example")
                .build()
        }
        Err(_) => {
            println!("using the in-memory repository (set REDIS_URL to use Redis)");
            Cache::builder(MemoryCacheRepository::new())
                .key_prefix("example")
                .build()
        }
    };
    impcache::set_default_cache(cache.clone())?;
    let db = Db;

    // Start clean (the example may have run against this Redis before).
    get_user_invalidate(1).await?;
    search_invalidate("user-7").await?;

    timed("get_user(1)", get_user(&db, 1)).await?;
    timed("get_user(1) again", get_user(&db, 1)).await?;
    let _ = timed("get_user(0) (Err: not cached)", get_user(&db, 0)).await;
    let _ = timed("get_user(0) again", get_user(&db, 0)).await;
    timed("search(\"user-7\")", search("user-7")).await;
    timed("search(\"user-7\") again", search("user-7")).await;
    println!("stored at {}", cache.make_key("search:user-7"));

    // 20 concurrent callers of a cold key share one execution.
    get_user_invalidate(2).await?;
    let before = DB_QUERIES.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async { get_user(&Db, 2).await }))
        .collect();
    let mut users = 0;
    for task in tasks {
        task.await??;
        users += 1;
    }
    println!(
        "20 concurrent get_user(2) -> {users} results, {} body execution(s)",
        DB_QUERIES.load(Ordering::SeqCst) - before
    );

    // Invalidate every entry of get_user at once.
    let removed = cache.delete_pattern("memoize::get_user:*").await?;
    println!("delete_pattern(\"memoize::get_user:*\") removed {removed} entries");
    timed("get_user(1) after invalidation", get_user(&db, 1)).await?;
    timed("get_user_uncached(1)", get_user_uncached(&db, 1)).await?;
    Ok(())
}
