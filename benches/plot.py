"""Plots throughput against concurrency, one line per system, from benches/results/bench.json.

    /work/bench-venv/bin/python benches/plot.py [benches/results/bench.json] [benches/results/throughput.svg]

Needs matplotlib (in the benchmark venv: `pip install matplotlib`).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "bench.json"
target = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "results" / "throughput.svg"
data = json.loads(source.read_text())
samples = data["samples"]
machine = data["machine"]

# (panel title, [(case, system, label)])
PANELS = [
    (
        "GET, 100 B JSON value",
        [
            ("get 100B", "impcache", "impcache Cache::get"),
            ("get 100B", "redis-rs", "redis-rs GET + serde_json"),
            ("#[cached] hit 100B", "#[cached]", "impcache #[cached] hit"),
            ("memoized hit 100B", "cached crate", "cached crate hit (AsyncRedisCache)"),
            ("get 100B", "py impcache", "Python impcache 1.0.2"),
            ("get 100B", "redis-py", "redis-py asyncio + orjson"),
            ("get 100B", "redis-benchmark", "redis-benchmark (no pipelining)"),
        ],
    ),
    (
        "SET EX, 100 B JSON value",
        [
            ("set 100B", "impcache", "impcache Cache::set"),
            ("set 100B", "redis-rs", "redis-rs SET EX + serde_json"),
            ("set 100B", "py impcache", "Python impcache 1.0.2"),
            ("set 100B", "redis-py", "redis-py asyncio + orjson"),
            ("set 100B", "redis-benchmark", "redis-benchmark (no pipelining)"),
        ],
    ),
    (
        "GET, 10 KiB JSON value",
        [
            ("get 10KiB", "impcache", "impcache Cache::get"),
            ("get 10KiB", "redis-rs", "redis-rs GET + serde_json"),
        ],
    ),
]


def series(case, system):
    points = {}
    for s in samples:
        if s["case"] == case and s["system"] == system and s["ops_per_sec"] > 0:
            points[s["concurrency"]] = s["ops_per_sec"]
    return sorted(points.items())


fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 5), sharey=False)
for ax, (title, lines) in zip(axes, PANELS):
    for case, system, label in lines:
        points = series(case, system)
        if not points:
            continue
        xs, ys = zip(*points)
        style = "-" if system in ("impcache", "#[cached]") else "--"
        ax.plot(xs, ys, style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent tasks / clients")
    ax.set_ylabel("operations per second")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(
    f"impcache benchmarks: {machine['nproc']} vCPU {machine['cpu']}, {machine['redis_server']}, "
    "client and server on the same cores (one run)",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(target)
print(f"wrote {target}")
