"""The Jupyter layer of gpuad: magics, the compilation widget, static views.

Nothing here compiles anything; it displays what the library produced.
`%load_ext gpuad` ends in `gpuad.notebook.magics.load_ipython_extension`.
Submodules import IPython and ipywidgets only when used.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from types import ModuleType

from gpuad.errors import GpuadError

# What the `notebook` extra of pyproject.toml brings: import name → pip name.
NOTEBOOK_PACKAGES = {
    "IPython": "ipython",
    "ipywidgets": "ipywidgets",
    "matplotlib": "matplotlib",
    "pygments": "pygments",
    "platformdirs": "platformdirs",
}
INSTALL_EXTRA = 'pip install -e ".[notebook]"'


class MissingNotebookExtra(GpuadError, ModuleNotFoundError):
    """A notebook feature needs a package of the `notebook` extra that is not installed.

    Also a ModuleNotFoundError, so `except ImportError` around optional features still works.
    """

    def __init__(self, package: str, feature: str):
        GpuadError.__init__(
            self,
            f"{feature} needs the package {package!r}, which is not installed",
            hint=f"install gpuad's notebook extra: {INSTALL_EXTRA} in the gpuad checkout "
                 f"(or only this package: pip install {package})")
        self.name = package  # ImportError's field: which module is missing
        self.package, self.feature = package, feature


def require(module: str, feature: str) -> ModuleType:
    """Import `module` for `feature`; a missing notebook package becomes MissingNotebookExtra."""
    with missing_extra_refused(feature):
        return importlib.import_module(module)


@contextmanager
def missing_extra_refused(feature: str):
    """Within the block, a missing notebook package raises MissingNotebookExtra naming it."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if isinstance(exc, GpuadError) or top not in NOTEBOOK_PACKAGES:
            raise  # not ours to explain (e.g. gpuad itself is broken)
        raise MissingNotebookExtra(NOTEBOOK_PACKAGES[top], feature) from exc


def load_ipython_extension(ipython) -> None:
    """Register `%%gpukernel` and `%gpuad_info` (also `%load_ext gpuad.notebook`)."""
    with missing_extra_refused("%load_ext gpuad"):
        from gpuad.notebook.magics import load_ipython_extension as load

    load(ipython)
    from gpuad.notebook import tracebacks

    tracebacks.install(ipython)  # gpuad errors: the message and the user's frames


def __getattr__(name: str):
    # `gpuad.notebook.CompilationView` without importing ipywidgets at `import gpuad`.
    if name == "CompilationView":
        with missing_extra_refused("CompilationView"):
            from gpuad.notebook.views import CompilationView

        return CompilationView
    raise AttributeError(f"module 'gpuad.notebook' has no attribute {name!r}")
