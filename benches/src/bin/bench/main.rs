//! The impcache benchmark: one process that starts its own throwaway `redis-server` and measures
//! impcache side by side with raw redis-rs, moka, the `cached` crate, the Python library,
//! redis-py and `redis-benchmark`, writing `results/bench.json`, `results/bench.csv` and
//! `results/ratios.md`.
//!
//! ```text
//! cargo run --release -p impcache-benches --bin bench -- [--quick] [--out DIR] [--python PATH]
//!     [--only core,tcp,batch,delete,memory,macro,http,peers,python,redis-benchmark]
//! ```
//!
//! Only the ratios mean something: client and server share the machine's cores.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a broken setup must fail loudly

mod cases;
mod http;
mod memo;
mod peers;
mod report;
mod tcp;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use impcache_benches::{Ratio, Sample, Timing};
use impcache_tests::RedisServer;

/// Errors (and unexpected misses) seen by benchmark operations; reported, never hidden.
pub(crate) static ERRORS: AtomicU64 = AtomicU64::new(0);

/// 1 on success, 0 (and an error counted) otherwise.
pub(crate) fn count<T, E: std::fmt::Display>(result: Result<T, E>) -> u64 {
    match result {
        Ok(value) => {
            std::hint::black_box(value);
            1
        }
        Err(e) => {
            if ERRORS.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("benchmark operation failed: {e}");
            }
            0
        }
    }
}

/// What one run measures and where it writes.
#[derive(Debug)]
pub(crate) struct Config {
    pub quick: bool,
    pub timing: Timing,
    pub out: PathBuf,
    pub only: Option<Vec<String>>,
    pub python: PathBuf,
    pub concurrencies: Vec<usize>,
}

impl Config {
    pub(crate) fn wants(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|c| c == case))
    }
}

/// Everything measured so far.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub samples: Vec<Sample>,
    pub ratios: Vec<Ratio>,
    /// Lines for the report: pending cases, counts, remarks.
    pub notes: Vec<String>,
}

impl Results {
    pub(crate) fn add(&mut self, (samples, ratio): (Vec<Sample>, Ratio)) {
        println!(
            "  {:<28} c={:<4} {:>10} {:>10}/s vs {:>10} {:>10}/s  ratio {:.3} [{:.3}..{:.3}]",
            ratio.case,
            ratio.concurrency,
            samples[0].system,
            impcache_benches::human_rate(samples[0].ops_per_sec),
            samples[1].system,
            impcache_benches::human_rate(samples[1].ops_per_sec),
            ratio.ratio,
            ratio.spread.0,
            ratio.spread.1,
        );
        self.samples.extend(samples);
        self.ratios.push(ratio);
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("  note: {note}");
        self.notes.push(note);
    }
}

fn parse_args() -> Config {
    let mut quick = false;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    let mut only = None;
    let mut python = PathBuf::from("/work/bench-venv/bin/python");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(args.next().expect("--out DIR")),
            "--python" => python = PathBuf::from(args.next().expect("--python PATH")),
            "--only" => {
                only = Some(
                    args.next()
                        .expect("--only CASES")
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            // `cargo bench` passes `--bench` to every bench target, harness or not.
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "bench [--quick] [--out DIR] [--python PATH] \
                     [--only core,tcp,batch,delete,memory,macro,http,peers,python,redis-benchmark]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (see --help)"),
        }
    }
    if quick && out.ends_with("results") {
        // A smoke run must not overwrite the committed results.
        out = std::env::temp_dir().join("impcache-bench-quick");
    }
    Config {
        quick,
        timing: if quick {
            Timing::quick()
        } else {
            Timing::full()
        },
        out,
        only,
        python,
        concurrencies: vec![1, 16, 64, 256],
    }
}

fn main() {
    let config = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let server = RedisServer::start();
    println!(
        "redis-server on port {} ({}), {} mode",
        server.port(),
        report::redis_version(),
        if config.quick { "quick" } else { "full" }
    );
    let mut results = Results::default();
    runtime.block_on(async {
        if config.wants("core") {
            cases::core(&config, &server, &mut results).await;
        }
        if config.wants("tcp") {
            tcp::tcp(&config, &server, &mut results).await;
        }
        if config.wants("batch") {
            cases::batch(&config, &server, &mut results).await;
        }
        if config.wants("memory") {
            cases::memory(&config, &mut results).await;
        }
        if config.wants("macro") {
            memo::macro_case(&config, &server, &mut results).await;
        }
        if config.wants("http") {
            http::http(&config, &server, &mut results).await;
        }
        if config.wants("peers") {
            memo::cached_crate(&config, &server, &mut results).await;
        }
        if config.wants("python") {
            peers::python(&config, &server, &mut results).await;
        }
        if config.wants("redis-benchmark") {
            peers::redis_benchmark(&config, &server, &mut results).await;
        }
        if config.wants("delete") {
            cases::delete_pattern(&config, &mut results).await;
        }
    });
    let errors = ERRORS.load(Ordering::Relaxed);
    if errors > 0 {
        results.note(format!(
            "{errors} benchmark operations failed or missed (see stderr)"
        ));
    }
    report::write(&config, &results, started.elapsed());
    drop(server);
}
