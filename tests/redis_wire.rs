//! What the Redis repository sends: the raw key layout, JSON bytes, `EX`/`PX`, one pipelined
//! `SET .. EX` per key (no `MSET` + `EXPIRE`), one `MGET`, `SCAN` + `UNLINK` (never `KEYS`), no
//! command at all for empty inputs, and Redis glob semantics identical in both repositories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use impcache::{Cache, Error, MemoryCacheRepository, RedisCacheRepository};
use impcache_tests::RedisServer;

fn cache(server: &RedisServer) -> Cache {
    Cache::new(RedisCacheRepository::new(&server.url()).unwrap())
}

/// `cmdstat_*` calls per command, from `INFO commandstats`.
fn command_calls(server: &RedisServer) -> BTreeMap<String, u64> {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && name != "config|resetstat")
        .collect()
}

fn reset_stats(server: &RedisServer) {
    let _: () = server.cmd(&["CONFIG", "RESETSTAT"]);
}

#[tokio::test]
async fn keys_values_and_ttls_are_laid_out_like_the_python_library() {
    let server = RedisServer::start();
    let cache = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
        .key_prefix("app")
        .version("v2")
        .build();
    #[derive(serde::Serialize)]
    struct User {
        name: &'static str,
        ids: [u8; 2],
    }
    let user = User {
        name: "Zoë",
        ids: [1, 2],
    };
    cache.set("user:1", &user, 100).await.unwrap();
    cache
        .set("short", &1.5, Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(server.keys(), ["app:v2:short", "app:v2:user:1"]);
    let raw: String = server.cmd(&["GET", "app:v2:user:1"]);
    assert_eq!(raw, r#"{"name":"Zoë","ids":[1,2]}"#);
    let ttl: i64 = server.cmd(&["TTL", "app:v2:user:1"]);
    assert!((95..=100).contains(&ttl), "{ttl}");
    let pttl: i64 = server.cmd(&["PTTL", "app:v2:short"]);
    assert!((1000..=1500).contains(&pttl), "{pttl}");
}

#[tokio::test]
async fn set_many_is_one_set_ex_per_key_and_get_many_one_mget() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache.set("warmup", &0, 10).await.unwrap();
    reset_stats(&server);
    cache
        .set_many((0..100).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    let calls = command_calls(&server);
    assert_eq!(calls.get("set"), Some(&100), "{calls:?}");
    assert!(
        !calls.contains_key("mset") && !calls.contains_key("expire"),
        "{calls:?}"
    );
    for i in [0, 99] {
        let ttl: i64 = server.cmd(&["TTL", &format!("cache:1:k{i}")]);
        assert!(ttl > 0, "every key gets its TTL with its value");
    }
    reset_stats(&server);
    let values: Vec<Option<i32>> = cache
        .get_many((0..100).map(|i| format!("k{i}")))
        .await
        .unwrap();
    assert_eq!(values.len(), 100);
    let calls = command_calls(&server);
    assert_eq!(calls.get("mget"), Some(&1), "{calls:?}");
    assert_eq!(calls.len(), 1, "{calls:?}");
}

#[tokio::test]
async fn empty_inputs_send_nothing() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache.set("warmup", &0, 10).await.unwrap();
    reset_stats(&server);
    cache
        .set_many(Vec::<(String, i32)>::new(), 100)
        .await
        .unwrap();
    let _: Vec<Option<i32>> = cache.get_many(Vec::<String>::new()).await.unwrap();
    cache.delete_many(Vec::<String>::new()).await.unwrap();
    assert_eq!(command_calls(&server), BTreeMap::new());
}

#[tokio::test]
async fn delete_pattern_scans_and_unlinks_in_batches_never_keys() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache
        .set_many((0..5000).map(|i| (format!("item:{i}"), i)), 100)
        .await
        .unwrap();
    cache.set("other", &1, 100).await.unwrap();
    reset_stats(&server);
    assert_eq!(cache.delete_pattern("item:*").await.unwrap(), 5000);
    let calls = command_calls(&server);
    assert!(
        !calls.contains_key("keys") && !calls.contains_key("del"),
        "{calls:?}"
    );
    assert!(calls["scan"] >= 2, "{calls:?}");
    assert!(calls["unlink"] >= 2, "batches: {calls:?}");
    assert_eq!(server.keys(), ["cache:1:other"]);
}

/// The memory repository's glob is a port of Redis's: the same patterns over the same keys remove
/// the same keys in both.
#[tokio::test]
async fn glob_semantics_are_identical_in_both_repositories() {
    let server = RedisServer::start();
    let redis = cache(&server);
    let memory = Cache::new(MemoryCacheRepository::new());
    let keys = [
        "", "a", "b", "ab", "abc", "a*c", "a?c", "a[c", "a]c", "a\\c", "a-c", "^", "é", "aé",
        "hello", "hallo", "h-llo", "h]llo", "h\\llo", "[", "]", "*", "?", "\\",
    ];
    let patterns = [
        "*",
        "?",
        "a*",
        "*c",
        "a?c",
        "a\\*c",
        "a\\?c",
        "a[*?]c",
        "a[^b]c",
        "a[b-a]c",
        "a[\\]]c",
        "a[]]c",
        "h[^]]llo",
        "h[-a]llo",
        "[\\\\]",
        "\\\\",
        "\\",
        "a\\",
        "[]",
        "**",
        "*?*",
        "a[!b]c",
        "h[e-e]llo",
        "é",
        "?é",
        "[é]",
        "a[\\-]c",
    ];
    // A range takes its end whole, `]` included (Redis's matcher): these sets never close, and
    // both repositories refuse them rather than read them that way.
    for unclosed in ["h[a-]llo", "[a-]"] {
        for cache in [&redis, &memory] {
            let refused = cache.delete_pattern(unclosed).await.unwrap_err();
            assert!(matches!(refused, Error::InvalidPattern { .. }), "{refused}");
        }
    }
    for pattern in patterns {
        for cache in [&redis, &memory] {
            cache.delete_pattern("*").await.unwrap();
            cache.delete("").await.unwrap();
            cache
                .set_many(keys.iter().map(|k| (*k, 1)), 100)
                .await
                .unwrap();
        }
        let removed_redis = redis.delete_pattern(pattern).await.unwrap();
        let removed_memory = memory.delete_pattern(pattern).await.unwrap();
        assert_eq!(removed_redis, removed_memory, "pattern {pattern:?}");
        let left_redis: Vec<Option<i32>> = redis.get_many(keys).await.unwrap();
        let left_memory: Vec<Option<i32>> = memory.get_many(keys).await.unwrap();
        assert_eq!(left_redis, left_memory, "pattern {pattern:?}");
    }
}

#[tokio::test]
async fn database_number_password_and_unix_socket_dsns_work() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let dsn = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let cache = Cache::new(RedisCacheRepository::new(&dsn).unwrap());
    cache.set("in-db-3", &1, 100).await.unwrap();
    let mut raw = redis::Client::open(dsn.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let db0: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(
            &mut redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/0", server.port()))
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    assert!(db0.is_empty(), "{db0:?}");
    let db3: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut raw).unwrap();
    assert_eq!(db3, ["cache:1:in-db-3"]);

    // A wrong password fails as a typed error that does not leak it.
    let wrong = format!("redis://:wrong-password@127.0.0.1:{}/0", server.port());
    let cache = Cache::new(RedisCacheRepository::new(&wrong).unwrap());
    let err = cache.get::<i32>("k").await.unwrap_err();
    assert!(err.is_backend_failure(), "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    assert!(
        !format!("{cache:?}").contains("wrong-password"),
        "{cache:?}"
    );

    let socket = std::env::temp_dir().join(format!("impcache-{}.sock", server.port()));
    let unix = RedisServer::start_with(&["--unixsocket", socket.to_str().unwrap()]);
    let cache = Cache::new(
        RedisCacheRepository::new(&format!("unix://{}?db=2", socket.display())).unwrap(),
    );
    cache.set("over-unix", &1, 100).await.unwrap();
    assert_eq!(cache.get::<i32>("over-unix").await.unwrap(), Some(1));
    let _: () = unix.cmd(&["SELECT", "2"]);
    drop(unix);
    let _ = std::fs::remove_file(socket);
}
