//! What the Redis repository sends: the raw key layout, JSON bytes, `EX`/`PX`, one pipelined
//! `SET .. EX` per key (no `MSET` + `EXPIRE`), one `MGET`, `SCAN` + `UNLINK` (never `KEYS`), no
//! command at all for empty inputs, and Redis glob semantics identical in both repositories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use impcache::{Cache, Error, MemoryCacheRepository, RedisCacheRepository};
use impcache_tests::logs::Logs;
use impcache_tests::RedisServer;

fn cache(server: &RedisServer) -> Cache {
    Cache::new(RedisCacheRepository::new(&server.url()).unwrap())
}

/// `cmdstat_*` calls per command, from `INFO commandstats`.
fn command_calls(server: &RedisServer) -> BTreeMap<String, u64> {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && name != "config|resetstat")
        .collect()
}

fn reset_stats(server: &RedisServer) {
    let _: () = server.cmd(&["CONFIG", "RESETSTAT"]);
}

#[tokio::test]
async fn keys_values_and_ttls_are_laid_out_like_the_python_library() {
    let server = RedisServer::start();
    let cache = Cache::builder(RedisCacheRepository::new(&server.url()).unwrap())
        .key_prefix("app")
        .version("v2")
        .build();
    #[derive(serde::Serialize)]
    struct User {
        name: &'static str,
        ids: [u8; 2],
    }
    let user = User {
        name: "Zoë",
        ids: [1, 2],
    };
    cache.set("user:1", &user, 100).await.unwrap();
    cache
        .set("short", &1.5, Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(server.keys(), ["app:v2:short", "app:v2:user:1"]);
    let raw: String = server.cmd(&["GET", "app:v2:user:1"]);
    assert_eq!(raw, r#"{"name":"Zoë","ids":[1,2]}"#);
    let ttl: i64 = server.cmd(&["TTL", "app:v2:user:1"]);
    assert!((95..=100).contains(&ttl), "{ttl}");
    let pttl: i64 = server.cmd(&["PTTL", "app:v2:short"]);
    assert!((1000..=1500).contains(&pttl), "{pttl}");
}

#[tokio::test]
async fn set_many_is_one_set_ex_per_key_and_get_many_one_mget() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache.set("warmup", &0, 10).await.unwrap();
    reset_stats(&server);
    cache
        .set_many((0..100).map(|i| (format!("k{i}"), i)), 100)
        .await
        .unwrap();
    let calls = command_calls(&server);
    assert_eq!(calls.get("set"), Some(&100), "{calls:?}");
    assert!(
        !calls.contains_key("mset") && !calls.contains_key("expire"),
        "{calls:?}"
    );
    for i in [0, 99] {
        let ttl: i64 = server.cmd(&["TTL", &format!("cache:1:k{i}")]);
        assert!(ttl > 0, "every key gets its TTL with its value");
    }
    reset_stats(&server);
    let values: Vec<Option<i32>> = cache
        .get_many((0..100).map(|i| format!("k{i}")))
        .await
        .unwrap();
    assert_eq!(values.len(), 100);
    let calls = command_calls(&server);
    assert_eq!(calls.get("mget"), Some(&1), "{calls:?}");
    assert_eq!(calls.len(), 1, "{calls:?}");
}

/// A batch larger than 10,000 keys goes in round trips of 10,000, one after another, each within
/// the deadline: 200,000 keys always timed out as one round trip at the default deadline, and five
/// such timeouts opened the circuit breaker for every caller of a healthy server (found by a
/// probe). The values come back in the caller's order.
#[tokio::test]
async fn large_batches_go_in_round_trips_of_ten_thousand_keys() {
    let server = RedisServer::start();
    let cache = cache(&server);
    let keys: Vec<String> = (0..200_000).map(|i| format!("k{i}")).collect();
    cache.set_many(keys.iter().zip(0..), 100).await.unwrap();
    reset_stats(&server);
    let values: Vec<Option<u32>> = cache.get_many(&keys).await.unwrap();
    assert!(values.iter().zip(0..).all(|(v, i)| *v == Some(i)));
    assert_eq!(command_calls(&server).get("mget"), Some(&20));
    // A key listed twice is read once (in two round trips, its two places got two values while
    // another client wrote it: found by a probe).
    let mut twice = vec!["k0"];
    twice.extend(keys[1..=10_000].iter().map(String::as_str));
    twice.push("k0");
    reset_stats(&server);
    let values: Vec<Option<u32>> = cache.get_many(&twice).await.unwrap();
    assert_eq!((values[0], values[10_001]), (Some(0), Some(0)));
    let info: String = server.cmd(&["INFO", "stats"]);
    assert!(info.contains("keyspace_hits:10001\r\n"), "{info}");
    reset_stats(&server);
    assert_eq!(cache.delete_many(&keys).await.unwrap(), 200_000);
    assert_eq!(command_calls(&server).get("unlink"), Some(&20));
}

#[tokio::test]
async fn empty_inputs_send_nothing() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache.set("warmup", &0, 10).await.unwrap();
    reset_stats(&server);
    cache
        .set_many(Vec::<(String, i32)>::new(), 100)
        .await
        .unwrap();
    let _: Vec<Option<i32>> = cache.get_many(Vec::<String>::new()).await.unwrap();
    cache.delete_many(Vec::<String>::new()).await.unwrap();
    assert_eq!(command_calls(&server), BTreeMap::new());
}

#[tokio::test]
async fn delete_pattern_scans_and_unlinks_in_batches_never_keys() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache
        .set_many((0..5000).map(|i| (format!("item:{i}"), i)), 100)
        .await
        .unwrap();
    cache.set("other", &1, 100).await.unwrap();
    reset_stats(&server);
    assert_eq!(cache.delete_pattern("item:*").await.unwrap(), 5000);
    let calls = command_calls(&server);
    assert!(
        !calls.contains_key("keys") && !calls.contains_key("del"),
        "{calls:?}"
    );
    assert!(calls["scan"] >= 2, "{calls:?}");
    assert!(calls["unlink"] >= 2, "batches: {calls:?}");
    assert_eq!(server.keys(), ["cache:1:other"]);
}

/// The memory repository's glob is a port of Redis's: the same patterns over the same keys remove
/// the same keys in both.
#[tokio::test]
async fn glob_semantics_are_identical_in_both_repositories() {
    let server = RedisServer::start();
    let redis = cache(&server);
    let memory = Cache::new(MemoryCacheRepository::new());
    let keys = [
        "", "a", "b", "ab", "abc", "a*c", "a?c", "a[c", "a]c", "a\\c", "a-c", "^", "é", "aé",
        "hello", "hallo", "h-llo", "h]llo", "h\\llo", "[", "]", "*", "?", "\\",
    ];
    let patterns = [
        "*",
        "?",
        "a*",
        "*c",
        "a?c",
        "a\\*c",
        "a\\?c",
        "a[*?]c",
        "a[^b]c",
        "a[b-a]c",
        "a[\\]]c",
        "a[]]c",
        "h[^]]llo",
        "h[-a]llo",
        "[\\\\]",
        "\\\\",
        "\\",
        "a\\",
        "[]",
        "**",
        "*?*",
        "a[!b]c",
        "h[e-e]llo",
        "é",
        "?é",
        "[é]",
        "a[\\-]c",
    ];
    // A range takes its end whole, `]` included (Redis's matcher): these sets never close, and
    // both repositories refuse them rather than read them that way.
    for unclosed in ["h[a-]llo", "[a-]"] {
        for cache in [&redis, &memory] {
            let refused = cache.delete_pattern(unclosed).await.unwrap_err();
            assert!(matches!(refused, Error::InvalidPattern { .. }), "{refused}");
        }
    }
    for pattern in patterns {
        for cache in [&redis, &memory] {
            cache.delete_pattern("*").await.unwrap();
            cache.delete("").await.unwrap();
            cache
                .set_many(keys.iter().map(|k| (*k, 1)), 100)
                .await
                .unwrap();
        }
        let removed_redis = redis.delete_pattern(pattern).await.unwrap();
        let removed_memory = memory.delete_pattern(pattern).await.unwrap();
        assert_eq!(removed_redis, removed_memory, "pattern {pattern:?}");
        let left_redis: Vec<Option<i32>> = redis.get_many(keys).await.unwrap();
        let left_memory: Vec<Option<i32>> = memory.get_many(keys).await.unwrap();
        assert_eq!(left_redis, left_memory, "pattern {pattern:?}");
    }
}

#[tokio::test]
async fn database_number_password_and_unix_socket_dsns_work() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let dsn = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let cache = Cache::new(RedisCacheRepository::new(&dsn).unwrap());
    cache.set("in-db-3", &1, 100).await.unwrap();
    let mut raw = redis::Client::open(dsn.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let db0: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(
            &mut redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/0", server.port()))
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    assert!(db0.is_empty(), "{db0:?}");
    let db3: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut raw).unwrap();
    assert_eq!(db3, ["cache:1:in-db-3"]);

    // A wrong password fails as a typed error that does not leak it.
    let wrong = format!("redis://:wrong-password@127.0.0.1:{}/0", server.port());
    let cache = Cache::new(RedisCacheRepository::new(&wrong).unwrap());
    let err = cache.get::<i32>("k").await.unwrap_err();
    assert!(err.is_backend_failure(), "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    assert!(
        !format!("{cache:?}").contains("wrong-password"),
        "{cache:?}"
    );

    let socket = std::env::temp_dir().join(format!("impcache-{}.sock", server.port()));
    let unix = RedisServer::start_with(&["--unixsocket", socket.to_str().unwrap()]);
    let cache = Cache::new(
        RedisCacheRepository::new(&format!("unix://{}?db=2", socket.display())).unwrap(),
    );
    cache.set("over-unix", &1, 100).await.unwrap();
    assert_eq!(cache.get::<i32>("over-unix").await.unwrap(), Some(1));
    let _: () = unix.cmd(&["SELECT", "2"]);
    drop(unix);
    let _ = std::fs::remove_file(socket);
}

// --- `set_nx`: the bytes of a taken key with the refused write (`SET .. NX GET`). ---

/// `set_nx` sends one command whether the key is free or holds a plain value: the bytes of a
/// taken key come back with the refused write (`SET .. NX GET`; it was a `SET NX` then a `GET`,
/// two round trips on every refused call). Only a tagged entry costs more: its tags' state
/// (one `MGET`: two round trips), and for an entry they hide the compare-and-set (`EVAL`) that
/// replaces it (three).
#[tokio::test]
async fn set_nx_is_one_command_unless_it_finds_a_tagged_entry() {
    let server = RedisServer::start();
    let cache = cache(&server);
    cache.set("plain", &0, 100).await.unwrap();
    cache.set_tagged("shown", &0, 100, ["u"]).await.unwrap();
    cache.set_tagged("hidden", &0, 100, ["t"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    cache.invalidate_tag("t").await.unwrap();
    let sent = |calls: &[(&str, u64)]| -> BTreeMap<String, u64> {
        calls
            .iter()
            .map(|(name, calls)| ((*name).to_owned(), *calls))
            .collect()
    };
    let cases = [
        ("free", true, sent(&[("set", 1)])),
        ("plain", false, sent(&[("set", 1)])),
        ("shown", false, sent(&[("mget", 1), ("set", 1)])),
        // The script's own `GET` and `SET` are counted too: three round trips.
        (
            "hidden",
            true,
            sent(&[("eval", 1), ("get", 1), ("mget", 1), ("set", 2)]),
        ),
    ];
    for (key, stored, sent) in cases {
        reset_stats(&server);
        assert_eq!(cache.set_nx(key, &1, 100).await.unwrap(), stored, "{key}");
        assert_eq!(command_calls(&server), sent, "{key}");
    }
    for (key, value) in [("free", 1), ("plain", 0), ("shown", 0), ("hidden", 1)] {
        assert_eq!(cache.get::<i32>(key).await.unwrap(), Some(value), "{key}");
    }
    let ttl: i64 = server.cmd(&["TTL", "cache:1:free"]);
    assert!((95..=100).contains(&ttl), "{ttl}");
}

/// A server that answers `SET .. NX GET` as Redis before 7.0 does (`ERR syntax error`: 6.2
/// refuses `NX` with `GET`, older servers know no `GET` option), and `SET`, `SET .. NX` and
/// `GET` as Redis does (expiries ignored); `+OK` to anything else (the client's `CLIENT
/// SETINFO`). It records each command it gets, and leaves `GET`s unanswered once told to.
struct OldServer {
    port: u16,
    state: Arc<Mutex<OldState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct OldState {
    /// Each command received, its arguments upper-cased.
    commands: Vec<Vec<String>>,
    store: HashMap<Vec<u8>, Vec<u8>>,
    /// `GET`s are left unanswered (the replies of any command after one would be misread: only
    /// for a test's last step).
    silent_gets: bool,
}

impl OldServer {
    async fn start() -> OldServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(OldState::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_old(stream, Arc::clone(&shared)));
            }
        });
        OldServer { port, state, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The commands named `name` received so far, each as its arguments after the key (and
    /// the value, for `SET`), upper-cased.
    fn sent(&self, name: &str) -> Vec<Vec<String>> {
        let skip = if name == "SET" { 3 } else { 2 };
        let state = self.state.lock().unwrap();
        state
            .commands
            .iter()
            .filter(|command| command[0] == name)
            .map(|command| command.iter().skip(skip).cloned().collect())
            .collect()
    }

    fn silence_gets(&self) {
        self.state.lock().unwrap().silent_gets = true;
    }
}

impl Drop for OldServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_old(stream: tokio::net::TcpStream, state: Arc<Mutex<OldState>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    // One command: `*n`, then n times `$len` and the argument.
    let mut line = String::new();
    loop {
        line.clear();
        let Ok(1..) = read.read_line(&mut line).await else {
            return;
        };
        let n: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            read.read_line(&mut line).await.unwrap();
            let len: usize = line.trim_end().trim_start_matches('$').parse().unwrap();
            let mut arg = vec![0; len + 2];
            read.read_exact(&mut arg).await.unwrap();
            arg.truncate(len);
            args.push(arg);
        }
        let upper: Vec<String> = args
            .iter()
            .map(|arg| String::from_utf8_lossy(arg).to_uppercase())
            .collect();
        let reply = {
            let mut state = state.lock().unwrap();
            let option = |name: &str| upper.iter().skip(3).any(|arg| arg == name);
            let reply = match upper[0].as_str() {
                "SET" if option("NX") && option("GET") => b"-ERR syntax error\r\n".to_vec(),
                "SET" if option("NX") && state.store.contains_key(&args[1]) => b"$-1\r\n".to_vec(),
                "SET" => {
                    state.store.insert(args[1].clone(), args[2].clone());
                    b"+OK\r\n".to_vec()
                }
                "GET" if state.silent_gets => Vec::new(),
                "GET" => match state.store.get(&args[1]) {
                    Some(value) => {
                        let mut reply = format!("${}\r\n", value.len()).into_bytes();
                        reply.extend_from_slice(value);
                        reply.extend_from_slice(b"\r\n");
                        reply
                    }
                    None => b"$-1\r\n".to_vec(),
                },
                _ => b"+OK\r\n".to_vec(),
            };
            state.commands.push(upper);
            reply
        };
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// On a server that refuses `SET .. NX GET` (before Redis 7.0), `set_nx` answers as on any
/// other: the repository falls back to `SET .. NX` then, for a taken key, a `GET`, remembers the
/// refusal (sent once, not once per call) and logs it once, at `INFO`. A failure of that `GET`
/// is told as the `set_nx`'s, of its key.
#[tokio::test]
async fn before_redis_7_set_nx_falls_back_to_a_get_after_one_refusal() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    impcache_tests::logs::keep_callsites_interested();
    let _logging = tracing::subscriber::set_default(subscriber);
    let server = OldServer::start().await;
    let repository = RedisCacheRepository::builder(server.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let cache = Cache::new(repository);

    assert!(cache.set_nx("a", &1, 100).await.unwrap(), "a free key");
    assert!(!cache.set_nx("a", &2, 100).await.unwrap(), "a taken key");
    assert!(!cache.set_nx_raw("a", "3".into(), 100).await.unwrap());
    assert!(cache.set_nx("b", &2, 100).await.unwrap());
    assert_eq!(cache.get::<i32>("a").await.unwrap(), Some(1));

    let nx = || vec!["EX".to_owned(), "100".to_owned(), "NX".to_owned()];
    let mut nx_get = nx();
    nx_get.push("GET".to_owned());
    assert_eq!(server.sent("SET"), [nx_get, nx(), nx(), nx(), nx()]);
    // Two `set_nx` over the taken key, and the `get`.
    assert_eq!(server.sent("GET").len(), 3);
    let text = logs.text();
    assert_eq!(text.matches("refuses `SET .. NX GET`").count(), 1, "{text}");

    server.silence_gets();
    let error = cache.set_nx("a", &4, 100).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("set_nx of `cache:1:a` timed out"),
        "{error}"
    );
}
