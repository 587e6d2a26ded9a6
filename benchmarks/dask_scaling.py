"""Scale-out of gpuad gradients over Dask: one GPU against two (issue 15).

    python3 benchmarks/dask_scaling.py [--size N] [--chunks C] [--reps R] [--gpus 1,2] [--out DIR]
    python3 benchmarks/dask_scaling.py --cpu [--out DIR]   # smoke: LocalCluster, cpu target, tiny

On GPUs (needs cupy, dask[array] and distributed; dask-cuda if installed): for each GPU count, a
`dask_cuda.LocalCUDACluster` with one worker per GPU (without dask-cuda, or with --cluster pinned,
the same made with distributed alone: one worker process per GPU, pinned by CUDA_VISIBLE_DEVICES)
holds the array as CuPy chunks (the same C chunks for every count, spread over the workers), and
`gpuad.dask.map_blocks` runs two gradients on them with the cuda target, no host copies:

- elementwise: d/dx of sin(x) x^2 at every element;
- stencil: the gradient of notebook 04's chain energy (a double well per element, a spring to the
  right neighbour), depth=1, so the chunks exchange halos.

Each gradient is first checked on the workers against its closed form (the maximum deviation
comes back as one number), then timed: the wall time from building the graph to the result
persisted on the workers' GPUs, median of R runs after a warm-up run (which compiles once per
worker). Scaling efficiency = t(1 GPU) / (2 * t(2 GPUs)).

Writes DIR/dask-scaling-<date>.json (DIR: benchmarks/results; --cpu: worker processes instead
of GPUs, and dask-scaling-cpu-<date>.json) and prints a table. Exit status 1 if a gradient is wrong.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gpuad
from gpuad import Active, Const, Duplicated, Reverse, autodiff

RESULTS = Path(__file__).parent / "results"
RTOL = 1e-12  # float64 throughout; the closed forms differ from AD by rounding only


# -- the gradients (target picked at run time) ------------------------------------------------

def bump(x):
    return math.sin(x) * x * x


def grad_bump(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        ((d,),) = autodiff(Reverse, bump, Active(xs[i]))
        dxs[i] = d


def potential(v):
    return 0.25 * v**4 - v * v


def local_energy(u, i):
    e = potential(u[i])
    if i + 1 < u.shape[0]:
        d = u[i + 1] - u[i]
        e += d * d
    return e


def grad_chain(u, du, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        autodiff(Reverse, local_energy, Duplicated(u, du), Const(i))


def bump_gradient(x, xp):
    return xp.cos(x) * x * x + 2 * x * xp.sin(x)


# -- one case on one cluster ------------------------------------------------------------------

def elementwise(kernel, xs):
    import dask.array as da

    import gpuad.dask

    out = gpuad.dask.map_blocks(kernel, xs, da.zeros_like(xs), outputs="dxs")
    return out["dxs"]


def stencil(kernel, u):
    import dask.array as da

    import gpuad.dask

    out = gpuad.dask.map_blocks(kernel, u, da.zeros_like(u), gpuad.dask.owned_start,
                                gpuad.dask.owned_stop, depth=1, outputs="du")
    return out["du"]


def expected_elementwise(xs, xp):
    return xs.map_blocks(bump_gradient, xp, dtype=xs.dtype, meta=xs._meta)


def expected_stencil(u, xp):
    import dask.array as da

    springs = 2 * (u[1:] - u[:-1])  # dE/du_i = u^3 - 2u - 2(u_{i+1} - u_i) + 2(u_i - u_{i-1})
    zero = u[:1] * 0
    return u**3 - 2 * u - da.concatenate([springs, zero]) + da.concatenate([zero, springs])


CASES = {"elementwise": (grad_bump, elementwise, expected_elementwise),
         "stencil": (grad_chain, stencil, expected_stencil)}


def deviation(result, expected) -> float:
    """max |result - expected| / max |expected|, computed where the chunks are."""
    import dask

    err, scale = dask.compute(abs(result - expected).max(), abs(expected).max())
    return float(err) / max(float(scale), 1e-300)


def time_case(client, name: str, kernel, data, xp, reps: int) -> dict:
    from distributed import wait

    _, gradient, expected = CASES[name]
    result = client.persist(gradient(kernel, data))  # warm-up: each worker compiles once
    wait(result)
    error = deviation(result, expected(data, xp))
    del result
    times, builds = [], []
    for _ in range(reps):
        start = time.perf_counter()
        graph = gradient(kernel, data)
        built = time.perf_counter()
        result = client.persist(graph)
        wait(result)
        times.append(time.perf_counter() - start)
        builds.append(built - start)
        del result
    return {"ms": 1e3 * statistics.median(times), "graph_ms": 1e3 * statistics.median(builds),
            "deviation": error, "correct": error <= RTOL}


def run_on(cluster_factory, workers: int, size: int, chunks: int, reps: int, target: str) -> dict:
    """Both cases on a fresh cluster of `workers` workers; {case: timing}."""
    import dask.array as da
    from distributed import Client, wait

    with cluster_factory(workers) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        xp = _array_module(target)
        step = -(-size // chunks)
        x = da.linspace(-2.0, 3.0, size, chunks=step)
        u = da.sin(2 * np.pi * da.linspace(0.0, 1.0, size, chunks=step)) + 0.1
        if xp is not np:  # CuPy chunks, made once and kept on the workers' GPUs
            x, u = (a.map_blocks(xp.asarray, meta=xp.empty((0,))) for a in (x, u))
        x, u = client.persist([x, u])
        wait([x, u])
        kernels = {name: gpuad.kernel(fn, target=target) for name, (fn, _, _) in CASES.items()}
        return {name: time_case(client, name, kernels[name], {"elementwise": x, "stencil": u}[name], xp, reps)
                for name in CASES}


def _array_module(target: str):
    if target == "cuda":
        import cupy

        return cupy
    return np


def cuda_clusters():
    """dask-cuda's LocalCUDACluster: one worker per GPU."""
    from dask_cuda import LocalCUDACluster

    def factory(gpus: int):
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))), n_workers=gpus,
                                threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR)
    return factory


def pinned_clusters():
    """What LocalCUDACluster does, with distributed alone (no dask-cuda): one worker process per
    GPU, each seeing its own GPU first through CUDA_VISIBLE_DEVICES."""
    from distributed import Nanny, Scheduler, SpecCluster

    def factory(gpus: int):
        def visible(k: int) -> str:
            return ",".join(str((k + j) % gpus) for j in range(gpus))

        workers = {k: {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": visible(k)},
                                                 "silence_logs": logging.ERROR}} for k in range(gpus)}
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
    return factory


def cpu_clusters():
    """distributed's LocalCluster: worker processes."""
    from distributed import LocalCluster

    def factory(workers: int):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0", silence_logs=logging.ERROR)
    return factory


# -- report ----------------------------------------------------------------------------------

def summarize(runs: dict[int, dict]) -> list[dict]:
    counts = sorted(runs)
    rows = []
    for name in CASES:
        row = {"name": name, "ms": {str(k): runs[k][name]["ms"] for k in counts},
               "graph_ms": {str(k): runs[k][name]["graph_ms"] for k in counts},
               "deviation": max(runs[k][name]["deviation"] for k in counts),
               "correct": all(runs[k][name]["correct"] for k in counts)}
        if len(counts) > 1:
            one, most = counts[0], counts[-1]
            speedup = runs[one][name]["ms"] / runs[most][name]["ms"]
            row["speedup"] = speedup
            row["efficiency"] = speedup * one / most
        rows.append(row)
    return rows


def device_name(target: str) -> str:
    if target == "cuda":
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("gpuad", "dask", "distributed", "dask-cuda", "cupy-cuda12x", "cupy-cuda13x", "numba",
                    "numba-cuda"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def print_table(report: dict) -> None:
    unit = report["unit"]
    print(f"{report['device']}: {report['size']:,} float64 elements in {report['chunks']} chunks, "
          f"median of {report['reps']}")
    for row in report["cases"]:
        times = "  ".join(f"{k} {unit}: {ms:9.2f} ms" for k, ms in row["ms"].items())
        scaling = ""
        if "speedup" in row:
            scaling = f"  speedup {row['speedup']:.2f}  efficiency {row['efficiency']:.0%}"
        print(f"  {row['name']:12} {times}{scaling}  deviation {row['deviation']:.1e}"
              f"{'' if row['correct'] else '  WRONG'}")


def pick_cluster(choice: str, cpu: bool):
    """(the cluster's name, a factory: worker count -> cluster)."""
    if choice == "auto":
        choice = "local" if cpu else "dask-cuda"
        if not cpu:
            try:
                import dask_cuda  # noqa: F401
            except ModuleNotFoundError:
                choice = "pinned"
    factories = {"dask-cuda": ("dask_cuda.LocalCUDACluster", cuda_clusters),
                 "pinned": ("distributed.SpecCluster, one Nanny per GPU (CUDA_VISIBLE_DEVICES)",
                            pinned_clusters),
                 "local": ("distributed.LocalCluster", cpu_clusters)}
    name, make = factories[choice]
    return name, make()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="smoke run: cpu target, worker processes, tiny")
    parser.add_argument("--size", type=int, default=None, help="elements (default 2^30; --cpu: 4096)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks, the same for every worker count")
    parser.add_argument("--reps", type=int, default=None, help="timed runs (default 10; --cpu: 2)")
    parser.add_argument("--gpus", default="1,2",
                        help="worker counts to compare (GPUs, or processes with --cpu)")
    parser.add_argument("--cluster", choices=["auto", "dask-cuda", "pinned", "local"], default="auto",
                        help="auto: dask-cuda's LocalCUDACluster if installed, else 'pinned' (distributed "
                             "alone, one worker per GPU); --cpu: LocalCluster")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    target = "cpu" if args.cpu else "cuda"
    size = args.size or (4096 if args.cpu else 1 << 30)
    reps = args.reps or (2 if args.cpu else 10)
    try:
        cluster, factory = pick_cluster(args.cluster, args.cpu)
    except ModuleNotFoundError as exc:
        print(f"dask_scaling needs {exc.name}: pip install 'dask[array]' distributed"
              f"{'' if args.cpu else ' (dask-cuda) cupy-cuda12x'}", file=sys.stderr)
        return 2
    counts = [int(k) for k in args.gpus.split(",")]
    runs = {k: run_on(factory, k, size, args.chunks, reps, target) for k in counts}
    date = datetime.date.today().isoformat()
    report = {"device": device_name(target), "date": date, "target": target,
              "unit": "workers" if args.cpu else "GPUs", "cluster": cluster, "size": size,
              "chunks": args.chunks, "reps": reps,
              "cases": summarize(runs), "versions": versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dask-scaling-{'cpu-' if args.cpu else ''}{date}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {path}")
    return 0 if all(row["correct"] for row in report["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
