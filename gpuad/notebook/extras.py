"""The `notebook` extra: which packages it brings, and the error when one is missing.

A leaf module (it imports nothing of gpuad's notebook layer), so library code such as
`gpuad.gradient_check` can ask for matplotlib without importing the magics.
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
