//! The contract suite: every example of the Python library's description and the edge cases,
//! run identically against the in-memory repository (called directly by `Cache`, and through
//! the `CacheRepository` trait), a real Redis, Sentinel and Cluster.
//!
//! Each test is an `async fn(Backend)`; `contract!` instantiates it once per repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use impcache::{
    escape_pattern, Cache, CacheRepository, Error, Expire, MemoryCacheRepository,
    RedisCacheRepository,
};
use impcache_tests::RedisServer;
use serde::{Deserialize, Serialize};

/// A repository under test, and the servers behind it when the test started its own (they are
/// killed when it is dropped).
struct Backend {
    repository: Arc<dyn CacheRepository>,
    _servers: Option<Box<dyn std::any::Any>>,
}

impl Backend {
    fn memory() -> Self {
        Backend {
            repository: Arc::new(MemoryCacheRepository::new()),
            _servers: None,
        }
    }

    /// The memory repository behind another `CacheRepository` (a namespacing wrapper), so that
    /// `Cache` goes through the trait's boxed futures instead of calling it directly: both paths
    /// must behave the same.
    fn memory_through_trait() -> Self {
        use impcache_tests::cluster::NamespacedRepository;
        Backend {
            repository: Arc::new(NamespacedRepository::unique(Arc::new(
                MemoryCacheRepository::new(),
            ))),
            _servers: None,
        }
    }

    fn redis() -> Self {
        let server = RedisServer::start();
        let repository = RedisCacheRepository::builder(server.url())
            .deadline(Duration::from_secs(5))
            .build()
            .unwrap();
        Backend {
            repository: Arc::new(repository),
            _servers: Some(Box::new(server)),
        }
    }

    /// The shared cluster of this test binary, under a namespace of its own (so that tests
    /// running at once cannot see each other's keys).
    #[cfg(feature = "cluster")]
    fn cluster() -> Self {
        use impcache::RedisClusterCacheRepository;
        use impcache_tests::cluster::{NamespacedRepository, RedisCluster};
        let repository = RedisClusterCacheRepository::builder(RedisCluster::shared().urls())
            .deadline(Duration::from_secs(5))
            .build()
            .unwrap();
        Backend {
            repository: Arc::new(NamespacedRepository::unique(Arc::new(repository))),
            _servers: None,
        }
    }

    /// A primary, its replica and a Sentinel of this test's own; the repository finds the
    /// primary through the Sentinel.
    #[cfg(feature = "sentinel")]
    fn sentinel() -> Self {
        use impcache::RedisSentinelCacheRepository;
        use impcache_tests::cluster::{SentinelGroup, SENTINEL_SERVICE};
        let group = SentinelGroup::start();
        let repository =
            RedisSentinelCacheRepository::builder([group.sentinel_url()], SENTINEL_SERVICE)
                .deadline(Duration::from_secs(5))
                .build()
                .unwrap();
        Backend {
            repository: Arc::new(repository),
            _servers: Some(Box::new(group)),
        }
    }

    /// The defaults: prefix `cache`, version 1.
    fn cache(&self) -> Cache {
        Cache::builder_shared(self.repository.clone()).build()
    }

    fn cache_with(&self, prefix: &str, version: &str) -> Cache {
        Cache::builder_shared(self.repository.clone())
            .key_prefix(prefix)
            .version(version)
            .build()
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::memory()).await
                }
            )*
        }
        mod memory_through_trait {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::memory_through_trait()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::redis()).await
                }
            )*
        }
        #[cfg(feature = "sentinel")]
        mod sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::sentinel()).await
                }
            )*
        }
        #[cfg(feature = "cluster")]
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::cluster()).await
                }
            )*
        }
    };
}

contract!(
    seed_quickstart,
    seed_versioning,
    seed_key_format,
    seed_set_nx,
    seed_set_many_and_get_many,
    seed_delete_and_delete_many,
    seed_delete_pattern_examples,
    stored_null_is_not_a_miss,
    zero_expire_is_refused_before_anything_is_sent,
    never_expiring_is_an_explicit_choice,
    empty_inputs_return_at_once,
    unusual_keys_round_trip,
    glob_characters_in_prefix_version_and_key,
    delete_pattern_stays_inside_prefix_and_version,
    delete_pattern_reports_its_progress,
    ten_mib_values_round_trip,
    ttl_really_expires,
    deleting_an_expired_key_removes_nothing,
    set_many_gives_every_key_its_ttl,
    concurrent_set_nx_has_exactly_one_winner,
    decode_errors_name_the_key,
    bad_values_store_nothing,
    structs_round_trip,
    get_many_keeps_order_and_types,
    overwrite_replaces_value_and_ttl,
    unclosed_bracket_pattern_is_refused,
    too_long_key_is_refused,
    values_nested_as_deep_as_orjson_writes_round_trip,
    values_nested_deeper_are_refused_both_ways,
    integers_beyond_64_bits_are_refused,
    map_keys_are_written_as_strings_or_refused,
    delete_if_equal_removes_only_a_match,
    set_if_equal_replaces_only_a_match,
    set_nx_claims_a_key_whose_tagged_entry_is_hidden,
    member_lists_keep_each_member_once_for_the_longest_lifetime,
    floats_read_back_exactly,
);

async fn seed_quickstart(b: Backend) {
    let cache = b.cache();
    cache.set("key", &"value", 100).await.unwrap();
    let result: Option<String> = cache.get("key").await.unwrap();
    assert_eq!(result.as_deref(), Some("value"));
    assert_eq!(cache.get::<String>("non-existing-key").await.unwrap(), None);
}

async fn seed_versioning(b: Backend) {
    let cache = b.cache();
    cache
        .with_version(2)
        .set("key", &"value", 100)
        .await
        .unwrap();
    assert_eq!(cache.get::<String>("key").await.unwrap(), None);
    assert_eq!(
        cache.with_version(2).get::<String>("key").await.unwrap(),
        Some("value".to_owned())
    );
    assert_eq!(
        cache.with_version("2").get::<String>("key").await.unwrap(),
        Some("value".to_owned()),
        "integer and string versions build the same key"
    );
}

async fn seed_key_format(b: Backend) {
    let cache = b.cache();
    assert_eq!(cache.make_key("key"), "cache:1:key");
    assert_eq!(b.cache_with("p", "v3").make_key("k"), "p:v3:k");
    // The same entry is reachable through a cache whose prefix+version spell the same full key.
    cache.set("a:b", &1, 100).await.unwrap();
    assert_eq!(
        b.cache_with("cache:1", "a").get::<i32>("b").await.unwrap(),
        Some(1)
    );
}

async fn seed_set_nx(b: Backend) {
    let cache = b.cache();
    assert!(cache.set_nx("key", &"value", 100).await.unwrap());
    assert!(!cache.set_nx("key", &"other", 100).await.unwrap());
    assert_eq!(
        cache.get::<String>("key").await.unwrap().as_deref(),
        Some("value")
    );
}

async fn seed_set_many_and_get_many(b: Backend) {
    let cache = b.cache();
    cache
        .set_many([("key1", "value1"), ("key2", "value2")], 100)
        .await
        .unwrap();
    let values: Vec<Option<String>> = cache
        .get_many(&["key1", "non-existing-key", "key2"])
        .await
        .unwrap();
    assert_eq!(
        values,
        [Some("value1".to_owned()), None, Some("value2".to_owned())]
    );
    cache.set_many([("k1", 1), ("k2", 2)], 100).await.unwrap();
    let ints: Vec<Option<i64>> = cache.get_many(["k1", "missing", "k2"]).await.unwrap();
    assert_eq!(ints, [Some(1), None, Some(2)]);
    // Borrowed pairs and keys, and the turbofish of `get`.
    let owned = vec![("k3".to_owned(), 3), ("k4".to_owned(), 4)];
    cache.set_many(&owned, 100).await.unwrap();
    cache.set_many(&[("k5", 5)], 100).await.unwrap();
    assert_eq!(
        cache.get_many::<i64>(&["k3", "k4", "k5"]).await.unwrap(),
        [Some(3), Some(4), Some(5)]
    );
}

async fn seed_delete_and_delete_many(b: Backend) {
    let cache = b.cache();
    cache.set("key", &"value", 100).await.unwrap();
    assert_eq!(cache.delete("key").await.unwrap(), 1);
    assert_eq!(cache.delete("key").await.unwrap(), 0);
    cache
        .set_many([("key1", "value1"), ("key2", "value2")], 100)
        .await
        .unwrap();
    assert_eq!(
        cache
            .delete_many(&["key1", "non-existing-key", "key2"])
            .await
            .unwrap(),
        2
    );
    assert_eq!(cache.get::<String>("key1").await.unwrap(), None);
}

async fn seed_delete_pattern_examples(b: Backend) {
    let cache = b.cache();
    let words = [
        "hello", "hallo", "hxllo", "hllo", "heeeello", "hillo", "hbllo", "hcllo",
    ];
    let cases = [
        (
            "h?llo",
            vec!["hallo", "hbllo", "hcllo", "hello", "hillo", "hxllo"],
        ),
        ("h*llo", words.to_vec()),
        ("h[ae]llo", vec!["hallo", "hello"]),
        (
            "h[^e]llo",
            vec!["hallo", "hbllo", "hcllo", "hillo", "hxllo"],
        ),
        ("h[a-b]llo", vec!["hallo", "hbllo"]),
    ];
    for (pattern, expected) in cases {
        cache
            .set_many(words.iter().map(|w| (*w, *w)), 100)
            .await
            .unwrap();
        let removed = cache.delete_pattern(pattern).await.unwrap();
        assert_eq!(removed as usize, expected.len(), "{pattern}");
        for word in words {
            let left = cache.get::<String>(word).await.unwrap().is_some();
            assert_eq!(left, !expected.contains(&word), "{pattern} on {word}");
        }
    }
    // The seed's own example: h*llo matches hllo and heeeello.
    cache.delete_pattern("*").await.unwrap();
    cache
        .set_many([("hllo", "value1"), ("heeeello", "value2")], 100)
        .await
        .unwrap();
    assert_eq!(cache.delete_pattern("h*llo").await.unwrap(), 2);
}

async fn stored_null_is_not_a_miss(b: Backend) {
    let cache = b.cache();
    cache.set("null", &None::<i32>, 100).await.unwrap();
    assert_eq!(cache.get::<Option<i32>>("null").await.unwrap(), Some(None));
    assert_eq!(cache.get::<Option<i32>>("missing").await.unwrap(), None);
    assert_eq!(cache.get::<()>("null").await.unwrap(), Some(()));
    let many: Vec<Option<Option<i32>>> = cache.get_many(["null", "missing"]).await.unwrap();
    assert_eq!(many, [Some(None), None]);
}

async fn zero_expire_is_refused_before_anything_is_sent(b: Backend) {
    let cache = b.cache();
    for expire in [
        Expire::from(0),
        Expire::from(Duration::ZERO),
        Expire::from(-1),
    ] {
        let err = cache.set("k", &1, expire).await.unwrap_err();
        assert!(matches!(err, Error::InvalidExpire { .. }), "{err}");
        assert!(err.to_string().contains("`k`"), "{err}");
        let err = cache.set_nx("k", &1, expire).await.unwrap_err();
        assert!(matches!(err, Error::InvalidExpire { .. }), "{err}");
        let err = cache.set_many([("k", 1)], expire).await.unwrap_err();
        assert!(matches!(err, Error::InvalidExpire { .. }), "{err}");
    }
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
}

async fn never_expiring_is_an_explicit_choice(b: Backend) {
    let cache = b.cache();
    cache.set("forever", &1, Expire::NEVER).await.unwrap();
    assert_eq!(cache.get::<i32>("forever").await.unwrap(), Some(1));
}

async fn empty_inputs_return_at_once(b: Backend) {
    let cache = b.cache();
    cache
        .set_many(Vec::<(String, i32)>::new(), 100)
        .await
        .unwrap();
    let none: Vec<Option<i32>> = cache.get_many(Vec::<String>::new()).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(cache.delete_many(Vec::<String>::new()).await.unwrap(), 0);
    // An empty key list must not even need a valid expire.
    cache
        .set_many(Vec::<(String, i32)>::new(), 0)
        .await
        .unwrap();
}

async fn unusual_keys_round_trip(b: Backend) {
    let cache = b.cache();
    let keys = [
        "",
        "ключ",
        "键🔑",
        "with space",
        "new\nline",
        "tab\tand\r\n",
        "colon:in:key",
        "quote\"'",
        "nul\0byte",
    ];
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &i, 100).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.get::<usize>(key).await.unwrap(), Some(i), "{key:?}");
    }
    assert_eq!(cache.delete_many(keys).await.unwrap(), keys.len() as u64);
}

async fn glob_characters_in_prefix_version_and_key(b: Backend) {
    let odd = b.cache_with("a*[p]?\\", "[1]*");
    odd.set("k*[x]?\\", &"v", 100).await.unwrap();
    assert_eq!(
        odd.get::<String>("k*[x]?\\").await.unwrap().as_deref(),
        Some("v")
    );
    odd.set("kx", &"other", 100).await.unwrap();
    // A literal key, escaped, matches only itself.
    assert_eq!(
        odd.delete_pattern(&escape_pattern("k*[x]?\\"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        odd.get::<String>("kx").await.unwrap().as_deref(),
        Some("other")
    );
}

async fn delete_pattern_stays_inside_prefix_and_version(b: Backend) {
    let mine = b.cache_with("a*", "1");
    let neighbours = [
        b.cache_with("ab", "1"),
        b.cache_with("a", "1"),
        b.cache_with("a*", "2"),
        b.cache_with("a*", "[1]"),
        b.cache_with("a[*]", "1"),
        b.cache_with("a?", "1"),
        b.cache_with("a\\", "1"),
    ];
    // Not a neighbour: a cache with prefix `a*:1` shares the namespace `a*:1:` by construction
    // (the layout joins with `:` and does not escape), so it is left out; see the README.
    mine.set_many([("x", 1), ("y", 2)], 100).await.unwrap();
    for n in &neighbours {
        n.set_many([("x", 1), ("y", 2)], 100).await.unwrap();
    }
    assert_eq!(mine.delete_pattern("*").await.unwrap(), 2);
    for n in &neighbours {
        let left: Vec<Option<i32>> = n.get_many(["x", "y"]).await.unwrap();
        assert_eq!(left, [Some(1), Some(2)], "{n:?} lost keys");
    }
    // And a versioned sweep only removes its version.
    let v1 = b.cache_with("p", "1");
    let v10 = b.cache_with("p", "10");
    v1.set("k", &1, 100).await.unwrap();
    v10.set("k", &1, 100).await.unwrap();
    assert_eq!(v1.delete_pattern("*").await.unwrap(), 1);
    assert_eq!(v10.get::<i32>("k").await.unwrap(), Some(1));
}

/// Totals after each batch (up to 1,000 keys), ending on the count returned, on every
/// repository (the one behind a user's trait object reports as its own does).
async fn delete_pattern_reports_its_progress(b: Backend) {
    let cache = b.cache();
    cache
        .set_many((0..2500).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    let mut reports = Vec::new();
    let removed = cache
        .delete_pattern_with_progress("k*", |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(removed, 2500);
    let last = reports.last().unwrap();
    assert_eq!((last.matched, last.removed), (2500, 2500));
    assert_eq!(last.batches, reports.len() as u64);
    assert!(reports.len() >= 3, "{reports:?}");
    assert!(reports
        .windows(2)
        .all(|w| w[1].removed >= w[0].removed && w[1].matched > w[0].matched));
}

async fn ten_mib_values_round_trip(b: Backend) {
    let cache = b.cache();
    let big: String = "x".repeat(10 * 1024 * 1024);
    cache.set("big", &big, 100).await.unwrap();
    let back: Option<String> = cache.get("big").await.unwrap();
    assert_eq!(back.map(|s| s.len()), Some(big.len()));
    let bytes: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    cache.set("bytes", &bytes, 100).await.unwrap();
    assert_eq!(cache.get::<Vec<u8>>("bytes").await.unwrap(), Some(bytes));
}

async fn ttl_really_expires(b: Backend) {
    let cache = b.cache();
    // 1 s: the read below comes three round trips after the write, which a loaded CI machine
    // (every backend's run of this test at once, a shared Cluster) may stretch past 300 ms.
    cache
        .set("short", &1, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(cache
        .set_nx("short-nx", &1, Duration::from_secs(1))
        .await
        .unwrap());
    cache.set("long", &1, 100).await.unwrap();
    assert_eq!(cache.get::<i32>("short").await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(cache.get::<i32>("short").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("long").await.unwrap(), Some(1));
    // An expired key is free again for set_nx.
    assert!(cache.set_nx("short-nx", &2, 100).await.unwrap());
    // Whole seconds work too.
    cache.set("one-second", &1, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache.get::<i32>("one-second").await.unwrap(), None);
}

/// An expired key is gone: deleting it counts nothing, as on Redis (moka keeps an expired entry
/// until it is evicted, and its `remove` returns it).
async fn deleting_an_expired_key_removes_nothing(b: Backend) {
    let cache = b.cache();
    for key in ["one", "many-a", "many-b"] {
        cache
            .set(key, &1, Duration::from_millis(200))
            .await
            .unwrap();
    }
    cache.set("many-live", &1, 100).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cache.delete("one").await.unwrap(), 0);
    assert_eq!(
        cache
            .delete_many(["many-a", "many-b", "many-live"])
            .await
            .unwrap(),
        1
    );
}

async fn set_many_gives_every_key_its_ttl(b: Backend) {
    let cache = b.cache();
    cache
        .set_many(
            (0..50).map(|i| (format!("k{i}"), i)),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let before: Vec<Option<i32>> = cache
        .get_many((0..50).map(|i| format!("k{i}")))
        .await
        .unwrap();
    assert!(before.iter().all(Option::is_some));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after: Vec<Option<i32>> = cache
        .get_many((0..50).map(|i| format!("k{i}")))
        .await
        .unwrap();
    assert!(after.iter().all(Option::is_none), "{after:?}");
}

async fn concurrent_set_nx_has_exactly_one_winner(b: Backend) {
    let cache = b.cache();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.set_nx("race", &i, 100).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1);
}

async fn decode_errors_name_the_key(b: Backend) {
    let cache = b.cache();
    cache.set("text", &"not a number", 100).await.unwrap();
    let err = cache.get::<i64>("text").await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    assert!(err.to_string().contains("cache:1:text"), "{err}");
    assert!(!err.is_backend_failure());
    let err = cache
        .get_many::<i64>(["missing", "text"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cache:1:text"), "{err}");
}

async fn bad_values_store_nothing(b: Backend) {
    let cache = b.cache();
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = cache.set("float", &value, 100).await.unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{err}");
        assert!(err.to_string().contains("float"), "{err}");
    }
    let err = cache
        .set_many([("good", 1.0), ("bad", f64::NAN)], 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad"), "{err}");
    let stored: Vec<Option<f64>> = cache.get_many(["float", "good", "bad"]).await.unwrap();
    assert_eq!(
        stored,
        [None, None, None],
        "a failed set_many stores nothing"
    );
    // A map with non-string keys cannot be JSON either.
    let mut map = std::collections::HashMap::new();
    map.insert(vec![1], 1);
    let err = cache.set("map", &map, 100).await.unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err}");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: f64,
    admin: bool,
    manager: Option<Box<User>>,
}

async fn structs_round_trip(b: Backend) {
    let cache = b.cache();
    let user = User {
        id: 7,
        name: "Zoë".into(),
        tags: vec!["a".into(), "b".into()],
        score: 1.5,
        admin: false,
        manager: Some(Box::new(User {
            id: 1,
            name: "Boss".into(),
            tags: vec![],
            score: -0.25,
            admin: true,
            manager: None,
        })),
    };
    cache.set("user:7", &user, 100).await.unwrap();
    assert_eq!(cache.get::<User>("user:7").await.unwrap(), Some(user));
    let as_json: Option<serde_json::Value> = cache.get("user:7").await.unwrap();
    assert_eq!(as_json.unwrap()["manager"]["name"], "Boss");
}

/// Every finite `f64` reads back bit for bit, whether this library or Python's orjson wrote it
/// (the shortest representation that round-trips, e.g. `123456789.12345679`). serde_json's
/// default float parser was one ulp off for about 3 in 10 random doubles.
async fn floats_read_back_exactly(b: Backend) {
    let cache = b.cache();
    let mut floats = vec![
        123_456_789.123_456_79,
        5.292_684_237_456_565e-221,
        2.291_712_365_432_881e-9,
        0.1,
        -0.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
    ];
    // A fixed xorshift sequence of bit patterns: the same doubles every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while floats.len() < 500 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let float = f64::from_bits(state);
        if float.is_finite() {
            floats.push(float);
        }
    }
    let keys: Vec<String> = (0..floats.len()).map(|i| format!("float:{i}")).collect();
    cache
        .set_many(
            keys.iter().map(String::as_str).zip(floats.iter().copied()),
            100,
        )
        .await
        .unwrap();
    let read: Vec<Option<f64>> = cache.get_many(&keys).await.unwrap();
    for ((key, written), read) in keys.iter().zip(&floats).zip(read) {
        let read = read.unwrap();
        assert_eq!(
            read.to_bits(),
            written.to_bits(),
            "{key}: wrote {written:?}, read {read:?}"
        );
    }
    // Written by orjson (Python): the same bytes, read with `get`.
    cache
        .set_raw(
            "orjson",
            bytes::Bytes::from_static(b"123456789.12345679"),
            100,
        )
        .await
        .unwrap();
    let read: f64 = cache.get("orjson").await.unwrap().unwrap();
    assert_eq!(read.to_bits(), 123_456_789.123_456_79_f64.to_bits());
}

async fn get_many_keeps_order_and_types(b: Backend) {
    let cache = b.cache();
    let keys: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
    cache
        .set_many(keys.iter().enumerate().map(|(i, k)| (k, i)), 100)
        .await
        .unwrap();
    let mut asked = keys.clone();
    asked.reverse();
    asked.insert(500, "absent".into());
    let got: Vec<Option<usize>> = cache.get_many(&asked).await.unwrap();
    assert_eq!(got.len(), 1001);
    assert_eq!(got[0], Some(999));
    assert_eq!(got[500], None);
    assert_eq!(got[1000], Some(0));
}

async fn overwrite_replaces_value_and_ttl(b: Backend) {
    let cache = b.cache();
    cache
        .set("k", &1, Duration::from_millis(300))
        .await
        .unwrap();
    cache.set("k", &2, 100).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2));
}

async fn unclosed_bracket_pattern_is_refused(b: Backend) {
    let cache = b.cache();
    cache.set("[", &1, 100).await.unwrap();
    for pattern in ["[", "h[ae", "x[^"] {
        let err = cache.delete_pattern(pattern).await.unwrap_err();
        assert!(matches!(err, Error::InvalidPattern { .. }), "{err}");
        assert!(err.to_string().contains(pattern), "{err}");
    }
    assert_eq!(cache.delete_pattern(r"\[").await.unwrap(), 1);
    // A range's end is taken whole, as Redis's matcher takes it: `[a-]` never closes, and
    // `[a-\]` is the closed set of `\` to `a`.
    let err = cache.delete_pattern("h[a-]llo").await.unwrap_err();
    assert!(matches!(err, Error::InvalidPattern { .. }), "{err}");
    for key in [r"\x", "_x", "ax", "bx"] {
        cache.set(key, &1, 100).await.unwrap();
    }
    assert_eq!(cache.delete_pattern(r"[a-\]x").await.unwrap(), 3);
    assert_eq!(cache.get::<i32>("bx").await.unwrap(), Some(1));
}

async fn too_long_key_is_refused(b: Backend) {
    let cache = b.cache();
    let key = "k".repeat(1024 * 1024);
    let err = cache.set(&key, &1, 100).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert!(err.to_string().len() < 1000, "the message shortens the key");
    assert!(cache.get::<i32>(&key).await.is_err());
}

/// `depth` levels of arrays and objects, alternating, around a number.
fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::json!(1);
    for level in 0..depth {
        value = if level % 2 == 0 {
            serde_json::json!([value])
        } else {
            serde_json::json!({ "k": value })
        };
    }
    value
}

/// orjson (the Python library's encoder) writes up to 255 levels; serde_json alone reads 127.
/// On a spawned task: a tokio worker thread's default 2 MiB stack is enough.
async fn values_nested_as_deep_as_orjson_writes_round_trip(b: Backend) {
    let cache = b.cache();
    tokio::spawn(async move {
        for depth in [200, 255] {
            let value = nested(depth);
            cache.set("deep", &value, 100).await.unwrap();
            let got: Option<serde_json::Value> = cache.get("deep").await.unwrap();
            assert_eq!(got.as_ref(), Some(&value), "depth {depth}");
            // As Python writes it (200 nested lists), read through get_many too.
            let raw = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            cache.set_raw("raw", raw.into(), 100).await.unwrap();
            let got: Vec<Option<serde_json::Value>> = cache.get_many(["raw"]).await.unwrap();
            assert!(got[0].is_some(), "depth {depth}");
        }
    })
    .await
    .unwrap();
}

/// `set` refuses what `get` would refuse; a hostile million `[` is an error, not a crash.
async fn values_nested_deeper_are_refused_both_ways(b: Backend) {
    let cache = b.cache();
    tokio::spawn(async move {
        let err = cache.set("deep", &nested(256), 100).await.unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{err}");
        assert!(err.to_string().contains("deep"), "{err}");
        assert!(err.to_string().contains("255 levels"), "{err}");
        assert_eq!(cache.get_raw("deep").await.unwrap(), None, "nothing stored");

        let too_deep = format!("{}{}", "[".repeat(256), "]".repeat(256));
        let hostile = "[".repeat(1_000_000);
        for raw in [too_deep, hostile] {
            cache.set_raw("raw", raw.into(), 100).await.unwrap();
            let err = cache.get::<serde_json::Value>("raw").await.unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{err}");
            assert!(err.to_string().contains("cache:1:raw"), "{err}");
            assert!(err.to_string().contains("255 levels"), "{err}");
            let err = cache.get::<Vec<i32>>("raw").await.unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{err}");
        }
    })
    .await
    .unwrap();
}

/// orjson refuses integers beyond 64 bits, and Python reads the ones serde_json writes back as
/// floats: refused like NaN. A `u128`/`i128` holding a 64-bit value is stored as usual.
async fn integers_beyond_64_bits_are_refused(b: Backend) {
    let cache = b.cache();
    let err = cache
        .set("big", &(u128::from(u64::MAX) + 1), 100)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err}");
    assert!(err.to_string().contains("beyond 64 bits"), "{err}");
    let err = cache
        .set_many([("small", 1_i128), ("negative", i128::MIN)], 100)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err}");
    let stored: Vec<Option<i128>> = cache.get_many(["big", "small", "negative"]).await.unwrap();
    assert_eq!(stored, [None, None, None], "nothing stored");
    cache.set("max", &u128::from(u64::MAX), 100).await.unwrap();
    assert_eq!(cache.get::<u64>("max").await.unwrap(), Some(u64::MAX));
    cache.set("min", &i128::from(i64::MIN), 100).await.unwrap();
    assert_eq!(cache.get::<i64>("min").await.unwrap(), Some(i64::MIN));
}

/// JSON object keys are strings: a map's integer, `bool` and `char` keys are written as strings
/// (`{"1":1}`); a key JSON cannot write as one (`()`, a tuple) is `Encode`, nothing stored.
async fn map_keys_are_written_as_strings_or_refused(b: Backend) {
    use std::collections::BTreeMap;
    let cache = b.cache();
    let value = (
        BTreeMap::from([(1_u8, 1)]),
        BTreeMap::from([(true, 'a')]),
        BTreeMap::from([('c', 2)]),
    );
    cache.set("keys", &value, 100).await.unwrap();
    assert_eq!(
        cache.get::<serde_json::Value>("keys").await.unwrap(),
        Some(serde_json::json!([{"1": 1}, {"true": "a"}, {"c": 2}]))
    );
    assert_eq!(
        cache
            .get::<(BTreeMap<u8, i32>, BTreeMap<bool, char>, BTreeMap<char, i32>)>("keys")
            .await
            .unwrap(),
        Some(value)
    );
    for refused in [
        cache.set("unit", &BTreeMap::from([((), 1)]), 100).await,
        cache.set("unit", &BTreeMap::from([((1, 2), 1)]), 100).await,
    ] {
        let err = refused.unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{err}");
        assert!(err.to_string().contains("key must be a string"), "{err}");
    }
    assert_eq!(cache.get::<serde_json::Value>("unit").await.unwrap(), None);
}

// --- One loader run across processes (issue 16): the lock's release. ---

/// `delete_if_equal` (a lock's compare-and-delete release) removes the key only while it holds
/// exactly the given bytes.
async fn delete_if_equal_removes_only_a_match(b: Backend) {
    let cache = b.cache();
    let key = cache.make_key("__lock:k");
    let token = bytes::Bytes::from_static(b"token-1");
    let taken = b
        .repository
        .set_nx(&key, token.clone(), impcache::Expiry::Seconds(10))
        .await
        .unwrap();
    assert!(taken);
    let other = bytes::Bytes::from_static(b"token-2");
    assert!(!b.repository.delete_if_equal(&key, other).await.unwrap());
    assert_eq!(b.repository.get(&key).await.unwrap(), Some(token.clone()));
    assert!(b
        .repository
        .delete_if_equal(&key, token.clone())
        .await
        .unwrap());
    assert_eq!(b.repository.get(&key).await.unwrap(), None);
    assert!(!b.repository.delete_if_equal(&key, token).await.unwrap());
}

// --- Tags (issue 16): `set_nx` over a tagged entry its tags hide. ---

/// `set_if_equal` (`set_nx`'s compare-and-set over a hidden tagged entry) stores only while the
/// key holds exactly the given bytes, and the value stored gets the expiry given (none
/// included), not the old one's.
async fn set_if_equal_replaces_only_a_match(b: Backend) {
    use bytes::Bytes;
    use impcache::Expiry;
    let cache = b.cache();
    let (short, never) = (cache.make_key("short"), cache.make_key("never"));
    let old = Bytes::from_static(b"old");
    let new = Bytes::from_static(b"new");
    let replace = |key: &str, expected: &Bytes, expiry| {
        let key = key.to_owned();
        let (expected, new) = (expected.clone(), new.clone());
        let repository = b.repository.clone();
        async move {
            repository
                .set_if_equal(&key, expected, new, expiry)
                .await
                .unwrap()
        }
    };
    assert!(
        !replace(&short, &old, Expiry::Never).await,
        "nothing stored"
    );
    assert_eq!(b.repository.get(&short).await.unwrap(), None);
    b.repository
        .set(&short, old.clone(), Expiry::Seconds(100))
        .await
        .unwrap();
    b.repository
        .set(&never, old.clone(), Expiry::Milliseconds(300))
        .await
        .unwrap();
    let other = Bytes::from_static(b"other");
    assert!(!replace(&short, &other, Expiry::Never).await);
    assert_eq!(b.repository.get(&short).await.unwrap(), Some(old.clone()));
    assert!(replace(&short, &old, Expiry::Milliseconds(300)).await);
    assert!(replace(&never, &old, Expiry::Never).await);
    assert_eq!(b.repository.get(&short).await.unwrap(), Some(new.clone()));
    assert!(
        !replace(&short, &old, Expiry::Never).await,
        "no longer a match"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b.repository.get(&short).await.unwrap(),
        None,
        "the new expiry"
    );
    assert_eq!(
        b.repository.get(&never).await.unwrap(),
        Some(new),
        "no expiry"
    );
}

/// Through every repository, `set_nx` stores over a tagged entry that an invalidation hid (it
/// reads as a miss), and not over one that reads as a hit.
async fn set_nx_claims_a_key_whose_tagged_entry_is_hidden(b: Backend) {
    let (cache, other) = (b.cache(), b.cache());
    cache.set_tagged("hidden", &1, 100, ["t"]).await.unwrap();
    cache.set_tagged("shown", &1, 100, ["u"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    other.invalidate_tag("t").await.unwrap();
    assert_eq!(cache.get::<i32>("hidden").await.unwrap(), None);
    assert!(cache.set_nx("hidden", &2, 100).await.unwrap());
    assert_eq!(other.get::<i32>("hidden").await.unwrap(), Some(2));
    assert!(!other.set_nx("hidden", &3, 100).await.unwrap());
    assert!(!cache.set_nx("shown", &2, 100).await.unwrap());
    assert_eq!(other.get::<i32>("shown").await.unwrap(), Some(1));
}

// --- Member lists (issue 16): `impcache-tower`'s list of the hosts that stored a URL. ---

/// A member list holds each member once, in order, and lives as long as the longest lifetime
/// an addition asked for (forever once one asked for none).
async fn member_lists_keep_each_member_once_for_the_longest_lifetime(b: Backend) {
    use impcache::__private::members::{self, Members};
    let cache = b.cache();
    members::add(&cache, "hosts", "a.example", 100)
        .await
        .unwrap();
    members::add(&cache, "hosts", "b.example", 2).await.unwrap();
    members::add(&cache, "hosts", "a.example", 2).await.unwrap();
    assert_eq!(
        members::read(&cache, "hosts").await.unwrap(),
        Members::Listed(vec!["a.example".into(), "b.example".into()])
    );
    let found = cache.get_raw_with_ttl("hosts").await.unwrap().unwrap();
    assert_eq!(&found.value[..], b"a.example\nb.example\n");
    // The repositories that report TTLs: the longest one asked for, not the last.
    if let Some(ttl) = found.ttl {
        assert!(ttl > Duration::from_secs(50), "{ttl:?}");
    }
    members::add(&cache, "forever", "a", 1).await.unwrap();
    members::add(&cache, "forever", "b", Expire::NEVER)
        .await
        .unwrap();
    members::add(&cache, "forever", "c", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        members::read(&cache, "forever").await.unwrap(),
        Members::Listed(vec!["a".into(), "b".into(), "c".into()])
    );
    // What cannot be listed is refused, naming the key.
    for member in ["", "a\nb", "*"] {
        let error = members::add(&cache, "hosts", member, 10).await.unwrap_err();
        assert!(matches!(error, Error::InvalidKey { .. }), "{error}");
        assert!(error.to_string().contains("hosts"), "{error}");
    }
    // A list past 64 members reads as too many, for good.
    for i in 0..65 {
        members::add(&cache, "full", &format!("h{i}"), 10)
            .await
            .unwrap();
    }
    assert_eq!(
        members::read(&cache, "full").await.unwrap(),
        Members::TooMany
    );
    members::add(&cache, "full", "h0", 10).await.unwrap();
    assert_eq!(
        members::read(&cache, "full").await.unwrap(),
        Members::TooMany
    );
}

/// Additions from many callers at once all land: atomic on the one key (one `EVAL` on Redis,
/// the entry's lock in memory).
async fn concurrent_member_additions_all_land(b: Backend) {
    use impcache::__private::members::{self, Members};
    let cache = b.cache();
    let adds = (0..40).map(|i| {
        let cache = cache.clone();
        tokio::spawn(async move { members::add(&cache, "hosts", &format!("h{i}"), 60).await })
    });
    for add in adds {
        add.await.unwrap().unwrap();
    }
    let Members::Listed(mut listed) = members::read(&cache, "hosts").await.unwrap() else {
        panic!("not listed");
    };
    listed.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("h{i}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_member_additions_all_land_in_memory() {
    concurrent_member_additions_all_land(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_member_additions_all_land_on_redis() {
    concurrent_member_additions_all_land(Backend::redis()).await;
}

/// An addition that leaves the list as it was (the member listed, the lifetime long enough)
/// writes nothing: no `SET` to replicate, no invalidation sent to near caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addition_that_changes_nothing_writes_nothing_on_redis() {
    use impcache::__private::members;
    let server = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    members::add(&cache, "hosts", "a", Expire::NEVER)
        .await
        .unwrap();
    let sets = || -> String {
        let stats: String = server.cmd(&["INFO", "commandstats"]);
        stats
            .lines()
            .find(|line| line.starts_with("cmdstat_set:"))
            .unwrap_or_default()
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let before = sets();
    assert!(before.contains("calls=1"), "{before}");
    members::add(&cache, "hosts", "a", Expire::NEVER)
        .await
        .unwrap();
    members::add(&cache, "hosts", "a", 60).await.unwrap();
    assert_eq!(sets(), before);
    members::add(&cache, "hosts", "b", Expire::NEVER)
        .await
        .unwrap();
    assert_ne!(sets(), before);
}
