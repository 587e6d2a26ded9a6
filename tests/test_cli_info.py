"""The component checks behind `gpuad info`: each one tried, and a failure reported with its
reason and fix, never as working."""
import sys
from importlib import metadata

import pytest

from gpuad.notebook import info


def only(component: str) -> info.Check:
    return next(c for c in info.component_checks() if c.component == component)


def test_nvvm_that_cannot_load_is_missing_with_the_install_fix(monkeypatch):
    from numba.cuda.cudadrv import nvvm

    def no_nvvm():
        raise nvvm.NvvmSupportError("libNVVM cannot be found")

    monkeypatch.setattr(nvvm, "NVVM", no_nvvm)
    nvvm_check = only("NVVM")
    assert not nvvm_check.ok and "libNVVM cannot be found" in nvvm_check.detail
    assert "MISSING" in nvvm_check.line(6) and "fix: pip install 'nvidia-nvvm>=13,<14'" in nvvm_check.line(6)


def test_a_library_that_does_not_import_is_missing_with_gpuads_requirement(monkeypatch):
    monkeypatch.setitem(sys.modules, "llvmlite", None)  # import of llvmlite halted
    llvmlite_check = only("llvmlite")
    assert not llvmlite_check.ok and llvmlite_check.detail.startswith("ModuleNotFoundError: ")
    assert llvmlite_check.fix.startswith("pip install 'llvmlite")


def test_numba_cuda_outside_gpuads_range_is_reported(monkeypatch):
    if info._requirement("numba-cuda") is None:
        pytest.skip("gpuad is not installed, so its requirements are unknown")
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: "0.29.0" if name == "numba-cuda" else real_version(name))
    numba_cuda = only("numba-cuda")
    assert not numba_cuda.ok
    assert numba_cuda.detail.startswith("numba-cuda 0.29.0 is installed, gpuad needs numba-cuda")
    assert ">=0.30.4" in numba_cuda.detail


class DriverWithoutDevices:
    is_available = True
    initialization_error = None

    def get_version(self):
        return (13, 0)

    def get_device_count(self):
        return 0


def test_a_driver_that_sees_no_device_leaves_the_cuda_target_unusable(monkeypatch):
    from numba.cuda.cudadrv import driver

    monkeypatch.setattr(driver, "driver", DriverWithoutDevices())
    driver_check, device_check = info.cuda_launch_checks()
    assert driver_check.ok and driver_check.detail == "found, CUDA 13.0"
    assert not device_check.ok and device_check.detail == "the CUDA driver sees no device"
    diagnosis = info.Diagnosis([driver_check, device_check], "cuda")
    assert diagnosis.missing("cuda") == ["CUDA device"] and not diagnosis.ok
    assert diagnosis.missing("cpu") == []


def test_a_probe_that_raises_is_missing_in_one_line():
    def exploding():
        raise RuntimeError("first line\nsecond line " + "x" * 300)

    broken = info.check("NVRTC", info.COMPILE, exploding, "reinstall")
    assert not broken.ok and "\n" not in broken.line(5)
    assert broken.detail.startswith("RuntimeError: first line second line x")
    assert len(broken.detail) == 200 and broken.detail.endswith("…")


def test_a_failed_component_is_never_summarised_as_working():
    checks = [info.Check("numba", info.COMPILE, True, "0.68"),
              info.Check("NVRTC", info.COMPILE, False, "OSError: gone", "reinstall")]
    lines = info.Diagnosis(checks, "cpu").lines()
    assert "cpu target: does not work (missing: NVRTC)" in lines
    assert "cuda target: does not work (missing: NVRTC)" in lines
    assert lines[-1] == "kernels cannot run on the default target, cpu: missing NVRTC (see above)"
