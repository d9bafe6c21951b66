//! Shared pieces of the impcache benchmarks: the payloads, a closed-loop throughput driver that
//! runs two systems in alternation (so both see the same machine state), and the result records
//! written to `benches/results/`.
//!
//! Only ratios measured in one run mean anything: the machine is shared by the client and the
//! server, and its speed drifts from run to run.

pub mod latency_proxy;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Waits until `cache`'s near cache is active (its tracking connection subscribed), reading a
/// key now and then so that the connection is made; nothing read meanwhile is kept.
pub async fn wait_near_active(cache: &impcache::Cache) {
    while !cache.is_near_cache_active() {
        let _ = cache.get::<Small>("warm").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection with the `redis` crate's client-side cache (`cache-aio`): RESP3 and
/// `CacheConfig::new()` (its default mode, size and lifetime).
pub async fn cache_aio_connection(
    url: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("{url}?protocol=resp3"))?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_cache_config(redis::caching::CacheConfig::new()),
        )
        .await
}

/// A small JSON object, about 100 bytes once encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Small {
    /// An identifier.
    pub id: u64,
    /// A name.
    pub name: String,
    /// An e-mail address.
    pub email: String,
    /// A flag.
    pub active: bool,
    /// A float.
    pub score: f64,
    /// A few short strings.
    pub tags: Vec<String>,
}

impl Small {
    /// The payload for `id`.
    pub fn new(id: u64) -> Self {
        Small {
            id,
            name: format!("user-{id:06}"),
            email: format!("user-{id:06}@example.com"),
            active: id.is_multiple_of(2),
            score: 0.5 + id as f64,
            tags: vec!["a".into(), "bb".into(), "ccc".into()],
        }
    }
}

/// One row of [`Large`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// An identifier.
    pub id: u64,
    /// A label.
    pub label: String,
    /// A value.
    pub value: f64,
}

/// A larger JSON object, about 10 KiB once encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Large {
    /// An identifier.
    pub id: u64,
    /// About 170 rows.
    pub rows: Vec<Row>,
}

impl Large {
    /// The payload for `id`.
    pub fn new(id: u64) -> Self {
        Large {
            id,
            rows: (0..170)
                .map(|i| Row {
                    id: i,
                    label: format!("row-{id}-{i:04}-label"),
                    value: i as f64 * 1.25,
                })
                .collect(),
        }
    }
}

/// The measured rate of one system in one case.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The case, as in the table of `BENCHMARKS.md` (`"get 100B"`).
    pub case: String,
    /// The system (`"impcache"`, `"redis-rs"`, ...).
    pub system: String,
    /// Concurrent tasks (or clients).
    pub concurrency: usize,
    /// Operations per second (for batch cases: calls per second).
    pub ops_per_sec: f64,
    /// Mean latency of one operation, in microseconds (elapsed × concurrency / operations).
    pub mean_latency_us: f64,
    /// Free-form remark (executions counted, a failure, ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Ratio of a system to its baseline in one case.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The case.
    pub case: String,
    /// Concurrency.
    pub concurrency: usize,
    /// The system measured.
    pub system: String,
    /// What it is compared to.
    pub baseline: String,
    /// `system / baseline` throughput: the median of the per-round ratios (each round of one
    /// system is paired with the adjacent round of the other), robust to a burst of noise in
    /// one round.
    pub ratio: f64,
    /// `system / baseline` of the total operations over the total time of all rounds.
    pub ratio_of_totals: f64,
    /// The target, when there is one (`0.95` = at least 95 % of the baseline).
    pub target: Option<f64>,
    /// Smallest and largest ratio over the alternating rounds.
    pub spread: (f64, f64),
}

/// How long to measure.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Unmeasured time before each system's first round.
    pub warmup: Duration,
    /// Length of one round.
    pub round: Duration,
    /// Rounds per system; they alternate A B B A A B ...
    pub rounds: usize,
}

impl Timing {
    /// A few hundred milliseconds per case: a smoke run.
    pub fn quick() -> Self {
        Timing {
            warmup: Duration::from_millis(20),
            round: Duration::from_millis(60),
            rounds: 2,
        }
    }

    /// The full run: many short paired rounds, so that the median ratio shrugs off the noise
    /// of a shared 2-core machine.
    pub fn full() -> Self {
        Timing {
            warmup: Duration::from_millis(150),
            round: Duration::from_millis(200),
            rounds: 12,
        }
    }
}

/// Result of one closed-loop round: operations done and time taken.
#[derive(Debug, Clone, Copy, Default)]
pub struct Round {
    /// Operations completed.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Round {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `op` in `concurrency` tasks, each calling it in a closed loop, for `duration`. `op` gets
/// the task index and the iteration and returns how many operations it did (1, or the batch size
/// when counting keys).
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: Arc<F>) -> Round
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let (stop, total, op) = (Arc::clone(&stop), Arc::clone(&total), Arc::clone(&op));
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                done += op(task, i).await;
                i += 1;
            }
            total.fetch_add(done, Ordering::Relaxed);
        }));
    }
    // The stop signal comes from an OS thread, not a tokio timer: operations that never yield
    // (the memory repository) would keep the runtime's timer from firing.
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            stop.store(true, Ordering::Relaxed);
        })
    };
    for task in tasks {
        // A panicking benchmark task is a bug in the benchmark: surface it.
        if let Err(e) = task.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let _ = stopper.join();
    Round {
        ops: total.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// What a benchmark binary on one throwaway `redis-server` starts with: a 2-worker tokio
/// runtime, the server, and the duration of a round from its first argument (seconds, default 2).
#[derive(Debug)]
pub struct OnRedis {
    /// The runtime to run the benchmark on.
    pub runtime: tokio::runtime::Runtime,
    /// The server, killed on drop.
    pub server: impcache_tests::RedisServer,
    /// The duration of a round.
    pub round: Duration,
}

impl OnRedis {
    /// Reads the round from the command line, builds the runtime and starts the server; the
    /// error says which of the first two failed.
    pub fn start() -> Result<Self, String> {
        let seconds: f64 = match std::env::args().nth(1) {
            None => 2.0,
            Some(arg) => arg
                .parse()
                .map_err(|e| format!("seconds per round: {arg:?}: {e}"))?,
        };
        let round = Duration::try_from_secs_f64(seconds)
            .map_err(|e| format!("seconds per round: {seconds}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("a tokio runtime: {e}"))?;
        Ok(OnRedis {
            runtime,
            server: impcache_tests::RedisServer::start(),
            round,
        })
    }
}

/// Calls per second of `op` from `tasks` tasks, each calling it in a [`closed_loop`] for
/// `duration`, with a key number below `keys`: the `i`-th call of task `t` gets
/// `(t + i) % keys` (the tasks start on different keys).
pub async fn keyed_rate<F, Fut>(tasks: usize, duration: Duration, keys: u64, op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = move |task: usize, i: u64| {
        let call = op((task as u64 + i) % keys);
        async move {
            call.await;
            1
        }
    };
    closed_loop(tasks, duration, Arc::new(op)).await.rate()
}

/// A system under test in a side-by-side comparison: a name and its operation.
pub struct Contender<F> {
    /// The name in the results.
    pub name: String,
    /// The operation (see [`closed_loop`]).
    pub op: Arc<F>,
}

impl<F> std::fmt::Debug for Contender<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("name", &self.name)
            .finish()
    }
}

/// Measures `a` against `b` at `concurrency`, alternating rounds A B B A A B B A ..., and returns
/// their samples and the ratio `a / b`.
pub async fn side_by_side<FA, FutA, FB, FutB>(
    case: &str,
    concurrency: usize,
    timing: Timing,
    a: &Contender<FA>,
    b: &Contender<FB>,
    target: Option<f64>,
) -> (Vec<Sample>, Ratio)
where
    FA: Fn(usize, u64) -> FutA + Send + Sync + 'static,
    FutA: Future<Output = u64> + Send,
    FB: Fn(usize, u64) -> FutB + Send + Sync + 'static,
    FutB: Future<Output = u64> + Send,
{
    closed_loop(concurrency, timing.warmup, Arc::clone(&a.op)).await;
    closed_loop(concurrency, timing.warmup, Arc::clone(&b.op)).await;
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for round in 0..timing.rounds {
        let a_first = round % 2 == 0;
        if a_first {
            ra.push(closed_loop(concurrency, timing.round, Arc::clone(&a.op)).await);
            rb.push(closed_loop(concurrency, timing.round, Arc::clone(&b.op)).await);
        } else {
            rb.push(closed_loop(concurrency, timing.round, Arc::clone(&b.op)).await);
            ra.push(closed_loop(concurrency, timing.round, Arc::clone(&a.op)).await);
        }
    }
    let sample = |name: &str, rounds: &[Round]| {
        let ops: u64 = rounds.iter().map(|r| r.ops).sum();
        let secs: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let rate = ops as f64 / secs.max(1e-9);
        Sample {
            case: case.to_owned(),
            system: name.to_owned(),
            concurrency,
            ops_per_sec: rate,
            mean_latency_us: concurrency as f64 * 1e6 / rate.max(1e-9),
            note: String::new(),
        }
    };
    let (sa, sb) = (sample(&a.name, &ra), sample(&b.name, &rb));
    let per_round: Vec<f64> = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| x.rate() / y.rate().max(1e-9))
        .collect();
    let spread = per_round
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    let ratio = Ratio {
        case: case.to_owned(),
        concurrency,
        system: a.name.clone(),
        baseline: b.name.clone(),
        ratio: median(&per_round),
        ratio_of_totals: sa.ops_per_sec / sb.ops_per_sec.max(1e-9),
        target,
        spread,
    };
    (vec![sa, sb], ratio)
}

/// Formats a rate: `12.3k`, `1.23M`.
pub fn human_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.1}")
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The baseline's Redis connection: one `ConnectionManager` with the redis crate's defaults (TCP
/// settings included, as impcache's connection).
pub async fn raw_connection(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    redis::aio::ConnectionManager::new(client).await
}

/// The hand-written baseline's connection as the guide defines it: one `MultiplexedConnection`
/// with the redis crate's defaults.
pub async fn multiplexed_connection(
    url: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// Stores `raw:{k}` = a [`Small`] as JSON for every `k` below `keys`, by hand: the keys the
/// hand-written reads of [`raw_get_rate`] read.
pub async fn store_raw_smalls(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: u64,
) -> redis::RedisResult<()> {
    for k in 0..keys {
        let json = serde_json::to_vec(&Small::new(k)).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "encode", e.to_string()))
        })?;
        redis::cmd("SET")
            .arg(format!("raw:{k}"))
            .arg(json)
            .arg("EX")
            .arg(3600)
            .exec_async(conn)
            .await?;
    }
    Ok(())
}

/// [`keyed_rate`] of a hand-written `GET` of `raw:{k}` + decode on `conn`: the anchor of the
/// hand-written ceilings. A failed read panics: a broken benchmark must fail loudly.
#[allow(clippy::expect_used)]
pub async fn raw_get_rate(
    conn: &redis::aio::MultiplexedConnection,
    tasks: usize,
    duration: Duration,
    keys: u64,
) -> f64 {
    let conn = conn.clone();
    keyed_rate(tasks, duration, keys, move |k| {
        let mut conn = conn.clone();
        async move {
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg(format!("raw:{k}"))
                .query_async(&mut conn)
                .await
                .expect("a hand-written GET");
            std::hint::black_box(serde_json::from_slice::<Small>(&bytes).expect("a Small"));
        }
    })
    .await
}

/// moka holding JSON bytes with a TTL per entry, as the memory repository needs it (every write
/// has its own expiry): the memory baseline.
pub type MokaPerEntryTtl = moka::sync::Cache<String, (bytes::Bytes, Duration)>;

/// A [`MokaPerEntryTtl`] with the memory repository's capacity and weigher.
pub fn moka_per_entry_ttl() -> MokaPerEntryTtl {
    moka::sync::Cache::builder()
        .max_capacity(impcache::repository::memory::DEFAULT_CAPACITY_BYTES)
        .weigher(|k: &String, v: &(bytes::Bytes, Duration)| {
            u32::try_from(k.len() + v.0.len() + 64).unwrap_or(u32::MAX)
        })
        .expire_after(PerEntryTtl)
        .build()
}

/// moka's per-entry expiry: the TTL stored with each value.
struct PerEntryTtl;

impl moka::Expiry<String, (bytes::Bytes, Duration)> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        value: &(bytes::Bytes, Duration),
        _: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &(bytes::Bytes, Duration),
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes_are_as_advertised() {
        let small = serde_json::to_vec(&Small::new(123_456)).unwrap_or_default();
        let large = serde_json::to_vec(&Large::new(123_456)).unwrap_or_default();
        assert!((90..=130).contains(&small.len()), "{}", small.len());
        assert!((9_500..=11_000).contains(&large.len()), "{}", large.len());
    }
}
