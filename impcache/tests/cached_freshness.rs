//! `#[cached(...)]` with freshness options, on the in-memory repository: stale-while-revalidate
//! (served at once, one background run), stale-if-error (an `Err` answered by the stale value),
//! soft timeout, and the stored bytes being those of a plain `#[cached]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::LazyLock;
use std::time::Duration;

use impcache::{cached, Cache, MemoryCacheRepository};
use tokio::sync::Semaphore;

const HANG: Duration = Duration::from_secs(5);

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

static RUNS: AtomicUsize = AtomicUsize::new(0);
/// Holds the body of `revalidated` once it has run once (the test lets it through).
static GATE: Semaphore = Semaphore::const_new(0);

#[cached(
    cache = CACHE,
    expire = Duration::from_millis(100),
    stale_while_revalidate = 60,
)]
async fn revalidated(id: u32) -> String {
    let run = RUNS.fetch_add(1, SeqCst);
    if run > 0 {
        let _permit = GATE.acquire().await.unwrap();
    }
    format!("{id}:{run}")
}

/// Waits until `key` holds the JSON `json`.
async fn until(key: &str, json: &str) {
    tokio::time::timeout(HANG, async {
        while CACHE.get_raw(key).await.unwrap().as_deref() != Some(json.as_bytes()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{key} never became {json}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_reloads_once() {
    let key = "cached_freshness::revalidated:7";
    assert_eq!(revalidated(7).await, "7:0");
    until(key, "\"7:0\"").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Stale: 50 callers answered with the stale value while the reload is held at its gate.
    let callers: Vec<_> = (0..50).map(|_| tokio::spawn(revalidated(7))).collect();
    for caller in callers {
        assert_eq!(
            tokio::time::timeout(HANG, caller).await.unwrap().unwrap(),
            "7:0"
        );
    }
    GATE.add_permits(100);
    until(key, "\"7:1\"").await;
    assert_eq!(RUNS.load(SeqCst), 2, "one background reload");
    // The stored bytes are what a plain `#[cached]` (and the Python library) stores.
    assert_eq!(&CACHE.get_raw(key).await.unwrap().unwrap()[..], b"\"7:1\"");
}

static FAILING: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = Duration::from_millis(100), stale_if_error = 60)]
async fn flaky(id: u32) -> Result<u32, String> {
    match FAILING.fetch_add(1, SeqCst) {
        0 => Ok(id),
        _ => Err("the origin is down".to_owned()),
    }
}

#[tokio::test]
async fn stale_if_error_answers_an_err_with_the_stale_value() {
    assert_eq!(flaky(3).await, Ok(3));
    until("cached_freshness::flaky:3", "3").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(flaky(3).await, Ok(3), "the stale value");
    assert_eq!(FAILING.load(SeqCst), 2, "the body ran and failed");
    // No stale value: the error is returned.
    assert_eq!(flaky(4).await, Err("the origin is down".to_owned()));
}

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);
static SLOW_GATE: Semaphore = Semaphore::const_new(0);

#[cached(
    cache = CACHE,
    expire = Duration::from_millis(100),
    stale_if_error = 60,
    soft_timeout = Duration::from_millis(50),
)]
async fn slow(id: u32) -> Option<String> {
    let run = SLOW_RUNS.fetch_add(1, SeqCst);
    if run > 0 {
        let _permit = SLOW_GATE.acquire().await.unwrap();
    }
    Some(format!("{id}:{run}"))
}

#[tokio::test]
async fn the_soft_timeout_answers_stale_and_the_body_still_stores() {
    assert_eq!(slow(1).await.as_deref(), Some("1:0"));
    until("cached_freshness::slow:1", "\"1:0\"").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let served = tokio::time::timeout(HANG, slow(1)).await.unwrap();
    assert_eq!(
        served.as_deref(),
        Some("1:0"),
        "answered while the body is held"
    );
    SLOW_GATE.add_permits(10);
    until("cached_freshness::slow:1", "\"1:1\"").await;
}

static HARD_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Never returns after its first run.
async fn hangs_after_the_first_run(id: u32) -> u32 {
    if HARD_RUNS.fetch_add(1, SeqCst) > 0 {
        std::future::pending::<()>().await;
    }
    id
}

#[cached(
    cache = CACHE,
    expire = Duration::from_millis(100),
    stale_if_error = 60,
    hard_timeout = Duration::from_millis(100),
)]
async fn given_up_with_stale(id: u32) -> Result<u32, impcache::Error> {
    Ok(hangs_after_the_first_run(id).await)
}

#[cached(cache = CACHE, expire = 60, hard_timeout = Duration::from_millis(100))]
async fn given_up_result(id: u32) -> Result<u32, impcache::Error> {
    std::future::pending::<()>().await;
    Ok(id)
}

#[cached(cache = CACHE, expire = 60, hard_timeout = Duration::from_millis(100))]
async fn given_up_option(id: u32) -> Option<u32> {
    std::future::pending::<()>().await;
    Some(id)
}

/// `hard_timeout`: a body slower than it is given up. With a stale value within `stale_if_error`
/// the call answers with it; without one, a `Result` function returns `Err` (the
/// `impcache::Error::Loader` converted into its error type) and an `Option` function `None`.
/// Nothing is stored.
#[tokio::test]
async fn the_hard_timeout_gives_up_on_the_body() {
    assert_eq!(given_up_with_stale(3).await.unwrap(), 3);
    until("cached_freshness::given_up_with_stale:3", "3").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stale = tokio::time::timeout(HANG, given_up_with_stale(3)).await;
    assert_eq!(stale.unwrap().unwrap(), 3);

    let error = tokio::time::timeout(HANG, given_up_result(1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, impcache::Error::Loader { reason, .. } if reason.contains("hard timeout")),
        "{error}"
    );
    let none = tokio::time::timeout(HANG, given_up_option(1))
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(
        CACHE
            .get_raw("cached_freshness::given_up_result:1")
            .await
            .unwrap(),
        None
    );
}

static THROTTLED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    cache = CACHE,
    expire = Duration::from_millis(100),
    stale_if_error = 60,
    fail_safe_throttle = 30,
)]
async fn throttled(id: u32) -> Result<u32, String> {
    match THROTTLED_RUNS.fetch_add(1, SeqCst) {
        0 => Ok(id),
        _ => Err("the origin is down".to_owned()),
    }
}

/// `fail_safe_throttle = ..`: after the body failed once (the stale value answering), the stale
/// value answers without running the body.
#[tokio::test]
async fn the_fail_safe_throttle_answers_stale_without_running_the_body() {
    assert_eq!(throttled(4).await, Ok(4));
    until("cached_freshness::throttled:4", "4").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..5 {
        assert_eq!(throttled(4).await, Ok(4));
    }
    assert_eq!(
        THROTTLED_RUNS.load(SeqCst),
        2,
        "one failed run, then throttled"
    );
}

static HANGING_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, hard_timeout = Duration::from_millis(200))]
async fn hangs(id: u32) -> Option<u32> {
    HANGING_RUNS.fetch_add(1, SeqCst);
    std::future::pending::<()>().await;
    Some(id)
}

/// The callers waiting for a body given up at its `hard_timeout` get the "timed out" return
/// value at once, without running their bodies (each ran its own for what was left of its hard
/// timeout: callers that joined 100 ms into a 200 ms timeout, another 100 ms each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiters_of_a_body_given_up_get_timed_out_without_running_theirs() {
    let leader = tokio::spawn(hangs(5));
    while HANGING_RUNS.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiters: Vec<_> = (0..9).map(|_| tokio::spawn(hangs(5))).collect();
    for caller in std::iter::once(leader).chain(waiters) {
        let answer = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        assert_eq!(answer, None);
    }
    assert_eq!(HANGING_RUNS.load(SeqCst), 1);
}

static ERR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, stale_if_error = 60)]
async fn always_err(id: u32) -> Result<u32, String> {
    let run = ERR_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Err(format!("{id}: run {run} failed"))
}

/// With freshness options as without, a body's `Err` (a value that is not cached) is never
/// shared: with no stale value at hand, each waiter runs its own body and gets its own `Err`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiters_of_a_body_returning_err_each_run_their_own() {
    let callers: Vec<_> = (0..10).map(|_| tokio::spawn(always_err(6))).collect();
    let mut errors = Vec::new();
    for caller in callers {
        let answer = tokio::time::timeout(HANG, caller).await.unwrap().unwrap();
        errors.push(answer.unwrap_err());
    }
    errors.sort();
    errors.dedup();
    assert_eq!(errors.len(), 10, "each its own `Err`: {errors:?}");
    assert_eq!(ERR_RUNS.load(SeqCst), 10);
}

#[cached(cache = CACHE, expire = 60, stale_while_revalidate = 10)]
async fn holds_20_kib(id: u8) -> u64 {
    let held = [id; 20 * 1024];
    tokio::task::yield_now().await;
    held.iter().map(|b| u64::from(*b)).sum()
}

/// A freshness option does not put the body's future in the caller's: the caller's future of a
/// body holding 20 KiB across an await was over 60 KiB (three times the body's, past clippy's
/// `large_futures` at the call site; found by a probe), where the plain path boxes its body.
/// (The caller's future holds the call's machinery in place, about 10 KiB: the bound was half
/// the body's, 10,252 bytes, which the near cache's answer at the first poll passed by 4.)
#[tokio::test]
async fn the_callers_future_does_not_hold_the_body() {
    let body = std::mem::size_of_val(&holds_20_kib_uncached(1));
    let call = holds_20_kib(1);
    assert!(
        std::mem::size_of_val(&call) < body,
        "{} bytes",
        std::mem::size_of_val(&call)
    );
    assert_eq!(call.await, 20 * 1024);
}

static REENTERED: AtomicUsize = AtomicUsize::new(0);

/// Calls itself twice, nested, with the same key: each inner call would wait for its own run.
#[cached(cache = CACHE, expire = 60, stale_if_error = 60)]
async fn reentrant(id: u32) -> u32 {
    if REENTERED.fetch_add(1, SeqCst) < 2 {
        return boxed_reentrant(id).await + 1;
    }
    id
}

fn boxed_reentrant(id: u32) -> std::pin::Pin<Box<dyn std::future::Future<Output = u32> + Send>> {
    Box::pin(reentrant(id))
}

/// With a freshness option, a body calling its own key runs that call's body without the single
/// flight, as `get_or_set` does: it answered nothing, ever (found by a probe, 2026-12-07).
#[tokio::test]
async fn a_body_calling_its_own_key_does_not_wait_for_itself() {
    let answered = tokio::time::timeout(HANG, reentrant(7))
        .await
        .expect("a reentrant body hangs");
    assert_eq!(answered, 9);
    assert_eq!(REENTERED.load(SeqCst), 3);
    assert_eq!(reentrant(7).await, 9, "the outer run is stored");
}

const ZERO_SECONDS: u64 = 0;
const MINUS_FIVE: i64 = -5;
const NO_TIME: Duration = Duration::ZERO;
static ZERO_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, hard_timeout = ZERO_SECONDS)]
async fn zero_hard_timeout(id: u32) -> Option<u32> {
    ZERO_RUNS.fetch_add(1, SeqCst);
    Some(id)
}

#[cached(cache = CACHE, expire = 60, hard_timeout = MINUS_FIVE)]
async fn negative_hard_timeout(id: u32) -> Result<u32, impcache::Error> {
    ZERO_RUNS.fetch_add(1, SeqCst);
    Ok(id)
}

#[cached(cache = CACHE, expire = 60, soft_timeout = NO_TIME)]
async fn zero_soft_timeout(id: u32) -> u32 {
    ZERO_RUNS.fetch_add(1, SeqCst);
    id
}

/// A freshness option the macro cannot read (a `const`) that is zero or negative is refused at
/// run time, as a literal one is at compile time: the body runs uncached, with a warning (found
/// by a probe: a zero `hard_timeout` gave up on every call without running the body, and a zero
/// `soft_timeout` was ignored, the value cached).
#[tokio::test]
async fn a_zero_or_negative_option_from_a_const_runs_the_body_uncached() {
    for _ in 0..2 {
        assert_eq!(zero_hard_timeout(1).await, Some(1));
        assert_eq!(negative_hard_timeout(2).await.unwrap(), 2);
        assert_eq!(zero_soft_timeout(3).await, 3);
    }
    assert_eq!(ZERO_RUNS.load(SeqCst), 6, "each call runs its body");
}

/// A freshness option takes any integer type and an `Expire`, as `expire` does (a `u8`, an
/// `isize`, a `u128`, `Expire::seconds(..)` did not compile, naming a private trait).
#[cached(
    cache = CACHE,
    expire = 60,
    stale_while_revalidate = 60u8,
    stale_if_error = 60isize,
    fail_safe_throttle = impcache::Expire::seconds(5),
    early_refresh = 1u128,
    lock = 10u16
)]
async fn options_of_other_types(id: u32) -> u32 {
    id
}

#[tokio::test]
async fn options_of_any_integer_type_or_an_expire_compile() {
    assert_eq!(options_of_other_types(4).await, 4);
}
