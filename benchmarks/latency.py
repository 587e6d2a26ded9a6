"""Compile latency (issue 11, goal 6): how long until a gradient kernel can launch.

Usage, from the repository root (no GPU needed: the cuda pipeline compiles to PTX without one):

    python benchmarks/latency.py [--out benchmarks/results/latency-<date>.json] [--chain 10,50,100,150]

Each figure comes from a fresh process (`python -c`), timed inside it from just before the
first `kernel.compile` / launch to just after, so interpreter start-up and imports are apart:

  cold_s        first gradient kernel of a process through the cuda pipeline (to PTX)
  cpu_cold_s    the same kernel's first launch on the cpu target (compile and run)
  warm_s        a second, different gradient kernel in the same process (cuda pipeline)
  disk_hit_s    the first kernel in a new process whose compiled form is in the disk cache
  import_s      `import gpuad` plus numba-cuda's first load (what every process pays once)
  chain_s       kernel.compile of an N-statement chain, per N (compile scaling, goal 6)
  chain_primal_numba_cuda_s  numba-cuda compiling the chain itself (no derivative) to PTX, per N
  chain_ratio   chain_s / chain_primal_numba_cuda_s (goal: <= 3 at N = 150)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

KERNELS = textwrap.dedent('''
    import math
    import gpuad
    from gpuad import Active, Reverse, autodiff

    def f(x, y):
        return math.sin(x) * y + math.exp(-x * x)

    def g(x, y):
        s = 0.0
        for k in range(4):
            s += math.cos(x * k) * y
        return s

    def grad_f(xs, ys, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, dy), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))
            dxs[i] = dx

    def grad_g(xs, ys, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, dy), = autodiff(Reverse, g, Active(xs[i]), Active(ys[i]))
            dxs[i] = dx
''')

MEASURE = textwrap.dedent('''
    import json, sys, time
    start = time.perf_counter()
    import numpy as np
    import gpuad
    from gpuad.compiler import compile_lock
    compile_lock.load_toolchain()
    imported = time.perf_counter() - start
    sys.path.insert(0, sys.argv[1])
    import latency_kernels as k
    args = (np.ones(64), np.ones(64), np.zeros(64))
    what = sys.argv[2]
    start = time.perf_counter()
    if what == "cpu":
        gpuad.kernel(k.grad_f, target="cpu").launch(64, *args)
    else:
        gpuad.kernel(k.grad_f, target="cuda").compile(*args)
    first = time.perf_counter() - start
    start = time.perf_counter()
    if what == "cuda":
        gpuad.kernel(k.grad_g, target="cuda").compile(*args)
    second = time.perf_counter() - start
    print(json.dumps({"import_s": imported, "first_s": first, "second_s": second}))
''')

CHAIN = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    import gpuad
    from gpuad.compiler import compile_lock
    compile_lock.load_toolchain()
    sys.path.insert(0, sys.argv[1])
    mod = __import__(sys.argv[2])
    start = time.perf_counter()
    record = gpuad.kernel(mod.kern, target="cuda").compile(np.ones(4), np.ones(4), np.zeros(4))
    print(json.dumps({"seconds": time.perf_counter() - start, "timings": record.timings}))
''')


PRIMAL = textwrap.dedent('''
    import json, sys, time
    from gpuad.compiler import compile_lock
    from gpuad.compiler.numba_adapter import compute_capability
    compile_lock.load_toolchain()
    from numba import cuda, float64
    sys.path.insert(0, sys.argv[1])
    f = cuda.jit(device=True)(__import__(sys.argv[2]).f)

    def primal(xs, ys, out):
        i = cuda.grid(1)
        if i < xs.shape[0]:
            out[i] = f(xs[i], ys[i])

    start = time.perf_counter()
    with compute_capability((9, 0)):  # compile_ptx asks the device for it otherwise
        cuda.compile_ptx(primal, (float64[:], float64[:], float64[:]), cc=(9, 0))
    print(json.dumps({"seconds": time.perf_counter() - start}))
''')


def chain_module(n: int) -> str:
    lines = ["import math", "import gpuad", "from gpuad import Active, Reverse, autodiff", "",
             "def f(x, y):", "    a = x * y"]
    for k in range(n):
        lines.append(f"    a = math.sin(a) * {1 + k % 3}.0 + x * a" if k % 2 else "    a = a * a * 0.5 + y")
    lines += ["    return a", "", "def kern(xs, ys, dxs):", "    i = gpuad.thread_index()",
              "    if i < xs.shape[0]:",
              "        (d, _), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))",
              "        dxs[i] = d", ""]
    return "\n".join(lines)


def run(code: str, *args: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=1200, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--chain", default="10,50,100,150", help="chain lengths N (comma-separated)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        Path(work, "latency_kernels.py").write_text(KERNELS)
        cache = Path(work, "cache")
        env = {**os.environ, "GPUAD_CACHE": "1", "GPUAD_CACHE_DIR": str(cache), "GPUAD_TARGET": "cpu"}
        cold = run(MEASURE, work, "cuda", env=env)  # empty cache: compiles, and stores
        hit = run(MEASURE, work, "cuda", env=env)  # a new process: from disk
        cpu = run(MEASURE, work, "cpu", env={**env, "GPUAD_CACHE": "0"})
        chain, primal = {}, {}
        for n in (int(v) for v in args.chain.split(",") if v):
            Path(work, f"chain{n}.py").write_text(chain_module(n))
            chain[str(n)] = run(CHAIN, work, f"chain{n}", env={**env, "GPUAD_CACHE": "0"})
            primal[str(n)] = run(PRIMAL, work, f"chain{n}", env=env)["seconds"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "latency": {"cold_s": cold["first_s"], "warm_s": cold["second_s"], "cpu_cold_s": cpu["first_s"],
                    "disk_hit_s": hit["first_s"], "import_s": cold["import_s"]},
        "chain_s": {n: c["seconds"] for n, c in chain.items()},
        "chain_timings": {n: c["timings"] for n, c in chain.items()},
        "chain_primal_numba_cuda_s": primal,
        "chain_ratio": {n: chain[n]["seconds"] / primal[n] for n in chain},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
