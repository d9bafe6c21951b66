//! Runs one operation `n` times, for counting its CPU instructions with callgrind
//! (deterministic, unlike timings on a shared 2-core machine): impcache and the same work by
//! hand, against a throwaway `redis-server` (not traced) or in memory.
//!
//! `benches/op-cost.sh` runs every operation under callgrind at `n = 0` and `n = N` and prints the
//! difference per operation. By hand: `op-cost <operation> <n>`; `op-cost list` names them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use impcache::{Cache, MemoryCacheRepository, RedisCacheRepository};
use impcache_benches::Small;
use impcache_tests::RedisServer;

const KEYS: u64 = 1_000;
const TTL: u64 = 300;
const BATCH: u64 = 100;

const OPERATIONS: &[&str] = &[
    "get",
    "raw-get",
    "set",
    "raw-set",
    "get-many",
    "raw-mget",
    "set-many",
    "raw-pipeline",
    "memory-get",
    "moka-get",
    "near-get",
    "cache-aio-get",
    "memory-set",
    "moka-set",
    "moka-ttl-get",
    "moka-ttl-set",
    "memo-hit",
    "memo-hit-template",
    "get-or-set-hit",
    "fresh-hit",
    "tagged-hit",
    "near-get-or-set-hit",
    "near-fresh-hit",
    "near-tagged-hit",
    "near-get-tagged",
    "near-memo-fresh-hit",
    "http-cached",
    "http-cached-lean",
    "http-cached-stale",
    "http-cached-tagged",
    "http-raw",
    "http-cached-near",
    "http-static",
    "concurrent-set-impcache",
    "concurrent-set-raw",
    "concurrent-http-cached",
    "concurrent-http-raw",
    "concurrent-http-cached-near",
    "concurrent-http-static",
    "one-client-http-cached-near",
    "one-client-http-static",
    "two-thread-memory-get",
    "two-thread-moka-ttl-get",
];

type MokaTtl = impcache_benches::MokaPerEntryTtl;

/// A runtime of two worker threads (the machine's two cores), for the multi-threaded operations.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `near-get`: a `Cache` with a near cache holding every key (issue 14).
static NEAR: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
/// `cache-aio-get`: the `redis` crate's client-side cache (`cache-aio`), holding every key.
static CACHE_AIO: std::sync::OnceLock<redis::aio::MultiplexedConnection> =
    std::sync::OnceLock::new();

/// The in-memory cache of the `memo-hit*` operations.
static MEMO: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

fn memo() -> &'static Cache {
    MEMO.get_or_init(|| Cache::new(MemoryCacheRepository::new()))
}

/// A `#[cached]` hit with the default key layout (module path, function, JSON arguments).
#[impcache::cached(expire = 300, cache = memo())]
async fn memo_small(id: u64, name: &str) -> Small {
    black_box(name);
    Small::new(id)
}

/// A `#[cached]` hit with a key template.
#[impcache::cached(expire = 300, cache = memo(), key = "m:{name}:{id}")]
async fn memo_template(id: u64, name: &str) -> Small {
    black_box(name);
    Small::new(id)
}

/// `near-memo-fresh-hit`: a `#[cached]` hit with a freshness option through the near cache
/// (issue 15's machinery, as `near-fresh-hit`).
#[impcache::cached(
    expire = 300,
    cache = NEAR.get().unwrap(),
    key = "small:{id}",
    stale_while_revalidate = 60
)]
async fn near_memo_fresh(id: u64) -> Small {
    Small::new(id)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let operation = args.next().unwrap_or_else(|| "list".to_owned());
    if operation == "list" || !OPERATIONS.contains(&operation.as_str()) {
        println!("operations: {}", OPERATIONS.join(" "));
        return;
    }
    let n: u64 = args.next().map_or(1_000, |n| n.parse().expect("n"));
    let server = RedisServer::start();
    // The near cache's hits and `cache-aio`'s (which the `near` bench compares) run on two
    // workers, as in that bench: on a one-thread runtime a near hit gives the thread back once
    // per millisecond (`Store::catch_up`, three `yield_now`s), which a native loop pays once in
    // ~1,000 hits but callgrind, ~50× slower, every third call: ~500 instructions a call that no
    // native run pays (`near-get` 8,344 counted on one thread, 7,849 without the catch-up).
    let rt = if operation.starts_with("near-") || operation == "cache-aio-get" {
        two_workers()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    if let Some(system) = operation.strip_prefix("two-thread-") {
        two_threads(system, n);
        return;
    }
    if let Some(system) = operation.strip_prefix("concurrent-set-") {
        concurrent_set(&server, system, n);
        return;
    }
    if let Some(route) = operation.strip_prefix("concurrent-http-") {
        two_workers().block_on(http(&server, route, n, 256));
        return;
    }
    // One client task on two workers, as the `near` bench's 1-connection column: for `strace -f
    // -c` / `/usr/bin/time` (what crossing between the workers costs, which one thread hides).
    if let Some(route) = operation.strip_prefix("one-client-http-") {
        two_workers().block_on(http(&server, route, n, 1));
        return;
    }
    if let Some(route) = operation.strip_prefix("http-") {
        rt.block_on(http(&server, route, n, 1));
        return;
    }
    rt.block_on(async {
        let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
        let raw = impcache_benches::raw_connection(&server.url())
            .await
            .unwrap();
        let memory = Cache::new(MemoryCacheRepository::new());
        let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::builder()
            .max_capacity(impcache::repository::memory::DEFAULT_CAPACITY_BYTES)
            .weigher(|k: &String, v: &Bytes| {
                u32::try_from(k.len() + v.len() + 64).unwrap_or(u32::MAX)
            })
            .time_to_live(Duration::from_secs(TTL))
            .build();
        let moka_ttl: MokaTtl = impcache_benches::moka_per_entry_ttl();
        let values: Vec<Small> = (0..KEYS).map(Small::new).collect();
        for (id, v) in values.iter().enumerate() {
            cache.set(&format!("small:{id}"), v, TTL).await.unwrap();
            memory.set(&format!("small:{id}"), v, TTL).await.unwrap();
            // Tags (issue 16): `tagged-hit` reads these, tagged with two tags.
            cache
                .set_tagged(
                    &format!("tagged:{id}"),
                    v,
                    TTL,
                    [format!("user:{id}"), "users".to_owned()],
                )
                .await
                .unwrap();
            moka.insert(
                format!("cache:1:small:{id}"),
                Bytes::from(serde_json::to_vec(v).unwrap()),
            );
            moka_ttl.insert(
                format!("cache:1:small:{id}"),
                (
                    Bytes::from(serde_json::to_vec(v).unwrap()),
                    Duration::from_secs(TTL),
                ),
            );
        }
        if operation == "near-get"
            || operation == "near-get-or-set-hit"
            || operation == "near-fresh-hit"
            || operation == "near-tagged-hit"
            || operation == "near-get-tagged"
            || operation == "near-memo-fresh-hit"
        {
            let near = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
                .near_cache(impcache::NearCache::new())
                .build();
            impcache_benches::wait_near_active(&near).await;
            for id in 0..KEYS {
                let _: Small = near.get(&format!("small:{id}")).await.unwrap().unwrap();
                let _: Small = near
                    .get_or_set(&format!("tagged:{id}"), TTL, move || async move {
                        Small::new(id)
                    })
                    .tags([format!("user:{id}"), "users".to_owned()])
                    .await
                    .unwrap();
            }
            let _ = NEAR.set(near);
        }
        if operation == "cache-aio-get" {
            let mut conn = impcache_benches::cache_aio_connection(&server.url())
                .await
                .unwrap();
            for id in 0..KEYS {
                let _: Vec<u8> = redis::cmd("GET")
                    .arg(cache.make_key(&format!("small:{id}")))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            let _ = CACHE_AIO.set(conn);
        }
        let moka = (&moka, &moka_ttl);
        // Warm-up: connections, lazily built tables.
        for i in 0..200 {
            run(&operation, i % KEYS, &cache, &raw, &memory, moka, &values).await;
        }
        for i in 0..n {
            run(&operation, i % KEYS, &cache, &raw, &memory, moka, &values).await;
        }
    });
}

async fn run(
    operation: &str,
    id: u64,
    cache: &Cache,
    raw: &redis::aio::ConnectionManager,
    memory: &Cache,
    (moka, moka_ttl): (&moka::sync::Cache<String, Bytes>, &MokaTtl),
    values: &[Small],
) {
    let mut conn = raw.clone();
    let first = id.min(KEYS - BATCH);
    match operation {
        "get" => {
            let v: Small = cache.get(&format!("small:{id}")).await.unwrap().unwrap();
            black_box(v);
        }
        // Issue 15: `get_or_set` hits, without a policy (one `GET`) and with one (`GET` + `PTTL`).
        "get-or-set-hit" => {
            let v: Small = cache
                .get_or_set(&format!("small:{id}"), TTL, move || async move {
                    Small::new(id)
                })
                .await
                .unwrap();
            black_box(v);
        }
        "fresh-hit" => {
            let policy = impcache::Freshness::new().stale_while_revalidate(Duration::from_secs(60));
            let v: Small = cache
                .get_or_set(&format!("small:{id}"), TTL, move || async move {
                    Small::new(id)
                })
                .freshness(policy)
                .await
                .unwrap();
            black_box(v);
        }
        "tagged-hit" => {
            let v: Small = cache
                .get_or_set(&format!("tagged:{id}"), TTL, move || async move {
                    Small::new(id)
                })
                .tags([format!("user:{id}"), "users".to_owned()])
                .await
                .unwrap();
            black_box(v);
        }
        "raw-get" => {
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg(format!("cache:1:small:{id}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
        }
        "set" => {
            cache
                .set(&format!("small:{id}"), &values[id as usize], TTL)
                .await
                .unwrap();
        }
        "raw-set" => {
            let () = raw_set(id, &values[id as usize])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        "get-many" => {
            let keys: Vec<String> = (first..first + BATCH)
                .map(|id| format!("small:{id}"))
                .collect();
            let v: Vec<Option<Small>> = cache.get_many(&keys).await.unwrap();
            black_box(v);
        }
        "raw-mget" => {
            let keys: Vec<String> = (first..first + BATCH)
                .map(|id| format!("cache:1:small:{id}"))
                .collect();
            let replies: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
            let v: Vec<Option<Small>> = replies
                .into_iter()
                .map(|b| b.map(|b| serde_json::from_slice(&b).unwrap()))
                .collect();
            black_box(v);
        }
        "set-many" => {
            let entries =
                (first..first + BATCH).map(|id| (format!("small:{id}"), &values[id as usize]));
            cache.set_many(entries, TTL).await.unwrap();
        }
        "raw-pipeline" => {
            let mut pipe = redis::pipe();
            for id in first..first + BATCH {
                pipe.add_command(raw_set(id, &values[id as usize])).ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
        "memo-hit" => {
            black_box(memo_small(id % 100, "user").await); // warmed up: hits only
        }
        "memo-hit-template" => {
            black_box(memo_template(id % 100, "user").await);
        }
        "memory-get" => {
            let v: Small = memory.get(&format!("small:{id}")).await.unwrap().unwrap();
            black_box(v);
        }
        "moka-get" => {
            let bytes = moka.get(&format!("cache:1:small:{id}")).unwrap();
            black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
        }
        "near-get-or-set-hit" => {
            let near = NEAR.get().unwrap();
            let v: Small = near
                .get_or_set(&format!("small:{id}"), TTL, move || async move {
                    Small::new(id)
                })
                .await
                .unwrap();
            black_box(v);
        }
        "near-fresh-hit" => {
            let near = NEAR.get().unwrap();
            let policy = impcache::Freshness::new().stale_while_revalidate(Duration::from_secs(60));
            let v: Small = near
                .get_or_set(&format!("small:{id}"), TTL, move || async move {
                    Small::new(id)
                })
                .freshness(policy)
                .await
                .unwrap();
            black_box(v);
        }
        "near-tagged-hit" => {
            let near = NEAR.get().unwrap();
            let v: Small = near
                .get_or_set(&format!("tagged:{id}"), TTL, move || async move {
                    Small::new(id)
                })
                .tags([format!("user:{id}"), "users".to_owned()])
                .await
                .unwrap();
            black_box(v);
        }
        "near-memo-fresh-hit" => {
            black_box(near_memo_fresh(id).await);
        }
        "near-get-tagged" => {
            let near = NEAR.get().unwrap();
            let v: Small = near.get(&format!("tagged:{id}")).await.unwrap().unwrap();
            black_box(v);
        }
        "near-get" => {
            let near = NEAR.get().unwrap();
            let v: Small = near.get(&format!("small:{id}")).await.unwrap().unwrap();
            black_box(v);
        }
        "cache-aio-get" => {
            let mut conn = CACHE_AIO.get().unwrap().clone();
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg(format!("cache:1:small:{id}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
        }
        "memory-set" => {
            memory
                .set(&format!("small:{id}"), &values[id as usize], TTL)
                .await
                .unwrap();
        }
        "moka-set" => {
            let bytes = serde_json::to_vec(&values[id as usize]).unwrap();
            moka.insert(format!("cache:1:small:{id}"), Bytes::from(bytes));
        }
        "moka-ttl-get" => {
            let (bytes, _) = moka_ttl.get(&format!("cache:1:small:{id}")).unwrap();
            black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
        }
        "moka-ttl-set" => {
            let bytes = serde_json::to_vec(&values[id as usize]).unwrap();
            moka_ttl.insert(
                format!("cache:1:small:{id}"),
                (Bytes::from(bytes), Duration::from_secs(TTL)),
            );
        }
        _ => unreachable!("checked in main"),
    }
}

/// `n` gets of the 1,000 keys from two threads (`n / 2` each, a current-thread runtime each) on one
/// shared in-memory store: our memory repository (`memory-get`) or moka + serde_json
/// (`moka-ttl-get`). For wall clock under `/usr/bin/time`: it shows what the threads' shared
/// writes (counters, moka's own bookkeeping) cost, which a one-thread count cannot.
fn two_threads(system: &str, n: u64) {
    let memory = Cache::new(MemoryCacheRepository::new());
    let moka_ttl: MokaTtl = impcache_benches::moka_per_entry_ttl();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for id in 0..KEYS {
        let value = Small::new(id);
        rt.block_on(memory.set(&format!("small:{id}"), &value, TTL))
            .unwrap();
        moka_ttl.insert(
            format!("cache:1:small:{id}"),
            (
                Bytes::from(serde_json::to_vec(&value).unwrap()),
                Duration::from_secs(TTL),
            ),
        );
    }
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for i in 0..n / 2 {
                        let key = i % KEYS;
                        match system {
                            "memory-get" => {
                                let v: Small =
                                    memory.get(&format!("small:{key}")).await.unwrap().unwrap();
                                black_box(v);
                            }
                            _ => {
                                let (bytes, _) =
                                    moka_ttl.get(&format!("cache:1:small:{key}")).unwrap();
                                black_box(serde_json::from_slice::<Small>(&bytes).unwrap());
                            }
                        }
                    }
                });
            });
        }
    });
}

/// One HTTP GET through axum over loopback, hyper client and server in this process: a
/// `CacheLayer` hit (`cached`; `cached-lean` without the status headers and the computed ETag;
/// `cached-stale` with stale-while-revalidate and stale-if-error windows; `cached-tagged` with
/// responses tagged `Surrogate-Key: item:{id} items`, issue 16)
/// or a handler doing one raw `GET` (`raw`), as in the bench's case 5. `n` requests from `tasks`
/// concurrent client tasks (`concurrent-http-*`: 256 on two workers, for `/usr/bin/time`).
async fn http(server: &RedisServer, route: &str, n: u64, tasks: u64) {
    use axum::extract::{Path, State};
    use axum::routing::get;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let body = |id: u64| Bytes::from(serde_json::to_vec(&Small::new(id)).unwrap());
    // Issue 14: `cached-near` is the layer on a `Cache` with a near cache (hits read locally).
    let near = route == "cached-near";
    let cache = if near {
        let cache = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
            .near_cache(impcache::NearCache::new())
            .build();
        impcache_benches::wait_near_active(&cache).await;
        cache
    } else {
        Cache::new(RedisCacheRepository::new(&server.url()).unwrap())
    };
    // The redis crate's default TCP settings, as impcache's connection and the bench.
    let raw = impcache_benches::raw_connection(&server.url())
        .await
        .unwrap();
    let mut conn = raw.clone();
    for id in 0..KEYS {
        let () = redis::cmd("SET")
            .arg(format!("http:{id}"))
            .arg(body(id).to_vec())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let content_type = axum::http::header::CONTENT_TYPE;
    let mut layer = impcache_tower::CacheLayer::new(cache).expire(300);
    let route = match route {
        "cached-lean" => {
            layer = layer
                .status_header(impcache_tower::StatusHeader::None)
                .compute_etag(false);
            "cached"
        }
        // Issue 15: the same hit with both stale windows on (every hit is fresh).
        "cached-stale" => {
            layer = layer
                .stale_while_revalidate(std::time::Duration::from_secs(60))
                .stale_if_error(std::time::Duration::from_secs(3600));
            "cached"
        }
        // Issue 16: tagged responses (a hit also reads its tags' state).
        "cached-tagged" => "tagged",
        "cached-near" => "cached",
        route => route,
    };
    let app = axum::Router::new()
        .route(
            "/cached/{id}",
            get(move |Path(id): Path<u64>| async move {
                ([(content_type, "application/json")], body(id))
            }),
        )
        .route(
            "/tagged/{id}",
            get(move |Path(id): Path<u64>| async move {
                let tags = format!("item:{id} items");
                (
                    [
                        (
                            axum::http::header::CONTENT_TYPE,
                            "application/json".to_owned(),
                        ),
                        (axum::http::HeaderName::from_static("surrogate-key"), tags),
                    ],
                    body(id),
                )
            }),
        )
        .route_layer(layer)
        .merge(
            axum::Router::new()
                // The limit: the same bytes from memory, no layer.
                .route(
                    "/static/{id}",
                    get(move |Path(id): Path<u64>| async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            body(id),
                        )
                    }),
                )
                .route(
                    "/raw/{id}",
                    get(
                        |State(mut conn): State<redis::aio::ConnectionManager>,
                         Path(id): Path<u64>| async move {
                            let value: Vec<u8> = redis::cmd("GET")
                                .arg(format!("http:{id}"))
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                            (
                                [(axum::http::header::CONTENT_TYPE, "application/json")],
                                Bytes::from(value),
                            )
                        },
                    ),
                )
                .with_state(raw),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uris: Vec<hyper::Uri> = (0..KEYS)
        .map(|id| format!("http://{addr}/{route}/{id}").parse().unwrap())
        .collect();
    // Warm-up: every URL once (the cached route stores them), then the connection pool; with a
    // near cache twice more (its own store dropped the local copy; the next read keeps it).
    for _ in 0..if near { 3 } else { 1 } {
        for uri in &uris {
            let response = client.get(uri.clone()).await.unwrap();
            black_box(response.into_body().collect().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let uris = std::sync::Arc::new(uris);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (client, uris) = (client.clone(), uris.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..n / tasks {
                let uri = uris[((task * 7_919 + i) % KEYS) as usize].clone();
                let response = client.get(uri).await.unwrap();
                assert_eq!(response.status(), 200);
                black_box(response.into_body().collect().await.unwrap());
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

/// `n` `SET`s of a 100 B value from 256 tasks on a two-worker runtime, as in the bench's
/// `set 100B` at 256 tasks: for `perf stat` (cycles and instructions under concurrency, which
/// callgrind's serialised threads do not show).
fn concurrent_set(server: &RedisServer, system: &str, n: u64) {
    const TASKS: u64 = 256;
    let rt = two_workers();
    let url = server.url();
    let impcache = system == "impcache";
    rt.block_on(async move {
        let cache = Cache::new(RedisCacheRepository::new(&url).unwrap());
        let raw = impcache_benches::raw_connection(&url).await.unwrap();
        let values: std::sync::Arc<Vec<Small>> =
            std::sync::Arc::new((0..KEYS).map(Small::new).collect());
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (cache, raw, values) = (cache.clone(), raw.clone(), values.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..(n / TASKS) {
                    let id = (task * 7_919 + i * 13) % KEYS;
                    if impcache {
                        cache
                            .set(&format!("small:{id}"), &values[id as usize], TTL)
                            .await
                            .unwrap();
                    } else {
                        let mut conn = raw.clone();
                        let () = raw_set(id, &values[id as usize])
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// The hand-written write: the value encoded with serde_json, `SET key value EX 300`.
fn raw_set(id: u64, value: &Small) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(format!("cache:1:small:{id}"))
        .arg(serde_json::to_vec(value).unwrap())
        .arg("EX")
        .arg(TTL);
    cmd
}
