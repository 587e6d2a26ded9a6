"""What `%gpuad_info` reports: versions, target, GPU, NVVM and cache location.

Every probe is guarded: the report must render on a laptop with no GPU, no
NVVM and a half-installed toolchain, saying what is missing.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from importlib import metadata

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
        cells = "".join(
            f'<tr><th style="text-align: left; padding: 2px 12px 2px 0">{html.escape(label)}</th>'
            f'<td style="font-family: monospace; padding: 2px 0">{html.escape(value)}</td></tr>'
            for label, value in self.rows()
        )
        return (
            '<table style="background-color: #ffffff; color: #1f2328; border-collapse: collapse; '
            f'font-size: 12px">{cells}</table>'
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


def _default_target() -> str:
    from gpuad.targets import default_target

    target = default_target()
    return str(getattr(target, "name", target))


def _gpu() -> str:
    from numba import cuda

    if not cuda.is_available():
        return "none found (kernels launch on the cpu target)"
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return f"{name} (compute capability {'.'.join(map(str, device.compute_capability))})"


def _nvvm() -> str:
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        return "not found (install nvidia-nvvm to get IR and PTX)"
    return "found, NVVM IR version " + ".".join(map(str, nvvm.NVVM().get_version()))


def _cache_dir() -> str:
    import platformdirs

    return platformdirs.user_cache_dir("gpuad")
