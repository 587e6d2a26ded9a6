"""Launch overhead (issue 11, goal 5): host time per launch of a cached kernel, gpuad against numba-cuda.

Usage, from the repository root:

    python benchmarks/launch_overhead.py [--launches 2000] [--out benchmarks/results/launch-<date>.json]
    python benchmarks/launch_overhead.py --no-gpu [--out ...]   # gpuad's own Python, the device stubbed

Two tiny kernels (one block of 64 threads, numba device arrays, so nothing is copied):
`elementwise`, a gradient that cannot fail, and `taped`, a gradient of a loop with a run-time trip
count, which can overflow its tape and so reports through a status slot. Each launch is timed on the
host alone (`perf_counter_ns` around the call, median over `--launches` after a warm-up); gpuad
`blocking` waits for the status of `taped` after every launch (the default), `deferred` reads it
at the next launch (`gpuad.kernel(check="deferred")`). numba-cuda launches hand-written kernels of the
same shape with the same arguments. Goal: gpuad ≤ 2× numba.

`--no-gpu` replaces what happens below gpuad — numba's argument packing and the driver's launch —
by nothing (a `PtxKernel` whose stream, launch and argument packing are stand-ins; see
tests/test_launch_deferred.py), so it measures gpuad's own Python per launch on any machine;
it also times launches on the cpu target (which run the kernel too).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gpuad  # noqa: E402
from gpuad import Active, Reverse, autodiff  # noqa: E402

N = 64


def f(x):
    return math.sin(x) * x


def loop(x, n):
    s = x
    for _ in range(n):
        s = math.sin(s) * x
    return s


def grad_elementwise(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d,), = autodiff(Reverse, f, Active(xs[i]))
        dxs[i] = d


def grad_taped(xs, ns, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d, _), = autodiff(Reverse, loop, Active(xs[i]), ns[i])
        dxs[i] = d


def numba_kernels():
    from numba import cuda

    @cuda.jit
    def elementwise(xs, dxs):
        i = cuda.grid(1)
        if i < xs.shape[0]:
            dxs[i] = math.cos(xs[i]) * xs[i] + math.sin(xs[i])

    @cuda.jit
    def taped(xs, ns, dxs):
        i = cuda.grid(1)
        if i < xs.shape[0]:
            s = xs[i]
            for _ in range(ns[i]):
                s = math.sin(s) * xs[i]
            dxs[i] = s

    return elementwise, taped


def host_us(launch, launches: int) -> float:
    """Median host time of one launch, in microseconds, after a warm-up."""
    for _ in range(20):
        launch()
    times = []
    clock = time.perf_counter_ns
    for _ in range(launches):
        start = clock()
        launch()
        times.append(clock() - start)
    return statistics.median(times) / 1000


def inputs(to_device):
    xs = np.linspace(0.1, 0.9, N)
    ns = np.full(N, 4, dtype=np.int64)
    return {"elementwise": (to_device(xs), to_device(np.zeros(N))),
            "taped": (to_device(xs), to_device(ns), to_device(np.zeros(N)))}


def gpuad_kernels(check: str, target: str = "cuda"):
    return {"elementwise": gpuad.kernel(grad_elementwise, target=target, check=check),
            "taped": gpuad.kernel(grad_taped, target=target, check=check, tape_capacity=16)}


def measure_gpu(launches: int) -> dict:
    from numba import cuda

    args = inputs(cuda.to_device)
    handwritten = dict(zip(("elementwise", "taped"), numba_kernels()))
    cases = []
    for name in ("elementwise", "taped"):
        row = {"name": name}
        for check in ("blocking", "deferred"):
            kernel = gpuad_kernels(check)[name]
            row[f"gpuad_{check}_us"] = host_us(lambda k=kernel, a=args[name]: k.launch(N, *a), launches)
            kernel.check()
        numba_kernel = handwritten[name]
        row["numba_us"] = host_us(lambda k=numba_kernel, a=args[name]: k[1, N](*a), launches)
        cuda.synchronize()
        row["ratio"] = row["gpuad_blocking_us"] / row["numba_us"]
        row["ratio_deferred"] = row["gpuad_deferred_us"] / row["numba_us"]
        cases.append(row)
    name = cuda.get_current_device().name
    return {"device": name.decode() if isinstance(name, bytes) else str(name), "cases": cases}


def stub_device() -> None:
    """Below gpuad: no argument packing, no driver (the `PtxKernel` of tests/test_launch_deferred.py)."""
    from gpuad.compiler import numba_adapter
    from gpuad.targets import cuda as cuda_target
    from gpuad.targets import status as st

    class Event:
        def record(self, stream):
            pass

        def query(self):
            return True

        def synchronize(self):
            pass

    class HostSlots(numba_adapter.StatusSlots):
        def _grow(self):
            chunk = np.zeros((self.CHUNK, self.size), dtype=np.int64)
            self._chunks.append(chunk)
            self._free.extend(numba_adapter._Slot(chunk[k], numba_adapter._status_args(k + 1, self.size),
                                                  Event()) for k in range(self.CHUNK))

    def load(ptx, symbol, argtypes, checks_status):
        kernel = numba_adapter.PtxKernel.__new__(numba_adapter.PtxKernel)
        kernel.argtypes, kernel.checks_status = argtypes[:-1], checks_status
        kernel._stream, kernel._configs, kernel._cu_kernel = None, {}, None
        kernel._config_type = lambda **kw: kw
        kernel._prepare = lambda packer, ty, value, stream, writebacks, args: args.append(value)
        kernel._launch = lambda *args: None
        if checks_status:
            kernel._slots = HostSlots(st.SIZE)
        else:
            kernel._zeros_args = numba_adapter._status_args(0, st.SIZE)
        return kernel

    gpuad.Kernel._device_arch = lambda self: "sm_90"
    cuda_target.load_ptx = load


class DeviceArray:
    """Typed through the CUDA array interface, as a third-party device array; never copied."""

    def __init__(self, host):
        self.shape, self.dtype, self.ndim, self.strides = host.shape, host.dtype, host.ndim, host.strides
        self.__cuda_array_interface__ = {"shape": host.shape, "typestr": host.dtype.str, "strides": None,
                                         "data": (host.ctypes.data, False), "version": 3}
        self._host = host


def measure_no_gpu(launches: int) -> dict:
    from gpuad.targets import dispatch

    stub_device()
    # Keyed by dtype, shape and strides as numba-cuda's and CuPy's arrays are (`dispatch.signature`):
    # its numba type, through the CUDA array interface, is a function of these.
    dispatch._DEVICE_TYPES["DeviceArray"] = DeviceArray
    args = inputs(DeviceArray)
    host_args = inputs(lambda a: a)
    cases = []
    for name in ("elementwise", "taped"):
        row = {"name": name}
        for check in ("blocking", "deferred"):
            kernel = gpuad_kernels(check)[name]
            row[f"gpuad_{check}_us"] = host_us(lambda k=kernel, a=args[name]: k.launch(N, *a), launches)
        cpu_kernel = gpuad_kernels("blocking", "cpu")[name]
        row["cpu_target_us"] = host_us(lambda k=cpu_kernel, a=host_args[name]: k.launch(N, *a), launches)
        cases.append(row)
    return {"device": "none (device stubbed: gpuad's own Python per launch)", "cases": cases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--no-gpu", action="store_true", help="stub the device: gpuad's own overhead")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure_no_gpu(args.launches) if args.no_gpu else measure_gpu(args.launches)
    result = {"mode": "no-gpu" if args.no_gpu else "gpu", "date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
              "launches": args.launches, "unit": "host microseconds per launch (median)", **result}
    for row in result["cases"]:
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
