//! The README's ```` ```rust ```` blocks, compiled: each block's lines appear here verbatim (only
//! their indentation differs), inside a function that gives them what they need (the types `Db`,
//! `User`, `Report`…, a `cache`, a handler). The functions whose block builds a Redis repository
//! are compiled and never called: no test here opens a connection. The others run against a
//! `MemoryCacheRepository`, and `readme_claims_hold_in_memory` checks the results the README
//! states next to the blocks.
//!
//! `every_readme_rust_line_is_compiled_here` reads README.md and fails when a line of one of its
//! `rust` blocks is not in this file, so the README cannot drift from code that compiles. Two
//! narrow exceptions, each visible in the source:
//! - a README line holding the placeholder `/* ... */` matches a line of this file that starts
//!   with the text before the placeholder and ends with the text after it (a body written here);
//! - a README line that does not compile as written would be kept here as a comment,
//!   `// README: <the line>`, just above the corrected line (none at present).
//!
//! Blocks are formatted as in the README (`#[rustfmt::skip]` on their functions).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use impcache::{Cache, MemoryCacheRepository};
use impcache_tower::CacheLayer;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// The context the blocks assume.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    org: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    day: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
}

/// A database error: no serde, as the README's `#[cached]` table says `E` needs none.
#[derive(Debug)]
struct DbError;

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("database error")
    }
}

impl StdError for DbError {}

/// A `Clone` handle, as the tags block asks (`db`: an `Arc` or a pool), counting its loads.
#[derive(Debug, Clone, Default)]
struct Db {
    loads: Arc<AtomicUsize>,
}

impl Db {
    fn count(&self) {
        self.loads.fetch_add(1, Ordering::SeqCst);
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    async fn load(&self, id: u64) -> Result<User, DbError> {
        self.count();
        Ok(User { id, org: 3 })
    }

    /// A fallible loader for `try_get_or_set`: `E: From<impcache::Error> + Display`.
    async fn load_user(&self, id: u64) -> Result<User, impcache::Error> {
        self.count();
        Ok(User { id, org: 3 })
    }

    async fn orders(&self, user: u64) -> Vec<Order> {
        self.count();
        vec![Order { id: user * 10 }, Order { id: user * 10 + 1 }]
    }

    async fn user(&self, id: u64) -> User {
        self.count();
        User { id, org: 3 }
    }
}

async fn build_report() -> Report {
    Report { day: 0 }
}

async fn build_report_of(day: u32) -> Report {
    Report { day }
}

/// The `cache = APP_CACHE` of the `#[cached]` block.
static APP_CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

/// The handler of the `impcache-tower` block.
async fn show_user() -> &'static str {
    "user"
}

// ---------------------------------------------------------------------------------------------
// The blocks, in README order.
// ---------------------------------------------------------------------------------------------

/// README "Quickstart: `impcache`". Never called: it builds a Redis repository (lazy: it would
/// not connect, but no test here relies on that). `readme_claims_hold_in_memory` runs the same
/// calls on memory.
#[rustfmt::skip]
#[allow(dead_code, unused_variables)]
async fn readme_quickstart() -> impcache::Result<()> {
    use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};

    let cache = Cache::builder(RedisCacheRepository::new("redis://127.0.0.1:6379/0")?)
        .key_prefix("cache")        // default "cache"
        .version(1)                 // default 1; an integer or a string
        .build();
    let cache = Cache::new(MemoryCacheRepository::new());   // the defaults, in memory

    cache.set("key", &"value", 100).await?;                  // expire: whole seconds, or a Duration
    let v: Option<String> = cache.get("key").await?;
    let first: bool = cache.set_nx("key", &"value", 100).await?;
    cache.set_many([("k1", 1), ("k2", 2)], 100).await?;
    let vs: Vec<Option<i64>> = cache.get_many(&["k1", "missing", "k2"]).await?;   // [Some(1), None, Some(2)]
    let removed: u64 = cache.delete("key").await?;
    let removed: u64 = cache.delete_many(&["k1", "k2"]).await?;
    let removed: u64 = cache.delete_pattern("h*llo").await?;
    let v2: Cache = cache.with_version(2);                    // same repository and prefix; cheap
    assert_eq!(cache.make_key("key"), "cache:1:key");
    Ok(())
}

/// README "Long sweeps". Run on memory.
#[rustfmt::skip]
async fn readme_long_sweeps(cache: &Cache) -> impcache::Result<u64> {
    let removed = cache
        .delete_pattern_with_progress("session:*", |p| println!("{} removed so far", p.removed))
        .await
        .or_else(|e| match e.removed_before_failure() {
            Some(n) => { eprintln!("{n} removed, then: {e}"); Ok(n) }
            None => Err(e),
        })?;
    Ok(removed)
}

/// README "Quickstart: `#[cached]`". Never called: it installs a Redis default cache.
#[rustfmt::skip]
#[allow(dead_code)]
async fn readme_cached(db: Db) -> Result<(), Box<dyn StdError>> {
    use std::time::Duration;
    use impcache::{cached, Cache, RedisCacheRepository};

    #[cached(expire = 60, skip(db))]                  // uses the default cache
    async fn get_user(db: &Db, id: u64) -> Result<User, DbError> { db.load(id).await }

    #[cached(cache = APP_CACHE, expire = Duration::from_millis(1500), key = "search:{term}")]
    async fn search(term: &str) -> Option<Vec<u64>> { Some(vec![term.len() as u64]) }

    impcache::set_default_cache(Cache::new(RedisCacheRepository::new("redis://127.0.0.1/0")?))?;
    get_user(&db, 42).await?;            // miss: runs the body, stores the value inside Ok with SET NX EX 60 in the background
    get_user(&db, 42).await?;            // hit: one GET, one decode
    get_user_invalidate(42).await?;      // removes that call's entry (a run in progress stores nothing)
    get_user_uncached(&db, 42).await?;   // runs the body, bypassing the cache
    Ok(())
}

/// README "Freshness". Run on memory.
#[rustfmt::skip]
async fn readme_freshness(cache: &Cache, db: Db) -> impcache::Result<User> {
    use std::time::Duration;
    use impcache::Freshness;

    let policy = Freshness::new()
        .stale_while_revalidate(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(3600))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(2));
    let user: User = cache
        .try_get_or_set("user:42", 300, move || async move { db.load_user(42).await })
        .freshness(policy)
        .await?;
    Ok(user)
}

/// README "One loader run across processes". Run on memory (`report_of` is not called).
#[rustfmt::skip]
#[allow(dead_code)]
async fn readme_lock(cache: &Cache) -> impcache::Result<Report> {
    use std::time::Duration;
    use impcache::{cached, Freshness, Lock};

    let policy = Freshness::new()
        .hard_timeout(Duration::from_secs(5))
        .lock(Lock::new().lifetime(Duration::from_secs(10)).wait(Duration::from_secs(10)));
    let report: Report = cache
        .get_or_set("report:today", 300, move || async move { build_report().await })
        .freshness(policy)
        .await?;

    #[cached(expire = 300, lock = 10)]          // lifetime 10 s, wait 20 s; `lock` alone: the defaults
    async fn report_of(day: u32) -> Report { build_report_of(day).await }
    Ok(report)
}

/// README "Tags". Run on memory (with a memory default cache for `profile_invalidate_all`).
#[rustfmt::skip]
#[allow(dead_code)]
async fn readme_tags(cache: &Cache, db: Db, user_profile: Profile) -> impcache::Result<(Vec<Order>, User)> {
    // `db`: a `Clone` handle (an `Arc` or a pool), one clone moved into each loader.
    cache.set_tagged("user:42:profile", &user_profile, 300, ["user:42"]).await?;
    let orders: Vec<Order> = cache
        .get_or_set("user:42:orders", 300, { let db = db.clone(); move || async move { db.orders(42).await } })
        .tags(["user:42", "orders"])
        .await?;

    let user: User = cache
        .get_or_set("user:42", 300, move || async move { db.user(42).await })
        .tags(["user:42"])
        .tags_from(|user: &User| [format!("org:{}", user.org)]) // tags known once the value is loaded
        .await?;

    cache.invalidate_tag("user:42").await?;          // the three entries: misses from now on
    cache.soft_invalidate_tag("orders").await?;      // stale: served under a stale window while one reload runs
    cache.invalidate_tags(["user:7", "user:8"]).await?; // and soft_invalidate_tags

    #[impcache::cached(expire = 300, tags = ["user:{id}"])] // templates from the arguments, like `key`
    async fn profile(id: u64) -> Profile { Profile { id } }
    profile_invalidate_all().await?;                // every entry of `profile`, no scan
    Ok((orders, user))
}

/// README "Quickstart: `impcache-tower`". Never called: Redis. Returns the router, which
/// gives `Router::new()` its state type (the README's `app` is unused, so alone it would not
/// infer).
#[rustfmt::skip]
#[allow(dead_code)]
async fn readme_tower() -> Result<axum::Router, Box<dyn StdError>> {
    use axum::{routing::get, Router};
    use impcache::{Cache, RedisCacheRepository};
    use impcache_tower::CacheLayer;

    let cache = Cache::new(RedisCacheRepository::new("redis://127.0.0.1:6379/0")?);
    let layer = CacheLayer::new(cache.clone()).expire(60);
    let app = Router::new()
        .route("/users/{id}", get(show_user))
        .route_layer(layer.clone());            // or .layer(..); any hyper 1 / tower service works too
    layer.purge_url(Some("example.com"), "/users/1").await?; // one URL, all its Vary variants, no scan
    layer.purge_url(None, "/users/1").await?;   // the same on every host (the listed hosts', no scan)
    layer.purge_url(None, "http://example.com/users/1").await?; // absolute form: its authority is the host
    layer.purge_prefix(None, "/users/").await?; // everything under a path (delete_pattern underneath,
                                                // or one tag write for a prefix declared with
                                                // the layer's .tag_prefixes(["/users/"]))
    layer.soft_purge_prefix(None, "/users/").await?; // a declared prefix marked stale instead
    layer.purge_prefix_with_progress(None, "/users/", |p| println!("{p:?}")).await?; // and purge_url/purge_all_with_progress
    Ok(app)
}

/// README "HTTP tags, soft purge and the cross-process lock". Run on memory.
#[rustfmt::skip]
async fn readme_http_tags(cache: &Cache) -> impcache::Result<CacheLayer> {
    use std::time::Duration;

    let layer = CacheLayer::new(cache.clone())
        .stale_while_revalidate(Duration::from_secs(60))  // what a soft purge serves meanwhile
        .tags_from(|req| vec![format!("path:{}", req.uri.path())]) // tags from the request, added
        .lock(impcache::Lock::new().wait(Duration::from_secs(5))); // one handler call across processes
    // A handler answering `Surrogate-Key: user:1 users` (or `Cache-Tag: user:1,users`) tags the response.
    layer.purge_tag("user:1").await?;       // hard: its responses are misses, in every process
    layer.soft_purge_tag("users").await?;   // soft: served stale while one background call refreshes
    layer.purge_tags(["user:2", "user:3"]).await?; // and soft_purge_tags
    cache.invalidate_tag("user:1").await?;  // the same state: memoized values and HTTP responses alike
    Ok(layer)
}

/// README "Near cache". Never called: Redis.
#[rustfmt::skip]
#[allow(dead_code)]
fn readme_near_cache() -> impcache::Result<Cache> {
    use impcache::{Cache, NearCache, RedisCacheRepository};

    let cache = Cache::builder(RedisCacheRepository::new("redis://127.0.0.1:6379/0")?)
        .near_cache(NearCache::new().max_capacity_bytes(64 * 1024 * 1024))
        .build();
    Ok(cache)
}

// ---------------------------------------------------------------------------------------------
// The drift check.
// ---------------------------------------------------------------------------------------------

/// This file, as compiled.
const SOURCE: &str = include_str!("readme_snippets.rs");

/// The placeholder of a function body in the README (`{ /* ... */ }`).
const PLACEHOLDER: &str = "/* ... */";

/// The `rust` blocks of `readme`: for each, its lines with their 1-based line numbers.
fn rust_blocks(readme: &str) -> Vec<Vec<(usize, &str)>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<(usize, &str)>> = None;
    for (index, line) in readme.lines().enumerate() {
        let fence = line.trim();
        match current.as_mut() {
            None if fence == "```rust" => current = Some(Vec::new()),
            None => {}
            Some(_) if fence.starts_with("```") => blocks.extend(current.take()),
            Some(block) => block.push((index + 1, line)),
        }
    }
    assert!(
        current.is_none(),
        "README.md: a ```rust block is not closed"
    );
    blocks
}

/// Whether this file's (trimmed) `line` stands for the README's (trimmed) `wanted`: the same
/// text, or `// README: {wanted}` (a README line kept as a comment above its correction), or,
/// for a README line with the placeholder, a line with a body in its place.
fn stands_for(line: &str, wanted: &str) -> bool {
    match wanted.split_once(PLACEHOLDER) {
        None => line == wanted || line.strip_prefix("// README: ") == Some(wanted),
        Some((before, after)) => {
            let (before, after) = (before.trim_end(), after.trim_start());
            line.len() > before.len() + after.len()
                && line.starts_with(before)
                && line.ends_with(after)
                && !line.contains(PLACEHOLDER)
        }
    }
}

/// The lines of `readme`'s `rust` blocks that `source` does not stand for, in README order
/// (each block's lines are looked for after the previous ones), as `README.md:{line}: {text}`.
fn missing_lines(readme: &str, source: &str) -> Vec<String> {
    let source: Vec<&str> = source.lines().map(str::trim).collect();
    let mut from = 0;
    let mut missing = Vec::new();
    for (number, line) in rust_blocks(readme).into_iter().flatten() {
        let wanted = line.trim();
        if wanted.is_empty() {
            continue;
        }
        match source[from..].iter().position(|l| stands_for(l, wanted)) {
            Some(at) => from += at + 1,
            None => missing.push(format!("README.md:{number}: {wanted}")),
        }
    }
    missing
}

#[test]
fn every_readme_rust_line_is_compiled_here() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    assert_eq!(
        rust_blocks(&readme).len(),
        9,
        "README.md's ```rust blocks: one function each here"
    );
    let missing = missing_lines(&readme, SOURCE);
    assert!(
        missing.is_empty(),
        "README lines not in tests/readme_snippets.rs (in README order); add them to the \
         function of their block, and make them compile:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_drift_check_matches_lines_and_placeholders_only() {
    let blocks = rust_blocks("a\n```rust\nlet x = 1;\n\n```\n```sh\nls\n```\n```rust\ny\n```\n");
    assert_eq!(
        blocks,
        vec![vec![(3, "let x = 1;"), (4, "")], vec![(10, "y")]]
    );
    assert!(stands_for("let x = 1;", "let x = 1;"));
    assert!(stands_for("// README: let x = 1;", "let x = 1;"));
    assert!(!stands_for("let x = 1; // more", "let x = 1;"));
    let wanted = "async fn f() -> u8 { /* ... */ }";
    assert!(stands_for("async fn f() -> u8 { 1 }", wanted));
    assert!(!stands_for("async fn f() -> u8 {}", wanted));
    assert!(!stands_for("async fn g() -> u8 { 1 }", wanted));
    assert!(!stands_for(wanted, wanted));
    assert!(!stands_for(&format!("// README: {wanted}"), wanted));

    let readme = "```rust\nlet a = 1;\n    let b = 2;\n```\ntext\n```rust\nlet c = 3;\n```\n";
    assert!(missing_lines(readme, "let a = 1;\nlet b = 2;\n  let c = 3;").is_empty());
    assert_eq!(
        missing_lines(readme, "let a = 1;\nlet c = 3;\n"),
        ["README.md:3: let b = 2;"]
    );
    assert_eq!(
        missing_lines(readme, "let c = 3;\nlet a = 1;\nlet b = 2;\n"),
        ["README.md:7: let c = 3;"],
        "out of order"
    );
}

/// The loader error types the README names after the freshness block (`anyhow::Error` aside: not
/// a dependency here) are `E: From<impcache::Error> + Display + Send + 'static`.
fn assert_loader_error<E: From<impcache::Error> + fmt::Display + Send + 'static>() {}

#[test]
fn readme_loader_error_types() {
    assert_loader_error::<String>();
    assert_loader_error::<std::io::Error>();
    assert_loader_error::<Box<dyn StdError + Send + Sync>>();
    assert_loader_error::<impcache::Error>();
}

// ---------------------------------------------------------------------------------------------
// What the README says next to the blocks, checked in memory.
// ---------------------------------------------------------------------------------------------

/// `Cache` is `Clone + Send + Sync + Debug` (README, after the API table).
fn assert_cache_traits<T: Clone + Send + Sync + fmt::Debug>() {}

#[tokio::test]
async fn readme_claims_hold_in_memory() {
    assert_cache_traits::<Cache>();

    // Quickstart: the same calls as `readme_quickstart`, on memory, with their stated results.
    let built = Cache::builder(MemoryCacheRepository::new())
        .key_prefix("cache") // default "cache"
        .version(1) // default 1
        .build();
    let cache = Cache::new(MemoryCacheRepository::new());
    assert_eq!(built.make_key("key"), cache.make_key("key"), "the defaults");
    assert_eq!(cache.make_key("key"), "cache:1:key");
    let named = Cache::builder(MemoryCacheRepository::new())
        .version("v2") // "an integer or a string"
        .build();
    assert_eq!(named.make_key("key"), "cache:v2:key");

    cache.set("key", &"value", 100).await.unwrap();
    let v: Option<String> = cache.get("key").await.unwrap();
    assert_eq!(v.as_deref(), Some("value"));
    let first: bool = cache.set_nx("key", &"value", 100).await.unwrap();
    assert!(!first, "set_nx on a taken key: false");
    assert!(cache.set_nx("free", &"value", 100).await.unwrap());
    cache.set_many([("k1", 1), ("k2", 2)], 100).await.unwrap();
    let vs: Vec<Option<i64>> = cache.get_many(&["k1", "missing", "k2"]).await.unwrap();
    assert_eq!(vs, [Some(1), None, Some(2)]);
    assert_eq!(cache.delete("key").await.unwrap(), 1);
    assert_eq!(cache.delete_many(&["k1", "k2"]).await.unwrap(), 2);
    cache
        .set_many([("hello", 1), ("hallo", 2), ("hllo", 3)], 100)
        .await
        .unwrap();
    assert_eq!(cache.delete_pattern("h*llo").await.unwrap(), 3);
    let v2: Cache = cache.with_version(2);
    assert_eq!(v2.make_key("key"), "cache:2:key", "same prefix");
    assert_eq!(v2.key_prefix(), cache.key_prefix());
    v2.set("shared", &7, 100).await.unwrap();
    assert!(
        Arc::ptr_eq(v2.repository(), cache.repository()),
        "same repository"
    );
    assert_eq!(
        cache.get::<i64>("shared").await.unwrap(),
        None,
        "another version"
    );

    // Expiry: seconds, a `Duration`, `Expire::NEVER`; zero and over 100 years refused.
    cache
        .set("ms", &1, Duration::from_millis(1500))
        .await
        .unwrap();
    cache
        .set("never", &1, impcache::Expire::NEVER)
        .await
        .unwrap();
    for bad in [
        cache.set("zero", &1, 0).await,
        cache.set("past", &1, -1).await,
        cache
            .set("long", &1, Duration::from_secs(101 * 366 * 24 * 3600))
            .await,
    ] {
        assert!(
            matches!(bad, Err(impcache::Error::InvalidExpire { .. })),
            "{bad:?}"
        );
    }
    // Empty inputs return at once.
    assert_eq!(cache.get_many::<i64>(Vec::<&str>::new()).await.unwrap(), []);
    assert_eq!(cache.delete_many(Vec::<&str>::new()).await.unwrap(), 0);
    cache
        .set_many(Vec::<(&str, i64)>::new(), 100)
        .await
        .unwrap();
    // A stored `null` read as `Option<U>` is `Some(None)`.
    cache.set("null", &(), 100).await.unwrap();
    assert_eq!(cache.get::<Option<u8>>("null").await.unwrap(), Some(None));
    // Patterns: an unclosed `[` is refused; `[a-\]` is closed.
    for unclosed in ["h[ae", "[a-]"] {
        let refused = cache.delete_pattern(unclosed).await;
        assert!(
            matches!(refused, Err(impcache::Error::InvalidPattern { .. })),
            "{unclosed}: {refused:?}"
        );
    }
    assert_eq!(cache.delete_pattern(r"[a-\]").await.unwrap(), 0);
    cache.set("h*llo", &1, 100).await.unwrap();
    cache.set("hello", &1, 100).await.unwrap();
    let literal = impcache::escape_pattern("h*llo");
    assert_eq!(cache.delete_pattern(&literal).await.unwrap(), 1);
    assert_eq!(cache.get::<i64>("hello").await.unwrap(), Some(1));

    // Long sweeps: the block run on memory.
    cache
        .set_many([("session:1", 1), ("session:2", 2), ("other", 3)], 100)
        .await
        .unwrap();
    assert_eq!(readme_long_sweeps(&cache).await.unwrap(), 2);
    assert_eq!(cache.get::<i64>("other").await.unwrap(), Some(3));

    // Freshness: the loader's value, loaded once, then a hit.
    let db = Db::default();
    let user = readme_freshness(&cache, db.clone()).await.unwrap();
    assert_eq!(user, User { id: 42, org: 3 });
    assert_eq!(readme_freshness(&cache, db.clone()).await.unwrap(), user);
    assert_eq!(db.loads(), 1, "the second call is a hit");

    // Lock: the report loaded (the memory repository has the lock too); `lock = 10` is a
    // lifetime of 10 s and a wait of 20 s.
    assert_eq!(readme_lock(&cache).await.unwrap(), Report { day: 0 });
    let lock = impcache::Lock::new().lifetime(Duration::from_secs(10));
    assert_eq!(lock.wait_duration(), Duration::from_secs(20));
    assert_eq!(
        impcache::Lock::new().lifetime_duration(),
        Duration::from_secs(10)
    );

    // HTTP tags: the block's purges run on memory.
    let layer = readme_http_tags(&cache).await.unwrap();
    assert_eq!(layer.cache().make_key("x"), cache.make_key("x"));
}

/// The tags block, with a default cache (`profile_invalidate_all` uses it): in a test of its
/// own, the only one of this binary that installs one.
#[tokio::test]
async fn readme_tags_block_hides_the_three_entries() {
    let cache = Cache::new(MemoryCacheRepository::new());
    impcache::set_default_cache(cache.clone()).unwrap();
    let db = Db::default();
    let (orders, user) = readme_tags(&cache, db.clone(), Profile { id: 42 })
        .await
        .unwrap();
    assert_eq!(orders, [Order { id: 420 }, Order { id: 421 }]);
    assert_eq!(user, User { id: 42, org: 3 });
    assert_eq!(db.loads(), 2);
    // "the three entries: misses from now on"
    assert_eq!(cache.get::<Profile>("user:42:profile").await.unwrap(), None);
    assert_eq!(
        cache.get::<Vec<Order>>("user:42:orders").await.unwrap(),
        None
    );
    assert_eq!(cache.get::<User>("user:42").await.unwrap(), None);
}

/// The `#[cached]` key layout, `{key_prefix}:{version}:{module_path}::{fn}:{arg1}`, and the
/// pattern that drops a function's entries, on a memory cache of its own.
static KEYS_CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

#[impcache::cached(cache = KEYS_CACHE, expire = 60)]
async fn keyed(id: u64, name: &str) -> u64 {
    id + name.len() as u64
}

#[tokio::test]
async fn readme_cached_key_layout() {
    assert_eq!(keyed(42, "alice").await, 47);
    // The store runs in the background.
    let key = concat!(module_path!(), "::keyed:42:\"alice\"");
    let mut stored = None;
    for _ in 0..200 {
        stored = KEYS_CACHE.get::<u64>(key).await.unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stored, Some(47), "{}", KEYS_CACHE.make_key(key));
    let pattern = concat!(module_path!(), "::keyed:*");
    assert_eq!(KEYS_CACHE.delete_pattern(pattern).await.unwrap(), 1);
}

/// README "Repositories": DSN checks and builder refusals, made before anything is connected
/// (port 1: nothing listens there, and nothing is sent).
#[tokio::test]
async fn readme_repository_claims_without_connecting() {
    use impcache::RedisCacheRepository;

    let invalid = |built: impcache::Result<RedisCacheRepository>| match built {
        Err(error @ impcache::Error::InvalidDsn { .. }) => error.to_string(),
        other => panic!("not InvalidDsn: {other:?}"),
    };
    let base = "redis://127.0.0.1:1/0";
    // Accepted: redis-py's query parameters, its connection options (ignored).
    for ok in [
        "redis://127.0.0.1:1?db=3".to_owned(),
        format!("{base}?db=0"),
        format!("{base}?password=p&username=u"),
        format!("{base}?socket_timeout=5&max_connections=10&health_check_interval=30"),
        format!("{base}?protocol=3"),
    ] {
        if let Err(error) = RedisCacheRepository::new(&ok) {
            panic!("{ok}: {error}");
        }
    }
    // Refused at once, a typo included; the value of an unknown parameter never shows.
    let typo = invalid(RedisCacheRepository::new(&format!("{base}?passwd=hunter2")));
    assert!(!typo.contains("hunter2"), "{typo}");
    invalid(RedisCacheRepository::new(&format!("{base}?dB=3")));
    // The same value twice (the path and the query) must be the same.
    invalid(RedisCacheRepository::new(&format!("{base}?db=3")));
    invalid(RedisCacheRepository::new("rediss://127.0.0.1:1/0#insecure"));
    // `build` refuses a zero `connect_timeout`, `deadline` or largest value.
    invalid(
        RedisCacheRepository::builder(base)
            .connect_timeout(Duration::ZERO)
            .build(),
    );
    invalid(
        RedisCacheRepository::builder(base)
            .deadline(Duration::ZERO)
            .build(),
    );
    invalid(
        RedisCacheRepository::builder(base)
            .max_value_bytes(0)
            .build(),
    );
    // The default deadline: 500 ms per operation.
    let repository = RedisCacheRepository::new(base).unwrap();
    assert_eq!(repository.deadline(), Duration::from_millis(500));
    assert!(!repository.is_circuit_open());
    // The memory repository's capacity bound (`builder().max_capacity_bytes(n)`).
    let memory = MemoryCacheRepository::builder()
        .max_capacity_bytes(1024 * 1024)
        .build();
    let cache = Cache::new(memory.clone());
    cache.set("k", &1, 100).await.unwrap();
    assert_eq!(cache.get::<i64>("k").await.unwrap(), Some(1));
}

/// README "Repositories": "implement the object-safe `impcache::CacheRepository` trait (eight
/// methods over full keys and bytes)", and "Long sweeps": its `delete_pattern_with_progress`
/// has a default that calls `delete_pattern` and reports once, at the end.
#[derive(Debug, Clone, Default)]
struct EightMethods(MemoryCacheRepository);

impl impcache::CacheRepository for EightMethods {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        impcache::CacheRepository::set(&self.0, key, value, expiry)
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<bool>> {
        impcache::CacheRepository::set_nx(&self.0, key, value, expiry)
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, bytes::Bytes)],
        expiry: impcache::Expiry,
    ) -> impcache::BoxFuture<'a, impcache::Result<()>> {
        impcache::CacheRepository::set_many(&self.0, entries, expiry)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<Option<bytes::Bytes>>> {
        impcache::CacheRepository::get(&self.0, key)
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<Vec<Option<bytes::Bytes>>>> {
        impcache::CacheRepository::get_many(&self.0, keys)
    }

    fn delete<'a>(&'a self, key: &'a str) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        impcache::CacheRepository::delete(&self.0, key)
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        impcache::CacheRepository::delete_many(&self.0, keys)
    }

    fn delete_pattern<'a>(
        &'a self,
        pattern: &'a str,
    ) -> impcache::BoxFuture<'a, impcache::Result<u64>> {
        impcache::CacheRepository::delete_pattern(&self.0, pattern)
    }
}

#[tokio::test]
async fn readme_own_repository_keeps_compiling_and_reports_once() {
    let cache = Cache::new(EightMethods::default());
    cache
        .set_many([("session:1", 1), ("session:2", 2), ("other", 3)], 100)
        .await
        .unwrap();
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("session:*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (reports[0].matched, reports[0].removed, reports[0].batches),
        (2, 2, 1)
    );
    // The README's block over this repository.
    cache.set("session:3", &3, 100).await.unwrap();
    assert_eq!(readme_long_sweeps(&cache).await.unwrap(), 1);
    assert_eq!(cache.get::<i64>("other").await.unwrap(), Some(3));
}

/// README "Quickstart: `#[cached]`": "stores Ok(..)": the `T` of `Ok(T)` (the table: "`Ok(T)`
/// (stores `T`)"), and never an `Err`.
#[impcache::cached(cache = KEYS_CACHE, expire = 60)]
async fn fallible(id: u64) -> Result<u64, DbError> {
    if id == 0 {
        Err(DbError)
    } else {
        Ok(id * 2)
    }
}

#[tokio::test]
async fn readme_cached_stores_the_ok_value_only() {
    assert_eq!(fallible(21).await.unwrap(), 42);
    assert!(fallible(0).await.is_err());
    let key = concat!(module_path!(), "::fallible:21");
    let mut stored = None;
    for _ in 0..200 {
        stored = KEYS_CACHE.get_raw(key).await.unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stored.as_deref(), Some(&b"42"[..]));
    let err_key = concat!(module_path!(), "::fallible:0");
    assert_eq!(KEYS_CACHE.get_raw(err_key).await.unwrap(), None);
}
