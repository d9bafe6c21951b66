//! `#[cached]` classifies the return type by the type system, not by its spelling: aliases of
//! `Result` and `Option` behave as `Result` and `Option` (issue 12 item 7), and `returns = "..."`
//! chooses explicitly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use impcache::{cached, Cache, MemoryCacheRepository};
use serde::{Deserialize, Serialize};

fn fresh() -> Cache {
    Cache::builder(MemoryCacheRepository::new())
        .key_prefix("t")
        .build()
}

/// An application error that is `Serialize`, as a user who followed rustc's advice made it:
/// `#[cached]` must still never cache it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct AppError(String);

type AppResult<T> = Result<T, AppError>;

/// An error without serde behind an alias: compiles only if the alias is seen as a `Result`.
#[derive(Debug)]
struct DbError;

type DbResult<T> = Result<T, DbError>;

type Maybe<T> = Option<T>;

static ALIAS_RESULT: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn alias_result(cache: &Cache, id: u64, fail: bool) -> AppResult<u64> {
    ALIAS_RESULT.fetch_add(1, SeqCst);
    if fail {
        Err(AppError(format!("no {id}")))
    } else {
        Ok(id * 10)
    }
}

#[tokio::test]
async fn an_alias_of_result_never_caches_the_err() {
    let cache = &fresh();
    assert_eq!(
        alias_result(cache, 1, true).await,
        Err(AppError("no 1".to_owned()))
    );
    assert_eq!(
        alias_result(cache, 1, true).await,
        Err(AppError("no 1".to_owned()))
    );
    assert_eq!(ALIAS_RESULT.load(SeqCst), 2, "the Err was cached");
    assert!(cache
        .get_raw("cached_aliases::alias_result:1:true")
        .await
        .unwrap()
        .is_none());
    assert_eq!(alias_result(cache, 1, false).await, Ok(10));
    assert_eq!(alias_result(cache, 1, false).await, Ok(10));
    assert_eq!(ALIAS_RESULT.load(SeqCst), 3);
    // `T` is stored, not the `Result`.
    let raw = cache
        .get_raw("cached_aliases::alias_result:1:false")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], b"10");
}

static DB_RESULT: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn alias_result_without_serde(cache: &Cache, id: u64) -> DbResult<String> {
    DB_RESULT.fetch_add(1, SeqCst);
    if id == 0 {
        Err(DbError)
    } else {
        Ok(format!("row {id}"))
    }
}

#[tokio::test]
async fn an_alias_of_result_whose_error_has_no_serde() {
    let cache = &fresh();
    assert!(alias_result_without_serde(cache, 0).await.is_err());
    assert!(alias_result_without_serde(cache, 0).await.is_err());
    assert_eq!(alias_result_without_serde(cache, 2).await.unwrap(), "row 2");
    assert_eq!(alias_result_without_serde(cache, 2).await.unwrap(), "row 2");
    assert_eq!(DB_RESULT.load(SeqCst), 3);
}

static MAYBE: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache))]
async fn alias_option(cache: &Cache, id: u64) -> Maybe<u64> {
    MAYBE.fetch_add(1, SeqCst);
    id.is_multiple_of(2).then_some(id)
}

static MAYBE_NONE: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = cache, expire = 60, skip(cache), cache_none = true)]
async fn alias_option_cache_none(cache: &Cache, id: u64) -> Maybe<u64> {
    MAYBE_NONE.fetch_add(1, SeqCst);
    id.is_multiple_of(2).then_some(id)
}

#[tokio::test]
async fn an_alias_of_option_caches_none_only_with_cache_none() {
    let cache = &fresh();
    assert_eq!(alias_option(cache, 1).await, None);
    assert_eq!(alias_option(cache, 1).await, None);
    assert_eq!(MAYBE.load(SeqCst), 2, "the None was cached");
    assert_eq!(alias_option(cache, 2).await, Some(2));
    assert_eq!(alias_option(cache, 2).await, Some(2));
    assert_eq!(MAYBE.load(SeqCst), 3);
    let raw = cache
        .get_raw("cached_aliases::alias_option:2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], b"2");

    assert_eq!(alias_option_cache_none(cache, 1).await, None);
    assert_eq!(alias_option_cache_none(cache, 1).await, None);
    assert_eq!(MAYBE_NONE.load(SeqCst), 1);
    let raw = cache
        .get_raw("cached_aliases::alias_option_cache_none:1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], b"null");
}

static WHOLE: AtomicUsize = AtomicUsize::new(0);

/// `returns = "value"` caches the whole `Result`, `Err` included (negative caching, opt-in).
#[cached(cache = cache, expire = 60, skip(cache), returns = "value")]
async fn whole_result(cache: &Cache, id: u64) -> AppResult<u64> {
    WHOLE.fetch_add(1, SeqCst);
    Err(AppError(format!("gone {id}")))
}

static EXPLICIT: AtomicUsize = AtomicUsize::new(0);

/// `returns = "result"` states what the type system finds anyway.
#[cached(cache = cache, expire = 60, skip(cache), returns = "result")]
async fn explicit_result(cache: &Cache, id: u64) -> AppResult<u64> {
    EXPLICIT.fetch_add(1, SeqCst);
    if id == 0 {
        Err(AppError("zero".to_owned()))
    } else {
        Ok(id)
    }
}

#[tokio::test]
async fn returns_chooses_what_is_cached() {
    let cache = &fresh();
    assert!(whole_result(cache, 3).await.is_err());
    assert_eq!(
        whole_result(cache, 3).await,
        Err(AppError("gone 3".to_owned()))
    );
    assert_eq!(WHOLE.load(SeqCst), 1);
    let raw = cache
        .get_raw("cached_aliases::whole_result:3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], br#"{"Err":"gone 3"}"#);

    assert!(explicit_result(cache, 0).await.is_err());
    assert!(explicit_result(cache, 0).await.is_err());
    assert_eq!(explicit_result(cache, 5).await, Ok(5));
    assert_eq!(explicit_result(cache, 5).await, Ok(5));
    assert_eq!(EXPLICIT.load(SeqCst), 3);
}

/// A generic return type is not a `Result` to the type system: it is cached whole.
#[cached(cache = cache, expire = 60, skip(cache))]
async fn generic_value<T>(cache: &Cache, value: T) -> T
where
    T: Serialize + serde::de::DeserializeOwned + Send,
{
    value
}

#[tokio::test]
async fn a_generic_return_type_is_cached_whole() {
    let cache = &fresh();
    let err: Result<u8, String> = Err("e".to_owned());
    assert_eq!(generic_value(cache, err.clone()).await, err);
    let raw = cache
        .get_raw(r#"cached_aliases::generic_value:{"Err":"e"}"#)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], br#"{"Err":"e"}"#);
}
