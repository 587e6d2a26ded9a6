"""What `%gpuad_info` reports: versions, target, GPU, NVVM and cache location.

Every probe is guarded: the report must render on a laptop with no GPU, no
NVVM and a half-installed toolchain, saying what is missing.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from importlib import metadata

from gpuad.notebook.palette import BACKGROUND, FOREGROUND

DISTRIBUTIONS = ("gpuad", "numba", "numba-cuda", "llvmlite", "numpy")


@dataclass
class EnvironmentInfo:
    """The facts `%gpuad_info` shows, as (label, value) rows."""

    versions: dict[str, str] = field(default_factory=dict)
    target: str = "unknown"
    gpu: str = "unknown"
    nvvm: str = "unknown"
    cache_dir: str = "unknown"

    def rows(self) -> list[tuple[str, str]]:
        return [
            *self.versions.items(),
            ("target in use", self.target),
            ("GPU", self.gpu),
            ("NVVM", self.nvvm),
            ("cache", self.cache_dir),
        ]

    def __str__(self) -> str:
        width = max(len(label) for label, _ in self.rows())
        return "\n".join(f"{label:<{width}}  {value}" for label, value in self.rows())

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        # The theme's colours (light fallbacks outside JupyterLab), set on every cell: a fixed
        # light background under a theme's text colour was dark-on-black in the dark theme.
        colours = f"background-color: {BACKGROUND}; color: {FOREGROUND}; border: none"
        cells = "".join(
            f'<tr><th style="{colours}; text-align: left; padding: 2px 12px 2px 0">{html.escape(label)}</th>'
            f'<td style="{colours}; text-align: left; font-family: monospace; padding: 2px 0">'
            f"{html.escape(value)}</td></tr>"
            for label, value in self.rows()
        )
        return (
            f'<table class="gpuad-info" style="{colours}; border-collapse: collapse; table-layout: auto; '
            f'width: auto; font-size: 12px">{cells}</table>'
        )


def environment_info() -> EnvironmentInfo:
    return EnvironmentInfo(
        versions={name: _version(name) for name in DISTRIBUTIONS},
        target=_probe(_default_target),
        gpu=_probe(_gpu),
        nvvm=_probe(_nvvm),
        cache_dir=_probe(_cache_dir),
    )


def _probe(fn) -> str:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 (a broken probe is a fact to report, not a crash)
        return f"unavailable ({type(exc).__name__}: {exc})"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# %gpuad_info asks the probes of `gpuad info` below; it words their answers as one row each.

def _default_target() -> str:
    return configured_target()


def _gpu() -> str:
    try:
        return _cuda_device()
    except Missing:
        return "none found (kernels launch on the cpu target)"


def _describe(device) -> str:
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return f"{name} (compute capability {'.'.join(map(str, device.compute_capability))})"


def _nvvm() -> str:
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        return "not found (install nvidia-nvvm to get IR and PTX)"
    return "found, NVVM IR version " + _nvvm_version()


def _cache_dir() -> str:
    import platformdirs

    return platformdirs.user_cache_dir("gpuad")


# -- `gpuad info`: each component tried, ok or missing with the reason ------

COMPILE = "compile"  # what a component is needed for: every target compiles IR to PTX
CUDA_LAUNCH = "cuda launch"
SETTING = "setting"
LIBRARIES = {"numba": "numba", "numba-cuda": "numba.cuda", "llvmlite": "llvmlite", "numpy": "numpy"}
NO_GPU_FIX = ("use the cpu target (--target cpu, GPUAD_TARGET=cpu or kernel(target='cpu')), "
              "or run on a machine with an NVIDIA GPU and its driver")


@dataclass(frozen=True)
class Check:
    """One component `gpuad info` tried: whether it works, and what it said."""

    component: str
    needed_for: str
    ok: bool
    detail: str  # a version when it works; the reason when it does not
    fix: str = ""

    def line(self, width: int) -> str:
        text = self.detail if self.ok else f"{self.detail}; fix: {self.fix}"
        return f"{self.component:<{width}}  {self.status:<7}  {text}"

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "WRONG" if self.needed_for == SETTING else "MISSING"


def check(component: str, needed_for: str, probe, fix: str) -> Check:
    """Run `probe`; any exception is the component's reason for not working."""
    try:
        return Check(component, needed_for, True, probe())
    except Exception as exc:  # noqa: BLE001 (a broken component is a fact to report)
        return Check(component, needed_for, False, one_line(exc), fix)


class Missing(RuntimeError):
    """A component is absent; the message says what was looked for."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    from gpuad.errors import GpuadError

    if isinstance(exc, (Missing, GpuadError)):  # our own words; a GpuadError's hint is the fix
        text = getattr(exc, "message", str(exc))
    else:  # a library's exception: its type says who raised it
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def component_checks() -> list[Check]:
    return [
        *(check(name, COMPILE, lambda name=name: _library_version(name),
                f"pip install '{_requirement(name) or name}'") for name in LIBRARIES),
        check("NVVM", COMPILE, _nvvm_loads, "pip install 'nvidia-nvvm>=13,<14'"),
        check("NVRTC", COMPILE, _nvrtc_loads, "pip install 'nvidia-cuda-nvrtc>=13,<14'"),
        *cuda_launch_checks(),
        check("default target", SETTING, _target_setting, "set GPUAD_TARGET to cuda or cpu, or unset it"),
    ]


def cuda_launch_checks() -> list[Check]:
    return [check("CUDA driver", CUDA_LAUNCH, _cuda_driver, NO_GPU_FIX),
            check("CUDA device", CUDA_LAUNCH, _cuda_device, NO_GPU_FIX)]


def _library_version(distribution: str) -> str:
    import importlib

    importlib.import_module(LIBRARIES[distribution])  # installed is not enough: it must import
    version = metadata.version(distribution)
    wanted = _requirement(distribution)
    if wanted and not _satisfies(wanted, version):
        raise Missing(f"{distribution} {version} is installed, gpuad needs {wanted}")
    return version


def _requirement(distribution: str) -> str | None:
    """gpuad's own requirement on `distribution` (e.g. 'numba-cuda<0.31,>=0.30.4'), if known."""
    try:
        requires = metadata.requires("gpuad") or []
    except metadata.PackageNotFoundError:
        return None
    return next((r for r in requires if r.startswith(distribution) and ";" not in r
                 and r[len(distribution):][:1] in "<>=!~"), None)


def _satisfies(requirement: str, version: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging is not a dependency: without it, no range check
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def _nvvm_loads() -> str:
    return "loads, version " + _nvvm_version()


def _nvvm_version() -> str:
    """Loads libNVVM and asks it for its IR version."""
    from numba.cuda.cudadrv import nvvm

    return ".".join(map(str, nvvm.NVVM().get_version()))


def _nvrtc_loads() -> str:
    from numba.cuda.cudadrv import nvrtc

    return "loads, version " + ".".join(map(str, nvrtc._get_nvrtc_version()))


def _cuda_driver() -> str:
    from numba.cuda.cudadrv.driver import driver

    if not driver.is_available:
        raise Missing("no CUDA driver found: " + str(driver.initialization_error))
    return "found, CUDA " + ".".join(map(str, driver.get_version()))


def _cuda_device() -> str:
    from numba.cuda.cudadrv.driver import driver

    if not driver.is_available:
        raise Missing("no CUDA device can be seen without a CUDA driver")
    if driver.get_device_count() == 0:
        raise Missing("the CUDA driver sees no device")
    from numba import cuda

    return _describe(cuda.get_current_device())


def configured_target() -> str:
    """The default target, with a bad GPUAD_TARGET named as the mistake it is."""
    import os

    from gpuad.errors import LaunchError
    from gpuad.targets import TARGETS, default_target

    forced = os.environ.get("GPUAD_TARGET")
    if forced and forced not in TARGETS:
        raise LaunchError(f"GPUAD_TARGET={forced!r} is not a gpuad target (the targets are "
                          f"{' and '.join(TARGETS)})", hint="set GPUAD_TARGET to cuda or cpu, or unset it")
    return default_target()


def _target_setting() -> str:
    import os

    target = configured_target()
    if os.environ.get("GPUAD_TARGET"):
        return f"{target} (from GPUAD_TARGET)"
    return f"{target} ({'a GPU is usable' if target == 'cuda' else 'no usable GPU'})"


@dataclass
class Diagnosis:
    """What `gpuad info` found: every check, and which targets can run kernels."""

    checks: list[Check]
    default_target: str | None  # None: GPUAD_TARGET names no target

    def missing(self, target: str) -> list[str]:
        needs = (COMPILE, CUDA_LAUNCH) if target == "cuda" else (COMPILE,)
        return [c.component for c in self.checks if not c.ok and c.needed_for in needs]

    @property
    def ok(self) -> bool:
        return self.default_target is not None and not self.missing(self.default_target)

    def lines(self) -> list[str]:
        width = max(len(c.component) for c in self.checks)
        return [*(c.line(width) for c in self.checks), "",
                *(self._target_line(t) for t in ("cpu", "cuda")), self._conclusion()]

    def _target_line(self, target: str) -> str:
        missing = self.missing(target)
        return f"{target} target: " + (f"does not work (missing: {', '.join(missing)})"
                                       if missing else "works")

    def _conclusion(self) -> str:
        if self.default_target is None:
            return "gpuad has no default target: see the default target line above"
        if self.ok:
            return f"kernels run on the default target, {self.default_target}"
        return (f"kernels cannot run on the default target, {self.default_target}: "
                f"missing {', '.join(self.missing(self.default_target))} (see above)")


def diagnose() -> Diagnosis:
    checks = component_checks()
    try:
        target = configured_target()
    except Exception:  # noqa: BLE001 (the default target check above reports why)
        target = None
    return Diagnosis(checks, target)
