//! impcache against the same work done by hand: raw redis-rs for Redis, moka for memory.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_benches::{
    moka_per_entry_ttl, side_by_side, Contender, Large, MokaPerEntryTtl, Ratio, Sample, Small,
};
use impcache_tests::RedisServer;
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{count, Config, Results, ERRORS};

/// Keys per payload size in the Redis cases.
const KEYS: u64 = 2_000;
/// TTL of every write, seconds.
const TTL: u64 = 300;

/// Spreads tasks over the key space.
fn pick(task: usize, i: u64, keys: u64) -> u64 {
    (task as u64 * 7_919 + i * 13) % keys
}

/// An impcache `Cache` over a `RedisCacheRepository` with the default settings, leaked so that
/// benchmark closures borrow it without cloning.
pub(crate) fn leaked_cache(server: &RedisServer) -> &'static Cache {
    let repository = RedisCacheRepository::new(&server.url()).expect("repository");
    Box::leak(Box::new(Cache::new(repository)))
}

/// The raw baseline: one `ConnectionManager` with the redis crate's defaults (the same TCP
/// settings as impcache's connection).
pub(crate) async fn raw_connection(server: &RedisServer) -> ConnectionManager {
    impcache_benches::raw_connection(&server.url())
        .await
        .expect("connect")
}

fn hit<T>(value: Result<Option<T>, impl std::fmt::Display>) -> Result<T, String> {
    match value {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err("unexpected miss".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Case 1: `get` and `set` of one value against `GET`/`SET EX` with the same serde_json work.
pub(crate) async fn core(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 1: get/set against raw redis-rs");
    let cache = leaked_cache(server);
    let raw = raw_connection(server).await;
    core_for::<Small>(config, cache, &raw, "100B", "small", Small::new, results).await;
    core_for::<Large>(config, cache, &raw, "10KiB", "large", Large::new, results).await;
}

async fn core_for<T>(
    config: &Config,
    cache: &'static Cache,
    raw: &ConnectionManager,
    size: &str,
    prefix: &'static str,
    make: fn(u64) -> T,
    results: &mut Results,
) where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let values: &'static [T] = Vec::leak((0..KEYS).map(make).collect());
    cache
        .set_many(
            values
                .iter()
                .enumerate()
                .map(|(id, v)| (format!("{prefix}:{id}"), v)),
            TTL,
        )
        .await
        .expect("populate");

    let impcache_get = Contender {
        name: "impcache".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let key = format!("{prefix}:{}", pick(task, i, KEYS));
            count(hit(cache.get::<T>(&key).await))
        }),
    };
    let raw_get = {
        let raw = raw.clone();
        Contender {
            name: "redis-rs".to_owned(),
            op: Arc::new(move |task: usize, i: u64| {
                let mut conn = raw.clone();
                async move {
                    let key = format!("cache:1:{prefix}:{}", pick(task, i, KEYS));
                    let reply: redis::RedisResult<Option<Vec<u8>>> =
                        redis::cmd("GET").arg(&key).query_async(&mut conn).await;
                    count(match reply {
                        Ok(Some(bytes)) => {
                            serde_json::from_slice::<T>(&bytes).map_err(|e| e.to_string())
                        }
                        Ok(None) => Err("unexpected miss".to_owned()),
                        Err(e) => Err(e.to_string()),
                    })
                }
            }),
        }
    };
    let impcache_set = Contender {
        name: "impcache".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let id = pick(task, i, KEYS);
            let key = format!("{prefix}:{id}");
            count(cache.set(&key, &values[id as usize], TTL).await)
        }),
    };
    let raw_set = {
        let raw = raw.clone();
        Contender {
            name: "redis-rs".to_owned(),
            op: Arc::new(move |task: usize, i: u64| {
                let mut conn = raw.clone();
                async move {
                    let id = pick(task, i, KEYS);
                    let key = format!("cache:1:{prefix}:{id}");
                    let bytes = serde_json::to_vec(&values[id as usize]).expect("encode");
                    let reply: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(&key)
                        .arg(bytes)
                        .arg("EX")
                        .arg(TTL)
                        .query_async(&mut conn)
                        .await;
                    count(reply)
                }
            }),
        }
    };
    for &c in &config.concurrencies {
        let case = format!("get {size}");
        results
            .add(side_by_side(&case, c, config.timing, &impcache_get, &raw_get, Some(0.95)).await);
    }
    if size == "100B" {
        // The noise floor: the same system against itself, measured exactly like the others.
        let again = Contender {
            name: "redis-rs, again".to_owned(),
            op: Arc::clone(&raw_get.op),
        };
        for &c in &config.concurrencies {
            let case = "get 100B (A/A: redis-rs against itself)";
            results.add(side_by_side(case, c, config.timing, &raw_get, &again, None).await);
        }
    }
    for &c in &config.concurrencies {
        let case = format!("set {size}");
        results
            .add(side_by_side(&case, c, config.timing, &impcache_set, &raw_set, Some(0.95)).await);
    }
}

/// Case 2: `get_many`/`set_many` against `MGET` and a pipeline of `SET EX`.
pub(crate) async fn batch(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 2: get_many/set_many against MGET / pipelined SET EX");
    let cache = leaked_cache(server);
    let raw = raw_connection(server).await;
    let values: &'static [Small] = Vec::leak((0..KEYS).map(Small::new).collect());
    cache
        .set_many(
            values
                .iter()
                .enumerate()
                .map(|(id, v)| (format!("batch:{id}"), v)),
            TTL,
        )
        .await
        .expect("populate");
    for n in [100u64, 1_000] {
        let start = move |task: usize, i: u64| pick(task, i, KEYS - n);
        let impcache_get = Contender {
            name: "impcache".to_owned(),
            op: Arc::new(move |task: usize, i: u64| async move {
                let s = start(task, i);
                let keys: Vec<String> = (s..s + n).map(|id| format!("batch:{id}")).collect();
                let values = cache.get_many::<Small>(&keys).await;
                count(values.map_err(|e| e.to_string()).and_then(|v| {
                    if v.iter().all(Option::is_some) {
                        Ok(v)
                    } else {
                        Err("unexpected miss".to_owned())
                    }
                }))
            }),
        };
        let raw_get = {
            let raw = raw.clone();
            Contender {
                name: "redis-rs".to_owned(),
                op: Arc::new(move |task: usize, i: u64| {
                    let mut conn = raw.clone();
                    async move {
                        let s = start(task, i);
                        let keys: Vec<String> =
                            (s..s + n).map(|id| format!("cache:1:batch:{id}")).collect();
                        let reply: redis::RedisResult<Vec<Option<Vec<u8>>>> =
                            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
                        count(reply.map_err(|e| e.to_string()).and_then(|values| {
                            values
                                .into_iter()
                                .map(|v| match v {
                                    Some(bytes) => serde_json::from_slice::<Small>(&bytes)
                                        .map_err(|e| e.to_string()),
                                    None => Err("unexpected miss".to_owned()),
                                })
                                .collect::<Result<Vec<_>, _>>()
                        }))
                    }
                }),
            }
        };
        let impcache_set = Contender {
            name: "impcache".to_owned(),
            op: Arc::new(move |task: usize, i: u64| async move {
                let s = start(task, i);
                let entries = (s..s + n).map(|id| (format!("batch:{id}"), &values[id as usize]));
                count(cache.set_many(entries, TTL).await)
            }),
        };
        let raw_set = {
            let raw = raw.clone();
            Contender {
                name: "redis-rs".to_owned(),
                op: Arc::new(move |task: usize, i: u64| {
                    let mut conn = raw.clone();
                    async move {
                        let s = start(task, i);
                        let mut pipe = redis::pipe();
                        for id in s..s + n {
                            let bytes = serde_json::to_vec(&values[id as usize]).expect("encode");
                            pipe.cmd("SET")
                                .arg(format!("cache:1:batch:{id}"))
                                .arg(bytes)
                                .arg("EX")
                                .arg(TTL)
                                .ignore();
                        }
                        let reply: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                        count(reply)
                    }
                }),
            }
        };
        for c in [1, 16] {
            let case = format!("get_many {n}");
            results.add(
                side_by_side(&case, c, config.timing, &impcache_get, &raw_get, Some(0.95)).await,
            );
            let case = format!("set_many {n}");
            results.add(
                side_by_side(&case, c, config.timing, &impcache_set, &raw_set, Some(0.95)).await,
            );
        }
    }
    let trips = check_round_trips(server, cache).await;
    results.note(trips);
}

/// Counts the commands the server saw for one `get_many`/`set_many` of 100 keys: one `MGET`;
/// 100 `SET`s sent as one pipeline (a single write by the client).
async fn check_round_trips(server: &RedisServer, cache: &Cache) -> String {
    let stats = |name: &str| -> u64 {
        let info: String = server.cmd(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (mget, set) = (stats("mget"), stats("set"));
    let keys: Vec<String> = (0..100).map(|id| format!("batch:{id}")).collect();
    let _ = cache.get_many::<Small>(&keys).await;
    let _ = cache
        .set_many(keys.iter().map(|k| (k.as_str(), 1)), TTL)
        .await;
    let (mget2, set2) = (stats("mget"), stats("set"));
    format!(
        "round trips: get_many(100) sent {} MGET; set_many(100) sent {} SET in one pipeline \
         (one write, one read of the replies)",
        mget2 - mget,
        set2 - set
    )
}

/// Case 3: `delete_pattern` removing 100 k of 1 M keys, against a plain SCAN + UNLINK loop.
pub(crate) async fn delete_pattern(config: &Config, results: &mut Results) {
    println!("case 3: delete_pattern against a SCAN + UNLINK loop");
    // Its own server: a million keys would slow the other cases' servers down.
    let server = RedisServer::start();
    let (total, matching): (u64, u64) = if config.quick {
        (100_000, 10_000)
    } else {
        (1_000_000, 100_000)
    };
    let others = (total - matching).to_string();
    let _: String = server.cmd(&["DEBUG", "POPULATE", &others, "other:1", "20"]);
    let cache = leaked_cache(&server);
    let mut raw = raw_connection(&server).await;
    let rounds = if config.quick { 1 } else { 3 };
    let (mut t_imp, mut t_raw) = (Duration::ZERO, Duration::ZERO);
    let populate = || {
        let _: String = server.cmd(&[
            "DEBUG",
            "POPULATE",
            &matching.to_string(),
            "cache:1:del",
            "20",
        ]);
        let size: u64 = server.cmd(&["DBSIZE"]);
        assert_eq!(size, total, "populated");
    };
    for round in 0..rounds * 2 {
        populate();
        let impcache_turn = (round % 4 == 0) || (round % 4 == 3);
        let t = Instant::now();
        let removed = if impcache_turn {
            cache.delete_pattern("del:*").await.expect("delete_pattern")
        } else {
            scan_unlink(&mut raw, "cache:1:del:*").await
        };
        let elapsed = t.elapsed();
        assert_eq!(removed, matching, "removed");
        if impcache_turn {
            t_imp += elapsed;
        } else {
            t_raw += elapsed;
        }
    }
    let (imp, raw_rate) = (
        (matching * rounds) as f64 / t_imp.as_secs_f64(),
        (matching * rounds) as f64 / t_raw.as_secs_f64(),
    );
    let case = format!("delete_pattern {}k of {}k", matching / 1000, total / 1000);
    let sample = |system: &str, rate: f64, t: Duration| Sample {
        case: case.clone(),
        system: system.to_owned(),
        concurrency: 1,
        ops_per_sec: rate,
        mean_latency_us: t.as_secs_f64() * 1e6 / rounds as f64,
        note: "keys removed per second; mean_latency_us is one whole sweep".to_owned(),
    };
    let samples = vec![
        sample("impcache", imp, t_imp),
        sample("SCAN+UNLINK", raw_rate, t_raw),
    ];
    let ratio = Ratio {
        case: case.clone(),
        concurrency: 1,
        system: "impcache".to_owned(),
        baseline: "SCAN+UNLINK".to_owned(),
        ratio: imp / raw_rate,
        ratio_of_totals: imp / raw_rate,
        target: Some(1.0),
        spread: (imp / raw_rate, imp / raw_rate),
    };
    println!(
        "  one sweep: impcache {:.0} ms, SCAN+UNLINK loop {:.0} ms",
        t_imp.as_secs_f64() * 1e3 / rounds as f64,
        t_raw.as_secs_f64() * 1e3 / rounds as f64
    );
    results.add((samples, ratio));
}

/// The plain loop: `SCAN cursor MATCH p COUNT 1000`, then `UNLINK` what it returned, until the
/// cursor is 0. The same batch size as impcache, one round trip after another.
async fn scan_unlink(conn: &mut ConnectionManager, pattern: &str) -> u64 {
    let mut cursor = 0u64;
    let mut removed = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(conn)
                .await
                .expect("UNLINK");
            removed += n;
        }
        if next == 0 {
            return removed;
        }
        cursor = next;
    }
}

/// Case 6: the memory repository against moka used directly with the same JSON work: with a TTL
/// per entry as impcache's API needs (the target), with one TTL for all entries (cheaper, and
/// not the same cache), and holding typed values (no JSON at all).
pub(crate) async fn memory(config: &Config, results: &mut Results) {
    println!("case 6: memory repository against moka");
    let cache: &'static Cache = Box::leak(Box::new(Cache::new(MemoryCacheRepository::new())));
    let moka_ttl: &'static MokaPerEntryTtl = Box::leak(Box::new(moka_per_entry_ttl()));
    let moka_bytes: &'static moka::sync::Cache<String, Bytes> = Box::leak(Box::new(
        moka::sync::Cache::builder()
            .max_capacity(impcache::repository::memory::DEFAULT_CAPACITY_BYTES)
            .weigher(|k: &String, v: &Bytes| {
                u32::try_from(k.len() + v.len() + 64).unwrap_or(u32::MAX)
            })
            .time_to_live(Duration::from_secs(TTL))
            .build(),
    ));
    let moka_typed: &'static moka::sync::Cache<String, Small> = Box::leak(Box::new(
        moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(Duration::from_secs(TTL))
            .build(),
    ));
    let values: &'static [Small] = Vec::leak((0..KEYS).map(Small::new).collect());
    for (id, v) in values.iter().enumerate() {
        cache
            .set(&format!("small:{id}"), v, TTL)
            .await
            .expect("set");
        moka_bytes.insert(
            format!("cache:1:small:{id}"),
            Bytes::from(serde_json::to_vec(v).expect("encode")),
        );
        moka_typed.insert(format!("cache:1:small:{id}"), v.clone());
        moka_ttl.insert(
            format!("cache:1:small:{id}"),
            (
                Bytes::from(serde_json::to_vec(v).expect("encode")),
                Duration::from_secs(TTL),
            ),
        );
    }
    let impcache_get = Contender {
        name: "impcache memory".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let key = format!("small:{}", pick(task, i, KEYS));
            count(hit(cache.get::<Small>(&key).await))
        }),
    };
    let moka_ttl_get = Contender {
        name: "moka+serde_json".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let key = format!("cache:1:small:{}", pick(task, i, KEYS));
            count(match moka_ttl.get(&key) {
                Some((bytes, _)) => {
                    serde_json::from_slice::<Small>(&bytes).map_err(|e| e.to_string())
                }
                None => Err("unexpected miss".to_owned()),
            })
        }),
    };
    let moka_get = Contender {
        name: "moka+serde_json, one TTL".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let key = format!("cache:1:small:{}", pick(task, i, KEYS));
            count(match moka_bytes.get(&key) {
                Some(bytes) => serde_json::from_slice::<Small>(&bytes).map_err(|e| e.to_string()),
                None => Err("unexpected miss".to_owned()),
            })
        }),
    };
    let moka_typed_get = Contender {
        name: "moka typed".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let key = format!("cache:1:small:{}", pick(task, i, KEYS));
            count(moka_typed.get(&key).ok_or("unexpected miss"))
        }),
    };
    let impcache_set = Contender {
        name: "impcache memory".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let id = pick(task, i, KEYS);
            count(
                cache
                    .set(&format!("small:{id}"), &values[id as usize], TTL)
                    .await,
            )
        }),
    };
    let moka_ttl_set = Contender {
        name: "moka+serde_json".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let id = pick(task, i, KEYS);
            let bytes = serde_json::to_vec(&values[id as usize]).expect("encode");
            moka_ttl.insert(
                format!("cache:1:small:{id}"),
                (Bytes::from(bytes), Duration::from_secs(TTL)),
            );
            1
        }),
    };
    let moka_set = Contender {
        name: "moka+serde_json, one TTL".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let id = pick(task, i, KEYS);
            let bytes = serde_json::to_vec(&values[id as usize]).expect("encode");
            moka_bytes.insert(format!("cache:1:small:{id}"), Bytes::from(bytes));
            1
        }),
    };
    for c in [1, 16] {
        let timing = config.timing;
        let get = "memory get 100B";
        results.add(side_by_side(get, c, timing, &impcache_get, &moka_ttl_get, Some(0.9)).await);
        let set = "memory set 100B";
        results.add(side_by_side(set, c, timing, &impcache_set, &moka_ttl_set, Some(0.9)).await);
        let get = "memory get 100B (moka, one TTL)";
        results.add(side_by_side(get, c, timing, &impcache_get, &moka_get, None).await);
        let set = "memory set 100B (moka, one TTL)";
        results.add(side_by_side(set, c, timing, &impcache_set, &moka_set, None).await);
        results.add(
            side_by_side(
                "memory get 100B (typed moka)",
                c,
                config.timing,
                &impcache_get,
                &moka_typed_get,
                None,
            )
            .await,
        );
    }
    black_box(ERRORS.load(std::sync::atomic::Ordering::Relaxed));
}
