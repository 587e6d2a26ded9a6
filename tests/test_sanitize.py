"""benchmarks/sanitize.py without a GPU: its commands (dry run), its tally, the tutorial scripts."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("sanitize", ROOT / "benchmarks" / "sanitize.py")
sanitize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sanitize)


def test_dry_run_prints_every_tool_and_part_with_the_numpy_path_first(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/sanitize.py", str(tmp_path / "logs"), "--dry-run",
                          "--numpy-path", "/opt/np24"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == 6
    for line, (tool, part) in zip(out, [(t, p) for t in sanitize.TOOLS for p in sanitize.PARTS]):
        assert line.startswith("PYTHONPATH=/opt/np24:")
        assert f"compute-sanitizer --tool {tool} " in line and f"{tool}_{part}.log" in line
    tests = out[0]
    assert "tests/test_memory_spaces.py::" in tests and "tests/test_gpu.py::" in tests
    assert "test_notebook" not in tests and "test_gradient_check" not in tests
    corpus = tests.count("test_gpu_corpus.py::test_reverse_in_cuda_kernel[")
    assert 0 < corpus < 30  # a subset of the ~75 entries
    assert "bench_gradients.py --n 4096" in out[1] and "--run-tutorials" in out[2]
    assert not (tmp_path / "logs").exists()  # nothing ran


def test_tally_counts_the_summaries_of_each_tool():
    memcheck = "========= ERROR SUMMARY: 0 errors\n========= ERROR SUMMARY: 3 errors\n"
    racecheck = "========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)\n"
    assert sanitize.count_errors("memcheck", memcheck) == 3
    assert sanitize.count_errors("racecheck", racecheck) == 1
    assert sanitize.count_errors("racecheck", "========= ERROR SUMMARY: 0 errors\n") == 0
    assert sanitize.count_errors("memcheck", "Segmentation fault\n") is None  # no summary: not zero


def test_tutorial_cells_run_on_the_cuda_target_without_magics():
    cells = [c for p in sorted((ROOT / "notebooks").glob("*.ipynb")) for c in sanitize.notebook_cells(p)]
    text = "\n".join(cells)
    assert cells and 'target="cuda"' in text and 'GPUAD_TARGET"] = "cuda"' in text
    assert 'target="cpu"' not in text and '"cpu"' not in text.split("GPUAD_TARGET")[1][:20]
    assert not any(line.lstrip().startswith("%") for line in text.splitlines())
    for code in cells:
        compile(code, "cell", "exec")  # plain Python
