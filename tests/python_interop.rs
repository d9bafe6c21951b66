//! Storage-format compatibility with the Python library impcache 1.0.2, both directions, against
//! a real Redis: what Rust writes, Python reads (byte for byte as orjson would write it), and the
//! other way round.
//!
//! Needs a Python with `impcache==1.0.2`: `$IMPCACHE_PYTHON`, else `target/interop-venv/bin/python`
//! (made by `scripts/test.sh`). Without one the test is skipped with a message, unless
//! `IMPCACHE_REQUIRE_PYTHON=1` (set by `scripts/test.sh`), where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use impcache::{Cache, RedisCacheRepository};
use impcache_tests::RedisServer;
use serde_json::{json, Value};

fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("IMPCACHE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv/bin/python")
        });
    let has_impcache = Command::new(&candidate)
        .args([
            "-c",
            "import impcache, sys; sys.exit(impcache.__version__ != '1.0.2')",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if has_impcache {
        return Some(candidate);
    }
    let message = format!(
        "no Python with impcache==1.0.2 at {} (set IMPCACHE_PYTHON, or run scripts/test.sh)",
        candidate.display()
    );
    if std::env::var("IMPCACHE_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("skipping the Python interoperability test: {message}");
    None
}

fn run_python(
    python: &PathBuf,
    server: &RedisServer,
    version: &str,
    mode: &str,
    payload: &Value,
) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/interop.py");
    let mut child = Command::new(python)
        .arg(script)
        .args([&server.url(), "interop", version, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Python's answers hold the 200-deep sample: beyond serde_json's own limit of 127 levels.
    let mut deserializer = serde_json::Deserializer::from_slice(&out.stdout);
    deserializer.disable_recursion_limit();
    serde::Deserialize::deserialize(&mut deserializer).unwrap()
}

/// `depth` levels of arrays and objects, alternating, around a number.
fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for level in 0..depth {
        value = if level % 2 == 0 {
            json!([value])
        } else {
            json!({ "k": value })
        };
    }
    value
}

fn samples() -> Vec<(&'static str, Value)> {
    vec![
        ("string", json!("value")),
        ("empty-string", json!("")),
        ("unicode", json!("Zoë 键 🔑 \"quoted\" \\ \n newline")),
        (
            "nested",
            json!({"user": {"id": 7, "tags": ["a", "b"], "meta": {"ok": true, "none": null}}}),
        ),
        ("list", json!([1, "two", 3.5, [4], {"five": 5}])),
        ("empty-list", json!([])),
        ("int", json!(42)),
        ("negative", json!(-7)),
        ("big-int", json!(9_007_199_254_740_993_i64)),
        ("float", json!(1.0625)),
        ("float-whole", json!(2.0)),
        ("float-negative", json!(-0.25)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("null", Value::Null),
        // Deeper than serde_json reads by itself (127), within what orjson writes (255).
        ("deep", nested(200)),
    ]
}

/// A cache on `server` with the key layout the Python script uses (`interop:3:{key}`).
fn interop_cache(server: &RedisServer) -> Cache {
    let repository = RedisCacheRepository::new(&server.url()).unwrap();
    Cache::builder(repository)
        .key_prefix("interop")
        .version(3)
        .build()
}

#[tokio::test]
async fn rust_and_python_read_each_others_entries() {
    let Some(python) = python() else { return };
    let server = RedisServer::start();
    let cache = interop_cache(&server);

    // Rust writes, Python reads.
    for (key, value) in samples() {
        cache.set(key, &value, 100).await.unwrap();
    }
    let keys: Vec<&str> = samples().iter().map(|(k, _)| *k).collect();
    let read = run_python(&python, &server, "3", "read", &json!(keys));
    for (i, (key, value)) in samples().into_iter().enumerate() {
        assert_eq!(read["get"][key], value, "python get of {key}");
        assert_eq!(read["get_many"][i], value, "python get_many of {key}");
        // Byte for byte what Python itself would have stored.
        let raw: Vec<u8> = server.cmd(&["GET", &format!("interop:3:{key}")]);
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            read["dumps"][key].as_str().unwrap(),
            "stored bytes of {key}"
        );
    }

    // Python writes (set and set_many), Rust reads.
    let written: serde_json::Map<String, Value> = samples()
        .into_iter()
        .map(|(k, v)| (format!("py:{k}"), v))
        .collect();
    run_python(
        &python,
        &server,
        "3",
        "write",
        &Value::Object(written.clone()),
    );
    for (key, value) in &written {
        let got: Option<Value> = cache.get(key).await.unwrap();
        assert_eq!(got.as_ref(), Some(value), "rust get of {key}");
        let many: Vec<Option<Value>> = cache.get_many([format!("many:{key}")]).await.unwrap();
        assert_eq!(many[0].as_ref(), Some(value), "rust get_many of many:{key}");
    }
    // A stored null written by Python is a hit in Rust (the Python library reads it as a miss).
    assert_eq!(
        cache.get::<Option<i32>>("py:null").await.unwrap(),
        Some(None)
    );

    // Same key layout for invalidation: Python's delete_pattern removes what Rust wrote.
    cache.set("hello", &1, 100).await.unwrap();
    cache.set("hallo", &2, 100).await.unwrap();
    let removed = run_python(&python, &server, "3", "delete_pattern", &json!("h?llo"));
    assert_eq!(removed, json!(2));
    assert_eq!(cache.get::<i32>("hello").await.unwrap(), None);

    // Another version does not see them.
    let other = run_python(&python, &server, "4", "read", &json!(["string"]));
    assert_eq!(other["get"]["string"], Value::Null);
}

/// Tags (issue 16): an untagged entry keeps Python's bytes; a tagged one is its envelope, which
/// Python's `get` returns as a dict holding the value (no crash).
#[tokio::test]
async fn python_reads_a_tagged_entry_as_its_envelope() {
    let Some(python) = python() else { return };
    let server = RedisServer::start();
    let cache = interop_cache(&server);
    let value = json!({"name": "Ada", "ids": [1, 2]});
    cache
        .set_tagged("tagged", &value, 100, ["user:1"])
        .await
        .unwrap();
    let read = run_python(&python, &server, "3", "read", &json!(["tagged"]));
    assert_eq!(read["get"]["tagged"]["value"], value);
    assert_eq!(
        read["get"]["tagged"]["__impcache_tagged__"]["tags"],
        json!(["user:1"])
    );
}

/// An entry written by `get_or_set` with a stale window is an ordinary value to Python: past its
/// freshness, within the window, Python still reads it (the TTL is the expire plus the window).
#[tokio::test]
async fn python_reads_an_entry_with_a_stale_window() {
    let Some(python) = python() else { return };
    let server = RedisServer::start();
    let cache = interop_cache(&server);
    let policy =
        impcache::Freshness::new().stale_while_revalidate(std::time::Duration::from_secs(60));
    let value = json!({"user": 7, "name": "Ada"});
    let loaded = value.clone();
    let got: Value = cache
        .get_or_set(
            "stale",
            std::time::Duration::from_millis(100),
            move || async move { loaded },
        )
        .freshness(policy)
        .await
        .unwrap();
    assert_eq!(got, value);
    // The store runs after the answer: wait for it, then past the freshness.
    for _ in 0..500 {
        if cache.get::<Value>("stale").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let read = run_python(&python, &server, "3", "read", &json!(["stale"]));
    assert_eq!(read["get"]["stale"], value, "python reads the stale entry");
    let raw: Vec<u8> = server.cmd(&["GET", "interop:3:stale"]);
    assert_eq!(
        String::from_utf8(raw).unwrap(),
        read["dumps"]["stale"].as_str().unwrap(),
        "stored bytes are Python's"
    );
}
