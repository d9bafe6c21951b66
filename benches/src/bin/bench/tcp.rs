//! Case 1b (issue 12, item 16): which TCP setting should `RedisCacheRepository` use by default?
//!
//! impcache with `TCP_NODELAY` on (through `from_client`) and impcache on the operating
//! system's defaults (Nagle on; the default since this case was measured) are each measured
//! against the same baseline: what a user writes by hand with the `redis` crate's defaults, one
//! `MultiplexedConnection` from `Client::get_multiplexed_async_connection` on default TCP
//! settings, `GET` + `serde_json` decode and `serde_json` encode + `SET EX`.

use std::sync::Arc;

use impcache::{Cache, RedisCacheRepository};
use impcache_benches::{side_by_side, Contender, Large, Small};
use impcache_tests::RedisServer;
use redis::aio::MultiplexedConnection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{count, Config, Results};

/// Keys per payload size.
const KEYS: u64 = 2_000;
/// TTL of every write, seconds.
const TTL: u64 = 300;

fn pick(task: usize, i: u64) -> u64 {
    (task as u64 * 7_919 + i * 13) % KEYS
}

/// A leaked `Cache` over `repository`, so benchmark closures borrow it without cloning.
fn leak(repository: RedisCacheRepository) -> &'static Cache {
    Box::leak(Box::new(Cache::new(repository)))
}

/// Runs case 1b.
pub(crate) async fn tcp(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 1b: TCP_NODELAY on and off against the redis crate's defaults");
    let url = server.url();
    // impcache's default since this case was measured; `TCP_NODELAY` through `from_client`.
    let os_default = leak(RedisCacheRepository::new(&url).expect("repository"));
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).expect("url");
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let nodelay_client = redis::Client::open(info.set_tcp_settings(tcp)).expect("client");
    let nodelay = leak(RedisCacheRepository::from_client(nodelay_client));
    let client = redis::Client::open(url.as_str()).expect("client");
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    tcp_for::<Small>(
        config,
        [nodelay, os_default],
        &raw,
        "100B",
        Small::new,
        results,
    )
    .await;
    tcp_for::<Large>(
        config,
        [nodelay, os_default],
        &raw,
        "10KiB",
        Large::new,
        results,
    )
    .await;
}

async fn tcp_for<T>(
    config: &Config,
    [nodelay, os_default]: [&'static Cache; 2],
    raw: &MultiplexedConnection,
    size: &'static str,
    make: fn(u64) -> T,
    results: &mut Results,
) where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let values: &'static [T] = Vec::leak((0..KEYS).map(make).collect());
    nodelay
        .set_many(
            values
                .iter()
                .enumerate()
                .map(|(id, v)| (format!("tcp{size}:{id}"), v)),
            TTL,
        )
        .await
        .expect("populate");

    let cache_get = |cache: &'static Cache, name: &str| Contender {
        name: name.to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let key = format!("tcp{size}:{}", pick(task, i));
            count(match cache.get::<T>(&key).await {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err("unexpected miss".to_owned()),
                Err(e) => Err(e.to_string()),
            })
        }),
    };
    let cache_set = |cache: &'static Cache, name: &str| Contender {
        name: name.to_owned(),
        op: Arc::new(move |task: usize, i: u64| async move {
            let id = pick(task, i);
            count(
                cache
                    .set(&format!("tcp{size}:{id}"), &values[id as usize], TTL)
                    .await,
            )
        }),
    };
    let raw_get = {
        let raw = raw.clone();
        Contender {
            name: "redis-rs defaults".to_owned(),
            op: Arc::new(move |task: usize, i: u64| {
                let mut conn = raw.clone();
                async move {
                    let key = format!("cache:1:tcp{size}:{}", pick(task, i));
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
    let raw_set = {
        let raw = raw.clone();
        Contender {
            name: "redis-rs defaults".to_owned(),
            op: Arc::new(move |task: usize, i: u64| {
                let mut conn = raw.clone();
                async move {
                    let id = pick(task, i);
                    let key = format!("cache:1:tcp{size}:{id}");
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

    for (cache, name, setting) in [
        (nodelay, "impcache, TCP_NODELAY", "TCP_NODELAY"),
        (os_default, "impcache, OS TCP defaults", "OS TCP defaults"),
    ] {
        let get = cache_get(cache, name);
        for &c in &config.concurrencies {
            let case = format!("get {size}, impcache with {setting} (vs redis-rs defaults)");
            results.add(side_by_side(&case, c, config.timing, &get, &raw_get, Some(0.95)).await);
        }
        let set = cache_set(cache, name);
        for &c in &config.concurrencies {
            let case = format!("set {size}, impcache with {setting} (vs redis-rs defaults)");
            results.add(side_by_side(&case, c, config.timing, &set, &raw_set, Some(0.95)).await);
        }
    }
}
