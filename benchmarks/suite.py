"""The benchmark suite of issue 11: every case of the issue's table, gpuad next to hand-written numba-cuda.

On a GPU machine, from the repository root:

    python3 benchmarks/suite.py [--cases a,b] [--size-scale S] [--reps R] [--out DIR]

Each case runs in its own process: both kernels launch once on the same inputs, their gradients are
compared (`np.allclose` with the case's float32 tolerance) before anything is timed, then each is timed
with CUDA events (median over R repetitions of a batch of launches, after warm-up). A case whose
gradients differ is still timed, and reported `correct: false`. Writes the Markdown table (stdout and
DIR/table.md), DIR/latest.json, a dated copy, and DIR/details.json (sizes, tolerances, differences).

Without a GPU, `--check-cpu` runs every case at a tiny size: the gpuad kernels on the cpu target, the
hand-written ones in numba's CUDA simulator, each compared with a float64 numpy reference and with each
other (DIR/check.md, DIR/check.json; exit status 1 if any differs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CASE_TIMEOUT_S = 600
COMPARISONS = ("gpuad_vs_reference", "hand_vs_reference", "gpuad_vs_hand")  # --check-cpu's columns


# -- comparing ------------------------------------------------------------------------------------

def deviation(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> float:
    """max |got − want| / (atol·max|want| + rtol·|want|): ≤ 1 is what np.allclose accepts."""
    want = np.asarray(want, np.float64)
    bound = atol * float(np.max(np.abs(want), initial=0.0)) + rtol * np.abs(want)
    gap = np.abs(np.asarray(got, np.float64) - want)
    if not np.all(np.isfinite(gap)):
        return math.inf
    return float(np.max(gap / np.maximum(bound, np.finfo(np.float64).tiny), initial=0.0))


def agree(case, got: dict, want: dict) -> float:
    """The largest deviation over the case's outputs (≤ 1: equal within the case's tolerance)."""
    worst = 0.0
    for name, value in want.items():
        scale = float(np.max(np.abs(value), initial=0.0))
        ok = np.allclose(got[name], value, rtol=case.rtol, atol=case.atol * scale)
        worst = max(worst, deviation(got[name], value, case.rtol, case.atol))
        if not ok:  # np.allclose is the judge; deviation only says by how much
            worst = max(worst, 1.0 + 1e-12)
    return worst


# -- one case, in its own process -----------------------------------------------------------------

def prepare(case, scale: float, tiny: bool):
    sizes = case.sizes(scale, tiny)
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    return sizes, case.inputs(sizes, rng)


def on_device(arrays: dict) -> dict:
    from numba import cuda
    return {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def to_host(arrays: dict) -> dict:
    return {k: v.copy_to_host() for k, v in arrays.items()}


def median_ms(launch, reps: int) -> tuple[float, int]:
    """Median milliseconds per launch over `reps` batches, timed by CUDA events, and the batch size:
    launches are batched up to ~2 ms per batch, so the host's launch cost overlaps the GPU's work."""
    from numba import cuda
    launch()
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    start.record()
    launch()
    end.record()
    end.synchronize()
    once = start.elapsed_time(end)  # the simulator says -1
    batch = max(1, min(50, math.ceil(2.0 / once))) if once > 0 else 1
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(batch):
            launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / batch)
    return statistics.median(times), batch


def device_name() -> str:
    from numba import cuda
    name = getattr(cuda.get_current_device(), "name", "numba's CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


def time_case(case, scale: float, reps: int) -> dict:
    """GPU: launch both, compare, then time both (a gpuad refusal is a result, not a crash)."""
    from numba import cuda
    sizes, inputs = prepare(case, scale, tiny=False)
    d_in = on_device(inputs)
    out = {"name": case.name, "device": device_name(), "sizes": sizes, "rtol": case.rtol, "atol": case.atol,
           "tolerance": case.why}
    hand_out = on_device(case.outputs(sizes))
    hand = case.hand(sizes)
    start = time.perf_counter()
    hand({**d_in, **hand_out})
    cuda.synchronize()
    out["handwritten_first_launch_s"] = time.perf_counter() - start
    want = to_host(hand_out)
    ours_out = on_device(case.outputs(sizes))
    try:
        ours = case.gpuad(sizes)
        start = time.perf_counter()
        ours({**d_in, **ours_out})
        cuda.synchronize()
        out["gpuad_first_launch_s"] = time.perf_counter() - start
    except Exception as exc:  # a refusal or a failure: report it, time the hand-written kernel alone
        out.update(gpuad_ms=None, correct=False, reason=f"gpuad: {type(exc).__name__}: {exc}"[:2000])
        out["handwritten_ms"], out["handwritten_batch"] = median_ms(lambda: hand({**d_in, **hand_out}), reps)
        return out
    out["deviation"] = agree(case, to_host(ours_out), want)
    out["correct"] = out["deviation"] <= 1.0
    out["gpuad_ms"], out["gpuad_batch"] = median_ms(lambda: ours({**d_in, **ours_out}), reps)
    out["handwritten_ms"], out["handwritten_batch"] = median_ms(lambda: hand({**d_in, **hand_out}), reps)
    return out


def launch_overhead(count: int = 2000) -> dict:
    """Host µs per launch of a cached small kernel (one block), gpuad against numba-cuda."""
    from numba import cuda

    import gpuad
    from benchmarks.cases import THREADS, elementwise
    a = on_device({"xs": np.ones(THREADS, np.float32), "dxs": np.zeros(THREADS, np.float32)})
    result = {}
    kernels = {"gpuad": gpuad.kernel(elementwise.grad_energy), "numba": elementwise.grad_energy_by_hand}
    for who, kernel in kernels.items():
        for _ in range(50):
            kernel[1, THREADS](a["xs"], a["dxs"])
        cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            kernel[1, THREADS](a["xs"], a["dxs"])
        result[who] = (time.perf_counter() - start) / count * 1e6
        cuda.synchronize()
    return result


def check_gpuad(case) -> dict:
    """--check-cpu, gpuad's half: the cpu target (or, for shared-memory kernels, a CUDA-pipeline compile)."""
    sizes, inputs = prepare(case, 1.0, tiny=True)
    outputs = case.outputs(sizes)
    launch = case.gpuad(sizes)
    arrays = {**inputs, **outputs}
    if case.cpu_target:
        launch(arrays)
        got = {name: arrays[name] for name in outputs}
    else:  # the cpu target refuses shared memory: only check that the CUDA pipeline compiles it to PTX
        launch.kernel.compile(*launch.arguments(arrays), target="cuda")
        got = {}
    return {"gpuad": got, "reference": case.reference(sizes, inputs)}


def simulate_warp_shuffles() -> None:
    """numba's CUDA simulator has no warp shuffles: give it `shfl_down_sync` as an exchange through the
    block (store, barrier, read the lane `delta` above within the warp, barrier). Sound for full-warp
    masks called by every thread of the block at once, as the hand-written block reductions do."""
    import threading

    from numba.cuda.simulator.kernelapi import FakeCUDAModule

    def shfl_down_sync(self, mask, value, delta):
        assert mask == 0xFFFFFFFF, "the simulated shuffle is for full warps only"
        me = threading.current_thread()
        exchange = me._manager.__dict__.setdefault("warp_exchange", {})
        lane = me.threadIdx.x
        exchange[lane] = value
        me.syncthreads()
        source = lane + delta
        got = exchange[source] if lane % 32 + delta < 32 and source in exchange else value
        me.syncthreads()
        return got

    FakeCUDAModule.shfl_down_sync = shfl_down_sync


def check_hand(case) -> dict:
    """--check-cpu, the hand-written half: numba's CUDA simulator (with simulate_warp_shuffles)."""
    sizes, inputs = prepare(case, 1.0, tiny=True)
    outputs = on_device(case.outputs(sizes))
    case.hand(sizes)({**on_device(inputs), **outputs})
    return {"hand": to_host(outputs)}


def worker(names: str, mode: str, scale: float, reps: int, result: Path) -> None:
    from benchmarks.cases import all_cases
    if mode == "launch":
        result.write_text(json.dumps(launch_overhead()))
        return
    if mode == "gpu":
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":  # a dry run of the GPU path (tests)
            simulate_warp_shuffles()
        result.write_text(json.dumps(time_case(all_cases()[names], scale, reps)))
        return
    if mode == "hand-sim":
        simulate_warp_shuffles()
    for name in names.split(","):  # --check-cpu: one process per half, every case in it (start-up is slow)
        try:
            arrays = check_gpuad(all_cases()[name]) if mode == "gpuad-cpu" else check_hand(all_cases()[name])
        except Exception:  # noqa: BLE001 - recorded for this case; the others still run
            import traceback
            (result / f"{name}.{mode}.error").write_text(traceback.format_exc()[-3000:])
            continue
        np.savez(result / f"{name}.{mode}.npz",
                 **{f"{part}.{k}": v for part, got in arrays.items() for k, v in got.items()})


# -- the suite ------------------------------------------------------------------------------------

def worker_command(name: str, mode: str, opts, result: Path, env: dict | None) -> tuple[list, dict]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--mode", mode,
               "--size-scale", str(opts.size_scale), "--reps", str(opts.reps), "--result", str(result)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return command, {**os.environ, "PYTHONPATH": path, **(env or {})}


def spawn(name: str, mode: str, opts, result: Path, env: dict | None = None) -> str | None:
    """Runs one worker process; None when it succeeded, else the tail of what it printed."""
    command, full_env = worker_command(name, mode, opts, result, env)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=ROOT,
                              timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"timed out after {CASE_TIMEOUT_S} s"
    if done.returncode != 0:
        return (done.stdout + done.stderr)[-2000:]
    return None


def spawn_together(jobs: list) -> list:
    """Runs workers side by side (the two halves of --check-cpu); the failures, as `spawn` says them."""
    running = []
    for name, mode, opts, result, env in jobs:
        command, full_env = worker_command(name, mode, opts, result, env)
        running.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=full_env, cwd=ROOT))
    failures = []
    for process in running:
        try:
            printed, _ = process.communicate(timeout=CASE_TIMEOUT_S)
            failures.append(None if process.returncode == 0 else printed[-2000:])
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            failures.append(f"timed out after {CASE_TIMEOUT_S} s")
    return failures


def selected(opts) -> list:
    from benchmarks.cases import all_cases
    cases = all_cases()
    names = [n for n in opts.cases.split(",") if n] if opts.cases else list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(cases)}")
    return [cases[n] for n in names]


def fmt(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def run_gpu_case(case, opts, work: Path) -> dict:
    result = work / f"{case.name}.json"
    failure = spawn(case.name, "gpu", opts, result)
    if failure is not None:
        return {"name": case.name, "gpuad_ms": None, "handwritten_ms": None, "correct": False,
                "reason": f"the case's process failed: {failure}"}
    return json.loads(result.read_text())


def summary(detail: dict) -> dict:
    """The issue's schema for one case (a reason only where a figure is missing or it is wrong)."""
    g, h = detail.get("gpuad_ms"), detail.get("handwritten_ms")
    entry = {"name": detail["name"], "gpuad_ms": g, "handwritten_ms": h,
             "ratio": g / h if g is not None and h else None, "correct": bool(detail.get("correct"))}
    if "reason" in detail:
        entry["reason"] = detail["reason"]
    elif not entry["correct"]:
        entry["reason"] = f"gradients differ: deviation {detail.get('deviation')} (beyond the tolerance: > 1)"
    return entry


def latency_env() -> dict:
    """The suite's environment, on the real CUDA stack even when the suite itself is simulated."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def measure_latency() -> dict:
    """benchmarks/latency.py in a process of its own (it spawns fresh ones per figure)."""
    try:
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--chain", ""],
                              capture_output=True, text=True, cwd=ROOT, timeout=CASE_TIMEOUT_S,
                              env=latency_env())
        figures = json.loads(done.stdout)["latency"]
        return {key: figures[key] for key in ("cold_s", "warm_s", "cpu_cold_s")}
    except Exception as exc:  # noqa: BLE001 - any failure is reported, never hidden
        reason = getattr(exc, "stderr", None) or str(exc)
        return {"cold_s": None, "warm_s": None, "cpu_cold_s": None,
                "reason": f"benchmarks/latency.py failed: {str(reason)[-1000:]}"}


def why(figures: dict) -> str:
    return f" — {figures['reason']}" if "reason" in figures else ""


def gpu_table(entries: list, latency: dict, launch: dict) -> str:
    lines = ["| case | hand-written ms | gpuad ms | ratio | correct |", "|---|---|---|---|---|"]
    for e in entries:
        verdict = "yes" if e["correct"] else "NO: " + e.get("reason", "")[:200].replace("|", "/")
        lines.append(f"| {e['name']} | {fmt(e['handwritten_ms'])} | {fmt(e['gpuad_ms'])} | "
                     f"{fmt(e['ratio'], 2)} | {verdict} |")
    lines += ["", f"latency (s): cold {fmt(latency['cold_s'])}, warm {fmt(latency['warm_s'])}, "
              f"cpu cold {fmt(latency['cpu_cold_s'])}{why(latency)}",
              f"launch overhead (host µs per launch): gpuad {fmt(launch.get('gpuad'), 1)}, "
              f"numba {fmt(launch.get('numba'), 1)}{why(launch)}"]
    return "\n".join(lines) + "\n"


def run_suite(opts) -> int:
    cases = selected(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        details = []
        for case in cases:
            details.append(run_gpu_case(case, opts, work))
            print(f"{case.name}: {json.dumps(summary(details[-1]))}", file=sys.stderr, flush=True)
        failure = spawn("", "launch", opts, work / "launch.json")
        launch = ({"gpuad": None, "numba": None, "reason": failure} if failure is not None
                  else json.loads((work / "launch.json").read_text()))
    latency = (measure_latency() if not opts.skip_latency else
               {"cold_s": None, "warm_s": None, "cpu_cold_s": None, "reason": "skipped (--skip-latency)"})
    report = write_report(out, details, latency, launch)
    return 0 if all(entry["correct"] for entry in report["cases"]) else 1


def write_report(out: Path, details: list, latency: dict, launch: dict) -> dict:
    """table.md, latest.json and its dated copy (the issue's schema, plus launch_us), details.json."""
    device = next((d["device"] for d in details if "device" in d), "unknown (no case reached the GPU)")
    today = datetime.date.today().isoformat()
    entries = [summary(d) for d in details]
    report = {"device": device, "date": today, "cases": entries, "latency": latency, "launch_us": launch}
    table = gpu_table(entries, latency, launch)
    print(table)
    (out / "table.md").write_text(f"{device}, {today}\n\n{table}")
    text = json.dumps(report, indent=2) + "\n"
    (out / "latest.json").write_text(text)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    (out / f"suite-{slug}-{today}.json").write_text(text)
    (out / "details.json").write_text(json.dumps(details, indent=2) + "\n")
    return report


def check_case(case, work: Path) -> dict:
    """Compares what the two --check-cpu processes left in `work` for one case."""
    row = {"name": case.name, "rtol": case.rtol, "atol": case.atol, "tolerance": case.why}
    errors = [p.read_text() for mode in ("gpuad-cpu", "hand-sim")
              if (p := work / f"{case.name}.{mode}.error").exists()]
    if errors:
        row.update(ok=False, reason="\n".join(errors))
        return row
    parts = {}
    for mode in ("gpuad-cpu", "hand-sim"):
        with np.load(work / f"{case.name}.{mode}.npz") as data:
            for key in data.files:
                part, name = key.split(".", 1)
                parts.setdefault(part, {})[name] = data[key]
    ref = parts["reference"]
    row["hand_vs_reference"] = agree(case, parts["hand"], ref)
    if case.cpu_target:
        row["gpuad_vs_reference"] = agree(case, parts["gpuad"], ref)
        row["gpuad_vs_hand"] = agree(case, parts["gpuad"], parts["hand"])
    else:
        row["gpuad_vs_reference"] = row["gpuad_vs_hand"] = None
        row["note"] = "gpuad kernel uses shared memory: compiled to PTX only (the cpu target refuses it)"
    row["ok"] = all(row[k] is None or row[k] <= 1.0 for k in COMPARISONS)
    return row


def run_check(opts) -> int:
    cases = selected(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ",".join(case.name for case in cases)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cpu_target = {"GPUAD_TARGET": "cpu", "GPUAD_CACHE": "0"}
        failures = spawn_together([(names, "gpuad-cpu", opts, work, cpu_target),
                                   (names, "hand-sim", opts, work, {"NUMBA_ENABLE_CUDASIM": "1"})])
        if any(failures):
            raise SystemExit(f"a --check-cpu process failed: {failures}")
        rows = [check_case(case, work) for case in cases]
    lines = ["| case | gpuad (cpu target) vs float64 | hand-written (simulator) vs float64 | gpuad vs hand "
             "| ok |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = "yes" if r["ok"] else "NO " + r.get("reason", "")[-300:]
        figures = " | ".join(fmt(r.get(k)) for k in COMPARISONS)
        lines.append(f"| {r['name']} | {figures} | {verdict} |")
    table = "\n".join(lines) + "\n\nDeviations: max |a − b| / (atol·max|b| + rtol·|b|); ≤ 1 passes.\n"
    print(table)
    (out / "check.md").write_text(table)
    (out / "check.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--size-scale", type=float, default=1.0, help="multiplies every case's size")
    parser.add_argument("--reps", type=int, default=15, help="timed batches per kernel (median)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--check-cpu", action="store_true", help="no GPU: tiny sizes, cpu target, simulator")
    parser.add_argument("--skip-latency", action="store_true", help="leave out benchmarks/latency.py")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker is not None:
        worker(opts.worker, opts.mode, opts.size_scale, opts.reps, Path(opts.result))
        return 0
    return run_check(opts) if opts.check_cpu else run_suite(opts)


if __name__ == "__main__":
    sys.exit(main())
