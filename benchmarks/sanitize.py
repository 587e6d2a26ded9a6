"""GPU test suite, benchmark kernels and tutorial kernels under compute-sanitizer.

Usage, on a GPU machine, from the repository root:

    python benchmarks/sanitize.py OUT [--numpy-path DIR] [--dry-run]

Runs three parts under `compute-sanitizer --tool memcheck` and then
`--tool racecheck` (six runs), writing into OUT one program log and one
sanitizer log per run, and `tally.txt` / `tally.json`: errors (racecheck:
hazards reported as errors) per tool per part, exit codes and time-outs.

  tests      `pytest -m gpu tests` without the notebook/widget tests; of the
             per-entry corpus tests (tests/test_gpu_corpus.py, ~200) every
             --corpus-stride-th, the random-program test with 5 examples.
             Everything else marked `gpu` runs (test_gpu, test_memory_spaces,
             test_ad_rule_edges, the corpus's special checks).
  bench      benchmarks/bench_gradients.py at n=4096, one repetition.
  tutorials  the code cells of notebooks/*.ipynb, run as one script per
             notebook on the cuda target (`target="cpu"` and GPUAD_TARGET=cpu
             rewritten to cuda; magics and `%%` cells skipped; a failing cell
             is logged and the next one runs).

Each run has a time limit (--timeout-*), so all six fit in about 8 minutes on
one H200. `--numpy-path DIR` is put first on PYTHONPATH (a directory where a
numpy 2.4.x wheel is unpacked: numba-cuda does not run with numpy 2.5).
`--dry-run` prints the commands instead of running them.
"""
from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANITIZER = "/usr/local/cuda/bin/compute-sanitizer"
TOOLS = ("memcheck", "racecheck")
PARTS = ("tests", "bench", "tutorials")
NOTEBOOK_TESTS = ("test_notebook_magics.py", "test_notebook_views.py", "test_notebook_irdiff.py",
                  "test_gradient_check.py")  # IPython/ipywidgets, which the GPU image lacks
CORPUS = "tests/test_gpu_corpus.py"
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]


def gpu_test_ids(python: str, env: dict, stride: int) -> list[str]:
    """The `gpu` tests to run: all but the per-entry corpus tests, of which every `stride`-th."""
    ignores = [f"--ignore=tests/{name}" for name in NOTEBOOK_TESTS]
    out = subprocess.run([python, *PYTEST, "-m", "gpu", "--collect-only", "tests", *ignores],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False).stdout
    ids = [line.strip() for line in out.splitlines() if "::" in line]
    corpus = [i for i in ids if i.startswith(CORPUS) and "[" in i]
    first = [i for i in ids if "test_memory_spaces" in i or "test_gpu.py" in i]  # most telling first
    rest = [i for i in ids if i not in first and i not in corpus]
    if not ids:  # collection failed: every gpu test (its errors show in the log)
        return ["-m", "gpu", "tests", *ignores]
    return first + rest + corpus[::stride]


def part_command(part: str, python: str, env: dict, opts) -> list[str]:
    if part == "tests":
        return [python, *PYTEST, *gpu_test_ids(python, env, opts.corpus_stride)]
    if part == "bench":
        return [python, "benchmarks/bench_gradients.py", "--n", "4096", "--reps", "1", "--batch", "1"]
    return [python, str(Path(__file__).resolve()), "--run-tutorials"]


def sanitized(tool: str, log: Path, command: list[str], sanitizer: str) -> list[str]:
    return [sanitizer, "--tool", tool, "--target-processes", "all", "--print-limit", "100",
            "--log-file", str(log), *command]


def count_errors(tool: str, text: str) -> int | None:
    """Errors in a sanitizer log (the sum over its processes), None when no summary came out."""
    pattern = (r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?" if tool == "racecheck"
               else r"ERROR SUMMARY: (\d+) errors?")
    counts = [int(n) for n in re.findall(pattern, text)]
    if not counts and tool == "racecheck":  # older versions print only the error summary
        counts = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) errors?", text)]
    return sum(counts) if counts else None


def run(command: list[str], env: dict, log: Path, timeout: float) -> tuple[int | None, bool, float]:
    """Exit code (None when killed), whether it timed out, seconds; the whole group is killed."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout), False, time.monotonic() - start
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, True, time.monotonic() - start


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def environment(numpy_path: str | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", GPUAD_TARGET="cuda", GPUAD_HYPOTHESIS_EXAMPLES="5")
    paths = [p for p in (numpy_path, str(ROOT), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="directory for the logs and the tally")
    parser.add_argument("--numpy-path", help="prepended to PYTHONPATH (an unpacked numpy 2.4.x wheel)")
    parser.add_argument("--sanitizer", default=SANITIZER)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--corpus-stride", type=int, default=6)
    parser.add_argument("--timeout-tests", type=float, default=130)
    parser.add_argument("--timeout-bench", type=float, default=40)
    parser.add_argument("--timeout-tutorials", type=float, default=60)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--run-tutorials", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.run_tutorials:
        return run_tutorials()
    if not opts.out:
        parser.error("give the output directory")
    out = Path(opts.out).resolve()
    env = environment(opts.numpy_path)
    tally = []
    if not opts.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        device = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=False).stdout.strip()
        (out / "device.txt").write_text(device + "\n")
    commands = {part: part_command(part, opts.python, env, opts) for part in opts.parts.split(",")}
    for tool in opts.tools.split(","):
        for part, command in commands.items():
            name = f"{tool}_{part}"
            full = sanitized(tool, out / f"{name}.sanitizer.log", command, opts.sanitizer)
            if opts.dry_run:
                print(f"PYTHONPATH={shlex.quote(env['PYTHONPATH'])} GPUAD_TARGET=cuda {shlex.join(full)}"
                      f"  > {out / (name + '.log')}")
                continue
            code, timed_out, seconds = run(full, env, out / f"{name}.log", getattr(opts, f"timeout_{part}"))
            sanitizer_log = out / f"{name}.sanitizer.log"
            text = sanitizer_log.read_text(errors="replace") if sanitizer_log.exists() else ""
            row = {"tool": tool, "part": part, "errors": count_errors(tool, text), "exit_code": code,
                   "timed_out": timed_out, "seconds": round(seconds, 1),
                   "last_line": last_line(out / f"{name}.log")}
            tally.append(row)
            print(f"{tool:<10} {part:<10} errors={row['errors']} exit={code} "
                  f"{'TIMED OUT ' if timed_out else ''}{seconds:.0f}s  {row['last_line']}", flush=True)
    if opts.dry_run:
        return 0
    (out / "tally.json").write_text(json.dumps(tally, indent=2) + "\n")
    (out / "tally.txt").write_text("".join(
        f"{r['tool']:<10} {r['part']:<10} errors={r['errors']} exit={r['exit_code']} "
        f"timed_out={r['timed_out']} {r['seconds']}s  {r['last_line']}\n" for r in tally))
    return 0 if all(r["errors"] == 0 for r in tally) else 1


# -- the tutorials as scripts -------------------------------------------------------

def notebook_cells(path: Path) -> list[str]:
    """The code cells of a notebook for the cuda target: magics dropped, cpu targets made cuda."""
    cells = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.lstrip().startswith("%%"):
            continue  # a cell magic (IPython only)
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        code = "\n".join(lines)
        code = re.sub(r"""target\s*=\s*(["'])cpu\1""", 'target="cuda"', code)
        code = re.sub(r"""(GPUAD_TARGET["']\]\s*=\s*)(["'])cpu\2""", r'\1"cuda"', code)
        cells.append(code)
    return cells


def run_tutorials() -> int:
    """Each notebook in a fresh namespace, cell after cell; returns the number of failed cells."""
    import traceback

    failed = 0
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.chdir(ROOT / "notebooks")
    for path in notebooks:
        namespace = {"__name__": "__main__", "display": print}
        for k, code in enumerate(notebook_cells(path)):
            filename = f"{path.name}[cell {k}]"
            # gpuad reads the source of the functions it differentiates, as IPython's cells register it
            linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
            try:
                exec(compile(code, filename, "exec"), namespace)  # noqa: S102
            except BaseException as exc:  # noqa: BLE001 - log it, go on with the next cell
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failed += 1
                print(f"--- {path.name} cell {k} failed:", flush=True)
                traceback.print_exc()
        print(f"{path.name}: done", flush=True)
    print(f"tutorial cells failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
