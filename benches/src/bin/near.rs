//! The near cache (issue 14), side by side in one run on a throwaway `redis-server`:
//!
//! - hot-key `get` of 100 keys holding a `Small` JSON object (~100 B), at 1 and 64 tasks:
//!   impcache with a near cache, impcache without, the plain `redis` crate (a
//!   `MultiplexedConnection` with its defaults, `GET` + `serde_json`), the `redis` crate's own
//!   client-side cache (`cache-aio`: a RESP3 `MultiplexedConnection` with a `CacheConfig`, `GET` +
//!   `serde_json`), moka + `serde_json`, and impcache's memory repository; rates and ratios
//!   against the plain `redis` crate (the anchor);
//! - the invalidation delay: another client `SET`s a near-cached key, time until the reader sees
//!   the new value (p50/p99 over many samples, loopback);
//! - a mix of reads and writes over 10,000 keys chosen with a Zipf law (s = 1), at 99:1, 90:10
//!   and 50:50, with and without the near cache, at 64 tasks.
//!
//! `--case hot`: the hot-key table alone (to compare two builds).
//! `--case latency`: the hot-key (network readers only) and Zipf tables again with every
//! connection through a [`LatencyProxy`] adding 0.25 ms each way (a 0.5 ms round trip).
//! `--case http`: `CacheLayer` hits through a near-cached `Cache` against an axum handler returning
//! the same bytes from memory and one doing a raw `GET`, over TCP with a hyper client, at 1 and 64
//! connections.
//!
//! Every cell is the median of 3 alternating rounds (`--rounds N` for more), with the spread
//! (min–max) beside it.
//!
//! usage: `cargo run --release -p impcache-benches --bin near [-- --seconds S] [--rounds N] [--case direct|hot|latency|http]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use impcache::{Cache, MemoryCacheRepository, NearCache, RedisCacheRepository};
use impcache_benches::latency_proxy::LatencyProxy;
use impcache_benches::Small;
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use redis::aio::MultiplexedConnection;

const KEYS: u64 = 100;
/// Alternating rounds per cell (`--rounds N`, default 3): more rounds give a steadier median on
/// a busy machine.
static ROUNDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(3);

fn rounds() -> usize {
    ROUNDS.load(Ordering::Relaxed)
}
/// The latency proxy's delay, each way.
const ONE_WAY: Duration = Duration::from_micros(250);

fn main() {
    let mut seconds = 1.0;
    let mut case = String::from("direct");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds S");
            }
            "--case" => case = args.next().expect("--case direct|hot|latency|http"),
            "--rounds" => {
                let rounds: usize = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds N");
                ROUNDS.store(rounds, Ordering::Relaxed);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let window = Duration::from_secs_f64(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = RedisServer::start();
        match case.as_str() {
            "direct" => direct(&server, window).await,
            "hot" => hot(&server, window).await,
            "latency" => latency(&server, window).await,
            "http" => http(&server, window).await,
            other => panic!("unknown case {other}"),
        }
    });
}

/// Runs `op(i)` on `tasks` tasks for `window`; operations per second.
async fn rate<F, Fut>(tasks: usize, window: Duration, op: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (op, stop, count) = (op.clone(), Arc::clone(&stop), Arc::clone(&count));
        handles.push(tokio::spawn(async move {
            let mut i = task as u64 * 7;
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                op(i).await;
                i = i.wrapping_add(1);
                done += 1;
                if done % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            count.fetch_add(done, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

/// `median (min–max)` of a cell's rounds.
/// The table's rows: each system's median (spread) at the two concurrencies and its ratio to the
/// first row's (the anchor's).
fn print_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a [Vec<f64>; 2])>) {
    let mut anchor = None;
    for (name, result) in rows {
        let [low, high] = [median(&result[0]), median(&result[1])];
        let [first_low, first_high] = *anchor.get_or_insert([low, high]);
        println!(
            "| {name} | {} | {:.2}× | {} | {:.2}× |",
            cell(&result[0]),
            low / first_low,
            cell(&result[1]),
            high / first_high
        );
    }
}

fn cell(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!(
        "{} ({}–{})",
        human(median(values)),
        impcache_benches::human_rate(min),
        impcache_benches::human_rate(max)
    )
}

/// Per-round ratios `a[r] / b[r]`, formatted, and their median: each round's two rates were
/// measured seconds apart, so a ratio of a pair cancels the slow drifts of a shared machine's load.
fn round_ratios(a: &[f64], b: &[f64]) -> String {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!("{} (median {:.2})", listed.join(", "), median(&ratios))
}

/// What the hot-key table reads with.
struct Readers {
    plain: MultiplexedConnection,
    cache_aio: MultiplexedConnection,
    remote: Cache,
    near: Cache,
    /// moka + the memory repository; `None` through the latency proxy (they never touch it).
    local: Option<(moka::sync::Cache<String, Bytes>, Cache)>,
    keys: Arc<Vec<String>>,
    full: Arc<Vec<String>>,
}

/// The readers of the hot-key table, connected to `url`; the keys are written through `writer`.
async fn readers(url: &str, writer: &Cache, local: bool) -> Readers {
    let near = Cache::builder(RedisCacheRepository::new(url).unwrap())
        .near_cache(NearCache::new())
        .build();
    let remote = Cache::new(RedisCacheRepository::new(url).unwrap());
    let plain = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The `redis` crate's client-side cache: RESP3, `CacheMode::All`, its default size and TTL.
    let cache_aio = impcache_benches::cache_aio_connection(url).await.unwrap();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("small:{i}")).collect());
    let full: Arc<Vec<String>> = Arc::new(keys.iter().map(|k| near.make_key(k)).collect());
    let memory = Cache::new(MemoryCacheRepository::new());
    let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
        .max_capacity(64 * 1024 * 1024)
        .weigher(|k: &String, v: &Bytes| (k.len() + v.len()) as u32)
        .build();
    for (i, key) in keys.iter().enumerate() {
        let value = Small::new(i as u64);
        writer.set(key, &value, 3600).await.unwrap();
        memory.set(key, &value, 3600).await.unwrap();
        moka.insert(
            full[i].clone(),
            Bytes::from(serde_json::to_vec(&value).unwrap()),
        );
    }
    impcache_benches::wait_near_active(&near).await;
    for (key, full) in keys.iter().zip(full.iter()) {
        let _: Small = near.get(key).await.unwrap().unwrap();
        let mut conn = cache_aio.clone();
        let _: Vec<u8> = redis::cmd("GET")
            .arg(full)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    Readers {
        plain,
        cache_aio,
        remote,
        near,
        local: local.then_some((moka, memory)),
        keys,
        full,
    }
}

/// One round of reader `c` (an index into [`HOT_NAMES`]) at `tasks`.
async fn hot_rate(readers: &Readers, c: usize, tasks: usize, window: Duration) -> f64 {
    let keys = Arc::clone(&readers.keys);
    let full = Arc::clone(&readers.full);
    match c {
        0 | 1 => {
            let conn = if c == 0 {
                readers.plain.clone()
            } else {
                readers.cache_aio.clone()
            };
            rate(tasks, window, move |i| {
                let mut conn = conn.clone();
                let full = Arc::clone(&full);
                async move {
                    let bytes: Vec<u8> = redis::cmd("GET")
                        .arg(&full[(i % KEYS) as usize])
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    std::hint::black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
                }
            })
            .await
        }
        2 | 3 | 5 => {
            let cache = match c {
                2 => readers.remote.clone(),
                3 => readers.near.clone(),
                _ => readers.local.as_ref().unwrap().1.clone(),
            };
            rate(tasks, window, move |i| {
                let cache = cache.clone();
                let keys = Arc::clone(&keys);
                async move {
                    let v: Small = cache
                        .get(&keys[(i % KEYS) as usize])
                        .await
                        .unwrap()
                        .unwrap();
                    std::hint::black_box(v);
                }
            })
            .await
        }
        _ => {
            let moka = readers.local.as_ref().unwrap().0.clone();
            rate(tasks, window, move |i| {
                let moka = moka.clone();
                let full = Arc::clone(&full);
                async move {
                    let bytes = moka.get(&full[(i % KEYS) as usize]).unwrap();
                    std::hint::black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
                }
            })
            .await
        }
    }
}

const HOT_NAMES: [&str; 6] = [
    "`redis` crate, plain `MultiplexedConnection` (anchor)",
    "`redis` crate `cache-aio` (RESP3 + `CacheConfig::new()`)",
    "impcache `Cache::get`, Redis, no near cache",
    "impcache `Cache::get`, Redis + near cache",
    "moka `sync::Cache` of bytes + `serde_json`",
    "impcache memory repository",
];

/// The hot-key table: every reader at 1 and 64 tasks, [`rounds`] alternating rounds.
async fn hot_keys(readers: &Readers, window: Duration) {
    let count = if readers.local.is_some() { 6 } else { 4 };
    println!("## Hot-key get, {KEYS} keys, `Small` JSON, median (min–max) of {} alternating rounds of {window:?}\n", rounds());
    println!("| reader | 1 task | ratio | 64 tasks | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let mut results = vec![[Vec::new(), Vec::new()]; count];
    for _ in 0..rounds() {
        for (t, tasks) in [1usize, 64].into_iter().enumerate() {
            for (c, result) in results.iter_mut().enumerate() {
                result[t].push(hot_rate(readers, c, tasks, window).await);
            }
        }
    }
    print_rows(HOT_NAMES.iter().copied().zip(&results));
    println!();
    for t in 0..2 {
        let tasks = [1, 64][t];
        println!(
            "- {tasks} task(s), per round: near ÷ plain {}",
            round_ratios(&results[3][t], &results[0][t])
        );
        println!(
            "- {tasks} task(s), per round: near ÷ cache-aio {}",
            round_ratios(&results[3][t], &results[1][t])
        );
        if count == 6 {
            println!(
                "- {tasks} task(s), per round: near ÷ moka + serde_json {}",
                round_ratios(&results[3][t], &results[4][t])
            );
        }
    }
    println!(
        "\nnear cache during the run: {:?}; cache-aio: {:?}\n",
        readers.near.near_cache_stats(),
        readers.cache_aio.get_cache_statistics()
    );
}

/// Invalidation delay: another client writes, the reader polls until it sees the value.
async fn invalidation_delay(near: &Cache, url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut writer = client.get_multiplexed_async_connection().await.unwrap();
    let mut delays = Vec::new();
    for n in 0..2000u64 {
        // Held locally first.
        let before = near.near_cache_stats().hits;
        let _: Option<i64> = near.get("delay").await.unwrap_or(None);
        if n > 0 && near.near_cache_stats().hits == before {
            let _: Option<i64> = near.get("delay").await.unwrap_or(None);
        }
        let started = Instant::now();
        let _: () = redis::cmd("SET")
            .arg(near.make_key("delay"))
            .arg(n.to_string())
            .query_async(&mut writer)
            .await
            .unwrap();
        let sent = started.elapsed();
        loop {
            if near.get::<i64>("delay").await.unwrap() == Some(n as i64) {
                break;
            }
        }
        delays.push((started.elapsed().saturating_sub(sent)).as_secs_f64() * 1e6);
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "## Invalidation delay (another client's SET acknowledged → the near-cached reader sees it), {} samples\n\np50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (a read polling in a loop; loopback)\n",
        delays.len(),
        pct(0.50),
        pct(0.99),
        delays[delays.len() - 1]
    );
}

/// Zipf mixes over 10k keys, without and with the near cache.
async fn zipf(remote: &Cache, near: &Cache, window: Duration) {
    const MIX_KEYS: usize = 10_000;
    let weights: Vec<f64> = (1..=MIX_KEYS).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(MIX_KEYS);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let cdf = Arc::new(cdf);
    let mix_keys: Arc<Vec<String>> = Arc::new((0..MIX_KEYS).map(|i| format!("mix:{i}")).collect());
    remote
        .set_many(mix_keys.iter().map(|k| (k.as_str(), Small::new(1))), 3600)
        .await
        .unwrap();
    println!(
        "## Zipf (s = 1) reads:writes over {MIX_KEYS} keys, 64 tasks, median (min–max) of {} alternating rounds after one uncounted warm-up round each\n",
        rounds()
    );
    println!("| mix | without near cache | with near cache | ratio | per round |");
    println!("|---|---:|---:|---:|---|");
    for reads_per_100 in [99u64, 90, 50] {
        let mut rates = [Vec::new(), Vec::new()];
        // One round of each first, not counted: the near cache fills with this mix's hot keys.
        for round in 0..=rounds() {
            for (c, cache) in [remote.clone(), near.clone()].into_iter().enumerate() {
                let (cdf, mix_keys) = (Arc::clone(&cdf), Arc::clone(&mix_keys));
                rates[c].push(
                    rate(64, window, move |i| {
                        let cache = cache.clone();
                        let (cdf, mix_keys) = (Arc::clone(&cdf), Arc::clone(&mix_keys));
                        async move {
                            // A cheap, well-spread pseudo-random number from the counter.
                            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
                            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                            let rank = cdf.partition_point(|&p| p < u).min(MIX_KEYS - 1);
                            let key = &mix_keys[rank];
                            if x % 100 < reads_per_100 {
                                let v: Option<Small> = cache.get(key).await.unwrap();
                                std::hint::black_box(v);
                            } else {
                                cache.set(key, &Small::new(i), 3600).await.unwrap();
                            }
                        }
                    })
                    .await,
                );
                if round == 0 {
                    rates[c].clear();
                }
            }
        }
        println!(
            "| {reads_per_100}:{} | {} | {} | {:.2}× | {} |",
            100 - reads_per_100,
            cell(&rates[0]),
            cell(&rates[1]),
            median(&rates[1]) / median(&rates[0]),
            round_ratios(&rates[1], &rates[0])
        );
    }
    println!("\nnear cache at the end: {:?}", near.near_cache_stats());
}

/// Loopback: the hot-key table, the invalidation delay and the Zipf mixes.
async fn direct(server: &RedisServer, window: Duration) {
    let url = server.url();
    let writer = Cache::new(RedisCacheRepository::new(&url).unwrap());
    let readers = readers(&url, &writer, true).await;
    hot_keys(&readers, window).await;
    invalidation_delay(&readers.near, &url).await;
    zipf(&readers.remote, &readers.near, window).await;
}

/// The hot-key table alone (`--case hot`): for comparing two builds of the near cache's hit.
async fn hot(server: &RedisServer, window: Duration) {
    let url = server.url();
    let writer = Cache::new(RedisCacheRepository::new(&url).unwrap());
    let readers = readers(&url, &writer, true).await;
    hot_keys(&readers, window).await;
}

/// The hot-key and Zipf tables with every connection through a 0.5 ms round trip.
async fn latency(server: &RedisServer, window: Duration) {
    let proxy = LatencyProxy::start(server.port(), ONE_WAY).unwrap();
    let url = proxy.url();
    // The emulated round trip as a client sees it: `PING`s in turn through the proxy. The proxy's
    // threads and hops add to its delay: lower it until the median round trip is 2 × `ONE_WAY`.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let target = (2 * ONE_WAY).as_secs_f64() * 1e6;
    let mut trips = Vec::new();
    for attempt in 0..6 {
        trips.clear();
        for _ in 0..300 {
            let started = Instant::now();
            let () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            trips.push(started.elapsed().as_secs_f64() * 1e6);
        }
        trips.sort_by(f64::total_cmp);
        let p50 = trips[trips.len() / 2];
        if attempt == 5 || (p50 - target).abs() < 25.0 {
            break;
        }
        let adjusted = proxy.one_way().as_secs_f64() * 1e6 + (target - p50) / 2.0;
        proxy.set_one_way(Duration::from_secs_f64(adjusted.max(0.0) / 1e6));
    }
    println!(
        "# Through a latency proxy ({:?} each way set, calibrated for a {target:.0} µs round trip): PING round trip p50 {:.0} µs, p99 {:.0} µs (300 in turn)\n",
        proxy.one_way(),
        trips[trips.len() / 2],
        trips[trips.len() * 99 / 100]
    );
    let writer = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
    let readers = readers(&url, &writer, false).await;
    hot_keys(&readers, window).await;
    zipf(&readers.remote, &readers.near, window).await;
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Responses of the cached routes that were not hits once warmed up.
static NOT_HIT: AtomicU64 = AtomicU64::new(0);

fn body_of(id: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&Small::new(id)).unwrap())
}

/// The limit: the same bytes from process memory.
async fn static_body(
    State(bodies): State<Arc<Vec<Bytes>>>,
    Path(id): Path<u64>,
) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    (
        [(CONTENT_TYPE, "application/json")],
        bodies[(id % KEYS) as usize].clone(),
    )
}

async fn raw_get(
    State(conn): State<MultiplexedConnection>,
    Path(id): Path<u64>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Bytes), axum::http::StatusCode> {
    let mut conn = conn;
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("http:{id}"))
        .query_async(&mut conn)
        .await
        .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
    match value {
        Some(bytes) => Ok(([(CONTENT_TYPE, "application/json")], Bytes::from(bytes))),
        None => Err(axum::http::StatusCode::NOT_FOUND),
    }
}

async fn fetch(client: &HttpClient, uri: hyper::Uri, expect_hit: bool) {
    let response = client.get(uri).await.unwrap();
    assert_eq!(response.status(), 200);
    if expect_hit
        && response
            .headers()
            .get(impcache_tower::CACHE_STATUS)
            .is_none_or(|v| !v.as_bytes().starts_with(b"impcache; hit"))
    {
        NOT_HIT.fetch_add(1, Ordering::Relaxed);
    }
    let body = response.into_body().collect().await.unwrap();
    std::hint::black_box(body.to_bytes());
}

/// `CacheLayer` hits (near-cached `Cache`, and a plain one) against a static handler and a raw
/// `GET` handler, over TCP, at 1 and 64 connections.
async fn http(server: &RedisServer, window: Duration) {
    let url = server.url();
    let near = Cache::builder(RedisCacheRepository::new(&url).unwrap())
        .near_cache(NearCache::new())
        .build();
    let remote = Cache::new(RedisCacheRepository::new(&url).unwrap());
    let memory = Cache::new(MemoryCacheRepository::new());
    // The near-cached layer without its optional response headers (no `Cache-Status`, no ETag).
    let lean = CacheLayer::new(near.clone())
        .expire(3600)
        .namespace("lean")
        .status_header(impcache_tower::StatusHeader::None)
        .compute_etag(false);
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..KEYS).map(body_of).collect());
    {
        let mut conn = conn.clone();
        for id in 0..KEYS {
            let () = redis::cmd("SET")
                .arg(format!("http:{id}"))
                .arg(bodies[id as usize].to_vec())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    impcache_benches::wait_near_active(&near).await;
    let app = Router::new()
        .route("/static/{id}", get(static_body))
        .merge(
            Router::new()
                .route("/near/{id}", get(static_body))
                .route_layer(CacheLayer::new(near.clone()).expire(3600).namespace("near")),
        )
        .merge(
            Router::new()
                .route("/remote/{id}", get(static_body))
                .route_layer(CacheLayer::new(remote).expire(3600).namespace("remote")),
        )
        .merge(
            Router::new()
                .route("/memory/{id}", get(static_body))
                .route_layer(CacheLayer::new(memory).expire(3600).namespace("memory")),
        )
        .merge(
            Router::new()
                .route("/lean/{id}", get(static_body))
                .route_layer(lean),
        )
        .with_state(Arc::clone(&bodies))
        .merge(
            Router::new()
                .route("/raw/{id}", get(raw_get))
                .with_state(conn),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let uris = |route: &str| -> Arc<Vec<hyper::Uri>> {
        Arc::new(
            (0..KEYS)
                .map(|id| format!("http://{addr}/{route}/{id}").parse().unwrap())
                .collect(),
        )
    };
    let routes = [
        (
            "static handler (bytes from memory; anchor)",
            uris("static"),
            false,
        ),
        (
            "raw `GET` handler (one `MultiplexedConnection`)",
            uris("raw"),
            false,
        ),
        ("`CacheLayer` hit, Redis + near cache", uris("near"), true),
        (
            "`CacheLayer` hit, Redis, no near cache",
            uris("remote"),
            true,
        ),
        ("`CacheLayer` hit, memory repository", uris("memory"), true),
        (
            "`CacheLayer` hit, Redis + near cache, no `Cache-Status` / ETag",
            uris("lean"),
            false,
        ),
    ];
    // Warm the cached routes: every URL once (misses stored), then once more (held locally).
    for _ in 0..3 {
        for (_, uris, _) in &routes[2..] {
            for uri in uris.iter() {
                fetch(&client, uri.clone(), false).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = NOT_HIT.load(Ordering::Relaxed);
    let hits_before = near.near_cache_stats().hits;
    println!("## HTTP GET through axum over loopback TCP, hyper client, {KEYS} URLs, `Small` JSON body, median (min–max) of {} alternating rounds of {window:?}\n", rounds());
    println!("| route | 1 connection | ratio | 64 connections | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let mut results = vec![[Vec::new(), Vec::new()]; routes.len()];
    for _ in 0..rounds() {
        for (t, tasks) in [1usize, 64].into_iter().enumerate() {
            for (r, (_, uris, expect_hit)) in routes.iter().enumerate() {
                let (client, uris, expect_hit) = (client.clone(), Arc::clone(uris), *expect_hit);
                results[r][t].push(
                    rate(tasks, window, move |i| {
                        let client = client.clone();
                        let uri = uris[(i % KEYS) as usize].clone();
                        async move { fetch(&client, uri, expect_hit).await }
                    })
                    .await,
                );
            }
        }
    }
    print_rows(routes.iter().map(|(name, _, _)| *name).zip(&results));
    println!();
    for t in 0..2 {
        println!(
            "- {} connection(s), per round: near-cached layer hit ÷ static {}",
            [1, 64][t],
            round_ratios(&results[2][t], &results[0][t])
        );
    }
    println!(
        "\nresponses of the cached routes that were not hits: {}; near cache hits during the run: {}; {:?}",
        NOT_HIT.load(Ordering::Relaxed) - before,
        near.near_cache_stats().hits - hits_before,
        near.near_cache_stats()
    );
    server_task.abort();
}
