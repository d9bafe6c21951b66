//! Security: `rediss://` verifies certificates (default roots, or a custom CA given to the
//! builder), refusing an untrusted CA or a wrong host name; ACL users and passwords work; passwords
//! never appear in `Debug` output, error messages or logs.
//!
//! The TLS tests need the `tls` feature: `cargo test -p impcache-tests --features tls`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use impcache::{Cache, Error, RedisCacheRepository};
use impcache_tests::RedisServer;

const PASSWORD: &str = "s3cret-pw-7f1c";
const WRONG_PASSWORD: &str = "wrong-pw-93ab";

/// Everything logged through `tracing` by this test binary, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows a password: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_work_and_passwords_never_show() {
    let logs = captured_logs();
    let mut server = RedisServer::start();
    let _: () = server.cmd(&[
        "ACL",
        "SETUSER",
        "alice",
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "+@all",
    ]);
    let _: () = server.cmd(&["ACL", "SETUSER", "default", "off"]);
    let port = server.port();
    let dsn = format!("redis://alice:{PASSWORD}@127.0.0.1:{port}/0");

    let builder = RedisCacheRepository::builder(&dsn).deadline(Duration::from_millis(300));
    assert_no_secret("builder Debug", &format!("{builder:?}"));
    let repository = builder.build().unwrap();
    let cache = Cache::new(repository.clone());
    assert_no_secret("repository Debug", &format!("{repository:?}"));
    assert_no_secret("cache Debug", &format!("{cache:?}"));
    assert!(format!("{repository:?}").contains("alice:***@"));
    cache.set("k", &"v", 60).await.unwrap();
    assert_eq!(
        cache.get::<String>("k").await.unwrap().as_deref(),
        Some("v")
    );

    // A wrong password: refused, and neither password shows anywhere.
    let bad =
        RedisCacheRepository::builder(format!("redis://alice:{WRONG_PASSWORD}@127.0.0.1:{port}/0"))
            .deadline(Duration::from_millis(300))
            .build()
            .unwrap();
    let bad_cache = Cache::new(bad.clone());
    let mut errors = Vec::new();
    for _ in 0..8 {
        errors.push(bad_cache.get::<String>("k").await.unwrap_err());
    }
    eprintln!("wrong password: {}", errors[0]);
    assert!(errors[0].is_backend_failure(), "{:?}", errors[0]);
    for e in &errors {
        assert_no_secret("error message", &e.to_string());
        assert_no_secret("error Debug", &format!("{e:?}"));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            assert_no_secret("error source", &s.to_string());
            source = s.source();
        }
    }
    assert_no_secret("repository Debug", &format!("{bad:?}"));

    // An outage (logged by the breaker and the reconnect logic) logs no password either.
    server.kill();
    for _ in 0..10 {
        assert!(cache.get::<String>("k").await.is_err());
    }
    assert!(repository.is_circuit_open());
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    // The breaker's warning names the failure that opened it and whose breaker it is (the
    // server, as the metrics' `target` label names it: no password), not its key (which the
    // cache logs only when it records keys).
    let target = format!("127.0.0.1:{}", server.port());
    assert!(
        logs.lines()
            .any(|line| line.contains("circuit breaker opened")
                && line.contains("last_error=")
                && line.contains("repository=\"redis\"")
                && line.contains("target=")
                && line.contains(&target)
                && !line.contains("cache:1:k")),
        "logs: {logs}"
    );
    assert_no_secret("logs", &logs);
}

/// A login the server refuses (a wrong password, a disabled or an unknown ACL user, over RESP2
/// and RESP3) is the server's answer, as `NOAUTH` is: `Error::Server` naming the operation and
/// the key, not an outage, so the breaker stays closed and every call keeps saying why. The
/// connection that failed to log in is not kept: a password corrected on the server works at
/// the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_the_servers_answer_not_an_outage() {
    let server = RedisServer::start();
    let _: () = server.cmd(&[
        "ACL", "SETUSER", "offuser", "off", ">offpw12", "~*", "+@all",
    ]);
    let _: () = server.cmd(&["CONFIG", "SET", "requirepass", PASSWORD]);
    let port = server.port();
    let dsns = [
        format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0"),
        format!("redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0?protocol=resp3"),
        format!("redis://offuser:offpw12@127.0.0.1:{port}/0"),
        format!("redis://ghost:{WRONG_PASSWORD}@127.0.0.1:{port}/0"),
    ];
    for dsn in &dsns {
        let repository = RedisCacheRepository::new(dsn).unwrap();
        let cache = Cache::new(repository.clone());
        // More calls than the breaker's threshold (5).
        for i in 0..8 {
            let (error, operation) = if i % 2 == 0 {
                (cache.get::<i32>("k").await.unwrap_err(), "get")
            } else {
                (cache.set("k", &1, 60).await.unwrap_err(), "set")
            };
            let message = error.to_string();
            let Error::Server { code, .. } = &error else {
                panic!("{dsn}: {error:?}");
            };
            assert!(
                !error.is_outage() && error.is_backend_failure(),
                "{error:?}"
            );
            assert!(
                message.starts_with(&format!("server refused {operation} of `cache:1:k`: ")),
                "{message}"
            );
            if dsn.ends_with("resp3") {
                assert_eq!(code.as_deref(), Some("WRONGPASS"), "{message}");
            } else {
                assert!(message.contains("authentication failed"), "{message}");
            }
            assert_no_secret("error", &format!("{message} {error:?}"));
        }
        assert!(!repository.is_circuit_open(), "{dsn}");
    }

    // No password in the DSN: the server's `NOAUTH`, or in our words a refused login that does
    // not claim the DSN gave a password (it said "refused the user name and password of the
    // DSN" from the third call on; found by a probe).
    let cache =
        Cache::new(RedisCacheRepository::new(&format!("redis://127.0.0.1:{port}/0")).unwrap());
    for _ in 0..6 {
        let error = cache.get::<i32>("k").await.unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, Error::Server { .. }) && !error.is_outage(),
            "{error:?}"
        );
        assert!(
            message.contains("NOAUTH") || message.contains("when the DSN gives none"),
            "{message}"
        );
    }

    // The server's password changed to the one the repository has: the next call logs in.
    let repository = RedisCacheRepository::new(&dsns[0]).unwrap();
    let cache = Cache::new(repository.clone());
    assert!(cache.get::<i32>("k").await.is_err());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(WRONG_PASSWORD)
        .query(
            &mut redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{port}/0"))
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    cache.set("k", &1, 60).await.unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
}

/// A password (and a user name) in the DSN's query, `?password=` / `?username=` as redis-py
/// reads them (and `?pass=` / `?user=`, as the `redis` crate reads them on a socket), is sent,
/// on TCP and on a socket: the `redis` crate alone ignores them on TCP (and `password=` on a
/// socket), and every call failed with `NOAUTH`. Two different passwords are refused at build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_the_query_are_sent() {
    let socket = std::env::temp_dir().join(format!("impcache-sec-{}.sock", std::process::id()));
    let socket = socket.to_str().unwrap().to_owned();
    let server = RedisServer::start_with(&["--unixsocket", &socket]);
    // The default user's password is `PASSWORD`, alice's `WRONG_PASSWORD`.
    let _: () = server.cmd(&[
        "ACL",
        "SETUSER",
        "alice",
        "on",
        &format!(">{WRONG_PASSWORD}"),
        "~*",
        "+@all",
    ]);
    let _: () = server.cmd(&["CONFIG", "SET", "requirepass", PASSWORD]);
    let port = server.port();
    for dsn in [
        format!("redis://127.0.0.1:{port}/0?password={PASSWORD}"),
        format!("redis://127.0.0.1:{port}/0?pass={PASSWORD}"),
        format!("redis://127.0.0.1:{port}/0?username=alice&password={WRONG_PASSWORD}"),
        format!("redis://alice@127.0.0.1:{port}/0?password={WRONG_PASSWORD}"),
        format!("redis://:{PASSWORD}@127.0.0.1:{port}/0?password={PASSWORD}"),
        format!("unix://{socket}?password={PASSWORD}"),
        format!("unix://{socket}?pass={PASSWORD}"),
        format!("unix://{socket}?user=alice&password={WRONG_PASSWORD}"),
    ] {
        let repository = RedisCacheRepository::new(&dsn).unwrap();
        assert_no_secret("repository Debug", &format!("{repository:?}"));
        let cache = Cache::new(repository);
        cache
            .set("k", &1, 60)
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {e}"));
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1), "{dsn}");
    }
    for dsn in [
        format!("redis://:{PASSWORD}@127.0.0.1:{port}/0?password={WRONG_PASSWORD}"),
        format!("redis://127.0.0.1:{port}/0?password={PASSWORD}&pass={WRONG_PASSWORD}"),
        format!("unix://{socket}?pass={PASSWORD}&pass={WRONG_PASSWORD}"),
    ] {
        let error = RedisCacheRepository::new(&dsn).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::InvalidDsn { .. }), "{error:?}");
        assert!(message.contains("two different passwords"), "{message}");
        assert_no_secret("DSN error", &format!("{message} {error:?}"));
    }
    let error =
        RedisCacheRepository::new(&format!("redis://alice@127.0.0.1:{port}/0?username=bob"))
            .unwrap_err();
    assert!(
        error.to_string().contains("two different user names"),
        "{error}"
    );
    let _ = std::fs::remove_file(socket);
}

/// A user name without a password (`redis://bob@host`, `?username=bob`, a socket's `?user=bob`)
/// logs in as that user with the empty password, `AUTH bob ""`, as redis-py does, so a `nopass`
/// ACL user works. The `redis` crate sends no `AUTH` without a password: the connection ran as
/// `default`, with its wider permissions (a write outside `bob:*` went through), and under
/// `requirepass` every call failed with `NOAUTH` (found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_user_name_logs_in_as_that_user() {
    let socket = std::env::temp_dir().join(format!("impcache-bob-{}.sock", std::process::id()));
    let socket = socket.to_str().unwrap().to_owned();
    let server = RedisServer::start_with(&["--unixsocket", &socket]);
    let _: () = server.cmd(&["ACL", "SETUSER", "bob", "on", "nopass", "~bob:*", "+@all"]);
    let port = server.port();
    let dsns = [
        format!("redis://bob@127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/0?username=bob"),
        format!("unix://{socket}?user=bob"),
        format!("unix://{socket}?username=bob"),
    ];
    let cache = |dsn: &str, prefix: &str| {
        Cache::builder(RedisCacheRepository::new(dsn).unwrap())
            .key_prefix(prefix)
            .build()
    };
    // Without `requirepass`: bob's permissions, not `default`'s.
    for dsn in &dsns {
        cache(dsn, "bob")
            .set("k", &1, 60)
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {e}"));
        match cache(dsn, "other").set("k", &1, 60).await {
            Err(Error::Server { message, .. }) if message.contains("NOPERM") => {}
            other => panic!("{dsn}: a write outside bob:* gave {other:?}"),
        }
    }
    // With `requirepass`: bob is logged in, not refused with `NOAUTH`.
    let _: () = server.cmd(&["CONFIG", "SET", "requirepass", PASSWORD]);
    for dsn in &dsns {
        let cache = cache(dsn, "bob");
        cache
            .set("k", &2, 60)
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {e}"));
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2), "{dsn}");
    }
    let _ = std::fs::remove_file(socket);
}

#[test]
fn dsn_errors_never_show_the_password() {
    for dsn in [
        format!("redis://alice:{PASSWORD}@127.0.0.1:notaport/0"),
        format!("redis://alice:{PASSWORD}@/0"),
        format!("redis://{PASSWORD}@127.0.0.1:1/abc"),
        format!("redis://alice:{PASSWORD}@127.0.0.1:1/0?db=x"),
        format!("ftp://alice:{PASSWORD}@127.0.0.1:1/0"),
    ] {
        let error = RedisCacheRepository::new(&dsn).unwrap_err();
        assert!(matches!(error, Error::InvalidDsn { .. }), "{error:?}");
        assert_no_secret("DSN error", &error.to_string());
        assert_no_secret("DSN error Debug", &format!("{error:?}"));
        assert_no_secret(
            "builder Debug",
            &format!("{:?}", RedisCacheRepository::builder(&dsn)),
        );
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use impcache::{Cache, Error, RedisCacheRepository};

    /// A scratch directory with a CA, a second (untrusted) CA, and server certificates.
    struct Pki {
        dir: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    impl Pki {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "impcache-pki-{}-{}",
                std::process::id(),
                impcache_tests::free_port()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let pki = Pki { dir };
            pki.ca("ca");
            pki.ca("rogue-ca");
            pki.server("server", "ca", "DNS:localhost,IP:127.0.0.1");
            pki.server("wrong-host", "ca", "DNS:wrong.example");
            pki.server("rogue", "rogue-ca", "DNS:localhost,IP:127.0.0.1");
            pki
        }

        fn ca(&self, name: &str) {
            openssl(
                &self.dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=impcache test {name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }

        fn server(&self, name: &str, ca: &str, san: &str) {
            openssl(
                &self.dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    "/CN=impcache test server",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            std::fs::write(
                self.dir.join(format!("{name}.ext")),
                format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
            )
            .unwrap();
            openssl(
                &self.dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }

        fn pem(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.join(format!("{name}.crt"))).unwrap()
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A `redis-server` listening for TLS only (`--port 0`), with certificate `cert`.
    struct TlsServer {
        child: Child,
        port: u16,
    }

    impl TlsServer {
        /// On a free port, retried on another when the server exits: the port may be taken
        /// between `free_port` and the bind (another test's server or proxy, which the readiness
        /// check then connected to: the calls met "connection refused" once it was gone, 1 CI
        /// run).
        fn start(pki: &Pki, cert: &str) -> Self {
            for _ in 0..10 {
                if let Some(server) = Self::try_start(pki, cert) {
                    return server;
                }
            }
            panic!("TLS redis-server did not start");
        }

        fn try_start(pki: &Pki, cert: &str) -> Option<Self> {
            let port = impcache_tests::free_port();
            let file = |ext: &str| pki.dir.join(format!("{cert}.{ext}"));
            let mut child = Command::new(impcache_tests::redis_server_bin())
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&pki.dir)
                .arg("--tls-cert-file")
                .arg(file("crt"))
                .arg("--tls-key-file")
                .arg(file("key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            let exited = |child: &mut Child| !matches!(child.try_wait(), Ok(None));
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if exited(&mut child) || Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Listening, but maybe another process on the port: ours then exits at once, its
            // bind refused.
            std::thread::sleep(Duration::from_millis(100));
            if exited(&mut child) {
                let _ = child.wait();
                return None;
            }
            Some(TlsServer { child, port })
        }

        fn url(&self, host: &str) -> String {
            format!("rediss://{host}:{}/0", self.port)
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn cache(url: &str, root: Option<Vec<u8>>) -> Cache {
        let mut builder = RedisCacheRepository::builder(url).deadline(Duration::from_secs(2));
        if let Some(root) = root {
            builder = builder.tls_root_certificate(root);
        }
        Cache::new(builder.build().unwrap())
    }

    fn assert_refused(result: impcache::Result<()>, what: &str) -> Error {
        let error = result.expect_err(what);
        eprintln!("{what}: {error}");
        assert!(error.is_backend_failure(), "{what}: {error:?}");
        error
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trusted_ca_and_matching_host_connect() {
        let pki = Pki::new();
        let server = TlsServer::start(&pki, "server");
        for host in ["127.0.0.1", "localhost"] {
            let cache = cache(&server.url(host), Some(pki.pem("ca")));
            cache.set("k", &host, 60).await.unwrap();
            assert_eq!(
                cache.get::<String>("k").await.unwrap().as_deref(),
                Some(host)
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificates_are_verified_by_default() {
        let pki = Pki::new();
        let server = TlsServer::start(&pki, "server");
        // The default (webpki) roots do not include the test CA.
        let error = assert_refused(
            cache(&server.url("127.0.0.1"), None).set("k", &1, 60).await,
            "a private CA without tls_root_certificate",
        );
        assert!(
            format!("{error:?}").to_lowercase().contains("certificate"),
            "{error:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_untrusted_ca_is_refused() {
        let pki = Pki::new();
        let server = TlsServer::start(&pki, "rogue");
        assert_refused(
            cache(&server.url("127.0.0.1"), Some(pki.pem("ca")))
                .set("k", &1, 60)
                .await,
            "a certificate from another CA",
        );
        // Trusting the rogue CA explicitly makes it work: the refusal was about trust.
        cache(&server.url("127.0.0.1"), Some(pki.pem("rogue-ca")))
            .set("k", &1, 60)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_host_name_is_refused() {
        let pki = Pki::new();
        let server = TlsServer::start(&pki, "wrong-host");
        for host in ["127.0.0.1", "localhost"] {
            let error = assert_refused(
                cache(&server.url(host), Some(pki.pem("ca")))
                    .set("k", &1, 60)
                    .await,
                "a certificate for wrong.example",
            );
            assert!(
                format!("{error:?}").to_lowercase().contains("certificate"),
                "{error:?}"
            );
        }
    }

    /// `#insecure` (no certificate verification) needs a feature of the `redis` crate that
    /// impcache does not enable: refused when the repository is built, not by every call.
    #[test]
    fn insecure_tls_is_refused_at_build() {
        for dsn in [
            "rediss://127.0.0.1:1/0#insecure",
            "rediss://:hunter2@localhost:1/0#insecure",
            "valkeys://127.0.0.1:1#insecure",
        ] {
            let error = RedisCacheRepository::new(dsn).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, Error::InvalidDsn { .. }), "{error:?}");
            assert!(message.contains("`#insecure`"), "{message}");
            assert!(message.contains("not supported"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let error = RedisCacheRepository::new("rediss://127.0.0.1:1/0#other").unwrap_err();
        assert!(matches!(error, Error::InvalidDsn { .. }), "{error:?}");
        assert!(RedisCacheRepository::new("rediss://127.0.0.1:1/0").is_ok());
    }

    #[test]
    fn tls_certificates_need_a_rediss_dsn() {
        let error = RedisCacheRepository::builder("redis://127.0.0.1:1/0")
            .tls_root_certificate(b"-----BEGIN CERTIFICATE-----".to_vec())
            .build()
            .unwrap_err();
        assert!(matches!(error, Error::InvalidDsn { .. }), "{error:?}");
        assert!(error.to_string().contains("rediss://"), "{error}");
    }
}

/// A login the server refuses is not tried again at every call: after the second refusal in a
/// row, the next attempt waits (10 ms, doubling up to a second), the calls meanwhile failing at
/// once with its error, without a connection (each call made a new connection and `AUTH`, about
/// 200 a second from one process while a password was rotated; found by a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_not_tried_again_at_every_call() {
    let server = RedisServer::start();
    let connections = || -> u64 {
        let info: String = server.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    // A user the server does not know: `WRONGPASS`.
    let dsn = format!("redis://ghost:wrong@127.0.0.1:{}/0", server.port());
    let cache = Cache::new(RedisCacheRepository::new(dsn.as_str()).unwrap());
    let before = connections();
    for _ in 0..50 {
        match cache.get::<u64>("k").await {
            Err(Error::Server { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    // A few logins (10 ms, then 20 ms, ... apart), one connection for each reading of the count.
    let made = connections() - before;
    assert!(made <= 12, "{made} connections for 50 calls");
}

/// A server that starts wanting a password the DSN does not give (`requirepass` set while the
/// cache runs) refuses each command with `NOAUTH` on a connection it accepted: that counts as a
/// refused login as well, so the calls do not each make a new connection (467 in 2 s from one
/// task; found by a probe, 2026-12-07), and the cache is back once the password is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_starts_wanting_a_password_is_not_logged_in_to_at_every_call() {
    let server = RedisServer::start();
    // Made before `requirepass`: logged in for good, it reads the count and sets things back.
    let mut admin = server.raw();
    let connections = |admin: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(admin).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    let cache = Cache::new(RedisCacheRepository::new(server.url().as_str()).unwrap());
    cache.set("k", &1_u64, 60).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", PASSWORD][..])
        .query(&mut admin)
        .unwrap();
    let _: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query(&mut admin)
        .unwrap();
    let before = connections(&mut admin);
    for _ in 0..50 {
        let refused = cache.get::<u64>("k").await;
        assert!(refused.is_err(), "{refused:?}");
    }
    let made = connections(&mut admin) - before;
    assert!(made <= 12, "{made} connections for 50 calls");
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", ""][..])
        .query(&mut admin)
        .unwrap();
    let back = std::time::Instant::now();
    while cache.get::<u64>("k").await.ok() != Some(Some(1)) {
        assert!(back.elapsed() < Duration::from_secs(10), "not back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
