"""Plots the near cache's benchmark (issue 14) from the output of the `near` binary.

    /work/bench-venv/bin/python benches/plot_near.py [benches/results/near-run-m.md] [benches/results/near.svg]

The input is the binary's Markdown output of its three cases, one after the other (default
case, `--case latency`, `--case http`), as saved in `benches/results/near-run-m.md`: the runs
are told apart by order, each starting under a `# ` heading. Four panels: hot-key `get` on loopback and through a 0.5 ms
round trip (rates, log scale), the Zipf mixes (with ÷ without the near cache), and the HTTP
routes (÷ the static handler). Needs matplotlib (`pip install matplotlib`).
"""

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "near-run-m.md"
target = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "results" / "near.svg"

UNITS = {"": 1.0, "k": 1e3, "M": 1e6}


def rate(cell):
    """`38.8 k/s (20.4k–39.7k)` -> 38800.0"""
    match = re.match(r"\s*([\d.]+) ([kM]?)/s", cell)
    if not match:
        raise ValueError(f"not a rate: {cell!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def sections(text):
    """The binary's runs, split at `# ` headings: [(heading, [table, ...])], each table a list
    of rows, each row a list of cells (header and separator rows left out)."""
    runs = []
    for block in re.split(r"^# ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        tables, rows = [], []
        for line in body.splitlines() + [""]:
            if line.startswith("|"):
                cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
                if not set(cells[0]) <= set("-: "):
                    rows.append(cells)
            elif rows:
                tables.append(rows[1:])  # without the header row
                rows = []
        runs.append((heading, tables))
    return runs


def short(reader):
    names = [
        ("plain", "redis crate, plain"),
        ("cache-aio", "redis crate cache-aio"),
        ("no near", "impcache, no near cache"),
        ("near cache", "impcache + near cache"),
        ("moka", "moka + serde_json"),
        ("memory", "impcache memory repository"),
    ]
    for needle, name in names:
        if needle in reader:
            return name
    return reader


def hot_panel(axis, table, title):
    readers = [short(row[0]) for row in table]
    one = [rate(row[1]) for row in table]
    many = [rate(row[3]) for row in table]
    positions = range(len(readers))
    width = 0.4
    axis.bar([p - width / 2 for p in positions], one, width, label="1 task")
    axis.bar([p + width / 2 for p in positions], many, width, label="64 tasks")
    axis.set_yscale("log")
    axis.set_xticks(list(positions))
    axis.set_xticklabels(readers, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("reads per second")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)


def zipf_panel(axis, runs):
    width = 0.4
    for offset, (label, table) in zip((-width / 2, width / 2), runs):
        mixes = [row[0] for row in table]
        ratios = [rate(row[2]) / rate(row[1]) for row in table]
        axis.bar([i + offset for i in range(len(mixes))], ratios, width, label=label)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.axhline(0.9, color="red", linewidth=0.8, linestyle="--", label="issue 14: ≥ 0.9 at 50:50")
    axis.set_xticks(range(len(mixes)))
    axis.set_xticklabels(mixes)
    axis.set_xlabel("reads : writes, Zipf (s = 1) over 10,000 keys, 64 tasks")
    axis.set_ylabel("with ÷ without the near cache")
    axis.set_title("Mixed reads and writes", fontsize=10)
    axis.legend(fontsize=8)


def http_panel(axis, table):
    static = table[0]
    routes = table[1:]
    names = [
        row[0].replace("`CacheLayer` hit, ", "layer hit, ").replace(" handler (one `MultiplexedConnection`)", "")
        for row in routes
    ]
    width = 0.4
    for offset, column, label in ((-width / 2, 1, "1 connection"), (width / 2, 3, "64 connections")):
        ratios = [rate(row[column]) / rate(static[column]) for row in routes]
        axis.bar([i + offset for i in range(len(routes))], ratios, width, label=label)
    axis.axhline(0.9, color="red", linewidth=0.8, linestyle="--", label="issue 14: ≥ 0.9")
    axis.set_xticks(range(len(routes)))
    axis.set_xticklabels([name.replace("`", "") for name in names], rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("÷ static handler")
    axis.set_ylim(0, 1.1)
    axis.set_title("HTTP (axum over loopback TCP)", fontsize=10)
    axis.legend(fontsize=8)


# The runs that have tables, in the order the file gives them: loopback, latency, HTTP.
runs = [tables for heading, tables in sections(source.read_text()) if tables]
if len(runs) != 3:
    sys.exit(f"{source}: expected the tables of three runs (default, latency, http), found {len(runs)}")
loopback, latency, http = runs

figure, axes = plt.subplots(2, 2, figsize=(12, 9))
hot_panel(axes[0][0], loopback[0], "Hot-key get, 100 keys, loopback")
hot_panel(axes[0][1], latency[0], "Hot-key get through a 0.5 ms round trip")
zipf_panel(axes[1][0], [("loopback", loopback[1]), ("0.5 ms round trip", latency[1])])
http_panel(axes[1][1], http[0])
figure.suptitle(f"impcache near cache (issue 14), {source.name}")
figure.tight_layout()
figure.savefig(target)
print(f"wrote {target}")
