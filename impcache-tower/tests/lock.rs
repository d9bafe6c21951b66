//! `CacheLayer::lock` (issue 16): one handler call per URL across processes (two layers over two
//! `Cache`s on one Redis, as two processes would be), and fail open when Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Response, StatusCode};
use impcache::{Cache, Lock, RedisCacheRepository};
use impcache_tests::RedisServer;
use impcache_tower::CacheLayer;
use support::*;

fn locked_layer(redis: &RedisServer) -> CacheLayer {
    let repository = RedisCacheRepository::builder(redis.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    CacheLayer::new(Cache::new(repository)).lock(Lock::new().wait(Duration::from_secs(5)))
}

/// A slow handler counting its calls in `calls`, shared by every service made with it.
fn slow(layer: CacheLayer, calls: Arc<AtomicUsize>) -> Svc {
    app(layer, move |_, _req| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(Body::from(format!("call {n}")))
        }
    })
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_in_two_processes_call_the_handler_once() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let first = slow(locked_layer(&redis), Arc::clone(&calls));
    let second = slow(locked_layer(&redis), Arc::clone(&calls));
    let requests: Vec<_> = (0..10)
        .map(|i| {
            let svc = if i % 2 == 0 { &first } else { &second };
            tokio::spawn(send(svc, get("/report")))
        })
        .collect();
    for request in requests {
        let seen = request.await.unwrap();
        assert_eq!(
            (seen.status, &seen.body[..]),
            (StatusCode::OK, &b"call 1"[..])
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one handler call across both"
    );
    // The lock was released after the store.
    let lock_key = format!("{}:v", locked_layer(&redis).request_key(&get("/report")));
    let lock_key = lock_key.replacen("cache:1:", "cache:1:__lock:", 1);
    let mut client = redis::Client::open(redis.url()).unwrap();
    for _ in 0..100 {
        let exists: bool = redis::Cmd::exists(&lock_key).query(&mut client).unwrap();
        if !exists {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{lock_key} was never released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_handler_answers() {
    let mut redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = slow(locked_layer(&redis), Arc::clone(&calls));
    redis.kill();
    for _ in 0..2 {
        let seen = send(&svc, get("/down")).await;
        assert_eq!(seen.status, StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A lock whose lifetime is not set outlasts the layer's `hard_timeout` (the hard timeout plus
/// 5 s), as `get_or_set`'s does: with a 30 s hard timeout the lock lives 35 s, not 10 s, so a
/// handler call longer than 10 s keeps its URL's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_lock_lifetime_outlasts_the_hard_timeout() {
    let redis = RedisServer::start();
    let layer = locked_layer(&redis).hard_timeout(Duration::from_secs(30));
    let (started, mut running) = tokio::sync::mpsc::channel::<()>(1);
    let (svc, _) = app(layer.clone(), move |_, _req| {
        let started = started.clone();
        async move {
            started.send(()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            Response::new(Body::from("slow"))
        }
    });
    let request = tokio::spawn(send(&svc, get("/long")));
    running.recv().await.unwrap();
    let lock_key = redis
        .keys()
        .into_iter()
        .find(|key| key.contains("__lock:"))
        .expect("the URL's lock");
    let ttl: i64 = redis.cmd(&["PTTL", &lock_key]);
    assert!(ttl > 30_000 && ttl <= 35_000, "{lock_key}: {ttl} ms");
    assert_eq!(request.await.unwrap().body, "slow");
}

/// `n` concurrent requests for `uri`, sent to the services in turn; their answers.
async fn burst(services: &[&Svc], uri: &str, n: usize) -> Vec<Seen> {
    let requests: Vec<_> = (0..n)
        .map(|i| tokio::spawn(send(services[i % services.len()], get(uri))))
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}

/// An expired response kept for `stale_if_error` is refreshed once across processes: the
/// lock is taken with a stale response at hand too (as `get_or_set` takes it with a stale value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_response_kept_for_stale_if_error_is_refreshed_once_across_processes() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let make = || {
        locked_layer(&redis)
            .expire(Duration::from_secs(1))
            .stale_if_error(Duration::from_secs(60))
    };
    let (first, second) = (slow(make(), calls.clone()), slow(make(), calls.clone()));
    assert_eq!(send(&first, get("/r")).await.body, "call 1");
    wait_stored(&make(), "/r").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let answers = burst(&[&first, &second], "/r", 10).await;
    let bodies: Vec<_> = answers.iter().map(|seen| seen.body.clone()).collect();
    assert!(bodies.iter().all(|body| body == "call 2"), "{bodies:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh across both");
}

/// Stale-while-revalidate: a stale hit in each process starts a background revalidation, which
/// tries the lock once and leaves the URL to the process holding it (as `get_or_set`'s
/// background reloads do): one handler call across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_revalidation_runs_once_across_processes() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let make = || {
        locked_layer(&redis)
            .expire(Duration::from_secs(1))
            .stale_while_revalidate(Duration::from_secs(60))
    };
    let (first, second) = (slow(make(), calls.clone()), slow(make(), calls.clone()));
    assert_eq!(send(&first, get("/r")).await.body, "call 1");
    wait_stored(&make(), "/r").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let answers = burst(&[&first, &second], "/r", 6).await;
    assert!(
        answers.iter().all(|seen| seen.body == "call 1"),
        "stale answers"
    );
    // The revalidation (300 ms) stores "call 2"; wait for it in both processes.
    for service in [&first, &second] {
        let mut body = Bytes::new();
        for _ in 0..200 {
            body = send(service, get("/r")).await.body;
            if body == "call 2" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(body, "call 2");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one revalidation across both"
    );
}

/// Handler calls under way at once, across the processes of a test, and the most there were.
#[derive(Clone, Default)]
struct UnderWay {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// A handler answering with the request's `Accept-Language` (`Vary: Accept-Language`); each call
/// waits (at most a second) until `meet` calls are `under_way` at once.
fn meeting(layer: CacheLayer, meet: usize, under_way: UnderWay) -> Svc {
    app(layer, move |_, request| {
        let under_way = under_way.clone();
        let language = request.headers()["accept-language"].clone();
        async move {
            let now = under_way.now.fetch_add(1, Ordering::SeqCst) + 1;
            under_way.most.fetch_max(now, Ordering::SeqCst);
            for _ in 0..100 {
                if under_way.now.load(Ordering::SeqCst) >= meet {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            under_way.now.fetch_sub(1, Ordering::SeqCst);
            Response::builder()
                .header("vary", "accept-language")
                .body(Body::from(language.to_str().unwrap().to_owned()))
                .unwrap()
        }
    })
    .0
}

fn get_in(svc: &Svc, language: &str) -> impl std::future::Future<Output = Seen> + Send + 'static {
    send(
        svc,
        request("GET", "/page", &[("accept-language", language)]),
    )
}

/// The lock is the response's: misses of different `Vary` variants of a URL in different
/// processes call the handler side by side (they queued behind one another on the URL's lock,
/// each waiting for every call ahead of it: 20 variants of a 100 ms handler took 2.1 s, 0.3 s
/// without the lock). Of a URL not stored yet, the variants wait once, for the first response,
/// which names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_of_different_variants_do_not_wait_for_each_other() {
    let redis = RedisServer::start();
    let under_way = UnderWay::default();
    let processes = |meet: usize| -> Vec<Svc> {
        (0..4)
            .map(|_| meeting(locked_layer(&redis), meet, under_way.clone()))
            .collect()
    };
    let send_all = |processes: &[Svc], languages: [&'static str; 4]| {
        let requests: Vec<_> = processes
            .iter()
            .zip(languages)
            .map(|(svc, language)| (tokio::spawn(get_in(svc, language)), language))
            .collect();
        async move {
            for (request, language) in requests {
                assert_eq!(request.await.unwrap().body, language);
            }
        }
    };
    // A URL not stored yet: one call first (alone), then the other three side by side.
    send_all(&processes(3), ["l0", "l1", "l2", "l3"]).await;
    let most = || under_way.most.load(Ordering::SeqCst);
    assert_eq!(most(), 3, "the other variants side by side");
    // A URL whose variants are known: four new ones side by side from the start.
    under_way.most.store(0, Ordering::SeqCst);
    send_all(&processes(4), ["m0", "m1", "m2", "m3"]).await;
    assert_eq!(most(), 4);
}

/// A transient failure under the lock (the first call answers `500`, the origin is back for the
/// next): the requests waiting for the failed call make one more call between them, through the
/// lock, and share its stored response. Each called the handler once the first change let them
/// past the lock (30 calls for 30 requests; found by a regression probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_under_the_lock_costs_one_more_call() {
    let redis = RedisServer::start();
    let (svc, calls) = app(locked_layer(&redis), move |n, _req| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = if n == 1 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        Response::builder()
            .status(status)
            .body(Body::from(format!("call {n}")))
            .unwrap()
    });
    let answers = burst(&[&svc], "/flaky", 20).await;
    let failed = answers
        .iter()
        .filter(|seen| seen.status == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert_eq!(failed, 1, "only the first call's own request");
    assert_eq!(calls.get(), 2, "one more call for all the waiters");
}

/// A burst of misses of a URL whose response is never stored (a `500`): the requests waiting
/// for their process's leader call once more through the lock (one of them, the others waiting
/// for it), then side by side, without the lock, as without one. They took the lock in turn, one call after another: 50 requests of a
/// 200 ms handler took 5.4 s in one process (the lock's wait), 0.4 s without the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_of_a_response_never_stored_do_not_take_the_lock_in_turn() {
    let redis = RedisServer::start();
    let under_way = UnderWay::default();
    let (svc, calls) = app(locked_layer(&redis), {
        let under_way = under_way.clone();
        move |_, _req| {
            let under_way = under_way.clone();
            async move {
                let now = under_way.now.fetch_add(1, Ordering::SeqCst) + 1;
                under_way.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                under_way.now.fetch_sub(1, Ordering::SeqCst);
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::from("down"))
                    .unwrap()
            }
        }
    });
    let answers = burst(&[&svc], "/down", 20).await;
    assert!(answers
        .iter()
        .all(|seen| seen.status == StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(calls.get(), 20, "each request calls");
    let most = under_way.most.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "the waiters' calls one after another (most at once: {most})"
    );
}

/// The layer's lock is no load's: taken by a request made inside a `get_or_set` loader, it
/// outlives that request (released after the store, in the background). One process, two
/// layers (one lock of `/u` between them): a's loader requests `/u` through the first and
/// takes its lock; 50 ms later b's loader requests `/u` through the second and waits for that
/// lock. a's request is answered, and a's loader calls b: it waits for b's load, which finds
/// the stored response at its next poll. b's loader runs once (the lock was taken for a's load's,
/// b's wait for it for a wait for a, and a's wait for b for a cycle: b's loader ran a second
/// time, every time; found by a regression hunt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_lock_taken_inside_a_load_is_not_that_loads() {
    let repository: Arc<dyn impcache::CacheRepository> =
        Arc::new(impcache::MemoryCacheRepository::new());
    let cache = Cache::builder_shared(repository.clone()).build();
    let layer = || CacheLayer::new(Cache::builder_shared(repository.clone()).build());
    let slow = |layer: CacheLayer| {
        app(layer.lock(Lock::new()), |_, _| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(Body::from("u"))
        })
        .0
    };
    let (first, second) = (slow(layer()), slow(layer()));
    let b_runs = Arc::new(AtomicUsize::new(0));
    let runs = b_runs.clone();
    let b_loader = move || {
        let (b_runs, second) = (runs.clone(), second.clone());
        move || async move {
            b_runs.fetch_add(1, Ordering::SeqCst);
            let u = send(&second, get("/u")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            format!("b over {}", String::from_utf8_lossy(&u.body))
        }
    };
    let (in_a, b_for_a) = (cache.clone(), b_loader.clone());
    let a = tokio::spawn(async move {
        let inner = in_a.clone();
        in_a.get_or_set("a", 60, move || async move {
            let u = send(&first, get("/u")).await;
            let b: String = inner.get_or_set("b", 60, b_for_a()).await.unwrap();
            format!("a over {} and {b}", String::from_utf8_lossy(&u.body))
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let in_b = cache.clone();
    let b = tokio::spawn(async move { in_b.get_or_set("b", 60, b_loader()).await });
    let a: String = tokio::time::timeout(Duration::from_secs(20), a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b: String = b.await.unwrap().unwrap();
    assert_eq!(a, format!("a over u and {b}"));
    assert_eq!(b, "b over u");
    assert_eq!(b_runs.load(Ordering::SeqCst), 1, "b's loader ran twice");
}

/// A request whose client goes away while it takes the lock (its future dropped after its `SET
/// NX` was sent, or during the read that follows) leaves no lock behind: it is released in the
/// background. It was held for its whole lifetime, 10 s, with no one calling the handler: every
/// process's next request for the URL waited that long (found by a probe, 6 drops in 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_while_it_takes_the_lock_leaves_no_lock() {
    use std::future::Future;
    use std::task::{Context, Wake, Waker};

    struct Woken(tokio::sync::Notify);
    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.notify_one();
        }
    }
    let redis = RedisServer::start();
    let layer = locked_layer(&redis);
    let (service, _) = app(layer, |n, _| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(Body::from(format!("call {n}")))
    });
    send(&service, get("/warm")).await;
    for k in 1..=4 {
        let uri = format!("/dropped/{k}");
        // Polled `k` times, each after a wake, then given 20 ms (an answer arrives, unread).
        let mut request = Box::pin(send(&service, get(&uri)));
        let woken = Arc::new(Woken(tokio::sync::Notify::new()));
        let waker = Waker::from(woken.clone());
        let mut answered = false;
        for i in 0..k {
            answered = request
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready();
            if answered {
                break;
            }
            if i + 1 < k {
                let _ = tokio::time::timeout(Duration::from_secs(5), woken.0.notified()).await;
            }
        }
        // (Answered within `k` polls on a loaded machine: nothing dropped mid-way.)
        if answered {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(request);
        let mut left: Vec<String> = Vec::new();
        for _ in 0..100 {
            left = redis.cmd(&["KEYS", "*__lock*"]);
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            left.is_empty(),
            "k={k}: {left:?} still held a second after the drop"
        );
    }
}

/// A handler slower than the lock's lifetime still has its response stored: the layer's store
/// does not check the lock's lifetime (README, "One loader run across processes"; a check of
/// the URL's record blocked new `Vary` variants and purged URLs, found by a regression hunt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_locks_lifetime_fills_an_empty_url() {
    let redis = RedisServer::start();
    let cache = Cache::new(RedisCacheRepository::new(redis.url().as_str()).unwrap());
    let layer = CacheLayer::new(cache).lock(Lock::new().lifetime(Duration::from_millis(200)));
    let (service, calls) = app(layer.clone(), |n, _| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Response::new(Body::from(format!("call {n}")))
    });
    assert_eq!(send(&service, get("/slow")).await.body, "call 1");
    wait_stored(&layer, "/slow").await;
    assert_eq!(send(&service, get("/slow")).await.body, "call 1");
    assert_eq!(calls.get(), 1);
}
