//! A function that compiles without `#[cached]` compiles with it, and the expansion adds no lint
//! (rustc's or clippy's, pedantic included): bodies that rely on the return type for a coercion
//! (a boxed error or slice, in a `return` or in the tail), on the plain path and on the paths
//! that spawn the body (a freshness option, tags); arguments under `#[cfg]` or `#[cfg_attr]`;
//! `#[expect(..)]` on an argument or the function, also under `#[cfg_attr]`.
#![deny(warnings, clippy::all, clippy::pedantic)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;
use std::time::Duration;

use impcache::{cached, Cache, MemoryCacheRepository};
use serde::{Deserialize, Serialize};

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- coercions to the return type

#[cached(cache = CACHE, expire = 60)]
async fn early_return(id: u64) -> Result<u64, BoxError> {
    if id == 0 {
        return Err(Box::new(std::io::Error::other("zero")));
    }
    Ok(id)
}

#[cached(cache = CACHE, expire = 60)]
async fn tail(id: u64) -> Result<u64, BoxError> {
    if id == 0 {
        Err(Box::new(std::io::Error::other("zero")))
    } else {
        Ok(id)
    }
}

#[cached(cache = CACHE, expire = 60)]
async fn slice(id: u8) -> Box<[u8]> {
    Box::new([id, id])
}

#[cached(cache = CACHE, expire = 60, stale_if_error = 60)]
async fn fresh_early_return(id: u64) -> Result<u64, BoxError> {
    if id == 0 {
        return Err(Box::new(std::io::Error::other("zero")));
    }
    Ok(id)
}

#[cached(cache = CACHE, expire = 60, tags = ["id:{id}"])]
async fn tagged_tail(id: u64) -> Result<u64, BoxError> {
    if id == 0 {
        Err(Box::new(std::io::Error::other("zero")))
    } else {
        Ok(id)
    }
}

#[cached(cache = CACHE, expire = 60, tags = ["id:{id}"])]
async fn tagged_slice(id: u8) -> Box<[u8]> {
    Box::new([id, id])
}

#[derive(Serialize, Deserialize)]
struct Item(u64);

impl Item {
    /// `Self` in the return type, on the plain path and on a spawned one.
    #[cached(cache = CACHE, expire = 60)]
    async fn load(id: u64) -> Result<Self, BoxError> {
        if id == 0 {
            return Err(Box::new(std::io::Error::other("zero")));
        }
        Ok(Item(id))
    }

    #[cached(cache = CACHE, expire = 60, stale_if_error = 60)]
    async fn fresh_load(id: u64) -> Result<Self, BoxError> {
        if id == 0 {
            Err(Box::new(std::io::Error::other("zero")))
        } else {
            Ok(Item(id))
        }
    }
}

/// A generic parameter in the return type.
#[cached(cache = CACHE, expire = 60)]
async fn generic<T>(value: T) -> Result<T, BoxError>
where
    T: Serialize + serde::de::DeserializeOwned + Send + PartialEq + Default,
{
    if value == T::default() {
        return Err(Box::new(std::io::Error::other("default")));
    }
    Ok(value)
}

type Out = u32;

mod errors {
    #[derive(Debug)]
    pub(crate) struct Error;
}

/// The body declares an item of the return type's name: the return type still means the
/// signature's (found by a probe: the expansion named it inside the body).
#[cached(cache = CACHE, expire = 60)]
async fn local_alias(id: u32) -> Out {
    #[allow(dead_code)]
    type Out = String;
    id
}

#[cached(cache = CACHE, expire = 60, stale_if_error = 60)]
async fn use_shadows(input: String) -> Result<u64, errors::Error> {
    #[allow(unused_imports)]
    use std::io as errors;
    input.parse().map_err(|_| crate::errors::Error)
}

/// A body that never returns: the expansion adds no `unreachable_code`.
#[cached(cache = CACHE, expire = 60)]
#[allow(clippy::unused_async)]
async fn diverging(id: u64) -> u64 {
    panic!("diverging {id}")
}

#[tokio::test]
async fn items_in_the_body_do_not_change_the_return_type() {
    assert_eq!(local_alias(1).await, 1);
    assert_eq!(use_shadows("2".to_owned()).await.unwrap(), 2);
    assert!(use_shadows("x".to_owned()).await.is_err());
    assert!(
        tokio::spawn(diverging(3)).await.is_err(),
        "the panic reaches the caller"
    );
}

#[tokio::test]
async fn bodies_that_coerce_to_the_return_type_compile_and_run() {
    assert_eq!(early_return(0).await.unwrap_err().to_string(), "zero");
    assert_eq!(early_return(1).await.unwrap(), 1);
    assert_eq!(tail(0).await.unwrap_err().to_string(), "zero");
    assert_eq!(tail(2).await.unwrap(), 2);
    assert_eq!(&*slice(3).await, &[3, 3]);
    assert_eq!(fresh_early_return(0).await.unwrap_err().to_string(), "zero");
    assert_eq!(fresh_early_return(4).await.unwrap(), 4);
    assert_eq!(tagged_tail(0).await.unwrap_err().to_string(), "zero");
    assert_eq!(tagged_tail(5).await.unwrap(), 5);
    assert_eq!(&*tagged_slice(6).await, &[6, 6]);
    assert!(Item::load(0).await.is_err());
    assert_eq!(Item::load(7).await.unwrap().0, 7);
    assert!(Item::fresh_load(0).await.is_err());
    assert_eq!(Item::fresh_load(8).await.unwrap().0, 8);
    assert!(generic(0u32).await.is_err());
    assert_eq!(generic(9u32).await.unwrap(), 9);
}

// ---------------------------------------------------------------- arguments under `#[cfg]`

#[cached(cache = CACHE, expire = 60)]
async fn cfg_arg(
    #[cfg(any())] never: u8,
    #[cfg(test)] always: u64,
    #[cfg_attr(test, cfg(any()))] gone: u8,
    #[cfg(any())] (a, b): (u8, u8),
    id: u64,
) -> u64 {
    always + id
}

#[cached(cache = CACHE, expire = 60, tags = ["id:{id}"], stale_while_revalidate = 10)]
async fn cfg_arg_spawned(#[cfg(any())] never: u8, id: u64) -> u64 {
    id
}

#[tokio::test]
async fn arguments_removed_by_cfg_are_not_in_the_key() {
    assert_eq!(cfg_arg(1, 2).await, 3);
    assert_eq!(cfg_arg_spawned(4).await, 4);
    // The stores run in the background.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for key in [
        "cached_as_written::cfg_arg:1:2",
        "cached_as_written::cfg_arg_spawned:4",
    ] {
        assert!(CACHE.get_raw(key).await.unwrap().is_some(), "{key}");
    }
    assert!(cfg_arg_invalidate(1, 2).await.unwrap());
    assert!(cfg_arg_spawned_invalidate(4).await.unwrap());
    cfg_arg_spawned_invalidate_all().await.unwrap();
}

// ---------------------------------------------------------------- `#[expect]` on an argument

// Without `#[cached]`, `unused` is an unused variable and each expectation is fulfilled. The
// expansion copies the argument into the wrapper, where the key reads it, and the companions:
// an expectation fulfilled in at most one of them was reported unfulfilled (found by a probe).

#[cached(cache = CACHE, expire = 60)]
async fn expect_on_arg(#[expect(unused_variables)] unused: u32, id: u64) -> u64 {
    id
}

#[cached(cache = CACHE, expire = 60)]
async fn expect_on_arg_with_reason(
    #[expect(unused_variables, reason = "part of the key only")] unused: u32,
    id: u64,
) -> u64 {
    id
}

#[cached(cache = CACHE, expire = 60)]
async fn expect_on_arg_in_cfg_attr(
    #[cfg_attr(all(), expect(unused_variables))] unused: u32,
    id: u64,
) -> u64 {
    id
}

#[cached(cache = CACHE, expire = 60, skip(unused), tags = ["id:{id}"])]
async fn expect_on_skipped_arg(
    #[cfg_attr(all(), cfg_attr(all(), expect(unused_variables)))] unused: u32,
    id: u64,
) -> u64 {
    id
}

/// The same under `#[cfg_attr]` on the function.
#[cached(cache = CACHE, expire = 60)]
#[cfg_attr(all(), expect(unused_variables))]
async fn expect_in_cfg_attr_on_fn(unused: u32, id: u64) -> u64 {
    id
}

#[tokio::test]
async fn an_expectation_on_an_argument_holds_for_the_generated_items() {
    assert_eq!(expect_on_arg(1, 2).await, 2);
    assert_eq!(expect_on_arg_with_reason(1, 3).await, 3);
    assert_eq!(expect_on_arg_in_cfg_attr(1, 4).await, 4);
    assert_eq!(expect_on_skipped_arg(1, 5).await, 5);
    assert_eq!(expect_in_cfg_attr_on_fn(1, 6).await, 6);
    assert!(CACHE
        .get_raw("cached_as_written::expect_on_arg:1:2")
        .await
        .unwrap()
        .is_some());
    assert!(expect_on_arg_invalidate(1, 2).await.unwrap());
    assert!(expect_on_arg_with_reason_invalidate(1, 3).await.unwrap());
    assert!(expect_on_arg_in_cfg_attr_invalidate(1, 4).await.unwrap());
    expect_on_skipped_arg_invalidate_all().await.unwrap();
}

// ---------------------------------------------------------------- `#[no_implicit_prelude]`

/// The expansion names what it uses by full paths, so it compiles without the prelude (found by
/// a probe: `version` was converted with `::impcache::Version::from(..)`, a method of `From`,
/// which needs the prelude in scope).
#[no_implicit_prelude]
mod without_prelude {
    use super::CACHE;
    use ::impcache::cached;

    #[cached(cache = CACHE, expire = 60, version = "v2", skip(_flag))]
    pub(crate) async fn versioned(id: u64, _flag: bool) -> ::std::option::Option<u64> {
        ::std::option::Option::Some(id)
    }

    #[cached(
        cache = CACHE,
        expire = ::std::time::Duration::from_secs(60),
        version = 3,
        key = "np:{id}",
        stale_while_revalidate = 5,
        hard_timeout = 5,
        lock = 10,
        tags = ["np:{id}"],
        tags_from = |v: &u64| [::std::format!("v:{v}")],
    )]
    pub(crate) async fn everything(id: u64) -> ::std::result::Result<u64, ::impcache::Error> {
        ::std::result::Result::Ok(id)
    }

    pub(crate) struct Holder;

    impl Holder {
        #[cached(cache = CACHE, expire = 60, version = "v2", cache_none = true)]
        pub(crate) async fn method(&self, (a, b): (u64, u64)) -> ::std::option::Option<u64> {
            ::std::option::Option::Some(a + b)
        }
    }
}

#[tokio::test]
async fn the_expansion_needs_no_prelude() {
    assert_eq!(without_prelude::versioned(1, true).await, Some(1));
    assert!(without_prelude::versioned_invalidate(1).await.is_ok());
    without_prelude::versioned_invalidate_all().await.unwrap();
    assert_eq!(without_prelude::everything(2).await.unwrap(), 2);
    without_prelude::everything_invalidate_all().await.unwrap();
    let holder = without_prelude::Holder;
    assert_eq!(holder.method((1, 2)).await, Some(3));
    assert!(holder.method_invalidate((1, 2)).await.is_ok());
}

// ---------------------------------------------------------------- lifetimes of left-out arguments

/// A lifetime that the function names twice, once in an argument `{name}_invalidate` leaves out:
/// the companion names it once, which `single_use_lifetimes` reported (found by a probe); the
/// companions allow that lint, as they allow the others their generated shape would trip.
#[deny(single_use_lifetimes, unused_lifetimes)]
mod lifetimes {
    use super::CACHE;
    use impcache::cached;

    pub(crate) trait Db: Sync {}
    impl Db for () {}

    #[cached(cache = CACHE, expire = 60, skip(db))]
    pub(crate) async fn one_left<'a>(db: &'a (), name: Option<&'a str>) -> usize {
        let () = *db;
        name.map_or(0, str::len)
    }

    #[cached(cache = CACHE, expire = 60, skip(db))]
    pub(crate) async fn bounded<'a, D>(db: &'a D, name: &'a str) -> usize
    where
        D: Db + 'a,
    {
        let _ = db;
        name.len()
    }

    #[cached(cache = CACHE, expire = 60, skip(db))]
    pub(crate) async fn two_left<'a>(db: &'a (), a: &'a str, b: &'a str) -> usize {
        let () = *db;
        a.len() + b.len()
    }
}

#[tokio::test]
async fn a_lifetime_of_a_left_out_argument_trips_no_lint_in_the_companion() {
    assert_eq!(lifetimes::one_left(&(), Some("ab")).await, 2);
    assert!(lifetimes::one_left_invalidate(Some("ab")).await.is_ok());
    assert_eq!(lifetimes::bounded(&(), "abc").await, 3);
    assert!(lifetimes::bounded_invalidate("abc").await.is_ok());
    assert_eq!(lifetimes::two_left(&(), "a", "b").await, 2);
    assert!(lifetimes::two_left_invalidate("a", "b").await.is_ok());
}
