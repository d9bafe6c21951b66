//! Peers on the same machine, the same server and in the same run: the Python library and
//! redis-py (subprocesses), and `redis-benchmark`. (The `cached` crate is in `memo.rs`.)

use std::process::Command;
use std::time::Duration;

use impcache_benches::{Ratio, Sample};
use impcache_tests::RedisServer;

use crate::{Config, Results};

/// The Python script and interpreter.
fn python_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/getset.py")
}

/// Case 7b: the Python library impcache 1.0.2 and redis-py asyncio (with orjson, as impcache
/// uses), same keys, payload and concurrency as case 1, as subprocesses.
pub(crate) async fn python(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 7b: Python impcache 1.0.2 and redis-py asyncio");
    if !config.python.exists() {
        results.note(format!(
            "Python peers skipped: {} does not exist (see BENCHMARKS.md for the venv)",
            config.python.display()
        ));
        return;
    }
    let concurrencies: Vec<String> = config.concurrencies.iter().map(usize::to_string).collect();
    let run = tokio::process::Command::new(&config.python)
        .arg(python_script())
        .args(["--url", &server.url()])
        .args(["--concurrency", &concurrencies.join(",")])
        .args([
            "--seconds",
            &format!("{}", config.timing.round.as_secs_f64() * 2.0),
        ])
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(Duration::from_secs(240), run).await {
        Ok(output) => output.expect("run python"),
        Err(_) => {
            results.note("Python peers timed out after 240 s");
            return;
        }
    };
    if !output.status.success() {
        results.note(format!(
            "Python peers failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
        return;
    }
    let py: Vec<Sample> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let rate = v["ops_per_sec"].as_f64()?;
            let concurrency = v["concurrency"].as_u64()? as usize;
            Some(Sample {
                case: v["case"].as_str()?.to_owned(),
                system: v["system"].as_str()?.to_owned(),
                concurrency,
                ops_per_sec: rate,
                mean_latency_us: concurrency as f64 * 1e6 / rate.max(1e-9),
                note: v["note"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect();
    for sample in &py {
        println!(
            "  {:<28} c={:<4} {:>16} {:>10}/s",
            sample.case,
            sample.concurrency,
            sample.system,
            impcache_benches::human_rate(sample.ops_per_sec)
        );
        // Ratio against Rust impcache measured earlier in this run, same case and concurrency
        // (none when the Python system did nothing at all: see its note).
        if sample.ops_per_sec <= 0.0 {
            continue;
        }
        if let Some(rust) = results.samples.iter().find(|s| {
            s.system == "impcache" && s.case == sample.case && s.concurrency == sample.concurrency
        }) {
            results.ratios.push(Ratio {
                case: sample.case.clone(),
                concurrency: sample.concurrency,
                system: "impcache".to_owned(),
                baseline: sample.system.clone(),
                ratio: rust.ops_per_sec / sample.ops_per_sec.max(1e-9),
                ratio_of_totals: rust.ops_per_sec / sample.ops_per_sec.max(1e-9),
                target: None,
                spread: (f64::NAN, f64::NAN),
            });
        }
    }
    results.samples.extend(py);
}

/// Case 8: `redis-benchmark` (no pipelining) at the same concurrency: the server's ceiling for
/// one request in flight per connection.
pub(crate) async fn redis_benchmark(config: &Config, server: &RedisServer, results: &mut Results) {
    println!("case 8: redis-benchmark");
    for &c in &config.concurrencies {
        let n = match (config.quick, c) {
            (true, 1) => 2_000,
            (true, _) => 10_000,
            (false, 1) => 25_000,
            (false, _) => 150_000,
        };
        let output = Command::new("redis-benchmark")
            .args(["-p", &server.port().to_string(), "-t", "get,set"])
            .args([
                "-c",
                &c.to_string(),
                "-n",
                &n.to_string(),
                "-d",
                "100",
                "-r",
                "2000",
            ])
            .args(["--csv"])
            .output();
        let output = match output {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                results.note(format!(
                    "redis-benchmark failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
                return;
            }
            Err(e) => {
                results.note(format!("redis-benchmark not run: {e}"));
                return;
            }
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let (Some(test), Some(rps)) = (
                fields.first(),
                fields.get(1).and_then(|r| r.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let case = match *test {
                "GET" => "get 100B",
                "SET" => "set 100B",
                _ => continue,
            };
            println!(
                "  {case:<28} c={c:<4} {:>16} {:>10}/s",
                "redis-benchmark",
                impcache_benches::human_rate(rps)
            );
            results.samples.push(Sample {
                case: case.to_owned(),
                system: "redis-benchmark".to_owned(),
                concurrency: c,
                ops_per_sec: rps,
                mean_latency_us: c as f64 * 1e6 / rps.max(1e-9),
                note: "no pipelining: one request in flight per client connection".to_owned(),
            });
        }
    }
}
