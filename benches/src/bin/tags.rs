//! The tags benchmark (issue 16), on a throwaway `redis-server`:
//!
//! 1. **Hit cost**: `get_or_set(..).tags([two tags])` (one `MGET` of the entry and the two
//!    tag state keys) against the same `get_or_set` untagged (one `GET`), closed loop, alternating
//!    rounds; the ratio of throughputs (target ≥ 0.9). Then the same through a near cache (issue
//!    14), where the entry and its tags' state are all served from process memory.
//!    The same reads written by hand on the redis crate's defaults (`GET` against an `MGET` of
//!    the entry and two other keys, one `MultiplexedConnection`): the ceiling of that ratio for
//!    any library whose tagged read on Redis reads the tags' state.
//! 2. **Invalidation**: `invalidate_tag` against `delete_pattern` of the same 10,000 entries,
//!    among 100,000 other keys; wall time and round trips (from `INFO commandstats`).
//!
//! ```text
//! cargo run --release -p impcache-benches --bin tags -- [seconds per round, default 2]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

use std::time::{Duration, Instant};

use impcache::{Cache, NearCache, RedisCacheRepository};
use impcache_benches::{
    keyed_rate, multiplexed_connection, raw_get_rate, store_raw_smalls, OnRedis, Small,
};
use impcache_tests::RedisServer;
use redis::AsyncCommands;

const CONCURRENCY: usize = 32;
const KEYS: u64 = 50;
const GROUP: u64 = 10_000;
const OTHERS: u64 = 100_000;

fn main() {
    let OnRedis {
        runtime,
        server,
        round,
    } = OnRedis::start().unwrap();
    runtime.block_on(async {
        let cache = Cache::new(RedisCacheRepository::new(&server.url()).unwrap());
        hit_cost("", &cache, round).await;
        hand_written(&server.url(), round).await;
        let repository = RedisCacheRepository::new(&server.url()).unwrap();
        let near = Cache::builder(repository)
            .near_cache(NearCache::new())
            .build();
        hit_cost("near cache, ", &near, round).await;
        invalidation(&cache, &server).await;
    });
}

/// Loads `tagged:{k}` (a miss stores it), tagged `user:{k}` and `users`.
async fn load_tagged(cache: &Cache, k: u64) {
    let _: Small = cache
        .get_or_set(&format!("tagged:{k}"), 3600, move || async move {
            Small::new(k)
        })
        .tags([format!("user:{k}"), "users".to_owned()])
        .await
        .unwrap();
}

async fn hit_cost(label: &str, cache: &Cache, round: Duration) {
    for k in 0..KEYS {
        let _: Small = cache
            .get_or_set(
                &format!("plain:{k}"),
                3600,
                move || async move { Small::new(k) },
            )
            .await
            .unwrap();
        load_tagged(cache, k).await;
    }
    // A tag invalidated long ago: its keys exist, as in production.
    cache.invalidate_tag("users").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for k in 0..KEYS {
        load_tagged(cache, k).await;
    }
    for tasks in [1, CONCURRENCY] {
        let (mut plain, mut tagged) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let c = cache.clone();
            plain.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let c = c.clone();
                    async move {
                        let _: Small = c
                            .get_or_set(&format!("plain:{k}"), 3600, || async {
                                unreachable!("a hit")
                            })
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
            let c = cache.clone();
            tagged.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let c = c.clone();
                    async move {
                        let _: Small = c
                            .get_or_set(&format!("tagged:{k}"), 3600, || async {
                                unreachable!("a hit")
                            })
                            .tags([format!("user:{k}"), "users".to_owned()])
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
        }
        let (p, t) = (median(&mut plain), median(&mut tagged));
        println!(
            "hit, {label}{tasks:>2} tasks: get_or_set {p:>9.0}/s  get_or_set.tags(2) {t:>9.0}/s  ratio {:.3}",
            t / p
        );
    }
}

/// `GET` + decode against `MGET` of the entry and two tag-state-sized keys + decode, by hand.
async fn hand_written(url: &str, round: Duration) {
    let mut conn = multiplexed_connection(url).await.unwrap();
    store_raw_smalls(&mut conn, KEYS).await.unwrap();
    for k in 0..KEYS {
        let _: () = conn
            .set(format!("raw:tag:user:{k}"), "1764800000000000")
            .await
            .unwrap();
    }
    let _: () = conn.set("raw:tag:users", "1764800000000000").await.unwrap();
    for tasks in [1, CONCURRENCY] {
        let (mut get, mut mget) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            get.push(raw_get_rate(&conn, tasks, round, KEYS).await);
            let c = conn.clone();
            mget.push(
                keyed_rate(tasks, round, KEYS, move |k| {
                    let mut c = c.clone();
                    async move {
                        let keys = [
                            format!("raw:{k}"),
                            format!("raw:tag:user:{k}"),
                            "raw:tag:users".to_owned(),
                        ];
                        let values: Vec<Vec<u8>> = c.mget(&keys).await.unwrap();
                        std::hint::black_box((
                            serde_json::from_slice::<Small>(&values[0]).unwrap(),
                            &values[1..],
                        ));
                    }
                })
                .await,
            );
        }
        let (g, m) = (median(&mut get), median(&mut mget));
        println!(
            "hit by hand, {tasks:>2} tasks: GET {g:>9.0}/s  MGET of 3 {m:>9.0}/s  ratio {:.3}",
            m / g
        );
    }
}

/// Round trips (commands) the server ran, from `INFO commandstats`.
fn commands(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| line.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|calls| calls.parse::<u64>().ok())
        .sum()
}

async fn invalidation(cache: &Cache, server: &RedisServer) {
    let fill = |prefix: &'static str, count: u64, tagged: bool| {
        let cache = cache.clone();
        async move {
            for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
                if tagged {
                    for &i in chunk {
                        cache
                            .set_tagged(&format!("{prefix}:{i}"), &i, 3600, ["group"])
                            .await
                            .unwrap();
                    }
                } else {
                    cache
                        .set_many(chunk.iter().map(|i| (format!("{prefix}:{i}"), *i)), 3600)
                        .await
                        .unwrap();
                }
            }
        }
    };
    fill("other", OTHERS, false).await;
    fill("group", GROUP, true).await;

    let before = commands(server);
    let started = Instant::now();
    cache.invalidate_tag("group").await.unwrap();
    let tag_time = started.elapsed();
    let tag_commands = commands(server) - before - 1; // the INFO itself
    assert_eq!(cache.get::<u64>("group:0").await.unwrap(), None);

    fill("group", GROUP, false).await;
    let before = commands(server);
    let started = Instant::now();
    let removed = cache.delete_pattern("group:*").await.unwrap();
    let pattern_time = started.elapsed();
    let pattern_commands = commands(server) - before - 1;
    assert_eq!(removed, GROUP);
    println!(
        "invalidate {GROUP} entries among {OTHERS} others: invalidate_tag {tag_time:?} ({tag_commands} commands)  delete_pattern {pattern_time:?} ({pattern_commands} commands)  ratio {:.0}x",
        pattern_time.as_secs_f64() / tag_time.as_secs_f64()
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
