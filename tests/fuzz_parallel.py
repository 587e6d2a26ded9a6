"""Run the random-program tests of tests/test_random_programs.py in many processes with different seeds.

    .venv/bin/python tests/fuzz_parallel.py OUTDIR [-j 16] [--examples 200] [--rounds 10]
        [--tests reverse_engine,forward_engine,...] [--features all] [--no-shrink] [--seed 0]

Each job is one pytest process running one test with `GPUAD_HYPOTHESIS_RANDOM=1
--hypothesis-seed=K` and `GPUAD_HYPOTHESIS_EXAMPLES=<examples>`; `--rounds` jobs per test, with
seeds seed, seed+1, ... Failing programs (source, inputs, traceback) land in
OUTDIR/failures/<test>/, the whole pytest output of failing jobs in OUTDIR/logs/. One line per test
summarises: examples that passed, examples discarded (finite differences unusable), failing jobs.

A failing job stops its test at the first failure (hypothesis then shrinks it unless --no-shrink),
so more rounds with fewer examples find more distinct failures. Aim (issue 9): >= 10,000 programs
on the cuda target (`--tests both_in_cuda_kernel` on the GPU machine) and >= 2,000 per mode on the
cpu (`--tests reverse_engine,forward_engine,reverse_host,forward_host,modes_agree_engine`).
Shadows that many threads add into (shared coefficients, accumulators, stencil neighbours; the
`shared_shadow` feature): `--tests shared_in_cuda_kernel` on the GPU machine, `shared_in_kernel` on
the cpu target. Forward over reverse (Hessian-vector products of every generated program, against
finite differences of its gradient): `--tests fwd_over_rev_engine,fwd_over_rev_host` on the cpu,
`fwd_over_rev_in_cuda_kernel` on the GPU machine (`fwd_over_rev_in_kernel` on the cpu target).
Any test_random_program_<name> of tests/test_random_programs.py can be named.
Not collected by pytest (the name does not start with test_).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/test_random_programs.py"
CPU_TESTS = ("reverse_engine", "forward_engine", "reverse_host", "forward_host", "modes_agree_engine",
             "modes_agree_host")
STAT = re.compile(r"(\d+) passing(?: examples?| test cases?)?, (\d+) failing(?: examples?| test cases?)?,"
                  r"(?: and)? (\d+) invalid")


def job(test: str, seed: int, args, out: Path, deadline: float) -> dict | None:
    """One pytest process; None when the run's --budget was spent before it could start."""
    timeout = args.timeout
    if deadline < float("inf"):
        left = deadline - time.time()
        if left < 30:  # too little to import, compile and pass even one example
            return None
        timeout = min(timeout or left, left)
    passes = out / "passes" / f"{test}-{seed}.txt"  # kernel tests: one line per passed example
    passes.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GPUAD_HYPOTHESIS_RANDOM="1", GPUAD_HYPOTHESIS_EXAMPLES=str(args.examples),
               GPUAD_FUZZ_PASSES=str(passes),
               GPUAD_FUZZ_FAILURES=str(out / "failures" / test), NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if args.features is not None:
        env["GPUAD_FUZZ_FEATURES"] = args.features
    if args.no_shrink:
        env["GPUAD_HYPOTHESIS_SHRINK"] = "0"
    cmd = [sys.executable, "-m", "pytest", f"{TEST_FILE}::test_random_program_{test}", "-q", "-x",
           "-p", "no:cacheprovider", f"--hypothesis-seed={seed}", "--hypothesis-show-statistics",
           "-o", "addopts="]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        text, returncode = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # counted apart: neither passed nor failed
        done = len(passes.read_text().split()) if passes.exists() else 0  # examples passed before
        return {"test": test, "seed": seed, "ok": True, "skipped": False, "timeout": True, "passed": done,
                "invalid": 0, "seconds": time.time() - start, "text": str(exc.stdout or "")}
    stats = [tuple(map(int, m)) for m in STAT.findall(text)]
    passed = sum(s[0] for s in stats)
    invalid = sum(s[2] for s in stats)
    ok = returncode == 0
    skipped = ok and " skipped" in text and " passed" not in text
    if not ok:
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{test}-seed{seed}.log").write_text(text)
    return {"test": test, "seed": seed, "ok": ok, "skipped": skipped, "timeout": False, "passed": passed,
            "invalid": invalid, "seconds": time.time() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="processes at once")
    parser.add_argument("--examples", type=int, default=200, help="examples per process")
    parser.add_argument("--rounds", type=int, default=None, help="processes per test (default: -j)")
    parser.add_argument("--seed", type=int, default=0, help="first hypothesis seed")
    parser.add_argument("--tests", default=",".join(CPU_TESTS),
                        help="comma-separated test names without test_random_program_ "
                             "(both_in_cuda_kernel, shared_in_cuda_kernel for the GPU)")
    parser.add_argument("--features", default=None, help="GPUAD_FUZZ_FEATURES for every process")
    parser.add_argument("--no-shrink", action="store_true", help="report failures unshrunk (faster)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per process; one that runs longer is killed and counted as timed out "
                             "(kernel tests count the examples it passed before; others count none)")
    parser.add_argument("--budget", type=float, default=None,
                        help="wall-clock seconds for the whole run: processes still queued then are not "
                             "started and running ones are stopped at the end, so the tally is always "
                             "written (use many rounds of few examples to fill the time)")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    rounds = args.rounds or args.jobs
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    todo = [(t, args.seed + r) for r in range(rounds) for t in tests]
    tally: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    failing: dict[str, list] = defaultdict(list)
    deadline = time.time() + args.budget if args.budget else float("inf")
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(job, t, s, args, args.outdir, deadline) for t, s in todo]
        for future in as_completed(futures):
            r = future.result()
            if r is None:
                continue
            row = tally[r["test"]]
            row["jobs"] += 1
            row["passed"] += r["passed"]
            row["invalid"] += r["invalid"]
            row["skipped"] += r["skipped"]
            row["seconds"] += r["seconds"]
            row["timeouts"] += r["timeout"]
            if not r["ok"]:
                row["failed"] += 1
                failing[r["test"]].append(r["seed"])
            state = "timed out" if r["timeout"] else "ok" if r["ok"] else "FAILED"
            print(f"  {r['test']} seed {r['seed']}: {state}, {r['passed']} passed, "
                  f"{r['seconds']:.0f} s", flush=True)
    lines = []
    for test in tests:
        row = tally[test]
        seeds = ",".join(map(str, sorted(failing[test]))) or "-"
        lines.append(f"{test}: {row['passed']} examples passed, {row['invalid']} discarded, "
                     f"{row['failed']} of {row['jobs']} processes failed (seeds {seeds})"
                     + (f", {row['skipped']} skipped" if row["skipped"] else "")
                     + (f", {row['timeouts']} timed out" if row["timeouts"] else "")
                     + f"; failures in {args.outdir / 'failures' / test}")
    summary = "\n".join(lines)
    print(summary)
    (args.outdir / "tally.txt").write_text(summary + "\n")
    return 1 if any(tally[t]["failed"] for t in tests) else 0


if __name__ == "__main__":
    sys.exit(main())
