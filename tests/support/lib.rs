//! Test harness of the impcache workspace: throwaway `redis-server` processes on free loopback
//! ports, which tests can kill, freeze (SIGSTOP), thaw and restart on the same port.
//!
//! Tests never touch a server they did not start: every [`RedisServer`] is its own process, with
//! no persistence, removed when dropped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test harness: failing loudly is its job

pub mod cluster;
pub mod late;
pub mod loader;
pub mod logs;
pub mod proxy;
pub mod store;
pub use proxy::FaultProxy;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// impcache as a facade crate re-exports it, for [`cached_through_a_facade!`].
#[doc(hidden)]
pub use impcache as facade_impcache;

/// A facade's memoizing macro, as an application's shared crate writes one: the expansion reaches
/// impcache through this crate's re-export (`crate = $crate::facade_impcache`), from another
/// crate that need not depend on impcache; with the user's own expire and freshness values (a
/// `$crate` moved to their spans named the user's crate: found by a regression hunt,
/// 2026-12-07). `tests/cached_facade.rs`.
// (rustfmt indents the attribute further at every run: not idempotent on it.)
#[rustfmt::skip]
#[macro_export]
macro_rules! cached_through_a_facade {
    ($cache:expr, $expire:expr, $stale:expr, $item:item) => {
        #[$crate::facade_impcache::cached(
            crate = $crate::facade_impcache,
            cache = $cache,
            expire = $expire,
            stale_while_revalidate = $stale,
            tags = ["facade"],
        )]
        $item
    };
}

/// A fresh current-thread tokio runtime, for tests that use one cache from several runtimes in
/// turn (a connection left by a finished runtime).
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Polls `future` on this thread until it is ready, parking between wake-ups: a plain executor
/// that is not tokio (no runtime, no timers), as `futures::executor::block_on`, for the tests of
/// what the library does outside a tokio runtime. Asserts that there is none.
pub fn block_on<F: std::future::IntoFuture>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "block_on is for code outside a tokio runtime"
    );
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future.into_future());
    loop {
        if let std::task::Poll::Ready(out) = std::future::Future::poll(future.as_mut(), &mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// `call` (a `get_or_set` or `try_get_or_set` of a `Cache` with a near cache) awaited, and
/// whether it was answered from the near cache alone at its first poll: its future says so
/// (`GetOrSetFuture`'s `Debug`).
pub async fn answered_locally<F>(call: F) -> (bool, F::Output)
where
    F: std::future::IntoFuture,
    F::IntoFuture: std::fmt::Debug + Unpin,
{
    let mut future = call.into_future();
    assert!(format!("{future:?}").contains("not polled"), "{future:?}");
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(
            std::pin::Pin::new(&mut future),
            cx,
        ))
    })
    .await;
    let local = format!("{future:?}").contains("answered from the near cache");
    match first {
        std::task::Poll::Ready(output) => (local, output),
        std::task::Poll::Pending => (local, future.await),
    }
}

/// A fresh multi-thread tokio runtime with two workers, for the same tests.
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Parallel `#[tokio::test]`s sharing a `static` cache: 4 rounds of 8 threads, each with its own
/// runtime (current-thread and multi-thread in turn), each doing its share of `set` + `get` on
/// `cache` (unequal shares: the runtimes end one after the other, while the others' calls are in
/// flight on connections the ended ones opened). Returns the calls that failed or read a wrong
/// value; 1,760 calls in all.
///
/// A call that timed out is not counted, up to [`STALLS_ALLOWED`] of them: the connection's
/// driver task runs on the runtime that opened it, so a thread stalled between leaving its
/// current-thread runtime's `block_on` and dropping it stalls the calls in flight there, and a
/// loaded 2-core machine stalled one past the 500 ms deadline in 4 of 130 runs (a flake hunt,
/// 2026-12-07; RELIABILITY.md, "Self-healing connection"). A timed-out `set` may still land, so its key's `get` is
/// not checked. A failure of any other kind (a dropped connection that was not sent again) is.
pub fn share_across_ending_runtimes(cache: &impcache::Cache) -> Vec<String> {
    let mut failures = Vec::new();
    let mut stalls = 0;
    for round in 0..4 {
        let threads: Vec<_> = (0..8usize)
            .map(|thread| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let runtime = if thread % 2 == 0 {
                        current_thread_runtime()
                    } else {
                        multi_thread_runtime()
                    };
                    let mut failures = Vec::new();
                    let mut stalls = 0;
                    runtime.block_on(async {
                        for i in 0..10 + 5 * thread {
                            let key = format!("r{round}:t{thread}:{i}");
                            match cache.set(&key, &i, 60).await {
                                Ok(()) => {}
                                Err(impcache::Error::Timeout { .. }) => {
                                    stalls += 1;
                                    continue;
                                }
                                Err(e) => failures.push(format!("set {key}: {e}")),
                            }
                            match cache.get::<usize>(&key).await {
                                Ok(Some(found)) if found == i => {}
                                Err(impcache::Error::Timeout { .. }) => stalls += 1,
                                other => failures.push(format!("get {key}: {other:?}")),
                            }
                        }
                    });
                    (failures, stalls)
                })
            })
            .collect();
        for thread in threads {
            let (failed, stalled) = thread.join().unwrap();
            failures.extend(failed);
            stalls += stalled;
        }
    }
    if stalls > STALLS_ALLOWED {
        failures.push(format!("{stalls} calls timed out"));
    }
    failures
}

/// The calls of [`share_across_ending_runtimes`] that may time out, stalled by the machine.
pub const STALLS_ALLOWED: usize = 8;

/// The `redis-server` binary: `$REDIS_SERVER_BIN`, else `redis-server` on the `PATH`.
pub fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The address of a server that is down: loopback port 1 (`tcpmux`, privileged, never bound by a
/// test), where a connection is refused at once. A port from [`free_port`] is free only until
/// the next server a test starts meanwhile takes it.
pub const NO_SERVER_URL: &str = "redis://127.0.0.1:1";

/// A free loopback TCP port (racy by nature: the caller retries when the bind fails).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A `redis-server` started by this test, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port, with no persistence and `DEBUG` allowed locally.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (`["--maxmemory", "2mb"]`, say).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| (*s).to_owned()).collect();
        let mut last_error = String::new();
        for _ in 0..10 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("impcache-redis-{}-{port}", std::process::id()));
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra_args: extra_args.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let bin = redis_server_bin();
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run `{bin}` ({e}). Install it with `apt-get install redis-server`, \
                 or run `./scripts/test.sh`, which installs it when missing"
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(format!("redis-server exited with {status}: {log}"));
                }
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err("redis-server did not answer PING within 10 s".to_owned())
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        // A server with `requirepass` answers `-NOAUTH ...`: alive all the same.
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server (a crash); connections see "broken pipe", then "refused".
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("server not running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// SIGSTOP: the kernel still accepts connections, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// A blocking connection for checks from the test (raw keys, `CONFIG SET`, `CLIENT KILL`).
    pub fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("raw connection to the test server")
    }

    /// Calls of the commands `names` (lowercase, as `INFO commandstats` names them) since the
    /// server started: round trips, for tests that count them.
    pub fn command_calls(&self, names: &[&str]) -> u64 {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                names.contains(&name).then_some(rest)
            })
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Runs a raw command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.raw())
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// Every key on the server, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", "*"]);
        keys.sort();
        keys
    }

    /// Waits until this primary's replica has applied every write made before the call, on any
    /// connection: a write of its own (set, then deleted: no key is left) acknowledged by the
    /// replica (`WAIT` on the connection that wrote it; replication keeps the order of writes).
    /// `WAIT` on a connection that wrote nothing returns at once, whatever the replica has.
    pub fn wait_replicated(&self) {
        let mut connection = self.raw();
        for command in ["SET", "DEL"] {
            let mut write = redis::cmd(command);
            write.arg("impcache-harness:replicated");
            if command == "SET" {
                write.arg(1);
            }
            let _: redis::Value = write.query(&mut connection).expect("write on the primary");
            let acknowledged: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(10_000)
                .query(&mut connection)
                .expect("WAIT");
            assert_eq!(
                acknowledged, 1,
                "the replica did not apply a write within 10 s"
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A frozen server ignores nothing but SIGKILL, which is what `kill` sends; CONT anyway so
            // the process can be reaped promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
