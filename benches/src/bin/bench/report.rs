//! Writes the results: `bench.json` (everything), `bench.csv` (samples) and `ratios.md` (the
//! table pasted into `BENCHMARKS.md`).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::{Config, Results};

fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn redis_version() -> String {
    run(&impcache_tests::redis_server_bin(), &["--version"])
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(|v| format!("redis-server {v}"))
        .unwrap_or_else(|| "redis-server (unknown version)".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(crate) fn write(config: &Config, results: &Results, elapsed: Duration) {
    std::fs::create_dir_all(&config.out).expect("create the results directory");
    let machine = serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu_model(),
        "redis_server": redis_version(),
        "kernel": run("uname", &["-sr"]),
        "rustc": run("rustc", &["-V"]),
        "mode": if config.quick { "quick" } else { "full" },
        "elapsed_secs": elapsed.as_secs_f64(),
        "round_ms": config.timing.round.as_millis() as u64,
        "rounds": config.timing.rounds,
    });
    let json = serde_json::json!({
        "machine": machine,
        "samples": results.samples,
        "ratios": results.ratios,
        "notes": results.notes,
    });
    let path = config.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json"))
        .expect("write bench.json");

    let mut csv = String::from("case,system,concurrency,ops_per_sec,mean_latency_us\n");
    for s in &results.samples {
        let _ = writeln!(
            csv,
            "{},{},{},{:.1},{:.2}",
            s.case, s.system, s.concurrency, s.ops_per_sec, s.mean_latency_us
        );
    }
    std::fs::write(config.out.join("bench.csv"), csv).expect("write bench.csv");

    let mut md = String::from(
        "| case | tasks | impcache | baseline | baseline rate | ratio (median) | ratio (totals) | spread | target |\n\
         |---|---:|---:|---|---:|---:|---:|---|---|\n",
    );
    for r in &results.ratios {
        let rate = |system: &str| {
            results
                .samples
                .iter()
                .find(|s| s.case == r.case && s.concurrency == r.concurrency && s.system == system)
                .map(|s| impcache_benches::human_rate(s.ops_per_sec))
                .unwrap_or_default()
        };
        let target = match r.target {
            Some(t) if r.ratio >= t => format!("≥ {t} ✅"),
            Some(t) => format!("≥ {t} ❌"),
            None => "–".to_owned(),
        };
        let spread = if r.spread.0.is_finite() {
            format!("{:.2}–{:.2}", r.spread.0, r.spread.1)
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {}/s | {} | {}/s | **{:.2}** | {:.2} | {} | {} |",
            r.case,
            r.concurrency,
            rate(&r.system),
            r.baseline,
            rate(&r.baseline),
            r.ratio,
            r.ratio_of_totals,
            spread,
            target
        );
    }
    if !results.notes.is_empty() {
        md.push('\n');
        for note in &results.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    std::fs::write(config.out.join("ratios.md"), &md).expect("write ratios.md");
    println!("\n{md}");
    println!(
        "results in {} ({:.0} s)",
        config.out.display(),
        elapsed.as_secs_f64()
    );
}
