"""benchmarks/suite.py: every case's gradients right before the GPU run (gpuad's cpu target and the
hand-written kernels in numba's CUDA simulator against float64 references), the comparison and the
report it writes, and one GPU run at a small size.

The --check-cpu run of every case takes most of this file's time (about 50 s on 2 cores)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite.py"
sys.path.insert(0, str(ROOT))

from benchmarks import suite  # noqa: E402
from benchmarks.cases import all_cases  # noqa: E402

CASE_KEYS = {"name", "gpuad_ms", "handwritten_ms", "ratio", "correct"}


def run_suite(*args, env=None, timeout=600):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": path, **(env or {})})


def test_the_table_of_issue_11_is_covered():
    names = set(all_cases())
    assert names == {"elementwise", "elementwise_dup", "horner", "horner_shared", "stencil_gather",
                     "stencil_scatter", "pairwise_naive", "pairwise_tiled", "pairwise_split",
                     "pairwise_checkpointed", "pairwise_checkpointed_vs_naive", "ode_taped",
                     "ode_checkpointed", "ode_forward"}


def test_check_cpu_every_case_against_float64(tmp_path):
    """Both kernels of every case at a tiny size: the hand-written ones in the simulator (shuffles,
    shared memory, barriers, atomics), the gpuad ones on the cpu target; each against numpy."""
    done = run_suite("--check-cpu", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads((tmp_path / "check.json").read_text())}
    assert set(rows) == set(all_cases())
    for name, row in rows.items():
        assert row["ok"] and row["hand_vs_reference"] <= 1.0, row
        if name == "pairwise_tiled":  # shared memory: the cpu target refuses it, the PTX compile is checked
            assert row["gpuad_vs_reference"] is None and "compiled to PTX only" in row["note"]
        else:
            assert row["gpuad_vs_reference"] <= 1.0 and row["gpuad_vs_hand"] <= 1.0, row
    assert "| horner_shared |" in (tmp_path / "check.md").read_text()


def test_a_gradient_off_by_more_than_the_tolerance_is_caught():
    case = all_cases()["elementwise"]
    want = {"dxs": np.linspace(-2.0, 3.0, 50)}
    assert suite.agree(case, {"dxs": want["dxs"].astype(np.float32)}, want) <= 1.0
    off = want["dxs"].copy()
    off[7] *= 1 + 20 * case.rtol
    assert suite.agree(case, {"dxs": off}, want) > 1.0
    off[7] = np.nan
    assert suite.agree(case, {"dxs": off}, want) == np.inf


def test_check_reports_a_wrong_hand_written_gradient(tmp_path):
    """The comparison of --check-cpu's two halves, fed a hand-written result that is wrong in one place."""
    case = all_cases()["stencil_gather"]
    ref = np.linspace(-1.0, 1.0, 40)
    wrong = ref.copy()
    wrong[3] += 0.1
    np.savez(tmp_path / "stencil_gather.gpuad-cpu.npz", **{"gpuad.dxs": ref, "reference.dxs": ref})
    np.savez(tmp_path / "stencil_gather.hand-sim.npz", **{"hand.dxs": wrong})
    row = suite.check_case(case, tmp_path)
    assert not row["ok"] and row["hand_vs_reference"] > 1.0 and row["gpuad_vs_reference"] == 0.0


def test_report_has_the_issue_schema(tmp_path):
    gpu = {"device": "Fake GPU", "handwritten_ms": 1.0}
    details = [{"name": "a", "gpuad_ms": 2.0, "correct": True, "deviation": 0.1, **gpu},
               {"name": "b", "gpuad_ms": None, "correct": False, "reason": "gpuad: refused", **gpu},
               {"name": "c", "gpuad_ms": 1.0, "correct": False, "deviation": 3.0, **gpu}]
    latency = {"cold_s": None, "warm_s": None, "cpu_cold_s": None, "reason": "skipped"}
    suite.write_report(tmp_path, details, latency, {"gpuad": 40.0, "numba": 20.0})
    report = json.loads((tmp_path / "latest.json").read_text())
    assert set(report) == {"device", "date", "cases", "latency", "launch_us"}
    assert report["device"] == "Fake GPU" and re.fullmatch(r"\d{4}-\d\d-\d\d", report["date"])
    a, b, c = report["cases"]
    assert set(a) == CASE_KEYS and a["ratio"] == 2.0 and a["correct"] is True
    assert b["ratio"] is None and b["reason"].startswith("gpuad:") and b["correct"] is False
    assert c["correct"] is False and "differ" in c["reason"]
    dated = tmp_path / f"suite-fake-gpu-{report['date']}.json"
    assert dated.read_text() == (tmp_path / "latest.json").read_text()
    table = (tmp_path / "table.md").read_text()
    assert "| a | 1.000 | 2.000 | 2.00 | yes |" in table and "| c |" in table and "NO:" in table


def test_the_gpu_path_runs_through_in_the_simulator(tmp_path):
    """A dry run of the GPU path under NUMBA_ENABLE_CUDASIM (gpuad's cuda target cannot load there, so
    its failure must come back as a reason): the worker, the report and the files, without a GPU."""
    done = run_suite("--cases", "elementwise", "--size-scale", "1e-9", "--reps", "1", "--skip-latency",
                     "--out", str(tmp_path), env={"NUMBA_ENABLE_CUDASIM": "1"})
    report = json.loads((tmp_path / "latest.json").read_text())
    assert done.returncode == 1, done.stderr[-3000:]  # nothing is correct: gpuad did not run
    (case,) = report["cases"]
    assert case["name"] == "elementwise" and case["gpuad_ms"] is None and case["correct"] is False
    assert case["reason"].startswith("gpuad:") and case["handwritten_ms"] is not None
    assert report["latency"]["reason"] == "skipped (--skip-latency)"


@pytest.mark.gpu
def test_suite_on_the_gpu_at_a_small_size(tmp_path):
    done = run_suite("--size-scale", "0.02", "--reps", "3", "--skip-latency", "--out", str(tmp_path))
    report = json.loads((tmp_path / "latest.json").read_text())
    wrong = [c for c in report["cases"] if not c["correct"]]
    assert done.returncode == 0 and not wrong, (wrong, done.stderr[-3000:])
    assert [c["name"] for c in report["cases"]] == list(all_cases())
    for case in report["cases"]:
        assert case["gpuad_ms"] > 0 and case["handwritten_ms"] > 0
    assert report["launch_us"]["gpuad"] > 0 and report["launch_us"]["numba"] > 0
