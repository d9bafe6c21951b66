//! Cycles of loads (`impcache/src/freshness/waits.rs`): a wait of one load for another that
//! would close a cycle is not made (that call runs its loader without the single flight), while
//! every other wait is made as before: a load that goes on after its caller stopped waiting for it
//! (a soft timeout, a caller's own timeout) is waited for as any other, a loader waiting for the
//! background reload it started does not hang, a cycle entered from both ends at once does not
//! hang, and 100 concurrent callers still run one loader in every policy. Found by regression
//! hunts over the first, task-local version of the detection (2026-12-07), on the memory
//! repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impcache::{Cache, Freshness, Lock, MemoryCacheRepository};
use impcache_tests::loader::{
    calling_x_back, counted, cycle_through_the_lock, stale_entry, until_stored,
};
use tokio::sync::Semaphore;

const HANG: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);

/// x's loader calls b (stale, soft timeout 50 ms): answered with the stale b after 50 ms, and x's
/// loader goes on (300 ms). b's load goes on too; 150 ms in, b's loader calls x, whose loader no
/// longer waits for b: an ordinary waiter. x's loader runs once (it ran twice when the detection
/// took every load a task was started from for one waiting on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_continuing_past_its_soft_timeout_waits_for_its_starter_as_anyone() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new()
        .soft_timeout(50 * MS)
        .stale_if_error(MINUTE);
    stale_entry(&cache, "b", "old b", 100 * MS, policy).await;
    let (runs, inner_runs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_x, x_runs) = (cache.clone(), runs.clone());
    let b_loader = calling_x_back(&cache, 150 * MS, policy, &inner_runs);
    let x = cache
        .get_or_set("x", 60, move || async move {
            x_runs.fetch_add(1, Ordering::SeqCst);
            let b: String = in_x
                .get_or_set("b", 60, b_loader)
                .freshness(policy)
                .await
                .unwrap();
            tokio::time::sleep(300 * MS).await;
            format!("x over {b}")
        })
        .freshness(policy);
    let x: String = tokio::time::timeout(HANG, x.into_future())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x, "x over old b");
    // b's load stores in the background: waited for, not slept on (a flake hunt's find).
    until_stored(&cache, "b", "b over x over old b").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "x's loader ran twice");
    assert_eq!(inner_runs.load(Ordering::SeqCst), 0, "x's loader ran twice");
}

/// The same with the caller dropped: x's loader gives up on b after 50 ms (a timeout around the
/// call); b's load goes on for nobody. 150 ms in, b's loader calls x, whose loader no longer
/// waits for b. x's loader runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_caller_gave_up_waits_for_its_starter_as_anyone() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new().hard_timeout(Duration::from_secs(5));
    let (runs, inner_runs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_x, x_runs) = (cache.clone(), runs.clone());
    let b_loader = calling_x_back(&cache, 150 * MS, policy, &inner_runs);
    let x = cache
        .get_or_set("x", 60, move || async move {
            x_runs.fetch_add(1, Ordering::SeqCst);
            let gave_up = tokio::time::timeout(
                50 * MS,
                in_x.get_or_set("b", 60, b_loader)
                    .freshness(policy)
                    .into_future(),
            )
            .await
            .is_err();
            tokio::time::sleep(300 * MS).await;
            format!("x (gave up on b: {gave_up})")
        })
        .freshness(policy);
    let x: String = tokio::time::timeout(HANG, x.into_future())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x, "x (gave up on b: true)");
    // b's load stores in the background: waited for, not slept on (a flake hunt's find).
    until_stored(&cache, "b", "b over x (gave up on b: true)").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "x's loader ran twice");
    assert_eq!(inner_runs.load(Ordering::SeqCst), 0, "x's loader ran twice");
}

/// A cycle started from both ends at once: caller 1 loads x (whose loader needs y), caller 2
/// loads y (whose loader needs x). The second of the two waits would close the cycle: that call
/// runs its loader alone, and both answer (they waited for each other for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_entered_from_both_ends_at_once() {
    cycle_from_both_ends(
        Freshness::new().stale_if_error(MINUTE),
        Duration::from_secs(5),
    )
    .await;
}

async fn cycle_from_both_ends(policy: Freshness, bound: Duration) {
    let cache = Cache::new(MemoryCacheRepository::new());
    let (c1, c2) = (cache.clone(), cache.clone());
    let one = tokio::spawn(async move {
        let inner = c1.clone();
        c1.get_or_set("x", 60, move || async move {
            tokio::time::sleep(100 * MS).await;
            let y: String = inner
                .get_or_set("y", 60, || async { "y leaf".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            format!("x over {y}")
        })
        .freshness(policy)
        .await
    });
    let two = tokio::spawn(async move {
        let inner = c2.clone();
        c2.get_or_set("y", 60, move || async move {
            tokio::time::sleep(100 * MS).await;
            let x: String = inner
                .get_or_set("x", 60, || async { "x leaf".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            format!("y over {x}")
        })
        .freshness(policy)
        .await
    });
    let both = tokio::time::timeout(bound, async { (one.await, two.await) }).await;
    eprintln!("cycle from both ends: {both:?}");
    assert!(both.is_ok(), "x and y wait for each other: hung {bound:?}");
}

/// Single flight still: 100 concurrent callers, one loader run, for each policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_for_100_callers_in_every_policy() {
    let policies = [
        ("plain", Freshness::new()),
        (
            "soft",
            Freshness::new()
                .soft_timeout(10 * MS)
                .stale_if_error(MINUTE),
        ),
        ("swr", Freshness::new().stale_while_revalidate(MINUTE)),
        (
            "early",
            Freshness::new().early_refresh(Duration::from_secs(30)),
        ),
        (
            "hard",
            Freshness::new().hard_timeout(Duration::from_secs(5)),
        ),
        ("lock", Freshness::new().lock(impcache::Lock::new())),
        (
            "all",
            Freshness::new()
                .soft_timeout(10 * MS)
                .stale_if_error(MINUTE)
                .early_refresh(Duration::from_secs(30))
                .hard_timeout(Duration::from_secs(5))
                .lock(impcache::Lock::new()),
        ),
    ];
    for (name, policy) in policies {
        for tagged in [false, true] {
            let cache = Cache::new(MemoryCacheRepository::new());
            let runs = Arc::new(AtomicUsize::new(0));
            let gate = Arc::new(Semaphore::new(0));
            let callers: Vec<_> = (0..100)
                .map(|_| {
                    let (cache, loader) = (cache.clone(), counted(&runs, &gate, "v"));
                    tokio::spawn(async move {
                        let call = cache.get_or_set("k", 60, loader).freshness(policy);
                        if tagged {
                            call.tags(["t"]).await.unwrap()
                        } else {
                            call.await.unwrap()
                        }
                    })
                })
                .collect();
            tokio::time::sleep(50 * MS).await;
            gate.add_permits(1000);
            for caller in callers {
                assert_eq!(
                    tokio::time::timeout(HANG, caller).await.unwrap().unwrap(),
                    "v"
                );
            }
            assert_eq!(runs.load(Ordering::SeqCst), 1, "{name} tagged {tagged}");
        }
    }
}

/// 100 concurrent callers of a key whose loader calls another key (which calls back the first):
/// still one run of each key's loader? (The inner call of x runs alone; the 99 other x callers
/// wait for the leader.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_for_100_callers_of_a_self_calling_chain() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let policy = Freshness::new();
    let x_runs = Arc::new(AtomicUsize::new(0));
    let y_runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, x_runs, y_runs) = (cache.clone(), x_runs.clone(), y_runs.clone());
            tokio::spawn(async move {
                let inner = cache.clone();
                cache
                    .get_or_set("x", 60, move || async move {
                        x_runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(50 * MS).await;
                        let inner2 = inner.clone();
                        let y: String = inner
                            .get_or_set("y", 60, move || async move {
                                y_runs.fetch_add(1, Ordering::SeqCst);
                                let x: String = inner2
                                    .get_or_set("x", 60, || async { "x leaf".to_owned() })
                                    .freshness(policy)
                                    .await
                                    .unwrap();
                                format!("y over {x}")
                            })
                            .freshness(policy)
                            .await
                            .unwrap();
                        format!("x over {y}")
                    })
                    .freshness(policy)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            tokio::time::timeout(HANG, caller).await.unwrap().unwrap(),
            "x over y over x leaf"
        );
    }
    assert_eq!(x_runs.load(Ordering::SeqCst), 1);
    assert_eq!(y_runs.load(Ordering::SeqCst), 1);
}

/// x's loader reads b with
/// stale-while-revalidate (stale: answered at once, a reload of b starts in the background; b's
/// loader calls x, and waits for x's flight as an ordinary waiter), then reads b again without
/// the window (a load: it waits for b's flight, held by that reload). x's loader waits for b's
/// reload, which waits for x's load: that wait is not made, and x answers (it hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_waiting_for_the_background_reload_it_started() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let swr = Freshness::new().stale_while_revalidate(MINUTE);
    stale_entry(&cache, "b", "old b", 100 * MS, swr).await;
    let (in_x, in_b) = (cache.clone(), cache.clone());
    let x = cache.get_or_set("x", 60, move || async move {
        let in_b2 = in_b.clone();
        let first: String = in_x
            .get_or_set("b", 60, move || async move {
                tokio::time::sleep(20 * MS).await;
                let x: String = in_b
                    .get_or_set("x", 60, || async { "x alone".to_owned() })
                    .await
                    .unwrap();
                format!("b over {x}")
            })
            .freshness(swr)
            .await
            .unwrap();
        tokio::time::sleep(50 * MS).await;
        let second: String = in_x
            .get_or_set("b", 60, move || async move {
                let x: String = in_b2
                    .get_or_set("x", 60, || async { "x alone 2".to_owned() })
                    .await
                    .unwrap();
                format!("b2 over {x}")
            })
            .freshness(Freshness::new().stale_if_error(MINUTE))
            .await
            .unwrap();
        format!("x over {first} then {second}")
    });
    let x = tokio::time::timeout(Duration::from_secs(5), x.into_future()).await;
    eprintln!("x: {x:?}");
    assert!(
        x.is_ok(),
        "x's loader waits for b's reload, which waits for x: hung 5 s"
    );
}

/// A write of a key during its load starts another flight of it, for later callers: a wait
/// leading to the first load is no cycle for the second. a's first load waits at a gate; c's
/// loader calls a (it waits for that first load); a is deleted, and a's second load calls c (it
/// waits for c's load, which waits for the first load of a, not for this one). c's loader runs
/// once (twice when loads were known by their keys: the second load of a took the wait for c for
/// a cycle and ran c's loader again, with a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_leading_to_an_earlier_load_of_its_own_key_is_no_cycle() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let gate = Arc::new(Semaphore::new(0));
    let (a_runs, c_runs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_test, loader) = (cache.clone(), counted(&a_runs, &gate, "first a"));
    let first_a = tokio::spawn(async move { in_test.get_or_set("a", 60, loader).await });
    tokio::time::sleep(50 * MS).await;
    let (in_test, in_c, runs) = (cache.clone(), cache.clone(), c_runs.clone());
    let c = tokio::spawn(async move {
        in_test
            .get_or_set("c", 60, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let a: String = in_c
                    .get_or_set("a", 60, || async { "a for c".to_owned() })
                    .await
                    .unwrap();
                format!("c over {a}")
            })
            .await
    });
    tokio::time::sleep(50 * MS).await;
    cache.delete("a").await.unwrap();
    let (in_test, in_a, runs) = (cache.clone(), cache.clone(), c_runs.clone());
    let second_a = tokio::spawn(async move {
        in_test
            .get_or_set("a", 60, move || async move {
                let c: String = in_a
                    .get_or_set("c", 60, move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        "c again".to_owned()
                    })
                    .await
                    .unwrap();
                format!("second a over {c}")
            })
            .await
    });
    tokio::time::sleep(50 * MS).await;
    gate.add_permits(1);
    let first_a: String = tokio::time::timeout(HANG, first_a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let c: String = tokio::time::timeout(HANG, c)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second_a: String = tokio::time::timeout(HANG, second_a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eprintln!("{first_a:?}, {c:?}, {second_a:?}");
    assert_eq!(first_a, "first a");
    assert_eq!(second_a, format!("second a over {c}"));
    assert_eq!(c_runs.load(Ordering::SeqCst), 1, "c's loader ran twice");
}

/// With the lock across processes: a's load takes a's lock; a is deleted (a later caller starts
/// another load of a); a's loader calls b, whose loader calls a: a second load of a, which finds
/// a's lock held by the first, which waits for b (`cycle_through_the_lock`). That wait for the lock
/// is a wait for the first load (this process holds the lock): it would close a cycle, so it is
/// not made, and the second load runs without the lock (it waited out the lock's lifetime, 60 s
/// here; found by a regression hunt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_through_this_processs_own_lock_is_not_waited_for() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let lock = Lock::new()
        .lifetime(Duration::from_secs(60))
        .wait(Duration::from_secs(120));
    let first = tokio::time::timeout(
        HANG,
        cycle_through_the_lock(&cache, Freshness::new().lock(lock)),
    )
    .await
    .expect("waited for its own lock");
    assert_eq!(first.unwrap(), "first a over b over second a");
}

/// The lock passes from load to load while a load waits for it: the wait follows its holder.
/// k's first load holds k's lock, waits at a gate, then fails (it stores nothing, and releases);
/// k is deleted, and m's loader calls k: a second load of k, which waits for the lock (held by
/// the first). k is deleted again, and a third load of k, whose loader calls m, waits for the
/// lock too. The first releases, the third takes the lock and waits for m, which waits for the
/// second, which waits for the lock the third now holds: that wait is refused (it was looked up
/// once, at the first holder, and waited out the lock's lifetime; found by a regression hunt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_the_lock_follows_it_from_load_to_load() {
    let cache = Cache::new(MemoryCacheRepository::new());
    let lock = Lock::new()
        .lifetime(Duration::from_secs(60))
        .wait(Duration::from_secs(120));
    let policy = Freshness::new().lock(lock);
    let gate = Arc::new(Semaphore::new(0));
    let (in_first, first_gate) = (cache.clone(), gate.clone());
    let first = tokio::spawn(async move {
        let failed: Result<String, String> = in_first
            .try_get_or_set("k", 60, move || async move {
                drop(first_gate.acquire().await.unwrap());
                Err("the first load of k fails".to_owned())
            })
            .freshness(policy)
            .await;
        failed
    });
    tokio::time::sleep(20 * MS).await;
    cache.delete("k").await.unwrap();
    let (in_m, in_m_loader) = (cache.clone(), cache.clone());
    let m = tokio::spawn(async move {
        in_m.get_or_set("m", 60, move || async move {
            let k: String = in_m_loader
                .get_or_set("k", 60, || async { "second k".to_owned() })
                .freshness(policy)
                .await
                .unwrap();
            format!("m over {k}")
        })
        .freshness(policy)
        .await
    });
    tokio::time::sleep(200 * MS).await;
    cache.delete("k").await.unwrap();
    let (in_third, in_third_loader) = (cache.clone(), cache.clone());
    let third = tokio::spawn(async move {
        in_third
            .get_or_set("k", 60, move || async move {
                let m: String = in_third_loader
                    .get_or_set("m", 60, || async { "m alone".to_owned() })
                    .freshness(policy)
                    .await
                    .unwrap();
                format!("third k over {m}")
            })
            .freshness(policy)
            .await
    });
    // The third polls every 5 ms at first, the second every 50 ms by now: the third takes the
    // lock when the first releases it.
    tokio::time::sleep(3 * MS).await;
    gate.add_permits(1);
    let all = async {
        let first = first.await.unwrap();
        let m: String = m.await.unwrap().unwrap();
        let third: String = third.await.unwrap().unwrap();
        (first, m, third)
    };
    let (first, m, third) = tokio::time::timeout(HANG, all)
        .await
        .expect("waited out the lock's lifetime");
    assert!(first.is_err());
    assert_eq!(third, format!("third k over {m}"));
}

/// A lock that expired while its load ran is no longer that load's: two processes (caches over
/// one store, each its own single flight and locks). Process 1's first load of k holds k's lock
/// (200 ms lifetime, a 600 ms loader, then it calls m, whose loader calls k); process 2 takes the
/// expired lock and loads k for a second. k is deleted in process 1, so m's call of k is a second
/// load of k, which finds the lock held by process 2 and waits for its value: no cycle (the lock
/// was taken for the first load's still, a cycle, and the second load ran k's loader without the
/// lock; found by a regression hunt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_expired_during_its_load_is_another_processs() {
    let store = Arc::new(MemoryCacheRepository::new());
    let process = || Cache::builder_shared(Arc::new(store.as_ref().clone())).build();
    let (first_process, second_process) = (process(), process());
    let lock = |lifetime| Lock::new().lifetime(lifetime).wait(Duration::from_secs(10));
    let short = Freshness::new().lock(lock(200 * MS));
    let long = Freshness::new().lock(lock(Duration::from_secs(5)));
    let (in_k, in_m) = (first_process.clone(), first_process.clone());
    let first = tokio::spawn(async move {
        in_k.get_or_set("k", 60, move || async move {
            tokio::time::sleep(600 * MS).await;
            let m: String = in_m
                .clone()
                .get_or_set("m", 60, move || async move {
                    let k: String = in_m
                        .get_or_set("k", 60, || async { "second k".to_owned() })
                        .freshness(short)
                        .await
                        .unwrap();
                    format!("m over {k}")
                })
                .freshness(short)
                .await
                .unwrap();
            format!("first k over {m}")
        })
        .freshness(short)
        .await
    });
    tokio::time::sleep(50 * MS).await;
    let second = tokio::spawn(async move {
        second_process
            .get_or_set("k", 60, || async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "process 2's k".to_owned()
            })
            .freshness(long)
            .await
    });
    tokio::time::sleep(350 * MS).await;
    first_process.delete("k").await.unwrap();
    let first: String = tokio::time::timeout(HANG, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second: String = second.await.unwrap().unwrap();
    assert_eq!(second, "process 2's k");
    assert_eq!(first, "first k over m over process 2's k");
}
