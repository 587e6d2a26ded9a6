"""benchmarks/launch_overhead.py --no-gpu runs anywhere and writes its JSON (in a process of its own:
it stubs the device for the whole process)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_gpu_mode_writes_host_microseconds_per_launch(tmp_path):
    out = tmp_path / "launch.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "launch_overhead.py"), "--no-gpu",
                           "--launches", "200", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "no-gpu" and result["launches"] == 200
    assert [c["name"] for c in result["cases"]] == ["elementwise", "taped"]
    for case in result["cases"]:
        for key in ("gpuad_blocking_us", "gpuad_deferred_us", "cpu_target_us"):
            assert 0 < case[key] < 10_000, (key, case)
