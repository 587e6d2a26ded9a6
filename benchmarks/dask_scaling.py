"""Scale-out of gpuad gradients over Dask: one GPU against two (issue 15).

    python3 benchmarks/dask_scaling.py [--size N] [--chunks C] [--reps R] [--gpus 1,2] [--out DIR]
    python3 benchmarks/dask_scaling.py --check-cpu [--out DIR]   # LocalCluster, cpu target, tiny

On GPUs (needs cupy, dask[array] and distributed; dask-cuda if installed): for each GPU count, a
fresh `dask_cuda.LocalCUDACluster` with one worker per GPU (without dask-cuda, or with --cluster
pinned, the same made with distributed alone: one Nanny per GPU, pinned by CUDA_VISIBLE_DEVICES).
The report names the cluster used and the GPU (PCI bus) of every worker.

- The data is made on the workers as CuPy chunks (C chunks, the same for every GPU count,
  consecutive chunks on one GPU: chunks 0-1 on GPU 0 and 2-3 on GPU 1 for C=4), never on the client.
- Workers have no memory limit (memory_limit=0, device_memory_limit=0, spilling off): by
  distributed's default a worker of one thread on a 32-core host may hold 1/32 of the host's
  memory (8 GiB on the 2-GPU machine) before it spills to disk, by sizeof, which counts CuPy
  chunks too; the one-GPU run of the first measurement held 4 GiB of inputs plus each gradient's
  chunks and copies (the likely cause of its superlinear "speedup"; not confirmed on the GPU).
  Spilled bytes are counted and reported: they must be 0. Work stealing is off: the chunks stay
  where they were made, and so do the launches on them.
- The zero shadows the kernels write are made once, from the data chunks
  (`x.map_blocks(zeros_like)`, persisted), so they live where their chunk lives
  (`da.zeros_like(x)` makes root tasks, which the scheduler may place on another GPU than x's
  chunk); map_blocks writes copies, so every gradient starts from the same zeros.
- Per cluster and case: one warm-up gradient (each worker compiles once, the CuPy pool grows),
  checked on the workers against the closed form; then R gradients, each timed from building the
  graph to `distributed.wait` on the persisted result; the median is reported.
- Breakdown, to make the times checkable: the kernel's time per chunk, measured on the worker
  that holds the chunk with CUDA events around one launch (cpu target: the launch's wall time),
  summed per worker: the largest sum is what a gradient cannot beat ("kernel_bound_ms"); the
  task stream's compute time per task kind, transfer and disk time; the bytes sent between
  workers per gradient (0 on one worker; a few halo elements on two).
- Scaling efficiency = t(1 GPU) / (2 * t(2 GPUs)); above 1.1 the row is marked "suspect".

Elementwise: d/dx of sin(x) x^2 at every element. Stencil: the gradient of notebook 04's chain
energy (a double well per element, a spring to the right neighbour), depth=1, halos across
chunk and GPU borders.

Writes DIR/dask-scaling-<date>.json (DIR: benchmarks/results; --check-cpu: worker processes and
numpy chunks, dask-scaling-cpu-<date>.json) and prints a table. Exit status 1 if a gradient is
wrong, 3 if any bytes were spilled to disk.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
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
SUSPECT_EFFICIENCY = 1.1  # above: something other than the gradients dominates the fewer-worker run
# No spilling: a CuPy chunk spilled is copied to the host and written to disk (see the docstring).
# Nannies hand the client's config to their workers; memory_limit=0 on the workers as well.
NO_SPILL = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
            "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False,
            "distributed.scheduler.work-stealing": False}


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


# -- data made on the workers ------------------------------------------------------------------

def _grid_chunk(lo: int, hi: int, size: int, module: str, wave: bool):
    """Elements lo..hi of linspace(-2, 3, size) (wave: sin(2 pi linspace(0, 1, size)) + 0.1),
    made by the worker's array module: CuPy chunks are born on the worker's GPU."""
    xp = importlib.import_module(module)
    k = xp.arange(lo, hi, dtype=xp.float64)
    if wave:
        return xp.sin(2 * np.pi * (k / max(size - 1, 1))) + 0.1
    return -2.0 + k * (5.0 / max(size - 1, 1))


def _zeros_like(chunk):
    return chunk * 0  # a real array (not a broadcast view), on the chunk's device


def worker_data(client, addresses: list[str], size: int, chunks: int, module: str, wave: bool):
    """A Dask array of `chunks` chunks, consecutive chunks on one worker, computed there."""
    import dask.array as da

    step = -(-size // chunks)
    edges = [min(size, j * step) for j in range(chunks + 1)]
    meta = importlib.import_module(module).empty((0,))
    pieces = []
    for j in range(chunks):
        home = addresses[j * len(addresses) // chunks]
        future = client.submit(_grid_chunk, edges[j], edges[j + 1], size, module, wave, workers=[home],
                               allow_other_workers=False, pure=False)
        pieces.append(da.from_delayed(future, shape=(edges[j + 1] - edges[j],), dtype=np.float64, meta=meta))
    return da.concatenate(pieces)


# -- the two gradients ------------------------------------------------------------------------

def elementwise(kernel, xs, zeros):
    import gpuad.dask

    out = gpuad.dask.map_blocks(kernel, xs, zeros, outputs="dxs")
    return out["dxs"]


def stencil(kernel, u, zeros):
    import gpuad.dask

    out = gpuad.dask.map_blocks(kernel, u, zeros, gpuad.dask.owned_start,
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


# -- what the workers measure -----------------------------------------------------------------

def _chunk_kernel_ms(shipped, name: str, chunk, repeats: int) -> dict:
    """One chunk's launch on the worker holding it: CUDA-event time of the kernel (cpu target:
    its wall time) and the launch's wall time, medians of `repeats` after one untimed launch."""
    from distributed import get_worker

    kernel = shipped.kernel  # the worker's Kernel for this payload: compiled by the warm-up
    size = chunk.shape[0]
    args = (chunk, _zeros_like(chunk)) if name == "elementwise" else \
        (chunk, _zeros_like(chunk), np.int64(0), np.int64(size))
    on_gpu = hasattr(chunk, "__cuda_array_interface__")
    kernel.launch(size, *args)
    events, walls = [], []
    for _ in range(repeats):
        if on_gpu:
            import cupy

            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
        began = time.perf_counter()
        kernel.launch(size, *args)
        if on_gpu:
            stop.record()
            stop.synchronize()
            events.append(cupy.cuda.get_elapsed_time(start, stop))
        walls.append(1e3 * (time.perf_counter() - began))
    return {"worker": get_worker().address, "elements": int(size),
            "kernel_ms": statistics.median(events or walls), "launch_ms": statistics.median(walls)}


def chunk_kernel_times(client, kernel, name: str, data, repeats: int = 5) -> list[dict]:
    """Per chunk, in order: `_chunk_kernel_ms`, run where the chunk is."""
    from distributed import futures_of

    import gpuad.dask

    shipped = gpuad.dask.ShippedKernel(kernel)
    by_key = {future.key: future for future in futures_of(data)}
    futures = [client.submit(_chunk_kernel_ms, shipped, name, by_key[key], repeats, pure=False)
               for key in data.__dask_keys__()]
    return client.gather(futures)


def _worker_counters(dask_worker) -> dict:
    """Bytes this worker sent to others and wrote to / read from disk, since it started."""
    digests = dask_worker.digests_total

    def total(action: str) -> float:
        return sum(v for k, v in digests.items()
                   if isinstance(k, tuple) and action in k and k[-1] == "bytes")
    return {"sent": dask_worker.transfer_outgoing_bytes_total, "disk_write": total("disk-write"),
            "disk_read": total("disk-read")}


def _received_since(since: float, dask_worker) -> dict:
    """Bytes this worker received from others since `since` (time.time()), per task kind."""
    from dask.utils import key_split

    found: dict[str, int] = {}
    for entry in list(dask_worker.transfer_incoming_log):
        if entry["start"] >= since:
            for key, nbytes in entry["keys"].items():
                found[key_split(key)] = found.get(key_split(key), 0) + nbytes
    return found


def received_by_kind(client, since: float, reps: int) -> dict:
    """`_received_since` summed over the workers, per gradient."""
    total: dict[str, float] = {}
    for found in client.run(_received_since, since).values():
        for kind, nbytes in found.items():
            total[kind] = total.get(kind, 0) + nbytes / reps
    return total


def counters(client) -> dict:
    """`_worker_counters` summed over the workers."""
    found = client.run(_worker_counters).values()
    return {k: sum(c[k] for c in found) for k in ("sent", "disk_write", "disk_read")}


def task_breakdown(records: list[dict], reps: int) -> dict:
    """The task stream of `reps` gradients, per gradient: compute ms per task kind, transfer and
    disk ms (summed over workers; the workers run side by side)."""
    from dask.utils import key_split

    compute: dict[str, float] = {}
    other = {"transfer": 0.0, "disk-read": 0.0, "disk-write": 0.0}
    for record in records:
        for span in record.get("startstops", ()):
            ms = 1e3 * (span["stop"] - span["start"]) / reps
            if span["action"] == "compute":
                kind = key_split(record["key"])
                compute[kind] = compute.get(kind, 0.0) + ms
            else:
                other[span["action"]] = other.get(span["action"], 0.0) + ms
    return {"compute_ms": dict(sorted(compute.items(), key=lambda kv: -kv[1])),
            **{f"{action}_ms": ms for action, ms in other.items()}}


# -- one case on one cluster ------------------------------------------------------------------

def time_case(client, name: str, kernel, data, zeros, xp, reps: int) -> dict:
    from distributed import get_task_stream, wait

    _, gradient, expected = CASES[name]
    result = client.persist(gradient(kernel, data, zeros))  # warm-up: each worker compiles once
    wait(result)
    error = deviation(result, expected(data, xp))
    del result
    before, since = counters(client), time.time()
    times, builds = [], []
    with get_task_stream(client) as stream:
        for _ in range(reps):
            start = time.perf_counter()
            graph = gradient(kernel, data, zeros)
            built = time.perf_counter()
            result = client.persist(graph)
            wait(result)
            times.append(time.perf_counter() - start)
            builds.append(built - start)
            del result
    moved = {k: (v - before[k]) / reps for k, v in counters(client).items()}
    chunks = chunk_kernel_times(client, kernel, name, data)
    per_worker: dict[str, float] = {}
    for chunk in chunks:
        per_worker[chunk["worker"]] = per_worker.get(chunk["worker"], 0.0) + chunk["kernel_ms"]
    return {"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "all_ms": [1e3 * t for t in times], "graph_ms": 1e3 * statistics.median(builds),
            "deviation": error, "correct": error <= RTOL,
            "chunk_kernel_ms": [c["kernel_ms"] for c in chunks],
            "chunk_launch_ms": [c["launch_ms"] for c in chunks],
            "kernel_ms_per_worker": list(per_worker.values()),
            "kernel_bound_ms": max(per_worker.values()),
            "bytes_between_workers": moved["sent"],
            "bytes_received_by_kind": received_by_kind(client, since, reps),
            "bytes_spilled": moved["disk_write"],
            "bytes_unspilled": moved["disk_read"], "tasks": task_breakdown(stream.data, reps)}


def _worker_device() -> str:
    """The device a worker process computes on: its GPU's name and PCI bus, or the host."""
    try:
        import cupy

        device = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        return f"{name.decode() if isinstance(name, bytes) else name} {device.pci_bus_id}"
    except ModuleNotFoundError:
        import platform

        return f"cpu ({platform.processor() or platform.machine()})"


def run_on(cluster_factory, workers: int, size: int, chunks: int, reps: int, target: str) -> dict:
    """Both cases on a fresh cluster of `workers` workers: {case: timing, "workers": devices}."""
    import dask
    from distributed import Client, wait

    with dask.config.set(NO_SPILL), cluster_factory(workers) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        addresses = sorted(client.scheduler_info()["workers"])
        devices = client.run(_worker_device, workers=addresses)
        xp = _array_module(target)
        module = xp.__name__
        x = worker_data(client, addresses, size, chunks, module, wave=False)
        u = worker_data(client, addresses, size, chunks, module, wave=True)
        x, u = client.persist([x, u])
        zx, zu = client.persist([x.map_blocks(_zeros_like), u.map_blocks(_zeros_like)])  # where x, u are
        wait([x, u, zx, zu])
        placement = chunk_placement(client, x, addresses)
        kernels = {name: gpuad.kernel(fn, target=target) for name, (fn, _, _) in CASES.items()}
        data = {"elementwise": (x, zx), "stencil": (u, zu)}
        found = {name: time_case(client, name, kernels[name], *data[name], xp, reps) for name in CASES}
        found["workers"] = [devices[a] for a in addresses]
        found["chunk_worker"] = placement
        return found


def chunk_placement(client, array, addresses: list[str]) -> list[int]:
    """Per chunk, the index of the worker holding it."""
    from distributed import futures_of

    held = client.who_has(futures_of(array))
    return [addresses.index(held[key][0]) for key in array.__dask_keys__()]


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
                                threads_per_worker=1, memory_limit=0, device_memory_limit=0,
                                dashboard_address=":0", silence_logs=logging.ERROR)
    return factory


def pinned_clusters():
    """What LocalCUDACluster does, with distributed alone (no dask-cuda): one worker process per
    GPU, each seeing its own GPU first through CUDA_VISIBLE_DEVICES."""
    from distributed import Nanny, Scheduler, SpecCluster

    def factory(gpus: int):
        def visible(k: int) -> str:
            return ",".join(str((k + j) % gpus) for j in range(gpus))

        workers = {k: {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": visible(k)},
                                                 "memory_limit": 0, "silence_logs": logging.ERROR}}
                   for k in range(gpus)}
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
    return factory


def cpu_clusters():
    """distributed's LocalCluster: worker processes."""
    from distributed import LocalCluster

    def factory(workers: int):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                            dashboard_address=":0", silence_logs=logging.ERROR)
    return factory


# -- report ----------------------------------------------------------------------------------

BREAKDOWN = ("min_ms", "all_ms", "graph_ms", "kernel_bound_ms", "kernel_ms_per_worker", "chunk_kernel_ms",
             "chunk_launch_ms", "bytes_between_workers", "bytes_received_by_kind", "bytes_spilled",
             "bytes_unspilled", "tasks")


def summarize(runs: dict[int, dict]) -> list[dict]:
    counts = sorted(runs)
    rows = []
    for name in CASES:
        row = {"name": name, "ms": {str(k): runs[k][name]["ms"] for k in counts},
               **{field: {str(k): runs[k][name][field] for k in counts} for field in BREAKDOWN},
               "deviation": max(runs[k][name]["deviation"] for k in counts),
               "correct": all(runs[k][name]["correct"] for k in counts)}
        if len(counts) > 1:
            one, most = counts[0], counts[-1]
            speedup = runs[one][name]["ms"] / runs[most][name]["ms"]
            row["speedup"] = speedup
            row["efficiency"] = speedup * one / most
            kernel_speedup = runs[one][name]["kernel_bound_ms"] / runs[most][name]["kernel_bound_ms"]
            row["kernel_bound_speedup"] = kernel_speedup  # what the chunk placement allows
        row["suspect"] = suspicions(row)
        rows.append(row)
    return rows


def suspicions(row: dict) -> list[str]:
    """What makes a row's times not a scaling measurement (empty when none)."""
    found = []
    if row.get("efficiency", 0) > SUSPECT_EFFICIENCY:
        found.append(f"efficiency {row['efficiency']:.2f} > {SUSPECT_EFFICIENCY}: superlinear")
    for k, ms in row["ms"].items():
        if ms < row["kernel_bound_ms"][k]:
            found.append(f"{k}: {ms:.2f} ms per gradient, below its kernels' "
                         f"{row['kernel_bound_ms'][k]:.2f} ms")
        if row["bytes_spilled"][k] or row["bytes_unspilled"][k]:
            found.append(f"{k}: spilled {row['bytes_spilled'][k]:.3g} bytes per gradient")
    return found


def device_name(devices: list[str]) -> str:
    """The workers' devices, without PCI buses: 'NVIDIA H200' (or 'a, b' when they differ)."""
    names = dict.fromkeys(" ".join(d.split()[:-1]) if "cpu" not in d else d for d in devices)
    return ", ".join(names)


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
        for k in row["ms"]:
            tasks = row["tasks"][k]
            top = ", ".join(f"{kind} {ms:.1f}" for kind, ms in list(tasks["compute_ms"].items())[:4])
            print(f"    {k} {unit}: kernels {row['kernel_bound_ms'][k]:.2f} ms on the busiest worker "
                  f"(chunks {', '.join(f'{ms:.2f}' for ms in row['chunk_kernel_ms'][k])} ms); "
                  f"sent {row['bytes_between_workers'][k]:.3g} B, spilled {row['bytes_spilled'][k]:.3g} B; "
                  f"task ms: {top}; transfer {tasks['transfer_ms']:.1f}")
        for why in row["suspect"]:
            print(f"    SUSPECT: {why}")


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
    parser.add_argument("--check-cpu", "--cpu", dest="cpu", action="store_true",
                        help="check run: cpu target, numpy chunks, worker processes, tiny")
    parser.add_argument("--size", type=int, default=None, help="elements (default 2^30; --check-cpu: 4096)")
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
    report = {"device": device_name(runs[max(counts)]["workers"]), "date": date, "target": target,
              "unit": "workers" if args.cpu else "GPUs", "cluster": cluster, "size": size,
              "chunks": args.chunks, "reps": reps,
              "workers": {str(k): runs[k]["workers"] for k in counts},
              "chunk_worker": {str(k): runs[k]["chunk_worker"] for k in counts},
              "cases": summarize(runs), "versions": versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dask-scaling-{'cpu-' if args.cpu else ''}{date}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {path}")
    if not all(row["correct"] for row in report["cases"]):
        return 1
    return 3 if any(any(row["bytes_spilled"].values()) for row in report["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
