//! `#[cached]` on the in-memory repository: hits and misses, key layout, Result/Option rules,
//! companions, methods, generics, concurrency, panics and failures, values of the wrong type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::LazyLock;
use std::time::Duration;

use impcache::{cached, Cache, MemoryCacheRepository};
use serde::{Deserialize, Serialize};

/// The default cache of this test binary (installed once).
fn default() -> &'static Cache {
    static CACHE: LazyLock<Cache> = LazyLock::new(|| {
        let cache = Cache::builder(MemoryCacheRepository::new())
            .key_prefix("app")
            .build();
        impcache::set_default_cache(cache.clone()).unwrap();
        cache
    });
    &CACHE
}

fn fresh() -> Cache {
    Cache::builder(MemoryCacheRepository::new())
        .key_prefix("t")
        .build()
}

static SQUARES: AtomicUsize = AtomicUsize::new(0);

/// Squares (documented).
#[cached(expire = 100)]
async fn square(x: u64) -> u64 {
    SQUARES.fetch_add(1, SeqCst);
    x * x
}

#[tokio::test]
async fn default_cache_hits_and_misses_and_key_layout() {
    let cache = default();
    assert_eq!(square(3).await, 9);
    assert_eq!(square(3).await, 9);
    assert_eq!(square(4).await, 16);
    assert_eq!(SQUARES.load(SeqCst), 2);
    let raw = cache.get_raw("cached::square:3").await.unwrap().unwrap();
    assert_eq!(&raw[..], b"9");
    assert_eq!(cache.make_key("cached::square:3"), "app:1:cached::square:3");

    assert!(square_invalidate(3).await.unwrap());
    assert!(!square_invalidate(3).await.unwrap());
    assert_eq!(square(3).await, 9);
    assert_eq!(SQUARES.load(SeqCst), 3);
    assert_eq!(square_uncached(3).await, 9);
    assert_eq!(SQUARES.load(SeqCst), 4);

    assert_eq!(cache.delete_pattern("cached::square:*").await.unwrap(), 2);
    assert_eq!(square(4).await, 16);
    assert_eq!(SQUARES.load(SeqCst), 5);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// An error type without serde.
#[derive(Debug)]
struct DbError;

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn load_user(cache: &Cache, id: u64, fail: bool) -> Result<User, DbError> {
    LOADS.fetch_add(1, SeqCst);
    if fail {
        return Err(DbError);
    }
    Ok(User {
        id,
        name: format!("user {id}"),
    })
}

#[tokio::test]
async fn result_caches_only_ok() {
    let cache = &fresh();
    assert!(load_user(cache, 1, true).await.is_err());
    assert!(load_user(cache, 1, true).await.is_err());
    assert_eq!(LOADS.load(SeqCst), 2);
    let user = load_user(cache, 1, false).await.unwrap();
    assert_eq!(load_user(cache, 1, false).await.unwrap(), user);
    assert_eq!(LOADS.load(SeqCst), 3);
    let raw = cache
        .get_raw("cached::load_user:1:false")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], br#"{"id":1,"name":"user 1"}"#);
    assert!(load_user_invalidate(cache, 1, false).await.unwrap());
}

static IO_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = Duration::from_millis(1500), skip(cache), name = "io")]
async fn io_alias(cache: &Cache, ok: bool) -> std::io::Result<String> {
    IO_CALLS.fetch_add(1, SeqCst);
    if ok {
        Ok("fine".to_owned())
    } else {
        Err(std::io::Error::other("boom"))
    }
}

#[tokio::test]
async fn io_result_alias_and_name() {
    let cache = &fresh();
    assert!(io_alias(cache, false).await.is_err());
    assert!(io_alias(cache, false).await.is_err());
    assert_eq!(io_alias(cache, true).await.unwrap(), "fine");
    assert_eq!(io_alias(cache, true).await.unwrap(), "fine");
    assert_eq!(IO_CALLS.load(SeqCst), 3);
    assert!(cache.get_raw("io:true").await.unwrap().is_some());
}

static FINDS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "find:{name}")]
async fn find(cache: &Cache, name: &str) -> Option<u32> {
    FINDS.fetch_add(1, SeqCst);
    (name == "alice").then_some(7)
}

static FINDS_NONE: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "find-none:{name}", cache_none = true)]
async fn find_none(cache: &Cache, name: &str) -> Option<u32> {
    FINDS_NONE.fetch_add(1, SeqCst);
    (name == "alice").then_some(7)
}

#[tokio::test]
async fn option_caches_only_some_unless_cache_none() {
    let cache = &fresh();
    assert_eq!(find(cache, "bob").await, None);
    assert_eq!(find(cache, "bob").await, None);
    assert_eq!(FINDS.load(SeqCst), 2);
    assert_eq!(find(cache, "alice").await, Some(7));
    assert_eq!(find(cache, "alice").await, Some(7));
    assert_eq!(FINDS.load(SeqCst), 3);
    // The template writes strings without quotes.
    assert_eq!(
        &cache.get_raw("find:alice").await.unwrap().unwrap()[..],
        b"7"
    );

    assert_eq!(find_none(cache, "bob").await, None);
    assert_eq!(find_none(cache, "bob").await, None);
    assert_eq!(FINDS_NONE.load(SeqCst), 1);
    assert_eq!(
        &cache.get_raw("find-none:bob").await.unwrap().unwrap()[..],
        b"null"
    );
    assert!(find_none_invalidate(cache, "bob").await.unwrap());
}

#[derive(Debug)]
struct UserRepo {
    cache: Cache,
    calls: AtomicUsize,
}

impl UserRepo {
    /// A method: `self` is not part of the key.
    #[cached(cache = self.cache, expire = 60, version = 2)]
    pub(crate) async fn get(&self, id: u64) -> User {
        self.calls.fetch_add(1, SeqCst);
        User {
            id,
            name: "m".into(),
        }
    }

    /// An associated function without `self`.
    #[cached(cache = cache, expire = 60, skip(cache))]
    async fn assoc(cache: &Cache, n: u8) -> u8 {
        n + 1
    }
}

#[tokio::test]
async fn methods_with_self_and_version() {
    let repo = UserRepo {
        cache: fresh(),
        calls: AtomicUsize::new(0),
    };
    assert_eq!(repo.get(5).await.id, 5);
    assert_eq!(repo.get(5).await.id, 5);
    assert_eq!(repo.calls.load(SeqCst), 1);
    let key = format!("{}::get:5", std::any::type_name::<UserRepo>());
    assert_eq!(key, "cached::UserRepo::get:5");
    assert!(repo
        .cache
        .with_version(2)
        .get_raw(&key)
        .await
        .unwrap()
        .is_some());
    assert!(repo.cache.get_raw(&key).await.unwrap().is_none());
    assert!(repo.get_invalidate(5).await.unwrap());
    assert_eq!(repo.get_uncached(5).await.id, 5);
    assert_eq!(repo.calls.load(SeqCst), 2);
    assert_eq!(UserRepo::assoc(&repo.cache, 1).await, 2);
    assert!(UserRepo::assoc_invalidate(&repo.cache, 1).await.unwrap());
}

static GENERIC_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn describe<T>(cache: &Cache, value: &T) -> String
where
    T: Serialize + std::fmt::Debug + Sync,
{
    GENERIC_CALLS.fetch_add(1, SeqCst);
    format!("{value:?}")
}

#[cached(cache = cache, expire = 60, skip(cache))]
async fn parse_as<T: serde::de::DeserializeOwned + Serialize + Default>(
    cache: &Cache,
    text: String,
) -> T {
    serde_json::from_str(&text).unwrap_or_default()
}

#[tokio::test]
async fn generic_functions() {
    let cache = &fresh();
    assert_eq!(describe(cache, &vec![1, 2]).await, "[1, 2]");
    assert_eq!(describe(cache, &vec![1, 2]).await, "[1, 2]");
    assert_eq!(describe(cache, &"x").await, "\"x\"");
    assert_eq!(GENERIC_CALLS.load(SeqCst), 2);
    assert!(cache
        .get_raw("cached::describe:[1,2]")
        .await
        .unwrap()
        .is_some());
    assert!(describe_invalidate(cache, &"x").await.unwrap());
    // Instantiations sharing a key: another type does not decode and is recomputed.
    assert_eq!(parse_as::<u8>(cache, "5".into()).await, 5);
    assert_eq!(
        parse_as::<Vec<u8>>(cache, "5".into()).await,
        Vec::<u8>::new()
    );
    assert_eq!(parse_as::<u8>(cache, "5".into()).await, 5);
}

static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Not `Clone`: waiters decode the leader's JSON.
#[derive(Debug, Serialize, Deserialize)]
struct NotClone(u64);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn slow(cache: &Cache, id: u64) -> NotClone {
    SLOW_CALLS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    NotClone(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_one_execution() {
    let cache = fresh();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { slow(&cache, 9).await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 9);
    }
    assert_eq!(SLOW_CALLS.load(SeqCst), 1);
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn panics_first(cache: &Cache, id: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(50)).await;
    if PANICS.fetch_add(1, SeqCst) == 0 {
        panic!("first call panics");
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_leader_does_not_poison() {
    let cache = fresh();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { panics_first(&cache, 3).await })
        })
        .collect();
    let mut ok = 0;
    let mut panicked = 0;
    for task in tasks {
        match task.await {
            Ok(v) => {
                assert_eq!(v, 3);
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_panic());
                panicked += 1;
            }
        }
    }
    assert_eq!((ok, panicked), (9, 1));
    // One panicking execution, then one new leader for the nine others.
    assert_eq!(PANICS.load(SeqCst), 2);
    assert_eq!(panics_first(&cache, 3).await, 3);
    assert_eq!(PANICS.load(SeqCst), 2);
}

static FAILS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn fails_first(cache: &Cache, id: u64) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    if FAILS.fetch_add(1, SeqCst) == 0 {
        return Err("first call fails".into());
    }
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_leader_does_not_fail_its_waiters() {
    let cache = fresh();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { fails_first(&cache, 3).await })
        })
        .collect();
    let results: Vec<_> = futures_join(tasks).await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert_eq!(results.iter().filter(|r| **r == Ok(3)).count(), 9);
    let executions = FAILS.load(SeqCst);
    assert_eq!(fails_first(&cache, 3).await, Ok(3));
    assert_eq!(FAILS.load(SeqCst), executions, "the value is cached now");
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

static TYPED: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, key = "typed:{id}")]
async fn typed(cache: &Cache, id: u64) -> User {
    TYPED.fetch_add(1, SeqCst);
    User {
        id,
        name: "new".into(),
    }
}

#[tokio::test]
async fn a_value_of_the_wrong_type_is_replaced() {
    let cache = &fresh();
    cache.set("typed:1", &"an old string", 60).await.unwrap();
    assert_eq!(typed(cache, 1).await.name, "new");
    assert_eq!(
        &cache.get_raw("typed:1").await.unwrap().unwrap()[..],
        br#"{"id":1,"name":"new"}"#
    );
    assert_eq!(typed(cache, 1).await.name, "new");
    assert_eq!(TYPED.load(SeqCst), 1);
}

#[cached(cache = cache, expire = 60, skip(cache))]
async fn patterns(cache: &Cache, (a, b): (u8, u8), _: u8, mut acc: Vec<u8>) -> Vec<u8> {
    acc.push(a + b);
    acc
}

#[tokio::test]
async fn argument_patterns_and_wildcards() {
    let cache = &fresh();
    assert_eq!(patterns(cache, (1, 2), 7, vec![0]).await, [0, 3]);
    assert!(cache
        .get_raw("cached::patterns:[1,2]:[0]")
        .await
        .unwrap()
        .is_some());
}

/// Arguments named like generated bindings are fine.
#[cached(cache = cache, expire = 60, skip(cache))]
async fn collide(cache: &Cache, key: u8, expire: u8, body: u8) -> u8 {
    key + expire + body
}

#[tokio::test]
async fn argument_names_do_not_collide() {
    let cache = &fresh();
    assert_eq!(collide(cache, 1, 2, 3).await, 6);
    assert!(cache
        .get_raw("cached::collide:1:2:3")
        .await
        .unwrap()
        .is_some());
}

static APP_CACHE: LazyLock<Cache> = LazyLock::new(fresh);
static STATIC_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = APP_CACHE, expire = 60)]
async fn with_static(s: String) -> Box<str> {
    STATIC_CALLS.fetch_add(1, SeqCst);
    s.into_boxed_str()
}

#[tokio::test]
async fn a_static_cache_and_a_string_key() {
    assert_eq!(&*with_static("a\"b".into()).await, "a\"b");
    assert_eq!(&*with_static("a\"b".into()).await, "a\"b");
    assert_eq!(STATIC_CALLS.load(SeqCst), 1);
    assert!(APP_CACHE
        .get_raw(r#"cached::with_static:"a\"b""#)
        .await
        .unwrap()
        .is_some());
}

static DEEP_CALLS: AtomicUsize = AtomicUsize::new(0);

/// A value nested `depth` levels deep (`[[[…]]]`).
#[cached(expire = 100)]
async fn deep_value(depth: usize) -> serde_json::Value {
    DEEP_CALLS.fetch_add(1, SeqCst);
    (0..depth).fold(serde_json::Value::Null, |inner, _| {
        serde_json::Value::Array(vec![inner])
    })
}

/// Issue 12 item 12: a value as deep as orjson writes (serde_json alone reads 127 levels) is a
/// hit, not a decode failure that recomputes it on every call.
#[tokio::test]
async fn values_nested_200_levels_deep_are_hits() {
    default();
    let first = deep_value(200).await;
    let second = deep_value(200).await;
    assert_eq!(first, second);
    assert_eq!(DEEP_CALLS.load(SeqCst), 1, "the second call was not a hit");
}

/// An axum-style shared state holding the cache, which the body also uses.
#[derive(Debug)]
struct AppState {
    cache: Cache,
    greeting: String,
    calls: AtomicUsize,
}

/// The cache is a field of an owned argument that the body uses too (`state` moves into the
/// body; the cache must not stay borrowed from it).
#[cached(cache = state.cache, expire = 60, skip(state))]
async fn greet(state: std::sync::Arc<AppState>, id: u64) -> String {
    state.calls.fetch_add(1, SeqCst);
    format!("{} {id}", state.greeting)
}

/// The same with the cache itself an owned argument the body uses.
#[cached(cache = cache, expire = 60, skip(cache))]
async fn owned_cache(cache: Cache, n: u64) -> u64 {
    let _ = cache.key_prefix();
    n * 3
}

#[tokio::test]
async fn the_cache_can_live_in_an_argument_the_body_uses() {
    let state = std::sync::Arc::new(AppState {
        cache: fresh(),
        greeting: "hello".to_owned(),
        calls: AtomicUsize::new(0),
    });
    assert_eq!(greet(state.clone(), 1).await, "hello 1");
    assert_eq!(greet(state.clone(), 1).await, "hello 1");
    assert_eq!(state.calls.load(SeqCst), 1);
    assert_eq!(owned_cache(fresh(), 2).await, 6);
}

/// A service whose cache is one of its fields, read through `&mut self` and `self: Arc<Self>`
/// methods (`cache = self.cache`): the receiver moves into the body, so the macro takes its own
/// handle on the cache (a `&self` receiver, `Copy`, needs none).
struct Counter {
    cache: Cache,
    calls: usize,
    shared_calls: AtomicUsize,
}

impl Counter {
    #[cached(cache = self.cache, expire = 60)]
    async fn bump(&mut self, id: u64) -> u64 {
        self.calls += 1;
        id + 1
    }

    #[cached(cache = self.cache, expire = 60, stale_if_error = 60)]
    async fn shared(self: std::sync::Arc<Self>, id: u64) -> u64 {
        self.shared_calls.fetch_add(1, SeqCst);
        id + 2
    }
}

#[tokio::test]
async fn a_cache_in_a_field_of_a_moved_receiver() {
    let mut counter = Counter {
        cache: Cache::new(MemoryCacheRepository::new()),
        calls: 0,
        shared_calls: AtomicUsize::new(0),
    };
    assert_eq!(counter.bump(1).await, 2);
    assert_eq!(counter.bump(1).await, 2);
    assert_eq!(counter.calls, 1);
    let counter = std::sync::Arc::new(counter);
    assert_eq!(counter.clone().shared(1).await, 3);
    assert_eq!(counter.clone().shared(1).await, 3);
    assert_eq!(counter.shared_calls.load(SeqCst), 1);
}

static NESTED_RUNS: AtomicUsize = AtomicUsize::new(0);
static NESTED_CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

#[cached(cache = NESTED_CACHE, expire = 60, cache_none = true)]
async fn nested(id: u32) -> Option<Option<u32>> {
    NESTED_RUNS.fetch_add(1, SeqCst);
    match id {
        0 => None,
        1 => Some(None),
        n => Some(Some(n)),
    }
}

#[cached(cache = NESTED_CACHE, expire = 60, cache_none = true, stale_if_error = 60)]
async fn unit(id: u32) -> Option<()> {
    NESTED_RUNS.fetch_add(1, SeqCst);
    (id > 0).then_some(())
}

/// `cache_none` stores `None` as `null`: a `Some` whose value JSON also writes as `null`
/// (`Some(None)`, `Some(())`) would read back as `None`, so it is returned and not stored, on
/// the plain path and with a freshness option; every other value is cached.
#[tokio::test]
async fn cache_none_never_turns_a_some_into_none() {
    for _ in 0..2 {
        assert_eq!(nested(0).await, None);
        assert_eq!(nested(1).await, Some(None));
        assert_eq!(nested(2).await, Some(Some(2)));
        assert_eq!(unit(0).await, None);
        assert_eq!(unit(1).await, Some(()));
    }
    // `None` and `Some(Some(2))` ran once each (cached), `Some(None)` twice; `unit`'s `None`
    // once, its `Some(())` twice.
    assert_eq!(NESTED_RUNS.load(SeqCst), 1 + 2 + 1 + 1 + 2);
}

static TITLES: LazyLock<Cache> = LazyLock::new(fresh);

struct Author;
struct Post;

impl Author {
    #[cached(cache = TITLES, expire = 60)]
    async fn title(id: u64) -> String {
        format!("author {id}")
    }
}

impl Post {
    #[cached(cache = TITLES, expire = 60)]
    async fn title(id: u64) -> String {
        format!("post {id}")
    }
}

/// Two functions of one name nested in two others.
async fn nested_in_first(id: u64) -> u64 {
    #[cached(cache = TITLES, expire = 60)]
    async fn helper(id: u64) -> u64 {
        id
    }
    helper(id).await
}

async fn nested_in_second(id: u64) -> u64 {
    #[cached(cache = TITLES, expire = 60)]
    async fn helper(id: u64) -> u64 {
        id + 100
    }
    helper(id).await
}

/// Associated functions (no receiver) of two types, and nested functions of one name, have
/// keys of their own (`{type}::{fn}` as methods, `{enclosing fn}::{fn}`): they shared one
/// entry, and `Post::title(1)` answered "author 1". A free function's key is unchanged.
#[tokio::test]
async fn associated_and_nested_functions_of_one_name_do_not_share_entries() {
    assert_eq!(Author::title(1).await, "author 1");
    assert_eq!(Post::title(1).await, "post 1");
    assert_eq!(Author::title(1).await, "author 1");
    assert_eq!(nested_in_first(1).await, 1);
    assert_eq!(nested_in_second(1).await, 101);
    for key in [
        "cached::Author::title:1",
        "cached::Post::title:1",
        "cached::nested_in_first::helper:1",
        "cached::nested_in_second::helper:1",
    ] {
        assert!(TITLES.get_raw(key).await.unwrap().is_some(), "{key}");
    }
    Author::title_invalidate_all().await.unwrap();
    assert!(TITLES
        .get_raw("cached::Author::title:1")
        .await
        .unwrap()
        .is_none());
    assert!(TITLES
        .get_raw("cached::Post::title:1")
        .await
        .unwrap()
        .is_some());
}

mod elsewhere {
    pub(crate) struct Shelved;
}

mod shelved_impl {
    use super::*;

    impl super::elsewhere::Shelved {
        #[cached(cache = TITLES, expire = 60)]
        pub(crate) async fn title(id: u64) -> String {
            format!("shelved {id}")
        }
    }
}

impl dyn Catalogue {
    #[cached(cache = TITLES, expire = 60)]
    async fn title(id: u64) -> String {
        format!("catalogue {id}")
    }
}

/// An associated function is keyed `{type_name::<Self>()}::{fn}` wherever its impl is: it was
/// `cached::shelved_impl::<impl cached::elsewhere::Shelved>::title` for an impl outside its
/// type's module, and `<dyn cached::Catalogue>::title` on a trait object (found by a probe).
#[tokio::test]
async fn an_associated_function_is_keyed_by_its_type_wherever_its_impl_is() {
    assert_eq!(elsewhere::Shelved::title(1).await, "shelved 1");
    assert_eq!(<dyn Catalogue>::title(1).await, "catalogue 1");
    for ty in [
        std::any::type_name::<elsewhere::Shelved>(),
        std::any::type_name::<dyn Catalogue>(),
    ] {
        let key = format!("{ty}::title:1");
        assert!(TITLES.get_raw(&key).await.unwrap().is_some(), "{key}");
    }
    assert!(TITLES
        .get_raw("cached::elsewhere::Shelved::title:1")
        .await
        .unwrap()
        .is_some());
    elsewhere::Shelved::title_invalidate_all().await.unwrap();
    assert!(TITLES
        .get_raw("cached::elsewhere::Shelved::title:1")
        .await
        .unwrap()
        .is_none());
}

#[cached(cache = TITLES, expire = 60)]
async fn r#type(r#match: u64) -> u64 {
    r#match
}

mod edition_2021 {
    use super::*;

    // `gen`, a keyword from edition 2024, where `cargo fix --edition` spells it `r#gen`.
    #[cached(cache = TITLES, expire = 60)]
    pub(crate) async fn gen(id: u64) -> u64 {
        id
    }
}

mod edition_2024 {
    use super::*;

    #[cached(cache = TITLES, expire = 60)]
    pub(crate) async fn r#gen(id: u64) -> u64 {
        id
    }
}

/// A function named with a raw identifier is keyed by its name without `r#`, as
/// `{module_path}::{fn}` says (its keys were `cached::r#type:7`): `gen` and `r#gen` are one
/// identifier, whose keys do not change when `cargo fix --edition 2024` respells it.
#[tokio::test]
async fn a_raw_identifiers_key_is_its_name_without_r_hash() {
    assert_eq!(r#type(7).await, 7);
    assert_eq!(edition_2021::gen(1).await, 1);
    assert_eq!(edition_2024::gen(1).await, 1);
    for key in [
        "cached::type:7",
        "cached::edition_2021::gen:1",
        "cached::edition_2024::gen:1",
    ] {
        assert!(TITLES.get_raw(key).await.unwrap().is_some(), "{key}");
    }
    type_invalidate_all().await.unwrap();
    assert!(TITLES.get_raw("cached::type:7").await.unwrap().is_none());
}

static DECADES: AtomicUsize = AtomicUsize::new(0);

/// 80 years written as a product of plain numbers: the macro types it as a `u64` (as an `i32`,
/// the product overflowed: a panic on every call in a debug build).
#[cached(cache = cache, expire = 60 * 60 * 24 * 365 * 80, skip(cache))]
async fn for_decades(cache: &Cache, x: u64) -> u64 {
    DECADES.fetch_add(1, SeqCst);
    x
}

#[tokio::test]
async fn seconds_written_as_a_product_of_plain_numbers_are_a_u64() {
    let cache = &fresh();
    assert_eq!(for_decades(cache, 7).await, 7);
    assert_eq!(for_decades(cache, 7).await, 7);
    assert_eq!(DECADES.load(SeqCst), 1);
}

static SHELVES: LazyLock<Cache> = LazyLock::new(fresh);
static SHELF_RUNS: AtomicUsize = AtomicUsize::new(0);

struct Library;

trait Books {
    #[cached(cache = SHELVES, expire = 60)]
    async fn load(&self, id: u64) -> String {
        format!("book {id}")
    }
}

trait Films {
    #[cached(cache = SHELVES, expire = 60)]
    async fn load(&self, id: u64) -> String {
        format!("film {id}")
    }
}

trait Shelf<T> {
    #[cached(cache = SHELVES, expire = 60, invalidate_all)]
    async fn load(&self, id: u64) -> String {
        SHELF_RUNS.fetch_add(1, SeqCst);
        format!("shelf {} {id}", std::any::type_name::<T>())
    }
}

impl Library {
    #[cached(cache = SHELVES, expire = 60)]
    async fn load(&self, id: u64) -> String {
        format!("library {id}")
    }
}

impl Books for Library {}
impl Films for Library {}

trait Catalogue: Send + Sync {}
impl Catalogue for Library {}

impl dyn Catalogue {
    #[cached(cache = SHELVES, expire = 60)]
    async fn load(&self, id: u64) -> String {
        format!("catalogue {id}")
    }
}
impl Shelf<u8> for Library {}
impl Shelf<u16> for Library {}

async fn stored(key: &str) -> bool {
    SHELVES.get_raw(key).await.unwrap().is_some()
}

/// Two traits' default methods of one name, implemented by one type, keyed both as
/// `{type}::load`: `Films::load` answered with `Books::load`'s value, and either's
/// `_invalidate_all` swept the other's entries. A trait's default method is now keyed as
/// `<{type} as {trait}>::{fn}`; an inherent method keeps `{type}::{fn}`.
#[tokio::test]
async fn two_traits_default_methods_of_one_name_do_not_share_entries() {
    for _ in 0..2 {
        assert_eq!(Books::load(&Library, 1).await, "book 1");
        assert_eq!(Films::load(&Library, 1).await, "film 1");
        assert_eq!(Library.load(1).await, "library 1");
        assert_eq!(Shelf::<u8>::load(&Library, 1).await, "shelf u8 1");
        assert_eq!(Shelf::<u16>::load(&Library, 1).await, "shelf u16 1");
    }
    assert_eq!(SHELF_RUNS.load(SeqCst), 2);
    let books = "<cached::Library as cached::Books>::load:1";
    let films = "<cached::Library as cached::Films>::load:1";
    let inherent = "cached::Library::load:1";
    for key in [books, films, inherent] {
        assert!(stored(key).await, "{key}");
    }
    assert!(stored("<cached::Library as cached::Shelf<u8>>::load:1").await);

    // Each companion uses its own trait's keys.
    assert!(Books::load_invalidate(&Library, 1).await.unwrap());
    assert!(!stored(books).await);
    assert!(stored(films).await && stored(inherent).await);
    assert_eq!(Books::load(&Library, 1).await, "book 1");
    Films::load_invalidate_all(&Library).await.unwrap();
    assert!(!stored(films).await);
    assert!(stored(books).await && stored(inherent).await);
    Books::load_invalidate_all(&Library).await.unwrap();
    assert!(!stored(books).await && stored(inherent).await);
    // A tagged one: the function's tag is its trait's too.
    Shelf::<u8>::load_invalidate_all(&Library).await.unwrap();
    assert_eq!(Shelf::<u16>::load(&Library, 1).await, "shelf u16 1");
    assert_eq!(SHELF_RUNS.load(SeqCst), 2);
    assert_eq!(Shelf::<u8>::load(&Library, 1).await, "shelf u8 1");
    assert_eq!(SHELF_RUNS.load(SeqCst), 3);
}

/// An inherent method of a trait object (`impl dyn Catalogue`) keeps `{type}::{fn}`, its
/// type being `dyn cached::Catalogue`: its marker's container, `<dyn cached::Catalogue>`, starts
/// with `<` as a trait's default method's does, and was taken for one (the key had changed to
/// `<dyn cached::Catalogue>::load:1`; found by a probe).
#[tokio::test]
async fn an_inherent_method_of_a_trait_object_keeps_its_key() {
    let catalogue: &dyn Catalogue = &Library;
    assert_eq!(catalogue.load(3).await, "catalogue 3");
    assert!(stored("dyn cached::Catalogue::load:3").await);
}

static DEEP: LazyLock<Cache> = LazyLock::new(fresh);

/// A recursion over smaller arguments, cold: each level is a miss whose body awaits the next.
#[cached(cache = DEEP, expire = 60)]
async fn deep(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        Box::pin(deep(n - 1)).await + 1
    }
}

/// The call of the next level, for a body that must be `Send`: `Box::pin(deep_fresh(n - 1))` in
/// the body itself hits rustc's auto-trait cycle ("cannot satisfy `impl Future<Output = u64>:
/// Send`").
fn deep_fresh_boxed(n: u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> {
    Box::pin(deep_fresh(n))
}

/// The same with a freshness option: its body runs in a spawned task.
#[cached(cache = DEEP, expire = 60, stale_if_error = 60)]
async fn deep_fresh(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        deep_fresh_boxed(n - 1).await + 1
    }
}

/// 200 levels of a cold recursion fit a 2 MiB stack (a test thread's, a tokio worker's), in a
/// debug build too: each level's miss held 47 KiB of it in a debug build (the 41st overflowed:
/// SIGABRT), since 5.4 KiB (330 levels fit). With a freshness option each level's body runs in a
/// task of its own.
#[test]
fn a_cold_recursion_200_levels_deep_fits_a_2_mib_stack() {
    let run = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            assert_eq!(rt.block_on(deep(200)), 200);
            assert_eq!(rt.block_on(deep_fresh(200)), 200);
            // Hits now, each level answered by its first `GET`.
            assert_eq!(rt.block_on(deep(200)), 200);
            assert_eq!(rt.block_on(deep_fresh(200)), 200);
        })
        .unwrap();
    assert!(run.join().is_ok());
}

/// Functions a `macro_rules!` writes, its caller naming the arguments (`$arg:ident`) of types
/// the macro writes (`$t:ty`, `$t:ident`, a type of its own body), read into the default key, a
/// key template and a tag template: they did not compile, the argument (and the key builder)
/// looked up where its type was written (found by a probe).
mod written_by_a_macro {
    use super::*;

    macro_rules! cached_fns {
        ($arg:ident: $t:ty, $u:ident) => {
            #[cached(cache = cache, expire = 60, skip(cache))]
            pub(super) async fn by_default(cache: &Cache, $arg: $t) -> u64 {
                $arg + 1
            }

            #[cached(cache = cache, expire = 60, key = "t:{n}", tags = ["g:{n}"])]
            pub(super) async fn templated(cache: &Cache, $arg: $u) -> u64 {
                $arg + 2
            }

            #[cached(cache = cache, expire = 60, skip(cache))]
            pub(super) async fn own_type(cache: &Cache, $arg: u64) -> u64 {
                $arg + 3
            }
        };
    }

    cached_fns!(n: u64, u64);

    /// An attribute forwarded whole (`$(#[$m:meta])*`), with a cache and a version naming
    /// `Self`: "cannot find value `__impcache_cache`" (and `__impcache_version`), the expansion's
    /// locals named with the tokens' resolution (found by a probe).
    macro_rules! forwarded {
        ($(#[$m:meta])* $name:ident) => {
            $(#[$m])*
            pub(super) async fn $name(id: u64) -> u64 {
                id + 4
            }
        };
    }

    pub(super) static FORWARDED: LazyLock<Cache> = LazyLock::new(fresh);

    pub(super) struct Versioned;

    impl Versioned {
        const VERSION: u32 = 9;

        forwarded!(
            #[cached(cache = FORWARDED, expire = 60, version = Self::VERSION)]
            load
        );
    }

    #[tokio::test]
    async fn their_arguments_are_read_into_keys_and_tags() {
        let cache = &fresh();
        assert_eq!(by_default(cache, 1).await, 2);
        assert_eq!(templated(cache, 1).await, 3);
        assert_eq!(own_type(cache, 1).await, 4);
        for (key, value) in [
            ("cached::written_by_a_macro::by_default:1", 2),
            ("t:1", 3),
            ("cached::written_by_a_macro::own_type:1", 4),
        ] {
            assert_eq!(cache.get::<u64>(key).await.unwrap(), Some(value), "{key}");
        }
        cache.invalidate_tag("g:1").await.unwrap();
        assert_eq!(cache.get::<u64>("t:1").await.unwrap(), None);
        assert_eq!(Versioned::load(1).await, 5);
        let key = "cached::written_by_a_macro::Versioned::load:1";
        let at_9 = FORWARDED.with_version(9);
        assert_eq!(at_9.get::<u64>(key).await.unwrap(), Some(5));
    }
}

/// `version = Self::VERSION`, in a plain and a generic impl, with and without a freshness
/// option: no `static` can name `Self`, where the version was kept (found by a probe).
mod version_of_self {
    use super::*;

    pub(super) struct Plain;

    impl Plain {
        const VERSION: u32 = 7;

        #[cached(cache = cache, expire = 60, skip(cache), version = Self::VERSION)]
        pub(super) async fn load(cache: &Cache, id: u64) -> u64 {
            id + 1
        }

        #[cached(
            cache = cache,
            expire = 60,
            skip(cache),
            version = Self::VERSION,
            stale_while_revalidate = 60
        )]
        pub(super) async fn fresh(cache: &Cache, id: u64) -> u64 {
            id + 2
        }
    }

    pub(super) struct Generic<T>(std::marker::PhantomData<T>);

    impl<T: Send + Sync + 'static> Generic<T> {
        const VERSION: &'static str = "g";

        #[cached(cache = cache, expire = 60, skip(cache), version = Self::VERSION)]
        pub(super) async fn load(cache: &Cache, id: u64) -> u64 {
            id + 3
        }
    }

    #[tokio::test]
    async fn keys_carry_the_version() {
        let cache = &fresh();
        assert_eq!(Plain::load(cache, 1).await, 2);
        assert_eq!(Plain::fresh(cache, 1).await, 3);
        assert_eq!(Generic::<u8>::load(cache, 1).await, 4);
        let at = |version: &str| cache.with_version(version.to_owned());
        let key = "cached::version_of_self::Plain::load:1";
        assert_eq!(at("7").get::<u64>(key).await.unwrap(), Some(2));
        assert!(Plain::load_invalidate(cache, 1).await.unwrap());
        assert_eq!(at("7").get::<u64>(key).await.unwrap(), None);
        // The generic impl's entry, under version `g`.
        assert_eq!(at("g").delete_pattern("*Generic*load:1").await.unwrap(), 1);
    }
}

static SHORT_KEYS: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder(MemoryCacheRepository::new())
        .max_key_bytes(40)
        .build()
});
static LONG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = SHORT_KEYS, expire = 60)]
async fn slow_echo(text: String) -> String {
    LONG_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    text
}

/// A key the cache refuses (over its key limit) runs the body uncached and without the single
/// flight, as `get_or_set` runs its loader: two concurrent calls, two runs (they joined one
/// flight under that key, and a call could take the other's answer; found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_the_limit_runs_each_call_on_its_own() {
    let long = "x".repeat(100);
    let (first, second) = tokio::join!(slow_echo(long.clone()), slow_echo(long.clone()));
    assert_eq!((first, second), (long.clone(), long));
    assert_eq!(LONG_RUNS.load(SeqCst), 2);
}

static LOCK_KEY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = SHORT_KEYS, expire = 60, key = "{key}")]
async fn own_number(key: String, caller: u32) -> u32 {
    LOCK_KEY_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller
}

/// A key the cache reads but does not write (one starting `__lock:`, made at run time by the
/// template): each call runs its body, without the single flight (20 callers ran 1 body and 19
/// were handed another caller's answer; found by a regression hunt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_cache_does_not_write_runs_each_call_on_its_own() {
    let calls = (0..20).map(|caller| own_number("__lock:p".to_owned(), caller));
    let answers = all_at_once(calls).await;
    assert_eq!(answers, (0..20).collect::<Vec<u32>>());
    assert_eq!(LOCK_KEY_RUNS.load(SeqCst), 20);
}

/// The answers of `calls`, run at once, in order.
async fn all_at_once<F: std::future::Future<Output = u32> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<u32> {
    let tasks: Vec<_> = calls.map(tokio::spawn).collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}
