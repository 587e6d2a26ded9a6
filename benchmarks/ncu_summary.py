"""Median GPU time per kernel from `ncu --csv --metrics gpu__time_duration.sum` output.

Usage: ncu --csv --metrics gpu__time_duration.sum python3 bench_gradients.py ... > ncu.csv
       python3 ncu_summary.py ncu.csv [--out kernel_times.json]
Kernels are keyed by the Python function name in ncu's kernel name
(grad_energy, grad_energy_by_hand, ...).
"""
from __future__ import annotations

import csv
import json
import re
import statistics
import sys


def kernel_times(path: str) -> dict[str, float]:
    durations: dict[str, list[float]] = {}
    with open(path) as fh:
        lines = [line for line in fh if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.search(r"(grad_\w+)", row["Kernel Name"])
        key = name.group(1) if name else row["Kernel Name"][:40]
        scale = {"ns": 1e-9, "nsecond": 1e-9, "us": 1e-6, "usecond": 1e-6, "ms": 1e-3,
                 "msecond": 1e-3}[row["Metric Unit"]]
        durations.setdefault(key, []).append(float(row["Metric Value"].replace(",", "")) * scale)
    return {k: statistics.median(v) for k, v in durations.items()}


if __name__ == "__main__":
    times = kernel_times(sys.argv[1])
    for name, seconds in sorted(times.items()):
        print(f"{name:<28} {seconds * 1e3:8.3f} ms")
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as fh:
            json.dump(times, fh, indent=2)
