//! Hostile and bad input: every case gets a typed error that names the problem, and changes nothing
//! it should not (checked on the server's own key list, and for the memory repository too).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use impcache::{
    Cache, CacheRepository, Error, MemoryCacheRepository, RedisCacheRepository,
    RedisCacheRepositoryBuilder,
};
use impcache_tests::RedisServer;

fn redis_cache(server: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Cache::builder(repository)
        .key_prefix("in")
        .version(1)
        .build()
}

#[test]
fn malformed_dsns_are_refused_with_a_reason_and_without_the_password() {
    let cases = [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost:6379", "scheme"),
        ("127.0.0.1", "URL"),
        ("http://127.0.0.1:6379", "scheme"),
        ("mysql://user:hunter2@db/0", "scheme"),
        ("redis://", "host"),
        ("redis://:6379", "host"),
        ("redis://user:hunter2@:6379/0", "host"),
        ("redis://127.0.0.1:notaport", "URL"),
        ("redis://user:hunter2@127.0.0.1:99999/0", "URL"),
        ("redis://127.0.0.1:6379/abc", "database"),
        ("redis://user:hunter2@127.0.0.1:6379/70000", "database"),
        ("redis://127.0.0.1:6379/-1", "database"),
        ("redis://127.0.0.1:6379/?db=x", "database"),
        ("redis://[::1", "URL"),
        ("unix://", "socket path"),
        ("redis+unix:///", "socket path"),
        ("redis://user:hunter2@host with space/0", "URL"),
        ("redis://user:hunter2@127.0.0.1:0/0", "port 0"),
        // A query parameter neither impcache nor redis-py reads: a mistyped password was
        // silently not sent, every call refused with NOAUTH at run time (found by a probe).
        (
            "redis://127.0.0.1:1/0?pwd=hunter2",
            "`pwd` (did you mean `password`?)",
        ),
        (
            "redis://127.0.0.1:1/0?passwd=hunter2",
            "`passwd` (did you mean `password`?)",
        ),
        (
            "redis://127.0.0.1:1/0?Password=hunter2",
            "did you mean `password`?",
        ),
        ("redis://127.0.0.1:1/0?dB=3", "`dB` (did you mean `db`?)"),
        ("unix:///tmp/r.sock?pwd=hunter2", "unknown query parameter"),
        ("redis://127.0.0.1:1/0?x=1", "unknown query parameter `x`"),
    ];
    for (dsn, expected) in cases {
        let error = RedisCacheRepository::new(dsn).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, Error::InvalidDsn { .. }),
            "{dsn:?}: {error:?}"
        );
        assert!(
            message.contains(expected),
            "{dsn:?}: `{message}` should mention {expected}"
        );
        for shown in [message, format!("{error:?}")] {
            assert!(
                !shown.contains("hunter2"),
                "{dsn:?}: password shown: {shown}"
            );
        }
        assert!(!error.is_backend_failure());
    }
    // Line breaks in a DSN are escaped in its message, as keys' are (one was shown raw), and in
    // the reason that repeats a decoded part of it, or the `redis` crate's words (a probe).
    let error = RedisCacheRepository::new("redis://127.0.0.1:1/0\nINFO forged").unwrap_err();
    assert!(error.to_string().contains("0\\nINFO forged"), "{error}");
    for dsn in [
        "redis://127.0.0.1:1?db=1%0A2",
        "redis://127.0.0.1:1/0?protocol=%E2%80%AEresp3",
    ] {
        let message = RedisCacheRepository::new(dsn).unwrap_err().to_string();
        assert!(!message.contains(['\n', '\u{202e}']), "{message:?}");
    }
}

/// Settings under which nothing could work are refused when the repository is built, naming
/// the setting, as a bad DSN is: a zero deadline would time out every call.
#[test]
fn settings_that_cannot_work_are_refused_at_build() {
    let dsn = "redis://user:hunter2@127.0.0.1:1/0";
    let cases: [(_, fn(_) -> _); 3] = [
        ("deadline", |b: RedisCacheRepositoryBuilder| {
            b.deadline(Duration::ZERO)
        }),
        ("connect timeout", |b| b.connect_timeout(Duration::ZERO)),
        ("largest value", |b| b.max_value_bytes(0)),
    ];
    for (setting, apply) in cases {
        let error = apply(RedisCacheRepository::builder(dsn))
            .build()
            .unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::InvalidDsn { .. }), "{error:?}");
        assert!(
            message.contains(setting),
            "`{message}` should name {setting}"
        );
        assert!(!message.contains("hunter2"), "password shown: {message}");
    }
    let fine = RedisCacheRepository::builder(dsn)
        .deadline(Duration::from_millis(1))
        .connect_timeout(Duration::from_millis(1))
        .max_value_bytes(1)
        .build();
    assert!(fine.is_ok(), "{fine:?}");
}

#[test]
fn well_formed_dsns_are_accepted_without_connecting() {
    for dsn in [
        "redis://127.0.0.1:1/0",
        "redis://user:hunter2@127.0.0.1:1/15",
        "redis://:hunter2@127.0.0.1:1",
        "redis://127.0.0.1:1/?db=3",
        "unix:///tmp/nothing-here.sock",
        "redis+unix:///tmp/nothing-here.sock?db=2",
        // The `redis` crate's protocol, and redis-py's connection options (ignored), so that
        // one DSN serves both languages.
        "redis://127.0.0.1:1/0?protocol=resp3",
        "redis://127.0.0.1:1/0?socket_timeout=5&socket_connect_timeout=1&health_check_interval=10",
        "redis://127.0.0.1:1/0?max_connections=50&retry_on_timeout=true&client_name=web",
        "redis://127.0.0.1:1/0?lib_name=app&lib_version=1&socket_read_size=65536",
        "redis://127.0.0.1:1/0?ssl_min_version=2&ssl_ciphers=x&ssl_ca_path=/etc/ssl",
    ] {
        let repository = RedisCacheRepository::new(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"));
        assert!(!format!("{repository:?}").contains("hunter2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_are_not_json_or_not_utf8_are_decode_errors_and_stay_untouched() {
    let server = RedisServer::start();
    let cache = redis_cache(&server);
    let mut raw = server.raw();
    let _: () = redis::cmd("SET")
        .arg("in:1:binary")
        .arg(&b"\xff\xfe\x00garbage"[..])
        .query(&mut raw)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("in:1:text")
        .arg("{not json")
        .query(&mut raw)
        .unwrap();
    cache.set("good", &5, 60).await.unwrap();
    for key in ["binary", "text"] {
        let error = cache.get::<String>(key).await.unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{key}: {error:?}");
        assert!(
            error.to_string().contains(&format!("in:1:{key}")),
            "{error}"
        );
        assert!(!error.is_backend_failure());
    }
    // A JSON value of the wrong type is a decode error too.
    let error = cache.get::<String>("good").await.unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    // In get_many, the error names the bad key.
    let error = cache.get_many::<i64>(["good", "text"]).await.unwrap_err();
    assert!(error.to_string().contains("in:1:text"), "{error}");
    // Nothing was changed or removed by the failed reads; the raw bytes are still readable.
    assert_eq!(
        cache.get_raw("binary").await.unwrap().as_deref(),
        Some(&b"\xff\xfe\x00garbage"[..])
    );
    assert_eq!(server.keys(), ["in:1:binary", "in:1:good", "in:1:text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_larger_than_the_limit_are_refused_and_nothing_is_stored() {
    // The repository's own limit: refused before anything is sent.
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .max_value_bytes(1024)
        .build()
        .unwrap();
    let cache = Cache::new(repository);
    let error = cache.set("big", &"x".repeat(2000), 60).await.unwrap_err();
    match &error {
        Error::ValueTooLarge { size, limit, .. } => {
            assert_eq!((*size, *limit), (2002, 1024));
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("too large"), "{error}");
    let error = cache
        .set_many([("small", "x".to_owned()), ("big", "x".repeat(2000))], 60)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ValueTooLarge { .. }), "{error:?}");
    assert!(
        server.keys().is_empty(),
        "nothing stored: {:?}",
        server.keys()
    );

    // The server's limit (`proto-max-bulk-len`): a typed error, nothing stored, and the
    // repository keeps working afterwards.
    let server = RedisServer::start_with(&["--proto-max-bulk-len", "1mb"]);
    let cache = Cache::new(
        RedisCacheRepository::builder(server.url())
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let error = cache
        .set_raw("huge", vec![b'x'; 2 << 20].into(), 60)
        .await
        .unwrap_err();
    eprintln!("2 MiB value against proto-max-bulk-len 1mb: {error}");
    assert!(error.is_backend_failure(), "{error:?}");
    assert!(error.to_string().contains("cache:1:huge"), "{error}");
    assert!(server.keys().is_empty());
    cache.set("after", &1, 60).await.unwrap();
    assert_eq!(cache.get::<i32>("after").await.unwrap(), Some(1));
}

/// Bad keys, values, expiries and patterns, identical on both repositories.
async fn bad_input_is_refused(repository: Arc<dyn CacheRepository>, keys: impl Fn() -> usize) {
    let cache = Cache::builder_shared(repository.clone())
        .key_prefix("in")
        .version(1)
        .build();
    cache.set("kept", &1, 60).await.unwrap();
    assert_eq!(keys(), 1);

    // A 1 MiB key: refused before anything is sent, with a shortened key in the message.
    let huge_key = "k".repeat(1 << 20);
    let error = cache.set(&huge_key, &1, 60).await.unwrap_err();
    assert!(matches!(error, Error::InvalidKey { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.len() < 1000, "message of {} bytes", message.len());
    assert!(message.contains("1048576 bytes"), "{message}");
    assert!(cache.get::<i32>(&huge_key).await.is_err());
    assert!(cache.delete(&huge_key).await.is_err());

    // NaN and infinities: refused (serde_json would silently store `null`).
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let error = cache.set("float", &value, 60).await.unwrap_err();
        assert!(matches!(error, Error::Encode { .. }), "{error:?}");
        assert!(error.to_string().contains("float"), "{error}");
    }
    let error = cache
        .set_many([("f1", 1.0), ("f2", f64::NAN)], 60)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Encode { .. }), "{error:?}");

    // A key holding control characters: escaped in messages (as Rust writes them), so that it
    // cannot forge a log line or a terminal escape; the line and paragraph separators and the
    // bidi overrides too (they were shown raw: found by a probe); other characters, a combining
    // mark included, are shown as they are.
    let hostile = "a`\nWARN forged\r\u{1b}[31m\u{85}\u{2028}\u{2029}\u{202e}e\u{301}é`";
    let shown = "a`\\nWARN forged\\r\\u{1b}[31m\\u{85}\\u{2028}\\u{2029}\\u{202e}e\u{301}é`";
    let long = format!("{hostile}{}", "k".repeat(300));
    for (result, expected) in [
        (
            cache.set(hostile, &f64::NAN, 60).await,
            format!("`{shown}`"),
        ),
        (cache.set(hostile, &1, 0).await, format!("{shown}`")),
        (cache.set(&long, &f64::NAN, 60).await, format!("`{shown}k")),
    ] {
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains(&expected),
            "{message:?} should show {expected:?}"
        );
        assert!(
            !message.contains(['\n', '\r', '\u{1b}', '\u{85}', '\u{2028}', '\u{2029}', '\u{202e}']),
            "{message:?}"
        );
    }
    cache.set(hostile, &"not a number", 60).await.unwrap();
    let message = cache.get::<i32>(hostile).await.unwrap_err().to_string();
    assert!(message.contains(&format!("{shown}`")), "{message:?}");
    cache.delete(hostile).await.unwrap();

    // Expiries of zero, negative, or beyond what Redis accepts.
    for expire in [
        impcache::Expire::from(0),
        impcache::Expire::from(-1),
        impcache::Expire::from(i64::MAX),
        impcache::Expire::from(Duration::ZERO),
        impcache::Expire::from(Duration::MAX),
        impcache::Expire::from(impcache::MAX_EXPIRE + Duration::from_secs(1)),
    ] {
        let error = cache.set("expiring", &1, expire).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidExpire { .. }),
            "{expire:?}: {error:?}"
        );
        assert!(error.to_string().contains("expiring"), "{error}");
    }

    // Unbalanced `[`: refused, nothing deleted.
    for pattern in ["[", "k[ae", "x[^", "ok[a]then["] {
        let error = cache.delete_pattern(pattern).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidPattern { .. }),
            "{pattern}: {error:?}"
        );
        assert!(error.to_string().contains("never closed"), "{error}");
    }
    assert_eq!(keys(), 1, "nothing stored nor removed by refused input");
    assert_eq!(cache.get::<i32>("kept").await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_redis() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    bad_input_is_refused(Arc::new(repository), || server.keys().len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_memory() {
    let repository = MemoryCacheRepository::new();
    let counter = repository.clone();
    bad_input_is_refused(Arc::new(repository), move || counter.entry_count() as usize).await;
}

/// Neighbours whose prefixes or versions contain glob characters.
const NEIGHBOURS: [(&str, &str); 10] = [
    ("a", "1"),
    ("a", "2"),
    ("a*", "1"),
    ("a[1]", "1"),
    ("a?", "1"),
    ("a\\", "1"),
    ("ab", "1"),
    ("a", "1*"),
    ("a", "[1]"),
    ("", ""),
];

async fn delete_pattern_star_stays_in_its_prefix(repository: Arc<dyn CacheRepository>) {
    let caches: Vec<Cache> = NEIGHBOURS
        .iter()
        .map(|(prefix, version)| {
            Cache::builder_shared(repository.clone())
                .key_prefix(*prefix)
                .version(*version)
                .build()
        })
        .collect();
    for (i, victim) in caches.iter().enumerate() {
        for cache in &caches {
            cache.set_many([("k1", 1), ("k2", 2)], 60).await.unwrap();
        }
        assert_eq!(
            victim.delete_pattern("*").await.unwrap(),
            2,
            "{:?} removed more or less than its own keys",
            NEIGHBOURS[i]
        );
        for (j, cache) in caches.iter().enumerate() {
            let values: Vec<Option<i32>> = cache.get_many(["k1", "k2"]).await.unwrap();
            let expected = if i == j {
                [None, None]
            } else {
                [Some(1), Some(2)]
            };
            assert_eq!(
                values, expected,
                "delete_pattern(\"*\") on {:?} touched {:?}",
                NEIGHBOURS[i], NEIGHBOURS[j]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pattern_star_never_touches_a_neighbour_on_redis() {
    let server = RedisServer::start();
    let repository = RedisCacheRepository::new(&server.url()).unwrap();
    delete_pattern_star_stays_in_its_prefix(Arc::new(repository)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_pattern_star_never_touches_a_neighbour_in_memory() {
    delete_pattern_star_stays_in_its_prefix(Arc::new(MemoryCacheRepository::new())).await;
}

/// `connect_timeout(Duration::MAX)` is the longest timeout kept, 100 years, as
/// `deadline(Duration::MAX)` is: the Sentinel repository adds the two, and the task following
/// its failover announcements panicked on the overflow (found by a probe).
#[test]
fn a_connect_timeout_of_duration_max_is_a_hundred_years() {
    let repository = RedisCacheRepository::builder("redis://127.0.0.1:1/0")
        .connect_timeout(Duration::MAX)
        .deadline(Duration::MAX)
        .build()
        .unwrap();
    let shown = format!("{repository:?}");
    let hundred_years = format!("{:?}", impcache::MAX_EXPIRE);
    assert!(
        shown.contains(&format!("connect_timeout: {hundred_years}")),
        "{shown}"
    );
}
