//! `#[cached]` keys are injective: distinct argument values never share an entry (issue 12
//! item 8). Each function returns its arguments, so a shared key would hand one call another
//! call's value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use impcache::{cached, Cache, MemoryCacheRepository};

fn fresh() -> Cache {
    Cache::new(MemoryCacheRepository::new())
}

#[cached(cache = cache, expire = 60, skip(cache))]
async fn nested(cache: &Cache, value: Option<Option<u32>>) -> Option<Option<u32>> {
    value
}

#[tokio::test]
async fn some_none_and_none_are_two_entries() {
    let cache = fresh();
    assert_eq!(nested(&cache, None).await, None);
    assert_eq!(nested(&cache, Some(None)).await, Some(None));
    assert_eq!(nested(&cache, Some(Some(7))).await, Some(Some(7)));
    assert_eq!(nested(&cache, None).await, None);
    assert_eq!(nested(&cache, Some(None)).await, Some(None));
    // `None` returned is not cached (an `Option` return); the other two have their own keys.
    for key in ["cached_keys::nested:Some(null)", "cached_keys::nested:7"] {
        assert!(cache.get_raw(key).await.unwrap().is_some(), "{key}");
    }
}

#[cached(cache = cache, expire = 60, skip(cache))]
async fn float(cache: &Cache, value: f64) -> String {
    format!("{value}")
}

#[tokio::test]
async fn nan_and_infinities_are_three_entries() {
    let cache = fresh();
    for _ in 0..2 {
        assert_eq!(float(&cache, f64::NAN).await, "NaN");
        assert_eq!(float(&cache, f64::INFINITY).await, "inf");
        assert_eq!(float(&cache, f64::NEG_INFINITY).await, "-inf");
        assert_eq!(float(&cache, 1.5).await, "1.5");
    }
    for key in ["NaN", "Infinity", "-Infinity", "1.5"] {
        let key = format!("cached_keys::float:{key}");
        assert!(cache.get_raw(&key).await.unwrap().is_some(), "{key}");
    }
}

#[cached(cache = cache, expire = 60, key = "pair:{a}:{b}")]
async fn pair(cache: &Cache, a: &str, b: &str) -> String {
    format!("{a}|{b}")
}

#[tokio::test]
async fn template_strings_with_the_separator_do_not_collide() {
    let cache = fresh();
    for _ in 0..2 {
        assert_eq!(pair(&cache, "x:y", "z").await, "x:y|z");
        assert_eq!(pair(&cache, "x", "y:z").await, "x|y:z");
    }
    // Ordinary values keep the template's text; the ambiguous one is quoted.
    assert!(cache.get_raw("pair:x:y:z").await.unwrap().is_some());
    assert!(cache.get_raw(r#"pair:"x:y":z"#).await.unwrap().is_some());
}

#[cached(cache = cache, expire = 60, key = "search:{term}")]
async fn search(cache: &Cache, term: Option<&str>) -> String {
    format!("{term:?}")
}

#[tokio::test]
async fn a_template_option_of_the_string_null_is_not_none() {
    let cache = fresh();
    for _ in 0..2 {
        assert_eq!(search(&cache, None).await, "None");
        assert_eq!(search(&cache, Some("null")).await, r#"Some("null")"#);
        assert_eq!(search(&cache, Some("rust")).await, r#"Some("rust")"#);
    }
    assert!(cache.get_raw("search:rust").await.unwrap().is_some());
}

#[cached(cache = cache, expire = 60, skip(cache))]
async fn by_map(cache: &Cache, map: BTreeMap<u8, Option<Option<bool>>>) -> usize {
    map.values().filter(|v| v.is_some()).count()
}

#[tokio::test]
async fn nested_values_in_maps_are_told_apart() {
    let cache = fresh();
    for _ in 0..2 {
        assert_eq!(by_map(&cache, BTreeMap::from([(1, None)])).await, 0);
        assert_eq!(by_map(&cache, BTreeMap::from([(1, Some(None))])).await, 1);
    }
}

#[derive(serde::Serialize)]
enum Role {
    Admin,
}

#[cached(cache = cache, expire = 60, key = "w:{op}:{role}:{initial}")]
async fn written(cache: &Cache, op: Option<String>, role: Role, initial: char) -> u8 {
    let _ = (op, role, initial);
    1
}

/// In a `key` template, whatever serializes as a JSON string is written as the string: a
/// `Some` of a string, a unit enum variant, a `char`.
#[tokio::test]
async fn template_values_that_serialize_as_strings_are_written_unquoted() {
    let cache = fresh();
    assert_eq!(
        written(&cache, Some("read".to_owned()), Role::Admin, 'a').await,
        1
    );
    assert!(cache.get_raw("w:read:Admin:a").await.unwrap().is_some());
}

/// A constant `key` is a deliberate single entry, whatever the arguments (a handle, a cache):
/// still allowed; only a key that spells a Rust type (`key = "String"`, the `cached` crate's key
/// type) is refused at compile time (`ui/fail/cached_crate_key_type.rs`).
#[cached(cache = cache, expire = 60, key = "config")]
async fn config(cache: &Cache, generation: u32) -> u32 {
    let _ = cache;
    generation
}

#[tokio::test]
async fn a_constant_key_is_one_entry_for_every_call() {
    let cache = fresh();
    assert_eq!(config(&cache, 1).await, 1);
    assert_eq!(config(&cache, 2).await, 1, "the one entry answers");
    assert!(cache.get_raw("config").await.unwrap().is_some());
}
