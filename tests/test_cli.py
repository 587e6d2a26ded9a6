"""`gpuad demo`, `gpuad info` and `gpuad --version` print what they promise, and end a
newcomer's mistakes (no GPU, a misspelt GPUAD_TARGET) with gpuad's message, not a traceback."""
import re
from importlib import metadata

import pytest

import gpuad
from gpuad.cli import main
from gpuad.compiler.numba_adapter import gpu_available
from gpuad.errors import LaunchError

needs_no_gpu = pytest.mark.skipif(gpu_available(), reason="checks what a machine without a GPU says")


def test_demo_reports_stages_diff_and_a_passing_gradient(capsys):
    assert main(["demo", "--n", "64", "--target", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 deferred job, 1 function linked" in out
    # The link diff as the notebook layer prints it (gpuad.notebook.text), around the markers only:
    # old and new line numbers, the marker removed, the linked function's address in its place.
    assert re.search(r'^  -\s+\d+\s+%"\.\d+" = call i8\* @"gpuad\.deferred_codegen"\(i64 1\)'
                     r"   <- deferred-codegen marker$", out, re.M)
    assert re.search(r'^  \+\s+\d+\s+%"\.\d+" = bitcast i32 \(', out, re.M)
    assert "<- linked function" not in out  # the derivative's body is left out: it is printed above
    assert "ran 64 threads on the cpu target" in out and "(ok)" in out


def test_version_prints_gpuads_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"gpuad {gpuad.__version__}\n"


def test_version_agrees_with_the_installed_package():
    try:
        installed = metadata.version("gpuad")
    except metadata.PackageNotFoundError:
        pytest.skip("gpuad is not installed (pip install -e .)")
    assert gpuad.__version__ == installed, "gpuad/__init__.py and pyproject.toml disagree"


@needs_no_gpu
def test_demo_on_cuda_without_a_gpu_says_so_and_to_use_cpu(capsys):
    assert main(["demo", "--n", "8", "--target", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before compiling anything
    assert "gpuad demo: error: the cuda target needs a CUDA GPU and driver, and none was found" \
        in captured.err
    assert "no CUDA driver found" in captured.err and "--target cpu" in captured.err
    assert "Traceback" not in captured.err and "CudaSupportError" not in captured.err


@needs_no_gpu
def test_verbose_shows_the_traceback_of_a_refusal():
    with pytest.raises(LaunchError, match="needs a CUDA GPU and driver"):
        main(["--verbose", "demo", "--n", "8", "--target", "cuda"])


def test_demo_with_a_misspelt_gpuad_target_names_the_variable_and_the_targets(capsys, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "gpu")
    assert main(["demo", "--n", "8"]) == 2
    err = capsys.readouterr().err
    assert "GPUAD_TARGET='gpu' is not a gpuad target (the targets are cuda and cpu)" in err
    assert "hint: set GPUAD_TARGET to cuda or cpu, or unset it" in err


def test_info_checks_each_component_and_says_which_targets_work(capsys, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"gpuad {gpuad.__version__}\n")
    for component in ("numba", "numba-cuda", "llvmlite", "numpy", "NVVM", "NVRTC",
                      "CUDA driver", "CUDA device", "default target"):
        assert any(line.startswith(component + " ") for line in out.splitlines()), component
    assert "default target  ok       cpu (from GPUAD_TARGET)" in out
    assert "cpu target: works" in out and "kernels run on the default target, cpu" in out


@needs_no_gpu
def test_info_without_a_gpu_says_the_driver_and_device_are_missing(capsys, monkeypatch):
    monkeypatch.delenv("GPUAD_TARGET", raising=False)
    assert main(["info"]) == 0  # the default target, cpu, works
    lines = capsys.readouterr().out.splitlines()
    driver = next(line for line in lines if line.startswith("CUDA driver"))
    device = next(line for line in lines if line.startswith("CUDA device"))
    assert "MISSING  no CUDA driver found" in driver and "--target cpu" in driver
    assert "MISSING  no CUDA device can be seen without a CUDA driver" in device
    assert "cuda target: does not work (missing: CUDA driver, CUDA device)" in lines
    assert "default target  ok       cpu (no usable GPU)" in lines


@needs_no_gpu
def test_info_fails_when_gpuad_target_forces_cuda_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "cuda")
    assert main(["info"]) == 1
    out = capsys.readouterr().out
    assert "kernels cannot run on the default target, cuda: missing CUDA driver, CUDA device" in out


def test_info_reports_a_misspelt_gpuad_target_instead_of_crashing(capsys, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "gpu")
    assert main(["info"]) == 1
    out = capsys.readouterr().out
    assert ("default target  WRONG    GPUAD_TARGET='gpu' is not a gpuad target (the targets are "
            "cuda and cpu); fix: set GPUAD_TARGET to cuda or cpu, or unset it") in out
    assert "gpuad has no default target" in out and "kernels run on" not in out


def test_info_with_nvrtc_missing_says_so_and_fails(capsys, monkeypatch):
    from numba.cuda.cudadrv import nvrtc

    def no_nvrtc():
        raise OSError("libnvrtc.so.13: cannot open shared object file")

    monkeypatch.setattr(nvrtc, "_get_nvrtc_version", no_nvrtc)
    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    assert main(["info"]) == 1
    out = capsys.readouterr().out
    assert ("NVRTC           MISSING  OSError: libnvrtc.so.13: cannot open shared object file; "
            "fix: pip install 'nvidia-cuda-nvrtc>=13,<14'") in out
    assert "cpu target: does not work (missing: NVRTC)" in out
    assert "kernels cannot run on the default target, cpu: missing NVRTC (see above)" in out
    assert "kernels run on" not in out


@pytest.mark.gpu
def test_info_on_a_gpu_machine_finds_the_driver_and_device(capsys, monkeypatch):
    monkeypatch.delenv("GPUAD_TARGET", raising=False)
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("CUDA driver")).split()[2] == "ok"
    assert "compute capability" in next(line for line in lines if line.startswith("CUDA device"))
    assert "cuda target: works" in lines and "kernels run on the default target, cuda" in lines
