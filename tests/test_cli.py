"""`gpuad demo` and `gpuad info` print what they promise."""
from gpuad.cli import main


def test_demo_reports_stages_diff_and_a_passing_gradient(capsys):
    assert main(["demo", "--n", "64", "--target", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 deferred jobs, 1 functions linked" in out
    assert '-  %".' in out and 'call i8* @"gpuad.deferred_codegen"(i64 1)' in out
    assert '+  %".' in out and "bitcast i32 (" in out
    assert "ran 64 threads on the cpu target" in out and "(ok)" in out


def test_info_names_versions_and_target(capsys, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba" in out and "default target: cpu" in out and "NVVM: " in out
