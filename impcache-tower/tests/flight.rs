//! Request coalescing across the store boundary, a cancelled leader's hand-over, and streaming
//! cacheable responses (issue 12, items 2-4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;
use impcache::{BoxFuture, CacheRepository, Expiry, MemoryCacheRepository};
use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// Longest wait for something the test expects to happen (a hang fails the test, slowly).
const PATIENCE: Duration = Duration::from_secs(10);

fn layer() -> CacheLayer {
    CacheLayer::new(memory_cache()).expire(60)
}

/// Waits (bounded) until `calls` reaches `n`.
async fn wait_calls(calls: &Calls, n: usize) {
    for _ in 0..2000 {
        if calls.get() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the handler was called {} times, never {n}", calls.get());
}

/// Issue 12 item 2: with Redis, a request sent right after the previous response for the same
/// URL was read must be a hit: the background store may still be on its way to Redis, and the
/// second request's GET may overtake it. One handler call per URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_response_is_a_hit_for_the_next_request_with_redis() {
    let redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url()).build().unwrap();
    let (svc, calls) = counting(CacheLayer::new(Cache::new(repository)).expire(60));
    let mut misses = Vec::new();
    for i in 0..200 {
        let uri = format!("/rw/{i}");
        let first = send(&svc, get(&uri)).await;
        assert_eq!(first.outcome(), "MISS");
        let second = send(&svc, get(&uri)).await;
        if second.outcome() != "HIT" || second.body != first.body {
            misses.push((i, second.header("cache-status").map(str::to_owned)));
        }
    }
    assert_eq!(
        (calls.get(), misses.len()),
        (200, 0),
        "one handler call per URL; second requests not served from the first: {misses:?}"
    );
}

/// The same for each `Vary` variant of a URL: a request for a second variant, sent while the
/// first variant's store is still under way (the URL's flight is the first variant's), waits for
/// that store to land and leads its own variant's flight, so that the next request for it is a
/// hit too. Memory on a one-thread runtime (where a background store runs only once the test
/// awaits something pending), and Redis.
async fn every_variant_is_a_hit_for_the_next_request(layer: CacheLayer, urls: usize) {
    let (svc, calls) = app(layer, |n, _req| async move {
        Response::builder()
            .header("vary", "accept-encoding")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let mut misses = Vec::new();
    for i in 0..urls {
        let uri = format!("/variants/{i}");
        for encoding in ["gzip", "br", "identity"] {
            let request = || request("GET", &uri, &[("accept-encoding", encoding)]);
            let first = send(&svc, request()).await;
            let second = send(&svc, request()).await;
            if first.outcome() != "MISS" || second.outcome() != "HIT" || second.body != first.body {
                misses.push((
                    i,
                    encoding,
                    second.header("cache-status").map(str::to_owned),
                ));
            }
        }
    }
    assert_eq!(
        (calls.get(), misses.len()),
        (3 * urls, 0),
        "one handler call per variant; second requests not served from the first: {misses:?}"
    );
}

#[tokio::test]
async fn every_variant_is_a_hit_for_the_next_request_in_memory() {
    every_variant_is_a_hit_for_the_next_request(layer(), 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_variant_is_a_hit_for_the_next_request_with_redis() {
    let redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url()).build().unwrap();
    let layer = CacheLayer::new(Cache::new(repository)).expire(60);
    every_variant_is_a_hit_for_the_next_request(layer, 100).await;
}

/// Concurrent misses of many `Vary` variants of one URL: one handler call per variant, on a cold
/// URL and on one whose `Vary` is known (one variant stored). A request handed another variant's
/// response joins its own variant's flight; one whose lookup found the `Vary` names joins it when
/// it is under way. (Past two variants, every request used to call the handler: 32 calls for 5
/// variants × 10 requests, 22 for 4 new ones.)
async fn one_call_per_variant_however_many_miss_at_once(layer: CacheLayer) {
    const ENCODINGS: [&str; 5] = ["gzip", "br", "identity", "deflate", "zstd"];
    let (svc, calls) = app(layer, |_, req| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let encoding = req.headers()["accept-encoding"]
            .to_str()
            .unwrap()
            .to_owned();
        Response::builder()
            .header("vary", "accept-encoding")
            .body(Body::from(encoding))
            .unwrap()
    });
    for (uri, encodings) in [("/cold", &ENCODINGS[..]), ("/known", &ENCODINGS[1..])] {
        if uri == "/known" {
            let gzip = || request("GET", uri, &[("accept-encoding", "gzip")]);
            send(&svc, gzip()).await;
            while send(&svc, gzip()).await.outcome() != "HIT" {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let before = calls.get();
        let requests: Vec<_> = (0..10)
            .flat_map(|_| encodings.iter())
            .map(|&encoding| {
                let request = request("GET", uri, &[("accept-encoding", encoding)]);
                (encoding, tokio::spawn(send(&svc, request)))
            })
            .collect();
        let mut statuses = Vec::new();
        for (encoding, answer) in requests {
            let seen = tokio::time::timeout(PATIENCE, answer)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(seen.body, encoding, "{uri}: its own variant");
            statuses.push((encoding, seen.header("cache-status").map(str::to_owned)));
        }
        statuses.retain(|(_, status)| status.as_deref().is_some_and(|s| !s.contains("hit")));
        assert_eq!(
            calls.get() - before,
            encodings.len(),
            "{uri}: one call per variant: {statuses:?}"
        );
    }
}

/// A request that waited for another variant's call has its own variant's wait whole: the lock
/// timeout is per flight, as nginx's lock is per cache key. Counted across both (found by a
/// probe), 3 variants × 6 requests with 600 ms calls and a 1 s `lock_timeout` made 13 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_another_variant_leaves_the_lock_timeout_of_its_own_whole() {
    let layer = layer().lock_timeout(Duration::from_secs(1));
    let (svc, calls) = app(layer, |n, _| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Response::builder()
            .header("vary", "accept-language")
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let languages = ["en", "fr", "de"];
    let answers: Vec<_> = (0..18)
        .map(|i| {
            let request = request("GET", "/v", &[("accept-language", languages[i % 3])]);
            tokio::spawn(send(&svc, request))
        })
        .collect();
    for answer in answers {
        let seen = tokio::time::timeout(PATIENCE, answer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.status, 200);
    }
    assert_eq!(calls.get(), 3, "one call per variant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_per_variant_however_many_miss_at_once_in_memory() {
    one_call_per_variant_however_many_miss_at_once(layer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_per_variant_however_many_miss_at_once_with_redis() {
    let redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url()).build().unwrap();
    let layer = CacheLayer::new(Cache::new(repository)).expire(60);
    one_call_per_variant_however_many_miss_at_once(layer).await;
}

/// The same for credential variants (`allow_authenticated`, a response without `Vary`): one
/// handler call per user, each user answered with their own response. (41 calls for 5 users × 10
/// requests before: a waiter handed another user's response called the handler itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_per_credential_variant() {
    let (svc, calls) = app(layer().allow_authenticated(true), |_, req| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let user = req.headers()["authorization"].to_str().unwrap().to_owned();
        Response::new(Body::from(user))
    });
    let requests: Vec<_> = (0..10)
        .flat_map(|_| 0..5)
        .map(|user| {
            let user = format!("Bearer u{user}");
            let request = request("GET", "/me", &[("authorization", &user)]);
            (user, tokio::spawn(send(&svc, request)))
        })
        .collect();
    for (user, answer) in requests {
        let seen = tokio::time::timeout(PATIENCE, answer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.body, user, "the user's own response");
    }
    assert_eq!(calls.get(), 5, "one call per user");
}

/// A `HEAD` sent right after a `GET` was delivered is a hit too (the entry of the `GET`'s flight,
/// whose store may still be under way), without a body; it called the handler. A `HEAD` never
/// leads a flight: with none in progress it goes to the handler, as a `HEAD`.
async fn a_head_right_after_a_delivered_get_is_a_hit(layer: CacheLayer, urls: usize) {
    let (svc, calls) = counting(layer);
    let mut misses = Vec::new();
    for i in 0..urls {
        let uri = format!("/head/{i}");
        let first = send(&svc, get(&uri)).await;
        let head = send(&svc, request("HEAD", &uri, &[])).await;
        if head.outcome() != "HIT" || !head.body.is_empty() {
            misses.push((i, head.header("cache-status").map(str::to_owned)));
        }
        assert_eq!(
            head.header("content-length").map(str::to_owned),
            Some(first.body.len().to_string()),
            "{:?}",
            head.headers
        );
    }
    assert_eq!((calls.get(), misses.len()), (urls, 0), "{misses:?}");
}

#[tokio::test]
async fn a_head_right_after_a_delivered_get_is_a_hit_in_memory() {
    a_head_right_after_a_delivered_get_is_a_hit(layer(), 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_right_after_a_delivered_get_is_a_hit_with_redis() {
    let redis = RedisServer::start();
    let repository = RedisCacheRepository::builder(redis.url()).build().unwrap();
    let layer = CacheLayer::new(Cache::new(repository)).expire(60);
    a_head_right_after_a_delivered_get_is_a_hit(layer, 50).await;
}

/// A memory repository whose next `get` reads its answer, then holds it until the test lets it
/// go: a lookup that overtakes a store.
#[derive(Debug)]
struct HeldRead {
    inner: MemoryCacheRepository,
    /// Set by the test: the next `get` waits for this gate after reading.
    gate: std::sync::Mutex<Option<(tokio::sync::oneshot::Sender<()>, watch::Receiver<bool>)>>,
    /// Every `get` fails (the backend is down), and is counted.
    down: Option<std::sync::atomic::AtomicUsize>,
}

impl CacheRepository for HeldRead {
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.inner.set(key, value, expiry)
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<bool>> {
        self.inner.set_nx(key, value, expiry)
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, impcache::Result<()>> {
        self.inner.set_many(entries, expiry)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<Option<Bytes>>> {
        let gate = self.gate.lock().unwrap().take();
        Box::pin(async move {
            let mut read = self.inner.get(key).await;
            if let Some(gets) = &self.down {
                gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                read = Err(impcache::Error::Unavailable {
                    operation: "get",
                    key: key.to_owned(),
                    source: "down".into(),
                });
            }
            if let Some((reading, mut open)) = gate {
                reading.send(()).unwrap();
                open.wait_for(|open| *open).await.unwrap();
            }
            read
        })
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, impcache::Result<Vec<Option<Bytes>>>> {
        self.inner.get_many(keys)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete(key)
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_many(keys)
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, impcache::Result<u64>> {
        self.inner.delete_pattern(pattern)
    }
}

/// Issue 12 item 2, the race itself: a request's lookup reads "nothing" and is held; meanwhile
/// another request makes the whole flight (handler call, store, flight closed). When the held
/// lookup returns its miss, the request must not call the handler again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_overtaken_by_a_whole_flight_does_not_call_the_handler_again() {
    let (reading, read) = tokio::sync::oneshot::channel();
    let (open, opened) = watch::channel(false);
    let repository = HeldRead {
        inner: MemoryCacheRepository::new(),
        gate: std::sync::Mutex::new(Some((reading, opened))),
        down: None,
    };
    let layer = CacheLayer::new(Cache::new(repository)).expire(60);
    let (svc, calls) = counting(layer.clone());
    let late = tokio::spawn(send(&svc, get("/race")));
    read.await.unwrap();
    // The late request has read "nothing" and is held. Another one calls the handler, stores, and
    // its flight ends (the store runs in the background; give the flight time to close, else the
    // late request simply finds it open, which passes too).
    let first = send(&svc, get("/race")).await;
    assert_eq!(first.body, "call 1");
    wait_stored(&layer, "/race").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.send_replace(true);
    let late = tokio::time::timeout(PATIENCE, late).await.unwrap().unwrap();
    assert_eq!(
        (late.outcome(), late.body.as_ref()),
        ("HIT", &b"call 1"[..])
    );
    assert_eq!(calls.get(), 1);
}

/// A stale-while-revalidate hit during whose lookup flights of other URLs ended still
/// revalidates in the background. (Flights share groups by hash: one of them ending makes the
/// revalidation look again first, as it may be this URL's flight, whose store the lookup
/// overtook; it is not a reason to give up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_of_other_urls_ending_during_a_stale_lookup_do_not_cancel_its_revalidation() {
    let repository = std::sync::Arc::new(HeldRead {
        inner: MemoryCacheRepository::new(),
        gate: std::sync::Mutex::new(None),
        down: None,
    });
    let layer = CacheLayer::new(Cache::builder_shared(repository.clone()).build())
        .expire(Duration::from_millis(300))
        .stale_while_revalidate(Duration::from_secs(60));
    let (svc, calls) = counting(layer.clone());
    assert_eq!(send(&svc, get("/swr")).await.body, "call 1");
    wait_stored(&layer, "/swr").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (reading, read) = tokio::sync::oneshot::channel();
    let (open, opened) = watch::channel(false);
    *repository.gate.lock().unwrap() = Some((reading, opened));
    let stale = tokio::spawn(send(&svc, get("/swr")));
    read.await.unwrap();
    // 500 URLs are called and stored while the stale lookup is held: about 8 flights end in
    // each of the table's 64 groups, `/swr`'s among them.
    for n in 0..500 {
        let uri = format!("/other/{n}");
        assert_eq!(send(&svc, get(&uri)).await.outcome(), "MISS");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    open.send_replace(true);
    let stale = tokio::time::timeout(PATIENCE, stale)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stale.body, "call 1");
    // The revalidation: call 502.
    wait_calls(&calls, 502).await;
    for _ in 0..2000 {
        if send(&svc, get("/swr")).await.body == "call 502" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the revalidated response never answered");
}

/// Fail open costs one lookup: a request whose lookup failed against the backend while its
/// URL's flight ended calls the handler without looking the cache up again (that second lookup
/// cost a second deadline when Redis was frozen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_is_not_repeated_when_a_flight_ended_during_it() {
    let (reading, read) = tokio::sync::oneshot::channel();
    let (open, opened) = watch::channel(false);
    let repository = std::sync::Arc::new(HeldRead {
        inner: MemoryCacheRepository::new(),
        gate: std::sync::Mutex::new(Some((reading, opened))),
        down: Some(std::sync::atomic::AtomicUsize::new(0)),
    });
    let layer = CacheLayer::new(Cache::builder_shared(repository.clone()).build()).expire(60);
    let (svc, calls) = counting(layer.clone());
    let late = tokio::spawn(send(&svc, get("/down")));
    read.await.unwrap();
    // The late request's lookup has failed and is held; another request makes a whole flight.
    let first = send(&svc, get("/down")).await;
    assert_eq!(first.body, "call 1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.send_replace(true);
    let late = tokio::time::timeout(PATIENCE, late).await.unwrap().unwrap();
    assert_eq!(late.body, "call 2");
    assert_eq!(calls.get(), 2);
    let gets = repository
        .down
        .as_ref()
        .unwrap()
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(gets, 2, "one lookup per request");
}

/// How the first leader goes away.
#[derive(Clone, Copy, PartialEq)]
enum Exit {
    /// Its client disconnects: the request's future is dropped.
    Cancelled,
    /// Its handler panics.
    Panicked,
}

/// Issue 12 item 3: the leader goes away mid-flight with 8 waiters: exactly one more handler
/// call, and every waiter answered by it (the old code let every waiter call the handler).
async fn a_leader_that_goes_away_hands_over_to_one_new_leader(exit: Exit) {
    let (open, opened) = watch::channel(false);
    let (svc, calls) = app(layer(), move |n, _| {
        let mut opened = opened.clone();
        async move {
            // Every call waits for the test's signal; the first one's signal makes it panic.
            opened.wait_for(|open| *open).await.unwrap();
            if n == 1 {
                panic!("the first handler call fails (on purpose)");
            }
            Response::new(Body::from(format!("call {n}")))
        }
    });
    let leader = tokio::spawn(send(&svc, get("/handover")));
    wait_calls(&calls, 1).await;
    let waiters: Vec<_> = (0..8)
        .map(|_| tokio::spawn(send(&svc, get("/handover"))))
        .collect();
    // Let the waiters join the flight (one that joined later would find the new leader's flight
    // all the same: the count below does not depend on this pause).
    tokio::time::sleep(Duration::from_millis(100)).await;
    match exit {
        Exit::Cancelled => leader.abort(),
        Exit::Panicked => {
            open.send_replace(true);
        }
    }
    assert!(leader.await.is_err(), "the first request never answers");
    wait_calls(&calls, 2).await;
    // A stampede would show here: give the other waiters time to call the handler too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.send_replace(true);
    for waiter in waiters {
        let seen = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("every waiter is answered")
            .unwrap();
        assert_eq!(seen.body, "call 2");
    }
    assert_eq!(calls.get(), 2, "one new leader, not one call per waiter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_hands_over_to_one_new_leader() {
    a_leader_that_goes_away_hands_over_to_one_new_leader(Exit::Cancelled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_hands_over_to_one_new_leader() {
    a_leader_that_goes_away_hands_over_to_one_new_leader(Exit::Panicked).await;
}

/// A response body fed chunk by chunk through a channel by the test.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

type Feed = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// A handler whose response body is a [`ChannelBody`]; the test receives each call's feed.
fn streaming(layer: CacheLayer) -> (Svc, Calls, mpsc::UnboundedReceiver<Feed>) {
    let (feeds, fed) = mpsc::unbounded_channel();
    let (svc, calls) = app(layer, move |_, _| {
        let feeds = feeds.clone();
        async move {
            let (feed, chunks) = mpsc::channel(4);
            feeds.send(feed).unwrap();
            Response::new(Body::new(ChannelBody(chunks)))
        }
    });
    (svc, calls, fed)
}

/// The response to `uri`, once its head has arrived.
async fn head_of(svc: &Svc, uri: &str) -> Response<impcache_tower::ResponseBody<Body>> {
    let response = tokio::spawn(svc.clone().oneshot(get(uri)));
    tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the response leaves before its body has ended")
        .unwrap()
        .unwrap()
}

/// The next data chunk the client receives.
async fn next_chunk(body: &mut impcache_tower::ResponseBody<Body>) -> Bytes {
    tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("a chunk reaches the client as soon as the handler produces it")
        .expect("a chunk, not the end")
        .expect("a chunk, not an error")
        .into_data()
        .expect("data")
}

async fn stored(layer: &CacheLayer, uri: &str) -> bool {
    let key = format!("{}:v", layer.request_key(&get(uri)));
    layer
        .cache()
        .repository()
        .get(&key)
        .await
        .unwrap()
        .is_some()
}

/// Issue 12 item 4: a cacheable response arriving in chunks reaches the client chunk by chunk
/// (the old code held it back until the last chunk), and is stored once complete; requests that
/// arrived meanwhile wait for the completed copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacheable_body_streams_to_the_client_and_is_stored_once_complete() {
    let layer = layer();
    let (svc, calls, mut feeds) = streaming(layer.clone());
    let response = head_of(&svc, "/stream").await;
    let feed = feeds.recv().await.unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "impcache; fwd=uri-miss; detail=streamed"
    );
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one "))).await.unwrap();
    // Chunk 1 reaches the client while the handler still holds chunk 2 back.
    assert_eq!(next_chunk(&mut body).await, "one ");
    assert!(
        !stored(&layer, "/stream").await,
        "not stored before it is complete"
    );
    // Requests arriving now wait for the copy.
    let waiters: Vec<_> = (0..4)
        .map(|_| tokio::spawn(send(&svc, get("/stream"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    feed.send(Ok(Bytes::from("two"))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "two");
    drop(feed);
    assert!(body.frame().await.is_none(), "the end");
    for waiter in waiters {
        let seen = tokio::time::timeout(PATIENCE, waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (seen.outcome(), seen.body.as_ref()),
            ("HIT", &b"one two"[..])
        );
    }
    wait_stored(&layer, "/stream").await;
    let hit = send(&svc, get("/stream")).await;
    assert_eq!((hit.outcome(), hit.body.as_ref()), ("HIT", &b"one two"[..]));
    assert_eq!(hit.header("content-length"), Some("7"));
    assert!(
        hit.header("etag").is_some(),
        "computed from the stored body"
    );
    assert_eq!(calls.get(), 1);
}

/// Issue 12 item 4: a streamed body that does not complete (its client disconnects, or the body
/// fails) is not stored; past the size limit it streams through unstored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_stored_only_when_complete_and_within_the_limit() {
    let layer = layer().max_body_size(5);
    let (svc, calls, mut feeds) = streaming(layer.clone());

    // The client disconnects after the first chunk.
    let response = head_of(&svc, "/gone").await;
    let feed = feeds.recv().await.unwrap();
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one"))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "one");
    drop(body);
    let _ = feed.send(Ok(Bytes::from("s"))).await;
    drop(feed);
    assert!(!stored(&layer, "/gone").await);

    // The body fails after the first chunk.
    let response = head_of(&svc, "/fails").await;
    let feed = feeds.recv().await.unwrap();
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one"))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "one");
    feed.send(Err(std::io::Error::other("broken")))
        .await
        .unwrap();
    assert!(
        body.frame().await.unwrap().is_err(),
        "the client sees the error"
    );
    drop(feed);

    // Past the limit (5 bytes): all of it reaches the client.
    let response = head_of(&svc, "/large").await;
    let feed = feeds.recv().await.unwrap();
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one "))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "one ");
    feed.send(Ok(Bytes::from("two"))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "two");
    drop(feed);
    assert!(body.frame().await.is_none(), "the end");

    // None of them was stored: each is a miss again (the store would have been in the
    // background: give it time to show).
    tokio::time::sleep(Duration::from_millis(100)).await;
    for uri in ["/gone", "/fails", "/large"] {
        assert!(!stored(&layer, uri).await, "{uri} stored");
        let again = head_of(&svc, uri).await;
        assert_eq!(
            again.headers()["cache-status"],
            "impcache; fwd=uri-miss; detail=streamed",
            "{uri}"
        );
        drop(feeds.recv().await.unwrap());
    }
    assert_eq!(calls.get(), 6);
}

/// Issue 12 item 4 end to end: axum over TCP and a real HTTP client, which receives the first
/// chunk while the handler still holds the second back; the next request is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_reaches_an_http_client_chunk_by_chunk() {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (feeds, mut fed) = mpsc::unbounded_channel::<Feed>();
    let app = axum::Router::new()
        .route(
            "/events",
            axum::routing::get(move || {
                let feeds = feeds.clone();
                async move {
                    let (feed, chunks) = mpsc::channel(4);
                    feeds.send(feed).unwrap();
                    Body::new(ChannelBody(chunks))
                }
            }),
        )
        .layer(layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let fetch = |client: Client<_, Full<Bytes>>| async move {
        let request = http::Request::get(format!("http://{addr}/events"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::time::timeout(PATIENCE, client.request(request))
            .await
            .expect("the response head arrives before the body has ended")
            .unwrap()
    };

    let response = fetch(client.clone()).await;
    let feed = fed.recv().await.unwrap();
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one "))).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("chunk 1 reaches the client while chunk 2 is held back")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "one ");
    feed.send(Ok(Bytes::from("two"))).await.unwrap();
    drop(feed);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "two");

    let hit = fetch(client.clone()).await;
    let status = hit.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(status.starts_with("impcache; hit"), "{status}");
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        "one two"
    );
    server.abort();
}

/// Issue 12 items 3 and 4: requests waiting for a streamed body whose client disconnects
/// mid-way elect one new leader (nothing was stored, and a stampede is what coalescing avoids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_body_dropped_mid_way_elect_one_new_leader() {
    let (svc, calls, mut feeds) = streaming(layer());
    let response = head_of(&svc, "/dropped").await;
    let feed = feeds.recv().await.unwrap();
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one "))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "one ");
    let waiters: Vec<_> = (0..4)
        .map(|_| tokio::spawn(send(&svc, get("/dropped"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(body);
    drop(feed);
    let feed = tokio::time::timeout(PATIENCE, feeds.recv())
        .await
        .expect("a new leader calls the handler")
        .unwrap();
    // A stampede would show here: give the other waiters time to call the handler too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    feed.send(Ok(Bytes::from("fresh"))).await.unwrap();
    drop(feed);
    let mut outcomes = Vec::new();
    for waiter in waiters {
        let seen = tokio::time::timeout(PATIENCE, waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.body, "fresh");
        outcomes.push(seen.outcome());
    }
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["HIT", "HIT", "HIT", "MISS"]);
    assert_eq!(calls.get(), 2);
}

/// Requests waiting for a streamed body that fails mid-way (the upstream's error after a chunk)
/// elect one new leader, as for a body dropped mid-way: the leader's client gets the error,
/// nothing is stored, and the waiters share one handler call (found by a probe: each waiter
/// called the handler at once, 20 requests made 20 calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_streamed_body_that_fails_mid_way_elect_one_new_leader() {
    let (svc, calls, mut feeds) = streaming(layer());
    let response = head_of(&svc, "/broken").await;
    let feed = feeds.recv().await.unwrap();
    let mut body = response.into_body();
    feed.send(Ok(Bytes::from("one "))).await.unwrap();
    assert_eq!(next_chunk(&mut body).await, "one ");
    let waiters: Vec<_> = (0..4)
        .map(|_| tokio::spawn(send(&svc, get("/broken"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    feed.send(Err(std::io::Error::other("upstream reset")))
        .await
        .unwrap();
    let failed = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the error reaches the client")
        .expect("an error, not the end");
    assert!(failed.is_err(), "the leader's client gets the error");
    let feed = tokio::time::timeout(PATIENCE, feeds.recv())
        .await
        .expect("a new leader calls the handler")
        .unwrap();
    // A stampede would show here: give the other waiters time to call the handler too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.get(), 2, "one new leader, not one call per waiter");
    feed.send(Ok(Bytes::from("fresh"))).await.unwrap();
    drop(feed);
    let mut outcomes = Vec::new();
    for waiter in waiters {
        let seen = tokio::time::timeout(PATIENCE, waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.body, "fresh");
        outcomes.push(seen.outcome());
    }
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["HIT", "HIT", "HIT", "MISS"]);
    assert_eq!(calls.get(), 2);
}

/// The same for a body that fails before the response leaves (its chunk and its error both
/// ready when the layer reads it): the leader's client gets the chunk and the error, its 8
/// waiters one new leader's response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_body_that_fails_at_once_elect_one_new_leader() {
    let (open, opened) = watch::channel(false);
    let (svc, calls) = app(layer(), move |n, _| {
        let mut opened = opened.clone();
        async move {
            opened.wait_for(|open| *open).await.unwrap();
            if n > 1 {
                return Response::new(Body::from(format!("call {n}")));
            }
            let (feed, chunks) = mpsc::channel(2);
            feed.try_send(Ok(Bytes::from("part"))).unwrap();
            feed.try_send(Err(std::io::Error::other("upstream reset")))
                .unwrap();
            Response::new(Body::new(ChannelBody(chunks)))
        }
    });
    let leader = tokio::spawn(svc.clone().oneshot(get("/fails-at-once")));
    wait_calls(&calls, 1).await;
    let waiters: Vec<_> = (0..8)
        .map(|_| tokio::spawn(send(&svc, get("/fails-at-once"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.send_replace(true);
    let response = tokio::time::timeout(PATIENCE, leader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "impcache; fwd=uri-miss; detail=body-error"
    );
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await, "part");
    assert!(
        body.frame().await.unwrap().is_err(),
        "the client sees the error"
    );
    for waiter in waiters {
        let seen = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("every waiter is answered")
            .unwrap();
        assert_eq!(seen.body, "call 2");
    }
    assert_eq!(calls.get(), 2, "one new leader, not one call per waiter");
}

/// A request waits for other requests' calls one lock timeout in all, however many leaders it
/// waits for in turn: with an upstream whose body always fails mid-way, each leader hands over to
/// one waiter, and the requests waited for each other one call after another, the wait starting
/// again at every hand-over (15 requests, a body failing 300 ms in: the last answered after
/// 4.5 s, 15 calls in a row; with 5 s calls and the default 10 s lock timeout, 100 s for 20).
/// Now a request that joins again waits only what is left of its lock timeout, then calls the
/// handler itself: every request is answered within about the lock timeout and one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_behind_bodies_that_always_fail_wait_one_lock_timeout_in_all() {
    const LOCK_TIMEOUT: Duration = Duration::from_secs(1);
    const FAILS_AFTER: Duration = Duration::from_millis(300);
    let layer = layer().lock_timeout(LOCK_TIMEOUT);
    let (svc, calls) = app(layer.clone(), |n, _| async move {
        let (feed, chunks) = mpsc::channel(2);
        feed.try_send(Ok(Bytes::from(format!("part of call {n}"))))
            .unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(FAILS_AFTER).await;
            let _ = feed
                .send(Err(std::io::Error::other("upstream reset")))
                .await;
        });
        Response::new(Body::new(ChannelBody(chunks)))
    });
    /// Sends `get(uri)` and reads its body to its end: how long after `started` it ended, and
    /// whether in an error.
    async fn answered(svc: Svc, started: std::time::Instant) -> (Duration, bool) {
        let response = svc.oneshot(get("/always-fails")).await.unwrap();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return (started.elapsed(), true);
            }
        }
        (started.elapsed(), false)
    }
    let started = std::time::Instant::now();
    let first = tokio::spawn(answered(svc.clone(), started));
    wait_calls(&calls, 1).await;
    let others: Vec<_> = (0..14)
        .map(|_| tokio::spawn(answered(svc.clone(), started)))
        .collect();
    let mut last = Duration::ZERO;
    for request in std::iter::once(first).chain(others) {
        let (ended, failed) = tokio::time::timeout(PATIENCE, request)
            .await
            .expect("every request is answered")
            .unwrap();
        assert!(failed, "every body is the failing upstream's");
        last = last.max(ended);
    }
    // About 1.3 s (the lock timeout, then one call); 4.5 s before. A wide margin all the same.
    assert!(
        last < Duration::from_millis(2500),
        "the last request ended after {last:?}: the waits restarted at each hand-over ({} calls)",
        calls.get()
    );
    assert!(!stored(&layer, "/always-fails").await, "nothing stored");
}

/// The same for the hard timeout: a request that waited for leaders that went away has what is
/// left of its own for its call, as one behind a call that timed out has. 9 requests, a handler
/// taking 300 ms whose body then fails, a 1 s hard timeout: the fourth leader has 100 ms left,
/// its call is given up (`504`), and the requests behind it have nothing left: `504` too,
/// without calling the handler (before, each new leader had a whole hard timeout, and the last
/// request ended after 2.7 s, 9 calls in a row). Paused clock: no timing is left to chance.
#[tokio::test(start_paused = true)]
async fn a_handed_over_request_has_what_is_left_of_its_hard_timeout() {
    const HARD: Duration = Duration::from_secs(1);
    let layer = layer().hard_timeout(HARD);
    let (svc, calls) = app(layer, |n, _| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (feed, chunks) = mpsc::channel(2);
        feed.try_send(Ok(Bytes::from(format!("part of call {n}"))))
            .unwrap();
        feed.try_send(Err(std::io::Error::other("upstream reset")))
            .unwrap();
        Response::new(Body::new(ChannelBody(chunks)))
    });
    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..9)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/hard-handover"))))
        .collect();
    let mut timed_out = 0;
    for request in requests {
        let response = request.await.unwrap().unwrap();
        if response.status() == http::StatusCode::GATEWAY_TIMEOUT {
            timed_out += 1;
            let cache_status = &response.headers()["cache-status"];
            assert!(
                cache_status
                    .to_str()
                    .unwrap()
                    .ends_with("; detail=handler-timeout"),
                "{cache_status:?}"
            );
        }
    }
    // 1 s; 2.7 s before.
    assert!(
        started.elapsed() < HARD + Duration::from_millis(500),
        "answered after {:?}, with a hard timeout of {HARD:?} ({} calls)",
        started.elapsed(),
        calls.get()
    );
    assert!(timed_out > 0, "the last requests had no time left");
    assert!(calls.get() < 9, "{} calls: one per request", calls.get());
}

/// Server-sent events (`Content-Type: text/event-stream`) are never stored: a copy of a stream
/// that never ends held every request joining its flight for a whole `lock_timeout` (10 s by
/// default), then each called the handler (found by a probe). Now each subscriber gets its own
/// stream at once (`detail=event-stream`), whatever the `lock_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_not_stored_and_holds_no_other_subscriber() {
    let layer = layer().lock_timeout(Duration::from_secs(3600));
    let (feeds, mut fed) = mpsc::unbounded_channel();
    let (svc, calls) = app(layer.clone(), move |_, _| {
        let feeds = feeds.clone();
        async move {
            let (feed, chunks) = mpsc::channel(4);
            feeds.send(feed).unwrap();
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::new(ChannelBody(chunks)))
                .unwrap()
        }
    });
    let mut subscribers = Vec::new();
    for n in 1..=2 {
        let response = head_of(&svc, "/events").await;
        let feed = fed.recv().await.unwrap();
        assert_eq!(
            response.headers()["cache-status"],
            "impcache; fwd=uri-miss; detail=event-stream"
        );
        let mut body = response.into_body();
        feed.send(Ok(Bytes::from("data: 1\n\n"))).await.unwrap();
        assert_eq!(next_chunk(&mut body).await, "data: 1\n\n");
        assert_eq!(calls.get(), n);
        // Both streams stay open.
        subscribers.push((feed, body));
    }
    assert!(!stored(&layer, "/events").await);
}
