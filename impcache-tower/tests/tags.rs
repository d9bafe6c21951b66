//! Tagged responses (issue 16): `Surrogate-Key` / `Cache-Tag` header fields and the
//! `tags_from` closure as tags, `purge_tag`, `soft_purge_tag` and `Cache::invalidate_tag` (from a
//! second `Cache`, over another connection), on the memory repository and a real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::Response;
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

/// `200 call {n}`, tagged `Surrogate-Key: user:1 page` and `Cache-Tag: team:7,page`.
fn tagged(layer: CacheLayer) -> (Svc, Calls) {
    app(layer, |n, _req| async move {
        Response::builder()
            .header("surrogate-key", "user:1 page")
            .header("cache-tag", "team:7, page")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    })
}

/// Misses once, then waits for the store.
async fn stored(svc: &Svc, layer: &CacheLayer, uri: &str) {
    assert_eq!(send(svc, get(uri)).await.outcome(), "MISS");
    wait_stored(layer, uri).await;
    assert_eq!(send(svc, get(uri)).await.outcome(), "HIT");
}

#[tokio::test]
async fn tag_headers_are_stripped_unless_kept() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = tagged(layer.clone());
    let miss = send(&svc, get("/a")).await;
    assert_eq!(miss.header("surrogate-key"), None);
    assert_eq!(miss.header("cache-tag"), None);
    wait_stored(&layer, "/a").await;
    let hit = send(&svc, get("/a")).await;
    assert_eq!(hit.outcome(), "HIT");
    assert_eq!(hit.header("surrogate-key"), None);
    assert_eq!(hit.header("impcache-tags"), None);

    let layer = CacheLayer::new(memory_cache()).keep_tag_headers(true);
    let (svc, _) = tagged(layer.clone());
    let miss = send(&svc, get("/a")).await;
    assert_eq!(miss.header("surrogate-key"), Some("user:1 page"));
    wait_stored(&layer, "/a").await;
    let hit = send(&svc, get("/a")).await;
    assert_eq!(hit.outcome(), "HIT");
    assert_eq!(hit.header("cache-tag"), Some("team:7, page"));
    assert_eq!(hit.header("impcache-tags"), None);
}

async fn purge_tag_hides(cache: Cache) {
    let layer = CacheLayer::new(cache);
    let (svc, calls) = tagged(layer.clone());
    let (untagged, untagged_calls) = counting(layer.clone().namespace("plain"));
    stored(&svc, &layer, "/a").await;
    stored(&svc, &layer, "/b").await;
    let plain_layer = layer.clone().namespace("plain");
    stored(&untagged, &plain_layer, "/a").await;
    // Either header's tags: `team:7` comes from `Cache-Tag` (the plural form, with a tag never
    // used).
    layer.purge_tags(["team:7", "unused"]).await.unwrap();
    for uri in ["/a", "/b"] {
        let seen = send(&svc, get(uri)).await;
        assert_eq!(seen.outcome(), "MISS", "{uri}");
    }
    assert_eq!(calls.get(), 4);
    // Stored again, with a creation time after the purge: hits.
    wait_stored(&layer, "/a").await;
    let mut seen = send(&svc, get("/a")).await;
    for _ in 0..100 {
        if seen.outcome() == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = send(&svc, get("/a")).await;
    }
    assert_eq!(seen.outcome(), "HIT");
    // An untagged response is untouched.
    assert_eq!(send(&untagged, get("/a")).await.outcome(), "HIT");
    assert_eq!(untagged_calls.get(), 1);
}

/// A soft purge right after a response went out, its store still on its way: the response is
/// marked stale with the rest of its tag, and the next request is served it stale (the purge
/// waits for the store), rather than call the handler while the client waits (found by a probe:
/// 2 of 23 runs with the cross-process lock, where the store lands a few ms late). After a
/// purge in the same window, the next request is a miss.
#[tokio::test]
async fn a_purge_by_tag_right_after_a_response_covers_its_store_in_progress() {
    use impcache_tests::late::LateWrites;
    let late = || {
        let memory = impcache::MemoryCacheRepository::new();
        Cache::new(LateWrites::new(memory, Duration::from_millis(200)).lands_late())
    };
    let handler = |n: usize, _req| async move {
        Response::builder()
            .header("surrogate-key", "user:1")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    };
    // Soft: served stale, one background call.
    let layer = CacheLayer::new(late()).stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), handler);
    assert_eq!(send(&svc, get("/s")).await.outcome(), "MISS");
    layer.soft_purge_tag("user:1").await.unwrap();
    let seen = send(&svc, get("/s")).await;
    assert_eq!(
        seen.body, "call 1",
        "the handler was called while the client waited"
    );
    let status = seen.header("cache-status").unwrap_or_default().to_owned();
    assert!(status.starts_with("impcache; hit; fwd=stale"), "{status}");
    assert!(calls.get() <= 2, "{} calls", calls.get());

    // Hard: a miss, and the new response.
    let layer = CacheLayer::new(late());
    let (svc, calls) = app(layer.clone(), handler);
    assert_eq!(send(&svc, get("/h")).await.outcome(), "MISS");
    layer.purge_tag("user:1").await.unwrap();
    let seen = send(&svc, get("/h")).await;
    assert_eq!(seen.body, "call 2", "{:?}", seen.header("cache-status"));
    assert_eq!(calls.get(), 2);
}

async fn soft_purge_serves_stale_and_calls_once(cache: Cache) {
    let layer = CacheLayer::new(cache).stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), |n, _req| async move {
        if n > 1 {
            // The revalidation takes a moment: the concurrent requests overlap it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Response::builder()
            .header("surrogate-key", "user:1")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    stored(&svc, &layer, "/s").await;
    layer.soft_purge_tag("user:1").await.unwrap();
    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(send(&svc, get("/s"))))
        .collect();
    for request in requests {
        let seen = request.await.unwrap();
        assert_eq!(seen.body, "call 1");
        let status = seen.header("cache-status").unwrap().to_owned();
        assert!(
            status.starts_with("impcache; hit; fwd=stale") && status.ends_with("revalidating"),
            "{status}"
        );
    }
    let mut seen = send(&svc, get("/s")).await;
    for _ in 0..200 {
        if seen.body == "call 2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = send(&svc, get("/s")).await;
    }
    assert_eq!((seen.outcome(), &seen.body[..]), ("HIT", &b"call 2"[..]));
    assert_eq!(calls.get(), 2, "one background handler call");

    // Without a stale window, a soft purge is a miss.
    let strict = layer
        .clone()
        .namespace("strict")
        .stale_while_revalidate(Duration::ZERO);
    let (svc, calls) = tagged(strict.clone());
    stored(&svc, &strict, "/s").await;
    strict.soft_purge_tags(["page", "unused"]).await.unwrap();
    assert_eq!(send(&svc, get("/s")).await.outcome(), "MISS");
    assert_eq!(calls.get(), 2);
}

async fn tags_from_the_request(cache: Cache) {
    let layer = CacheLayer::new(cache).tags_from(|request| {
        let id = request.uri.path().trim_start_matches("/users/").to_owned();
        vec![format!("user {id}")]
    });
    let (svc, calls) = counting(layer.clone());
    stored(&svc, &layer, "/users/1").await;
    stored(&svc, &layer, "/users/2").await;
    // A tag with a space (percent-encoded in the entry).
    layer.purge_tag("user 1").await.unwrap();
    assert_eq!(send(&svc, get("/users/1")).await.outcome(), "MISS");
    assert_eq!(send(&svc, get("/users/2")).await.outcome(), "HIT");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn purge_tag_hides_memory() {
    purge_tag_hides(memory_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_serves_stale_and_calls_once_memory() {
    soft_purge_serves_stale_and_calls_once(memory_cache()).await;
}

#[tokio::test]
async fn tags_from_the_request_memory() {
    tags_from_the_request(memory_cache()).await;
}

/// `Cache-Tag` tags are case-insensitive, as on Cloudflare (and CloudFront): a purge of any
/// case reaches them, soft or hard. `Surrogate-Key` tags keep their case, as on Fastly. The
/// spelling the handler gave still works from `Cache::invalidate_tag`.
async fn cache_tag_is_case_insensitive(cache: Cache) {
    let layer = CacheLayer::new(cache).stale_while_revalidate(Duration::from_secs(60));
    let (svc, _) = app(layer.clone(), |n, _req| async move {
        Response::builder()
            .header("surrogate-key", "User:1")
            .header("cache-tag", "Team:7")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    // A miss, its response's store awaited (the older entry is still there: the key alone does
    // not say), then a fresh hit: one handler call per miss, none left in flight.
    let miss_then_hit = |why: &'static str| {
        let (layer, svc) = (layer.clone(), svc.clone());
        async move {
            let miss = send(&svc, get("/a")).await;
            assert_eq!(miss.outcome(), "MISS", "{why}");
            let key = format!("{}:v", layer.request_key(&get("/a")));
            let body = String::from_utf8_lossy(&miss.body).into_owned();
            for _ in 0..400 {
                let stored = layer.cache().repository().get(&key).await.unwrap();
                if stored.is_some_and(|bytes| String::from_utf8_lossy(&bytes).contains(&body)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let hit = send(&svc, get("/a")).await;
            let status = hit.header("cache-status").unwrap_or_default().to_owned();
            assert!(
                status.starts_with("impcache; hit") && !status.contains("stale"),
                "{why}: {status}"
            );
        }
    };
    miss_then_hit("first").await;
    for purge in ["TEAM:7", "team:7", "Team:7"] {
        layer.purge_tag(purge).await.unwrap();
        miss_then_hit(purge).await;
    }
    layer.soft_purge_tag("tEAM:7").await.unwrap();
    let seen = send(&svc, get("/a")).await;
    let status = seen.header("cache-status").unwrap_or_default().to_owned();
    assert!(status.contains("fwd=stale"), "{status}");
    // The background revalidation's response, then stored.
    let mut seen = send(&svc, get("/a")).await;
    for _ in 0..200 {
        if seen
            .header("cache-status")
            .is_some_and(|s| !s.contains("stale"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = send(&svc, get("/a")).await;
    }
    assert_eq!(seen.outcome(), "HIT");
    // A `Surrogate-Key` tag: only its own case.
    layer.purge_tag("user:1").await.unwrap();
    assert_eq!(send(&svc, get("/a")).await.outcome(), "HIT");
    layer.purge_tag("User:1").await.unwrap();
    miss_then_hit("User:1").await;
    // Through the cache, the handler's spelling.
    layer.cache().invalidate_tag("Team:7").await.unwrap();
    assert_eq!(send(&svc, get("/a")).await.outcome(), "MISS");
}

#[tokio::test]
async fn cache_tag_is_case_insensitive_memory() {
    cache_tag_is_case_insensitive(memory_cache()).await;
}

#[tokio::test]
async fn cache_tag_is_case_insensitive_on_redis() {
    let redis = RedisServer::start();
    cache_tag_is_case_insensitive(redis_cache(&redis)).await;
}

fn redis_cache(redis: &RedisServer) -> Cache {
    Cache::new(RedisCacheRepository::new(&redis.url()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_on_redis() {
    let redis = RedisServer::start();
    purge_tag_hides(redis_cache(&redis)).await;
    soft_purge_serves_stale_and_calls_once(redis_cache(&redis).with_version(2)).await;
    tags_from_the_request(redis_cache(&redis).with_version(3)).await;
}

/// `Cache::invalidate_tag` on a second `Cache` (another connection, as another process would)
/// hides the HTTP response, and a memoized value of the same tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_from_another_cache_hides_the_response() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis));
    let (svc, calls) = tagged(layer.clone());
    stored(&svc, &layer, "/a").await;
    let other = redis_cache(&redis);
    other
        .set_tagged("user:1:profile", &"Ada", 60, ["user:1"])
        .await
        .unwrap();
    other.invalidate_tag("user:1").await.unwrap();
    assert_eq!(send(&svc, get("/a")).await.outcome(), "MISS");
    assert_eq!(calls.get(), 2);
    assert_eq!(other.get::<String>("user:1:profile").await.unwrap(), None);
}

/// The `GET` / `MGET` lines of `INFO commandstats` since the last `CONFIG RESETSTAT`, sorted
/// (the server lists its commands in no fixed order).
fn reads(redis: &RedisServer) -> Vec<String> {
    let stats: String = redis.cmd(&["INFO", "commandstats"]);
    let mut reads: Vec<String> = stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_get:") || line.starts_with("cmdstat_mget:"))
        .map(|line| line.split(',').next().unwrap_or_default().to_owned())
        .collect();
    reads.sort();
    reads
}

/// The layer remembers the tags of the responses it stores and reads: a tagged hit reads the
/// record and its tags' state in one read (one `MGET`), and a purge from another `Cache` still
/// hides the response at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_hit_reads_its_tags_state_with_the_record() {
    let redis = RedisServer::start();
    let layer = CacheLayer::new(redis_cache(&redis));
    let (svc, calls) = tagged(layer.clone());
    assert_eq!(send(&svc, get("/a")).await.outcome(), "MISS");
    wait_stored(&layer, "/a").await;
    let () = redis.cmd(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        assert_eq!(send(&svc, get("/a")).await.outcome(), "HIT");
    }
    assert_eq!(reads(&redis), ["cmdstat_mget:calls=5"]);
    redis_cache(&redis).invalidate_tag("team:7").await.unwrap();
    assert_eq!(send(&svc, get("/a")).await.outcome(), "MISS");
    assert_eq!(calls.get(), 2);
}

/// A response stored by another process with other tags than this layer remembers for the URL
/// is judged against its own tags (the others read in a second round trip), and remembered
/// anew; a layer that knows nothing of a URL reads its record, then its tags' state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_other_tags_than_learned_is_judged_by_its_own() {
    let redis = RedisServer::start();
    let tags = Arc::new(Mutex::new("a b"));
    let handler = |tags: Arc<Mutex<&'static str>>| {
        move |n: usize, _req| {
            let tags = *tags.lock().unwrap();
            async move {
                Response::builder()
                    .header("surrogate-key", tags)
                    .body(Body::from(format!("call {n} tagged {tags}")))
                    .unwrap()
            }
        }
    };
    let (one, two) = (
        CacheLayer::new(redis_cache(&redis)),
        CacheLayer::new(redis_cache(&redis)),
    );
    let (svc_one, calls_one) = app(one.clone(), handler(Arc::clone(&tags)));
    let (svc_two, calls_two) = app(two.clone(), handler(Arc::clone(&tags)));
    // `one` stores `/x` tagged `a b`; `two`, which knows nothing of it, reads it in two.
    assert_eq!(send(&svc_one, get("/x")).await.outcome(), "MISS");
    wait_stored(&one, "/x").await;
    let () = redis.cmd(&["CONFIG", "RESETSTAT"]);
    assert_eq!(send(&svc_two, get("/x")).await.outcome(), "HIT");
    assert_eq!(
        reads(&redis),
        ["cmdstat_get:calls=1", "cmdstat_mget:calls=1"]
    );

    // `two` purges `a` and stores `/x` anew, now tagged `c`; `one` still remembers `a b`.
    *tags.lock().unwrap() = "c";
    two.purge_tag("a").await.unwrap();
    assert_eq!(send(&svc_two, get("/x")).await.outcome(), "MISS");
    // The purge left `one`'s record in Redis: wait for `two`'s to replace it (CI once read
    // the old one, hidden by the purge: a MISS).
    let key = format!("{}:v", two.request_key(&get("/x")));
    for _ in 0..400 {
        let record = two.cache().repository().get(&key).await.unwrap();
        if record.is_some_and(|record| record.windows(8).any(|w| w == b"tagged c")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let () = redis.cmd(&["CONFIG", "RESETSTAT"]);
    // The record with the state of `a` and `b`, then the state of `c`: two reads.
    assert_eq!(send(&svc_one, get("/x")).await.outcome(), "HIT");
    assert_eq!(reads(&redis), ["cmdstat_mget:calls=2"]);
    // Remembered anew: one read.
    assert_eq!(send(&svc_one, get("/x")).await.outcome(), "HIT");
    assert_eq!(reads(&redis), ["cmdstat_mget:calls=3"]);
    redis_cache(&redis).invalidate_tag("c").await.unwrap();
    assert_eq!(send(&svc_one, get("/x")).await.outcome(), "MISS");
    assert_eq!((calls_one.get(), calls_two.get()), (2, 1));
}

/// A service answering `call {n}` tagged `Surrogate-Key: {tag}`, whose first handler call
/// signals `started` (the third value), then waits until the test lets it answer (`answer`, the
/// fourth).
fn held_first_call(
    layer: &CacheLayer,
    tag: &'static str,
) -> (
    Svc,
    Calls,
    Arc<tokio::sync::Notify>,
    Arc<tokio::sync::Notify>,
) {
    let started = Arc::new(tokio::sync::Notify::new());
    let answer = Arc::new(tokio::sync::Notify::new());
    let (s, a) = (Arc::clone(&started), Arc::clone(&answer));
    let (svc, calls) = app(layer.clone(), move |n, _req| {
        let (started, answer) = (Arc::clone(&s), Arc::clone(&a));
        async move {
            if n == 1 {
                started.notify_one();
                answer.notified().await;
            }
            Response::builder()
                .header("surrogate-key", tag)
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    });
    (svc, calls, started, answer)
}

/// The invalidate-during-compute race through coalescing: a request that joins a flight after a
/// `purge_tag` of the response being computed (its handler call started before the purge) is not
/// handed that response; it leads the next call once that flight has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_joining_after_a_purge_is_not_handed_the_purged_response() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, calls, started, answer) = held_first_call(&layer, "user:1");
    let leader = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get("/race")).await }
    });
    // The leader's handler call is under way: purge its tag, then ask (joining its flight),
    // then let the leader answer.
    started.notified().await;
    layer.purge_tag("user:1").await.unwrap();
    let waiter = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get("/race")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer.notify_one();
    let waiter = waiter.await.unwrap();
    assert_eq!(leader.await.unwrap().body, "call 1");
    assert_eq!(
        waiter.body, "call 2",
        "not the response computed before the purge"
    );
    assert_eq!(calls.get(), 2);
}

/// Requests behind a handler call whose response was purged (by its tag) while it ran, whether
/// they joined before the purge or after it, share the next handler call: one of them leads it
/// once the purged call's flight has ended, the others wait for it. Each called the handler on
/// its own before (11 calls for 11 requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_behind_a_purged_response_share_the_next_call() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, calls, started, answer) = held_first_call(&layer, "doc");
    let spawn = || {
        let svc = svc.clone();
        tokio::spawn(async move { send(&svc, get("/doc")).await })
    };
    let leader = spawn();
    started.notified().await;
    let before: Vec<_> = (0..5).map(|_| spawn()).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    layer.purge_tag("doc").await.unwrap();
    let after: Vec<_> = (0..5).map(|_| spawn()).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer.notify_one();
    assert_eq!(leader.await.unwrap().body, "call 1");
    for request in before.into_iter().chain(after) {
        assert_eq!(request.await.unwrap().body, "call 2");
    }
    assert_eq!(calls.get(), 2);
}

/// One handler call per URL per process holds for tagged responses with Redis down too: 10
/// concurrent requests of one URL, Redis killed while the leader's handler runs (the waiters'
/// lookups went through, and their check of the tags' state fails) or down from the start (their
/// lookups failed). The waiters take the leader's response: no process can see another's purge
/// while Redis is down (this one purged nothing), and a call per waiter would fall on the origin
/// exactly then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_tagged_requests_share_one_handler_call() {
    for killed_during_the_call in [true, false] {
        let mut redis = RedisServer::start();
        let repository = RedisCacheRepository::builder(redis.url())
            .deadline(Duration::from_millis(200))
            .build()
            .unwrap();
        let layer = CacheLayer::new(Cache::new(repository));
        if !killed_during_the_call {
            redis.kill();
        }
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = Arc::clone(&gate);
        let (svc, calls) = app(layer, move |n, _req| {
            let gate = Arc::clone(&g);
            async move {
                let _pass = gate.acquire().await.unwrap();
                Response::builder()
                    .header("surrogate-key", "user:1")
                    .body(Body::from(format!("call {n}")))
                    .unwrap()
            }
        });
        let requests: Vec<_> = (0..10)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { send(&svc, get("/down")).await })
            })
            .collect();
        // Every request has looked up (or failed to) and waits for the leader's call.
        while calls.get() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if killed_during_the_call {
            redis.kill();
        }
        gate.add_permits(100);
        for request in requests {
            let seen = tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                seen.body, "call 1",
                "killed during the call: {killed_during_the_call}"
            );
        }
        assert_eq!(
            calls.get(),
            1,
            "killed during the call: {killed_during_the_call}"
        );
    }
}

/// A request that joins a tagged handler call after its own process's `purge_tag`, Redis then
/// killed, is not handed the response computed before the purge: its process knows of its own
/// purge without reading the tags' state, and it calls the handler itself. Whether Redis was
/// killed before the request (its lookup fails, and it joins the call all the same, without
/// reading the state again) or after it joined (its read of the tags' state fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_request_after_an_own_purge_does_not_share_the_older_response() {
    for killed_before_the_request in [true, false] {
        let mut redis = RedisServer::start();
        let repository = RedisCacheRepository::builder(redis.url())
            .deadline(Duration::from_millis(200))
            .build()
            .unwrap();
        let layer = CacheLayer::new(Cache::new(repository));
        // The first call waits for the gate; the later ones answer at once.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = Arc::clone(&gate);
        let (svc, calls) = app(layer.clone(), move |n, _req| {
            let gate = Arc::clone(&g);
            async move {
                if n == 1 {
                    let _pass = gate.acquire().await.unwrap();
                }
                Response::builder()
                    .header("surrogate-key", "user:1")
                    .body(Body::from(format!("call {n}")))
                    .unwrap()
            }
        });
        let leader = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, get("/own")).await }
        });
        // The leader's handler call is under way: purge its tag (Redis up), then ask.
        while calls.get() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        layer.purge_tag("user:1").await.unwrap();
        if killed_before_the_request {
            redis.kill();
        }
        let joiner = tokio::spawn({
            let svc = svc.clone();
            async move { send(&svc, get("/own")).await }
        });
        // The request has looked up (or failed to, within its deadline) and joined the call.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !killed_before_the_request {
            redis.kill();
        }
        gate.add_permits(1);
        let joiner = tokio::time::timeout(Duration::from_secs(10), joiner)
            .await
            .unwrap()
            .unwrap();
        let leader = leader.await.unwrap();
        let case = format!("killed before the request: {killed_before_the_request}");
        assert_eq!(leader.body, "call 1", "{case}");
        assert_eq!(
            joiner.body, "call 2",
            "not the response computed before the purge; {case}"
        );
        assert_eq!(calls.get(), 2, "{case}");
    }
}

/// The origin mode's handler: `200 call {n}` with `ETag: "v1"`, `max-age=0` (stored stale, and
/// revalidated by the next request) and `Surrogate-Key: old`; a validation request is answered
/// `304` with `max-age=600` and `refreshed_tags` as its `Surrogate-Key`, if any.
fn revalidated(layer: CacheLayer, refreshed_tags: Option<&'static str>) -> (Svc, Calls) {
    app(layer, move |n, req| async move {
        let builder = Response::builder().header("etag", "\"v1\"");
        if req.headers().contains_key("if-none-match") {
            let mut builder = builder.status(304).header("cache-control", "max-age=600");
            if let Some(tags) = refreshed_tags {
                builder = builder.header("surrogate-key", tags);
            }
            return builder.body(Body::empty()).unwrap();
        }
        builder
            .header("cache-control", "max-age=0")
            .header("surrogate-key", "old")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    })
}

/// RFC 9111 §4.3.4: a `304` updates the stored fields it carries, the tag fields too, and the
/// refreshed response's tags are those of its updated fields: the `304`'s tag field replaces the
/// stored one's tags, and without one they stay. With the validation request's own tags
/// (`tags_from`), as a `200`'s: they take the place of those of the request that stored it.
#[tokio::test]
async fn a_304_updates_the_tags_of_the_response_it_refreshes() {
    // The 304's tags; the tags of the refreshed response; the others.
    let cases = [
        (Some("new"), &["new", "second"][..], &["old", "first"][..]),
        (None, &["old", "second"][..], &["first"][..]),
    ];
    for (refreshed_tags, tags, not_tags) in cases {
        for (purge, purged) in tags
            .iter()
            .map(|t| (t, true))
            .chain(not_tags.iter().map(|t| (t, false)))
        {
            let layer = CacheLayer::new(memory_cache())
                .follow_origin(true)
                .tags_from(|request| {
                    let tag = request.headers.get("x-tag").map(|v| v.to_str().unwrap());
                    tag.into_iter().map(str::to_owned).collect()
                });
            let (svc, calls) = revalidated(layer.clone(), refreshed_tags);
            let tagged = |tag| request("GET", "/r", &[("x-tag", tag)]);
            send(&svc, tagged("first")).await;
            wait_stored(&layer, "/r").await;
            let seen = send(&svc, tagged("second")).await;
            assert_eq!(
                seen.header("cache-status"),
                Some("impcache; fwd=stale; fwd-status=304; stored")
            );
            assert_eq!(seen.body, "call 1");
            assert_eq!(send(&svc, get("/r")).await.outcome(), "HIT");
            layer.purge_tag(purge).await.unwrap();
            let seen = send(&svc, get("/r")).await;
            let case = format!("304 tags {refreshed_tags:?}, purge of {purge}");
            let expected = if purged { "MISS" } else { "HIT" };
            assert_eq!(seen.outcome(), expected, "{case}: {:?}", seen.headers);
            assert_eq!(calls.get(), 2 + usize::from(purged), "{case}");
        }
    }
}

/// The origin mode's handler: `200 call {n}` with `ETag: "v1"`, `max-age=0`, `Surrogate-Key: sk`
/// and `Cache-Tag: ct`; a validation request is answered `304` with `max-age=600` and
/// `surrogate_key` as its only tag field. Both forge the layer's own field, `impcache-tags`.
fn revalidated_with_two_fields(
    layer: CacheLayer,
    surrogate_key: http::HeaderValue,
) -> (Svc, Calls) {
    app(layer, move |n, req| {
        let surrogate_key = surrogate_key.clone();
        async move {
            let builder = Response::builder().header("etag", "\"v1\"");
            if req.headers().contains_key("if-none-match") {
                return builder
                    .status(304)
                    .header("cache-control", "max-age=600")
                    .header("surrogate-key", surrogate_key)
                    .header("impcache-tags", "1 forged")
                    .body(Body::empty())
                    .unwrap();
            }
            builder
                .header("cache-control", "max-age=0")
                .header("surrogate-key", "sk")
                .header("cache-tag", "ct")
                .header("impcache-tags", "1 forged")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        }
    })
}

/// A `304` that carries one of the tag fields replaces that field's tags only (RFC 9111 §4.3.4:
/// the stored fields it does not carry stay, and so do their tags): the stored response keeps its
/// tag fields (removed before the client unless kept), and its tags are collected again from
/// them once updated. A field carried with nothing valid in it (a token that is not UTF-8)
/// replaces its tags with none. A handler's `impcache-tags` field is never taken for the entry's
/// tags, nor served. Before, any tag field on the `304` replaced all the stored tags:
/// `Cache-Tag: ct`, not on the `304`, no longer purged the response (and was still served with
/// `keep_tag_headers(true)`).
#[tokio::test]
async fn a_304_carrying_one_tag_field_keeps_the_other_fields_tags() {
    let invalid = http::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    // The 304's `Surrogate-Key`, and the one served once refreshed (when kept); the tags that
    // purge the refreshed response; the others.
    let cases = [
        (
            http::HeaderValue::from_static("sk2"),
            Some("sk2"),
            &["ct", "sk2"][..],
            &["sk", "forged"][..],
        ),
        (invalid, None, &["ct"][..], &["sk", "forged"][..]),
    ];
    for (surrogate_key, shown, tags, not_tags) in cases {
        for keep in [false, true] {
            let purges = tags.iter().map(|t| (t, true));
            for (purge, purged) in purges.chain(not_tags.iter().map(|t| (t, false))) {
                let case = format!("304 {surrogate_key:?}, keep {keep}, purge of {purge}");
                let layer = CacheLayer::new(memory_cache())
                    .follow_origin(true)
                    .keep_tag_headers(keep);
                let (svc, calls) =
                    revalidated_with_two_fields(layer.clone(), surrogate_key.clone());
                assert_eq!(send(&svc, get("/t")).await.outcome(), "MISS");
                wait_stored(&layer, "/t").await;
                let refreshed = send(&svc, get("/t")).await;
                assert_eq!(
                    refreshed.header("cache-status"),
                    Some("impcache; fwd=stale; fwd-status=304; stored"),
                    "{case}"
                );
                let hit = send(&svc, get("/t")).await;
                assert_eq!(hit.outcome(), "HIT", "{case}");
                for seen in [&refreshed, &hit] {
                    let fields = (seen.header("surrogate-key"), seen.header("cache-tag"));
                    let expected = if keep {
                        (shown, Some("ct"))
                    } else {
                        (None, None)
                    };
                    assert_eq!(fields, expected, "{case}");
                    assert_eq!(seen.header("impcache-tags"), None, "{case}");
                }
                layer.purge_tag(purge).await.unwrap();
                let seen = send(&svc, get("/t")).await;
                let expected = if purged { "MISS" } else { "HIT" };
                assert_eq!(seen.outcome(), expected, "{case}");
                assert_eq!(calls.get(), 2 + usize::from(purged), "{case}");
            }
        }
    }
}

/// Origin mode: a `304` answering the background revalidation of a soft-purged response
/// refreshes it for good, also when that revalidation starts in the millisecond of the purge
/// (its creation time is taken on impcache's µs tag clock, as every store's, not from the
/// request's time in ms). Each round: a soft purge at the start of a millisecond, the stale
/// response served at once with one background handler call, then a fresh hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_refresh_started_in_the_soft_purges_millisecond_is_fresh() {
    let layer = CacheLayer::new(memory_cache())
        .follow_origin(true)
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = app(layer.clone(), |n, req| async move {
        let builder = Response::builder()
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "o");
        if req.headers().contains_key("if-none-match") {
            return builder.status(304).body(Body::empty()).unwrap();
        }
        builder.body(Body::from(format!("call {n}"))).unwrap()
    });
    stored(&svc, &layer, "/o").await;
    let micros = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_micros()
    };
    for round in 1..=10 {
        while micros() % 1000 > 50 {
            std::hint::spin_loop();
        }
        layer.soft_purge_tag("o").await.unwrap();
        let seen = send(&svc, get("/o")).await;
        let status = seen.header("cache-status").unwrap();
        assert!(status.contains("fwd=stale"), "round {round}: {status}");
        for _ in 0..200 {
            if calls.get() > round {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The refreshed response stored.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = send(&svc, get("/o")).await;
        let status = next.header("cache-status").unwrap();
        assert_eq!(status, "impcache; hit; ttl=600", "round {round}");
        assert_eq!(next.body, "call 1");
        assert_eq!(calls.get(), 1 + round, "round {round}: one revalidation");
    }
}

/// A tag field value with a byte that is not UTF-8: only the token holding it is left out; the
/// other tags of the value (and of the other fields) still purge the response.
#[tokio::test]
async fn a_tag_that_is_not_utf8_leaves_the_other_tags_of_its_field() {
    for purge in ["good1", "good2", "good3"] {
        let layer = CacheLayer::new(memory_cache());
        let (svc, calls) = app(layer.clone(), |n, _req| async move {
            let surrogate_key = http::HeaderValue::from_bytes(b"good1 bad\xff,good2").unwrap();
            Response::builder()
                .header("surrogate-key", surrogate_key)
                .header("cache-tag", "good3")
                .body(Body::from(format!("call {n}")))
                .unwrap()
        });
        stored(&svc, &layer, "/i").await;
        layer.purge_tag(purge).await.unwrap();
        assert_eq!(send(&svc, get("/i")).await.outcome(), "MISS", "{purge}");
        assert_eq!(calls.get(), 2, "{purge}");
    }
}

/// A HEAD that misses goes to the handler and is never stored; its answer loses the tag fields
/// and the layer's own `impcache-tags` field as a GET's does (found by a probe: the HEAD path
/// returned before the forged field was removed).
#[tokio::test]
async fn a_head_miss_serves_no_tag_field() {
    let layer = CacheLayer::new(memory_cache());
    let (svc, _) = app(layer, |_, _req| async move {
        Response::builder()
            .header("surrogate-key", "user:1")
            .header("impcache-tags", "1 forged")
            .body(Body::from("x"))
            .unwrap()
    });
    let head = send(&svc, request("HEAD", "/h", &[])).await;
    assert_eq!(head.header("surrogate-key"), None);
    assert_eq!(head.header("impcache-tags"), None);
}
