//! Peers on the same machine, the same server and in the same run: the `cached` crate's
//! Redis-backed memoized functions, the Python library and redis-py (subprocesses), and
//! `redis-benchmark`.

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cached::macros::concurrent_cached;
use impcache::Cache;
use impcache_benches::{side_by_side, Contender, Ratio, Sample, Small};
use impcache_tests::RedisServer;

use crate::cases::leaked_cache;
use crate::{count, Config, Results};

const TTL: u64 = 300;

/// The server the `cached` stores connect to (their `create` blocks read it).
static CACHED_URL: OnceLock<String> = OnceLock::new();
/// How long the body of the stampede functions takes.
static SLOW_BODY: OnceLock<Duration> = OnceLock::new();
static CACHED_EXECUTIONS: AtomicU64 = AtomicU64::new(0);
static IMPCACHE_EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// The error type the `cached` functions return.
#[derive(Debug, Clone)]
pub(crate) struct BenchError(String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[concurrent_cached(
    map_error = r##"|e| BenchError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Small>",
    create = r##"{
        cached::AsyncRedisCache::builder("bench-small")
            .ttl(Duration::from_secs(TTL))
            .connection_string(CACHED_URL.get().expect("CACHED_URL"))
            .build()
            .await
            .expect("cached's AsyncRedisCache")
    }"##
)]
async fn cached_small(id: u64) -> Result<Small, BenchError> {
    CACHED_EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    Ok(Small::new(id))
}

#[concurrent_cached(
    map_error = r##"|e| BenchError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Small>",
    create = r##"{
        cached::AsyncRedisCache::builder("bench-slow")
            .ttl(Duration::from_secs(TTL))
            .connection_string(CACHED_URL.get().expect("CACHED_URL"))
            .build()
            .await
            .expect("cached's AsyncRedisCache")
    }"##
)]
async fn cached_slow(id: u64) -> Result<Small, BenchError> {
    CACHED_EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(*SLOW_BODY.get().expect("SLOW_BODY")).await;
    Ok(Small::new(id))
}

/// The memoization a user writes by hand with impcache: `get`, and on a miss run the body and
/// `set` (no single-flight).
async fn impcache_memo<F, Fut>(cache: &Cache, id: u64, body: F) -> impcache::Result<Small>
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = Small>,
{
    let key = format!("memo:{id}");
    if let Some(value) = cache.get::<Small>(&key).await? {
        return Ok(value);
    }
    IMPCACHE_EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    let value = body(id).await;
    cache.set(&key, &value, TTL).await?;
    Ok(value)
}

async fn small_body(id: u64) -> Small {
    Small::new(id)
}

async fn slow_body(id: u64) -> Small {
    tokio::time::sleep(*SLOW_BODY.get().expect("SLOW_BODY")).await;
    Small::new(id)
}

/// Case 7a: the `cached` crate (`#[concurrent_cached(redis = true)]`-style store,
/// `AsyncRedisCache`, MessagePack values) against impcache's hand-written memoization.
pub(crate) async fn cached_crate(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 7a: the cached crate's AsyncRedisCache memoization");
    CACHED_URL.get_or_init(|| server.url());
    SLOW_BODY.get_or_init(|| Duration::from_millis(if config.quick { 50 } else { 200 }));
    let cache = leaked_cache(server);
    const KEYS: u64 = 1_000;
    for id in 0..KEYS {
        cached_small(id).await.expect("prime cached");
        impcache_memo(cache, id, small_body)
            .await
            .expect("prime impcache");
    }
    let imp_hit = Contender {
        name: "impcache memo".to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            count(impcache_memo(cache, (task as u64 * 7_919 + i * 13) % KEYS, small_body).await)
        }),
    };
    let cached_hit = Contender {
        name: "cached crate".to_owned(),
        op: Arc::new(|task: usize, i: u64| async move {
            count(cached_small((task as u64 * 7_919 + i * 13) % KEYS).await)
        }),
    };
    let before = (
        IMPCACHE_EXECUTIONS.load(Ordering::Relaxed),
        CACHED_EXECUTIONS.load(Ordering::Relaxed),
    );
    for &c in &config.concurrencies {
        results.add(
            side_by_side(
                "memoized hit 100B",
                c,
                config.timing,
                &imp_hit,
                &cached_hit,
                None,
            )
            .await,
        );
    }
    let after = (
        IMPCACHE_EXECUTIONS.load(Ordering::Relaxed),
        CACHED_EXECUTIONS.load(Ordering::Relaxed),
    );
    assert_eq!(before, after, "the hit loop must not execute bodies");

    // Misses: every call a new key, so each is GET (miss) + body + SET.
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    let imp_miss = Contender {
        name: "impcache memo".to_owned(),
        op: Arc::new(move |_: usize, _: u64| async move {
            count(impcache_memo(cache, NEXT.fetch_add(1, Ordering::Relaxed), small_body).await)
        }),
    };
    let cached_miss = Contender {
        name: "cached crate".to_owned(),
        op: Arc::new(|_: usize, _: u64| async move {
            count(cached_small(NEXT.fetch_add(1, Ordering::Relaxed)).await)
        }),
    };
    for c in [1, 16] {
        results.add(
            side_by_side(
                "memoized miss 100B",
                c,
                config.timing,
                &imp_miss,
                &cached_miss,
                None,
            )
            .await,
        );
    }

    // Stampede: 20 concurrent first calls on one key.
    let id = 999_999_999;
    let c0 = CACHED_EXECUTIONS.load(Ordering::Relaxed);
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(cached_slow(id))).collect();
    for call in calls {
        call.await.expect("task").expect("cached_slow");
    }
    let cached_runs = CACHED_EXECUTIONS.load(Ordering::Relaxed) - c0;
    let i0 = IMPCACHE_EXECUTIONS.load(Ordering::Relaxed);
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { impcache_memo(cache, id, slow_body).await }))
        .collect();
    for call in calls {
        call.await.expect("task").expect("impcache_memo");
    }
    let impcache_runs = IMPCACHE_EXECUTIONS.load(Ordering::Relaxed) - i0;
    results.note(format!(
        "stampede, 20 concurrent misses on one key ({} ms body): cached crate ran the body {cached_runs} times, \
         hand-written impcache get+set {impcache_runs} times; #[cached] (single-flight): pending",
        SLOW_BODY.get().map_or(0, Duration::as_millis)
    ));
}

/// The Python script and interpreter.
fn python_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/getset.py")
}

/// Case 7b: the Python library impcache 1.0.2 and redis-py asyncio (with orjson, as impcache
/// uses), same keys, payload and concurrency as case 1, as subprocesses.
pub(crate) async fn python(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 7b: Python impcache 1.0.2 and redis-py asyncio");
    if !config.python.exists() {
        results.note(format!(
            "Python peers skipped: {} does not exist (see BENCHMARKS.md for the venv)",
            config.python.display()
        ));
        return;
    }
    let concurrencies: Vec<String> = config.concurrencies.iter().map(usize::to_string).collect();
    let output = tokio::process::Command::new(&config.python)
        .arg(python_script())
        .args(["--url", &server.url()])
        .args(["--concurrency", &concurrencies.join(",")])
        .args([
            "--seconds",
            &format!("{}", config.timing.round.as_secs_f64() * 2.0),
        ])
        .output()
        .await
        .expect("run python");
    if !output.status.success() {
        results.note(format!(
            "Python peers failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
        return;
    }
    let py: Vec<Sample> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let rate = v["ops_per_sec"].as_f64()?;
            let concurrency = v["concurrency"].as_u64()? as usize;
            Some(Sample {
                case: v["case"].as_str()?.to_owned(),
                system: v["system"].as_str()?.to_owned(),
                concurrency,
                ops_per_sec: rate,
                mean_latency_us: concurrency as f64 * 1e6 / rate.max(1e-9),
                note: v["note"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect();
    for sample in &py {
        println!(
            "  {:<28} c={:<4} {:>16} {:>10}/s",
            sample.case,
            sample.concurrency,
            sample.system,
            impcache_benches::human_rate(sample.ops_per_sec)
        );
        // Ratio against Rust impcache measured earlier in this run, same case and concurrency.
        if let Some(rust) = results.samples.iter().find(|s| {
            s.system == "impcache" && s.case == sample.case && s.concurrency == sample.concurrency
        }) {
            results.ratios.push(Ratio {
                case: sample.case.clone(),
                concurrency: sample.concurrency,
                system: "impcache".to_owned(),
                baseline: sample.system.clone(),
                ratio: rust.ops_per_sec / sample.ops_per_sec.max(1e-9),
                target: None,
                spread: (f64::NAN, f64::NAN),
            });
        }
    }
    results.samples.extend(py);
}

/// Case 8: `redis-benchmark` (no pipelining) at the same concurrency: the server's ceiling for
/// one request in flight per connection.
pub(crate) async fn redis_benchmark(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 8: redis-benchmark");
    for &c in &config.concurrencies {
        let n = match (config.quick, c) {
            (true, 1) => 2_000,
            (true, _) => 10_000,
            (false, 1) => 25_000,
            (false, _) => 150_000,
        };
        let output = Command::new("redis-benchmark")
            .args(["-p", &server.port().to_string(), "-t", "get,set"])
            .args([
                "-c",
                &c.to_string(),
                "-n",
                &n.to_string(),
                "-d",
                "100",
                "-r",
                "2000",
            ])
            .args(["--csv"])
            .output();
        let output = match output {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                results.note(format!(
                    "redis-benchmark failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
                return;
            }
            Err(e) => {
                results.note(format!("redis-benchmark not run: {e}"));
                return;
            }
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let (Some(test), Some(rps)) = (
                fields.first(),
                fields.get(1).and_then(|r| r.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let case = match *test {
                "GET" => "get 100B",
                "SET" => "set 100B",
                _ => continue,
            };
            println!(
                "  {case:<28} c={c:<4} {:>16} {:>10}/s",
                "redis-benchmark",
                impcache_benches::human_rate(rps)
            );
            results.samples.push(Sample {
                case: case.to_owned(),
                system: "redis-benchmark".to_owned(),
                concurrency: c,
                ops_per_sec: rps,
                mean_latency_us: c as f64 * 1e6 / rps.max(1e-9),
                note: "no pipelining: one request in flight per client connection".to_owned(),
            });
        }
    }
}
