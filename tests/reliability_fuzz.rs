//! Property tests: the glob matcher and the pattern escaping, and a randomized differential test
//! of the memory repository's `delete_pattern` against a real Redis (`SCAN MATCH` + `UNLINK`).
//!
//! Case counts are modest by default; `PROPTEST_CASES=5000` runs more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use impcache::{escape_pattern, glob_match, Cache, CacheRepository, MemoryCacheRepository};
use impcache::{Error, RedisCacheRepository};
use impcache_tests::RedisServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Glob-significant characters and a few plain ones.
const ALPHABET: &[char] = &['a', 'b', '*', '?', '[', ']', '^', '-', '\\', ':'];

fn word(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(ALPHABET), 0..=max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn config(default_cases: u32) -> Config {
    Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// `escape_pattern(lit)` matches `lit` and nothing else.
    #[test]
    fn an_escaped_literal_matches_exactly_itself(lit in word(8), other in word(8)) {
        let pattern = escape_pattern(&lit);
        prop_assert!(glob_match(pattern.as_bytes(), lit.as_bytes()), "{pattern:?} vs {lit:?}");
        prop_assert_eq!(glob_match(pattern.as_bytes(), other.as_bytes()), other == lit,
            "{:?} vs {:?}", pattern, other);
    }

    /// Any Unicode literal too (escaping works on chars, matching on bytes).
    #[test]
    fn an_escaped_unicode_literal_matches_itself(lit in "\\PC{0,12}") {
        prop_assert!(glob_match(escape_pattern(&lit).as_bytes(), lit.as_bytes()));
    }

    /// `*` matches everything; `?` repeated matches every key of that length and no other;
    /// an escaped prefix followed by `*` matches exactly the keys with that prefix.
    #[test]
    fn wildcards_behave(key in word(10), prefix in word(4)) {
        // (Like Redis's `stringmatchlen`, a pattern never matches an empty string by `*`: full
        // keys are never empty, they start with the prefix and version.)
        prop_assume!(!key.is_empty());
        prop_assert!(glob_match(b"*", key.as_bytes()));
        let question = "?".repeat(key.len());
        prop_assert!(glob_match(question.as_bytes(), key.as_bytes()));
        let longer = format!("{question}?");
        prop_assert!(!glob_match(longer.as_bytes(), key.as_bytes()));
        let pattern = format!("{}*", escape_pattern(&prefix));
        prop_assert_eq!(
            glob_match(pattern.as_bytes(), key.as_bytes()),
            key.starts_with(&prefix)
        );
    }

    /// Arbitrary bytes as pattern and key: no panic, no hang (hostile patterns).
    #[test]
    fn arbitrary_bytes_never_panic(
        pattern in proptest::collection::vec(any::<u8>(), 0..64),
        key in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let _ = glob_match(&pattern, &key);
    }
}

/// Pathological patterns return (Redis bounds the `*` recursion the same way).
#[test]
fn pathological_patterns_return() {
    let key = "a".repeat(2000);
    let pattern = "*a".repeat(1500) + "b";
    assert!(!glob_match(pattern.as_bytes(), key.as_bytes()));
}

/// The same keys and random patterns on both repositories: same counts, same keys left.
#[test]
fn memory_delete_pattern_agrees_with_redis() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis: Arc<dyn CacheRepository> =
        Arc::new(RedisCacheRepository::new(&server.url()).unwrap());
    let memory: Arc<dyn CacheRepository> = Arc::new(MemoryCacheRepository::new());
    let round = std::sync::atomic::AtomicU64::new(0);
    let strategy = (proptest::collection::btree_set(word(5), 1..12), word(6));
    let mut runner = TestRunner::new(config(96));
    runner
        .run(&strategy, |(keys, pattern)| {
            // A fresh version per case: the cases never see each other's keys.
            let version =
                (round.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).to_string();
            let on = |repository: &Arc<dyn CacheRepository>| {
                Cache::builder_shared(repository.clone())
                    .key_prefix("fz")
                    .version(version.as_str())
                    .build()
            };
            let (on_redis, on_memory) = (on(&redis), on(&memory));
            let keys: Vec<String> = keys.into_iter().collect();
            let outcome = runtime.block_on(async {
                let entries: Vec<(&str, usize)> =
                    keys.iter().map(|k| k.as_str()).zip(0..).collect();
                on_redis.set_many(entries.clone(), 60).await.unwrap();
                on_memory.set_many(entries, 60).await.unwrap();
                let removed = (
                    on_redis.delete_pattern(&pattern).await,
                    on_memory.delete_pattern(&pattern).await,
                );
                let left = (
                    on_redis.get_many::<usize>(&keys).await.unwrap(),
                    on_memory.get_many::<usize>(&keys).await.unwrap(),
                );
                (removed, left)
            });
            let ((from_redis, from_memory), (left_redis, left_memory)) = outcome;
            match (&from_redis, &from_memory) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "removed by {:?} from {:?}", pattern, keys),
                (Err(Error::InvalidPattern { .. }), Err(Error::InvalidPattern { .. })) => {}
                _ => prop_assert!(
                    false,
                    "{pattern:?}: redis {from_redis:?}, memory {from_memory:?}"
                ),
            }
            prop_assert_eq!(
                left_redis,
                left_memory,
                "left by {:?} in {:?}",
                pattern,
                keys
            );
            Ok(())
        })
        .unwrap();
    eprintln!("{round:?} random patterns agreed");
}
